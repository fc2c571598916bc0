"""Reading speed of BrodenDataset: JPEG + every label PNG decoded to tensors, through a DataLoader.

    python benchmarks/bench_reader.py [--dataset DIR] [--images 1000] [--workers 2] [--batch-size 32] [--repeat 3]

Without --dataset it first writes a 224-px synthetic dataset into a temporary folder. Prints
images/s per repeat (the first pass also warms the page cache) and the load average.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from netdissect.broden import BrodenDataset
from netdissect.broden.synth import synthesize


def read_all(root: Path, workers: int, batch_size: int) -> tuple[int, float]:
    ds = BrodenDataset(root)
    start = time.perf_counter()
    n = 0
    for batch in ds.loader(batch_size=batch_size, workers=workers):
        n += len(batch["i"])
        assert batch["image"].dtype == torch.uint8 and batch["pixel_labels"][0].dtype == torch.int32
    return n, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=None)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dataset
        if root is None:
            root = Path(tmp) / "synth224"
            synthesize(root, args.images, size=224, seed=0, workers=args.workers)
        print(f"dataset {root}: {len(BrodenDataset(root))} images; workers {args.workers}, batch {args.batch_size}")
        for k in range(args.repeat):
            n, seconds = read_all(root, args.workers, args.batch_size)
            print(
                f"run {k + 1}: {n} images in {seconds:.2f} s = {n / seconds:.0f} images/s "
                f"(load average {os.getloadavg()[0]:.2f})"
            )


if __name__ == "__main__":
    main()
