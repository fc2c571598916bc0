"""Reports: the HTML report of one layer and the summary across models and layers.

Core functions take arrays and return files; the CLI (``netdissect report``, ``netdissect report-all``)
only reads the inputs and calls them.

* :func:`render_layer_report` — one layer's self-contained folder (index.html, strips, bar graph);
  :func:`write_layer_report` — the same from a layer folder (dataset, shards, layer from summary.json).
* :func:`render_summary_report` — every model × layer: table, ``summary.csv``, ``units.csv``, stacked bar charts.
* :func:`read_result_file` (any of the three layouts: ours, NetDissect-Lite's, the original's),
  :func:`read_result_csv`, :func:`count_detectors`, :func:`label_bars`, :func:`tidy_units` — the numbers they show.
* :func:`compare_results` — two result files of one layer, unit by unit (``netdissect compare``).
* :func:`top_rows`, :func:`tile_masks`, :func:`compose_strip` — which images a unit shows, and how
  they are highlighted.
"""

import importlib

# Imported on first use (PEP 562), so `netdissect --help` and the other commands do not load torch.
_HOMES = {
    "headline": "layer",
    "render_layer_report": "layer",
    "LayerCounts": "results",  # defined in netdissect.score
    "count_detectors": "results",
    "label_bars": "results",
    "parse_result": "results",
    "read_result_csv": "results",
    "read_summary": "results",
    "read_result_file": "results",
    "result_files": "results",
    "ResultFile": "results",
    "tidy_units": "results",
    "compare_results": "compare",
    "layer_inputs": "build",
    "write_layer_report": "build",
    "compose_strip": "strips",
    "tile_masks": "strips",
    "top_rows": "strips",
    "LayerEntry": "summary",
    "render_summary_report": "summary",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"netdissect.report.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'netdissect.report' has no attribute {name!r}")


__all__ = [
    "LayerCounts",
    "LayerEntry",
    "ResultFile",
    "compare_results",
    "layer_inputs",
    "read_result_file",
    "result_files",
    "tidy_units",
    "write_layer_report",
    "compose_strip",
    "count_detectors",
    "headline",
    "label_bars",
    "parse_result",
    "read_result_csv",
    "read_summary",
    "render_layer_report",
    "render_summary_report",
    "tile_masks",
    "top_rows",
]
