"""The summary across models and layers (``report-all``): a table, two CSVs and the paper's stacked bars.

For every model × layer: units, detectors and unique detectors, overall and per category, under both
definitions of docs/dissection.md §5 (``unique_top`` and ``unique_by_category``, the paper's figure).
Files written into the output folder:

* ``summary.csv``: one row per model × layer (the table of ``index.html``);
* ``units.csv``: tidy, one row per model, layer, unit and category (:func:`units_table`);
* ``unique_by_category.svg``, ``unique_top.svg``: one stacked bar per model × layer, sorted by its
  total, largest first, as in the paper's figure;
* ``index.html`` (written last) and ``report.css``.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from netdissect.io import atomic_path, atomic_write_text
from netdissect.report.charts import category_colors, stacked_bar_chart
from netdissect.report.results import TIDY_COLUMNS, tidy_units
from netdissect.report.templating import environment, static_file
from netdissect.score import LayerCounts

COUNT_KINDS = ("detectors", "unique_top", "unique_by_category")
UNIT_COLUMNS = ("dataset", "model", "layer")


@dataclass(frozen=True)
class LayerEntry:
    """One row of the summary: where it comes from and its counts. ``report`` is the layer report's
    index.html (None when there is none); ``result`` and ``categories`` (the table of
    :func:`netdissect.report.results.parse_result`) give the rows of units.csv; ``layout`` says which
    system wrote the result file (a key of ``netdissect.report.results.LAYOUTS``)."""

    dataset: str
    model: str
    layer: str
    counts: LayerCounts
    report: Path | None = None
    result: pd.DataFrame | None = field(default=None, compare=False)
    categories: tuple[str, ...] = ()
    layout: str = "netdissect"

    @property
    def name(self) -> str:
        return f"{self.model} {self.layer}".strip()


def summary_categories(entries: Sequence[LayerEntry]) -> list[str]:
    """Every category of any layer, in first-seen order (layers of one dataset share one order)."""
    return list(dict.fromkeys(cat for e in entries for cat in e.counts.per_category))


def summary_table(entries: Sequence[LayerEntry]) -> tuple[list[str], list[list[object]]]:
    """Header and rows of ``summary.csv``: one row per model × layer."""
    categories = summary_categories(entries)
    header = [
        "dataset",
        "model",
        "layer",
        "units",
        "iou_threshold",
        *COUNT_KINDS,
        *(f"{cat}-{kind}" for cat in categories for kind in COUNT_KINDS),
    ]
    rows = []
    for e in entries:
        c = e.counts
        rows.append(
            [
                e.dataset,
                e.model,
                e.layer,
                c.units,
                f"{c.iou_threshold:g}",
                c.detectors,
                c.unique_top,
                c.unique_by_category,
                *(c.per_category.get(cat, {}).get(kind, 0) for cat in categories for kind in COUNT_KINDS),
            ]
        )
    return header, rows


def summary_csv(entries: Sequence[LayerEntry]) -> str:
    header, rows = summary_table(entries)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def units_table(entries: Sequence[LayerEntry]) -> pd.DataFrame:
    """``units.csv``: the rows of :func:`netdissect.report.results.tidy_units` of every entry that carries
    its result table, prefixed with dataset, model and layer, in entry order."""
    frames = []
    for e in entries:
        if e.result is None:
            continue
        tidy = tidy_units(e.result, list(e.categories), e.counts.iou_threshold)
        for position, (column, value) in enumerate(zip(UNIT_COLUMNS, (e.dataset, e.model, e.layer))):
            tidy.insert(position, column, value)
        frames.append(tidy)
    if not frames:
        return pd.DataFrame(columns=[*UNIT_COLUMNS, *TIDY_COLUMNS])
    return pd.concat(frames, ignore_index=True)


def display_names(entries: Sequence[LayerEntry]) -> list[str]:
    """The label of each entry on the charts: "model layer", prefixed with the dataset when the entries
    come from several datasets."""
    several = len({e.dataset for e in entries if e.dataset}) > 1
    return [f"{e.dataset} {e.name}".strip() if several else e.name for e in entries]


def paper_order(totals: Sequence[int]) -> list[int]:
    """Positions sorted by total, largest first (the paper's figure); ties keep the given order."""
    return sorted(range(len(totals)), key=lambda i: -totals[i])


def _chart(entries: Sequence[LayerEntry], categories: list[str], kind: str, title: str) -> str:
    bars = [
        (name, {cat: e.counts.per_category.get(cat, {}).get(kind, 0) for cat in categories})
        for name, e in zip(display_names(entries), entries)
    ]
    order = paper_order([sum(counts.values()) for _, counts in bars])
    return stacked_bar_chart([bars[i] for i in order], categories, title=title)


def render_summary_report(out: str | Path, entries: Sequence[LayerEntry]) -> Path:
    """Write the files of the module docstring into ``out``; ``index.html`` is written last. Returns its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    categories = summary_categories(entries)
    charts = {
        "unique_by_category": _chart(
            entries, categories, "unique_by_category", "Unique detectors (unique_by_category, the paper's)"
        ),
        "unique_top": _chart(entries, categories, "unique_top", "Unique detectors (unique_top)"),
    }
    for kind, svg in charts.items():
        atomic_write_text(out / f"{kind}.svg", svg)
    atomic_write_text(out / "summary.csv", summary_csv(entries))
    with atomic_path(out / "units.csv") as tmp:
        units_table(entries).to_csv(tmp, index=False, lineterminator="\n")
    atomic_write_text(out / "report.css", static_file("report.css").decode("utf-8"))
    rows = [
        {"entry": e, "link": Path(os.path.relpath(e.report, out)).as_posix() if e.report else None} for e in entries
    ]
    page = (
        environment()
        .get_template("summary.html")
        .render(
            rows=rows,
            categories=categories,
            colors=category_colors(categories),
            charts=charts,
            kinds=COUNT_KINDS,
            datasets=sorted({e.dataset for e in entries if e.dataset}),
            layouts=sorted({e.layout for e in entries}),
        )
    )
    atomic_write_text(out / "index.html", page)
    return out / "index.html"
