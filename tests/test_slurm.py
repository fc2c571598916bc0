"""The workflow on a real (single-node, localhost) SLURM cluster with the repository's SLURM profile.

The jobs must really run as SLURM jobs (the controller saw them complete; SLURM wrote their logs) and
give the same result.csv as a local, one-process dissection. Every daemon the test starts is stopped
by PID whatever happens. Skipped when slurm-wlm/munge are missing, except in CI (CI=true).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.slurm_cluster import SlurmCluster, slurm_available
from tests.workflow_run import REPO, read_csv, snakemake, tiny_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not slurm_available():
        if os.environ.get("CI") == "true":
            pytest.fail("slurm-wlm and munge are required in CI (apt-get install -y slurm-wlm munge)")
        pytest.skip("slurm-wlm/munge not installed")
    if os.geteuid() != 0:
        pytest.skip("the test cluster's daemons (munged, slurmd) and /etc/slurm/slurm.conf need root")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_workflow_runs_as_slurm_jobs_and_matches_the_local_result(cluster: SlurmCluster, tmp_path: Path):
    config = tiny_config(images=8, shards=2, layers=("layer3",), demo=False)
    proc = snakemake(
        tmp_path,
        "--profile",
        str(REPO / "profiles" / "slurm"),
        "--jobs",
        "8",
        # the test cluster has no accounting database: query jobs with squeue, submit without account
        "--slurm-status-command",
        "squeue",
        "--slurm-no-account",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--seconds-between-status-checks",
        "2",
        "--slurm-keep-successful-logs",
        "--latency-wait",
        "10",
        "report_all",
        config=config,
        env=cluster.env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:] + cluster.logs()

    # every non-local job was submitted, ran and completed under SLURM
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", proc.stdout + proc.stderr)
    expected_jobs = {
        "synth_dataset": 1,
        "pack_labels": 1,
        "check_layers": 1,
        "random_weights": 1,
        "extract": 2,
        "quantile": 1,
        "tally": 2,
        "merge": 1,
        "score": 1,
        "report_layer": 1,
        "report_summary": 1,
    }
    assert len(submitted) == sum(expected_jobs.values())
    controller = cluster.controller_log()
    for job_id in submitted:
        assert re.search(rf"_job_complete: JobId={job_id} WEXITSTATUS 0", controller), job_id
    states = subprocess.run(
        ["squeue", "--states=all", "-h", "-o", "%i %T"], capture_output=True, text=True, env=cluster.env, check=True
    ).stdout.split("\n")
    completed = {line.split()[0] for line in states if line.endswith("COMPLETED")}
    assert set(submitted) <= completed
    slurm_logs = tmp_path / ".snakemake" / "slurm_logs"
    for rule in expected_jobs:
        assert list((slurm_logs / f"rule_{rule}").rglob("*.log")), rule

    layer_dir = tmp_path / "results" / "layers" / "tiny" / "r18" / "layer3"
    assert (layer_dir / "report" / "index.html").is_file()
    local = tmp_path / "local"
    oneshot = subprocess.run(
        [
            "netdissect",
            "dissect",
            "--dataset",
            str(tmp_path / "datasets" / "tiny"),
            "--model",
            "resnet18",
            "--weights",
            str(tmp_path / "models" / "r18.pt"),
            "--layers",
            "layer3",
            "--out",
            str(local),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert oneshot.returncode == 0, oneshot.stderr
    assert read_csv(layer_dir / "result.csv") == read_csv(local / "layer3" / "result.csv")
