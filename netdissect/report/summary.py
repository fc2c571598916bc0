"""The summary across models and layers (``report-all``): a table, a CSV and the paper's stacked bars.

For every model × layer: units, detectors and unique detectors, overall and per category, under both
definitions of docs/dissection.md §5 (``unique_top`` and ``unique_by_category``, the paper's figure).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from netdissect.io import atomic_write_text
from netdissect.report.charts import category_colors, stacked_bar_chart
from netdissect.report.templating import environment, static_file
from netdissect.score import LayerCounts

COUNT_KINDS = ("detectors", "unique_top", "unique_by_category")


@dataclass(frozen=True)
class LayerEntry:
    """One row of the summary: where it comes from and its counts; ``report`` is the layer report's
    index.html (None when there is none)."""

    dataset: str
    model: str
    layer: str
    counts: LayerCounts
    report: Path | None = None
    significance: dict | None = None  # summary.json's "significance" (docs/experiments.md §3), if tested

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
    tested = any(e.significance for e in entries)
    if tested:
        header += ["significant_detectors", "alpha", "permutations"]
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
        if tested:
            test = e.significance or {}
            rows[-1] += [test.get("significant_detectors", ""), test.get("alpha", ""), test.get("permutations", "")]
    return header, rows


def summary_csv(entries: Sequence[LayerEntry]) -> str:
    header, rows = summary_table(entries)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _chart(entries: Sequence[LayerEntry], categories: list[str], kind: str, title: str) -> str:
    names = [e.name if len({x.dataset for x in entries}) <= 1 else f"{e.dataset} {e.name}" for e in entries]
    bars = [
        (name, {cat: e.counts.per_category.get(cat, {}).get(kind, 0) for cat in categories})
        for name, e in zip(names, entries)
    ]
    return stacked_bar_chart(bars, categories, title=title)


@dataclass(frozen=True)
class SweepEntry:
    """A sweep folder (:mod:`netdissect.experiments.sweep`): its sweep.json and where it is."""

    folder: Path
    info: dict


def render_summary_report(out: str | Path, entries: Sequence[LayerEntry], sweeps: Sequence[SweepEntry] = ()) -> Path:
    """Write ``index.html``, ``summary.csv``, ``unique_by_category.svg``, ``unique_top.svg`` and the
    stylesheet into ``out``; ``index.html`` is written last, showing the ``sweeps``' charts (inlined)
    with links to their files. Returns its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    categories = summary_categories(entries)
    charts = {
        "unique_by_category": _chart(
            entries, categories, "unique_by_category", "Unique detectors (unique_by_category)"
        ),
        "unique_top": _chart(entries, categories, "unique_top", "Unique detectors (unique_top)"),
    }
    for kind, svg in charts.items():
        atomic_write_text(out / f"{kind}.svg", svg)
    atomic_write_text(out / "summary.csv", summary_csv(entries))
    atomic_write_text(out / "report.css", static_file("report.css").decode("utf-8"))
    rows = [
        {"entry": e, "link": Path(os.path.relpath(e.report, out)).as_posix() if e.report else None} for e in entries
    ]
    link = lambda folder, name: Path(os.path.relpath(Path(folder) / name, out)).as_posix()
    experiments = [
        {
            "title": sweep.info["title"],
            "table": link(sweep.folder, sweep.info["table"]),
            "charts": [
                {"svg": (sweep.folder / name).read_text(encoding="utf-8"), "link": link(sweep.folder, name)}
                for name in sweep.info["charts"].values()
            ],
        }
        for sweep in sweeps
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
            tested=any(e.significance for e in entries),
            experiments=experiments,
        )
    )
    atomic_write_text(out / "index.html", page)
    return out / "index.html"
