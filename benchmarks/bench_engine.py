"""Benchmark of the dissection engine: forward pass vs everything after it, tally speed, peak memory.

    python benchmarks/bench_engine.py --dataset DIR [--images N] [--model resnet18] [--layer layer4]
                                      [--repeat 2] [--batch-size 32] [--workers 1] [--device cpu]

Each repetition runs in a fresh child process (so its peak RSS is its own) which extracts one
shard, computes thresholds, tallies and scores, timing each stage. ``--images N`` larger than the
dataset repeats its rows (a folder with a longer index.csv pointing at the same files), to show that
memory follows the batch size, not the number of images. Prints one JSON line per repetition.
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


def repeated_dataset(root: Path, images: int, work: Path) -> Path:
    """A dataset folder whose index.csv lists ``root``'s rows over and over until there are ``images``."""
    lines = (root / "index.csv").read_bytes().split(b"\r\n")
    header, rows = lines[0], [r for r in lines[1:] if r]
    if images <= len(rows):
        return root
    out = work / f"repeated{images}"
    out.mkdir(parents=True, exist_ok=True)
    for f in root.iterdir():
        if f.name != "index.csv" and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    body = [rows[i % len(rows)] for i in range(images)]
    (out / "index.csv").write_bytes(b"\r\n".join([header, *body]) + b"\r\n")
    return out


def child(args: argparse.Namespace) -> None:
    import torch

    from netdissect import pipeline
    from netdissect.broden import BrodenDataset
    from netdissect.extract import extract_shard
    from netdissect.models import load_model

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    shard_dir, layer_dir = work / "shards" / "0", work / args.layer
    ds = BrodenDataset(args.dataset, load_labels=False)
    model = load_model(args.model)
    timings: dict[str, float] = {}
    tic = time.perf_counter()
    extract_shard(ds, model, [args.layer], 0, 1, shard_dir, batch_size=args.batch_size, workers=args.workers,
                  device=args.device, progress=False, timings=timings)
    extract_s = time.perf_counter() - tic
    tic = time.perf_counter()
    pipeline.quantile([shard_dir], args.layer, layer_dir)
    quantile_s = time.perf_counter() - tic
    tic = time.perf_counter()
    pipeline.tally(args.dataset, shard_dir, args.layer, layer_dir / "thresholds.npy", layer_dir / "counts.npz",
                   device=args.device, batch_size=args.tally_batch_size, workers=args.workers, progress=False)
    tally_s = time.perf_counter() - tic
    tic = time.perf_counter()
    info = pipeline.score(layer_dir / "counts.npz", args.dataset, layer_dir)
    score_s = time.perf_counter() - tic
    after = quantile_s + tally_s + score_s
    print(json.dumps({
        "images": len(ds), "model": args.model, "layer": args.layer, "device": args.device,
        "forward_s": round(timings["forward_s"], 2), "extract_s": round(extract_s, 2),
        "quantile_s": round(quantile_s, 3), "tally_s": round(tally_s, 2), "score_s": round(score_s, 3),
        "after_forward_s": round(after, 2), "after_over_forward": round(after / timings["forward_s"], 3),
        "forward_images_per_s": round(len(ds) / timings["forward_s"], 1),
        "tally_images_per_s": round(len(ds) / tally_s, 1),
        "detectors": info["detectors"], "unique_top": info["unique_top"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--images", type=int, default=0, help="repeat rows up to this many images")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tally-batch-size", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench_engine_") as tmp:
        dataset = repeated_dataset(args.dataset, args.images, Path(tmp)) if args.images else args.dataset
        print(f"# uptime: {os.popen('uptime').read().strip()}", flush=True)
        for r in range(args.repeat):
            work = Path(tmp) / f"run{r}"
            cmd = [sys.executable, __file__, "--child", "--dataset", str(dataset), "--model", args.model,
                   "--layer", args.layer, "--batch-size", str(args.batch_size), "--workers", str(args.workers),
                   "--tally-batch-size", str(args.tally_batch_size), "--threads", str(args.threads),
                   "--device", args.device, "--work", str(work)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            out = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
            if status != 0:
                raise SystemExit(f"benchmark child failed with status {status}")
            result = json.loads(out.strip().splitlines()[-1])
            result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
            result["act_file_mb"] = round((work / "shards" / "0" / f"{args.layer}.act.npy").stat().st_size / 2**20, 1)
            print(json.dumps(result), flush=True)
            print(f"# uptime: {os.popen('uptime').read().strip()}", flush=True)


if __name__ == "__main__":
    main()
