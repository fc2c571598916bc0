"""Shared helpers of the scale benchmarks (bench_scale.py, bench_wide.py): datasets made of
the first N rows of a bigger one, stage commands timed as separate processes, and the tables they print.

Each stage runs as its own process (``python -m netdissect ...``) so that its figures are its own: wall
time from the clock, CPU time (user + system) and peak resident memory from ``os.wait4`` (the process
and the children it waited for; the peak is the largest single process, not a sum), and the disk it
wrote as the growth in bytes of the folders it writes into.

Linux counts the memory a child had before ``exec`` (a copy of the parent) in its peak, so the
benchmark processes themselves stay small: they import neither torch nor netdissect's engine, and run
anything heavy in a child process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

NETDISSECT = [sys.executable, "-m", "netdissect"]


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (0 if it does not exist); links are not followed."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            p = Path(root) / name
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def head_dataset(source: Path, rows: int, out: Path) -> Path:
    """A Broden folder holding the first ``rows`` rows of ``source``'s index.csv; every other file is a
    link to ``source``'s (the images are shared, so the view costs no disk). ``source`` itself when it
    has no more rows."""
    lines = (source / "index.csv").read_bytes().split(b"\r\n")
    header, body = lines[0], [line for line in lines[1:] if line]
    if rows >= len(body):
        return source
    out.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.name != "index.csv" and not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    (out / "index.csv").write_bytes(b"\r\n".join([header, *body[:rows]]) + b"\r\n")
    return out


def run_stage(name: str, cmd: list[str], writes: list[Path], env: dict[str, str] | None = None, **info) -> dict:
    """Run one stage command; its figures as a dict (``info`` is copied in). Fails loudly with the
    command's output when it fails."""
    before = sum(folder_bytes(p) for p in writes)
    tic = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - tic
    if status != 0:
        raise SystemExit(f"stage {name} failed (status {status}): {' '.join(map(str, cmd))}\n{output}")
    return {
        **info,
        "stage": name,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "disk_mb": round((sum(folder_bytes(p) for p in writes) - before) / 2**20, 1),
        "output": output.strip().splitlines()[-1:] if output.strip() else [],
    }


def log_line(path: Path, record: dict) -> None:
    """Print a record and append it to a JSON-lines file."""
    print(json.dumps(record), flush=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def markdown_table(records: list[dict], keys: list[str], per_image: bool = True) -> str:
    """A markdown table of stage records: one row per record, the given keys first, then wall, CPU,
    CPU per image (``images`` key), peak memory and disk."""
    head = keys + ["wall s", "CPU s"] + (["CPU ms/image"] if per_image else []) + ["peak MB", "disk MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        cells = [str(r.get(k, "")) for k in keys] + [f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}"]
        if per_image:
            cells.append(f"{1e3 * r['cpu_s'] / r['images']:.2f}" if r.get("images") else "")
        cells += [f"{r['peak_rss_mb']:.0f}", f"{r['disk_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_section(doc: Path, marker: str, text: str) -> None:
    """Put ``text`` between ``<!-- marker:begin -->`` and ``<!-- marker:end -->`` in ``doc`` (appended
    with the markers when they are missing)."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    content = doc.read_text() if doc.is_file() else ""
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in content and end in content:
        content = content[: content.index(begin)] + block + content[content.index(end) + len(end) :]
    else:
        content = content.rstrip() + "\n\n" + block + "\n"
    doc.write_text(content)


def machine_line() -> str:
    """Cores, load average and date: the conditions a figure was measured under."""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return f"{len(os.sched_getaffinity(0))} cores, load average {load}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
