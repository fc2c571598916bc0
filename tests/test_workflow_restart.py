"""A run killed during extraction resumes: finished shards are kept as they are (same inode, same
mtime), the others are redone, and result.csv is the same as an uninterrupted dissection's."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.workflow_run import read_csv, snakemake, snakemake_command, write_config


def _incomplete(workdir: Path) -> set[str]:
    """Outputs Snakemake marked as incomplete (files under .snakemake/incomplete are base64 names)."""
    folder = workdir / ".snakemake" / "incomplete"
    if not folder.is_dir():
        return set()
    return {base64.b64decode(p.name).decode() for p in folder.iterdir() if p.is_file()}


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_killed_run_resumes_without_redoing_finished_shards(tmp_path: Path, broden_example: Path):
    shards = 4
    config = {
        "datasets": {"worked": {"source": "path", "path": str(broden_example)}},
        "models": {"r18": {"spec": "resnet18", "weights": {"source": "random", "seed": 2}, "layers": ["layer3"]}},
        "runs": [{"dataset": "worked", "models": ["r18"]}],
        "dissect": {"shards": shards, "batch_size": 1, "dtype": "float32"},
    }
    write_config(tmp_path, config)
    shard_root = tmp_path / "results" / "shards" / "worked" / "r18"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # One core: shards are extracted one after the other. Stop (Ctrl-C = SIGINT to the process group)
    # once two shards are written, while the third is in flight.
    run = subprocess.Popen(
        snakemake_command(tmp_path, "--cores", "1", "results"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 300
        while len(list(shard_root.glob("*/meta.json"))) < 2:
            assert run.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline, "extraction did not start within 300 s"
            time.sleep(0.1)
        os.killpg(run.pid, signal.SIGINT)
        assert run.wait(timeout=120) != 0
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()

    incomplete = _incomplete(tmp_path)
    finished = [
        k
        for k in range(shards)
        if (shard_root / str(k) / "meta.json").exists() and f"results/shards/worked/r18/{k}" not in incomplete
    ]
    assert finished, "no shard had finished when the run was stopped"
    assert len(finished) < shards, "every shard had finished: the run was stopped too late to test anything"
    before = {k: _snapshot(shard_root / str(k)) for k in finished}

    rerun = snakemake(tmp_path, "--cores", "2", "results", env=env)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    log = rerun.stdout + rerun.stderr  # Snakemake reports jobs on stderr
    for k in finished:
        assert _snapshot(shard_root / str(k)) == before[k], f"shard {k} was rewritten"
        assert f"output: results/shards/worked/r18/{k}\n" not in log
    redone = [k for k in range(shards) if f"output: results/shards/worked/r18/{k}\n" in log]
    assert sorted(finished + redone) == list(range(shards))

    oneshot = tmp_path / "oneshot"
    proc = subprocess.run(
        [
            "netdissect",
            "dissect",
            "--dataset",
            str(broden_example),
            "--model",
            "resnet18",
            "--weights",
            str(tmp_path / "models" / "r18.pt"),
            "--layers",
            "layer3",
            "--out",
            str(oneshot),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    workflow_rows = read_csv(tmp_path / "results" / "layers" / "worked" / "r18" / "layer3" / "result.csv")
    assert workflow_rows == read_csv(oneshot / "layer3" / "result.csv")
