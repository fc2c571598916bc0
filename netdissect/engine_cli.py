"""Engine commands: ``layers, extract, quantile, tally, merge, score, dissect`` (docs/interfaces.md).

This module stays light (argparse only); handlers import torch and the stages when they run.
"""

from __future__ import annotations

import argparse

from netdissect.errors import NetDissectError


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> list[str]:
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))  # no duplicates
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated names")
    return names


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        metavar="SPEC",
        help="torchvision architecture (resnet18), TorchScript file, or package.module:factory",
    )
    p.add_argument("--weights", metavar="FILE", help="state_dict or checkpoint holding one")
    p.add_argument("--mean", type=_floats, help="input normalisation mean per RGB channel (default ImageNet's)")
    p.add_argument("--std", type=_floats, help="input normalisation std per RGB channel (default ImageNet's)")


def _run_options(
    p: argparse.ArgumentParser, batch: int, workers: str = "DataLoader worker processes (default 0)"
) -> None:
    p.add_argument("--batch-size", type=int, default=batch, help=f"images per batch (default {batch})")
    p.add_argument("--workers", type=int, default=0, help=workers)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _labels_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--labels",
        metavar="PACK",
        help="packed labels of the dataset (`netdissect broden "
        "pack-labels`): read them instead of decoding the label PNGs",
    )


def register(sub, *groups) -> None:
    p = sub.add_parser("layers", help="list a model's layers and their output shapes")
    _model_options(p)
    p.add_argument("--size", type=int, default=224, help="image side of the dummy input (default 224)")
    p.add_argument(
        "--check",
        type=_names,
        metavar="L1,L2",
        help="only these layers: fail (exit 2) naming any the model lacks, else list them",
    )
    p.set_defaults(func=_layers)

    p = sub.add_parser("extract", help="forward pass over one shard: activations, maxima, quantile candidates")
    p.add_argument("--dataset", required=True, metavar="DIR")
    _model_options(p)
    p.add_argument("--layers", required=True, type=_names, help="comma-separated layer names")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--out", required=True, metavar="SHARD_DIR")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--quantile", type=float, default=0.005, help="top fraction q (default 0.005)")
    _run_options(p, 32)
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
    p.add_argument("--thresholds", required=True, metavar="FILE.npy")
    p.add_argument("--out", required=True, metavar="TALLY.npz")
    p.add_argument("--union", default="paper", choices=["paper", "lite"])
    p.add_argument("--categories", type=_names, help="comma-separated subset of categories")
    _labels_option(p)
    _run_options(p, 50, "threads that read and count batches (on a GPU: loader processes; default 0)")
    p.set_defaults(func=_tally)

    p = sub.add_parser("merge", help="sum the counts of several shards")
    p.add_argument("--inputs", required=True, nargs="+", metavar="TALLY.npz")
    p.add_argument("--out", required=True, metavar="COUNTS.npz")
    p.set_defaults(func=_merge)

    p = sub.add_parser("score", help="IoU, labels, result.csv and summary.json from counts")
    p.add_argument("--counts", required=True, metavar="COUNTS.npz")
    p.add_argument("--dataset", required=True, metavar="DIR")
    p.add_argument("--out", required=True, metavar="LAYER_DIR")
    p.add_argument("--iou-threshold", type=float, default=0.04)
    p.set_defaults(func=_score)

    p = sub.add_parser("dissect", help="all stages in one process: OUT/<layer>/result.csv and the rest")
    p.add_argument("--dataset", required=True, metavar="DIR")
    _model_options(p)
    p.add_argument("--layers", required=True, type=_names, help="comma-separated layer names")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--quantile", type=float, default=0.005, help="top fraction q (default 0.005)")
    p.add_argument("--thresholds", metavar="FILE", help="thresholds .npy; with several layers use {layer} in it")
    p.add_argument("--union", default="paper", choices=["paper", "lite"])
    p.add_argument("--iou-threshold", type=float, default=0.04)
    p.add_argument("--categories", type=_names, help="comma-separated subset of categories")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    _labels_option(p)
    _run_options(p, 32)
    p.set_defaults(func=_dissect)


def _setup(args: argparse.Namespace) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, format="netdissect: %(message)s")
    if getattr(args, "device", "cpu") != "cpu":
        import torch

        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise NetDissectError(f"--device {args.device}: no CUDA device is available; use --device cpu")


def _layers(args: argparse.Namespace) -> int:
    from netdissect.models import layer_shapes, load_model

    _setup(args)
    model = load_model(args.model, args.weights, args.mean, args.std)
    for name, shape in layer_shapes(model, args.check, size=args.size).items():
        shape_text = "x".join(str(s) for s in shape) if isinstance(shape, tuple) else shape
        print(f"{name}\t{shape_text}")
    return 0


def _extract(args: argparse.Namespace) -> int:
    from netdissect import pipeline

    _setup(args)
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
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        dtype=args.dtype,
        quantile=args.quantile,
        progress=args.progress,
    )
    return 0


def _quantile(args: argparse.Namespace) -> int:
    from netdissect import pipeline

    _setup(args)
    pipeline.quantile(args.shards, args.layer, args.out, q=args.quantile, thresholds_file=args.thresholds)
    return 0


def _tally(args: argparse.Namespace) -> int:
    from netdissect import pipeline

    _setup(args)
    pipeline.tally(
        args.dataset,
        args.shard,
        args.layer,
        args.thresholds,
        args.out,
        union=args.union,
        categories=args.categories,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=args.progress,
        labels=args.labels,
    )
    return 0


def _merge(args: argparse.Namespace) -> int:
    from netdissect import pipeline

    _setup(args)
    pipeline.merge(args.inputs, args.out)
    return 0


def _score(args: argparse.Namespace) -> int:
    from netdissect import pipeline

    _setup(args)
    info = pipeline.score(args.counts, args.dataset, args.out, iou_threshold=args.iou_threshold)
    print(
        f"{info['detectors']} of {info['units']} units are detectors; unique_top {info['unique_top']}, "
        f"unique_by_category {info['unique_by_category']}"
    )
    return 0


def _dissect(args: argparse.Namespace) -> int:
    from netdissect import pipeline

    _setup(args)
    summaries = pipeline.dissect(
        args.dataset,
        args.model,
        args.layers,
        args.out,
        weights=args.weights,
        mean=args.mean,
        std=args.std,
        q=args.quantile,
        thresholds_file=args.thresholds,
        union=args.union,
        iou_threshold=args.iou_threshold,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        categories=args.categories,
        dtype=args.dtype,
        progress=args.progress,
        labels=args.labels,
    )
    for layer, info in summaries.items():
        print(
            f"{layer}: {info['detectors']} of {info['units']} units are detectors; unique_top "
            f"{info['unique_top']}, unique_by_category {info['unique_by_category']}"
        )
    return 0
