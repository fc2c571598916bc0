"""A sweep's summary (docs/experiments.md §1–2): one layer dissected at several points (rotation
powers, training steps), as a table and charts of detectors and unique detectors per category.

Counts come from each point's result.csv with the rules of docs/dissection.md §5
(:func:`netdissect.report.results.count_detectors`, as ``report-all`` counts them). A sweep folder
holds ``sweep.csv``, ``detectors.svg``, ``unique_by_category.svg`` and ``sweep.json`` (what it is:
axis, title, model, layer, the files), which ``report-all --sweeps`` links.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from netdissect.errors import NetDissectError
from netdissect.io import atomic_write_text, save_json
from netdissect.report.charts import line_chart
from netdissect.score import LayerCounts

# axis name -> (column name, axis label)
AXES = {"power": ("power", "rotation power p"), "step": ("step", "training step")}
KINDS = ("detectors", "unique_top", "unique_by_category")
LOG_SPAN = 100  # a step axis is drawn on a log scale when the largest step is this many times the smallest


@dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep: its value on the axis and the layer's counts there."""

    value: float
    counts: LayerCounts


def check_points(axis: str, values: Sequence[float]) -> None:
    """Values in increasing order, without repeats; steps are whole numbers ≥ 1, powers in [0, 1]."""
    if axis not in AXES:
        raise NetDissectError(f"--axis {axis}: expected one of {', '.join(AXES)}")
    if not values:
        raise NetDissectError("--points: give at least one VALUE=LAYER_DIR")
    for a, b in zip(values, values[1:]):
        if not b > a:
            raise NetDissectError(
                f"--points: {axis} {b:g} follows {a:g}; give the points in increasing order, each once"
            )
    if axis == "step" and any(v < 1 or v != int(v) for v in values):
        raise NetDissectError(f"--points: steps must be whole numbers >= 1, got {', '.join(f'{v:g}' for v in values)}")
    if axis == "power" and any(not 0 <= v <= 1 for v in values):
        raise NetDissectError(f"--points: powers must lie in [0, 1], got {', '.join(f'{v:g}' for v in values)}")


def sweep_table(axis: str, points: Sequence[SweepPoint], categories: Sequence[str]) -> list[list[object]]:
    """Header and rows of sweep.csv: one row per point, counts overall and per category."""
    header = [AXES[axis][0], "units", *KINDS, *(f"{cat}-{kind}" for cat in categories for kind in KINDS)]
    rows: list[list[object]] = [header]
    for point in points:
        c = point.counts
        value = int(point.value) if axis == "step" else point.value
        rows.append(
            [
                f"{value:g}",
                c.units,
                c.detectors,
                c.unique_top,
                c.unique_by_category,
                *(c.per_category.get(cat, {}).get(kind, 0) for cat in categories for kind in KINDS),
            ]
        )
    return rows


def sweep_charts(axis: str, points: Sequence[SweepPoint], categories: Sequence[str], name: str) -> dict[str, str]:
    """``detectors`` and ``unique_by_category``: SVG line charts of each category's count against the axis."""
    xs = [p.value for p in points]
    log_x = axis == "step" and min(xs) > 0 and max(xs) / min(xs) >= LOG_SPAN
    charts = {}
    for kind, what in (("detectors", "detectors"), ("unique_by_category", "unique detectors")):
        charts[kind] = line_chart(
            xs,
            {cat: [p.counts.per_category.get(cat, {}).get(kind, 0) for p in points] for cat in categories},
            categories,
            title=f"{name}: {what} per category",
            x_label=AXES[axis][1],
            y_label=what,
            log_x=log_x,
            total=[getattr(p.counts, kind) for p in points],
        )
    return charts


def render_sweep(
    out: str | Path,
    axis: str,
    points: Sequence[SweepPoint],
    categories: Sequence[str],
    *,
    title: str,
) -> Path:
    """Write sweep.csv, detectors.svg, unique_by_category.svg and (last) sweep.json into ``out``;
    ``title`` names the layer (e.g. ``demo conv4``)."""
    check_points(axis, [p.value for p in points])
    out = Path(out)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(sweep_table(axis, points, categories))
    atomic_write_text(out / "sweep.csv", buffer.getvalue())
    charts = sweep_charts(axis, points, categories, title)
    for kind, svg in charts.items():
        atomic_write_text(out / f"{kind}.svg", svg)
    what = {"power": "rotated basis", "step": "training snapshots"}[axis]
    save_json(
        out / "sweep.json",
        {
            "axis": axis,
            "title": f"{title}, {what}",
            "values": [p.value for p in points],
            "table": "sweep.csv",
            "charts": {kind: f"{kind}.svg" for kind in charts},
        },
    )
    return out / "sweep.json"
