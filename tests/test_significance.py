"""The permutation test of every unit (docs/experiments.md §3): permuted counts equal a plain brute
force, planted detectors get the smallest p, positional units do not, and bad input exits 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from netdissect import pipeline
from netdissect.broden import BrodenDataset
from netdissect.cli import main
from netdissect.counts import load_counts
from netdissect.errors import NetDissectError
from netdissect.experiments.significance import (
    check_pairing,
    count_permutations,
    draw_permutations,
    label_table,
    p_values,
)
from tests.test_engine_helpers import _label_png, reference, write_tiny_broden
from tests.test_engine_planted import PLANTED


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_broden(tmp_path_factory.mktemp("sig") / "broden", n_images=12, seg=8, scale=2, seed=3)


def test_permutations_stay_within_segmentation_sizes_and_repeat_with_the_seed():
    sizes = np.array([[8, 8], [4, 4], [8, 8], [8, 8], [4, 4], [6, 6]])
    perms = draw_permutations(sizes, 30, seed=5)
    assert perms.shape == (31, 6) and np.array_equal(perms[0], np.arange(6))
    for perm in perms:
        assert sorted(perm) == list(range(6))
        assert (sizes[perm] == sizes).all()
    assert perms[5, 5] == 5  # the only 6x6 image stays where it is
    assert np.array_equal(perms, draw_permutations(sizes, 30, seed=5))
    assert not np.array_equal(perms, draw_permutations(sizes, 30, seed=6))
    assert len({tuple(p[[0, 2, 3]]) for p in perms}) == 6  # all orders of the 8x8 group occur


def test_pairing_images_of_other_sizes_is_refused():
    sizes = np.array([[8, 8], [4, 4], [8, 8]])
    with pytest.raises(NetDissectError, match=r"pairs the labels of image 0 .* 8x8\) with the masks of image 1"):
        check_pairing(np.array([[0, 1, 2], [1, 0, 2]]), sizes)
    with pytest.raises(NetDissectError, match="not a permutation"):
        check_pairing(np.array([[0, 0, 2]]), sizes)


@pytest.mark.parametrize("union", ["paper", "lite"])
def test_permuted_counts_equal_brute_force(tiny, union):
    rng = np.random.default_rng(2)
    acts = rng.standard_normal((12, 3, 4, 4)).astype(np.float32)
    acts[:, 2] = np.maximum(acts[:, 2], 0)  # ties at 0, like after a ReLU
    thresholds = np.array([np.quantile(acts[:, u].astype(np.float64), 0.8) for u in range(3)])
    ds = BrodenDataset(tiny.root, load_images=False)
    table = label_table([ds[i] for i in range(len(ds))], ds.num_labels, ds.primary, len(ds.categories))
    perms = draw_permutations(table.sizes, 4, seed=1)
    batches = [
        (rows, torch.from_numpy(acts[rows]), torch.from_numpy(acts[rows].max(axis=(2, 3))))
        for rows in (np.arange(0, 5), np.arange(5, 12))
    ]
    inter, cat_area = count_permutations(batches, perms, table, ds.primary, thresholds, 3, union)
    for k, perm in enumerate(perms):
        want = reference(acts[perm], tiny, union=union, thresholds=thresholds)  # image i meets masks of perm[i]
        assert np.array_equal(inter[k], want["I"]), k
        assert np.array_equal(cat_area[k], want["C"]), k
    assert not np.array_equal(inter[1], inter[0])


def test_p_values_count_the_permutations_at_least_as_high():
    null = np.array([[0.1, 0.5], [0.3, 0.5], [0.2, 0.6]])
    assert p_values(np.array([0.3, 0.5]), null).tolist() == [2 / 4, 4 / 4]
    assert p_values(np.array([0.31, 0.7]), null).tolist() == [1 / 4, 1 / 4]


def _planted_broden(root):
    """A tiny Broden whose images carry the labels the planted network of tests/test_engine_planted.py detects."""
    data = write_tiny_broden(root / "labels", n_images=16, seg=16, scale=1, seed=5)
    images = np.zeros((16, 16, 16, 3), np.uint8)
    for i, layers in enumerate(data.layers):
        images[i, ..., 0] = layers[1]
        images[i, ..., 1] = next((l for l in data.image_labels[i] if 13 <= l <= 15), 0)
        images[i, ..., 2] = layers[0]
    return write_tiny_broden(root / "broden", n_images=16, seg=16, scale=1, seed=5, images=images)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted network of tests/test_engine_planted.py dissected (q = 0.5) with K = 19."""
    root = tmp_path_factory.mktemp("planted")
    broden = _planted_broden(root)
    out = root / "out"
    spec = "tests.test_engine_planted:PlantedNet"
    pipeline.dissect(broden.root, spec, ["detect"], out, q=0.5, progress=False, permutations=19, alpha=0.05)
    return broden, out


def _rows(path):
    lines = path.read_text().splitlines()
    return lines[0].split(","), [line.split(",") for line in lines[1:]]


