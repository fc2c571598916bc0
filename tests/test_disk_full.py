"""A full disk: outputs on a small tmpfs that fills up mid-write.

`netdissect dissect` and `pack-labels` (the campaign of benchmarks/disk_full.py, two and one points),
`fetch` (the .part file is kept and the download resumes) and `fetch --extract` (an archive larger
than the free space is refused before anything is written): each fails with exit status 2 and a
message naming the file, leaves no partial file that looks finished, and the same command after
freeing space completes with the right files.

Mounting needs root (CI runs as root): elsewhere these tests are skipped, in CI (CI=true) a failed
mount is a failure.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import subprocess
import zipfile
from pathlib import Path

import pytest

from netdissect.cli import main
from tests import test_fetch

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("disk_full", REPO / "benchmarks" / "disk_full.py")
disk_full = importlib.util.module_from_spec(spec)
spec.loader.exec_module(disk_full)


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A function mounting a small tmpfs (bytes) under tmp_path; skipped where mounting is impossible."""
    mounted = []

    def mount(size: int, name: str = "tmpfs", base: Path = tmp_path) -> Path:
        context = disk_full.small_tmpfs(base / name, size)
        try:
            path = context.__enter__()
        except disk_full.CannotMount as err:
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI runs as root and must be able to mount a tmpfs: {err}")
            pytest.skip(f"cannot mount a tmpfs here ({err}); run as root")
        mounted.append(context)
        return path

    yield mount
    for context in mounted:
        context.__exit__(None, None, None)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    work = tmp_path_factory.mktemp("diskfull")
    return work, *disk_full.make_references(work)


def test_dissect_and_pack_labels_recover_from_a_full_disk(tmpfs, references):
    work, dataset, expected = references
    rng = random.Random("suite")
    for name, points in (("dissect", 2), ("pack-labels", 1)):
        needed = sum(len(v) for v in expected[name].values())
        mount = tmpfs(disk_full.tmpfs_size(expected[name]), f"tmpfs-{name}", base=work)
        command = disk_full.commands(dataset)[name]
        for _ in range(points):
            free = rng.randrange(0, needed)
            assert disk_full.fill_and_recover(mount, name, command, expected[name], free) == [], (name, free)


def test_a_download_to_a_full_disk_keeps_its_part_file_and_resumes(tmpfs, capsys):
    server = test_fetch.Server()
    try:
        mount = tmpfs(512 << 10)  # half of the 1 MiB payload
        out = mount / "file.bin"
        command = ["fetch", server.url("ok"), "--out", str(out), "--sha256", test_fetch.PAYLOAD_SHA, "--no-progress"]
        assert main(command) == 2
        message = capsys.readouterr().err
        assert f"{out}.part: no space left" in message and "kept there, to resume from" in message, message
        assert not out.exists() and 0 < (mount / "file.bin.part").stat().st_size < len(test_fetch.PAYLOAD)
        subprocess.run(["mount", "-o", "remount,size=4m", str(mount)], check=True)  # space freed
        assert main(command) == 0
        assert hashlib.sha256(out.read_bytes()).hexdigest() == test_fetch.PAYLOAD_SHA
        assert any("Range" in r or "range" in r for r in server.requests[-1])  # resumed, not restarted
    finally:
        server.close()


def test_an_archive_larger_than_the_free_space_is_refused(tmpfs, tmp_path: Path, capsys):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for i in range(4):
            zf.writestr(f"top/part{i}.bin", os.urandom(300 << 10))
    mount = tmpfs(1 << 20)
    from netdissect.errors import NetDissectError
    from netdissect.fetch import extract

    with pytest.raises(NetDissectError, match=r"needs more than [\d,]+ bytes .* only [\d,]+ bytes are free"):
        extract(archive, mount / "out", strip=1)
    assert list(mount.iterdir()) == []
    subprocess.run(["mount", "-o", "remount,size=4m", str(mount)], check=True)
    extract(archive, mount / "out", strip=1)
    assert sorted(p.name for p in (mount / "out").iterdir()) == [f"part{i}.bin" for i in range(4)]
