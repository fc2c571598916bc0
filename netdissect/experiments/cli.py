"""``netdissect significance`` and ``netdissect sweep``, and the experiment options of ``extract`` and
``dissect`` (``--rotation-seed/--rotation-power``, ``--permutations``): registration (light) and handlers."""

from __future__ import annotations

import argparse
from pathlib import Path

from netdissect.defaults import ALPHA, BATCH_SIZE, PERMUTATION_SEED, PERMUTATIONS, ROTATION_SEED
from netdissect.options import labels_option, setup


def rotation_options(p: argparse.ArgumentParser) -> None:
    """``--rotation-seed S --rotation-power P`` (docs/experiments.md §1)."""
    p.add_argument(
        "--rotation-power",
        type=float,
        metavar="P",
        help="rotate every layer's units by R(P), the fraction 0..1 of a random rotation, before anything "
        "is stored (default: no rotation; 0 rotates nothing)",
    )
    p.add_argument(
        "--rotation-seed",
        type=int,
        default=ROTATION_SEED,
        metavar="S",
        help=f"seed of the random rotation (default {ROTATION_SEED})",
    )


def rotation_of(args: argparse.Namespace) -> tuple[int, float] | None:
    """(seed, power) of ``--rotation-seed/--rotation-power``, None without ``--rotation-power``."""
    return None if args.rotation_power is None else (args.rotation_seed, args.rotation_power)


def permutation_options(p: argparse.ArgumentParser, default: int) -> None:
    """``--permutations K --permutation-seed S --alpha A`` (docs/experiments.md §3)."""
    off = " (default 0: no test)" if default == 0 else f" (default {default})"
    p.add_argument("--permutations", type=int, default=default, metavar="K", help="permutations of the test" + off)
    p.add_argument(
        "--alpha", type=float, default=ALPHA, help=f"a unit is significant when its p <= alpha (default {ALPHA})"
    )


def register(sub, *groups) -> None:
    p = sub.add_parser(
        "significance",
        help="permutation test of every unit's score: p-values and null percentiles (significance.csv)",
        description="Pair each image's masks with the labels of another image of the same segmentation size, "
        "K times, and compare each unit's best IoU with those of the permuted pairings "
        "(docs/experiments.md §3). Writes LAYER_DIR/significance.csv, significance.json and null_scores.npy, "
        "and adds the counts to LAYER_DIR/summary.json when there is one.",
    )
    p.add_argument("--layer-dir", required=True, type=Path, help="a dissected layer's folder (counts.npz)")
    p.add_argument(
        "--shards",
        nargs="+",
        type=Path,
        metavar="SHARD_DIR",
        help="shard folders of the layer's activations (default: LAYER_DIR/../shards, as `dissect --out` writes)",
    )
    p.add_argument("--dataset", type=Path, metavar="DIR", help="Broden folder (default: the one of counts.npz)")
    labels_option(p)
    permutation_options(p, PERMUTATIONS)
    p.add_argument(
        "--seed", type=int, default=PERMUTATION_SEED, help=f"seed of the permutations (default {PERMUTATION_SEED})"
    )
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"images per batch (default {BATCH_SIZE})")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_significance)

    p = sub.add_parser(
        "sweep",
        help="table and charts of one layer dissected at several rotation powers or training steps",
        description="Write OUT/sweep.csv, detectors.svg, unique_by_category.svg and sweep.json: detectors and "
        "unique detectors per category of every point (docs/experiments.md).",
    )
    p.add_argument("--axis", required=True, choices=("power", "step"), help="what the points vary")
    p.add_argument(
        "--points",
        required=True,
        nargs="+",
        metavar="VALUE=LAYER_DIR",
        help="each point's value and layer folder (result.csv, summary.json), in increasing order",
    )
    p.add_argument("--out", required=True, type=Path, help="folder to write")
    p.add_argument("--title", help="what the layer is called in the charts (default: its model SPEC and layer)")
    p.set_defaults(func=_sweep)


def _significance(args: argparse.Namespace) -> int:
    from netdissect.counts import load_counts
    from netdissect.errors import NetDissectError
    from netdissect.experiments.significance import permutation_test

    setup(args)
    shards = args.shards or [args.layer_dir.parent / "shards"]
    dataset = args.dataset
    if dataset is None:
        dataset = load_counts(args.layer_dir / "counts.npz")["settings"].get("dataset")
        if not dataset:
            raise NetDissectError(f"{args.layer_dir / 'counts.npz'} does not name its dataset; pass --dataset DIR")
    info = permutation_test(
        dataset,
        args.layer_dir,
        shards,
        permutations=args.permutations,
        seed=args.seed,
        alpha=args.alpha,
        labels=args.labels,
        batch_size=args.batch_size,
        progress=args.progress,
    )
    print(
        f"{info['layer']}: {info['significant_detectors']} detectors and {info['significant_units']} of "
        f"{info['units']} units have p <= {info['alpha']:g} ({info['permutations']} permutations)"
    )
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from netdissect.errors import NetDissectError
    from netdissect.experiments.sweep import SweepPoint, render_sweep
    from netdissect.report.results import count_detectors, iou_threshold_of, read_result_csv, read_summary

    points, categories, names = [], [], []
    for text in args.points:
        value, sep, folder = text.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or number is None:
            raise NetDissectError(f"--points {text}: expected VALUE=LAYER_DIR, e.g. 0.2=results/rotation/.../conv4")
        layer_dir = Path(folder)
        result, cats = read_result_csv(layer_dir / "result.csv")
        summary = read_summary(layer_dir / "summary.json")
        settings = summary.get("settings") or {}
        names.append(f"{settings.get('model') or ''} {summary.get('layer') or layer_dir.name}".strip())
        counts = count_detectors(result, cats, iou_threshold_of(summary, str(layer_dir / "summary.json")))
        points.append(SweepPoint(number, counts))
        categories += [c for c in cats if c not in categories]
    title = args.title or (names[0] if len(set(names)) == 1 else "layer")
    print(render_sweep(args.out, args.axis, points, categories, title=title))
    return 0
