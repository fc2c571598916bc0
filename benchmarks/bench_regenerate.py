"""Benchmark `netdissect broden regenerate` on a synthetic ADE20K-format fixture.

Generates N ADE20K-format images (index_ade20k.mat, JPEGs, _seg.png, _parts_1.png on half of them;
default 2000 images of 384x512), then runs the CLI in a subprocess and reports wall time, images/s
(both passes: statistics + translate) and the peak resident memory summed over the whole process
tree (parent, forkserver, workers: PSS, and the RSS sum), sampled every 50 ms from /proc.

    python benchmarks/bench_regenerate.py --images 2000 --size 224 --workers 2 [--fixture DIR] [--repeat 2]

A fixture folder given with --fixture is reused when it already holds the same number of images.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def tree_memory_kib(root_pid: int, cpu_ticks: dict[int, int]) -> tuple[int, int]:
    """(sum of Pss, sum of Rss) in KiB over ``root_pid`` and all its descendants (Linux /proc).

    Pss splits pages shared between processes (forked workers) among them, so its sum is the tree's
    real footprint; the Rss sum counts shared pages once per process. Also records each process's
    latest user+system CPU ticks in ``cpu_ticks``.
    """
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parents[int(entry)] = int(fields[1])
                ticks[int(entry)] = int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        pid = frontier.pop()
        children = [c for c, p in parents.items() if p == pid and c not in tree]
        tree.update(children)
        frontier.extend(children)
    pss = rss = 0
    for pid in tree:
        cpu_ticks[pid] = max(cpu_ticks.get(pid, 0), ticks.get(pid, 0))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
        except OSError:
            pass
    return pss, rss


def run_measured(cmd: list[str]) -> tuple[float, float, int, int]:
    """Run ``cmd``; return (wall seconds, CPU seconds of the process tree, peak Pss sum, peak Rss sum in KiB)."""
    peak_pss = peak_rss = 0
    cpu_ticks: dict[int, int] = {}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_pss, peak_rss
        while not done.is_set():
            pss, rss = tree_memory_kib(proc.pid, cpu_ticks)
            peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} exited with {code}")
    return wall, sum(cpu_ticks.values()) / os.sysconf("SC_CLK_TCK"), peak_pss, peak_rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--fixture", type=Path, help="fixture folder (kept and reused)")
    args = parser.parse_args()

    from netdissect.broden.sources.fixtures import write_ade20k_bulk

    scratch = Path(tempfile.mkdtemp(prefix="bench_regen_"))
    fixture = args.fixture or scratch / "ade20k"
    stamp = fixture / f".bench_{args.images}_{args.height}x{args.width}"
    if not stamp.exists():
        if fixture.exists():
            shutil.rmtree(fixture)
        t0 = time.perf_counter()
        write_ade20k_bulk(fixture, args.images, args.height, args.width)
        stamp.touch()
        print(f"fixture: {args.images} images {args.height}x{args.width} written in {time.perf_counter() - t0:.1f} s")
    print(f"load average before: {os.getloadavg()}")
    try:
        for k in range(args.repeat):
            out = scratch / f"out{k}"
            cmd = [
                sys.executable,
                "-m",
                "netdissect",
                "broden",
                "regenerate",
                "--out",
                str(out),
                "--size",
                str(args.size),
                "--ade20k",
                str(fixture),
                "--workers",
                str(args.workers),
                "--no-progress",
            ]
            wall, cpu, pss, rss = run_measured(cmd)
            print(
                f"run {k + 1}: {args.images} images -> {args.size}px in {wall:.1f} s = {args.images / wall:.1f} "
                f"images/s (wall); CPU {cpu:.1f} s = {1000 * cpu / args.images:.1f} ms/image, i.e. "
                f"{2 * args.images / cpu:.0f} images/s if 2 cores were free; peak memory of the process tree: "
                f"PSS {pss / 1024:.0f} MiB (RSS sum {rss / 1024:.0f} MiB); load average after: "
                f"{os.getloadavg()[0]:.2f}"
            )
            shutil.rmtree(out)
    finally:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
