"""Benchmark of a token layer: ViT-S/16 ``blocks.6`` (random weights), the forward pass vs everything after it.

    python benchmarks/bench_vit.py [--images 1000] [--dataset DIR] [--model timm:vit_small_patch16_224]
                                   [--layer blocks.6] [--tokens spatial|cls] [--batch-size 32] [--workers 1]
                                   [--tally-threads 2] [--torch-threads 2] [--labels PACK]

Without ``--dataset`` it synthesizes 100 images of 224 px (``netdissect synth``, not timed) and repeats
their rows up to ``--images``. One fresh child process (so that its peak RSS is its own) extracts one
shard, computes the thresholds, tallies and scores, timing each stage. "After the forward pass" is
everything but the time inside the model: the rest of the extraction (decoding the images, reading the
tokens as maps, writing them, the quantile candidates), the thresholds, the tally and the scores.
Prints one JSON line with the ratio, the peak RSS, whether the targets (≤ 15 %, ≤ 2 GB) are met, and the
load average. Needs timm (``pip install "netdissect[timm]"``); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import peak_rss_mb, repeated_dataset  # noqa: E402

TARGET_RATIO = 0.15
TARGET_RSS_MB = 2048


def child(args: argparse.Namespace) -> None:
    import torch

    from netdissect import pipeline
    from netdissect.broden import BrodenDataset
    from netdissect.extract import extract_shard
    from netdissect.models import load_model

    torch.set_num_threads(args.torch_threads)
    work = Path(args.work)
    shard_dir, layer_dir = work / "shards" / "0", work / "layer"
    ds = BrodenDataset(args.dataset, load_labels=False)
    model = load_model(args.model)
    timings: dict[str, float] = {}
    tic = time.perf_counter()
    meta = extract_shard(
        ds,
        model,
        [args.layer],
        0,
        1,
        shard_dir,
        batch_size=args.batch_size,
        workers=args.workers,
        tokens=args.tokens,
        progress=False,
        timings=timings,
    )
    extract_s = time.perf_counter() - tic
    rss_after_extract = peak_rss_mb()
    stages = {}
    tic = time.perf_counter()
    pipeline.quantile([shard_dir], args.layer, layer_dir)
    stages["quantile_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    pipeline.tally(
        args.dataset,
        shard_dir,
        args.layer,
        layer_dir / "thresholds.npy",
        layer_dir / "counts.npz",
        batch_size=args.batch_size,
        threads=args.tally_threads,
        progress=False,
        labels=args.labels,
    )
    stages["tally_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    info = pipeline.score(layer_dir / "counts.npz", args.dataset, layer_dir)
    stages["score_s"] = time.perf_counter() - tic
    forward = timings["forward_s"]
    extract_rest = extract_s - forward
    after = extract_rest + sum(stages.values())
    peak = peak_rss_mb()
    layer = meta["layers"][args.layer]
    print(
        json.dumps(
            {
                "images": len(ds),
                "model": args.model,
                "layer": args.layer,
                "readout": layer["readout"],
                "maps": [layer["units"], layer["height"], layer["width"]],
                "forward_s": round(forward, 2),
                "forward_images_per_s": round(len(ds) / forward, 1),
                "extract_rest_s": round(extract_rest, 2),
                **{k: round(v, 3) for k, v in stages.items()},
                "after_forward_s": round(after, 2),
                "after_over_forward": round(after / forward, 3),
                "tally_images_per_s": round(len(ds) / stages["tally_s"], 1),
                "detectors": info["detectors"],
                "peak_rss_after_extract_mb": rss_after_extract,
                "peak_rss_mb": peak,
                "ratio_target_met": after / forward <= TARGET_RATIO,
                "memory_target_met": peak <= TARGET_RSS_MB,
                "loadavg": [round(v, 2) for v in os.getloadavg()],
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, help="a Broden dataset of 224-px images (default: synthesized)")
    parser.add_argument("--images", type=int, default=1000, help="repeat rows up to this many images (default 1000)")
    parser.add_argument("--model", default="timm:vit_small_patch16_224")
    parser.add_argument("--layer", default="blocks.6")
    parser.add_argument("--tokens", choices=["spatial", "cls"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="extraction DataLoader processes (default 1)")
    parser.add_argument("--tally-threads", type=int, default=2, help="tally counting threads (default 2)")
    parser.add_argument("--torch-threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--labels", help="packed labels of the dataset (default: decode the label PNGs)")
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench_vit_") as tmp:
        work = Path(tmp)
        dataset = args.dataset
        if dataset is None:
            from netdissect.broden.synth import synthesize

            dataset = work / "synth"
            synthesize(dataset, min(args.images, 100), size=224, seed=0)
        dataset = repeated_dataset(dataset, args.images, work)
        print(f"# uptime: {os.popen('uptime').read().strip()}", flush=True)
        command = [sys.executable, __file__, "--child", "--dataset", str(dataset), "--work", str(work / "run")]
        for option in ("model", "layer", "tokens", "batch_size", "workers", "tally_threads", "torch_threads", "labels"):
            value = getattr(args, option)
            if value is not None:
                command += [f"--{option.replace('_', '-')}", str(value)]
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
