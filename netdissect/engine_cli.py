"""The stage commands: ``extract, quantile, tally, merge, score, dissect`` (docs/interfaces.md).

This module stays light (argparse only); handlers import torch and the stages when they run.
"""

from __future__ import annotations

import argparse

from netdissect.defaults import (
    ACTIVATIONS,
    DTYPE,
    DTYPES,
    IOU_THRESHOLD,
    MEMORY_FORMAT,
    MEMORY_FORMATS,
    PERMUTATION_SEED,
    PRESETS,
    QUANTILE,
    TOPK,
    UNION,
    UNIONS,
)
from netdissect.experiments.cli import permutation_options, rotation_of, rotation_options
from netdissect.options import (
    batch_option,
    device_options,
    labels_option,
    model_options,
    names,
    preset_option,
    setup,
    threads_option,
    tokens_option,
    upsample_option,
    workers_option,
)

COUNT_THREADS = "threads counting batches on the CPU"
GPU_WORKERS = "DataLoader worker processes reading batches when counting on a GPU"


def _quantile_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantile", type=float, help=f"top fraction q (default {QUANTILE}, or the preset's)")


def _union_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--union", choices=UNIONS, help=f"category rule of the counts (default {UNION}, or the preset's)")


def _scoring_options(p: argparse.ArgumentParser, union: bool = True) -> None:
    if union:
        _union_option(p)
        p.add_argument("--categories", type=names, help="comma-separated subset of categories (default: all)")
    p.add_argument(
        "--iou-threshold", type=float, default=IOU_THRESHOLD, help=f"detector threshold (default {IOU_THRESHOLD})"
    )


def _dtype_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default=DTYPE, choices=DTYPES, help=f"stored activations (default {DTYPE})")


def _forward_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recompute",
        dest="activations",
        action="store_const",
        const="recompute",
        default=ACTIVATIONS,
        help="store no activations: the tally and the report rerun the forward pass (same numbers; disk holds "
        "only candidates, maxima and counts)",
    )
    p.add_argument(
        "--memory-format",
        default=MEMORY_FORMAT,
        choices=MEMORY_FORMATS,
        help=f"memory layout of the model's input (default {MEMORY_FORMAT}, the fastest on the CPU; a model "
        "that cannot take it falls back to contiguous)",
    )


def register(sub, *groups) -> None:
    p = sub.add_parser("extract", help="forward pass over one shard: activations, maxima, quantile candidates")
    p.add_argument("--dataset", required=True, metavar="DIR")
    model_options(p)
    p.add_argument("--layers", required=True, type=names, help="comma-separated layer names")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--out", required=True, metavar="SHARD_DIR")
    tokens_option(p)
    preset_option(p)
    _dtype_option(p)
    _forward_options(p)
    _quantile_option(p)
    batch_option(p)
    workers_option(p)
    device_options(p)
    rotation_options(p)
    p.set_defaults(func=_extract)

    p = sub.add_parser("quantile", help="exact per-unit thresholds from the shards' candidates")
    p.add_argument("--shards", required=True, nargs="+", metavar="SHARD_DIR")
    p.add_argument("--layer", required=True)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quantile", type=float, help="top fraction q (default: the one extract used)")
    g.add_argument("--thresholds", metavar="FILE.npy", help="read thresholds from this file instead")
    p.add_argument("--out", required=True, metavar="LAYER_DIR")
    p.set_defaults(func=_quantile)

    p = sub.add_parser("tally", help="masks and exact counts of one shard")
    p.add_argument("--dataset", required=True, metavar="DIR")
    p.add_argument("--shard", required=True, metavar="SHARD_DIR")
    p.add_argument("--layer", required=True)
    p.add_argument(
        "--thresholds",
        required=True,
        metavar="FILE.npy",
        help="per-unit thresholds; FILE.json beside it (written by `netdissect quantile`) says where they came from",
    )
    p.add_argument("--out", required=True, metavar="TALLY.npz")
    p.add_argument(
        "--preset",
        choices=PRESETS,
        help="set the union rule and upsampling of one system (original or lite; default: the preset the "
        "shard was extracted with); --union and --upsample override it",
    )
    _union_option(p)
    upsample_option(p)
    p.add_argument("--categories", type=names, help="comma-separated subset of categories (default: all)")
    labels_option(p)
    batch_option(p)
    threads_option(p, COUNT_THREADS)
    workers_option(p, GPU_WORKERS)
    device_options(p)
    p.set_defaults(func=_tally)

    p = sub.add_parser("merge", help="sum the counts of several shards")
    p.add_argument("--inputs", required=True, nargs="+", metavar="TALLY.npz")
    p.add_argument("--out", required=True, metavar="COUNTS.npz")
    p.set_defaults(func=_merge)

    p = sub.add_parser("score", help="IoU, labels, result.csv and summary.json from counts")
    p.add_argument("--counts", required=True, metavar="COUNTS.npz")
    p.add_argument("--dataset", required=True, metavar="DIR")
    p.add_argument("--out", required=True, metavar="LAYER_DIR")
    p.add_argument(
        "--shards",
        nargs="+",
        default=[],
        metavar="SHARD_DIR",
        help="the layer's shard folders, recorded in summary.json so that `netdissect report LAYER_DIR` finds them",
    )
    _scoring_options(p, union=False)
    p.add_argument(
        "--significance",
        metavar="FILE.csv",
        help="the layer's significance.csv (`netdissect significance`; FILE.json beside it is read too): "
        "summary.json then counts the detectors with p <= alpha",
    )
    p.set_defaults(func=_score)

    p = sub.add_parser("dissect", help="all stages in one process: OUT/<layer>/result.csv and the rest")
    p.add_argument("--dataset", required=True, metavar="DIR")
    model_options(p)
    p.add_argument("--layers", required=True, type=names, help="comma-separated layer names")
    p.add_argument("--out", required=True, metavar="DIR")
    tokens_option(p)
    _quantile_option(p)
    p.add_argument("--thresholds", metavar="FILE", help="thresholds .npy; with several layers use {layer} in it")
    preset_option(p)
    upsample_option(p)
    _scoring_options(p)
    _dtype_option(p)
    _forward_options(p)
    p.add_argument(
        "--labels",
        metavar="PACK",
        help="packed labels folder (`netdissect broden pack-labels`), written first when missing or of "
        "another dataset; default: the cache's pack of the dataset ($NETDISSECT_CACHE, ~/.cache/netdissect); "
        "'none': decode the label PNGs",
    )
    batch_option(p)
    workers_option(p)
    p.add_argument(
        "--threads",
        type=int,
        help=f"{COUNT_THREADS} and encoding the report's images (default: every core this process may use)",
    )
    device_options(p)
    p.add_argument(
        "--no-report",
        dest="report",
        action="store_false",
        help="do not write the HTML report of each layer (OUT/<layer>/report/index.html)",
    )
    p.add_argument("--topk", type=int, default=TOPK, help=f"images shown per unit in the report (default {TOPK})")
    rotation_options(p)
    permutation_options(p, 0)
    p.add_argument(
        "--permutation-seed",
        type=int,
        default=PERMUTATION_SEED,
        help=f"seed of the permutations (default {PERMUTATION_SEED})",
    )
    p.set_defaults(func=_dissect)


