"""The Snakemake workflow: lint, the default DAG, config validation, early layer check, a tiny run
end to end (equal to the one-process `netdissect dissect`), and a second run that does nothing."""

from __future__ import annotations

import functools
import http.server
import json
import math
import re
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from netdissect.defaults import BATCH_SIZE
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
    images = default["datasets"][demo["weights"]["dataset"]]["images"]
    trained_steps = demo["weights"]["epochs"] * math.ceil(images / BATCH_SIZE)
    assert job_counts(proc.stdout) == {
        "check_layers": len(models),
        "synth_dataset": 1,
        "pack_labels": 1,
        "train_demo_snapshots": 1,  # the demo is trained once, saving its snapshots on the way
        "random_weights": 1,
        # the experiments (rules/experiments.smk): power 0 is the unrotated layer itself
        "significance": sum(
            len(default["models"][m]["layers"]) for m in models if default["models"][m].get("permutations")
        ),
        "dissect_rotated": len([p for p in demo["rotation"]["powers"] if p > 0]),
        "rotation_sweep": 1,
        # the last step is the trained model, whose layer the run dissects anyway
        "dissect_snapshot": len(demo["snapshots"]["steps"]) - (demo["snapshots"]["steps"][-1] == trained_steps),
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
        "results/layers/synth/resnet18_random/layer4/tally/1.npz",
        "results/layers/synth/demo/conv4/result.csv",
        "results/labels/synth",
        "results/report/index.html",
        "results/rotation/synth/demo/conv2/p0.2",
        "results/snapshots/synth/demo/conv4/step1",
        "models/demo.snapshots",
    ):
        assert path in proc.stdout, path
    assert f"results/snapshots/synth/demo/conv4/step{trained_steps}" not in proc.stdout


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


def shell_commands(workdir: Path, config: dict) -> dict[str, list[str]]:
    """The shell commands a dry run plans, by netdissect subcommand."""
    proc = snakemake(workdir, "--dry-run", "--printshellcmds", "results", config=config)
    assert proc.returncode == 0, proc.stderr
    commands: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        words = line.removeprefix("Shell command:").split()
        if len(words) > 1 and words[0] == "netdissect":
            commands.setdefault(words[1], []).append(line)
    return commands


@pytest.mark.parametrize(
    "dissect, expected",
    [
        (
            {},
            {
                "extract": ["--quantile 0.005"],
                "quantile": ["--quantile 0.005"],
                "tally": ["--union paper", "--upsample bilinear"],
            },
        ),
        (
            {"preset": "original"},
            {"extract": ["--preset original"], "tally": ["--preset original"], "layers": ["--upsample fieldmap"]},
        ),
        (
            {"preset": "lite", "union": "paper", "upsample": "fieldmap", "quantile": 0.01},
            {
                "extract": ["--preset lite", "--quantile 0.01"],
                "quantile": ["--quantile 0.01"],
                "tally": ["--preset lite", "--upsample fieldmap"],
                "layers": ["--upsample fieldmap"],
            },
        ),
    ],
)
def test_presets_and_conventions_reach_the_commands(tmp_path: Path, dissect: dict, expected: dict):
    """With a preset, keys left at their defaults take the preset's values (no option); others override it."""
    config = tiny_config(demo=False)
    config["dissect"].update(dissect)
    commands = shell_commands(tmp_path, config)
    for command, words in expected.items():
        for line in commands[command]:
            for word in words:
                assert word in line, (word, line)
    if dissect.get("preset"):  # union paper is the default: the preset's rule wins, no option
        assert not any("--union" in line for line in commands["tally"])
    if dissect.get("preset") == "original":  # the default q yields to the preset's: the shards' q is used
        assert not any("--quantile" in line for line in commands["extract"] + commands["quantile"])
    if not dissect:
        assert not any("--preset" in line or "--upsample" in line for line in commands["layers"])


def test_fieldmap_on_a_layer_without_one_fails_at_the_check(tmp_path: Path, broden_example: Path):
    config = {
        "datasets": {"worked": {"source": "path", "path": str(broden_example)}},
        "models": {"r18": {"spec": "resnet18", "weights": {"source": "random"}, "layers": ["layer2", "avgpool"]}},
        "runs": [{"dataset": "worked", "models": ["r18"]}],
        "dissect": {"upsample": "fieldmap"},
    }
    proc = snakemake(tmp_path, "--cores", "2", "results", config=config)
    assert proc.returncode != 0
    log = (tmp_path / "logs" / "checks" / "r18.layers.log").read_text()
    assert "layer avgpool has no field map: adaptive_avg_pool2d in avgpool changes the map" in log
    assert "--upsample bilinear" in log
    assert not (tmp_path / "results" / "shards").exists()


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


