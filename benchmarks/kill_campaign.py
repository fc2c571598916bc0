"""Kill campaign: SIGKILL a dissection at seeded random moments, restart it, check it ends exactly right.

    python benchmarks/kill_campaign.py [--kills 20] [--seed 0] [--what workflow,dissect] [--work DIR]

``workflow``: ``snakemake --cores 2 report_all`` on a tiny config (8 synthetic images, resnet18 with
seeded random weights, layer3, 2 shards; tests/workflow_run.py). First one uninterrupted run (the
reference, and its duration T). Then, in a fresh folder, the same command is started and its whole
process group SIGKILLed after a delay drawn uniformly from [0, T) (seeded); it is restarted with the
same command (the README's: no --unlock, no clean-up) and killed again, until ``--kills`` kills are
made; the run after the last kill goes to the end. When a run ends before its kill moment, that folder
is done and the next kill starts a fresh one. (T is updated to the duration of every uninterrupted
run from scratch, so that the moments follow the machine's speed when other jobs share it.)

``dissect``: the same with ``netdissect dissect --out OUT`` (256 images, layer3 and layer4), restarted
into the same OUT.

After every kill: every file at its final name (not a hidden temporary of an atomic write) must be
byte-identical to the reference's file of that name (nothing that looks finished is not), and for
dissect OUT/dissect.json must say ``"complete": false``. After every finished run: the files are
byte-identical to the reference (results/, datasets/, models/; OUT), and no temporary is left. A kill
is survived when both hold. Printed: kills survived of kills made, jobs (or stages) run in all against
the uninterrupted run's count, and the seconds of work redone.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.workflow_run import snakemake_command, tiny_config, write_config  # noqa: E402

TEMP_MARK = ".netdissect-tmp"
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
JOB = re.compile(r"^(?:local)?rule (\w+):$", re.M)


def snapshot(root: Path, folders: tuple[str, ...]) -> dict[str, bytes]:
    """Every file at its final name under ``root/<folder>`` (hidden temporaries and lock files aside)."""
    files = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*")) if (root / folder).is_dir() else []:
            temporary = any(TEMP_MARK in part for part in path.relative_to(root).parts)  # or inside one
            if path.is_file() and not temporary and not path.name.endswith(".lock"):
                files[str(path.relative_to(root))] = path.read_bytes()
    return files


def temporaries(root: Path) -> list[str]:
    """Temporaries of atomic writes left behind (none should outlive the run after the last kill)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(f"*{TEMP_MARK}*") if ".snakemake" not in p.parts)


def run_until(command: list[str], cwd: Path, delay: float | None, log: Path) -> tuple[bool, float]:
    """Run ``command``; SIGKILL its process group after ``delay`` seconds unless it ended. Returns
    (killed, seconds)."""
    start = time.monotonic()
    with open(log, "a") as out:
        proc = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=out, env=ENV, start_new_session=True)
        try:
            proc.wait(timeout=delay)
            killed = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed = True
    if not killed and proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {proc.returncode}); see {log}")
    return killed, time.monotonic() - start


def torn_files(now: dict[str, bytes], reference: dict[str, bytes], ignore: tuple[str, ...] = ()) -> list[str]:
    """Files at a final name that are not the reference's (a torn or foreign file that looks finished)."""
    return [name for name, data in now.items() if name not in ignore and reference.get(name) != data]


class Campaign:
    """Kills made and survived, work done, for one kind of run (workflow or dissect)."""

    def __init__(self, name: str, kills: int, rng: random.Random) -> None:
        self.name, self.kills, self.rng = name, kills, rng
        self.made = self.survived = 0
        self.rounds = self.jobs = self.kept = 0
        self.seconds = 0.0
        self.problems: list[str] = []

    def report(self, reference_jobs: int | None, reference_seconds: float) -> str:
        needed = self.rounds * (reference_jobs or 0)
        work = (
            f"{self.jobs} jobs run for {needed} needed ({self.jobs - needed} redone)"
            if reference_jobs is not None
            else f"{self.kept} finished stages kept by the {self.made} restarts after a kill"
        )
        return (
            f"{self.name}: {self.survived} of {self.made} kills survived over {self.rounds} run(s) to the end; "
            f"{work}; {self.seconds:.0f} s of work for {self.rounds * reference_seconds:.0f} s "
            f"uninterrupted ({self.seconds - self.rounds * reference_seconds:.0f} s redone)"
            + "".join(f"\n  PROBLEM: {p}" for p in self.problems)
        )


WORKFLOW_CONFIG = tiny_config(images=8, shards=2, demo=False)
WORKFLOW_FOLDERS = ("results", "datasets", "models")


def workflow_command(workdir: Path) -> list[str]:
    """The README's command (with the tiny config of ``workdir``)."""
    return snakemake_command(workdir, "--cores", "2", "report_all")


