"""Benchmark: a whole ``netdissect dissect`` process (its report included) against a bare loop that only
decodes the images and runs the forward pass, back to back, printing the ratio.

    python benchmarks/bench_overhead.py --dataset DIR [--model resnet18] [--weights FILE] [--layer layer4]
                                        [--repeat 1] [--batch-size 32] [--workers 0] [--dissect-option ...]

The bare loop is plain torch, torchvision and Pillow (no netdissect code): the JPEGs of index.csv are
decoded by Pillow in a DataLoader with ``--workers`` processes, stacked as (B, H, W, 3) and viewed as
(B, 3, H, W) (channels-last memory, the layout the decoder gives), normalised with ImageNet's values and
passed through the whole model in inference mode: the floor any dissection has to pay.

The dissection is ``netdissect dissect --dataset DIR --model ... --layers LAYER --out OUT --workers W``
(plus each ``--dissect-option``), followed by ``netdissect report`` in a second process when dissect
did not write ``OUT/LAYER/report/index.html`` itself. It runs twice: ``cold``, with an empty label
cache (so it packs the labels first, netdissect.labelcache), and ``warm``, reading the pack the cold run
left (every later dissection of the dataset). Each side runs in fresh processes; wall time comes from
the clock, CPU time (user + system, the processes and their children) from ``getrusage``, peak memory
from ``ru_maxrss``. The machine may be shared: the CPU-time ratio is distorted less by other jobs than
the wall-time ratio, and ``--torch-threads 1`` (both sides) removes the stalls of multi-threaded
kernels on a busy machine. One JSON line per repetition, then the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def bare(args: argparse.Namespace) -> None:
    """The bare loop (runs in its own process): decode + forward, nothing else."""
    import importlib

    import numpy as np
    import torch
    import torchvision
    from PIL import Image

    root = Path(args.dataset)
    header, *rows = (root / "index.csv").read_text().splitlines()
    column = header.split(",").index("image")
    paths = [root / "images" / row.split(",")[column] for row in rows if row]

    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int) -> np.ndarray:
            with Image.open(paths[i]) as img:
                return np.asarray(img.convert("RGB"))

    if ":" in args.model:
        module, _, factory = args.model.partition(":")
        model = getattr(importlib.import_module(module), factory)()
    else:
        model = torchvision.models.get_model(args.model, weights=None)
    if args.weights:
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state))
    model.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    loader = torch.utils.data.DataLoader(
        Images(),
        batch_size=args.batch_size,
        num_workers=args.workers,
        collate_fn=lambda batch: torch.from_numpy(np.stack(batch)),
    )
    with torch.inference_mode():
        for hwc in loader:
            model((hwc.permute(0, 3, 1, 2).float() / 255 - mean) / std)


def timed(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``cmd``; its wall time, CPU time (with its children) and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    tic = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - tic
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(after.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--weights")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="decoding processes, both sides (default 0)")
    parser.add_argument(
        "--dissect-option",
        action="append",
        default=[],
        help="extra option for dissect, e.g. --dissect-option=--recompute",
    )
    parser.add_argument("--torch-threads", type=int, help="OMP_NUM_THREADS of both sides (default: torch's own)")
    parser.add_argument("--work", type=Path, help="folder for dissect's output (default: a temporary folder)")
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        bare(args)
        return
    work = Path(tempfile.mkdtemp(prefix="bench_overhead_", dir=args.work))
    common = ["--model", args.model] + (["--weights", args.weights] if args.weights else [])
    bare_cmd = [
        sys.executable,
        __file__,
        "--bare",
        "--dataset",
        str(args.dataset),
        "--batch-size",
        str(args.batch_size),
    ]
    bare_cmd += ["--workers", str(args.workers)] + common
    netdissect = [sys.executable, "-m", "netdissect"]
    out = work / "out"
    dissect_cmd = netdissect + ["dissect", "--dataset", str(args.dataset), "--layers", args.layer, "--out", str(out)]
    dissect_cmd += common + ["--batch-size", str(args.batch_size), "--workers", str(args.workers), "--no-progress"]
    dissect_cmd += args.dissect_option
    report_cmd = netdissect + ["report", "--dataset", str(args.dataset), "--layer-dir", str(out / args.layer)]
    report_cmd += ["--shards", str(out / "shards" / "0"), "--out", str(out / args.layer / "report")]
    env = {**os.environ, "NETDISSECT_CACHE": str(work / "cache")}
    if args.torch_threads:
        env["OMP_NUM_THREADS"] = str(args.torch_threads)
    runs = []
    try:
        for r in range(args.repeat):
            print(f"# uptime: {os.popen('uptime').read().strip()}", flush=True)
            run: dict = {"repetition": r, "bare": timed(bare_cmd, env)}
            shutil.rmtree(work / "cache", ignore_errors=True)
            for cache in ("cold", "warm"):
                shutil.rmtree(out, ignore_errors=True)
                full = timed(dissect_cmd, env)
                report = None
                if not (out / args.layer / "report" / "index.html").is_file():
                    report = timed(report_cmd, env)
                total = {k: round(full[k] + (report[k] if report else 0), 2) for k in ("wall_s", "cpu_s")}
                run[cache] = {
                    "dissect": full,
                    "report_process": report,
                    "wall_ratio": round(total["wall_s"] / run["bare"]["wall_s"], 3),
                    "cpu_ratio": round(total["cpu_s"] / run["bare"]["cpu_s"], 3),
                }
            runs.append(run)
            print(json.dumps(run), flush=True)
        print(f"# uptime: {os.popen('uptime').read().strip()}", flush=True)
        for cache in ("cold", "warm"):
            walls, cpus = [r[cache]["wall_ratio"] for r in runs], [r[cache]["cpu_ratio"] for r in runs]
            print(
                f"{cache} label cache: dissect (report included) / bare decode+forward: wall "
                f"{min(walls):.3f}-{max(walls):.3f}x, CPU {min(cpus):.3f}-{max(cpus):.3f}x over {len(runs)} "
                f"repetition(s) (target <= 1.15x)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
