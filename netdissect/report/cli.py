"""`netdissect report` (one layer) and `netdissect report-all` (every model × layer).

The handlers read files and call the array functions of ``netdissect.report``; heavy imports happen
inside them so that ``netdissect --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from netdissect.defaults import JPEG_QUALITY, REPORT_THREADS, TOPK


def register(sub, *groups) -> None:
    report = sub.add_parser(
        "report",
        help="HTML report of one layer: top images per unit, labels, IoU, bar graph",
        description="Write a self-contained HTML report of one dissected layer into --out (works offline).",
    )
    report.add_argument("--dataset", required=True, type=Path, help="Broden dataset folder")
    report.add_argument(
        "--layer-dir",
        required=True,
        type=Path,
        help="folder with result.csv, summary.json and thresholds.npy of the layer",
    )
    report.add_argument(
        "--shards",
        required=True,
        nargs="+",
        type=Path,
        metavar="SHARD_DIR",
        help="shard folders written by `netdissect extract` (activations and per-image maxima of the layer)",
    )
    report.add_argument("--out", required=True, type=Path, help="report folder to write (index.html inside)")
    report.add_argument(
        "--layer",
        default=None,
        help="layer name in the shards (default: 'layer' of summary.json, else the --layer-dir name)",
    )
    report.add_argument("--topk", type=int, default=TOPK, help=f"images shown per unit (default {TOPK})")
    report.add_argument(
        "--quality", type=int, default=JPEG_QUALITY, help=f"JPEG quality of the image strips (default {JPEG_QUALITY})"
    )
    report.add_argument(
        "--threads",
        type=int,
        default=REPORT_THREADS,
        help=f"threads decoding and encoding images (default {REPORT_THREADS})",
    )
    report.set_defaults(func=run_report)

    report_all = sub.add_parser(
        "report-all",
        help="summary of many layers: unique detectors per category (table, CSV, bar chart)",
        description="Write index.html, summary.csv and the stacked bar charts of every given layer into --out.",
    )
    report_all.add_argument(
        "--layer-dirs",
        required=True,
        nargs="+",
        type=Path,
        metavar="LAYER_DIR",
        help="layer folders (results/{dataset}/{model}/{layer}) holding result.csv",
    )
    report_all.add_argument("--out", required=True, type=Path, help="folder to write (index.html inside)")
    report_all.set_defaults(func=run_report_all)


def _names(layer_dir: Path, summary: dict) -> tuple[str, str, str]:
    """(dataset, model, layer): from summary.json, else from results/{dataset}/{model}/{layer}."""
    parts = layer_dir.resolve().parts
    fallback = dict(zip(("dataset", "model", "layer"), parts[-3:] if len(parts) >= 3 else ("", "", parts[-1])))
    names = []
    for key in ("dataset", "model", "layer"):
        value = summary.get(key)
        if isinstance(value, dict):
            value = value.get("name")
        names.append(str(value) if value else fallback[key])
    return names[0], names[1], names[2]


def _check_int(value: int, option: str, low: int, high: int) -> None:
    from netdissect.errors import NetDissectError

    if not low <= value <= high:
        raise NetDissectError(f"{option}: expected a whole number from {low} to {high}, got {value}.")


def run_report(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from netdissect.broden import BrodenDataset
    from netdissect.errors import NetDissectError
    from netdissect.recompute import ActivationReader
    from netdissect.report.layer import render_layer_report
    from netdissect.report.results import read_result_csv, read_summary
    from netdissect.shards import read_imgmax

    _check_int(args.topk, "--topk", 1, 1000)
    _check_int(args.quality, "--quality", 1, 95)
    _check_int(args.threads, "--threads", 1, 64)
    torch.set_num_threads(1)  # the work is split by --threads Python threads; torch ops here are small
    layer_dir: Path = args.layer_dir
    result, categories = read_result_csv(layer_dir / "result.csv")
    summary = read_summary(layer_dir / "summary.json")
    dataset_name, model, layer = _names(layer_dir, summary)
    layer = args.layer or layer
    path = layer_dir / "thresholds.npy"
    if not path.is_file():
        raise NetDissectError(f"{path}: no such file; run `netdissect quantile` for layer {layer} first.")
    try:
        thresholds = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise NetDissectError(f"{path}: not a readable .npy array ({err}); rerun `netdissect quantile`.") from err
    imgmax = read_imgmax(args.shards, layer)
    dataset = BrodenDataset(args.dataset, load_labels=False)
    if imgmax.shape[0] != len(dataset):
        raise NetDissectError(
            f"the shards {' '.join(map(str, args.shards))} hold {imgmax.shape[0]} images but the dataset "
            f"{args.dataset} has {len(dataset)}; pass the dataset the layer was dissected on."
        )
    with ActivationReader(args.shards, layer, args.dataset) as maps_for_rows:  # stored or recomputed
        index = render_layer_report(
            args.out,
            result,
            categories,
            {**summary, "dataset": dataset_name, "model": model, "layer": layer},
            thresholds,
            imgmax,
            maps_for_rows=maps_for_rows,
            load_image=lambda row: dataset[row]["image"],
            topk=args.topk,
            quality=args.quality,
            threads=args.threads,
        )
    print(index)
    return 0


def run_report_all(args: argparse.Namespace) -> int:
    from netdissect.report.results import count_detectors, iou_threshold_of, read_result_csv, read_summary
    from netdissect.report.summary import LayerEntry, render_summary_report

    entries = []
    for layer_dir in args.layer_dirs:
        result, categories = read_result_csv(layer_dir / "result.csv")
        summary = read_summary(layer_dir / "summary.json")
        dataset, model, layer = _names(layer_dir, summary)
        counts = count_detectors(result, categories, iou_threshold_of(summary, str(layer_dir / "summary.json")))
        report = layer_dir / "report" / "index.html"
        entries.append(LayerEntry(dataset, model, layer, counts, report if report.is_file() else None))
    print(render_summary_report(args.out, entries))
    return 0