def workflow_reference(work: Path) -> tuple[dict[str, bytes], float, int]:
    """One uninterrupted run: its files, its seconds and its number of jobs."""
    reference = work / "workflow-reference"
    write_config(reference, WORKFLOW_CONFIG)
    _, seconds = run_until(workflow_command(reference), REPO, None, work / "workflow-reference.log")
    return (
        snapshot(reference, WORKFLOW_FOLDERS),
        seconds,
        len(JOB.findall((work / "workflow-reference.log").read_text())),
    )


def workflow_campaign(work: Path, kills: int, rng: random.Random, reference=None) -> str:
    config, folders, command = WORKFLOW_CONFIG, WORKFLOW_FOLDERS, workflow_command
    expected, seconds, reference_jobs = reference or workflow_reference(work)
    campaign = Campaign("workflow", kills, rng)
    span = seconds  # kill moments are drawn from [0, span): an uninterrupted run's duration, kept up to date
    while campaign.made < kills:
        campaign.rounds += 1
        wd = work / f"workflow-{campaign.rounds}"
        write_config(wd, config)
        log = work / f"workflow-{campaign.rounds}.log"
        kills_here = []
        while True:
            delay = rng.uniform(0, span) if campaign.made < kills else None
            killed, took = run_until(command(wd), REPO, delay, log)
            campaign.seconds += took
            if not killed:
                if not kills_here:  # a whole run, uninterrupted: the machine's speed now
                    span = took
                break
            campaign.made += 1
            torn = torn_files(snapshot(wd, folders), expected)
            kills_here.append(not torn)
            if torn:
                campaign.problems.append(f"kill {campaign.made} at {delay:.1f} s left {torn[:3]} looking finished")
        campaign.jobs += len(JOB.findall(log.read_text()))
        final_ok = snapshot(wd, folders) == expected and not temporaries(wd)
        if not final_ok:
            campaign.problems.append(
                f"{wd}: final files differ from the reference ({sorted(set(snapshot(wd, folders)) ^ set(expected))[:3]}) "
                f"or temporaries are left ({temporaries(wd)[:3]})"
            )
        campaign.survived += sum(kills_here) if final_ok else 0
    return campaign.report(reference_jobs, seconds)


def dissect_campaign(work: Path, kills: int, rng: random.Random) -> str:
    from netdissect.broden.synth import synthesize

    dataset = work / "dissect-dataset"
    if not (dataset / "index.csv").is_file():
        synthesize(dataset, 256, size=224, seed=3, workers=2)
    command = lambda out: [  # noqa: E731
        sys.executable, "-m", "netdissect", "dissect", "--dataset", str(dataset), "--model", "resnet18",
        "--layers", "layer3,layer4", "--out", str(out), "--batch-size", "4", "--no-progress",
    ]  # fmt: skip
    _, seconds = run_until(command(work / "dissect-reference" / "out"), REPO, None, work / "dissect-reference.log")
    expected = snapshot(work, ("dissect-reference",))
    rename = lambda files: {k.replace("dissect-run/", "dissect-reference/", 1): v for k, v in files.items()}  # noqa: E731
    out = work / "dissect-run" / "out"  # the same folder name as the reference's: the report shows it
    campaign = Campaign("dissect", kills, rng)
    span = seconds
    log = work / "dissect-run.log"
    while campaign.made < kills:
        campaign.rounds += 1
        kills_here = []
        while True:
            delay = rng.uniform(0, span) if campaign.made < kills else None
            before = log.read_text() if log.exists() else ""
            killed, took = run_until(command(out), REPO, delay, log)
            campaign.seconds += took
            said = log.read_text()[len(before) :]
            kept = re.search(r"done already: (.*)", said)
            campaign.kept += len(kept.group(1).split(", ")) if kept else 0
            if not killed:
                if not kills_here and not kept:  # a whole run, uninterrupted: the machine's speed now
                    span = took
                break
            campaign.made += 1
            now = rename(snapshot(work, ("dissect-run",)))
            torn = torn_files(now, expected, ignore=("dissect-reference/out/dissect.json",))
            record = json.loads((out / "dissect.json").read_text()) if (out / "dissect.json").is_file() else {}
            if record.get("complete") and now != expected:  # killed before it began: the old run, complete
                torn.append("dissect.json says complete")
            kills_here.append(not torn)
            if torn:
                campaign.problems.append(f"kill {campaign.made} at {delay:.1f} s left {torn[:3]} looking finished")
        final_ok = rename(snapshot(work, ("dissect-run",))) == expected and not temporaries(out)
        if not final_ok:
            campaign.problems.append(f"{out}: final files differ from the reference")
        campaign.survived += sum(kills_here) if final_ok else 0
        # the next round starts over in the same OUT: a rerun of a complete dissection recomputes it
    return campaign.report(None, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="kills per kind of run (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--what", default="workflow,dissect", help="workflow, dissect or both (default)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="kill-campaign-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        for what in args.what.split(","):
            rng = random.Random(f"{args.seed}-{what}")
            started = time.monotonic()
            line = {"workflow": workflow_campaign, "dissect": dissect_campaign}[what](work, args.kills, rng)
            print(f"{line}  [{time.monotonic() - started:.0f} s, load average {os.getloadavg()[0]:.1f}]", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
