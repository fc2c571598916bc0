"""Fuzzing the reader of ``report-all``: a malformed result.csv or summary.json in a layer folder.

Cases start from a valid layer (three units, two categories) and break result.csv (random bytes,
random edits, one cell replaced by a tricky value, rows dropped or repeated) or summary.json (random
JSON, one value replaced). ``netdissect report-all`` must then write its report or exit 2 with a
message naming the file and a line of it; nothing else may escape.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netdissect.cli import main
from tests.fuzzing import TRICKY, count, fuzz, no_hang

CATEGORIES = ["object", "part"]
HEADER = ["unit", "category", "label", "score"] + [
    f"{c}-{f}" for c in CATEGORIES for f in ("label", "truth", "activation", "intersect", "iou")
]
ROWS = [
    ["2", "object", "wall", "0.31", "wall", "500", "900", "300", "0.31", "door", "40", "90", "5", "0.04"],
    ["1", "part", "door", "0.052", "sky", "300", "700", "20", "0.02", "door", "40", "80", "6", "0.052"],
    ["3", "object", "", "0.0", "", "0", "0", "0", "0.0", "", "0", "0", "0", "0.0"],
]
RESULT = "\r\n".join(",".join(r) for r in [HEADER, *ROWS]) + "\r\n"
SUMMARY = {
    "model": "r18",
    "layer": "layer3",
    "dataset": "tiny",
    "iou_threshold": 0.04,
    "units": 3,
    "settings": {"iou_threshold": 0.04, "union": "paper"},
}


@pytest.fixture(scope="module")
def layer(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzzresults") / "results" / "tiny" / "r18" / "layer3"


def write_valid(layer: Path) -> None:
    layer.mkdir(parents=True, exist_ok=True)
    (layer / "result.csv").write_text(RESULT, newline="")
    (layer / "summary.json").write_text(json.dumps(SUMMARY, indent=2))


def report_all(layer: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), no_hang():
        code = main(["report-all", "--layer-dirs", str(layer), "--out", str(layer.parents[3] / "report")])
    return code, err.getvalue()


def check(layer: Path, broken: str) -> None:
    code, message = report_all(layer)
    assert code in (0, 2), message
    if code == 2:
        assert str(layer / broken) in message, message
        assert re.search(rf"{re.escape(broken)}: (row|line) \d+", message), message


tricky = st.sampled_from(TRICKY) | st.text(max_size=10) | st.floats(allow_nan=True).map(repr)


@st.composite
def broken_result(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "edit", "cell", "rows"]))
    if kind == "bytes":
        return draw(st.binary(max_size=400))
    if kind == "edit":
        text = RESULT
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(tricky) + text[at + draw(st.integers(0, 4)) :]
        return text.encode("utf-8", "surrogatepass")
    rows = [list(r) for r in [HEADER, *ROWS]]
    if kind == "cell":
        for _ in range(draw(st.integers(1, 3))):
            r = draw(st.integers(0, len(rows) - 1))
            rows[r][draw(st.integers(0, len(HEADER) - 1))] = draw(tricky)
    else:
        rows = [rows[0]] + [rows[1 + i] for i in draw(st.lists(st.integers(0, len(ROWS) - 1), max_size=5))]
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode("utf-8", "surrogatepass")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def broken_summary(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "value", "cut"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    text = json.dumps(SUMMARY, indent=2)
    if kind == "cut":
        return text[: draw(st.integers(0, len(text) - 1))].encode()
    summary = json.loads(text)
    key = draw(st.sampled_from(sorted(SUMMARY)))
    summary[key] = draw(json_values)
    if draw(st.booleans()):
        summary["settings"] = dict(SUMMARY["settings"], iou_threshold=draw(json_values))
    return json.dumps(summary, indent=2).encode()


@fuzz(350)
@given(data=st.data())
def test_fuzz_result_csv(layer: Path, data):
    count("report-all result.csv")
    write_valid(layer)
    (layer / "result.csv").write_bytes(data.draw(broken_result()))
    check(layer, "result.csv")


@fuzz(250)
@given(data=st.data())
def test_fuzz_summary_json(layer: Path, data):
    count("report-all summary.json")
    write_valid(layer)
    (layer / "summary.json").write_bytes(data.draw(broken_summary()))
    check(layer, "summary.json")


def test_the_valid_layer_is_reported(layer: Path):
    write_valid(layer)
    assert report_all(layer) == (0, "")
    summary = (layer.parents[3] / "report" / "summary.csv").read_text()
    assert "r18,layer3,3,0.04,2," in summary  # units 3, two detectors (0.31 and 0.052 >= 0.04)
