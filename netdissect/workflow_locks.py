"""Snakemake's directory lock after a SIGKILL: clear it when no live process can hold it.

Snakemake locks a working directory with files in ``.snakemake/locks/`` and removes them when it
exits, but not when it is killed (``kill -9``, the OOM killer, a preempted node): the next start then
fails with "Directory cannot be locked" until ``snakemake --unlock``. Those files record nothing about
their writer, so this module keeps its own record, with proof of life from the kernel:

- every Snakemake started from this repository's Snakefile (the main process, at parse time, which
  is before Snakemake takes its lock) holds a shared ``flock`` on ``.snakemake/netdissect-run.lock``
  for as long as it lives, and records itself (host, pid, process group) in
  ``.snakemake/netdissect-run.json``;
- a new start that gets the flock *exclusively* knows that no such Snakemake is alive. It removes
  Snakemake's lock files only if, in addition, every recorded run was on this host and no process of
  its process group is left (the jobs of a Snakemake killed alone keep running and writing); otherwise
  it says why it leaves them, and Snakemake reports the lock as usual.

So a lock is cleared only when provably stale; a live run's lock is never touched (its flock is held),
and a run on another host sharing the folder is never second-guessed. Linux only (``/proc``); on a
file system where ``flock`` is not shared between hosts, start the workflow from one host.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

RUN_LOCK = "netdissect-run.lock"
RUN_RECORD = "netdissect-run.json"
_HELD: list[int] = []  # descriptors kept open (the flock lives as long as the process)


def clear_stale_locks(snakemake_dir: str | os.PathLike = ".snakemake") -> str | None:
    """Hold this process's run lock; remove Snakemake's lock files if they are provably stale.

    Returns a message for the user when lock files were found (removed, or kept and why), else None.
    Call it once, from the Snakefile of the main Snakemake process."""
    folder = Path(snakemake_dir).absolute()  # Snakemake changes the working directory back before exiting
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    _HELD.append(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        alone = True
    except BlockingIOError:
        alone = False
    record = folder / RUN_RECORD
    previous = _read_record(record)
    locks = sorted((folder / "locks").glob("*.lock")) if (folder / "locks").is_dir() else []
    message, kept = None, False
    if locks and alone:
        reason = _why_not_stale(previous)
        if reason is None:
            for lock in locks:
                lock.unlink(missing_ok=True)
            runs = ", ".join(f"pid {r.get('pid')}" for r in previous) or "an earlier run"
            message = (
                f"netdissect: removed Snakemake's lock of a run that was killed ({runs} on this host, no "
                f"process of it left); its unfinished jobs are redone (rerun-incomplete)"
            )
        else:
            kept = True
            message = (
                f"netdissect: Snakemake's lock of an earlier run is kept: {reason}. Run again once it is "
                f"gone, or, if you are sure nothing else works in this folder, `snakemake --unlock` first"
            )
    me = {"host": socket.gethostname(), "pid": os.getpid(), "pgid": os.getpgid(0)}
    # The killed run's entry stays as long as its lock does (also when this start is refused), so
    # that a later start can still prove the lock stale; this run's own entry goes when it exits.
    _write_record(record, (previous if kept or not alone else []) + [me])
    atexit.register(_forget, record, me)
    fcntl.flock(fd, fcntl.LOCK_SH)  # from now on, others see this run alive
    return message


def _forget(record: Path, me: dict) -> None:
    """Remove this run's entry from the record at a normal exit (a killed run cannot: its entry stays)."""
    runs = _read_record(record)
    if me in runs:
        _write_record(record, [r for r in runs if r != me])


def _why_not_stale(runs: list[dict]) -> str | None:
    """None if none of the recorded runs can still be working here, else what may be."""
    host = socket.gethostname()
    elsewhere = sorted({str(r.get("host")) for r in runs if r.get("host") != host})
    if elsewhere:
        return f"it may belong to a run on {', '.join(elsewhere)} (not checkable from {host})"
    if not Path("/proc/self/stat").exists():
        return "this system has no /proc to check for running processes"
    left = _members({int(r["pgid"]) for r in runs if isinstance(r.get("pgid"), int)}, _ancestors() | {os.getpid()})
    if left:
        shown = ", ".join(f"{pid} ({name})" for pid, name in left[:5])
        return f"processes of the killed run are still running: {shown}"
    return None


def _stat(pid: int | str) -> tuple[int, int, str] | None:
    """(parent pid, process group, name) of a running process from /proc; None if it is gone or a
    zombie (dead, waiting to be reaped)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1 : text.rindex(")")]
    state, parent, group = text[text.rindex(")") + 2 :].split()[:3]
    return None if state in "ZX" else (int(parent), int(group), name)


def _ancestors() -> set[int]:
    out, pid = set(), os.getppid()
    while pid > 1 and pid not in out:
        out.add(pid)
        info = _stat(pid)
        pid = info[0] if info else 0
    return out


def _members(groups: set[int], excluded: set[int]) -> list[tuple[int, str]]:
    """Live processes in any of the process ``groups`` (but not ``excluded``), as (pid, name)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) not in excluded:
            info = _stat(entry.name)
            if info is not None and info[1] in groups:
                found.append((int(entry.name), info[2]))
    return sorted(found)


def _read_record(path: Path) -> list[dict]:
    try:
        runs = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []


def _write_record(path: Path, runs: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(runs) + "\n")
        os.replace(tmp, path)
    except OSError as err:  # the record only widens what can be proven; never stop a run for it
        print(f"netdissect: cannot write {path} ({err.strerror})", file=sys.stderr)
        tmp.unlink(missing_ok=True)
