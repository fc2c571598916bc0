"""Read one layer's dissection (``result.csv``, ``summary.json``) and count its detectors.

``result.csv`` is the single source of the numbers a report shows (docs/dissection.md §6): one row
per unit, ``unit,category,label,score`` and then, for every category in category.csv order,
``<cat>-label,<cat>-truth,<cat>-activation,<cat>-intersect,<cat>-iou``. ``summary.json`` only supplies
names and settings (model, layer, dataset, iou_threshold); the counts are recomputed here from
result.csv with the definitions of docs/dissection.md §5 (:mod:`netdissect.score`), so the per-layer report and the cross-network summary
always agree with the file users plot from.
"""

from __future__ import annotations

import csv
import io
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
            f"{source}: line 1 (the header): missing column(s) {', '.join(missing)}; expected the header "
            "'unit,category,label,score,<cat>-label,<cat>-truth,<cat>-activation,<cat>-intersect,<cat>-iou,...' "
            "(docs/dissection.md §6). Regenerate it with `netdissect score`."
        )
    categories = [c[: -len("-label")] for c in columns if c.endswith("-label")]
    for cat in categories:
        absent = [f"{cat}-{f}" for f in CATEGORY_FIELDS if f"{cat}-{f}" not in columns]
        if absent:
            raise NetDissectError(
                f"{source}: line 1 (the header): category '{cat}' lacks column(s) {', '.join(absent)}; every category needs "
                f"{', '.join(f'{cat}-{f}' for f in CATEGORY_FIELDS)}. Regenerate it with `netdissect score`."
            )
    if not categories:
        raise NetDissectError(
            f"{source}: line 1 (the header): no '<category>-label' column; expected one group of five columns "
            "per category (docs/dissection.md §6)."
        )
    return categories


MAX_COUNT = 2**53  # counts are pixel sums; above this a float64 would no longer hold them exactly


def _numeric(
    table: pd.DataFrame,
    column: str,
    source: str,
    lines: np.ndarray,
    integer: bool = False,
    minimum: float = 0.0,
    maximum: float = float(MAX_COUNT),
) -> pd.Series:
    """A column as numbers; the first value that is not a (whole) number in [minimum, maximum] is an
    error naming its line of the file."""
    values = pd.to_numeric(table[column].str.strip(), errors="coerce").astype(np.float64)
    bad = values.isna() | ~np.isfinite(values) | (values < minimum) | (values > maximum)
    what = f"a finite number from {minimum:g} to {maximum:g}"
    if integer:
        bad |= values != values.round()
        what = f"a whole number from {minimum:g} to {maximum:g}"
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise NetDissectError(
            f"{source}: row {lines[row]}, column '{column}': {table[column].iloc[row][:40]!r} is not {what}. "
            "Regenerate the file with `netdissect score`."
        )
    return values.astype(np.int64) if integer else values


