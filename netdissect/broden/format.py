"""The Broden folder format: parsing and formatting of its CSV files, cells, label PNGs and split hash.

Everything here follows docs/broden-format.md. Parsers never stop at the first bad piece: they
report every problem to a :class:`Problems` collector (file, row, column, what was expected) and
return what they could read, so the same code serves the reader (which raises if anything was
reported) and ``netdissect broden check`` (which lists everything).

Row numbers in messages are 1-based line numbers of the file (the header is line 1).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from netdissect.errors import NetDissectError

INDEX_FIXED_COLUMNS = ["image", "split", "ih", "iw", "sh", "sw"]
LABEL_COLUMNS = ["number", "name", "category", "frequency", "coverage", "syns"]
CATEGORY_COLUMNS = ["name", "first", "last", "count", "frequency"]
CODE_COLUMNS = ["code", "number", "name", "frequency", "coverage"]
TRAIN_FRACTION = 0.7

MAX_LABEL = 65535  # a label number fits a PNG pixel's R + 256*G (docs/broden-format.md §4)
MAX_SIDE = 65535  # pixels per side of an image or label map (the largest a JPEG can have)

_INT = re.compile(r"[0-9]+")  # ASCII digits only (fullmatch)
_CATEGORY_ITEM = re.compile(r"([^(]*)\(([0-9]+)\)")


# ---------------------------------------------------------------------------------------------
# Problems: every defect with its place


@dataclass
class Problems:
    """Collects defects found in a dataset; each names its file, row and column."""

    items: list[str] = field(default_factory=list)

    def add(self, file: str | Path, message: str, row: int | None = None, column: str | None = None) -> None:
        where = str(file)
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column {column!r}"
        self.items.append(f"{where}: {message}")

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self, what: str) -> None:
        """Raise one :class:`NetDissectError` listing the problems (at most 20 of them)."""
        if not self.items:
            return
        shown = "\n  ".join(self.items[:20])
        more = f"\n  ... and {len(self.items) - 20} more" if len(self.items) > 20 else ""
        raise NetDissectError(
            f"{what}: {len(self.items)} problem(s):\n  {shown}{more}\n"
            f"Run `netdissect broden check DIR` for the full list; fix the files or regenerate the dataset."
        )


# ---------------------------------------------------------------------------------------------
# Rows of the table files


@dataclass(frozen=True)
class LabelRow:
    """One row of ``label.csv``."""

    number: int
    name: str
    categories: dict[str, int]  # category -> number of images having the label in it
    frequency: int
    coverage: float
    syns: list[str]
    line: int = field(default=0, compare=False)  # line in the file (0: not read from a file)


@dataclass(frozen=True)
class CategoryRow:
    """One row of ``category.csv``."""

    name: str
    first: int
    last: int
    count: int
    frequency: int
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class CodeRow:
    """One row of ``c_<category>.csv``."""

    code: int
    number: int
    name: str
    frequency: int
    coverage: float
    line: int = field(default=0, compare=False)


def read_csv_rows(
    path: Path, columns: list[str], problems: Problems, required: list[str] | None = None
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Read a CSV file (CRLF or LF) into (header, [(line number, row dict)]).

    ``columns`` are the expected header names in order; ``required`` (default: all of them) must be
    present. Unknown extra columns are tolerated (docs/broden-format.md §12), missing ones reported.
    """
    required = columns if required is None else required
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        problems.add(path, "file is missing")
        return [], []
    except OSError as err:
        problems.add(path, f"cannot be read ({err.strerror})")
        return [], []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        problems.add(path, f"is not UTF-8 text (byte {err.start}: {err.reason})", row=line)
        return [], []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] = []
    rows = []
    try:
        header = next(reader, [])
        if not header:
            problems.add(path, f"file is empty; expected the header {','.join(columns)}", row=1)
            return [], []
        if "\0" in text:
            line = text[: text.index("\0")].count("\n") + 1
            problems.add(path, "holds a NUL character; a CSV file is text", row=line)
            return header, []
        missing = [c for c in required if c not in header]
        if missing:
            problems.add(path, f"header lacks column(s) {', '.join(missing)}; expected {','.join(columns)}", row=1)
            return header, []
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:
            problems.add(path, f"header names column(s) {', '.join(map(_short, twice))} more than once", row=1)
            return header, []
        for values in reader:
            line = reader.line_num
            if not values:
                continue
            if len(values) != len(header):
                problems.add(path, f"has {len(values)} fields, the header has {len(header)}", row=line)
                continue
            rows.append((line, dict(zip(header, values))))
    except csv.Error as err:  # a stray quote, an overlong field, ...: the rest of the file cannot be trusted
        problems.add(path, f"is not valid CSV from here on ({err})", row=reader.line_num + 1)
    return header, rows


