"""`netdissect report` and `report-all` on a real dissection of the worked example of docs/broden-format.md §11 (demo CNN):
the files the engine writes are read as the contract says, and the counts agree with summary.json."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from netdissect.cli import main
from netdissect.report.strips import TILE_GAP


@pytest.fixture
def dissected(broden_example: Path, tmp_path: Path) -> Path:
    """results/worked/demo/{conv1,conv2} and the shard, made by `netdissect dissect`."""
    run = tmp_path / "results" / "worked" / "demo"
    assert (
        main(
            [
                "dissect",
                "--dataset",
                str(broden_example),
                "--model",
                "netdissect.demo:DemoNet",
                "--layers",
                "conv1,conv2",
                "--out",
                str(run),
                "--workers",
                "0",
            ]
        )
        == 0
    )
    return run


def test_reports_of_a_dissection(broden_example: Path, dissected: Path, tmp_path: Path) -> None:
    for layer in ("conv1", "conv2"):
        assert (
            main(
                [
                    "report",
                    "--dataset",
                    str(broden_example),
                    "--layer-dir",
                    str(dissected / layer),
                    "--shards",
                    str(dissected / "shards" / "0"),
                    "--out",
                    str(dissected / layer / "report"),
                    "--threads",
                    "1",
                ]
            )
            == 0
        )
        units = json.loads((dissected / layer / "summary.json").read_text())["units"]
        strips = sorted((dissected / layer / "report" / "strips").iterdir())
        assert len(strips) == units
        # 4 images of 8x8 in the example: every strip shows all 4, ranked, with gaps between them
        assert Image.open(strips[0]).size == (4 * 8 + 3 * TILE_GAP, 8)
        html = (dissected / layer / "report" / "index.html").read_text()
        summary = json.loads((dissected / layer / "summary.json").read_text())
        assert (
            f"{summary['detectors']} of {summary['units']} units are detectors, covering "
            f"{summary['unique_top']} concept" in html
        )

    out = tmp_path / "results" / "report"
    assert (
        main(["report-all", "--layer-dirs", str(dissected / "conv1"), str(dissected / "conv2"), "--out", str(out)]) == 0
    )
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["dataset"], r["model"], r["layer"]) for r in rows] == [
        ("worked", "demo", "conv1"),
        ("worked", "demo", "conv2"),
    ]
    for row in rows:
        summary = json.loads((dissected / row["layer"] / "summary.json").read_text())
        for key in ("units", "detectors", "unique_top", "unique_by_category"):
            assert int(row[key]) == summary[key], key
        for cat, numbers in summary["per_category"].items():
            for key, value in numbers.items():
                assert int(row[f"{cat}-{key}"]) == value, f"{cat}-{key}"
    html = (out / "index.html").read_text()
    assert 'href="../worked/demo/conv1/report/index.html"' in html


def test_report_errors_name_the_file(broden_example: Path, dissected: Path, tmp_path: Path, capsys) -> None:
    layer_dir = tmp_path / "copy"
    shutil.copytree(dissected / "conv1", layer_dir)
    args = [
        "report",
        "--dataset",
        str(broden_example),
        "--layer-dir",
        str(layer_dir),
        "--shards",
        str(dissected / "shards" / "0"),
        "--out",
        str(tmp_path / "report"),
        "--layer",
        "conv1",
    ]
    (layer_dir / "thresholds.npy").unlink()
    assert main(args) == 2
    assert f"{layer_dir} is not a layer folder of a dissection: it lacks thresholds.npy" in capsys.readouterr().err
    shutil.copy(dissected / "conv1" / "thresholds.npy", layer_dir / "thresholds.npy")
    shard = tmp_path / "shard"
    shutil.copytree(dissected / "shards" / "0", shard)
    np.save(shard / "conv1.imgmax.npy", np.load(shard / "conv1.imgmax.npy")[:3])
    assert main([*args[:6], str(shard), *args[7:]]) == 2
    assert "hold 3 images but the dataset" in capsys.readouterr().err
    assert main([*args[:-2], "--topk", "0"]) == 2
    assert "--topk" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_summary_and_report_count_detectors_alike_at_threshold_zero(
    broden_example: Path, dissected: Path, tmp_path: Path
) -> None:
    """One detector rule: with --iou-threshold 0, summary.json (netdissect.score) and the report's counts
    from result.csv (netdissect.report) agree, and units without a label are not detectors."""
    from netdissect.counts import load_counts, save_counts
    from netdissect.report.results import count_detectors, read_result_csv

    counts_file, out = tmp_path / "counts.npz", tmp_path / "t0"
    counts = load_counts(dissected / "conv2" / "counts.npz")
    counts["I"][:3] = 0  # three units that overlap no label: their label is empty, their score 0
    save_counts(counts_file, counts, counts["thresholds"], counts["start"], counts["stop"], counts["settings"])
    args = ["score", "--counts", str(counts_file), "--dataset", str(broden_example)]
    assert main([*args, "--out", str(out), "--iou-threshold", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    result, categories = read_result_csv(out / "result.csv")
    counts = count_detectors(result, categories, 0.0)
    assert (counts.detectors, counts.unique_top, counts.unique_by_category) == (
        summary["detectors"],
        summary["unique_top"],
        summary["unique_by_category"],
    )
    assert counts.per_category == summary["per_category"]
    unlabelled = int((result["label"] == "").sum())
    assert unlabelled >= 3 and summary["detectors"] == summary["units"] - unlabelled
