"""Read one layer's dissection (``result.csv``, ``summary.json``) and count its detectors.

``result.csv`` is the single source of the numbers a report shows (docs/dissection.md §6): one row
per unit, ``unit,category,label,score`` and then, for every category in category.csv order,
``<cat>-label,<cat>-truth,<cat>-activation,<cat>-intersect,<cat>-iou``. ``summary.json`` only supplies
names and settings (model, layer, dataset, iou_threshold); the counts are recomputed here from
result.csv with the definitions of docs/dissection.md §5 (:mod:`netdissect.score`), so the per-layer report and the cross-network summary
always agree with the file users plot from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
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


def result_categories(columns: list[str], source: str = "result.csv") -> list[str]:
    """The categories of a result table, in column order, checking every per-category column is there."""
    missing = [c for c in _FIXED_COLUMNS if c not in columns]
    if missing:
        raise NetDissectError(
            f"{source}: missing column(s) {', '.join(missing)}; expected the header "
            "'unit,category,label,score,<cat>-label,<cat>-truth,<cat>-activation,<cat>-intersect,<cat>-iou,...' "
            "(docs/dissection.md §6). Regenerate it with `netdissect score`."
        )
    categories = [c[: -len("-label")] for c in columns if c.endswith("-label")]
    for cat in categories:
        absent = [f"{cat}-{f}" for f in CATEGORY_FIELDS if f"{cat}-{f}" not in columns]
        if absent:
            raise NetDissectError(
                f"{source}: category '{cat}' lacks column(s) {', '.join(absent)}; every category needs "
                f"{', '.join(f'{cat}-{f}' for f in CATEGORY_FIELDS)}. Regenerate it with `netdissect score`."
            )
    if not categories:
        raise NetDissectError(
            f"{source}: no '<category>-label' column; expected one group of five columns "
            "per category (docs/dissection.md §6)."
        )
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
    (labels str, counts int, iou float). Units must be exactly 1..U, each once.
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
        for f in ("truth", "activation", "intersect"):
            typed[f"{cat}-{f}"] = _numeric(table, f"{cat}-{f}", source, integer=True)
        typed[f"{cat}-iou"] = _numeric(table, f"{cat}-iou", source)
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


def read_result_csv(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """Read and validate ``result.csv``; see :func:`parse_result`."""
    path = Path(path)
    if not path.is_file():
        raise NetDissectError(f"{path}: no such file; run `netdissect score` for this layer first.")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise NetDissectError(f"{path}: not a readable CSV ({err}); regenerate it with `netdissect score`.") from err
    return parse_result(table, str(path))


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