def parse_int(text: str, minimum: int = 0, maximum: int | None = None) -> int | None:
    """A whole number written in ASCII digits within [minimum, maximum], else None."""
    if not _INT.fullmatch(text) or len(text) > 30:
        return None
    value = int(text)
    return value if value >= minimum and (maximum is None or value <= maximum) else None


def _int(
    text: str, path: Path, line: int, column: str, problems: Problems, minimum: int = 0, maximum: int | None = None
) -> int | None:
    value = parse_int(text, minimum, maximum)
    if value is None:
        within = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        problems.add(path, f"expected an integer {within}, found {_short(text)}", row=line, column=column)
    return value


def _short(text: str) -> str:
    """``text`` for a message: quoted, at most 40 characters of it."""
    return repr(text) if len(text) <= 40 else repr(text[:40]) + f"... ({len(text)} characters)"


def _float(text: str, path: Path, line: int, column: str, problems: Problems) -> float | None:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value < 0:
        problems.add(path, f"expected a non-negative decimal number, found {_short(text)}", row=line, column=column)
        return None
    return value


def read_label_csv(path: Path, problems: Problems) -> list[LabelRow]:
    """Parse ``label.csv`` (docs/broden-format.md §5). Rows with a defect are reported and left out."""
    _, rows = read_csv_rows(path, LABEL_COLUMNS, problems, required=["number", "name"])
    out: list[LabelRow] = []
    seen: dict[int, int] = {}
    for line, row in rows:
        number = _int(row["number"], path, line, "number", problems, minimum=1, maximum=MAX_LABEL)
        frequency = _int(row.get("frequency", "0") or "0", path, line, "frequency", problems)
        coverage = _float(row.get("coverage", "0") or "0", path, line, "coverage", problems)
        categories: dict[str, int] = {}
        for item in filter(None, row.get("category", "").split(";")):
            match = _CATEGORY_ITEM.fullmatch(item)
            if match is None:
                problems.add(
                    path, f"category item {_short(item)} is not of the form cat(n)", row=line, column="category"
                )
            else:
                categories[match.group(1)] = int(match.group(2))
        if number is None or frequency is None or coverage is None:
            continue
        if number in seen:
            problems.add(
                path, f"label number {number} already defined in row {seen[number]}", row=line, column="number"
            )
            continue
        seen[number] = line
        syns = [s for s in row.get("syns", "").split(";") if s]
        out.append(LabelRow(number, row["name"], categories, frequency, coverage, syns, line))
    return out


def read_category_csv(path: Path, problems: Problems) -> list[CategoryRow]:
    """Parse ``category.csv`` (docs/broden-format.md §6); the returned order is the category order everywhere."""
    _, rows = read_csv_rows(path, CATEGORY_COLUMNS, problems, required=["name"])
    out: list[CategoryRow] = []
    names: set[str] = set()
    for line, row in rows:
        values = [_int(row.get(c, "0") or "0", path, line, c, problems) for c in CATEGORY_COLUMNS[1:]]
        name = row["name"]
        if not name or "/" in name or "\\" in name or not name.isprintable() or name != name.strip():
            problems.add(
                path,
                f"category name {name!r} must be non-empty, printable, without surrounding spaces and contain no "
                "path separator",
                row=line,
                column="name",
            )
            continue
        if name in names:
            problems.add(path, f"category {name!r} is listed twice", row=line, column="name")
            continue
        names.add(name)
        if None in values:
            continue
        out.append(CategoryRow(name, *values, line=line))  # type: ignore[arg-type, misc]
    return out


def read_code_csv(path: Path, problems: Problems) -> list[CodeRow]:
    """Parse ``c_<category>.csv`` (docs/broden-format.md §7)."""
    _, rows = read_csv_rows(path, CODE_COLUMNS, problems, required=["code", "number"])
    out: list[CodeRow] = []
    for line, row in rows:
        code = _int(row["code"], path, line, "code", problems, minimum=1)
        number = _int(row["number"], path, line, "number", problems, minimum=1, maximum=MAX_LABEL)
        frequency = _int(row.get("frequency", "0") or "0", path, line, "frequency", problems)
        coverage = _float(row.get("coverage", "0") or "0", path, line, "coverage", problems)
        if None in (code, number, frequency, coverage):
            continue
        out.append(CodeRow(code, number, row.get("name", ""), frequency, coverage, line))  # type: ignore[arg-type]
    return out


