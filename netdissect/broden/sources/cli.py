"""CLI: `netdissect broden regenerate` (heavy imports inside the handler)."""

from __future__ import annotations

import argparse


def register(sub, broden_sub) -> None:
    """Add ``regenerate`` to ``netdissect broden``."""

    r = broden_sub.add_parser(
        "regenerate",
        help="build a Broden dataset from ADE20K, PASCAL, OpenSurfaces, DTD",
        description="Convert the source datasets (any subset) and merge them into a "
        "Broden-format folder (docs/broden-sources.md).",
    )
    r.add_argument("--out", required=True, help="new dataset folder (must not exist or be empty)")
    r.add_argument("--size", type=int, required=True, help="image side S (224, 227, 384); labels are S//2")
    for name in ("ade20k", "pascal", "opensurfaces", "dtd"):
        r.add_argument(f"--{name}", metavar="DIR", help=f"{name} folder, laid out as the source ships it")
    r.add_argument("--min-frequency", type=int, default=10, help="keep labels in at least this many images (10)")
    r.add_argument(
        "--min-coverage",
        type=float,
        default=0.5,
        help="keep labels covering at least this many whole images in total (0.5)",
    )
    r.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    r.add_argument(
        "--color-table",
        metavar="FILE",
        help="the published 32x32x32 color-name table (.npy); default: the approximate fallback rule",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.set_defaults(func=_regenerate)


def _regenerate(args: argparse.Namespace) -> int:
    from netdissect.broden.sources.merge import regenerate

    sources = {name: getattr(args, name) for name in ("ade20k", "pascal", "opensurfaces", "dtd") if getattr(args, name)}
    regenerate(
        args.out,
        args.size,
        sources,
        min_frequency=args.min_frequency,
        min_coverage=args.min_coverage,
        workers=args.workers,
        color_table=args.color_table,
        progress=not args.no_progress,
    )
    return 0
