"""Benchmark of the faithful-mode costs: the fieldmap tally against the bilinear one, and copying the
captured outputs that a later in-place operation would change.

    python benchmarks/bench_faithful.py [--cache DIR] [--images 1000] [--repeat 3] [--tally-threads 2]
                                        [--clone-batches 5] [--batch-size 32]

1. Tally: builds once (in ``--cache``, kept between runs) a synthetic 224-px dataset, its packed labels,
   and for ResNet-18 ``layer4`` and AlexNet ``features.11`` an extracted shard with its thresholds; then
   tallies each shard ``--repeat`` times with ``--upsample bilinear`` and ``fieldmap`` in turn, each in a
   fresh child process (``bench_engine.py --tally-only``), and prints every run's JSON line and, per
   layer, the medians and the ratio fieldmap / bilinear of wall time and of CPU time per image.
2. Copies: for torchvision AlexNet (every ``features`` layer) and ResNet-18 (stem, every ``bn2``, every
   block), the forward pass of a batch (the capture's own call) with no copies and no check (what
   capture did before: wrong values where an in-place operation follows), with the default (check the
   version counters, copy what an in-place operation changes) and with every output copied; two
   rounds of each in turn; and the layers the default copies.

The load average is printed before and after (this machine is shared; see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARDS = {"resnet18": "layer4", "alexnet": "features.11"}


def netdissect(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "netdissect", *args], check=True)


def fixture(cache: Path, images: int) -> dict:
    """Dataset, packed labels, and per model a shard and thresholds, built once."""
    dataset, pack = cache / f"synth{images}", cache / f"pack{images}"
    if not (dataset / "index.csv").exists():
        netdissect("synth", str(dataset), "--images", str(images))
    if not (pack / "index.npz").exists():
        netdissect("broden", "pack-labels", str(dataset), "--out", str(pack), "--no-progress")
    shards = {}
    for model, layer in SHARDS.items():
        shard, layer_dir = cache / f"{model}{images}" / "shard", cache / f"{model}{images}" / layer
        if not (shard / "meta.json").exists():
            netdissect(
                "extract", "--dataset", str(dataset), "--model", model, "--layers", layer, "--out", str(shard),
                "--workers", "1", "--no-progress",
            )  # fmt: skip
        if not (layer_dir / "thresholds.npy").exists():
            netdissect("quantile", "--shards", str(shard), "--layer", layer, "--out", str(layer_dir))
        shards[model] = (shard, layer_dir / "thresholds.npy")
    return {"dataset": dataset, "pack": pack, "shards": shards}


def tally_once(fx: dict, model: str, upsample: str, threads: int) -> dict:
    shard, thresholds = fx["shards"][model]
    out = subprocess.run(
        [
            sys.executable,
            str(HERE / "bench_engine.py"),
            "--tally-only",
            "--repeat",
            "1",
            "--dataset",
            str(fx["dataset"]),
            "--shard",
            str(shard),
            "--thresholds",
            str(thresholds),
            "--layer",
            SHARDS[model],
            "--labels",
            str(fx["pack"]),
            "--upsample",
            upsample,
            "--tally-threads",
            str(threads),
            "--torch-threads",
            "1",
        ],  # fmt: skip
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def bench_tally(fx: dict, repeat: int, threads: int) -> None:
    for model in SHARDS:
        runs: dict[str, list[dict]] = {"bilinear": [], "fieldmap": []}
        for _ in range(repeat):
            for upsample in runs:
                result = tally_once(fx, model, upsample, threads)
                print(json.dumps({"model": model, **result}), flush=True)
                runs[upsample].append(result)
        wall = {u: statistics.median(r["wall_s"] for r in rs) for u, rs in runs.items()}
        cpu = {u: statistics.median(r["cpu_ms_per_image"] for r in rs) for u, rs in runs.items()}
        print(
            json.dumps(
                {
                    "tally": f"{model} {SHARDS[model]}",
                    "median_wall_s": wall,
                    "median_cpu_ms_per_image": cpu,
                    "fieldmap_over_bilinear_wall": round(wall["fieldmap"] / wall["bilinear"], 3),
                    "fieldmap_over_bilinear_cpu": round(cpu["fieldmap"] / cpu["bilinear"], 3),
                }
            ),
            flush=True,
        )


def bench_copies(batches: int, batch_size: int) -> None:
    import torch

    from netdissect.models import capture, load_model

    torch.set_num_threads(2)
    layer_sets = {
        "alexnet": [f"features.{i}" for i in range(13)],
        "resnet18": ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
        + [f"layer{s}.{b}.bn2" for s in (1, 2, 3, 4) for b in (0, 1)],
    }
    for spec, layers in layer_sets.items():
        model = load_model(spec)
        x = model.normalise(torch.randint(0, 256, (batch_size, 3, 224, 224), dtype=torch.uint8))
        times: dict[str, list[float]] = {"no_copies": [], "default": [], "copy_all": []}
        for _ in range(2):  # two rounds, each mode in turn (the machine's speed drifts)
            for name in times:
                with capture(model, layers, copy_all=name == "copy_all") as run:
                    if name == "no_copies":
                        run.changed = list  # never sees a change: nothing is copied (the old behaviour)
                    run(x)  # the first pass runs the whole model and learns what to copy
                    for _ in range(batches):
                        tic = time.perf_counter()
                        run(x)
                        times[name].append(time.perf_counter() - tic)
                    if name == "default":
                        copied = sorted(run.copied)
        median = {k: statistics.median(v) for k, v in times.items()}
        print(
            json.dumps(
                {
                    "copies": spec,
                    "layers": len(layers),
                    "batch": batch_size,
                    "median_forward_s": {k: round(v, 3) for k, v in median.items()},
                    "default_over_no_copies": round(median["default"] / median["no_copies"], 3),
                    "copy_all_over_no_copies": round(median["copy_all"] / median["no_copies"], 3),
                    "default_copies": copied,
                }
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="keep the fixture here (default: a temporary folder)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tally-threads", type=int, default=2)
    parser.add_argument("--clone-batches", type=int, default=5)
    parser.add_argument("--copies-only", action="store_true", help="only part 2 (no dataset needed)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_faithful_") as tmp:
        cache = args.cache or Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        if not args.copies_only:
            fx = fixture(cache, args.images)
            print(f"# uptime: {os.popen('uptime').read().strip()}", flush=True)
            bench_tally(fx, args.repeat, args.tally_threads)
        print(f"# uptime: {os.popen('uptime').read().strip()}", flush=True)
        bench_copies(args.clone_batches, args.batch_size)
        print(f"# uptime: {os.popen('uptime').read().strip()}", flush=True)


if __name__ == "__main__":
    main()
