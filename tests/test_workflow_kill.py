"""SIGKILL and the workflow: a short kill campaign, and `kill -9` of Snakemake alone.

- Two seeded kills of the whole process group of `snakemake --cores 2 report_all` (the campaign of
  benchmarks/kill_campaign.py, shortened): nothing looks finished after a kill, and the final files
  are byte-identical to an uninterrupted run's.
- `kill -9` of the Snakemake process only (what the OOM killer or a scheduler may do): its lock stays
  in .snakemake/locks. While a job it started is still running, the README's command refuses (the
  lock is not provably stale) and says why; once that job is gone, the same command clears the lock
  and resumes (netdissect/workflow_locks.py) to the same files. A second Snakemake started while a
  live one works is still refused by Snakemake's lock.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.workflow_run import REPO, snakemake, write_config

pytestmark = pytest.mark.slow

spec = importlib.util.spec_from_file_location("kill_campaign", REPO / "benchmarks" / "kill_campaign.py")
campaign = importlib.util.module_from_spec(spec)
spec.loader.exec_module(campaign)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return campaign.workflow_reference(tmp_path_factory.mktemp("reference"))


def test_two_kills_of_the_whole_run_are_survived(tmp_path: Path, reference):
    line = campaign.workflow_campaign(tmp_path, 2, random.Random("suite"), reference)
    assert line.startswith("workflow: 2 of 2 kills survived") and "PROBLEM" not in line, line


def group_members(pgid: int) -> list[int]:
    """Running (not zombie) processes of a process group."""
    from netdissect.workflow_locks import _members

    return [pid for pid, _ in _members({pgid}, {os.getpid()})]


def test_kill_9_of_snakemake_alone_then_the_readme_command_resumes(tmp_path: Path, reference):
    expected, _, _ = reference
    write_config(tmp_path, campaign.WORKFLOW_CONFIG)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.Popen(
        campaign.workflow_command(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    incomplete = tmp_path / ".snakemake" / "incomplete"
    try:
        deadline = time.monotonic() + 300
        # wait for an extraction job in flight (a long job that outlives its Snakemake)
        while not any((tmp_path / "results" / "shards").rglob("*.netdissect-tmp.npy")):
            assert run.poll() is None and time.monotonic() < deadline, "no extraction started"
            time.sleep(0.05)
        assert incomplete.is_dir() and any(incomplete.iterdir())

        # a second Snakemake while this one lives: Snakemake's lock refuses it, and the lock stays
        second = snakemake(tmp_path, "--cores", "1", "report_all", env=env)
        assert second.returncode != 0 and "Directory cannot be locked" in second.stdout + second.stderr
        assert run.poll() is None and list((tmp_path / ".snakemake" / "locks").glob("*.lock"))

        os.kill(run.pid, signal.SIGKILL)  # Snakemake alone; its job keeps running
        run.wait()
        locks = list((tmp_path / ".snakemake" / "locks").glob("*.lock"))
        assert locks, "Snakemake removed its lock: it was not killed hard"
        said = ""  # what the README's command said in all attempts after the kill
        if group_members(run.pid):  # the orphaned job still runs: the lock is not provably stale
            early = snakemake(tmp_path, "--cores", "2", "report_all", env=env)
            said += early.stdout + early.stderr
            if group_members(run.pid):  # (still running after the attempt: the refusal was right)
                assert early.returncode != 0 and "processes of the killed run are still running" in said, said
                assert "Directory cannot be locked" in said
        deadline = time.monotonic() + 300
        while group_members(run.pid):
            assert time.monotonic() < deadline, "the orphaned job did not end"
            time.sleep(0.2)
    finally:
        if run.poll() is None or group_members(run.pid):
            os.killpg(run.pid, signal.SIGKILL)
    proc = snakemake(tmp_path, "--cores", "2", "report_all", env=env)  # the README's command, nothing else
    said += proc.stdout + proc.stderr
    assert proc.returncode == 0, said[-3000:]
    assert "removed Snakemake's lock of a run that was killed" in said  # (by this run or the early one)
    assert campaign.snapshot(tmp_path, campaign.WORKFLOW_FOLDERS) == expected
    assert campaign.temporaries(tmp_path) == []
    assert not (tmp_path / ".snakemake" / "locks").is_dir() or not list((tmp_path / ".snakemake" / "locks").iterdir())
