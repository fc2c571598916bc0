"""Result files in the three layouts (netdissect's result.csv, NetDissect-Lite's tally.csv, the original
system's <layer>-result.csv), written here by hand from one set of rows: the reader gives one table for
all three, `netdissect compare` on handmade pairs, `report-all` over them (names, paper order, the tidy
units.csv read back with pandas equal to the result files), and the bad inputs (exit 2).

The layouts' facts (docs/results-files.md): Lite writes every count as a float (``123.0``); the
original writes activation as a float, its categories in another order, and for a category without a
label the numbers of label 0 (truth, intersect and an IoU that are not 0).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from netdissect.cli import main
from netdissect.report.results import (
    CATEGORY_FIELDS,
    count_detectors,
    detector_mask,
    read_result_file,
)
from tests.test_report_data import CATEGORIES, result_rows

LITE = ["object", "part", "scene", "texture", "color"]  # NetDissect-Lite's default categories: no material
ORIGINAL_ORDER = ["object", "color", "material", "scene", "texture", "part"]  # as in the paper's CSVs
LABEL0_TRUTH, LABEL0_INTERSECT, LABEL0_IOU = 24924928, 135010, 0.0054461656549247154


def write_layout(path: Path, rows: list[dict], layout: str, categories=CATEGORIES) -> Path:
    """Write ``rows`` (result_rows's dicts) as ``layout`` would: netdissect, lite or original."""
    if layout == "original":
        categories = [c for c in ORIGINAL_ORDER if c in categories]
    header = ["unit", "category", "label", "score"] + [f"{c}-{f}" for c in categories for f in CATEGORY_FIELDS]
    out = []
    for row in rows:
        row = dict(row)
        for c in categories:
            if layout == "lite":
                for f in ("truth", "activation", "intersect"):
                    row[f"{c}-{f}"] = repr(float(row[f"{c}-{f}"]))
            elif layout == "original":
                row[f"{c}-activation"] = repr(float(row[f"{c}-activation"]))
                if not row[f"{c}-label"]:  # label 0's numbers where there is no label
                    row[f"{c}-truth"], row[f"{c}-intersect"] = LABEL0_TRUTH, LABEL0_INTERSECT
                    row[f"{c}-iou"] = LABEL0_IOU
        out.append({k: row[k] for k in header})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, header)  # csv's default line end, \r\n, as all three systems
        writer.writeheader()
        writer.writerows(out)
    return path


FILE_NAMES = {"netdissect": "result.csv", "lite": "tally.csv", "original": "conv5-result.csv"}


@pytest.fixture
def rows() -> list[dict]:
    return result_rows(np.random.default_rng(5), 40)


