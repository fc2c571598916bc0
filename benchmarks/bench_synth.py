"""Speed of `netdissect synth`: images written per second (both passes, all files).

python benchmarks/bench_synth.py [--images 400] [--size 224] [--workers 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from netdissect.broden.synth import synthesize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", type=int, default=224, choices=(224, 227, 384))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for k in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            tables = synthesize(Path(tmp) / "synth", args.images, size=args.size, seed=k, workers=args.workers)
            seconds = time.perf_counter() - start
        print(
            f"run {k + 1}: {args.images} images at {args.size} px, {len(tables.numbers)} labels, "
            f"{args.workers} workers: {seconds:.2f} s = {args.images / seconds:.0f} images/s "
            f"(load average {os.getloadavg()[0]:.2f})"
        )


if __name__ == "__main__":
    main()
