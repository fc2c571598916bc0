"""`netdissect report` (one layer), `netdissect report-all` (many layers) and `netdissect compare` (two files).

The handlers read files and call the functions of ``netdissect.report``; heavy imports happen inside
them so that ``netdissect --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from netdissect.defaults import (
    COMPARE_LIMIT,
    COMPARE_TOLERANCE,
    IOU_THRESHOLD,
    JPEG_QUALITY,
    REPORT_THREADS,
    TOPK,
)
from netdissect.options import setup, upsample_option


def register(sub, *groups) -> None:
    report = sub.add_parser(
        "report",
        help="HTML report of one layer: top images per unit, labels, IoU, bar graph",
        description="Write a self-contained HTML report of one dissected layer (works offline). "
        "`netdissect report LAYER_DIR` needs nothing else: the dataset, the shards and the layer come "
        "from LAYER_DIR/summary.json; options given here override them.",
    )
    report.add_argument(
        "layer_dir_arg",
        nargs="?",
        type=Path,
        metavar="LAYER_DIR",
        help="folder of one layer (result.csv, summary.json, thresholds.npy): OUT/<layer> of `dissect`, "
        "results/layers/<dataset>/<model>/<layer> of the workflow",
    )
    report.add_argument("--layer-dir", type=Path, help="the same as LAYER_DIR")
    report.add_argument("--dataset", type=Path, help="Broden dataset folder (default: from summary.json)")
    report.add_argument(
        "--shards",
        nargs="+",
        type=Path,
        metavar="SHARD_DIR",
        help="shard folders written by `netdissect extract` (default: from summary.json)",
    )
    report.add_argument("--out", type=Path, help="report folder to write (default LAYER_DIR/report)")
    report.add_argument(
        "--layer",
        default=None,
        help="layer name in the shards (default: 'layer' of summary.json, else the LAYER_DIR name)",
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
    upsample_option(report, "the one of summary.json's settings, i.e. of the counts")
    report.set_defaults(func=run_report)

    report_all = sub.add_parser(
        "report-all",
        help="summary of many layers: unique detectors per category (table, CSVs, bar charts)",
        description="Write index.html, summary.csv, units.csv and the stacked bar charts of every given "
        "layer into --out. A PATH is a folder holding a result file (netdissect's result.csv, "
        "NetDissect-Lite's tally.csv or the original system's <layer>-result.csv files) or such a CSV file.",
    )
    report_all.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="result folders or files")
    report_all.add_argument(
        "--layer-dirs",
        nargs="+",
        type=Path,
        default=[],
        metavar="LAYER_DIR",
        help="more result folders (the workflow passes results/layers/<dataset>/<model>/<layer>)",
    )
    report_all.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="NAME",
        help="name shown for a PATH, once per PATH in their order (default: summary.json, else the folder name)",
    )
    report_all.add_argument(
        "--iou-threshold",
        type=float,
        default=None,
        help=f"detector threshold where summary.json gives none (default {IOU_THRESHOLD})",
    )
    report_all.add_argument("--out", required=True, type=Path, help="folder to write (index.html inside)")
    report_all.set_defaults(func=run_report_all)

    compare = sub.add_parser(
        "compare",
        help="compare two result files of one layer: labels, IoUs, the units that differ",
        description="Compare two result files of one layer (netdissect's result.csv, NetDissect-Lite's "
        "tally.csv, the original system's <layer>-result.csv, in any combination). Exit status: 0 when "
        "they agree (same labels, IoUs within --tolerance), 1 when they differ, 2 on bad input.",
    )
    compare.add_argument("a", type=Path, metavar="A", help="a result file, or a folder holding one")
    compare.add_argument("b", type=Path, metavar="B", help="a result file, or a folder holding one")
    compare.add_argument(
        "--tolerance",
        type=float,
        default=COMPARE_TOLERANCE,
        help=f"largest IoU difference that still agrees (default {COMPARE_TOLERANCE:g})",
    )
    compare.add_argument(
        "--iou-threshold",
        type=float,
        default=IOU_THRESHOLD,
        help=f"detector threshold of the counts printed (default {IOU_THRESHOLD})",
    )
    compare.add_argument(
        "--limit", type=int, default=COMPARE_LIMIT, help=f"differing units listed (default {COMPARE_LIMIT})"
    )
    compare.set_defaults(func=run_compare)


def _check_int(value: int, option: str, low: int, high: int) -> None:
    from netdissect.errors import NetDissectError

    if not low <= value <= high:
        raise NetDissectError(f"{option}: expected a whole number from {low} to {high}, got {value}.")


def run_report(args: argparse.Namespace) -> int:
    from netdissect.errors import NetDissectError
    from netdissect.report.build import write_layer_report

    setup(args)
    _check_int(args.topk, "--topk", 1, 1000)
    _check_int(args.quality, "--quality", 1, 95)
    _check_int(args.threads, "--threads", 1, 64)
    given = [p for p in (args.layer_dir_arg, args.layer_dir) if p is not None]
    if not given:
        raise NetDissectError("no layer folder given: `netdissect report LAYER_DIR` (e.g. OUT/<layer> of dissect).")
    if len(given) == 2 and given[0] != given[1]:
        raise NetDissectError(f"two layer folders given ({given[0]} and --layer-dir {given[1]}); give one.")
    index = write_layer_report(
        given[0],
        args.out,
        dataset=args.dataset,
        shards=args.shards,
        layer=args.layer,
        topk=args.topk,
        quality=args.quality,
        threads=args.threads,
        upsample=args.upsample,
    )
    print(index)
    return 0


def _entries(path: Path, name: str | None, iou_threshold: float | None) -> list:
    """The summary rows of one PATH: one per result file it holds."""
    from netdissect.report.build import dissection_names
    from netdissect.report.results import (
        RESULT_FILE,
        count_detectors,
        iou_threshold_of,
        read_result_file,
        read_summary,
        result_files,
    )
    from netdissect.report.summary import LayerEntry

    entries = []
    for file in result_files(path):
        result = read_result_file(file)
        folder = file.parent
        summary = read_summary(folder / "summary.json") if file.name == RESULT_FILE else {}
        if summary:
            dataset, model, layer = dissection_names(folder, summary)
        else:
            dataset, model = "", (folder.name if path.is_dir() else file.stem)
            layer = result.layer or ""
        recorded = summary.get("iou_threshold", (summary.get("settings") or {}).get("iou_threshold"))
        if recorded is not None:
            threshold = iou_threshold_of(summary, str(folder / "summary.json"))
        else:
            threshold = IOU_THRESHOLD if iou_threshold is None else iou_threshold
        counts = count_detectors(result.table, result.categories, threshold)
        report = folder / "report" / "index.html"
        entries.append(
            LayerEntry(
                dataset,
                name or model,
                layer,
                counts,
                report if report.is_file() else None,
                result.table,
                tuple(result.categories),
                result.layout,
            )
        )
    return entries


def run_report_all(args: argparse.Namespace) -> int:
    from netdissect.errors import NetDissectError
    from netdissect.report.summary import render_summary_report

    paths = [*args.paths, *args.layer_dirs]
    if not paths:
        raise NetDissectError("no result folder given: `netdissect report-all PATH... --out DIR`.")
    if args.name and len(args.name) != len(paths):
        raise NetDissectError(
            f"--name was given {len(args.name)} times for {len(paths)} PATH(s); give it once per PATH, in order."
        )
    names = args.name or [None] * len(paths)
    entries = [entry for path, name in zip(paths, names) for entry in _entries(path, name, args.iou_threshold)]
    print(render_summary_report(args.out, entries))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from netdissect.errors import NetDissectError
    from netdissect.report.compare import compare_files
    from netdissect.report.results import read_result_file, result_files

    files = []
    for path in (args.a, args.b):
        found = result_files(path)
        if len(found) != 1:
            raise NetDissectError(
                f"{path} holds {len(found)} result files ({', '.join(p.name for p in found)}); name one of them."
            )
        files.append(read_result_file(found[0]))
    _check_int(args.limit, "--limit", 0, 10**9)
    text, agree = compare_files(files[0], files[1], args.tolerance, args.iou_threshold, args.limit)
    print(text, end="")
    return 0 if agree else 1
