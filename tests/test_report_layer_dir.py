"""`netdissect dissect` ends with each layer's report, and `netdissect report LAYER_DIR` needs no other
option: the dataset, the shards and the layer come from summary.json (``paths``, relative to the layer
folder), from any working directory and after the tree moves as a whole; explicit options win; a
folder that is not a dissection, or a summary that no longer points at its inputs, is refused (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from netdissect.cli import main

DEMO = "netdissect.demo:DemoNet"


def _dissect(dataset: Path, out: Path, *options: str) -> int:
    args = ["dissect", "--dataset", str(dataset), "--model", DEMO, "--layers", "conv1,conv2", "--out", str(out)]
    return main([*args, "--no-progress", *options])


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def dissected(broden_example: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    assert _dissect(broden_example, out) == 0
    return out


def test_dissect_writes_every_layer_report(dissected: Path, broden_example: Path, tmp_path: Path, capsys) -> None:
    for layer in ("conv1", "conv2"):
        summary = json.loads((dissected / layer / "summary.json").read_text())
        html = (dissected / layer / "report" / "index.html").read_text()
        assert f"{summary['detectors']} of {summary['units']} units are detectors" in html
        assert len(list((dissected / layer / "report" / "strips").iterdir())) == summary["units"]
        assert summary["paths"] == {"dataset": "../../worked", "shards": ["../shards/0"]}
    assert _dissect(broden_example, tmp_path / "bare", "--no-report") == 0
    assert "conv2: 64 of 64 units" in capsys.readouterr().out
    assert (tmp_path / "bare" / "conv1" / "result.csv").is_file()
    assert not (tmp_path / "bare" / "conv1" / "report").exists()


def test_report_layer_dir_alone_from_anywhere(dissected: Path, tmp_path: Path, monkeypatch) -> None:
    expected = _files(dissected / "conv2" / "report")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["report", str(dissected / "conv2"), "--out", "again", "--threads", "1"]) == 0
    assert _files(elsewhere / "again") == expected  # the same report as dissect's
    # the dissection and its dataset moved together: the relative paths still hold
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(str(dissected), moved / "out")
    shutil.move(str(tmp_path / "worked"), moved / "worked")
    shutil.rmtree(moved / "out" / "conv2" / "report")
    assert main(["report", str(moved / "out" / "conv2")]) == 0
    again = _files(moved / "out" / "conv2" / "report")
    assert again.keys() == expected.keys()
    # the same images; the page names the dataset and model after the folders, which moved
    assert {k: v for k, v in again.items() if k != "index.html"} == {
        k: v for k, v in expected.items() if k != "index.html"
    }


def test_explicit_options_override_summary(dissected: Path, broden_example: Path, tmp_path: Path) -> None:
    copy = tmp_path / "dataset_copy"
    shutil.copytree(broden_example, copy)
    shutil.rmtree(broden_example)  # what summary.json records is gone; the options say where it is now
    shards = tmp_path / "shards_copy"
    shutil.move(str(dissected / "shards" / "0"), shards)
    layer_dir = dissected / "conv1"
    args = ["report", "--layer-dir", str(layer_dir), "--dataset", str(copy), "--shards", str(shards)]
    assert main([*args, "--out", str(tmp_path / "r"), "--topk", "2"]) == 0
    html = (tmp_path / "r" / "index.html").read_text()
    assert "units are detectors" in html


def test_not_a_dissection_says_what_is_missing(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "result.csv").write_text("unit,category,label,score\n")
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"{folder} is not a layer folder of a dissection: it lacks summary.json" in err
    assert "thresholds.npy (written by `netdissect quantile`" in err and "result.csv (" not in err
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["report"]) == 2
    assert "no layer folder given" in capsys.readouterr().err
    assert not (folder / "report").exists()


def test_summary_that_no_longer_points_at_the_inputs(dissected: Path, broden_example: Path, capsys) -> None:
    layer_dir = dissected / "conv1"
    summary = json.loads((layer_dir / "summary.json").read_text())
    shutil.move(str(dissected / "shards"), dissected.parent / "elsewhere")
    assert main(["report", str(layer_dir)]) == 2
    err = capsys.readouterr().err
    assert "records the shard folder(s)" in err and "shards/0" in err and "pass --shards" in err
    del summary["paths"]
    summary["settings"]["dataset"] = "no/such/dataset"
    (layer_dir / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(layer_dir)]) == 2
    assert "does not say where the dataset is (it records no/such/dataset" in capsys.readouterr().err
    assert main(["report", str(layer_dir), "--dataset", str(broden_example)]) == 2
    assert "does not say where the shards" in capsys.readouterr().err
    assert not (layer_dir / "report.tmp").exists()


def test_dissect_refuses_a_bad_topk_before_extracting(broden_example: Path, tmp_path: Path, capsys) -> None:
    assert _dissect(broden_example, tmp_path / "d", "--topk", "0") == 2
    assert "--topk 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
