"""Atomic outputs: all or nothing, with the modes a normal file and folder would get (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from netdissect.io import atomic_dir, atomic_path, save_npz


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