def _extract(args: argparse.Namespace) -> int:
    from netdissect import pipeline

    setup(args)
    pipeline.extract(
        args.dataset,
        args.model,
        args.layers,
        args.shard,
        args.shards,
        args.out,
        weights=args.weights,
        mean=args.mean,
        std=args.std,
        mean_file=args.mean_file,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        dtype=args.dtype,
        quantile=args.quantile,
        memory_format=args.memory_format,
        store_activations=args.activations == "store",
        tokens=args.tokens,
        progress=args.progress,
        preset=args.preset,
        rotation=rotation_of(args),
    )
    return 0


def _quantile(args: argparse.Namespace) -> int:
    from netdissect import pipeline

    setup(args)
    pipeline.quantile(args.shards, args.layer, args.out, q=args.quantile, thresholds_file=args.thresholds)
    return 0


def _tally(args: argparse.Namespace) -> int:
    from netdissect import pipeline

    setup(args)
    pipeline.tally(
        args.dataset,
        args.shard,
        args.layer,
        args.thresholds,
        args.out,
        union=args.union,
        upsample=args.upsample,
        preset=args.preset,
        categories=args.categories,
        device=args.device,
        batch_size=args.batch_size,
        threads=args.threads,
        workers=args.workers,
        progress=args.progress,
        labels=args.labels,
    )
    return 0


def _merge(args: argparse.Namespace) -> int:
    from netdissect import pipeline

    setup(args)
    pipeline.merge(args.inputs, args.out)
    return 0


def _print_summary(info: dict, prefix: str = "") -> None:
    test = info.get("significance")
    significant = f" ({test['significant_detectors']} with p <= {test['alpha']:g})" if test else ""
    print(
        f"{prefix}{info['detectors']} of {info['units']} units are detectors{significant}; unique_top "
        f"{info['unique_top']}, unique_by_category {info['unique_by_category']}"
    )


def _score(args: argparse.Namespace) -> int:
    from netdissect import pipeline

    setup(args)
    info = pipeline.score(
        args.counts,
        args.dataset,
        args.out,
        iou_threshold=args.iou_threshold,
        shards=args.shards,
        significance=args.significance,
    )
    _print_summary(info)
    return 0


def _dissect(args: argparse.Namespace) -> int:
    from netdissect import pipeline

    setup(args)
    summaries = pipeline.dissect(
        args.dataset,
        args.model,
        args.layers,
        args.out,
        weights=args.weights,
        mean=args.mean,
        std=args.std,
        mean_file=args.mean_file,
        q=args.quantile,
        thresholds_file=args.thresholds,
        union=args.union,
        upsample=args.upsample,
        preset=args.preset,
        iou_threshold=args.iou_threshold,
        batch_size=args.batch_size,
        workers=args.workers,
        threads=args.threads,
        device=args.device,
        categories=args.categories,
        dtype=args.dtype,
        tokens=args.tokens,
        progress=args.progress,
        labels=args.labels,
        rotation=rotation_of(args),
        permutations=args.permutations,
        permutation_seed=args.permutation_seed,
        alpha=args.alpha,
        memory_format=args.memory_format,
        activations=args.activations,
        report=args.report,
        topk=args.topk,
    )
    for layer, info in summaries.items():
        _print_summary(info, f"{layer}: ")
        if "report" in info:
            print(f"{layer}: report {info['report']}")
    return 0
