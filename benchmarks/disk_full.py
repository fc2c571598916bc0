"""Disk-full campaign: `netdissect dissect` and `pack-labels` writing to a small tmpfs that fills up.

    python benchmarks/disk_full.py [--points 10] [--seed 0] [--work DIR]      (as root: it mounts a tmpfs)

First one dissection (12 synthetic images, resnet18 layer3 and layer4) and one label pack on the
ordinary disk: the reference files and B, the bytes they take. Then, for each of ``--points`` amounts
of free space drawn (seeded) from [0, B), a tmpfs of B (in whole pages) + 1 MiB is mounted, filled by a file up to
that free space, and the same command is run with its output on the tmpfs. It must fail with exit
status 2 and a message "no space left" naming a file (or, when the activations alone would not fit,
extract's refusal before writing them, naming the folder); no file at its final name may differ from the
reference's (no partial file that looks finished). The filler is removed and the same command run
again: it must succeed, and the files must be byte-identical to the reference. Printed: disk-full
runs recovered of runs made (each point is one dissect and one pack-labels run).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

TEMP_MARK = ".netdissect-tmp"
# a write that found the disk full, or extract's check before writing the activations (less free than they need)
REFUSED = r"(no space left|the \S+ activations need .* are free there)"
ENV = dict(os.environ, OMP_NUM_THREADS="1")


class CannotMount(Exception):
    """No tmpfs could be mounted here (not root, or no CAP_SYS_ADMIN in this container)."""


@contextlib.contextmanager
def small_tmpfs(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``path`` for the block."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise CannotMount(proc.stderr.strip() or f"mount exited with {proc.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def files(folder: Path) -> dict[str, bytes]:
    """Files at their final names (temporaries of atomic writes and lock files aside)."""
    out = {}
    for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
        parts = path.relative_to(folder).parts
        if path.is_file() and not any(TEMP_MARK in p for p in parts) and not path.name.endswith(".lock"):
            out[str(path.relative_to(folder))] = path.read_bytes()
    return out


def commands(dataset: Path) -> dict[str, callable]:
    """The commands run against a full disk, by name: each maps an output path to its command line."""
    return {
        "dissect": lambda out: [
            sys.executable, "-m", "netdissect", "dissect", "--dataset", str(dataset), "--model", "resnet18",
            "--layers", "layer3,layer4", "--out", str(out), "--batch-size", "4", "--no-progress",
        ],
        "pack-labels": lambda out: [
            sys.executable, "-m", "netdissect", "broden", "pack-labels", str(dataset), "--out", str(out),
            "--workers", "0", "--no-progress",
        ],
    }  # fmt: skip


def make_references(work: Path) -> tuple[Path, dict[str, dict[str, bytes]]]:
    """The dataset (WORK/dataset) and the files of an uninterrupted run of each command. The tmpfs of a
    campaign must be mounted in WORK too (a summary.json records the dataset's path relative to itself)."""
    from netdissect.broden.synth import synthesize

    dataset = work / "dataset"
    if not (dataset / "index.csv").is_file():
        synthesize(dataset, 12, size=224, seed=3, workers=1)
    references = {}
    for name, command in commands(dataset).items():
        out = work / f"reference-{name}" / "out"  # as deep as MOUNT/out and named alike: the files record both
        subprocess.run(command(out), check=True, env=ENV, capture_output=True)
        references[name] = files(out)
    return dataset, references


def fill_and_recover(mount: Path, name: str, command, reference: dict[str, bytes], free: int) -> list[str]:
    """One disk-full run and its recovery; returns the problems found (empty: recovered)."""
    problems = []
    for leftover in mount.iterdir():
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    filler = mount / "filler"
    with open(filler, "wb") as f:  # fill the file system up to `free` bytes
        f.truncate(0)
        block = b"\0" * (1 << 16)
        while shutil.disk_usage(mount).free > free + len(block):
            f.write(block)
            f.flush()
        while shutil.disk_usage(mount).free > free:
            f.write(b"\0" * 4096)
            f.flush()
    out = mount / "out"
    failed = subprocess.run(command(out), capture_output=True, text=True, env=ENV)
    if failed.returncode == 0:
        problems.append(f"{name}: succeeded with {free} bytes free (expected a full disk)")
    elif failed.returncode != 2 or not re.search(rf"{re.escape(str(mount))}\S*: {REFUSED}", failed.stderr):
        problems.append(f"{name}: exit {failed.returncode}, message {failed.stderr.strip()[-300:]!r}")
    if "Traceback" in failed.stderr:
        problems.append(f"{name}: a traceback instead of a message")
    torn = [k for k, v in files(out).items() if reference.get(k) != v and k != "dissect.json"]
    if torn:
        problems.append(f"{name}: partial files that look finished: {torn[:3]}")
    filler.unlink()
    again = subprocess.run(command(out), capture_output=True, text=True, env=ENV)
    if again.returncode != 0:
        problems.append(f"{name}: the run after freeing space failed: {again.stderr.strip()[-300:]}")
    elif files(out) != reference:
        problems.append(f"{name}: the run after freeing space gave other files")
    elif any(TEMP_MARK in str(p) for p in out.rglob("*")):
        problems.append(f"{name}: temporaries left after the recovery")
    return problems


def tmpfs_size(reference: dict[str, bytes]) -> int:
    """Room for the reference files on a tmpfs: each file takes whole 4 KiB pages (a layer report is
    hundreds of small files), plus 1 MiB."""
    return sum(-(-len(v) // 4096) * 4096 for v in reference.values()) + (1 << 20)


def campaign(work: Path, points: int, rng: random.Random) -> tuple[int, int, list[str]]:
    """(recovered, runs, problems) over ``points`` free-space amounts for each command."""
    dataset, references = make_references(work)
    made = recovered = 0
    problems: list[str] = []
    for name, command in commands(dataset).items():
        needed = sum(len(v) for v in references[name].values())
        with small_tmpfs(work / f"tmpfs-{name}", tmpfs_size(references[name])) as mount:
            for _ in range(points):
                found = fill_and_recover(mount, name, command, references[name], rng.randrange(0, needed))
                made += 1
                recovered += not found
                problems += found
    return recovered, made, problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10, help="free-space amounts per command (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="disk-full-"))
    try:
        recovered, made, problems = campaign(work, args.points, random.Random(args.seed))
    except CannotMount as err:
        raise SystemExit(f"cannot mount a tmpfs here ({err}); run as root") from None
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"disk full: {recovered} of {made} runs recovered (dissect and pack-labels, {args.points} points each)")
    for problem in problems:
        print(f"  PROBLEM: {problem}")


if __name__ == "__main__":
    main()
