"""``netdissect broden check DIR``: list every defect of a Broden folder, each with its file, row and column.

What is checked (docs/broden-format.md):

- tables: category.csv, label.csv and every c_<cat>.csv parse (headers, integers, floats, cat(n)
  items); label numbers have no gaps; names are unique; every number of a c_ file has a label.csv
  row with the same name; codes run 1..count; category.csv first/last/count/frequency and label.csv
  category/frequency agree with the c_ files;
- index.csv: header (fixed columns, one column per category); image paths; splits; sizes; cells
  (integers or relative .png paths); integer labels exist and belong to that category; images unique;
- files (decoded in parallel): every JPEG and PNG exists and decodes; JPEG size = ih x iw; PNG size =
  sh x sw; PNG blue channel 0; every number in a PNG is listed in that category's c_ file; colour
  PNGs have no 0 pixels.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netdissect.broden.dataset import read_index, read_tables, safe_relative_path
from netdissect.broden.format import INDEX_FIXED_COLUMNS, ImageSizeError, Problems, read_rgb
from netdissect.errors import NetDissectError


def check_broden(root: str | Path, workers: int | None = None, limit: int | None = None) -> list[str]:
    """Every problem of the dataset folder ``root`` (an empty list when it is clean).

    ``workers`` processes decode the files (default: all usable cores); ``limit`` restricts the
    file checks to the first rows of index.csv.
    """
    root = Path(root)
    if not root.is_dir():
        raise NetDissectError(f"{root}: not a folder; expected a Broden dataset folder holding index.csv")
    problems = Problems()
    tables = read_tables(root, problems)
    categories: list[str] = tables["categories"]
    _check_tables(root, tables, problems)

    index = read_index(root / "index.csv", categories, problems)
    known = np.array([row is not None for row in tables["labels"]], dtype=bool)
    listed = {c: np.zeros(len(known), dtype=bool) for c in categories}
    for category, rows in tables["codes"].items():
        listed[category][[r.number for r in rows]] = True
    _check_index(root, index, categories, known, listed, problems)

    rows = [
        _RowFiles(line, image, tuple(int(v) for v in size), tuple(zip(categories, cells)))
        for line, image, size, cells in zip(index["lines"], index["images"], index["sizes"], index["cells"])
    ]
    rows = rows[:limit] if limit is not None else rows
    context = _FileContext(root, listed)
    workers = max(1, min(workers if workers is not None else len(os.sched_getaffinity(0)), len(rows) // 64 + 1))
    if workers == 1:
        _init(context)
        results = map(_check_row_files, rows)
        problems.items.extend(p for found in results for p in found)
    else:
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ctx.Pool(workers, initializer=_init, initargs=(context,)) as pool:
            for found in pool.imap(_check_row_files, rows, chunksize=32):
                problems.items.extend(found)
    return problems.items


# ---------------------------------------------------------------------------------------------
# Tables


def _check_tables(root: Path, tables: dict, problems: Problems) -> None:
    labels = tables["labels"]
    label_file = root / "label.csv"
    missing = [n for n in range(1, len(labels)) if labels[n] is None]
    if missing:
        problems.add(
            label_file,
            f"label number(s) {_numbers(missing)} have no row; the numbers must run "
            f"1..{len(labels) - 1} without gaps (they are used in c_ files or later rows)",
        )
    names = Counter(row.name for row in labels if row is not None)
    for row in labels:
        if row is None:
            continue
        if not row.name:
            problems.add(label_file, f"label {row.number} has an empty name", row=row.line, column="name")
        elif names[row.name] > 1:
            problems.add(
                label_file,
                f"name {row.name!r} of label {row.number} is used by several labels",
                row=row.line,
                column="name",
            )
        if row.categories and sum(row.categories.values()) != row.frequency:
            problems.add(
                label_file,
                f"label {row.number}: frequency {row.frequency} is not the sum of its category counts {row.categories}",
                row=row.line,
                column="frequency",
            )

    per_label: dict[int, dict[str, int]] = {}
    for category_row in tables["category_rows"]:
        category = category_row.name
        if category not in tables["codes"]:
            continue
        code_file = root / f"c_{category}.csv"
        rows = tables["codes"][category]
        wrong = [r for k, r in enumerate(rows) if r.code != k + 1]
        if wrong:
            problems.add(
                code_file,
                f"codes must run 1..{len(rows)} in order, found {_numbers([r.code for r in rows])}",
                row=wrong[0].line,
                column="code",
            )
        for r in rows:
            per_label.setdefault(r.number, {})[category] = r.frequency
            label = labels[r.number] if r.number < len(labels) else None
            if label is None:
                problems.add(
                    code_file,
                    f"label number {r.number} ({r.name!r}) is missing from label.csv; add its row or remove it here",
                    row=r.line,
                    column="number",
                )
            elif label.name != r.name:
                problems.add(
                    code_file,
                    f"label {r.number} is named {r.name!r} here but {label.name!r} in label.csv",
                    row=r.line,
                    column="name",
                )
        numbers = [r.number for r in rows]
        expected = (min(numbers, default=0), max(numbers, default=0), len(rows), sum(r.frequency for r in rows))
        found = (category_row.first, category_row.last, category_row.count, category_row.frequency)
        for column, want, got in zip(("first", "last", "count", "frequency"), expected, found):
            if want != got:
                problems.add(
                    root / "category.csv",
                    f"category {category!r}: {column} is {got}, but c_{category}.csv gives {want}",
                    row=category_row.line,
                    column=column,
                )
    for row in labels:
        if row is not None and row.categories and row.categories != per_label.get(row.number, {}):
            problems.add(
                label_file,
                f"label {row.number} ({row.name!r}): category field {row.categories} does not "
                f"match the c_ files {per_label.get(row.number, {})}",
                row=row.line,
                column="category",
            )


def _numbers(values: list[int]) -> str:
    shown = ", ".join(map(str, values[:10]))
    return shown + (f", ... ({len(values)} in all)" if len(values) > 10 else "")


# ---------------------------------------------------------------------------------------------
# index.csv cells


def _check_index(
    root: Path, index: dict, categories: list[str], known: np.ndarray, listed: dict[str, np.ndarray], problems: Problems
) -> None:
    path = root / "index.csv"
    for column in index["header"]:
        if column not in INDEX_FIXED_COLUMNS and column not in categories:
            problems.add(path, f"column {column!r} is not a category of category.csv", row=1)
    seen: dict[str, int] = {}
    for line, image, cells in zip(index["lines"], index["images"], index["cells"]):
        if image in seen:
            problems.add(path, f"image {image!r} is already listed in row {seen[image]}", row=line, column="image")
        seen[image] = line
        if not image.endswith(".jpg"):
            problems.add(path, f"expected a .jpg path, found {image!r}", row=line, column="image")
        for category, items in zip(categories, cells):
            for item in items:
                if not isinstance(item, int) or item == 0:
                    continue
                if item >= len(known) or not known[item]:
                    problems.add(path, f"label number {item} is missing from label.csv", row=line, column=category)
                elif not listed[category][item]:
                    problems.add(
                        path, f"label number {item} is not listed in c_{category}.csv", row=line, column=category
                    )


# ---------------------------------------------------------------------------------------------
# Files (in worker processes)


@dataclass(frozen=True)
class _FileContext:
    root: Path
    listed: dict[str, np.ndarray]  # category -> bool (L,) numbers listed in its c_ file


@dataclass(frozen=True)
class _RowFiles:
    line: int
    image: str
    size: tuple[int, ...]  # ih, iw, sh, sw
    cells: tuple[tuple[str, list], ...]  # (category, items)


_CONTEXT: _FileContext | None = None


class _Skip(Exception):
    pass


def _init(context: _FileContext) -> None:
    global _CONTEXT
    _CONTEXT = context


def _check_row_files(row: _RowFiles) -> list[str]:
    context = _CONTEXT
    assert context is not None
    found = Problems()
    ih, iw, sh, sw = row.size
    where = f"(index.csv row {row.line}"
    jpeg = context.root / "images" / row.image
    try:
        if not safe_relative_path(row.image):
            raise _Skip
        read_rgb(jpeg, (ih, iw) if ih and iw else None)
    except ImageSizeError as err:
        found.add(
            jpeg,
            f"image is {err.found[0]}x{err.found[1]} (h x w), index.csv says ih={ih}, iw={iw} "
            f"{where}, columns 'ih', 'iw')",
        )
    except FileNotFoundError:
        found.add(jpeg, f"image file is missing {where}, column 'image')")
    except (OSError, ValueError) as err:
        found.add(jpeg, f"image cannot be decoded: {err} {where}, column 'image')")
    except _Skip:  # an unusable path, already reported with index.csv
        pass
    for category, items in row.cells:
        for item in items:
            if isinstance(item, str):
                _check_png(
                    context, context.root / "images" / item, category, (sh, sw), f"{where}, column {category!r})", found
                )
    return found.items


def _check_png(
    context: _FileContext, path: Path, category: str, shape: tuple[int, int], where: str, found: Problems
) -> None:
    try:
        rgb = read_rgb(path, shape if all(shape) else None)
    except FileNotFoundError:
        found.add(path, f"label PNG is missing {where}")
        return
    except ImageSizeError as err:
        found.add(
            path, f"label map is {err.found[0]}x{err.found[1]}, index.csv says sh={shape[0]}, sw={shape[1]} {where}"
        )
        return
    except (OSError, ValueError) as err:
        found.add(path, f"label PNG cannot be decoded: {err} {where}")
        return
    if rgb[..., 2].any():
        found.add(path, f"blue channel must be 0 (labels are R + 256*G), found {int(rgb[..., 2].max())} {where}")
    labels = rgb[..., 0].astype(np.int64) | (rgb[..., 1].astype(np.int64) << 8)
    values = np.unique(labels)
    values = values[values > 0]
    allowed = context.listed[category]
    bad = values[(values >= len(allowed)) | ~allowed[np.minimum(values, len(allowed) - 1)]]
    if bad.size:
        pixels = int(np.isin(labels, bad).sum())
        found.add(
            path,
            f"holds label number(s) {_numbers(bad.tolist())} ({pixels} pixels) not listed in c_{category}.csv {where}",
        )
    if category == "color" and (labels == 0).any():
        found.add(
            path, f"colour map has {int((labels == 0).sum())} unlabeled (0) pixels; every pixel needs a colour {where}"
        )