def test_planted_detectors_have_the_smallest_p(planted):
    _, out = planted
    header, rows = _rows(out / "detect" / "significance.csv")
    assert header == ["unit", "category", "label", "score", "p", "null_95", "null_99"]
    assert [int(r[0]) for r in rows] == list(range(1, len(PLANTED) + 2))
    for row, (_, _, name) in zip(rows, PLANTED):
        assert row[2] == name and float(row[3]) == pytest.approx(1.0)
        assert float(row[4]) == pytest.approx(1 / 20)
        assert float(row[5]) <= float(row[6]) < 1.0
    summary = json.loads((out / "detect" / "summary.json").read_text())
    assert summary["detectors"] == len(PLANTED)
    assert summary["significance"] == {
        "permutations": 19,
        "seed": 0,
        "alpha": 0.05,
        "min_p": 0.05,
        "significant_units": len(PLANTED),
        "significant_detectors": len(PLANTED),
    }
    null = np.load(out / "detect" / "null_scores.npy")
    assert null.shape == (19, len(PLANTED) + 1)


def test_fieldmap_masks_are_tested_as_counted_and_the_report_shows_p(tmp_path):
    """The test recounts the masks the tally counted, with the layer's field map (--upsample fieldmap),
    and dissect's layer report (written by default) shows each unit's p."""
    broden = _planted_broden(tmp_path)
    out = tmp_path / "out"
    spec = "tests.test_engine_planted:PlantedNet"
    summaries = pipeline.dissect(
        broden.root, spec, ["detect"], out, q=0.5, progress=False, permutations=19, alpha=0.05, upsample="fieldmap"
    )
    assert load_counts(out / "detect" / "counts.npz")["settings"]["upsample"] == "fieldmap"
    assert summaries["detect"]["significance"]["significant_detectors"] == len(PLANTED)
    page = (out / "detect" / "report" / "index.html").read_text()
    assert page.count('data-significant="1"') == len(PLANTED)


def test_same_seed_same_p_values(planted, tmp_path):
    broden, out = planted
    layer = out / "detect"
    first = (layer / "significance.csv").read_bytes()
    argv = ["significance", "--layer-dir", str(layer), "--permutations", "19", "--alpha", "0.05", "--no-progress"]
    assert main([*argv, "--seed", "0"]) == 0
    assert (layer / "significance.csv").read_bytes() == first
    null = np.load(layer / "null_scores.npy")
    assert main([*argv, "--seed", "1", "--dataset", str(broden.root), "--shards", str(out / "shards")]) == 0
    assert not np.array_equal(np.load(layer / "null_scores.npy"), null)
    assert main([*argv, "--seed", "0"]) == 0  # leave the module's fixture as it was


class TopUnit(nn.Module):
    """One unit that fires on the top quarter of every image, and one that fires on its bottom half."""

    def forward(self, x):
        top = torch.zeros_like(x[:, :1])
        top[:, :, : x.shape[2] // 4] = 1.0
        bottom = torch.zeros_like(x[:, :1])
        bottom[:, :, x.shape[2] // 2 :] = 1.0
        return torch.cat([top, bottom], dim=1)


def top_unit():
    return nn.Sequential(TopUnit())


def test_a_unit_at_a_fixed_position_is_not_significant(tmp_path):
    """The sky (object label 6) always fills the top quarter: the top unit has IoU 1 with it in every
    pairing, so the test cannot tell it from position (p = 1)."""
    data = write_tiny_broden(tmp_path / "labels", n_images=16, seg=16, scale=1, seed=8)
    for i, layers in enumerate(data.layers):
        obj = layers[1]
        obj[obj == 6] = 5
        obj[:4] = 6
        _label_png(tmp_path / "labels" / "images" / "src" / f"img{i:03d}_object.png", obj)
    out = tmp_path / "out"
    pipeline.dissect(data.root, "tests.test_significance:top_unit", ["0"], out, q=0.5, progress=False)
    assert main(["significance", "--layer-dir", str(out / "0"), "--permutations", "9", "--alpha", "0.1"]) == 0
    _, rows = _rows(out / "0" / "significance.csv")
    assert rows[0][2] == "sky" and float(rows[0][3]) > 0.99
    assert float(rows[0][4]) == 1.0  # every permutation scores as high
    assert float(rows[0][5]) > 0.99


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--permutations", "0"], ["--permutations 0", ">= 1"]),
        (["--permutations", "50"], ["smallest p-value", "1/51", "use --permutations 99"]),
        (["--permutations", "100", "--alpha", "1.5"], ["--alpha 1.5"]),
    ],
)
def test_bad_permutations_exit_2(planted, capsys, extra, words):
    _, out = planted
    assert main(["significance", "--layer-dir", str(out / "detect"), *extra]) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, err


def test_dissect_refuses_too_few_permutations_before_extracting(planted, tmp_path, capsys):
    broden, _ = planted
    argv = ["dissect", "--dataset", str(broden.root), "--model", "tests.test_engine_planted:PlantedNet"]
    assert main([*argv, "--layers", "detect", "--out", str(tmp_path / "o"), "--permutations", "20"]) == 2
    assert "no unit could be significant" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
