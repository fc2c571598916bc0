"""The fieldmap upsampling (docs/dissection.md §3) against a plain brute force: knots, masks at ties,
the counts of a whole dissection under both union rules, the report's masks at the image size, and
the refusals (a layer without a field map, knots that would coincide)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.interpolate import RectBivariateSpline
from torch import nn

from netdissect import pipeline
from netdissect.counts import load_counts
from netdissect.errors import NetDissectError
from netdissect.masks import FieldMapUpsampling, fieldmap_knots, grid_cells, masked_pixels
from netdissect.models.fieldmap import FieldMap
from netdissect.report.strips import tile_masks
from tests.test_engine_helpers import fieldmap_upsample, reference, write_tiny_broden

torch.set_num_threads(1)


def spec_knots(field: FieldMap, axis: int, n: int, r: int) -> list[int]:
    """c_k = (size // 2 + offset) // r + k·(step // r), written out as docs/dissection.md §3 says."""
    return [(field.size[axis] // 2 + field.offset[axis]) // r + k * (field.step[axis] // r) for k in range(n)]


def brute_force_values(a: np.ndarray, field: FieldMap, sh: int, sw: int, image_width: int) -> np.ndarray:
    r = round(image_width / sw)
    h, w = a.shape
    return fieldmap_upsample(a, spec_knots(field, 0, h, r), spec_knots(field, 1, w, r), sh, sw)


def engine_masks(mode, maps: np.ndarray, thresholds: np.ndarray, sh: int, sw: int) -> np.ndarray:
    ys, xs = grid_cells(mode, maps.shape[1], maps.shape[2], sh, sw)
    pair, pixel = masked_pixels(torch.from_numpy(maps), torch.from_numpy(thresholds), ys, xs)
    got = np.zeros((len(maps), sh * sw), bool)
    got[pair.numpy(), pixel.numpy()] = True
    assert pair.numel() == got.sum(), "a pixel was listed twice"
    return got


def test_caffenet_conv5_knots():
    """CaffeNet conv5 (-64, 163, 16) on 113-pixel segmentations of 227-pixel images: 8, 16, ..., 104."""
    assert fieldmap_knots(-64, 163, 16, 13, 2).tolist() == list(range(8, 105, 8))
    ys, xs = FieldMapUpsampling(FieldMap((-64, -64), (163, 163), (16, 16)), 227).tables(13, 13, 113, 113)
    assert (ys.i0[:9] == 0).all() and (ys.w[:9] == 0).all()  # up to the first knot: knot 0's value
    assert ys.w[16] == 1.0 and ys.i1[16] == 1 and ys.w[12] == 0.5  # the knot itself; half way
    assert ys.i1[104] == 12 and ys.w[104] == 1.0  # the last knot
    assert (ys.i0[105:] == 12).all() and (ys.i1[105:] == 12).all() and (ys.w[105:] == 0).all()  # then its value


CASES = [  # field map, map (h, w), segmentation (sh, sw), image width
    (FieldMap((-64, -64), (163, 163), (16, 16)), (13, 13), (113, 113), 227),  # CaffeNet conv5
    (FieldMap((-66, -66), (163, 163), (16, 16)), (13, 13), (112, 112), 224),  # torchvision alexnet features.11
    (FieldMap((-1, -1), (5, 5), (2, 2)), (15, 15), (16, 16), 32),  # knots 0..14: at the grid's first pixel
    (FieldMap((0, 0), (3, 3), (2, 2)), (8, 8), (8, 8), 16),  # every pixel a knot, the last at the grid's edge
    (FieldMap((-217, -217), (435, 435), (32, 32)), (7, 7), (112, 112), 224),  # resnet layer4
    (FieldMap((-11, -11), (49, 49), (24, 24)), (1, 1), (16, 16), 32),  # a 1x1 map: one knot, constant
    (FieldMap((-300, 40), (9, 9), (12, 6)), (4, 5), (20, 30), 60),  # knots before / past the grid
    (FieldMap((0, 0), (1, 1), (6, 6)), (3, 3), (10, 10), 30),  # r = 3
]


@pytest.mark.parametrize("field,hw,shw,image_width", CASES)
def test_masks_equal_the_per_pixel_rule_at_ties(field, hw, shw, image_width):
    (h, w), (sh, sw) = hw, shw
    rng = np.random.default_rng(h * 100 + sh)
    maps = rng.standard_normal((10, h, w)).astype(np.float32)
    maps[0] = np.round(maps[0])  # flat cells and rows
    maps[1] = np.where(maps[1] > 0, 1.5, -1.0)  # two plateaus
    maps[2] *= 1e6
    maps[3] *= 1e-6
    values = [brute_force_values(m.astype(np.float64), field, sh, sw, image_width) for m in maps]
    thresholds = np.quantile(maps.reshape(10, -1).astype(np.float64), 0.7, axis=1)
    thresholds[0] = np.float64(maps[0].max())  # a plateau's own level: nothing above it
    thresholds[1] = 1.5 - 1e-12
    for a in (2, 3, 4, 5):  # exactly an interpolated value
        thresholds[a] = values[a].ravel()[rng.integers(sh * sw)]
    thresholds[6] = maps[6].ravel()[rng.integers(h * w)]  # a knot's value
    thresholds[7] = np.nextafter(np.float64(maps[7].max()), -np.inf)
    expected = np.stack([(v > t).ravel() for v, t in zip(values, thresholds)])
    got = engine_masks(FieldMapUpsampling(field, image_width), maps, thresholds, sh, sw)
    assert np.array_equal(got, expected)
    assert expected.any() and not expected.all()
    if h > 1 and w > 1:  # the spec's description: scipy's linear spline through the knots, clamped
        r = round(image_width / sw)
        ky, kx = spec_knots(field, 0, h, r), spec_knots(field, 1, w, r)
        spline = RectBivariateSpline(ky, kx, maps[4].astype(np.float64), kx=1, ky=1)
        np.testing.assert_allclose(spline(np.arange(sh), np.arange(sw)), values[4], rtol=0, atol=1e-12)


def test_report_masks_at_the_image_size():
    """In the report the same rule runs on the image's own grid: r = 1, knots at the field centres."""
    field = FieldMap((-3, -3), (17, 17), (8, 8))
    rng = np.random.default_rng(3)
    maps = rng.standard_normal((6, 3, 3)).astype(np.float32)
    thresholds = np.quantile(maps.reshape(6, -1).astype(np.float64), 0.6, axis=1)
    got = tile_masks(maps, (32, 32), thresholds, FieldMapUpsampling(field, 32)).numpy()
    for m, t, mask in zip(maps, thresholds, got):
        assert spec_knots(field, 0, 3, 1) == [5, 13, 21]
        assert np.array_equal(mask, fieldmap_upsample(m.astype(np.float64), [5, 13, 21], [5, 13, 21], 32, 32) > t)
    assert got.any() and not got.all()


def make_model() -> nn.Module:
    """Windows of every kind: strided convolution, max pooling, unpadded convolution, a 1x1 map; then
    a flat output, which has no field map."""
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 4, 5, stride=2, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(4, 5, 3, stride=2),
        nn.Conv2d(5, 6, 3, padding=1),
        nn.AvgPool2d(3),
        nn.Flatten(),
    )


SPEC = "tests.test_engine_fieldmap:make_model"
FIELDS = {  # by hand, composing (offset, size, step) layer after layer on 32-pixel images
    "0": FieldMap((-1, -1), (5, 5), (2, 2)),  # 15x15 maps: knots 0..14 on the 16-pixel grid
    "2": FieldMap((-3, -3), (9, 9), (4, 4)),  # 8x8: knots 0, 2, .., 14
    "3": FieldMap((-3, -3), (17, 17), (8, 8)),  # 3x3: knots 2, 6, 10
    "4": FieldMap((-11, -11), (33, 33), (8, 8)),  # 3x3: knots 2, 6, 10
    "5": FieldMap((-11, -11), (49, 49), (24, 24)),  # 1x1: one knot
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_broden(tmp_path_factory.mktemp("tiny") / "broden", n_images=10, seg=16, scale=2, seed=7)


@pytest.mark.parametrize("union", ["paper", "lite"])
def test_dissect_with_fieldmap_equals_brute_force(tiny, tmp_path, union):
    out = tmp_path / "out"
    layers = list(FIELDS)
    pipeline.dissect(tiny.root, SPEC, layers, out, q=0.1, union=union, upsample="fieldmap", progress=False)
    meta = json.loads((out / "shards" / "0" / "meta.json").read_text())
    for layer in layers:
        field = FIELDS[layer]
        assert meta["layers"][layer]["field_map"] == {
            "offset": list(field.offset),
            "size": list(field.size),
            "step": list(field.step),
        }
        acts = np.load(out / "shards" / "0" / f"{layer}.act.npy")
        ref = reference(
            acts, tiny, q=0.1, union=union, upsample=lambda a, sh, sw, f=field: brute_force_values(a, f, sh, sw, 32)
        )
        counts = load_counts(out / layer / "counts.npz")
        for key in ("G", "I", "C"):
            assert np.array_equal(counts[key], ref[key]), (layer, key)
        assert counts["I"].sum() > 0
        settings = json.loads((out / layer / "summary.json").read_text())["settings"]
        assert settings["upsample"] == "fieldmap" and settings["field_map"] == meta["layers"][layer]["field_map"]
    # and bilinear counts differ: the rule matters
    pipeline.dissect(tiny.root, SPEC, ["3"], tmp_path / "bilinear", q=0.1, union=union, progress=False)
    bilinear = load_counts(tmp_path / "bilinear" / "3" / "counts.npz")
    assert not np.array_equal(bilinear["I"], load_counts(out / "3" / "counts.npz")["I"])


def netdissect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netdissect", *args], capture_output=True, text=True)


def test_fieldmap_refuses_a_layer_without_one(tiny, tmp_path):
    """No spatial map: exit 2 naming the layer and why, suggesting bilinear, and no results."""
    out = tmp_path / "out"
    run = netdissect(
        "dissect", "--dataset", str(tiny.root), "--model", SPEC, "--layers", "4,6", "--out", str(out),
        "--upsample", "fieldmap", "--quantile", "0.1", "--no-progress",
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "layer 6 has no field map: flatten in 6 leaves no spatial map (its output is 1x6)" in run.stderr
    assert "Use --upsample bilinear for this layer" in run.stderr
    assert not list(out.glob("*/result.csv")) and not (out / "4" / "counts.npz").exists()  # refused before any tally
    # the tally command reads the reason from the shard's meta.json
    pipeline.quantile([out / "shards" / "0"], "6", tmp_path / "six")
    run = netdissect(
        "tally", "--dataset", str(tiny.root), "--shard", str(out / "shards" / "0"), "--layer", "6",
        "--thresholds", str(tmp_path / "six" / "thresholds.npy"), "--out", str(tmp_path / "six" / "t.npz"),
        "--upsample", "fieldmap",
    )  # fmt: skip
    assert run.returncode == 2 and "layer 6 has no field map: " in run.stderr, run.stderr
    assert not (tmp_path / "six" / "t.npz").exists()


def test_fieldmap_refuses_knots_that_coincide(tiny, tmp_path):
    """A stride-1 layer on segmentations half the image size: step 1 // r 2 = 0."""
    shard = tmp_path / "s"
    pipeline.extract(tiny.root, "tests.test_engine_reference:make_model", ["0"], 0, 1, shard, quantile=0.1)
    pipeline.quantile([shard], "0", tmp_path / "l")
    with pytest.raises(NetDissectError, match=r"layer 0: its field map's step 1 is smaller than the reduction r = 2"):
        pipeline.tally(
            tiny.root, shard, "0", tmp_path / "l" / "thresholds.npy", tmp_path / "t.npz", upsample="fieldmap"
        )
    assert not (tmp_path / "t.npz").exists()
