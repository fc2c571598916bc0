"""The workflow with ``dissect.activations: recompute``: no activations on disk, and the same results and
report strips as the same stages storing them (a real Snakemake run of a tiny configuration, against
the stage functions run in this process on the same shards and batches)."""

from __future__ import annotations

from pathlib import Path

import pytest

from netdissect import pipeline
from netdissect.cli import main
from tests.workflow_run import snakemake, tiny_config

LAYER = Path("results/layers/tiny/r18/layer3")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("recompute")
    config = tiny_config(images=10, shards=2, demo=False)
    config["dissect"]["activations"] = "recompute"
    proc = snakemake(workdir, "--cores", "2", "report_all", config=config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def stored(run, tmp_path_factory) -> Path:
    """The same two shards, batches of 4, stored: extract, quantile, tally, merge, score, report."""
    out = tmp_path_factory.mktemp("stored")
    data, weights = run / "datasets" / "tiny", str(run / "models" / "r18.pt")
    shards = [out / "shards" / str(k) for k in (0, 1)]
    for k, shard in enumerate(shards):
        pipeline.extract(data, "resnet18", ["layer3"], k, 2, shard, weights=weights, batch_size=4, progress=False)
    pipeline.quantile(shards, "layer3", out / "layer3")
    for k, shard in enumerate(shards):
        pipeline.tally(
            data, shard, "layer3", out / "layer3" / "thresholds.npy", out / f"{k}.npz", batch_size=4, progress=False
        )
    pipeline.merge([out / "0.npz", out / "1.npz"], out / "layer3" / "counts.npz")
    pipeline.score(out / "layer3" / "counts.npz", data, out / "layer3")
    args = ["report", "--dataset", str(data), "--layer-dir", str(out / "layer3"), "--layer", "layer3", "--topk", "3"]
    assert main([*args, "--shards", *map(str, shards), "--out", str(out / "layer3" / "report")]) == 0
    return out


def test_recompute_run_keeps_no_activations(run):
    for k in (0, 1):
        shard = run / "results" / "shards" / "tiny" / "r18" / str(k)
        assert (shard / "meta.json").is_file() and (shard / "layer3.imgmax.npy").is_file()
        assert not (shard / "layer3.act.npy").exists()


def test_recompute_run_gives_the_stored_results_and_strips(run, stored):
    assert (stored / "shards" / "0" / "layer3.act.npy").is_file()
    for name in ("thresholds.npy", "result.csv"):
        assert (run / LAYER / name).read_bytes() == (stored / "layer3" / name).read_bytes(), name
    strips = sorted((stored / "layer3" / "report" / "strips").iterdir())
    assert len(strips) == 256
    for strip in strips:
        assert strip.read_bytes() == (run / LAYER / "report" / "strips" / strip.name).read_bytes(), strip.name
