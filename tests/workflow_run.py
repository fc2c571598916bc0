"""Running the repository's Snakefile from tests: in a scratch folder, with a tiny config.

``snakemake(workdir, *args, config=...)`` writes ``config`` (a dict) to ``workdir/config.yaml`` and
runs ``snakemake -s <repo>/Snakefile --directory workdir --configfile workdir/config.yaml *args``. The
config file given on the command line is merged over the embedded default (config/config.yaml), so a
test config only needs the keys it changes; ``runs`` replaces the default's list.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"


def tiny_config(images: int = 12, shards: int = 2, layers: tuple[str, ...] = ("layer3",), demo: bool = True) -> dict:
    """A configuration that runs the whole DAG in about a minute: a few 224-pixel synthetic images,
    resnet18 with seeded random weights and (optionally) the demo CNN trained for one epoch."""
    models = {"r18": {"spec": "resnet18", "weights": {"source": "random", "seed": 0}, "layers": list(layers)}}
    if demo:
        models["tinydemo"] = {
            "spec": "netdissect.demo:DemoNet",
            "weights": {"source": "train", "dataset": "tiny", "epochs": 1, "seed": 0},
            "layers": ["conv4"],
        }
    return {
        "datasets": {"tiny": {"source": "synth", "images": images, "size": 224, "seed": 1}},
        "models": models,
        "runs": [{"dataset": "tiny", "models": list(models)}],
        "dissect": {"shards": shards, "batch_size": 4, "dtype": "float32", "topk": 3},
        "resources": {
            stage: {"threads": 1, "mem_mb": 1000, "runtime": 10}
            for stage in ("light", "dataset", "train", "extract", "quantile", "tally", "report")
        },
    }


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    """The command line; ``workdir/config.yaml`` is passed when it exists (else: the default config)."""
    config = ["--configfile", str(workdir / "config.yaml")] if (workdir / "config.yaml").exists() else []
    return [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir), *config, *args]


def write_config(workdir: Path, config: dict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def snakemake(
    workdir: Path, *args: str, config: dict | None = None, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run snakemake on the repository's Snakefile in ``workdir``; output captured as text.

    ``config`` is written to ``workdir/config.yaml`` first; without it the run uses the config already
    there, or the default config when there is none."""
    if config is not None:
        write_config(workdir, config)
    environment = dict(env if env is not None else os.environ)
    environment.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(
        snakemake_command(workdir, *args), capture_output=True, text=True, timeout=timeout, env=environment
    )


def job_counts(output: str) -> dict[str, int]:
    """The "Job stats" table of a snakemake run or dry run as {rule: count} (without the total)."""
    counts: dict[str, int] = {}
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats:"))
    for line in lines[start + 3 :]:
        match = re.fullmatch(r"(\S+)\s+(\d+)", line.strip())
        if not match:
            break
        if match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))