def parse_cell(text: str) -> list[int | str]:
    """Split an index.csv category cell into items: ints (image-level labels) and PNG paths (docs/broden-format.md §3.1)."""
    return [int(item) if _INT.fullmatch(item) else item for item in text.split(";") if item]


def primary_categories(codes: dict[str, list[CodeRow]], categories: list[str], num_labels: int) -> np.ndarray:
    """Primary category of every label (docs/broden-format.md §9): index into ``categories``, -1 where none.

    Among the categories whose c_ file lists a label, the one with the largest coverage; ties go to
    the later category. Label 0 never has one.
    """
    best = np.full(num_labels, -np.inf)
    primary = np.full(num_labels, -1, dtype=np.int64)
    for index, category in enumerate(categories):
        rows = [r for r in codes.get(category, []) if r.number < num_labels]
        numbers = np.array([r.number for r in rows], dtype=np.int64)
        coverage = np.array([r.coverage for r in rows], dtype=np.float64)
        later_wins = coverage >= best[numbers]  # ">=": a tie goes to the later category
        primary[numbers[later_wins]] = index
        best[numbers[later_wins]] = coverage[later_wins]
    primary[0] = -1
    return primary


# ---------------------------------------------------------------------------------------------
# Number formats, split hash


def format_short_float(value: float) -> str:
    """The c_*.csv coverage format: Python 2 ``str(float)`` (12 significant digits, always a ``.``),
    but never exponent form: 5.3e-05 -> ``0.000053``, 1840 -> ``1840.0``, 0.5625 -> ``0.5625``."""
    rounded = float(f"{value:.12g}")
    return np.format_float_positional(rounded, trim="0")


def format_label_coverage(value: float) -> str:
    """The label.csv coverage format: ``%f`` (6 decimals)."""
    return f"{value:f}"


def split_hash(image: str) -> float:
    """h in [0, 1) of an ``image`` cell: first 8 bytes of its md5, big-endian, over 2**64 (docs/broden-format.md §3.3)."""
    return int.from_bytes(hashlib.md5(image.encode("utf-8")).digest()[:8], "big") / 2**64


def split_of(image: str) -> str:
    """``train`` if the split hash is <= 0.7, else ``val``."""
    return "train" if split_hash(image) <= TRAIN_FRACTION else "val"


# ---------------------------------------------------------------------------------------------
# Label PNGs


class ImageSizeError(ValueError):
    """An image whose header gives another size than index.csv (found before decoding it)."""

    def __init__(self, found: tuple[int, int]) -> None:
        super().__init__(f"{found[0]}x{found[1]}")
        self.found = found


class UnreadableImage(ValueError):
    """Whatever a decoder raised on a file that exists (truncated, corrupt, a bomb, not an image)."""


def read_rgb(path: Path, expected: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file to uint8 (h, w, 3) RGB.

    ``expected`` (h, w) is checked against the file's header before any pixel is decoded
    (ImageSizeError), so a file declaring a huge size costs nothing. A missing file raises
    FileNotFoundError; anything else a decoder raises on untrusted bytes (OSError, SyntaxError,
    struct and zlib errors, Pillow's decompression bomb error, ...) becomes UnreadableImage.
    """
    try:
        with Image.open(path) as img:
            if expected is not None and (img.height, img.width) != tuple(expected):
                raise ImageSizeError((img.height, img.width))
            return np.asarray(img.convert("RGB") if img.mode != "RGB" else img)
    except (FileNotFoundError, ImageSizeError):
        raise
    except Exception as err:  # a decoder of untrusted data: every failure is the file's
        raise UnreadableImage(f"{type(err).__name__}: {err}") from None


def decode_label_png(path: Path, expected: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a label PNG to an int32 (h, w) map of ``R + 256*G`` (docs/broden-format.md §4); errors as
    :func:`read_rgb` (FileNotFoundError, ImageSizeError, UnreadableImage)."""
    rgb = read_rgb(path, expected)
    return rgb[..., 0].astype(np.int32) | (rgb[..., 1].astype(np.int32) << 8)


def encode_label_rgb(labels: np.ndarray) -> np.ndarray:
    """(h, w) global label numbers (0..65535) -> (h, w, 3) uint8 with R = n % 256, G = n // 256, B = 0."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label layer is 2-D, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise ValueError("label numbers must be in 0..65535 to fit R + 256*G")
    rgb = np.zeros(labels.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = labels & 255
    rgb[..., 1] = labels >> 8
    return rgb
