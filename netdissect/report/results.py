"""Read a layer's results in any of three layouts, and count its detectors.

A result table has one row per unit, ``unit,category,label,score`` and then, for every category,
``<cat>-label,<cat>-truth,<cat>-activation,<cat>-intersect,<cat>-iou`` (docs/dissection.md §6). Three
systems write it, with the same column names but other column orders and number formats
(docs/results-files.md):

* ``netdissect``: our ``result.csv``; counts are whole numbers, categories in category.csv order.
* ``lite``: NetDissect-Lite's ``tally.csv``; every count is written as a float (``1234.0``).
* ``original``: the original system's ``<layer>-result.csv`` (and the CSVs its paper's plots were made
  from); truth and intersect are whole numbers, activation a float, categories in any order.

Columns are read by name, so any order works. Where a category has no label, the other systems write
label 0's numbers; they are read as truth 0, intersect 0, IoU 0 (what netdissect writes), so that
"no label" means one thing. ``summary.json`` only supplies names and settings (model, layer, dataset,
iou_threshold); the counts are recomputed from the table with the rules of :mod:`netdissect.score`,
so the per-layer report, the cross-network summary and ``compare`` agree with the file users plot from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from netdissect import score as scoring
from netdissect.defaults import IOU_THRESHOLD
from netdissect.errors import NetDissectError
from netdissect.score import LayerCounts

CATEGORY_FIELDS = ("label", "truth", "activation", "intersect", "iou")
_FIXED_COLUMNS = ("unit", "category", "label", "score")
COUNT_FIELDS = ("truth", "activation", "intersect")

# The three layouts (docs/results-files.md) and the file names their systems give them.
LAYOUTS = {
    "netdissect": "netdissect's result.csv",
    "lite": "NetDissect-Lite's tally.csv",
    "original": "the original system's <layer>-result.csv",
}
RESULT_FILE = "result.csv"
LITE_FILE = "tally.csv"
ORIGINAL_SUFFIX = "-result.csv"
KNOWN_LAYOUTS = (
    "a result file of a known layout: netdissect's result.csv, NetDissect-Lite's tally.csv or the original "
    "system's <layer>-result.csv, with the header 'unit,category,label,score' and, per category, "
    "'<cat>-label,<cat>-truth,<cat>-activation,<cat>-intersect,<cat>-iou' in any order (docs/dissection.md §6)"
)


def result_categories(columns: list[str], source: str = "result.csv") -> list[str]:
    """The categories of a result table, in column order, checking every per-category column is there."""
    missing = [c for c in _FIXED_COLUMNS if c not in columns]
    if missing:
        raise NetDissectError(f"{source}: missing column(s) {', '.join(missing)}; expected {KNOWN_LAYOUTS}.")
    categories = [c[: -len("-label")] for c in columns if c.endswith("-label")]
    for cat in categories:
        absent = [f"{cat}-{f}" for f in CATEGORY_FIELDS if f"{cat}-{f}" not in columns]
        if absent:
            raise NetDissectError(
                f"{source}: category '{cat}' lacks column(s) {', '.join(absent)}; every category needs "
                f"{', '.join(f'{cat}-{f}' for f in CATEGORY_FIELDS)}. Regenerate it with `netdissect score`."
            )
    if not categories:
        raise NetDissectError(f"{source}: no '<category>-label' column; expected {KNOWN_LAYOUTS}.")
    return categories


def _numeric(table: pd.DataFrame, column: str, source: str, integer: bool = False) -> pd.Series:
    values = pd.to_numeric(table[column].str.strip(), errors="coerce")
    bad = values.isna() | ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise NetDissectError(
            f"{source}: row {row + 2}, column '{column}': {table[column].iloc[row]!r} is not a finite number. "
            "Regenerate the file with `netdissect score`."
        )
    if integer:
        if (values != values.round()).any():
            row = int(np.flatnonzero((values != values.round()).to_numpy())[0])
            raise NetDissectError(
                f"{source}: row {row + 2}, column '{column}': {table[column].iloc[row]!r} is not a whole number."
            )
        return values.astype(np.int64)
    return values.astype(np.float64)


def parse_result(table: pd.DataFrame, source: str = "result.csv") -> tuple[pd.DataFrame, list[str]]:
    """Validate a result table read as text; return it with typed columns, and its categories.

    The returned frame keeps the file's row order and has ``unit`` (int, 1-based), ``category``,
    ``label`` (str, "" when empty), ``score`` (float) and the per-category columns typed
    (labels str, counts int, iou float); counts written as floats (``1234.0``) must be whole numbers.
    A category without a label gets truth, intersect and iou 0. Units must be exactly 1..U, each once.
    """
    table = table.copy()
    categories = result_categories(list(table.columns), source)
    for column in table.columns:
        table[column] = table[column].astype(str)
    typed = pd.DataFrame(
        {
            "unit": _numeric(table, "unit", source, integer=True),
            "category": table["category"].to_numpy(),
            "label": table["label"].to_numpy(),
            "score": _numeric(table, "score", source),
        }
    )
    for cat in categories:
        typed[f"{cat}-label"] = table[f"{cat}-label"].to_numpy()
        for f in COUNT_FIELDS:
            typed[f"{cat}-{f}"] = _numeric(table, f"{cat}-{f}", source, integer=True)
        typed[f"{cat}-iou"] = _numeric(table, f"{cat}-iou", source)
        empty = typed[f"{cat}-label"] == ""
        typed.loc[empty, [f"{cat}-truth", f"{cat}-intersect"]] = 0
        typed.loc[empty, f"{cat}-iou"] = 0.0
    units = np.sort(typed["unit"].to_numpy())
    if len(units) == 0:
        raise NetDissectError(f"{source}: no unit rows; a layer has at least one unit.")
    if not np.array_equal(units, np.arange(1, len(units) + 1)):
        raise NetDissectError(
            f"{source}: the 'unit' column must hold each of 1..{len(units)} exactly once (unit numbers are "
            f"1-based); found {units[:5].tolist()}...{units[-3:].tolist()}. Regenerate it with `netdissect score`."
        )
    labeled = typed["label"] != ""
    unknown = sorted(set(typed.loc[labeled, "category"]) - set(categories))
    if unknown:
        raise NetDissectError(
            f"{source}: column 'category' holds {unknown}, which has no '<cat>-label' columns "
            f"(categories in the header: {categories})."
        )
    return typed, categories


def detect_layout(table: pd.DataFrame, categories: list[str], name: str = "") -> str:
    """Which system wrote a result table (read as text): from how its counts are written, else from
    the file ``name``. ``netdissect``: whole numbers; ``lite``: all counts as floats; ``original``:
    activation alone as a float."""
    floats = {
        f: any(table[f"{c}-{f}"].astype(str).str.contains(r"[.eE]").any() for c in categories) for f in COUNT_FIELDS
    }
    if not any(floats.values()):
        return "netdissect"
    if floats["truth"] and floats["intersect"]:
        return "lite"
    if floats["activation"] and not floats["truth"] and not floats["intersect"]:
        return "original"
    if name == LITE_FILE:
        return "lite"
    return "original" if name.endswith(ORIGINAL_SUFFIX) else "netdissect"


@dataclass(frozen=True)
class ResultFile:
    """One layer's results as read by :func:`read_result_file`: the typed table of :func:`parse_result`,
    its categories (column order), the layout that wrote it (a key of ``LAYOUTS``) and the layer name
    the original system puts in its file name (``conv5-result.csv``; None otherwise)."""

    path: Path
    table: pd.DataFrame
    categories: list[str]
    layout: str
    layer: str | None = None

    @property
    def units(self) -> int:
        return len(self.table)


def read_result_file(path: str | Path) -> ResultFile:
    """Read and validate a result file of any of the three layouts (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise NetDissectError(
            f"{path}: no such file; expected {KNOWN_LAYOUTS}. For a layer of netdissect, run `netdissect score` first."
        )
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise NetDissectError(f"{path}: not a readable CSV ({err}); expected {KNOWN_LAYOUTS}.") from err
    table, categories = parse_result(raw, str(path))
    layer = path.name[: -len(ORIGINAL_SUFFIX)] if path.name.endswith(ORIGINAL_SUFFIX) else None
    return ResultFile(path, table, categories, detect_layout(raw, categories, path.name), layer or None)


def read_result_csv(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """Read and validate a result file (any layout); see :func:`parse_result`."""
    result = read_result_file(path)
    return result.table, result.categories


def result_files(folder: str | Path) -> list[Path]:
    """The result files of a folder: its ``result.csv``, else its ``tally.csv``, else every
    ``<layer>-result.csv`` (sorted by name). A CSV file given instead of a folder is its own result."""
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise NetDissectError(f"{folder}: no such folder or file; expected a folder holding {KNOWN_LAYOUTS}.")
    for name in (RESULT_FILE, LITE_FILE):
        if (folder / name).is_file():
            return [folder / name]
    found = sorted(p for p in folder.glob(f"*{ORIGINAL_SUFFIX}") if p.is_file())
    if not found:
        raise NetDissectError(
            f"{folder}: holds no result.csv, tally.csv or <layer>-result.csv; expected a folder holding "
            f"{KNOWN_LAYOUTS}, or such a CSV file itself."
        )
    return found


def read_summary(path: str | Path) -> dict[str, Any]:
    """Read ``summary.json`` as a dict; a missing file gives an empty dict (the report then falls back
    to folder names and the default IoU threshold), a broken one an error."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NetDissectError(f"{path}: not valid JSON ({err}); regenerate it with `netdissect score`.") from err
    if not isinstance(summary, dict):
        raise NetDissectError(f"{path}: expected a JSON object, found {type(summary).__name__}.")
    return summary


def iou_threshold_of(summary: Mapping[str, Any], source: str = "summary.json") -> float:
    """The IoU threshold a layer was scored with: ``iou_threshold`` at the top level or under
    ``settings``; the default (netdissect.defaults.IOU_THRESHOLD) when the summary does not say."""
    value = summary.get("iou_threshold", (summary.get("settings") or {}).get("iou_threshold"))
    if value is None:
        return IOU_THRESHOLD
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise NetDissectError(f"{source}: 'iou_threshold' is {summary.get('iou_threshold')!r}; expected a number ≥ 0.")
    return value


def detector_mask(result: pd.DataFrame, iou_threshold: float) -> np.ndarray:
    """Boolean per row of a result table: the unit is a detector (:func:`netdissect.score.detector_mask`)."""
    return scoring.detector_mask(result["score"].to_numpy(), result["label"].to_numpy() != "", iou_threshold)


def count_detectors(result: pd.DataFrame, categories: list[str], iou_threshold: float) -> LayerCounts:
    """Detectors and both unique-detector counts of a result table (:func:`netdissect.score.count_units`)."""
    index = {c: i for i, c in enumerate(categories)}
    return scoring.count_units(
        result["score"].to_numpy(),
        result["label"].to_numpy(),
        result["category"].map(index).fillna(-1).to_numpy(),
        np.stack([result[f"{c}-iou"].to_numpy() for c in categories], axis=1),
        np.stack([result[f"{c}-label"].to_numpy() for c in categories], axis=1),
        categories,
        iou_threshold,
        empty="",
    )


def label_bars(result: pd.DataFrame, categories: list[str], iou_threshold: float) -> list[tuple[str, str, int]]:
    """One ``(category, label, detector units)`` per label with at least one detector: grouped by
    category in category order, within a category by count descending, then label."""
    detectors = result[detector_mask(result, iou_threshold)]
    counts = detectors.groupby(["category", "label"]).size().reset_index(name="n")
    order = {cat: i for i, cat in enumerate(categories)}
    counts["order"] = counts["category"].map(order)
    counts = counts.sort_values(["order", "n", "label"], ascending=[True, False, True])
    return [(c, l, int(n)) for c, l, n in zip(counts["category"], counts["label"], counts["n"])]


TIDY_COLUMNS = ("unit", "category", "label", "iou", "truth", "activation", "intersect", "top", "detector")


def tidy_units(result: pd.DataFrame, categories: list[str], iou_threshold: float) -> pd.DataFrame:
    """A result table in long form: one row per unit (ascending) and category (in ``categories`` order)
    with ``label, iou, truth, activation, intersect`` of that category; ``top`` is True on the row of
    the unit's own label (result.csv's ``category``/``label``), ``detector`` on every row of a unit that
    is a detector (:func:`netdissect.score.detector_mask`)."""
    ordered = result.sort_values("unit", kind="stable")
    units, k = len(ordered), len(categories)

    def per_category(field: str):
        return pd.concat([ordered[f"{c}-{field}"].reset_index(drop=True) for c in categories], axis=1).to_numpy()

    labelled = ordered["label"].to_numpy() != ""
    top = (ordered["category"].to_numpy()[:, None] == np.array(categories, dtype=object)[None, :]) & labelled[:, None]
    return pd.DataFrame(
        {
            "unit": np.repeat(ordered["unit"].to_numpy(), k),
            "category": np.tile(np.array(categories, dtype=object), units),
            "label": per_category("label").ravel(),
            "iou": per_category("iou").astype(np.float64).ravel(),
            "truth": per_category("truth").astype(np.int64).ravel(),
            "activation": per_category("activation").astype(np.int64).ravel(),
            "intersect": per_category("intersect").astype(np.int64).ravel(),
            "top": top.ravel(),
            "detector": np.repeat(detector_mask(ordered, iou_threshold), k),
        },
        columns=list(TIDY_COLUMNS),
    )
