"""Benchmark of the dissection engine: forward pass vs everything after it, tally speed, peak memory.

    python benchmarks/bench_engine.py --dataset DIR [--images N] [--model resnet18] [--weights FILE] [--layer layer4]
                                      [--labels PACK]
                                      [--repeat 2] [--batch-size 32] [--workers 1] [--tally-threads 2]
                                      [--device cpu]

Each repetition runs in a fresh child process (so its peak RSS is its own) which extracts one
shard, computes thresholds, tallies and scores, timing each stage. ``--images N`` larger than the
dataset repeats its rows (a folder with a longer index.csv pointing at the same files), to show that
memory follows the batch size, not the number of images. Prints one JSON line per repetition.

    python benchmarks/bench_engine.py --dataset DIR --compare-devices --layer layer3,layer4

checks a GPU: activations on cuda vs cpu, and counts of one shard tallied on both devices (identical).

    python benchmarks/bench_engine.py --dataset DIR --tally-only --shard SHARD_DIR --thresholds FILE.npy
                                      [--repeat 3] [--tally-batch-size 32] [--tally-threads 2] [--labels PACK]
                                      [--torch-threads 1] [--upsample bilinear|fieldmap]

times the tally alone on an extracted shard, in fresh child processes: wall images/s and CPU time
per image (user + system, from ``getrusage``), which a machine shared with other jobs does not
distort as much as wall time; ``python_loop_s`` times a fixed Python loop just before, to show how
fast the (virtual) machine ran at that moment. ``--labels PACK`` reads packed labels (``netdissect broden
pack-labels DIR --out PACK``) instead of decoding the label PNGs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from netdissect.defaults import BATCH_SIZE


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


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def child(args: argparse.Namespace) -> None:
    import torch

    from netdissect import pipeline
    from netdissect.broden import BrodenDataset
    from netdissect.extract import extract_shard
    from netdissect.models import load_model

    torch.set_num_threads(args.torch_threads)
    work = Path(args.work)
    shard_dir, layer_dir = work / "shards" / "0", work / args.layer
    ds = BrodenDataset(args.dataset, load_labels=False)
    model = load_model(args.model)
    timings: dict[str, float] = {}
    if args.weights:
        from netdissect.models import load_weights

        load_weights(model.module, args.weights)
    cpu0 = time.process_time()
    tic = time.perf_counter()
    extract_shard(
        ds,
        model,
        [args.layer],
        0,
        1,
        shard_dir,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        progress=False,
        timings=timings,
    )
    extract_s = time.perf_counter() - tic
    extract_cpu = time.process_time() - cpu0
    rss_after_extract = peak_rss_mb()
    cpu0 = time.process_time()
    tic = time.perf_counter()
    pipeline.quantile([shard_dir], args.layer, layer_dir)
    quantile_s = time.perf_counter() - tic
    tic = time.perf_counter()
    pipeline.tally(
        args.dataset,
        shard_dir,
        args.layer,
        layer_dir / "thresholds.npy",
        layer_dir / "counts.npz",
        device=args.device,
        batch_size=args.tally_batch_size,
        threads=args.tally_threads,
        progress=False,
        labels=args.labels,
    )
    tally_s = time.perf_counter() - tic
    tic = time.perf_counter()
    info = pipeline.score(layer_dir / "counts.npz", args.dataset, layer_dir)
    score_s = time.perf_counter() - tic
    after = quantile_s + tally_s + score_s
    after_cpu = time.process_time() - cpu0
    print(
        json.dumps(
            {
                "images": len(ds),
                "model": args.model,
                "layer": args.layer,
                "device": args.device,
                "forward_s": round(timings["forward_s"], 2),
                "extract_s": round(extract_s, 2),
                "quantile_s": round(quantile_s, 3),
                "tally_s": round(tally_s, 2),
                "score_s": round(score_s, 3),
                "after_forward_s": round(after, 2),
                "after_over_forward": round(after / timings["forward_s"], 3),
                "extract_cpu_s": round(extract_cpu, 2),
                "after_cpu_s": round(after_cpu, 2),
                "after_over_extract_cpu": round(after_cpu / extract_cpu, 3),
                "labels": args.labels,
                "forward_images_per_s": round(len(ds) / timings["forward_s"], 1),
                "tally_images_per_s": round(len(ds) / tally_s, 1),
                "detectors": info["detectors"],
                "unique_top": info["unique_top"],
                "peak_rss_after_extract_mb": rss_after_extract,
                "peak_rss_end_mb": peak_rss_mb(),
            }
        )
    )


def tally_child(args: argparse.Namespace) -> None:
    """One timed tally of ``--shard``, printed as a JSON line. The clock runs from opening the dataset
    to the written counts file; the modules are imported before it starts."""
    import resource

    import torch

    from netdissect import pipeline

    for module in (
        "tqdm",
        "netdissect.broden.pack",
        "netdissect.tally",
        "netdissect.counts",
    ):  # imported before the clock starts
        importlib.import_module(module)

    torch.set_num_threads(args.torch_threads)

    def cpu_s() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    tic = time.perf_counter()  # this machine's speed now: a fixed pure-Python loop
    sum(range(10**7))
    loop_s = time.perf_counter() - tic
    out = Path(args.work) / "tally.npz"
    cpu0, tic = cpu_s(), time.perf_counter()
    counts = pipeline.tally(
        args.dataset,
        args.shard,
        args.layer,
        args.thresholds,
        out,
        union=args.union,
        upsample=args.upsample,
        device=args.device,
        batch_size=args.tally_batch_size,
        threads=args.tally_threads,
        progress=False,
        labels=args.labels,
    )
    wall, cpu = time.perf_counter() - tic, cpu_s() - cpu0
    images = int(json.loads((Path(args.shard) / "meta.json").read_text())["num_images"])
    print(
        json.dumps(
            {
                "images": images,
                "layer": args.layer,
                "union": args.union,
                "upsample": args.upsample,
                "labels": args.labels,
                "tally_threads": args.tally_threads,
                "threads": args.torch_threads,
                "batch_size": args.tally_batch_size,
                "wall_s": round(wall, 2),
                "tally_images_per_s": round(images / wall, 1),
                "cpu_ms_per_image": round(1e3 * cpu / images, 2),
                "intersections": int(counts["I"].sum()),
                "python_loop_s": round(loop_s, 3),
            }
        )
    )


def compare_devices(args: argparse.Namespace) -> None:
    """Extract on CUDA and on CPU; tally one CPU shard on both devices: counts must be identical."""
    import numpy as np
    import torch

    from netdissect import pipeline
    from netdissect.counts import load_counts

    torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix="bench_engine_dev_") as tmp:
        work, layers = Path(tmp), args.layer.split(",")
        result: dict = {"layers": layers}
        for device in ("cuda", "cpu"):
            tic = time.perf_counter()
            pipeline.extract(
                args.dataset,
                args.model,
                layers,
                0,
                1,
                work / device / "shard",
                device=device,
                batch_size=args.batch_size,
                workers=args.workers,
                progress=False,
            )
            result[f"extract_{device}_s"] = round(time.perf_counter() - tic, 2)
        for layer in layers:
            t_gpu = pipeline.quantile([work / "cuda" / "shard"], layer, work / "cuda" / layer)
            t_cpu = pipeline.quantile([work / "cpu" / "shard"], layer, work / "cpu" / layer)
            result[f"{layer}_threshold_max_rel_diff_gpu_vs_cpu_activations"] = float(
                np.max(np.abs(t_gpu - t_cpu) / np.maximum(np.abs(t_cpu), 1e-12))
            )
            for union in ("paper", "lite"):
                counts = {}
                for device in ("cpu", "cuda"):
                    tic = time.perf_counter()
                    pipeline.tally(
                        args.dataset,
                        work / "cpu" / "shard",
                        layer,
                        work / "cpu" / layer / "thresholds.npy",
                        work / f"{device}_{layer}_{union}.npz",
                        union=union,
                        device=device,
                        batch_size=args.tally_batch_size,
                        threads=args.tally_threads,
                        progress=False,
                    )
                    result[f"{layer}_{union}_tally_{device}_s"] = round(time.perf_counter() - tic, 2)
                    counts[device] = load_counts(work / f"{device}_{layer}_{union}.npz")
                result[f"{layer}_{union}_counts_identical"] = all(
                    np.array_equal(counts["cpu"][k], counts["cuda"][k]) for k in ("G", "I", "C")
                )
        print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--images", type=int, default=0, help="repeat rows up to this many images")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--weights", help="weights of --model (default: its seeded random initialisation)")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tally-batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--workers", type=int, default=1, help="extraction DataLoader processes")
    parser.add_argument("--tally-threads", type=int, default=2, help="tally counting threads (default 2)")
    parser.add_argument("--torch-threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tally-only", action="store_true", help="instead: time the tally of --shard alone")
    parser.add_argument("--shard", type=Path, help="with --tally-only: an extracted shard folder")
    parser.add_argument("--thresholds", type=Path, help="with --tally-only: the layer's thresholds.npy")
    parser.add_argument("--union", default="paper", choices=["paper", "lite"])
    parser.add_argument("--labels", help="packed labels for the tally (netdissect broden pack-labels)")
    parser.add_argument("--upsample", default="bilinear", choices=["bilinear", "fieldmap"], help="with --tally-only")
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--compare-devices",
        action="store_true",
        help="instead: extract on cuda and cpu, tally on both, check the counts are identical",
    )
    args = parser.parse_args()
    if args.compare_devices:
        compare_devices(args)
        return
    if args.child:
        (tally_child if args.tally_only else child)(args)
        return
    if args.tally_only:
        if args.shard is None or args.thresholds is None:
            parser.error("--tally-only needs --shard and --thresholds")
        with tempfile.TemporaryDirectory(prefix="bench_tally_") as tmp:
            for _ in range(args.repeat):
                print(f"# uptime: {os.popen('uptime').read().strip()}", flush=True)
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        "--tally-only",
                        "--dataset",
                        str(args.dataset),
                        "--shard",
                        str(args.shard),
                        "--thresholds",
                        str(args.thresholds),
                        "--layer",
                        args.layer,
                        "--union",
                        args.union,
                        "--upsample",
                        args.upsample,
                        "--tally-batch-size",
                        str(args.tally_batch_size),
                        "--workers",
                        str(args.workers),
                        "--tally-threads",
                        str(args.tally_threads),
                        "--torch-threads",
                        str(args.torch_threads),
                        "--device",
                        args.device,
                        "--work",
                        tmp,
                    ]
                    + (["--labels", args.labels] if args.labels else []),
                    check=True,
                )
        return
    with tempfile.TemporaryDirectory(prefix="bench_engine_") as tmp:
        dataset = repeated_dataset(args.dataset, args.images, Path(tmp)) if args.images else args.dataset
        print(f"# uptime: {os.popen('uptime').read().strip()}", flush=True)
        for r in range(args.repeat):
            work = Path(tmp) / f"run{r}"
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--dataset",
                str(dataset),
                "--model",
                args.model,
                "--layer",
                args.layer,
                *(["--weights", args.weights] if args.weights else []),
                *(["--labels", args.labels] if args.labels else []),
                "--batch-size",
                str(args.batch_size),
                "--workers",
                str(args.workers),
                "--tally-threads",
                str(args.tally_threads),
                "--tally-batch-size",
                str(args.tally_batch_size),
                "--torch-threads",
                str(args.torch_threads),
                "--device",
                args.device,
                "--work",
                str(work),
            ]
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
