"""Benchmark of the significance test (docs/experiments.md §3): the cost of one permutation relative
to one tally, and of K permutations, on one layer.

    python benchmarks/bench_significance.py [--dataset DIR] [--images 1000] [--model resnet18]
                                            [--layer layer4] [--permutations 100] [--work DIR]

Without ``--dataset`` it writes a synthetic dataset of ``--images`` 224-pixel images into ``--work``
(kept there, with the extracted shard and the packed labels, for the next run). Then, in one
thread: the tally of the layer with packed labels (timed), and the test with K permutations and with
``--few`` permutations (timed), so that one permutation costs ``(t_K - t_few) / (K - few)`` and the
fixed part (reading labels and activations, deciding the masks once, the unpermuted check) is what is
left. Prints one JSON line: CPU seconds (``time.process_time``) and wall seconds of each, the ratio of
one permutation to one tally, and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, help="Broden folder (default: a synthetic one in --work)")
    parser.add_argument("--images", type=int, default=1000, help="images of the synthetic dataset (default 1000)")
    parser.add_argument("--model", default="resnet18", help="model SPEC (random weights; default resnet18)")
    parser.add_argument("--layer", default="layer4", help="layer (default layer4)")
    parser.add_argument("--permutations", type=int, default=100, help="K (default 100)")
    parser.add_argument("--few", type=int, default=10, help="the smaller K of the difference (default 10)")
    parser.add_argument("--work", type=Path, default=Path("bench-significance"), help="cache folder")
    args = parser.parse_args()

    import torch

    from netdissect import pipeline
    from netdissect.broden.pack import pack_labels
    from netdissect.broden.synth import synthesize
    from netdissect.experiments.significance import permutation_test

    torch.set_num_threads(1)
    work = args.work
    dataset = args.dataset
    if dataset is None:
        dataset = work / f"synth{args.images}"
        if not (dataset / "index.csv").is_file():
            synthesize(dataset, args.images, size=224, seed=0)
    shard, layer_dir, pack = work / "shard", work / args.layer, work / "labels"
    if not (shard / "meta.json").is_file():
        pipeline.extract(dataset, args.model, [args.layer], 0, 1, shard, workers=1, progress=False)
    if not (pack / "index.npz").is_file():
        pack_labels(dataset, pack, progress=False)
    pipeline.quantile([shard], args.layer, layer_dir)

    def timed(run) -> dict[str, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        run()
        return {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}

    tally = timed(
        lambda: pipeline.tally(
            dataset,
            shard,
            args.layer,
            layer_dir / "thresholds.npy",
            layer_dir / "counts.npz",
            labels=pack,
            progress=False,
        )
    )
    test = lambda k: (
        lambda: permutation_test(  # noqa: E731
            dataset, layer_dir, [shard], permutations=k, alpha=0.5, labels=pack, progress=False
        )
    )
    few = timed(test(args.few))
    many = timed(test(args.permutations))
    per = (many["cpu_s"] - few["cpu_s"]) / (args.permutations - args.few)
    info = json.loads((layer_dir / "significance.json").read_text())
    print(
        json.dumps(
            {
                "images": info["images"],
                "model": args.model,
                "layer": args.layer,
                "units": info["units"],
                "tally": tally,
                f"test_K{args.few}": few,
                f"test_K{args.permutations}": many,
                "permutation_cpu_s": round(per, 4),
                "permutation_over_tally": round(per / tally["cpu_s"], 4),
                "fixed_cpu_s": round(few["cpu_s"] - args.few * per, 3),
                "K_over_tally": round(many["cpu_s"] / tally["cpu_s"], 2),
                "load_average": os.getloadavg(),
            }
        )
    )


if __name__ == "__main__":
    main()
