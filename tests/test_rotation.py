"""Rotated bases (docs/experiments.md §1): Q and R(p) have the properties the spec names, a rotated
layer is dissected in the rotated basis, and power 0 changes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from netdissect import pipeline
from netdissect.cli import main
from netdissect.experiments.rotation import (
    fractional_rotation,
    random_rotation,
    rotate_maps,
    rotation_angles,
    rotation_matrix,
)
from netdissect.shards import read_npy_rows
from tests.test_engine_helpers import write_tiny_broden
from tests.test_engine_planted import PLANTED, Detect

EYE_TOL = 1e-12


@pytest.mark.parametrize("units", [2, 3, 8, 65])
def test_q_is_a_rotation_and_r_interpolates_it(units):
    q = random_rotation(units, seed=4)
    assert np.abs(q.T @ q - np.eye(units)).max() < EYE_TOL
    assert np.linalg.det(q) == pytest.approx(1.0, abs=1e-9)
    assert np.array_equal(fractional_rotation(q, 0.0), np.eye(units))
    assert np.array_equal(fractional_rotation(q, 1.0), q)
    # the Schur form rebuilds Q itself (R(1) without the shortcut)
    assert np.abs(fractional_rotation(q, 1 - 1e-15) - q).max() < 1e-10
    for p in (0.1, 0.35, 0.5, 0.9):
        r = fractional_rotation(q, p)
        assert np.abs(r.T @ r - np.eye(units)).max() < 1e-12
        assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-9)
    for p, s in ((0.2, 0.3), (0.5, 0.5), (0.25, 0.75), (0.1, 0.6)):
        product = fractional_rotation(q, p) @ fractional_rotation(q, s)
        assert np.abs(product - fractional_rotation(q, p + s)).max() < 1e-10


def test_pairs_of_minus_one_rotate_by_pi():
    q = np.diag([-1.0, 1.0, -1.0])  # det +1: a half turn in the plane of axes 0 and 2
    half = fractional_rotation(q, 0.5)
    assert np.abs(half @ half - q).max() < 1e-12
    assert np.abs(half.T @ half - np.eye(3)).max() < 1e-12
    _, planes = rotation_angles(q)
    assert [theta for *_, theta in planes] == [pytest.approx(np.pi)]


def test_same_seed_same_matrix_everywhere():
    a, b = random_rotation(6, seed=11), random_rotation(6, seed=11)
    assert np.array_equal(a, b)
    assert not np.allclose(a, random_rotation(6, seed=12))
    # recorded once on the development machine: numpy's Generator(PCG64) stream and the sign-fixed QR
    # (unique for a full-rank matrix) give these values on any machine, to rounding
    expected = np.array(
        [
            [0.0956676, -0.3346385, 0.9374779],
            [0.0798180, -0.9361860, -0.3423226],
            [0.9922080, 0.1075768, -0.0628525],
        ]
    )
    np.testing.assert_allclose(random_rotation(3, seed=0), expected, atol=1e-6)


def test_rotate_maps_is_the_matrix_product():
    rng = np.random.default_rng(0)
    maps = torch.from_numpy(rng.standard_normal((2, 4, 3, 5)).astype(np.float32))
    r = rotation_matrix(4, seed=1, power=0.7)
    got = rotate_maps(maps, torch.from_numpy(r)).numpy()
    want = np.einsum("cd,bdhw->bchw", r, maps.numpy().astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert rotation_matrix(4, seed=1, power=0) is None


class WidePlanted(nn.Module):
    """The planted indicator units of tests/test_engine_planted.py followed by 26 units that never fire
    (32 units), so that a rotation has many axes to spread a concept over."""

    def __init__(self):
        super().__init__()
        self.detect = Detect()

    def forward(self, x):
        maps = self.detect(x)
        return torch.cat([maps, torch.zeros(maps.shape[0], 32 - maps.shape[1], *maps.shape[2:])], dim=1)


def make_wide():
    return nn.Sequential(WidePlanted())


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    data = write_tiny_broden(root / "labels", n_images=16, seg=16, scale=1, seed=5)
    images = np.zeros((16, 16, 16, 3), np.uint8)
    for i, layers in enumerate(data.layers):
        images[i, ..., 0] = layers[1]
        images[i, ..., 1] = next((l for l in data.image_labels[i] if 13 <= l <= 15), 0)
        images[i, ..., 2] = layers[0]
    return write_tiny_broden(root / "broden", n_images=16, seg=16, scale=1, seed=5, images=images)


def _dissect(planted, out, rotation):
    return pipeline.dissect(
        planted.root, "tests.test_rotation:make_wide", ["0"], out, q=0.5, progress=False, rotation=rotation
    )


def _scores(layer_dir):
    rows = [r.split(",") for r in (layer_dir / "result.csv").read_text().splitlines()[1:]]
    return {int(r[0]): (r[2], float(r[3])) for r in rows}


def test_planted_detectors_are_found_unrotated_and_spread_when_rotated(planted, tmp_path):
    _dissect(planted, tmp_path / "p0", (7, 0.0))
    found = _scores(tmp_path / "p0" / "0")
    for unit, (_, _, name) in enumerate(PLANTED, start=1):
        assert found[unit][0] == name and found[unit][1] == pytest.approx(1.0, abs=1e-9)

    _dissect(planted, tmp_path / "p1", (7, 1.0))
    layer_dir = tmp_path / "p1" / "0"
    r = np.load(layer_dir / "rotation.npy")
    assert np.array_equal(r, rotation_matrix(32, 7, 1.0))
    assert json.loads((layer_dir / "summary.json").read_text())["settings"]["rotation"] == {"seed": 7, "power": 1.0}
    # stored activations are the rotated ones: a' = R·a
    plain = read_npy_rows(tmp_path / "p0" / "shards" / "0" / "0.act.npy", np.arange(16)).astype(np.float64)
    rotated = read_npy_rows(tmp_path / "p1" / "shards" / "0" / "0.act.npy", np.arange(16))
    np.testing.assert_allclose(rotated, np.einsum("cd,bdhw->bchw", r, plain), atol=1e-6)
    # each planted concept now lies across many axes: no rotated unit holds most of one concept's
    # direction, and no unit detects a planted concept exactly any more
    weights = r[:, : len(PLANTED)] ** 2  # share of concept c's direction on rotated axis u
    assert weights.max() < 0.5
    assert ((weights > 1 / 64).sum(axis=0) >= 8).all()
    assert max(score for _, score in _scores(layer_dir).values()) < 0.9


def test_power_zero_is_byte_identical_to_no_rotation(planted, tmp_path):
    _dissect(planted, tmp_path / "none", None)
    _dissect(planted, tmp_path / "zero", (3, 0.0))
    for name in ("shards/0/0.act.npy", "shards/0/0.imgmax.npy", "shards/0/0.topk.npy", "0/thresholds.npy"):
        assert (tmp_path / "none" / name).read_bytes() == (tmp_path / "zero" / name).read_bytes(), name
    assert (tmp_path / "none/0/result.csv").read_bytes() == (tmp_path / "zero/0/result.csv").read_bytes()
    assert np.array_equal(np.load(tmp_path / "zero" / "0" / "rotation.npy"), np.eye(32))
    assert not (tmp_path / "none" / "0" / "rotation.npy").exists()
    with np.load(tmp_path / "none/0/counts.npz") as a, np.load(tmp_path / "zero/0/counts.npz") as b:
        for key in ("G", "I", "C", "thresholds"):
            assert np.array_equal(a[key], b[key]), key


def one_unit():
    return nn.Sequential(nn.Conv2d(3, 1, 3, padding=1))


@pytest.mark.parametrize(
    "model, power, words",
    [
        ("tests.test_rotation:one_unit", "0.5", ["layer 0 has 1 unit", "two or more units"]),
        ("tests.test_rotation:make_wide", "1.5", ["--rotation-power 1.5", "from 0"]),
        ("tests.test_rotation:make_wide", "-0.1", ["--rotation-power -0.1"]),
    ],
)
def test_bad_rotations_exit_2(planted, tmp_path, capsys, model, power, words):
    out = tmp_path / "shard"
    args = ["extract", "--dataset", str(planted.root), "--model", model, "--layers", "0", "--out", str(out)]
    assert main([*args, "--rotation-power", power, "--no-progress"]) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, err
    assert not (out / "meta.json").exists()
