"""The experiments as workflow targets (rules/experiments.smk): a tiny run of rotation_all,
snapshots_all and the significance test through report_all, and config errors named at startup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.workflow_run import job_counts, read_csv, snakemake, tiny_config


def experiments_config() -> dict:
    """The tiny config with the demo only (one shard), rotated at p = 0, 1, two snapshots, K = 99."""
    config = tiny_config(shards=1)
    del config["models"]["r18"]
    demo = config["models"]["tinydemo"]
    demo["weights"]["epochs"] = 2  # 12 images in batches of 32: one step per epoch
    demo["rotation"] = {"layer": "conv4", "seed": 3, "powers": [0, 1]}
    demo["snapshots"] = {"layer": "conv4", "steps": [1, 2]}
    demo["permutations"] = 99
    config["runs"] = [{"dataset": "tiny", "models": ["tinydemo"]}]
    for stage in ("significance", "experiment"):
        config["resources"][stage] = {"threads": 1, "mem_mb": 1000, "runtime": 10}
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("experiments")
    proc = snakemake(workdir, "--cores", "2", "report_all", config=experiments_config())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir


def test_report_all_runs_every_experiment(run: Path):
    proc = snakemake(run, "--dry-run", "report_all", "rotation_all", "snapshots_all")
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr
    page = (run / "results" / "report" / "index.html").read_text()
    for link in (
        "../rotation/tiny/tinydemo/conv4/sweep/sweep.csv",
        "../rotation/tiny/tinydemo/conv4/sweep/unique_by_category.svg",
        "../snapshots/tiny/tinydemo/conv4/sweep/detectors.svg",
    ):
        assert f'href="{link}"' in page, link
    assert "tinydemo conv4, rotated basis" in page and "tinydemo conv4, training snapshots" in page


def test_rotation_sweep_points(run: Path):
    layers = run / "results" / "layers" / "tiny" / "tinydemo" / "conv4"
    rotated = run / "results" / "rotation" / "tiny" / "tinydemo" / "conv4"
    assert not (rotated / "p0").exists()  # power 0 is the unrotated layer itself
    rows = read_csv(rotated / "sweep" / "sweep.csv")
    assert [r[0] for r in rows[1:]] == ["0", "1"]
    for row, layer_dir in zip(rows[1:], (layers, rotated / "p1" / "conv4")):
        summary = json.loads((layer_dir / "summary.json").read_text())
        assert [int(v) for v in row[1:5]] == [
            summary[k] for k in ("units", "detectors", "unique_top", "unique_by_category")
        ]
    settings = json.loads((rotated / "p1" / "conv4" / "summary.json").read_text())["settings"]
    assert settings["rotation"] == {"seed": 3, "power": 1.0} and settings["dtype"] == "float32"
    assert (rotated / "p1" / "conv4" / "rotation.npy").is_file()


def test_snapshot_sweep_points(run: Path):
    snapshots = run / "results" / "snapshots" / "tiny" / "tinydemo" / "conv4"
    assert sorted(p.name for p in (run / "models" / "tinydemo.snapshots").glob("*.pt")) == ["step1.pt", "step2.pt"]
    # the last step is the trained model: its point is the run's own dissection of the layer
    assert not (snapshots / "step2").exists()
    layer = json.loads((run / "results/layers/tiny/tinydemo/conv4/summary.json").read_text())
    first = json.loads((snapshots / "step1" / "conv4" / "summary.json").read_text())
    assert first["settings"]["weights"] == "models/tinydemo.snapshots/step1.pt"
    rows = read_csv(snapshots / "sweep" / "sweep.csv")
    assert rows[0][0] == "step" and [r[0] for r in rows[1:]] == ["1", "2"]
    assert int(rows[1][2]) == first["detectors"] and int(rows[2][2]) == layer["detectors"]


def test_significance_reaches_summary_and_reports(run: Path):
    layer = run / "results" / "layers" / "tiny" / "tinydemo" / "conv4"
    rows = read_csv(layer / "significance.csv")
    assert len(rows) == 257 and rows[0][4] == "p"
    p = [float(r[4]) for r in rows[1:]]
    assert min(p) >= 0.01 and max(p) <= 1.0
    summary = json.loads((layer / "summary.json").read_text())
    test = summary["significance"]
    assert test["permutations"] == 99 and test["alpha"] == 0.01
    detectors = {int(r[0]) for r in read_csv(layer / "result.csv")[1:] if r[2] and float(r[3]) >= 0.04}
    assert test["significant_detectors"] == sum(p[u - 1] <= 0.01 for u in detectors)
    page = (layer / "report" / "index.html").read_text()
    assert f"({test['significant_detectors']} significant, p ≤ 0.01)" in page
    assert 'id="significant-only"' in page and 'data-p="' in page
    summary_csv = read_csv(run / "results" / "report" / "summary.csv")
    assert summary_csv[1][summary_csv[0].index("significant_detectors")] == str(test["significant_detectors"])


@pytest.mark.parametrize(
    "change, words",
    [
        ({"snapshots": {"layer": "conv4", "steps": [10, 5]}}, ["models.tinydemo.snapshots", "must increase"]),
        ({"snapshots": {"layer": "conv4", "weights": [{"step": 1, "path": "a.pt"}]}}, ["`layer` and `steps`"]),
        ({"rotation": {"layer": "conv4", "powers": [0.5, 0.2]}}, ["rotation.powers", "must increase"]),
        ({"rotation": {"layer": "conv4", "powers": [0, 2]}}, ["powers", "2"]),
        ({"permutations": 50}, ["permutations", "cannot give a p-value", "at least 99"]),
    ],
)
def test_bad_experiment_config_is_named(tmp_path: Path, change: dict, words: list[str]):
    config = experiments_config()
    config["models"]["tinydemo"].update(change)
    proc = snakemake(tmp_path, "--dry-run", "report_all", config=config)
    assert proc.returncode != 0
    for word in words:
        assert word in proc.stdout + proc.stderr, (word, proc.stderr[-2000:])


def test_snapshots_of_files_and_downloads_plan(tmp_path: Path):
    config = experiments_config()
    model = config["models"]["tinydemo"]
    model["weights"] = {"source": "path", "path": "given.pt"}
    model["snapshots"] = {
        "layer": "conv4",
        "weights": [{"step": 100, "path": "snaps/a.pt"}, {"step": 2000, "url": "http://127.0.0.1:1/b.pt"}],
    }
    del model["rotation"]
    proc = snakemake(tmp_path, "--dry-run", "snapshots_all", config=config)
    assert proc.returncode != 0 and "snaps/a.pt" in proc.stdout + proc.stderr  # the given file is missing
    for name in ("given.pt", "snaps/a.pt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    proc = snakemake(tmp_path, "--dry-run", "snapshots_all", config=config)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = job_counts(proc.stdout)
    assert counts["dissect_snapshot"] == 2 and counts["download_snapshot"] == 1 and counts["snapshot_sweep"] == 1
    assert "models/tinydemo.snapshots/step2000.pth" in proc.stdout
