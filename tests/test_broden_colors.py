"""Colour naming: the documented anchors, the fallback rule against a per-pixel reference, tables."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import pytest

from netdissect.broden.colors import (
    COLOR_NAMES,
    fallback_color_index,
    fallback_table,
    is_original_table,
    load_color_table,
    name_colors,
)
from netdissect.errors import NetDissectError

ANCHORS = [
    ((255, 0, 0), "red"),
    ((0, 255, 0), "green"),
    ((0, 0, 255), "blue"),
    ((255, 255, 0), "yellow"),
    ((255, 128, 0), "orange"),
    ((128, 64, 0), "orange"),
    ((100, 60, 30), "brown"),
    ((200, 160, 120), "brown"),
    ((255, 0, 255), "purple"),
    ((128, 0, 128), "purple"),
    ((255, 192, 203), "pink"),
    ((0, 128, 128), "blue"),
]


@pytest.mark.parametrize("rgb, name", ANCHORS)
def test_anchors(rgb: tuple[int, int, int], name: str) -> None:
    assert COLOR_NAMES[name_colors(np.array(rgb, np.uint8))] == name


def test_documented_miss_of_the_fallback() -> None:
    """docs/broden-sources.md §5: the fallback passes every anchor except (150,100,50) (brown in the real table)."""
    assert COLOR_NAMES[name_colors(np.array([150, 100, 50], np.uint8))] == "orange"


def test_grey_axis_bins() -> None:
    values = np.arange(256, dtype=np.uint8)
    names = np.array(COLOR_NAMES)[name_colors(np.stack([values] * 3, axis=-1))]
    assert set(names[:80]) == {"black"} and set(names[80:192]) == {"grey"} and set(names[192:]) == {"white"}


def reference_rule(r: int, g: int, b: int) -> str:
    """The fallback rule for one pixel, written out plainly with colorsys."""
    h = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)[0] * 360
    v = max(r, g, b) / 255
    s = (max(r, g, b) - min(r, g, b)) / max(r, g, b) if max(r, g, b) else 0.0  # exact, unlike colorsys
    if h >= 345 or h < 15:
        name = "red"
    else:
        name = next(
            n
            for lo, hi, n in [
                (15, 40, "orange"),
                (40, 70, "yellow"),
                (70, 170, "green"),
                (170, 260, "blue"),
                (260, 320, "purple"),
                (320, 345, "pink"),
            ]
            if lo <= h < hi
        )
    if (h < 70 or h >= 345) and v < 0.45:
        name = "brown"
    if 15 <= h < 50 and s < 0.45:
        name = "brown"
    if (h >= 300 or h < 15) and s < 0.40 and v > 0.70:
        name = "pink"
    if v < 0.20:
        name = "black"
    if s < 0.12:
        name = "black" if v < 0.30 else "grey" if v < 0.75 else "white"
    return name


def test_vectorised_rule_matches_reference() -> None:
    rng = np.random.default_rng(0)
    pixels = np.concatenate(
        [
            rng.integers(0, 256, (3000, 3)),
            np.repeat(rng.integers(0, 256, (500, 1)), 3, axis=1) + rng.integers(-12, 13, (500, 3)),
        ]
    )
    pixels = np.clip(pixels, 0, 255)
    got = np.array(COLOR_NAMES)[fallback_color_index(pixels)]
    assert list(got) == [reference_rule(*p) for p in pixels.tolist()]


def test_fallback_table_is_the_rule_at_bin_starts() -> None:
    table = fallback_table()
    assert table.shape == (32, 32, 32) and table.dtype == np.uint8
    assert table[18, 12, 6] == fallback_color_index(np.array([144, 96, 48]))
    assert set(np.unique(table)) == set(range(11))
    assert not is_original_table(table)


def test_user_table_is_indexed_r_g_b(tmp_path: Path) -> None:
    table = np.zeros((32, 32, 32), np.uint8)
    table[31, 2, 0] = 7
    table[0, 2, 31] = 3
    np.save(tmp_path / "t.npy", np.asfortranarray(table))  # the original ships Fortran order
    loaded = load_color_table(tmp_path / "t.npy")
    pixels = np.array([[255, 16, 0], [0, 16, 255], [16, 255, 0]], np.uint8)
    assert name_colors(pixels, loaded).tolist() == [7, 3, 0]


@pytest.mark.parametrize(
    "bad", [np.zeros((32, 32), np.uint8), np.full((32, 32, 32), 11, np.uint8), np.zeros((32, 32, 32), np.float32)]
)
def test_bad_user_table(tmp_path: Path, bad: np.ndarray) -> None:
    np.save(tmp_path / "t.npy", bad)
    with pytest.raises(NetDissectError, match="t.npy"):
        load_color_table(tmp_path / "t.npy")
