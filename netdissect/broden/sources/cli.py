"""CLI: `netdissect fetch` and `netdissect broden regenerate` (heavy imports inside the handlers)."""

from __future__ import annotations

import argparse


def register(sub, broden_sub) -> None:
    """Add ``fetch`` to the top-level commands and ``regenerate`` to ``netdissect broden``."""
    p = sub.add_parser(
        "fetch",
        help="download a file (resumable, verified, atomic), optionally extract it",
        description="Download URL to --out: resumed from OUT.part with HTTP Range, retried with "
        "back-off, checked against --sha256 (printed when not given), renamed to OUT "
        "only when complete. --extract unpacks a zip/tar archive into a new folder, "
        "refusing members that would land outside it.",
    )
    p.add_argument("url")
    p.add_argument("--out", required=True, help="where the downloaded file goes")
    p.add_argument("--sha256", help="expected sha256 (64 hex digits)")
    p.add_argument("--extract", metavar="DIR", help="unpack the archive into this new folder")
    p.add_argument(
        "--strip",
        type=int,
        default=0,
        metavar="N",
        help="drop N leading path components of archive members (like tar --strip-components)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds without data before a connection counts as stalled (default 60)",
    )
    p.add_argument("--retries", type=int, default=5, help="attempts after the first (default 5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_fetch)

    r = broden_sub.add_parser(
        "regenerate",
        help="build a Broden dataset from ADE20K, PASCAL, OpenSurfaces, DTD",
        description="Convert the source datasets (any subset) and merge them into a "
        "Broden-format folder (spec: broden-sources.md).",
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


def _fetch(args: argparse.Namespace) -> int:
    from netdissect.fetch import extract, fetch

    fetch(args.url, args.out, args.sha256, timeout=args.timeout, retries=args.retries, progress=not args.no_progress)
    if args.extract:
        extract(args.out, args.extract, strip=args.strip)
    return 0


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
