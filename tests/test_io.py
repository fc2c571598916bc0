"""Atomic outputs: all or nothing, with the modes a normal file and folder would get (not mkstemp's 0600)."""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netdissect.errors import NetDissectError
from netdissect.io import (
    TEMP_MARK,
    atomic_dir,
    atomic_path,
    exclusive_lock,
    open_for_writing,
    remove_stale_temporaries,
    save_json,
    save_npz,
)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_folders_get_the_umask_modes(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    save_npz(tmp_path / "a.npz", x=np.arange(3))
    with atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("x")
    assert mode(tmp_path / "a.npz") == 0o666 & ~umask
    assert mode(tmp_path / "d") == 0o777 & ~umask
    assert np.array_equal(np.load(tmp_path / "a.npz")["x"], [0, 1, 2])


def test_an_interrupted_write_leaves_nothing(tmp_path):
    (tmp_path / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "old.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "new") as d:
            (d / "part").write_text("half")
            raise RuntimeError("killed")
    assert (tmp_path / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.txt"]


# -- killed writers, full disks, locks ---------------------------------------------------------------

KILLED_WRITER = """
import os, sys, time
from netdissect.io import atomic_path, atomic_dir
with atomic_path(sys.argv[1]) as tmp, atomic_dir(sys.argv[2]) as d:
    tmp.write_bytes(b"half")
    (d / "part").write_bytes(b"half")
    print("writing", flush=True)
    time.sleep(60)
"""


def _start_writer(tmp_path, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "writing\n"
    return proc


def _temporaries(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TEMP_MARK in p.name)


def test_a_killed_writers_temporaries_are_removed_but_a_live_ones_are_kept(tmp_path):
    live = _start_writer(tmp_path, str(tmp_path / "a.bin"), str(tmp_path / "d"))
    killed = _start_writer(tmp_path, str(tmp_path / "b.bin"), str(tmp_path / "e"))
    try:
        killed.kill()
        killed.wait()
        assert len(_temporaries(tmp_path)) == 4  # a file and a folder of each writer
        assert not (tmp_path / "b.bin").exists() and not (tmp_path / "e").exists()  # nothing looks finished
        removed = remove_stale_temporaries(tmp_path)
        assert sorted(p.name[:3] for p in removed) == [".b.", ".e."]  # the killed writer's file and folder
        left = _temporaries(tmp_path)
        assert len(left) == 2 and all(n.startswith((".a.bin.", ".d.")) for n in left)  # the live writer's
    finally:
        live.kill()
        live.wait()
    live_names = _temporaries(tmp_path)
    assert live_names  # the live writer was killed too (just now): its temporaries are stale now
    subprocess.run(
        [sys.executable, "-c", f"from netdissect.io import save_json; save_json({str(tmp_path / 'c.json')!r}, 1)"],
        check=True,
    )
    assert _temporaries(tmp_path) == []  # a new process's first atomic write into the folder swept them


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(NetDissectError, match=r"summary\.json: no space left .*removed.*run the same command again"):
        save_json(tmp_path / "summary.json", {"a": 1})
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(NetDissectError, match=r"x\.npy: no space left"):
        with atomic_path(tmp_path / "x.npy") as tmp, open_for_writing(tmp, tmp_path / "x.npy") as f:
            f.write(b"1")
            with open("/dev/full", "wb", buffering=0) as full_device:
                full_device.write(b"1")  # ENOSPC, as a streaming writer would get it
    assert list(tmp_path.iterdir()) == []


HOLDER = """
import sys, time
from netdissect.io import exclusive_lock
with exclusive_lock(sys.argv[1], "the output"):
    print("holding", flush=True)
    time.sleep(60)
"""


def test_an_exclusive_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
    lock = tmp_path / ".out.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        with pytest.raises(NetDissectError, match=rf"another process .*pid {holder.pid} .*{re.escape(str(lock))}"):
            with exclusive_lock(lock, "the output"):
                pass
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock
        holder.wait()
    with exclusive_lock(lock, "the output"):
        assert f"pid {os.getpid()}" in lock.read_text()
