"""The workflow with Caffe models: a tiny Caffe pair whose blob name holds "/" runs end to end and gives
the numbers of `netdissect dissect`; the paper's zoo (config/examples/paper_zoo.yaml) plans without the
network; a Caffe model without a caffemodel is refused at start-up."""

from __future__ import annotations

from netdissect.cli import main
from tests.caffe_nets import SLASH_NET, random_blobs, write, write_caffemodel
from tests.workflow_run import REPO, job_counts, read_csv, snakemake, tiny_config


def test_paper_zoo_plans_every_network_without_the_network(tmp_path):
    result = snakemake(
        tmp_path, "--dry-run", "-p", "report_all", "--configfile", str(REPO / "config/examples/paper_zoo.yaml")
    )
    assert result.returncode == 0, result.stderr + result.stdout
    counts = job_counts(result.stdout)
    assert counts["download_spec"] == counts["download_weights"] == counts["check_layers"] == 11
    assert counts["download_dataset"] == 2 and counts["report_layer"] == 3 * 5 + 8 and counts["extract"] == 11 * 32
    assert "results/layers/broden1_224/googlenet_places365/inception_5b%2Foutput/result.csv" in result.stdout
    assert "--layer inception_5b/output --thresholds" in result.stdout
    assert "--model models/caffe_reference_places365.prototxt --weights models/caffe_reference_places365.caffemodel" in result.stdout  # fmt: skip


def test_a_caffe_model_needs_its_caffemodel(tmp_path):
    config = tiny_config(demo=False)
    config["models"]["r18"] = {"spec": "net.prototxt", "weights": {"source": "random"}, "layers": ["conv1"]}
    result = snakemake(tmp_path, "--dry-run", config=config)
    assert (
        result.returncode != 0
        and "models.r18.weights.source: 'random'; a Caffe deploy.prototxt needs" in result.stdout + result.stderr
    )


def test_a_caffe_pair_with_a_slash_layer_runs_end_to_end(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    prototxt = write(work / "slash.prototxt", SLASH_NET)
    caffemodel = write_caffemodel(work / "slash.caffemodel", prototxt, random_blobs(prototxt, seed=3))
    config = tiny_config(images=8, shards=2, demo=False)
    config["models"] = {
        "slash": {
            "spec": "slash.prototxt",
            "weights": {"source": "path", "path": "slash.caffemodel"},
            "layers": ["block/out"],
        }  # fmt: skip
    }
    config["runs"] = [{"dataset": "tiny", "models": ["slash"]}]
    result = snakemake(work, "--cores", "2", "report_all", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    layer_dir = work / "results/layers/tiny/slash/block%2Fout"
    assert not (work / "results/layers/tiny/slash/block").exists()
    once = tmp_path / "once"
    args = ["dissect", "--dataset", str(work / "datasets/tiny"), "--model", str(prototxt), "--weights", str(caffemodel)]
    assert main([*args, "--layers", "block/out", "--out", str(once), "--no-progress"]) == 0
    assert (layer_dir / "result.csv").read_text() == (once / "block%2Fout" / "result.csv").read_text()
    rows = read_csv(work / "results/report/summary.csv")
    assert [row[2] for row in rows[1:]] == ["block/out"]
    html = (layer_dir / "report" / "index.html").read_text()
    assert "slash block/out" in html and "BGR 0–255" in html
    assert "block/out" in (work / "results/report/index.html").read_text()
