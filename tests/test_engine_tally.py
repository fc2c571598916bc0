"""The tally's mask shortcuts (runs of columns per cell row) against plain per-pixel bilinear masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from netdissect.masks import BILINEAR, first_above, grid_cells, masked_pixels
from netdissect.ops import expand_runs
from tests.test_engine_helpers import bilinear


def dense_masks(maps: np.ndarray, thresholds: np.ndarray, sh: int, sw: int) -> np.ndarray:
    """(A, sh*sw) bool: the reference masks, upsampling every pixel of every map."""
    return np.stack([(bilinear(m.astype(np.float64), sh, sw) > t).ravel() for m, t in zip(maps, thresholds)])


def engine_masks(maps: np.ndarray, thresholds: np.ndarray, sh: int, sw: int) -> np.ndarray:
    ys, xs = grid_cells(BILINEAR, maps.shape[1], maps.shape[2], sh, sw)
    pair, pixel = masked_pixels(torch.from_numpy(maps), torch.from_numpy(thresholds), ys, xs)
    got = np.zeros((len(maps), sh * sw), bool)
    got[pair.numpy(), pixel.numpy()] = True
    assert pair.numel() == got.sum(), "a pixel was listed twice"
    return got


@pytest.mark.parametrize(
    "h,w,sh,sw",
    [
        (7, 7, 112, 112),
        (7, 7, 113, 113),
        (14, 14, 112, 112),
        (28, 28, 112, 112),
        (1, 1, 112, 112),
        (2, 3, 113, 50),
        (9, 9, 5, 7),
    ],
)
def test_masks_equal_per_pixel_bilinear_at_ties(h, w, sh, sw):
    """Thresholds equal to upsampled values (pixels exactly at T are outside: strict >), to source
    values, to a plateau's level, and a map rounded so that whole rows and cells are flat."""
    rng = np.random.default_rng(h * 1000 + sh * 10 + sw)
    maps = rng.standard_normal((10, h, w)).astype(np.float32)
    maps[0] = np.round(maps[0])  # flat cells and rows (rise = 0)
    maps[1] = np.where(maps[1] > 0, 1.5, -1.0)  # two plateaus
    maps[2] *= 1e6  # large values: the margin scales with them
    maps[3] *= 1e-6
    thresholds = np.quantile(maps.reshape(10, -1).astype(np.float64), 0.9, axis=1)
    thresholds[0] = np.float64(maps[0].max())  # the plateau's own level: nothing is above
    thresholds[1] = 1.5 - 1e-12  # just under a plateau
    for a in (2, 3, 4, 5):  # exactly an upsampled value of the map
        values = bilinear(maps[a].astype(np.float64), sh, sw).ravel()
        thresholds[a] = values[rng.integers(values.size)]
    thresholds[6] = maps[6].ravel()[rng.integers(h * w)]  # a source value
    thresholds[7] = np.nextafter(np.float64(maps[7].max()), -np.inf)  # one ulp under the maximum
    expected = dense_masks(maps, thresholds, sh, sw)
    assert np.array_equal(engine_masks(maps, thresholds, sh, sw), expected)
    assert expected[:8].any()


def test_masks_of_every_unit_of_a_random_batch():
    """Many maps with top-1% thresholds (the dissection's regime), 7x7 maps at 112x112."""
    rng = np.random.default_rng(5)
    maps = np.maximum(rng.standard_normal((40, 7, 7)), 0).astype(np.float32) * rng.gamma(2, size=(40, 1, 1))
    maps = maps.astype(np.float32)
    thresholds = np.quantile(maps.reshape(40, -1).astype(np.float64), 0.8, axis=1)
    thresholds[::7] = 0.0  # ReLU zeros tie a zero threshold
    assert np.array_equal(engine_masks(maps, thresholds, 112, 112), dense_masks(maps, thresholds, 112, 112))


def test_first_above_equals_counting():
    """The first position of a rising row whose value exceeds a level, against listing the values."""
    rng = np.random.default_rng(0)
    low = torch.from_numpy(rng.standard_normal(500))
    rise = torch.from_numpy(np.abs(rng.standard_normal(500)))
    rise[:50] = 0.0  # flat rows
    n = torch.from_numpy(rng.integers(1, 17, 500))
    level = torch.from_numpy(rng.standard_normal(500))
    level[50:100] = low[50:100]  # level at the row's first value
    rise[50:60] = 0.0  # flat rows at the level: none above
    n[60:70] = 1  # one-pixel rows
    got = first_above(low, rise, n, level)
    for r in range(500):
        k = int(n[r])
        values = low[r] + rise[r] * torch.arange(k, dtype=torch.float64) / max(k - 1, 1)
        above = torch.nonzero(values > level[r]).flatten()
        expected = int(above[0]) if above.numel() else k
        if k > 1 and 0 < expected < k:  # away from rounding: the exact position
            assert abs(int(got[r]) - expected) <= 1 and (
                got[r] == expected or abs(float(values[expected] - level[r])) < 1e-12
            )
        else:
            assert int(got[r]) == expected, r


def test_expand_runs_by_hand():
    start, length, tag = torch.tensor([10, 0, 5, 7]), torch.tensor([3, 0, 1, 2]), torch.tensor([1, 2, 3, 4])
    items, tags = expand_runs(start, length, tag)
    assert items.tolist() == [10, 11, 12, 5, 7, 8] and tags.tolist() == [1, 1, 1, 3, 4, 4]
    empty, no_tags = expand_runs(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), tag[:0])
    assert empty.numel() == 0 and no_tags.numel() == 0
