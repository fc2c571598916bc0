"""The Snakemake workflow: lint, the default DAG, config validation, early layer check, a tiny run
end to end (equal to the one-process `netdissect dissect`), and a second run that does nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.workflow_run import REPO, SNAKEFILE, job_counts, read_csv, snakemake, tiny_config


def test_lint_is_clean():
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--lint"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


def test_dry_run_of_default_config_lists_every_stage(tmp_path: Path):
    proc = snakemake(tmp_path, "--dry-run", "report_all")
    assert proc.returncode == 0, proc.stderr
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    shards = default["dissect"]["shards"]
    models = default["runs"][0]["models"]
    layers = sum(len(default["models"][m]["layers"]) for m in models)
    demo = default["models"]["demo"]
    assert job_counts(proc.stdout) == {
        "check_layers": len(models),
        "synth_dataset": 1,
        "pack_labels": 1,
        "train_demo_snapshots": 1,  # the demo is trained once, saving its snapshots on the way
        "random_weights": 1,
        # the experiments (rules/experiments.smk): power 0 is the unrotated layer itself
        "significance": layers,
        "dissect_rotated": len([p for p in demo["rotation"]["powers"] if p > 0]),
        "rotation_sweep": 1,
        "dissect_snapshot": len(demo["snapshots"]["steps"]),
        "snapshot_sweep": 1,
        "extract": len(models) * shards,
        "quantile": layers,
        "tally": layers * shards,
        "merge": layers,
        "score": layers,
        "report_layer": layers,
        "report_summary": 1,
        "report_all": 1,
    }
    for path in (
        "datasets/synth/index.csv",
        "models/demo.pt",
        "models/resnet18_random.pt",
        "results/shards/synth/demo/0",
        "results/layers/synth/resnet18_random/layer4/tally/3.npz",
        "results/layers/synth/demo/conv4/result.csv",
        "results/labels/synth",
        "results/report/index.html",
        "results/rotation/synth/demo/conv2/p0.2",
        "results/snapshots/synth/demo/conv4/step1",
        "models/demo.snapshots",
    ):
        assert path in proc.stdout, path


@pytest.mark.parametrize(
    "change, words",
    [
        ({"dissect": {"shards": 0}}, ["shards", "minimum"]),
        ({"dissect": {"shard": 4}}, ["'shard' was unexpected"]),
        ({"dissect": {"union": "maybe"}}, ["union", "maybe"]),
        ({"models": {"bad": {"spec": "resnet18"}}}, ["layers", "required"]),
        ({"runs": [{"dataset": "synth", "models": ["nosuchmodel"]}]}, ["runs[0].models", "nosuchmodel"]),
    ],
)
def test_config_that_breaks_the_schema_names_the_key(tmp_path: Path, change: dict, words: list[str]):
    proc = snakemake(tmp_path, "--dry-run", "report_all", config=change)
    assert proc.returncode != 0
    for word in words:
        assert word in proc.stderr + proc.stdout, (word, proc.stderr)


def test_bad_layer_fails_before_any_long_job(tmp_path: Path, broden_example: Path):
    config = {
        "datasets": {"worked": {"source": "path", "path": str(broden_example)}},
        "models": {"r18": {"spec": "resnet18", "weights": {"source": "random"}, "layers": ["layer2", "layer9"]}},
        "runs": [{"dataset": "worked", "models": ["r18"]}],
    }
    proc = snakemake(tmp_path, "--cores", "2", "results", config=config)
    assert proc.returncode != 0
    log = (tmp_path / "logs" / "checks" / "r18.layers.log").read_text()
    assert "has no layer 'layer9'" in log and "Closest: layer4" in log
    assert "rule check_layers" in proc.stdout + proc.stderr
    assert not (tmp_path / "models").exists()  # weights were never made
    assert not (tmp_path / "results" / "shards").exists()  # nor any extraction started (labels may be packed)
    assert not (tmp_path / "results" / "checks" / "r18.layers.ok").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny configuration run to the end (report_all) once for this module."""
    workdir = tmp_path_factory.mktemp("tiny")
    proc = snakemake(workdir, "--cores", "2", "report_all", config=tiny_config())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir


def test_tiny_run_produces_every_target(tiny_run: Path):
    for model, layer in (("r18", "layer3"), ("tinydemo", "conv4")):
        layer_dir = tiny_run / "results" / "layers" / "tiny" / model / layer
        rows = read_csv(layer_dir / "result.csv")
        assert rows[0][:4] == ["unit", "category", "label", "score"]
        summary = json.loads((layer_dir / "summary.json").read_text())
        assert len(rows) - 1 == summary["units"] == {"layer3": 256, "conv4": 256}[layer]
        assert (layer_dir / "report" / "index.html").is_file()
    assert (tiny_run / "results" / "report" / "index.html").is_file()
    assert (tiny_run / "logs" / "tiny" / "r18" / "extract.0.log").is_file()


def test_tiny_run_equals_the_one_process_dissection(tiny_run: Path, tmp_path: Path):
    out = tmp_path / "oneshot"
    proc = subprocess.run(
        [
            "netdissect",
            "dissect",
            "--dataset",
            str(tiny_run / "datasets" / "tiny"),
            "--model",
            "resnet18",
            "--weights",
            str(tiny_run / "models" / "r18.pt"),
            "--layers",
            "layer3",
            "--out",
            str(out),
            "--batch-size",
            "5",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert read_csv(out / "layer3" / "result.csv") == read_csv(tiny_run / "results/layers/tiny/r18/layer3/result.csv")


def test_second_run_does_nothing(tiny_run: Path):
    proc = snakemake(tiny_run, "--cores", "2", "report_all")
    assert proc.returncode == 0, proc.stderr
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "config" / "examples").glob("*.yaml")))
def test_example_configs_validate_and_plan(tmp_path: Path, example: str):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(SNAKEFILE),
            "--directory",
            str(tmp_path),
            "--dry-run",
            "report_all",
            "--configfile",
            str(REPO / "config" / "examples" / example),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    counts = job_counts(proc.stdout)
    assert counts["extract"] >= 1 and counts["report_summary"] == 1
