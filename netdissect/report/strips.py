"""Image strips: for every unit its top-k images, each shown as image × (0.2 + 0.8·mask).

The mask is the unit's activation map upsampled to the IMAGE size (bilinear, half-pixel centres,
``align_corners=False``) and compared with the unit's threshold (strict ``>``), spec/dissection.md §7.
Work is organised so that nothing is done twice: the top rows of all units are chosen first, each
needed activation row is read once, each needed image is decoded once, upsampling and blending run
as batched tensor operations, and one JPEG strip (k tiles side by side) is written per unit.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from netdissect.errors import NetDissectError
from netdissect.io import atomic_path

TILE_GAP = 4            # white pixels between two tiles of a strip
_READ_BYTES = 256 << 20  # activations read per call to maps_for_rows
_UNITS_PER_BATCH = 32    # units whose tiles are upsampled and blended together

MapsForRows = Callable[[np.ndarray], np.ndarray]
LoadImage = Callable[[int], "torch.Tensor | np.ndarray"]


def strip_name(unit: int) -> str:
    """File name of a unit's strip; ``unit`` is the 1-based number shown in result.csv and the page."""
    return f"unit_{unit:04d}.jpg"


def top_rows(imgmax: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k largest ``imgmax[:, u]`` per unit, largest first, ties: lower row first.

    ``imgmax`` is (N, U); returns int64 (U, min(k, N)). A partial partition finds each unit's k-th
    value; only units with a tie across that boundary need the (stable) full sort.
    """
    imgmax = np.asarray(imgmax)
    n, _ = imgmax.shape
    k = min(k, n)
    if k <= 0:
        return np.zeros((imgmax.shape[1], 0), dtype=np.int64)
    part = np.argpartition(-imgmax, k - 1, axis=0)[:k]                       # (k, U), unordered
    values = np.take_along_axis(imgmax, part, axis=0)
    kth = values.min(axis=0)                                                   # k-th largest per unit
    # sort the k candidates by (-value, row): lexsort's last key is primary
    order = np.lexsort((part, -values), axis=0)
    rows = np.take_along_axis(part, order, axis=0)
    tied = (imgmax >= kth).sum(axis=0) > k                                     # more rows than k reach the k-th value
    if tied.any():
        rows[:, tied] = np.argsort(-imgmax[:, tied], axis=0, kind="stable")[:k]
    return rows.T.astype(np.int64)


def gather_maps(top: np.ndarray, maps_for_rows: MapsForRows, read_bytes: int = _READ_BYTES) -> np.ndarray:
    """The maps a[top[u, j], u] as float32 (U, k, H, W), reading each needed row once.

    ``maps_for_rows(rows)`` returns the layer's activations (len(rows), U, H, W) for sorted global rows;
    it is called on chunks of rows so that memory stays near ``read_bytes``.
    """
    units, k = top.shape
    needed = np.unique(top)
    probe = np.asarray(maps_for_rows(needed[:1]))          # learn H, W (the row is read again below)
    if probe.ndim != 4 or probe.shape[:2] != (1, units):
        raise NetDissectError(f"activations: expected an array (rows, {units}, H, W) for a layer of {units} units "
                              f"(as many as result.csv has rows), got shape {probe.shape}. Check that --shards "
                              "and --layer-dir belong to the same model and layer.")
    h, w = probe.shape[2:]
    maps = np.empty((units, k, h, w), dtype=np.float32)
    per_call = max(1, read_bytes // max(1, units * h * w * 4))
    unit_index = np.broadcast_to(np.arange(units)[:, None], top.shape)
    for start in range(0, len(needed), per_call):
        rows = needed[start:start + per_call]
        acts = np.asarray(maps_for_rows(rows))
        if acts.shape != (len(rows), units, h, w):
            raise NetDissectError(f"activations: expected shape {(len(rows), units, h, w)} for rows "
                                  f"{rows[0]}..{rows[-1]}, got {acts.shape}; the shards look inconsistent.")
        hit = (top >= rows[0]) & (top <= rows[-1])
        maps[hit] = acts[np.searchsorted(rows, top[hit]), unit_index[hit]]
    return maps


def blend_tiles(images: torch.Tensor, maps: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """image × (0.2 + 0.8·mask) for a batch of tiles of one image size.

    ``images`` uint8 (P, 3, h, w); ``maps`` float (P, H, W); ``thresholds`` (P,). The mask is ``maps``
    upsampled to (h, w) by bilinear interpolation with ``align_corners=False``, > threshold. Where the
    mask is off, the pixel is round(image / 5), in exact integer arithmetic.
    """
    size = tuple(images.shape[-2:])
    up = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)
    mask = up > thresholds.to(torch.float64).view(-1, 1, 1, 1)                 # (P, 1, h, w), broadcast over RGB
    dimmed = torch.div(images.to(torch.int16) + 2, 5, rounding_mode="floor").to(torch.uint8)
    return torch.where(mask, images, dimmed)


def _as_chw_uint8(image: torch.Tensor | np.ndarray, row: int) -> torch.Tensor:
    image = torch.as_tensor(np.asarray(image)) if not isinstance(image, torch.Tensor) else image
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise NetDissectError(f"image of row {row}: expected a uint8 RGB tensor (3, height, width), got "
                              f"{tuple(image.shape)} {image.dtype}. Check the dataset with `netdissect broden check`.")
    return image


def load_images(rows: Sequence[int], load_image: LoadImage, workers: int = 2) -> dict[int, torch.Tensor]:
    """Decode every row once (threads: JPEG decoding releases the GIL); row -> uint8 (3, h, w)."""
    rows = [int(r) for r in rows]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        images = list(pool.map(load_image, rows))
    return {row: _as_chw_uint8(image, row) for row, image in zip(rows, images)}


def assemble_strip(tiles: Sequence[torch.Tensor], gap: int = TILE_GAP) -> np.ndarray:
    """Tiles (3, h_j, w_j) side by side, ``gap`` white columns between them; returns uint8 HWC."""
    height = max(t.shape[1] for t in tiles)
    width = sum(t.shape[2] for t in tiles) + gap * (len(tiles) - 1)
    strip = np.full((height, width, 3), 255, dtype=np.uint8)
    x = 0
    for tile in tiles:
        strip[: tile.shape[1], x: x + tile.shape[2]] = tile.permute(1, 2, 0).numpy()
        x += tile.shape[2] + gap
    return strip


def unit_tiles(top: np.ndarray, maps: np.ndarray, thresholds: np.ndarray,
               images: dict[int, torch.Tensor]) -> list[list[torch.Tensor]]:
    """Blended tiles of a batch of units: ``result[u][j]`` is top image j of unit u (3, h, w) uint8.

    ``top`` (U', k) rows, ``maps`` (U', k, H, W), ``thresholds`` (U',). Tiles of one image size are
    blended in one batched call, so mixed image sizes work and the common case is a single call.
    """
    units, k = top.shape
    flat_rows = top.reshape(-1)
    flat_maps = torch.from_numpy(maps.reshape(units * k, *maps.shape[2:]))
    flat_thresholds = torch.from_numpy(np.repeat(np.asarray(thresholds, dtype=np.float64), k))
    sizes = [tuple(images[int(r)].shape[1:]) for r in flat_rows]
    tiles: list[torch.Tensor | None] = [None] * len(flat_rows)
    for size in dict.fromkeys(sizes):
        which = [p for p, s in enumerate(sizes) if s == size]
        batch = torch.stack([images[int(flat_rows[p])] for p in which])
        blended = blend_tiles(batch, flat_maps[which], flat_thresholds[which])
        for p, tile in zip(which, blended):
            tiles[p] = tile
    return [tiles[u * k:(u + 1) * k] for u in range(units)]


def _write_strip(path: Path, tiles: Sequence[torch.Tensor], quality: int) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(assemble_strip(tiles)).save(tmp, format="JPEG", quality=quality)


def render_strips(folder: str | Path, top: np.ndarray, maps: np.ndarray, thresholds: np.ndarray,
                  load_image: LoadImage, *, quality: int = 85, workers: int = 2,
                  units_per_batch: int = _UNITS_PER_BATCH) -> list[str]:
    """Write one JPEG strip per unit into ``folder``; return the file names (unit order, 1-based names).

    ``top`` (U, k) rows from :func:`top_rows`, ``maps`` (U, k, H, W) from :func:`gather_maps`,
    ``thresholds`` (U,), ``load_image(row)`` -> uint8 (3, h, w). Each needed image is decoded once.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = load_images(np.unique(top), load_image, workers)
    names = [strip_name(u + 1) for u in range(top.shape[0])]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        in_flight: list = []             # JPEG writes of the previous batch; waiting on them bounds memory
        for start in range(0, top.shape[0], units_per_batch):
            stop = min(start + units_per_batch, top.shape[0])
            batch = unit_tiles(top[start:stop], maps[start:stop], thresholds[start:stop], images)
            for job in in_flight:
                job.result()
            in_flight = [pool.submit(_write_strip, folder / names[u], tiles, quality)
                         for u, tiles in zip(range(start, stop), batch) if tiles]
        for job in in_flight:
            job.result()
    return names
