"""Reports: the HTML report of one layer and the summary across models and layers.

Core functions take arrays and return files; the CLI (``netdissect report``, ``netdissect report-all``)
only reads the inputs and calls them.

* :func:`render_layer_report` — one layer's self-contained folder (index.html, strips, bar graph).
* :func:`render_summary_report` — every model × layer: table, ``summary.csv``, stacked bar charts.
* :func:`read_result_csv`, :func:`count_detectors`, :func:`label_bars` — the numbers they show.
* :func:`top_rows`, :func:`tile_masks`, :func:`compose_strip` — which images a unit shows, and how
  they are highlighted.
"""

from netdissect.report.layer import headline, render_layer_report
from netdissect.report.results import (LayerCounts, count_detectors, label_bars, parse_result, read_result_csv,
                                       read_summary)
from netdissect.report.strips import compose_strip, tile_masks, top_rows
from netdissect.report.summary import LayerEntry, render_summary_report

__all__ = ["LayerCounts", "LayerEntry", "compose_strip", "count_detectors", "headline", "label_bars", "parse_result",
           "read_result_csv", "read_summary", "render_layer_report", "render_summary_report", "tile_masks",
           "top_rows"]
