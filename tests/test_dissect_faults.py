"""`netdissect dissect` and `pack-labels` under faults: killed (SIGKILL) and run again, run twice at once.

A rerun into the same --out after a kill resumes (same settings: the finished stages are kept, byte
for byte) or starts over (other settings), and ends with exactly the files of an uninterrupted run;
a second process writing the same output at the same time is refused with a message naming the lock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netdissect.broden.synth import synthesize

LAYERS = "layer3,layer4"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "synth"
    synthesize(root, 12, size=224, seed=3, workers=1)
    return root


def dissect_command(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "netdissect", "dissect", "--dataset", str(dataset), "--model", "resnet18",
        "--layers", LAYERS, "--out", str(out), "--batch-size", "4", "--no-progress", *extra,
    ]  # fmt: skip


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path (the lock file aside: it records the last holder)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".dissect.lock"
    }


@pytest.fixture(scope="module")
def reference(dataset: Path, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("reference") / "out"  # the same folder name: the report shows it
    proc = run(dissect_command(dataset, out))
    assert proc.returncode == 0, proc.stderr
    return tree(out)


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL the process group of ``proc`` as soon as ``ready()`` holds."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before the moment to kill it"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def done(out: Path) -> list[str]:
    try:
        return json.loads((out / "dissect.json").read_text())["done"]
    except (OSError, ValueError, KeyError):
        return []


def test_killed_dissect_resumes_with_the_finished_stages_kept(dataset: Path, tmp_path: Path, reference):
    out = tmp_path / "out"
    kill_when(start(dissect_command(dataset, out)), lambda: "extract" in done(out))
    record = json.loads((out / "dissect.json").read_text())
    assert record["complete"] is False and "layer4" not in record["done"]
    activations = out / "shards" / "0" / "layer3.act.npy"
    before = activations.stat().st_ino, activations.stat().st_mtime_ns
    proc = run(dissect_command(dataset, out))
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stderr and "extract" in proc.stderr
    assert (activations.stat().st_ino, activations.stat().st_mtime_ns) == before  # not extracted again
    assert tree(out) == reference


def test_a_rerun_with_other_settings_starts_over_and_never_mixes(dataset: Path, tmp_path: Path, reference):
    out = tmp_path / "out"
    kill_when(start(dissect_command(dataset, out, "--quantile", "0.01")), lambda: "layer3" in done(out))
    assert (out / "layer3" / "summary.json").is_file()  # a finished layer of the other settings
    proc = run(dissect_command(dataset, out))
    assert proc.returncode == 0, proc.stderr
    assert "starting over" in proc.stderr
    assert tree(out) == reference  # nothing of the first run is left


def test_two_dissections_into_one_out_the_second_is_refused(dataset: Path, tmp_path: Path, reference):
    out = tmp_path / "out"
    first = start(dissect_command(dataset, out))
    deadline = time.monotonic() + 120
    while not (out / ".dissect.lock").is_file() or not (out / ".dissect.lock").read_text():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    second = run(dissect_command(dataset, out))
    assert second.returncode == 2
    assert f"holds the lock {out / '.dissect.lock'}" in second.stderr and f"pid {first.pid}" in second.stderr
    assert first.wait() == 0, first.stderr.read()
    assert tree(out) == reference  # the first ends correct, untouched by the second


def test_a_second_pack_labels_into_one_folder_is_refused(dataset: Path, tmp_path: Path):
    """pack-labels holds the lock beside its output folder while it writes; another pack-labels into
    that folder meanwhile is refused and leaves the folder alone. (A pack of 12 images takes 0.1 s,
    less than a process start, so the first writer is stood for by this test holding the same lock.)"""
    from netdissect.broden import BrodenDataset
    from netdissect.broden.pack import PackedLabels
    from netdissect.io import exclusive_lock, lock_beside

    pack = tmp_path / "labels"
    command = [sys.executable, "-m", "netdissect", "broden", "pack-labels", str(dataset), "--out", str(pack)]
    command += ["--workers", "0", "--no-progress"]
    assert run(command).returncode == 0
    before = tree(pack)
    with exclusive_lock(lock_beside(pack), f"label pack {pack}"):
        second = run(command)
    assert second.returncode == 2 and f"holds the lock {tmp_path / '.labels.lock'}" in second.stderr, second.stderr
    assert f"pid {os.getpid()}" in second.stderr
    assert tree(pack) == before
    assert run(command).returncode == 0  # the lock went with its holder
    labels = PackedLabels(pack, BrodenDataset(dataset, load_images=False, load_labels=False))
    reader = BrodenDataset(dataset, load_images=False)
    for i in range(len(reader)):
        assert (labels[i]["pixel_labels"] == reader[i]["pixel_labels"]).all()