# ---------------------------------------------------------------- Snakemake's report, units.csv, report LAYER_DIR


def _report_zip(tiny_run: Path, tmp_path: Path) -> Path:
    proc = snakemake(tiny_run, "--report", str(tmp_path / "report.zip"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with zipfile.ZipFile(tmp_path / "report.zip") as archive:
        archive.extractall(tmp_path / "unzipped")
    return tmp_path / "unzipped" / "report"


def test_snakemake_report_holds_every_chart_table_and_layer_page(tiny_run: Path, tmp_path: Path):
    report = _report_zip(tiny_run, tmp_path)
    html = (report / "report.html").read_text()
    results = {Path(p).name: report / p for p in re.findall(r"data/raw/[0-9a-f]+/[^\"\\]+", html)}
    assert {"unique_by_category.svg", "unique_top.svg", "summary.csv", "units.csv"} <= set(results)
    assert "Unique detectors per category" in html and "Tidy table for pandas" in html  # the captions
    for name in ("unique_by_category.svg", "summary.csv", "units.csv"):
        assert results[name].read_bytes() == (tiny_run / "results" / "report" / name).read_bytes()
    layer_pages = [report / p for p in re.findall(r"data/raw/[0-9a-f]+/index\.html", html)]
    assert len(layer_pages) == 2  # r18 layer3 and tinydemo conv4
    originals = {
        (tiny_run / "results/layers/tiny" / m / l / "report"): None
        for m, l in (("r18", "layer3"), ("tinydemo", "conv4"))
    }
    for page in layer_pages:
        source = next(o for o in originals if (o / "index.html").read_bytes() == page.read_bytes())
        strips = sorted(p.name for p in (source / "strips").iterdir())
        assert strips and sorted(p.name for p in (page.parent / "strips").iterdir()) == strips
        for src in re.findall(r'src="(strips/[^"]+)"', page.read_text()):
            assert (page.parent / src).is_file(), src


@pytest.mark.browser
def test_snakemake_report_opens_in_a_browser(tiny_run: Path, tmp_path: Path):
    from tests.test_report_browser import CHROMIUM, Visit, _QuietHandler, _require_browser

    _require_browser()
    from playwright.sync_api import sync_playwright

    report = _report_zip(tiny_run, tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(report)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            visit = Visit(browser, f"{base}/report.html")
            visit.page.wait_for_selector("text=Summary", timeout=15000)
            text = visit.page.inner_text("body")
            assert "Layers" in text and "Network Dissection (Bau et al., CVPR 2017)" in text  # report/workflow.rst
            # Snakemake's page has no icon: the browser's own /favicon.ico request is its only 404
            assert [e for e in visit.errors if "404" not in e] == []
            assert all(u.startswith(base) or u.startswith("data:") for u in visit.requests)
            page = re.search(r"data/raw/[0-9a-f]+/index\.html", (report / "report.html").read_text()).group(0)
            layer = Visit(browser, f"{base}/{page}")
            widths = layer.load_all_images()
            assert widths and all(w > 0 for w in widths) and layer.errors == []
            browser.close()
    finally:
        server.shutdown()


def test_units_csv_of_the_run_equals_result_csv(tiny_run: Path):
    import pandas as pd

    from netdissect.report.results import read_result_csv

    units = pd.read_csv(tiny_run / "results" / "report" / "units.csv", keep_default_na=False)
    for (model, layer), rows in units.groupby(["model", "layer"]):
        result, categories = read_result_csv(tiny_run / "results/layers/tiny" / model / layer / "result.csv")
        wide = rows.pivot(index="unit", columns="category")
        table = result.set_index("unit").sort_index()
        for cat in categories:
            for field in ("label", "truth", "activation", "intersect", "iou"):
                assert wide[field][cat].tolist() == table[f"{cat}-{field}"].tolist(), (model, layer, cat, field)
        top = rows[rows["top"]].set_index("unit").sort_index()
        assert top["label"].tolist() == table.loc[table["label"] != "", "label"].tolist()


def test_report_of_a_workflow_layer_needs_no_option(tiny_run: Path, tmp_path: Path, monkeypatch):
    from netdissect.cli import main

    monkeypatch.chdir(tmp_path)
    layer_dir = tiny_run / "results" / "layers" / "tiny" / "r18" / "layer3"
    assert main(["report", str(layer_dir), "--out", "again", "--topk", "3"]) == 0
    strips = {p.name: p.read_bytes() for p in (layer_dir / "report" / "strips").iterdir()}
    assert {p.name: p.read_bytes() for p in (tmp_path / "again" / "strips").iterdir()} == strips
