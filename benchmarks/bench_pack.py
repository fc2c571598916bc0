"""Packed labels: packing speed, and reading speed of PackedLabels vs decoding the PNGs.

    python benchmarks/bench_pack.py --dataset DIR [--out PACK] [--pack-workers 2] [--repeat 3] [--batch-size 32]

Without --dataset it first writes a 1000-image 224-px synthetic dataset into a temporary folder. Packs
the dataset (images/s), then reads every row's labels through a DataLoader with 0 and 1 worker
processes, from the pack (``PackedLabels``) and from the PNGs (``BrodenDataset(load_images=False)``),
``--repeat`` times each (the first pass also warms the page cache). Prints items/s and the load average.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from netdissect.broden import BrodenDataset
from netdissect.broden.pack import PackedLabels, pack_labels
from netdissect.broden.synth import synthesize


def read_all(loader: torch.utils.data.DataLoader) -> tuple[int, float, float]:
    """Items read, seconds taken by one pass over ``loader``, and seconds until its first batch
    (worker start-up included)."""
    start = time.perf_counter()
    n, first = 0, None
    for batch in loader:
        first = time.perf_counter() - start if first is None else first
        n += len(batch["i"])
        assert batch["pixel_labels"][0].dtype == torch.int32
    return n, time.perf_counter() - start, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="pack folder (default: a temporary one)")
    parser.add_argument("--images", type=int, default=1000, help="size of the synthetic set without --dataset")
    parser.add_argument("--pack-workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.dataset
        if root is None:
            root = Path(tmp) / "synth"
            synthesize(root, args.images, workers=2)
        out = args.out or Path(tmp) / "labels"
        for r in range(args.repeat):
            done = pack_labels(root, out, workers=args.pack_workers, progress=False)
            print(
                f"pack ({args.pack_workers} workers) pass {r + 1}: {done['images']} images, {done['layers']} layers, "
                f"{done['bytes'] / 1e6:.0f} MB in {done['seconds']:.2f} s = {done['images'] / done['seconds']:.0f} "
                f"images/s  (load {os.getloadavg()[0]:.2f})"
            )
        pngs = BrodenDataset(root, load_images=False)
        packed = PackedLabels(out, BrodenDataset(root, load_images=False, load_labels=False))
        for workers in (0, 1):
            for name, ds in (("PackedLabels", packed), ("BrodenDataset PNGs", pngs)):
                for r in range(args.repeat):
                    n, seconds, first = read_all(ds.loader(batch_size=args.batch_size, workers=workers))
                    print(
                        f"{name:>18}, {workers} workers, pass {r + 1}: {n / seconds:8.0f} items/s "
                        f"({seconds:.2f} s, first batch after {first:.2f} s, load {os.getloadavg()[0]:.2f})"
                    )


if __name__ == "__main__":
    main()
