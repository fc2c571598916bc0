"""Writing a Broden folder with the original byte conventions (docs/broden-format.md, docs/broden-sources.md §6).

Two steps, so that images can be written in parallel:

1. Tables. Collect per-(label name, category) statistics ``(n, c)`` = (number of images having the
   label in that category, summed pixel fraction) -- :func:`image_statistics` gives one image's
   share -- and call :func:`compute_tables`: it filters, numbers the labels by (-frequency,
   -coverage, name) and builds the rows of label.csv, category.csv and every c_<cat>.csv.
   :func:`write_tables` writes them.
2. Images. :func:`write_image` writes one image's JPEG and label PNGs (global numbers) and returns
   its :class:`IndexRow`; :func:`write_index` hashes, sorts and writes index.csv. Write index.csv
   last: a folder without it is not a dataset yet.

:func:`write_broden` does both for an iterable of images held in memory, in one process.
All files are written atomically (``netdissect.io``), every CSV with CRLF line ends.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from netdissect.broden.format import (
    CATEGORY_COLUMNS,
    CODE_COLUMNS,
    INDEX_FIXED_COLUMNS,
    LABEL_COLUMNS,
    CategoryRow,
    CodeRow,
    LabelRow,
    encode_label_rgb,
    format_label_coverage,
    format_short_float,
    split_hash,
    split_of,
)
from netdissect.errors import NetDissectError
from netdissect.io import atomic_path, atomic_write_text

LayerData = np.ndarray | Sequence[int]  # (h, w) map, (k, h, w) stack, or image-level label numbers


# ---------------------------------------------------------------------------------------------
# Tables


@dataclass
class BrodenTables:
    """The rows of label.csv, category.csv and the c_ files, and the number of every kept name."""

    numbers: dict[str, int]  # label name -> global number (dropped names absent)
    label_rows: list[LabelRow]  # by number, 1..L-1
    category_rows: list[CategoryRow]  # category.csv order (ascending first)
    code_rows: dict[str, list[CodeRow]]  # per category, codes 1..count

    @property
    def categories(self) -> list[str]:
        """Category names in category.csv order (the order of every other file)."""
        return [row.name for row in self.category_rows]

    def number(self, name: str) -> int:
        """Global number of a label name; 0 if the name was dropped (or is ``-``)."""
        return self.numbers.get(name, 0)


def compute_tables(
    stats: Mapping[tuple[str, str], tuple[int, float]],
    *,
    syns: Mapping[str, Iterable[str]] | None = None,
    min_frequency: int = 1,
    min_coverage: float = 0.0,
) -> BrodenTables:
    """Number the labels and build every table (docs/broden-sources.md §6.4-6.5).

    Args:
        stats: ``(label name, category) -> (n, c)``: n = images having the label in that category,
            c = its summed pixel fraction there (image-level labels add 1.0 per image).
        syns: optional ``label name -> other source names merged into it`` (label.csv ``syns``).
        min_frequency, min_coverage: keep a name when F = sum of its n >= min_frequency and
            C = sum of its c >= min_coverage (the release used 10 and 0.5). The name ``-`` is never kept.

    Numbers go by (-F, -C, name); c_ codes by (-n, -c, number); the label.csv category field by
    (-n, category name); category rows by (first, name).
    """
    for (name, category), (n, c) in stats.items():
        if not name or not category or n < 0 or c < 0:
            raise NetDissectError(
                f"label statistics: bad entry ({name!r}, {category!r}) -> ({n}, {c}); "
                "expected a non-empty name and category, n >= 0 and c >= 0"
            )
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for (name, _), (n, c) in stats.items():
        totals[name][0] += n
        totals[name][1] += c
    kept = [name for name, (f, c) in totals.items() if name != "-" and f >= min_frequency and c >= min_coverage]
    kept.sort(key=lambda name: (-totals[name][0], -totals[name][1], name))
    numbers = {name: k + 1 for k, name in enumerate(kept)}

    per_category: dict[str, list[tuple[int, int, float]]] = defaultdict(list)  # category -> (number, n, c)
    per_label: dict[int, list[tuple[str, int]]] = defaultdict(list)  # number -> (category, n)
    for (name, category), (n, c) in stats.items():
        if name in numbers:
            per_category[category].append((numbers[name], int(n), float(c)))
            per_label[numbers[name]].append((category, int(n)))

    syns = syns or {}
    label_rows = []
    for name in kept:
        number = numbers[name]
        cats = sorted(per_label[number], key=lambda item: (-item[1], item[0]))
        label_rows.append(
            LabelRow(
                number,
                name,
                dict(cats),
                int(totals[name][0]),
                float(totals[name][1]),
                sorted(set(syns.get(name, ())) - {name}),
            )
        )

    code_rows: dict[str, list[CodeRow]] = {}
    category_rows = []
    for category, entries in per_category.items():
        entries.sort(key=lambda e: (-e[1], -e[2], e[0]))
        code_rows[category] = [
            CodeRow(code + 1, number, kept[number - 1], n, c) for code, (number, n, c) in enumerate(entries)
        ]
        numbers_here = [e[0] for e in entries]
        category_rows.append(
            CategoryRow(category, min(numbers_here), max(numbers_here), len(entries), sum(e[1] for e in entries))
        )
    category_rows.sort(key=lambda row: (row.first, row.name))
    code_rows = {row.name: code_rows[row.name] for row in category_rows}
    return BrodenTables(numbers, label_rows, category_rows, code_rows)


def image_statistics(data: LayerData) -> dict[int, float]:
    """One image's share of the statistics in one category (docs/broden-sources.md §6.1).

    ``data`` is a (h, w) map or (k, h, w) stack of label numbers, or a list of image-level labels.
    Returns ``label -> coverage`` for every nonzero label present: its pixel count over all layers
    divided by h*w (so a stacked label may exceed 1.0), or 1.0 per listing for image-level labels.
    The image counts once in the label's frequency (add 1 to n, the value to c).
    """
    if isinstance(data, np.ndarray) and data.ndim >= 2:
        values, counts = np.unique(data, return_counts=True)
        area = data.shape[-1] * data.shape[-2]
        return {int(v): float(k) / area for v, k in zip(values, counts) if v != 0}
    shares: dict[int, float] = defaultdict(float)
    for label in np.asarray(data, dtype=np.int64).ravel():
        if label != 0:
            shares[int(label)] += 1.0
    return dict(shares)


def _csv_text(header: list[str], rows: Iterable[list[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def tables_text(tables: BrodenTables) -> dict[str, str]:
    """File name -> exact text of label.csv, category.csv and each c_<cat>.csv (CRLF line ends)."""
    files = {
        "label.csv": _csv_text(
            LABEL_COLUMNS,
            (
                [
                    r.number,
                    r.name,
                    ";".join(f"{c}({n})" for c, n in r.categories.items()),
                    r.frequency,
                    format_label_coverage(r.coverage),
                    ";".join(r.syns),
                ]
                for r in tables.label_rows
            ),
        ),
        "category.csv": _csv_text(
            CATEGORY_COLUMNS, ([r.name, r.first, r.last, r.count, r.frequency] for r in tables.category_rows)
        ),
    }
    for category, rows in tables.code_rows.items():
        files[f"c_{category}.csv"] = _csv_text(
            CODE_COLUMNS, ([r.code, r.number, r.name, r.frequency, format_short_float(r.coverage)] for r in rows)
        )
    return files


def write_tables(out_dir: str | Path, tables: BrodenTables) -> None:
    """Write label.csv, category.csv and every c_<cat>.csv into ``out_dir`` (atomically, CRLF)."""
    for name, text in tables_text(tables).items():
        atomic_write_text(Path(out_dir) / name, text)


# ---------------------------------------------------------------------------------------------
# Images and index


@dataclass
class IndexRow:
    """One row of index.csv before sorting: the image path and its items per category."""

    image: str  # "<source>/<stem>.jpg", relative to images/
    ih: int
    iw: int
    sh: int
    sw: int
    cells: dict[str, list[int | str]] = field(default_factory=dict)  # category -> ints / PNG paths


def write_label_png(path: str | Path, labels: np.ndarray) -> None:
    """Write one (h, w) layer of global label numbers as an RGB PNG (R = n % 256, G = n // 256, B = 0)."""
    with atomic_path(path) as tmp:
        Image.fromarray(encode_label_rgb(labels)).save(tmp, format="PNG")


def write_jpeg(path: str | Path, rgb: np.ndarray, quality: int = 75) -> None:
    """Write an (h, w, 3) uint8 RGB image as a baseline JPEG (Pillow defaults: quality 75, 4:2:0)."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(tmp, format="JPEG", quality=quality)


def write_image(out_dir: str | Path, image: str, rgb: np.ndarray, layers: Mapping[str, LayerData]) -> IndexRow:
    """Write one image and its label layers under ``out_dir/images``; return its index row.

    Args:
        image: ``<source>/<stem>.jpg`` (the index.csv ``image`` cell).
        rgb: (ih, iw, 3) uint8.
        layers: category -> a (sh, sw) map (``<stem>_<cat>.png``), a (k, sh, sw) stack
            (``<stem>_<cat>_1.png`` ... even for k = 1), or a list of image-level label numbers
            (written as int items, zeros kept as the caller gave them). Global numbers throughout;
            an empty list or an empty stack gives an empty cell.
    """
    rgb = np.asarray(rgb)
    cells, shape = write_label_layers(out_dir, image, layers)
    write_jpeg(Path(out_dir) / "images" / image, rgb)
    sh, sw = shape if shape is not None else (rgb.shape[0] // 2, rgb.shape[1] // 2)
    return IndexRow(image, rgb.shape[0], rgb.shape[1], sh, sw, cells)


@lru_cache(maxsize=16)
def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source rows of a corner-aligned nearest resize (docs/broden-sources.md §6.6):
    ``floor(i * (n_in - 1) / (n_out - 1) + 0.5)`` in float64."""
    if n_out == 1:
        return np.zeros(1, dtype=np.intp)
    return np.floor(np.arange(n_out) * ((n_in - 1) / (n_out - 1)) + 0.5).astype(np.intp)


def resize_labels(labels: np.ndarray, side: int) -> np.ndarray:
    """Nearest-resize a ``H×W`` label map, or each layer of a ``k×H×W`` stack, to ``side×side``."""
    rows = nearest_indices(labels.shape[-2], side)
    cols = nearest_indices(labels.shape[-1], side)
    return labels[..., rows[:, None], cols[None, :]]


def write_label_layers(
    out_dir: str | Path, image: str, layers: Mapping[str, LayerData]
) -> tuple[dict[str, list[int | str]], tuple[int, int] | None]:
    """Write the label PNGs of one image (see :func:`write_image`); return its index cells by category
    and the (sh, sw) of its maps (None if it has none)."""
    if not image.endswith(".jpg") or image.count("/") != 1:
        raise NetDissectError(f"image name {image!r}: expected '<source>/<stem>.jpg'")
    stem = image[: -len(".jpg")]  # never an end-anchored regex (docs/broden-format.md §12)
    images = Path(out_dir) / "images"
    shape: tuple[int, int] | None = None
    cells: dict[str, list[int | str]] = {}
    for category, data in layers.items():
        if isinstance(data, np.ndarray) and data.ndim in (2, 3):
            stack = data if data.ndim == 3 else data[None]
            if shape is not None and stack.shape[1:] != shape:
                raise NetDissectError(f"{image}: label layers of {category!r} are {stack.shape[1:]}, others {shape}")
            shape = stack.shape[1:]
            names = (
                [f"{stem}_{category}.png"]
                if data.ndim == 2
                else [f"{stem}_{category}_{k + 1}.png" for k in range(len(stack))]
            )
            for name, layer in zip(names, stack):
                write_label_png(images / name, layer)
            cells[category] = list(names)
        else:
            cells[category] = [int(v) for v in np.asarray(data, dtype=np.int64).ravel()]
    return cells, shape


def index_text(rows: Iterable[IndexRow], categories: Sequence[str]) -> str:
    """index.csv text: split by md5 hash, rows in ascending hash (then image name), CRLF."""
    ordered = sorted(rows, key=lambda r: (split_hash(r.image), r.image))
    seen: set[str] = set()
    for row in ordered:
        if row.image in seen:
            raise NetDissectError(f"index.csv: image {row.image!r} appears twice; image names must be unique")
        seen.add(row.image)
        unknown = set(row.cells) - set(categories)
        if unknown:
            raise NetDissectError(
                f"index.csv: image {row.image!r} has data for {sorted(unknown)}, "
                f"which are not among the categories {list(categories)}"
            )
    return _csv_text(
        INDEX_FIXED_COLUMNS + list(categories),
        (
            [r.image, split_of(r.image), r.ih, r.iw, r.sh, r.sw]
            + [";".join(map(str, r.cells.get(c, []))) for c in categories]
            for r in ordered
        ),
    )


def write_index(out_dir: str | Path, rows: Iterable[IndexRow], categories: Sequence[str]) -> None:
    """Write index.csv (atomically). Call it last."""
    atomic_write_text(Path(out_dir) / "index.csv", index_text(rows, categories))


@dataclass
class BrodenImage:
    """An image in memory, ready to write: its name, pixels and label data by category (global numbers)."""

    image: str
    rgb: np.ndarray
    layers: dict[str, LayerData]


def write_broden(
    out_dir: str | Path, images: Iterable[BrodenImage], tables: BrodenTables, readme: str | None = None
) -> None:
    """Write a whole dataset: every image, the tables, README.txt (if given) and index.csv last."""
    out_dir = Path(out_dir)
    rows = [write_image(out_dir, item.image, item.rgb, item.layers) for item in images]
    write_tables(out_dir, tables)
    if readme is not None:
        atomic_write_text(out_dir / "README.txt", readme, newline="\r\n")
    write_index(out_dir, rows, tables.categories)
