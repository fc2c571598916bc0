"""Colour naming: RGB pixels -> the 11 Broden colour names (docs/broden-sources.md §5).

A colour table ``T`` is a (32, 32, 32) uint8 array of values 0..10 indexed by ``[R>>3, G>>3, B>>3]``;
the colour of a pixel is ``COLOR_NAMES[T[...]]`` and its local label number ``T[...] + 1``.

The original table (van de Weijer et al., TIP 2009) is external data that this package does not ship;
load it with :func:`load_color_table`. Without it, :func:`fallback_table` builds an approximate one
from the documented HSV rule (:func:`fallback_color_index`), evaluated at the lowest RGB value of each
bin (``bin * 8``); a dataset built with it is not Broden-identical.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from netdissect.errors import NetDissectError

COLOR_NAMES = ["black", "blue", "brown", "grey", "green", "orange", "pink", "purple", "red", "white", "yellow"]
"""Local colour numbers 1..11 in this order; label names are ``<color>-c``."""

ORIGINAL_TABLE_SHA256 = "9ea1d1d9ae234d2b2e2fdff7a5f59f305ec67299696532703d12e6f8b30a7300"
"""sha256 of the original table's 32,768 bytes in C order [r][g][b]."""

_C = {name: k for k, name in enumerate(COLOR_NAMES)}


def fallback_color_index(rgb: np.ndarray) -> np.ndarray:
    """The documented HSV fallback rule: (..., 3) RGB (0..255) -> colour index 0..10, vectorised.

    Hue bands (degrees) red [345,360)+[0,15), orange [15,40), yellow [40,70), green [70,170),
    blue [170,260), purple [260,320), pink [320,345); then, each later step overriding: brown if
    hue in [0,70)+[345,360) and v < 0.45; brown if hue in [15,50) and s < 0.45; pink if hue in
    [300,360)+[0,15), s < 0.40, v > 0.70; black if v < 0.20; finally if s < 0.12: black (v < 0.30),
    grey (v < 0.75), else white. v = max/255, s = (max-min)/max (0 when max = 0).
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high = rgb.max(axis=-1)
    low = rgb.min(axis=-1)
    delta = high - low
    v = high / 255.0
    s = np.divide(delta, high, out=np.zeros_like(high), where=high > 0)
    safe = np.where(delta > 0, delta, 1.0)
    hue = np.select([high == r, high == g], [((g - b) / safe) % 6.0, (b - r) / safe + 2.0], (r - g) / safe + 4.0) * 60.0
    hue = np.where(delta > 0, hue % 360.0, 0.0)

    bands = [
        (345, 360, "red"),
        (0, 15, "red"),
        (15, 40, "orange"),
        (40, 70, "yellow"),
        (70, 170, "green"),
        (170, 260, "blue"),
        (260, 320, "purple"),
        (320, 345, "pink"),
    ]
    out = np.zeros(hue.shape, dtype=np.uint8)
    for start, stop, name in bands:
        out[(hue >= start) & (hue < stop)] = _C[name]
    warm = (hue < 70) | (hue >= 345)
    out[warm & (v < 0.45)] = _C["brown"]
    out[(hue >= 15) & (hue < 50) & (s < 0.45)] = _C["brown"]
    out[((hue >= 300) | (hue < 15)) & (s < 0.40) & (v > 0.70)] = _C["pink"]
    out[v < 0.20] = _C["black"]
    grey = s < 0.12
    out[grey] = np.where(v[grey] < 0.30, _C["black"], np.where(v[grey] < 0.75, _C["grey"], _C["white"]))
    return out


@lru_cache(maxsize=1)
def fallback_table() -> np.ndarray:
    """The (32, 32, 32) table of the fallback rule, each bin named by its lowest value (bin * 8)."""
    levels = np.arange(32) * 8
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1)
    table = fallback_color_index(grid)
    table.setflags(write=False)
    return table


def load_color_table(path: str | Path) -> np.ndarray:
    """Load a user-supplied colour table (.npy, shape (32, 32, 32), integer values 0..10, any memory order)."""
    path = Path(path)
    try:
        table = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise NetDissectError(f"{path}: cannot read a colour table ({err}); expected a .npy file") from err
    if table.shape != (32, 32, 32) or not np.issubdtype(table.dtype, np.integer) or table.min() < 0 or table.max() > 10:
        raise NetDissectError(
            f"{path}: a colour table is a (32, 32, 32) integer array with values 0..10 indexed "
            f"[R>>3, G>>3, B>>3]; found shape {table.shape}, dtype {table.dtype}"
        )
    return np.ascontiguousarray(table, dtype=np.uint8)


def is_original_table(table: np.ndarray) -> bool:
    """True if ``table`` is byte for byte the original Broden table (see ORIGINAL_TABLE_SHA256)."""
    data = np.ascontiguousarray(table, dtype=np.uint8).tobytes()
    return hashlib.sha256(data).hexdigest() == ORIGINAL_TABLE_SHA256


def name_colors(rgb: np.ndarray, table: np.ndarray | None = None) -> np.ndarray:
    """(..., 3) uint8 RGB -> colour index 0..10 per pixel via ``table[R>>3, G>>3, B>>3]``
    (default: :func:`fallback_table`). Add 1 for the local label number."""
    table = fallback_table() if table is None else table
    bins = np.asarray(rgb, dtype=np.uint8) >> 3
    return table[bins[..., 0], bins[..., 1], bins[..., 2]]