def parse_result(
    table: pd.DataFrame, source: str = "result.csv", lines: list[int] | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Validate a result table read as text; return it with typed columns, and its categories.

    The returned frame keeps the file's row order and has ``unit`` (int, 1-based), ``category``,
    ``label`` (str, "" when empty), ``score`` (float) and the per-category columns typed
    (labels str, counts int, iou float). Units must be exactly 1..U, each once. ``lines``: the line
    of the file each row came from, for messages (default: one line per row after the header).
    """
    table = table.copy()
    categories = result_categories(list(table.columns), source)
    at = np.asarray(lines if lines is not None else range(2, len(table) + 2), dtype=np.int64)
    for column in table.columns:
        table[column] = table[column].astype(str)
    typed = pd.DataFrame(
        {
            "unit": _numeric(table, "unit", source, at, integer=True, minimum=1),
            "category": table["category"].to_numpy(),
            "label": table["label"].to_numpy(),
            "score": _numeric(table, "score", source, at, maximum=1.0),
        }
    )
    for cat in categories:
        typed[f"{cat}-label"] = table[f"{cat}-label"].to_numpy()
        for f in ("truth", "activation", "intersect"):
            typed[f"{cat}-{f}"] = _numeric(table, f"{cat}-{f}", source, at, integer=True)
        typed[f"{cat}-iou"] = _numeric(table, f"{cat}-iou", source, at, maximum=1.0)
    units = typed["unit"].to_numpy()
    if len(units) == 0:
        raise NetDissectError(f"{source}: line 2: no unit rows after the header; a layer has at least one unit.")
    seen = np.zeros(len(units) + 1, dtype=bool)
    for row, unit in enumerate(units):
        if unit > len(units) or seen[unit]:
            raise NetDissectError(
                f"{source}: row {at[row]}, column 'unit': unit {unit} "
                + ("appears again" if unit <= len(units) else f"is past the {len(units)} rows")
                + f"; the 'unit' column must hold each of 1..{len(units)} exactly once (unit numbers are 1-based). "
                "Regenerate it with `netdissect score`."
            )
        seen[unit] = True
    labeled = (typed["label"] != "").to_numpy()
    unknown = labeled & ~typed["category"].isin(categories).to_numpy()
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise NetDissectError(
            f"{source}: row {at[row]}, column 'category': {typed['category'].iloc[row][:40]!r} has no "
            f"'<cat>-label' columns (categories in the header: {categories})."
        )
    return typed, categories


def read_result_csv(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """Read and validate ``result.csv`` (CRLF or LF, quoted fields allowed); see :func:`parse_result`.
    Every problem is a NetDissectError naming the file and its line."""
    path = Path(path)
    if not path.is_file():
        raise NetDissectError(f"{path}: no such file; run `netdissect score` for this layer first.")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise NetDissectError(
            f"{path}: line {line}: not UTF-8 text (byte {err.start}); regenerate it with `netdissect score`."
        ) from None
    if "\0" in text:
        raise NetDissectError(
            f"{path}: line {text[: text.index(chr(0))].count(chr(10)) + 1}: holds a NUL character; a CSV file is "
            "text. Regenerate it with `netdissect score`."
        )
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, lines = [], []
    try:
        header = next(reader, None)
        if not header:
            raise NetDissectError(
                f"{path}: line 1: empty; expected the header 'unit,category,label,score,...'. "
                "Regenerate it with `netdissect score`."
            )
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:
            raise NetDissectError(f"{path}: line 1 (the header): column(s) {twice} appear more than once.")
        for values in reader:
            if not values:
                continue
            if len(values) != len(header):
                raise NetDissectError(
                    f"{path}: row {reader.line_num}: has {len(values)} fields, the header has {len(header)}. "
                    "Regenerate it with `netdissect score`."
                )
            rows.append(values)
            lines.append(reader.line_num)
    except csv.Error as err:
        raise NetDissectError(
            f"{path}: line {reader.line_num + 1}: not valid CSV ({err}); regenerate it with `netdissect score`."
        ) from None
    return parse_result(pd.DataFrame(rows, columns=header, dtype=str), str(path), lines)


def read_summary(path: str | Path) -> dict[str, Any]:
    """Read ``summary.json`` as a dict; a missing file gives an empty dict (the report then falls back
    to folder names and the default IoU threshold), a broken one an error naming its line. The keys
    the reports read are checked here: ``settings`` (an object) and ``iou_threshold`` (a number >= 0,
    at the top level or under ``settings``)."""
    path = Path(path)
    if not path.exists():
        return {}
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
        summary = json.loads(text)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise NetDissectError(f"{path}: line {line}: not UTF-8 text; regenerate it with `netdissect score`.") from None
    except json.JSONDecodeError as err:
        raise NetDissectError(
            f"{path}: line {err.lineno}: not valid JSON ({err.msg}); regenerate it with `netdissect score`."
        ) from None
    except RecursionError:
        raise NetDissectError(
            f"{path}: line 1: JSON nested too deeply; regenerate it with `netdissect score`."
        ) from None
    if not isinstance(summary, dict):
        raise NetDissectError(f"{path}: line 1: expected a JSON object, found {type(summary).__name__}.")
    settings = summary.get("settings")
    if settings is not None and not isinstance(settings, dict):
        raise NetDissectError(
            f"{path}: line {_line_of(text, 'settings')}: 'settings' is {type(settings).__name__}; expected an object."
        )
    iou_threshold_of(summary, f"{path}: line {_line_of(text, 'iou_threshold')}")
    return summary


def _line_of(text: str, key: str) -> int:
    """The line of a JSON text where ``"key"`` first appears (1 when it does not)."""
    at = text.find(json.dumps(key))
    return text[:at].count("\n") + 1 if at >= 0 else 1


def iou_threshold_of(summary: Mapping[str, Any], source: str = "summary.json") -> float:
    """The IoU threshold a layer was scored with: ``iou_threshold`` at the top level or under
    ``settings``; the default (netdissect.defaults.IOU_THRESHOLD) when the summary does not say."""
    settings = summary.get("settings")
    value = summary.get("iou_threshold", settings.get("iou_threshold") if isinstance(settings, Mapping) else None)
    if value is None:
        return IOU_THRESHOLD
    number = (
        float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 1e300
        else math.nan
    )
    if not math.isfinite(number) or number < 0:
        raise NetDissectError(f"{source}: 'iou_threshold' is {str(value)[:40]!r}; expected a number ≥ 0.")
    return number


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