def _by_unit(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values("unit").reset_index(drop=True)


def test_three_layouts_read_as_one_table(tmp_path: Path, rows) -> None:
    files = {
        layout: read_result_file(write_layout(tmp_path / layout / name, rows, layout))
        for layout, name in FILE_NAMES.items()
    }
    assert {layout: f.layout for layout, f in files.items()} == {k: k for k in FILE_NAMES}
    assert files["original"].layer == "conv5" and files["netdissect"].layer is None
    assert files["original"].categories == ORIGINAL_ORDER and files["lite"].categories == CATEGORIES
    columns = list(files["netdissect"].table.columns)
    ours = _by_unit(files["netdissect"].table)
    for layout in ("lite", "original"):
        other = _by_unit(files[layout].table[columns])
        pd.testing.assert_frame_equal(other, ours, check_dtype=False)
        assert all(pd.api.types.is_integer_dtype(other[f"{c}-truth"]) for c in CATEGORIES)
    # "no label" reads as truth, intersect and IoU 0 whatever the writer put there
    empty = ours["object-label"] == ""
    assert empty.any() and (ours.loc[empty, ["object-truth", "object-intersect", "object-iou"]] == 0).all().all()
    counts = {layout: count_detectors(f.table, f.categories, 0.04) for layout, f in files.items()}
    assert counts["lite"] == counts["netdissect"]
    assert (counts["original"].detectors, counts["original"].unique_by_category) == (
        counts["netdissect"].detectors,
        counts["netdissect"].unique_by_category,
    )


# ---------------------------------------------------------------- compare


def _compare(capsys, a: Path, b: Path, *options: str) -> tuple[int, str]:
    code = main(["compare", str(a), str(b), *options])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_compare_identical_files_in_other_layouts_agree(tmp_path: Path, rows, capsys) -> None:
    ours = write_layout(tmp_path / "a" / "result.csv", rows, "netdissect")
    for layout in ("lite", "original"):
        code, text = _compare(capsys, ours.parent, write_layout(tmp_path / layout / FILE_NAMES[layout], rows, layout))
        assert code == 0, text
        assert "same label: 40 of 40 (100.0 %) units" in text and "agree:" in text
        assert ("NetDissect-Lite's tally.csv" if layout == "lite" else "the original system's") in text


def test_compare_finds_the_one_label_that_differs(tmp_path: Path, rows, capsys) -> None:
    changed = [dict(r) for r in rows]
    target = next(r for r in changed if r["label"] and r["category"] == "object")
    target["label"] = target["object-label"] = "zebra"  # a label no other unit has
    a = write_layout(tmp_path / "a" / "result.csv", rows, "netdissect")
    b = write_layout(tmp_path / "b" / "tally.csv", changed, "lite")
    code, text = _compare(capsys, a, b)
    assert code == 1
    assert "same label: 39 of 40 (97.5 %) units" in text
    assert re.search(r"object\s+same label 39 of 40", text) and re.search(r"part\s+same label 40 of 40", text)
    assert "1 unit differs" in text
    assert f"unit {target['unit']}: A {rows[changed.index(target)]['label']} (object" in text
    assert "B zebra (object" in text and "labels differ in object" in text


def test_compare_matches_columns_by_name_not_position(tmp_path: Path, rows, capsys) -> None:
    a = write_layout(tmp_path / "a.csv", rows, "netdissect")
    reordered = tmp_path / "b.csv"
    table = pd.read_csv(a, dtype=str, keep_default_na=False)
    columns = ["score", "label", "unit", "category"] + [
        f"{c}-{f}" for c in reversed(CATEGORIES) for f in reversed(CATEGORY_FIELDS)
    ]
    table[columns].iloc[::-1].to_csv(reordered, index=False)  # other column order, other row order
    assert _compare(capsys, a, reordered)[0] == 0


def test_compare_iou_tolerance_and_counts_against_brute_force(tmp_path: Path, rows, capsys) -> None:
    rng = np.random.default_rng(1)
    noisy = [dict(r) for r in rows]
    for r in noisy:  # IoUs moved by up to 1e-4, labels kept
        for c in CATEGORIES:
            if r[f"{c}-label"]:
                r[f"{c}-iou"] += float(rng.uniform(-1e-4, 1e-4))
        r["score"] = r[f"{r['category']}-iou"] if r["label"] else 0.0
    a = write_layout(tmp_path / "a.csv", rows, "netdissect")
    b = write_layout(tmp_path / "b.csv", noisy, "netdissect")
    code, text = _compare(capsys, a, b)
    assert code == 1 and "differ (another label, or an IoU beyond 1e-06)" in text
    expected = max(abs(x[f"{c}-iou"] - y[f"{c}-iou"]) for x, y in zip(rows, noisy) for c in CATEGORIES)
    assert f"max {expected:.3g}" in text
    assert _compare(capsys, a, b, "--tolerance", "1e-3")[0] == 0
    # the detector counts printed are those of a plain count
    detectors = sum(1 for r in rows if r["label"] and r["score"] >= 0.04)
    assert f"detectors (IoU >= 0.04): A {detectors}, B" in text


@pytest.mark.parametrize(
    "make_b, message",
    [
        (lambda rows, p: write_layout(p, [r for r in rows if r["unit"] != 40], "netdissect"), "has 40 units and"),
        (
            lambda rows, p: write_layout(p, result_rows(np.random.default_rng(6), 40, LITE), "lite", LITE),
            "only in the first: ['material']",
        ),
        (lambda rows, p: p.write_text("a,b,c\n1,2,3\n") and p, "known layout"),
        (lambda rows, p: p.write_bytes(b"\xff\xfe\x00garbage") and p, "line 1: not UTF-8 text"),
        (lambda rows, p: p.parent / "missing.csv", "no such folder or file"),
    ],
)
def test_compare_bad_input_exits_2(tmp_path: Path, rows, capsys, make_b, message) -> None:
    a = write_layout(tmp_path / "a.csv", rows, "netdissect")
    code, text = _compare(capsys, a, make_b(rows, tmp_path / "b.csv"))
    assert code == 2 and message in text and "Traceback" not in text


# ---------------------------------------------------------------- report-all and units.csv


def _layers(tmp_path: Path) -> dict[str, Path]:
    """Three layers of three networks, one per layout, of decreasing size."""
    folders = {}
    for i, (layout, name) in enumerate(FILE_NAMES.items()):
        rows = result_rows(np.random.default_rng(20 + i), 60 - 15 * i)
        folders[layout] = write_layout(tmp_path / f"net_{layout}" / name, rows, layout).parent
    return folders


def test_report_all_over_three_layouts(tmp_path: Path, capsys) -> None:
    folders = _layers(tmp_path)
    out = tmp_path / "report"
    paths = [str(folders[k]) for k in ("original", "netdissect", "lite")]
    assert (
        main(["report-all", *paths, "--name", "Paper AlexNet", "--name", "mine", "--name", "Lite", "--out", str(out)])
        == 0
    )
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert summary[["model", "layer"]].values.tolist() == [["Paper AlexNet", "conv5"], ["mine", ""], ["Lite", ""]]
    for folder, row in zip([folders[k] for k in ("original", "netdissect", "lite")], summary.itertuples()):
        result = read_result_file(next(folder.glob("*.csv")))
        counts = count_detectors(result.table, result.categories, 0.04)
        assert (row.units, row.detectors, row.unique_by_category) == (
            counts.units,
            counts.detectors,
            counts.unique_by_category,
        )
    svg = (out / "unique_by_category.svg").read_text()
    totals = [int(t) for t in re.findall(r'class="column" data-name="[^"]*" data-total="(\d+)"', svg)]
    assert totals == sorted(totals, reverse=True) and len(totals) == 3  # the paper's order
    html = (out / "index.html").read_text()
    assert "Paper AlexNet" in html and "original" in html  # the layout is named in the row
    capsys.readouterr()
    # without --name: the folder names
    assert main(["report-all", str(folders["lite"]), "--out", str(tmp_path / "r2")]) == 0
    assert pd.read_csv(tmp_path / "r2" / "summary.csv")["model"].tolist() == ["net_lite"]


def test_units_csv_reads_back_equal_to_the_result_files(tmp_path: Path) -> None:
    folders = _layers(tmp_path)
    out = tmp_path / "report"
    assert main(["report-all", *map(str, folders.values()), "--out", str(out)]) == 0
    units = pd.read_csv(out / "units.csv", keep_default_na=False)
    assert list(units.columns[:3]) == ["dataset", "model", "layer"]
    for folder in folders.values():
        result = read_result_file(next(folder.glob("*.csv")))
        mine = units[units["model"] == folder.name]
        assert len(mine) == result.units * len(result.categories)
        table = _by_unit(result.table)
        for cat in result.categories:
            rows = mine[mine["category"] == cat].sort_values("unit").reset_index(drop=True)
            assert rows["unit"].tolist() == table["unit"].tolist()
            assert rows["label"].tolist() == table[f"{cat}-label"].tolist()
            for field in ("truth", "activation", "intersect"):
                assert rows[field].tolist() == table[f"{cat}-{field}"].tolist(), (cat, field)
            assert np.array_equal(rows["iou"].to_numpy(), table[f"{cat}-iou"].to_numpy())  # exact, full precision
            assert rows["detector"].tolist() == detector_mask(table, 0.04).tolist()
        top = mine[mine["top"]].sort_values("unit")
        labelled = table[table["label"] != ""]
        assert (
            top[["unit", "category", "label"]].values.tolist()
            == labelled[["unit", "category", "label"]].values.tolist()
        )


def test_report_all_reads_every_layer_of_an_original_folder(tmp_path: Path, rows) -> None:
    for layer in ("conv4", "conv5"):
        write_layout(tmp_path / "caffenet" / f"{layer}-result.csv", rows, "original")
    assert main(["report-all", str(tmp_path / "caffenet"), "--out", str(tmp_path / "out")]) == 0
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary[["model", "layer"]].values.tolist() == [["caffenet", "conv4"], ["caffenet", "conv5"]]


def test_report_all_bad_input_exits_2(tmp_path: Path, rows, capsys) -> None:
    folder = write_layout(tmp_path / "a" / "result.csv", rows, "netdissect").parent
    assert main(["report-all", str(folder), "--name", "x", "--name", "y", "--out", str(tmp_path / "o")]) == 2
    assert "--name was given 2 times for 1 PATH" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report-all", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "holds no result.csv, tally.csv or <layer>-result.csv" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
