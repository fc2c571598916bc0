"""A sweep's table and charts (netdissect.experiments.sweep, `netdissect sweep`): the numbers are the
points' own, the charts are well-formed SVG with one line per category, bad points exit 2."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET

import pytest

from netdissect import pipeline
from netdissect.cli import main
from netdissect.report.charts import line_chart
from tests.test_engine_helpers import CATEGORIES, write_tiny_broden

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def points(tmp_path_factory):
    """One layer of the reference model dissected unrotated and fully rotated."""
    root = tmp_path_factory.mktemp("sweep")
    tiny = write_tiny_broden(root / "broden", n_images=12, seg=8, scale=2, seed=3)
    dirs = {}
    for power in (0.0, 1.0):
        out = root / f"p{power:g}"
        pipeline.dissect(
            tiny.root, "tests.test_engine_reference:make_model", ["2"], out, q=0.05, progress=False, rotation=(0, power)
        )
        dirs[power] = out / "2"
    return dirs


def test_sweep_table_holds_each_points_counts(points, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--axis", "power", "--out", str(out), "--title", "ref 2"]
    assert main([*args, "--points", *(f"{p:g}={d}" for p, d in points.items())]) == 0
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["power"] for r in rows] == ["0", "1"]
    for row, layer_dir in zip(rows, points.values()):
        summary = json.loads((layer_dir / "summary.json").read_text())
        for key in ("units", "detectors", "unique_top", "unique_by_category"):
            assert int(row[key]) == summary[key], key
        for cat in CATEGORIES:
            for kind, value in summary["per_category"][cat].items():
                assert int(row[f"{cat}-{kind}"]) == value, (cat, kind)
    info = json.loads((out / "sweep.json").read_text())
    assert info["title"] == "ref 2, rotated basis" and info["values"] == [0.0, 1.0]
    for name in info["charts"].values():
        svg = ET.parse(out / name).getroot()
        series = [g.get("data-category") for g in svg.iter(f"{SVG}g")]
        assert series == [*CATEGORIES, "all"]


def test_a_wide_step_axis_is_logarithmic():
    svg = line_chart(
        [1, 10, 1000], {"object": [0, 3, 9]}, ["object"], title="t", x_label="step", y_label="n", log_x=True
    )
    root = ET.fromstring(svg)
    xs = [float(c.get("cx")) for c in root.iter(f"{SVG}circle")]
    assert xs[1] - xs[0] == pytest.approx((xs[2] - xs[0]) / 3)  # 10 is a third of the way to 1000
    assert "(log scale)" in svg and ">100<" in svg
    with pytest.raises(ValueError):
        line_chart([0, 10], {"object": [0, 1]}, ["object"], title="t", x_label="s", y_label="n", log_x=True)


@pytest.mark.parametrize(
    "axis, values, words",
    [
        ("power", ["1", "0"], "power 0 follows 1"),
        ("power", ["0", "1.5"], "powers must lie in [0, 1]"),
        ("step", ["10", "10"], "step 10 follows 10"),
        ("step", ["0", "10"], "steps must be whole numbers >= 1"),
        ("step", ["x", "10"], "expected VALUE=LAYER_DIR"),
    ],
)
def test_bad_points_exit_2(points, tmp_path, capsys, axis, values, words):
    layer_dir = points[0.0]
    argv = ["sweep", "--axis", axis, "--out", str(tmp_path / "s"), "--points", *(f"{v}={layer_dir}" for v in values)]
    assert main(argv) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "s" / "sweep.json").exists()
