"""`netdissect synth`, `netdissect broden check` and `netdissect broden pack-labels`: registration (light)
and handlers."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction, broden_sub: argparse._SubParsersAction) -> None:
    """Add ``synth`` to the top-level commands, ``check`` and ``pack-labels`` to ``netdissect broden``."""
    synth = sub.add_parser(
        "synth",
        help="write a procedural Broden-format dataset",
        description="Write a procedural Broden-format dataset (scenes with objects and "
        "parts, materials, textures, colours) whose labels are true to its pixels.",
    )
    synth.add_argument("out", metavar="OUT", help="output folder (must not hold an index.csv yet)")
    synth.add_argument("--images", type=int, required=True, help="number of images")
    synth.add_argument("--size", type=int, default=224, choices=(224, 227, 384), help="image side S (labels S//2)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    synth.add_argument("--workers", type=int, default=None, help="processes (default: all usable cores)")
    synth.add_argument(
        "--color-table",
        metavar="FILE.npy",
        default=None,
        help="32x32x32 colour-name table (values 0..10); default: the approximate HSV rule",
    )
    synth.set_defaults(func=_synth)

    check = broden_sub.add_parser(
        "check",
        help="validate a Broden dataset folder and list every problem",
        description="Validate a Broden dataset folder: tables, index cells, files, "
        "image and label map sizes, label numbers. Exit 0 only when clean.",
    )
    check.add_argument("dir", metavar="DIR", help="dataset folder (holds index.csv)")
    check.add_argument("--workers", type=int, default=None, help="processes decoding files (default: all cores)")
    check.add_argument("--limit", type=int, default=None, help="check only the first N rows' files")
    check.add_argument("--out", metavar="FILE", help="write the problems to FILE (atomically) instead of printing them")
    check.set_defaults(func=_check)

    pack = broden_sub.add_parser(
        "pack-labels",
        help="decode every label PNG once into a pack the tally reads",
        description="Decode every label PNG of a dataset once (all categories) into a "
        "memory-mappable pack folder (pixels.npy + index.npz), read by "
        "`netdissect tally --labels PACK` instead of the PNGs.",
    )
    pack.add_argument("dir", metavar="DIR", help="dataset folder (holds index.csv)")
    pack.add_argument(
        "--out", metavar="PACK", required=True, help="pack folder to write (replaced only once the new one is complete)"
    )
    pack.add_argument("--workers", type=int, default=None, help="processes decoding PNGs (default: all usable cores)")
    pack.add_argument("--no-progress", action="store_true", help="no progress bar")
    pack.set_defaults(func=_pack_labels)


def _synth(args: argparse.Namespace) -> int:
    import time

    from netdissect.broden.colors import load_color_table
    from netdissect.broden.synth import synthesize

    table = load_color_table(args.color_table) if args.color_table else None
    start = time.perf_counter()
    tables = synthesize(args.out, args.images, size=args.size, seed=args.seed, workers=args.workers, color_table=table)
    seconds = time.perf_counter() - start
    print(
        f"wrote {args.images} images, {len(tables.numbers)} labels in {len(tables.categories)} categories "
        f"to {args.out} ({seconds:.1f} s, {args.images / seconds:.0f} images/s)"
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    from netdissect.broden.check import check_broden

    problems = check_broden(args.dir, workers=args.workers, limit=args.limit)
    if args.out:
        from netdissect.io import atomic_write_text

        atomic_write_text(args.out, "".join(f"{p}\n" for p in problems))  # complete or absent
    else:
        for problem in problems:
            print(problem)
    if problems:
        print(f"{args.dir}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.dir}: no problems found")
    return 0


def _pack_labels(args: argparse.Namespace) -> int:
    from netdissect.broden.pack import pack_labels

    done = pack_labels(args.dir, args.out, workers=args.workers, progress=not args.no_progress)
    seconds = done["seconds"]
    print(
        f"wrote {done['images']} images, {done['layers']} label layers, {done['bytes'] / 1e6:.1f} MB to "
        f"{done['out']} ({seconds:.1f} s, {done['images'] / max(seconds, 1e-9):.0f} images/s)"
    )
    return 0
