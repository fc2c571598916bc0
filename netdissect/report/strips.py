"""Image strips: for every unit its top-k images, each shown as image × (0.2 + 0.8·mask).

The mask is the unit's activation map upsampled to the IMAGE size with the upsampling of the counts
(bilinear or fieldmap) and compared with the unit's threshold (strict ``>``), docs/dissection.md §7:
the tally's own mask decision (:mod:`netdissect.masks`, float64), on the image's grid.
Nothing is done twice: the top rows of all units are chosen first, each needed activation row is read
once, each needed image is decoded once (and dropped after the last unit that shows it), masks are
upsampled in batches on the tensor side, and each unit's strip (k tiles side by side) is composed
straight into its canvas (channel-first, so masked copies are contiguous loops) and written as one
JPEG by a thread pool (Pillow's JPEG encoder releases the GIL).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from netdissect.defaults import JPEG_QUALITY, REPORT_THREADS
from netdissect.errors import NetDissectError
from netdissect.io import atomic_path
from netdissect.masks import BILINEAR, grid_cells, masked_pixels

TILE_GAP = 4  # white pixels between two tiles of a strip
_READ_BYTES = 256 << 20  # activations read per call to maps_for_rows
_UNITS_PER_BATCH = 32  # units whose masks are upsampled together

MapsForRows = Callable[[np.ndarray], np.ndarray]
LoadImage = Callable[[int], "torch.Tensor | np.ndarray"]


def strip_name(unit: int) -> str:
    """File name of a unit's strip; ``unit`` is the 1-based number shown in result.csv and the page."""
    return f"unit_{unit:04d}.jpg"


def top_rows(imgmax: np.ndarray, k: int, units_per_chunk: int = 256) -> np.ndarray:
    """Rows of the k largest ``imgmax[:, u]`` per unit, largest first, ties: lower row first.

    ``imgmax`` is (N, U); returns int64 (U, min(k, N)). Units go in chunks (memory stays at a few
    copies of N × chunk); a partial partition finds each unit's k-th value, and only units with a tie
    across that boundary need the (stable) full sort.
    """
    imgmax = np.asarray(imgmax)
    n, units = imgmax.shape
    k = min(k, n)
    top = np.zeros((units, k), dtype=np.int64)
    if k == 0:
        return top
    for start in range(0, units, units_per_chunk):
        negative = -np.ascontiguousarray(imgmax[:, start : start + units_per_chunk].T)  # (Uc, N), exact
        part = np.argpartition(negative, k - 1, axis=1)[:, :k]  # the k smallest, unordered
        values = np.take_along_axis(negative, part, axis=1)
        order = np.lexsort((part, values), axis=1)  # by (-imgmax, row)
        rows = np.take_along_axis(part, order, axis=1)
        tied = (negative <= values.max(axis=1, keepdims=True)).sum(axis=1) > k  # more than k reach the k-th
        if tied.any():
            rows[tied] = np.argsort(negative[tied], axis=1, kind="stable")[:, :k]
        top[start : start + len(rows)] = rows
    return top


def gather_maps(top: np.ndarray, maps_for_rows: MapsForRows, read_bytes: int = _READ_BYTES) -> np.ndarray:
    """The maps a[top[u, j], u] as float32 (U, k, H, W), reading each needed row once.

    ``maps_for_rows(rows)`` returns the layer's activations (len(rows), U, H, W) for sorted global rows;
    it is called on chunks of rows so that memory stays near ``read_bytes``.
    """
    units, k = top.shape
    needed = np.unique(top)
    probe = np.asarray(maps_for_rows(needed[:1]))  # learn H, W (the row is read again below)
    if probe.ndim != 4 or probe.shape[:2] != (1, units):
        raise NetDissectError(
            f"activations: expected an array (rows, {units}, H, W) for a layer of {units} units "
            f"(as many as result.csv has rows), got shape {probe.shape}. Check that --shards "
            "and --layer-dir belong to the same model and layer."
        )
    h, w = probe.shape[2:]
    maps = np.empty((units, k, h, w), dtype=np.float32)
    per_call = max(1, read_bytes // max(1, units * h * w * 4))
    unit_index = np.broadcast_to(np.arange(units)[:, None], top.shape)
    for start in range(0, len(needed), per_call):
        rows = needed[start : start + per_call]
        acts = np.asarray(maps_for_rows(rows))
        if acts.shape != (len(rows), units, h, w):
            raise NetDissectError(
                f"activations: expected shape {(len(rows), units, h, w)} for rows "
                f"{rows[0]}..{rows[-1]}, got {acts.shape}; the shards look inconsistent."
            )
        hit = (top >= rows[0]) & (top <= rows[-1])
        maps[hit] = acts[np.searchsorted(rows, top[hit]), unit_index[hit]]
    return maps


def tile_masks(
    maps: torch.Tensor | np.ndarray, size: tuple[int, int], thresholds: np.ndarray, upsample=BILINEAR
) -> torch.Tensor:
    """Masks of a batch of tiles of one image size: bool (P, h, w).

    ``maps`` (P, H, W) upsampled to ``size`` = (h, w) by ``upsample`` (a mode of :mod:`netdissect.masks`)
    and compared with ``thresholds`` (P,): exactly the tally's decision, on the image's grid."""
    maps = torch.as_tensor(np.asarray(maps, dtype=np.float32))
    h, w = size
    ys, xs = grid_cells(upsample, maps.shape[1], maps.shape[2], h, w)
    pair, pixel = masked_pixels(maps, torch.from_numpy(np.asarray(thresholds, dtype=np.float64)), ys, xs)
    masks = torch.zeros(maps.shape[0] * h * w, dtype=torch.bool)
    masks[pair * (h * w) + pixel] = True
    return masks.view(-1, h, w)


def compose_strip(
    images: Sequence[np.ndarray], dimmed: Sequence[np.ndarray], masks: Sequence[np.ndarray], gap: int = TILE_GAP
) -> np.ndarray:
    """Tiles image × (0.2 + 0.8·mask) side by side, ``gap`` white columns between them.

    ``images`` and ``dimmed`` (their :func:`dim` versions) uint8 (3, h_j, w_j), ``masks`` bool (h_j, w_j);
    returns uint8 (3, max h, Σw + gaps). Channel-first keeps the masked copy a fast contiguous loop.
    """
    height = max(image.shape[1] for image in images)
    width = sum(image.shape[2] for image in images) + gap * (len(images) - 1)
    strip = np.full((3, height, width), 255, dtype=np.uint8)
    x = 0
    for image, dark, mask in zip(images, dimmed, masks):
        _, h, w = image.shape
        tile = strip[:, :h, x : x + w]
        np.copyto(tile, dark)
        np.copyto(tile, image, where=mask)
        x += w + gap
    return strip


def dim(image: np.ndarray) -> np.ndarray:
    """round(0.2 · image) for a uint8 array, exactly: what a pixel outside the mask shows.

    (2x + 5) // 10 = floor(x/5 + 1/2); x/5 never ends in exactly .5, so this is the rounding.
    """
    return ((image.astype(np.uint16) * 2 + 5) // 10).astype(np.uint8)


def strip_image(strip: np.ndarray) -> Image.Image:
    """A channel-first uint8 strip (3, h, w) as an RGB Pillow image (Pillow interleaves the planes)."""
    return Image.merge("RGB", [Image.fromarray(plane) for plane in strip])


def _as_chw_uint8(image: torch.Tensor | np.ndarray, row: int) -> np.ndarray:
    array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[0] != 3:
        raise NetDissectError(
            f"image of row {row}: expected a uint8 RGB tensor (3, height, width), got "
            f"{tuple(array.shape)} {array.dtype}. Check the dataset with `netdissect broden check`."
        )
    return np.ascontiguousarray(array)


def load_images(
    rows: Sequence[int], load_image: LoadImage, threads: int = REPORT_THREADS
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Decode every row once (threads: JPEG decoding releases the GIL).

    Returns row -> (image, dimmed image), both contiguous uint8 (3, h, w).
    """

    def load(row: int) -> tuple[np.ndarray, np.ndarray]:
        image = _as_chw_uint8(load_image(row), row)
        return image, dim(image)

    rows = [int(r) for r in rows]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        return dict(zip(rows, pool.map(load, rows)))


def unit_masks(
    top: np.ndarray, maps: np.ndarray, thresholds: np.ndarray, sizes: np.ndarray, upsample=BILINEAR
) -> list[list[np.ndarray]]:
    """Masks of a batch of units: ``result[u][j]`` is bool (h, w) for top image j of unit u.

    ``top`` (U', k) rows, ``maps`` (U', k, H, W), ``thresholds`` (U',), ``sizes`` (U', k, 2) the
    (height, width) of each tile's image, ``upsample`` the mode of :func:`tile_masks`. Tiles of one
    image size are upsampled in one batched call, so mixed image sizes work and the common case is a
    single call.
    """
    units, k = top.shape
    flat_maps = maps.reshape(units * k, *maps.shape[2:])
    flat_thresholds = np.repeat(np.asarray(thresholds, dtype=np.float64), k)
    sizes = np.asarray(sizes).reshape(-1, 2)
    masks: list[np.ndarray | None] = [None] * (units * k)
    for size in np.unique(sizes, axis=0):
        which = np.flatnonzero((sizes == size).all(axis=1))
        batch = tile_masks(flat_maps[which], (int(size[0]), int(size[1])), flat_thresholds[which], upsample).numpy()
        for p, mask in zip(which, batch):
            masks[p] = mask
    return [masks[u * k : (u + 1) * k] for u in range(units)]


def _write_strip(
    path: Path, images: Sequence[tuple[np.ndarray, np.ndarray]], masks: Sequence[np.ndarray], quality: int
) -> None:
    strip = compose_strip([image for image, _ in images], [dark for _, dark in images], masks)
    with atomic_path(path) as tmp:
        strip_image(strip).save(tmp, format="JPEG", quality=quality)


def render_strips(
    folder: str | Path,
    top: np.ndarray,
    maps: np.ndarray,
    thresholds: np.ndarray,
    load_image: LoadImage,
    *,
    quality: int = JPEG_QUALITY,
    threads: int = REPORT_THREADS,
    units_per_batch: int = _UNITS_PER_BATCH,
    upsample=BILINEAR,
) -> list[str]:
    """Write one JPEG strip per unit into ``folder``; return the file names (unit order, 1-based names).

    ``top`` (U, k) rows from :func:`top_rows`, ``maps`` (U, k, H, W) from :func:`gather_maps`,
    ``thresholds`` (U,), ``load_image(row)`` -> uint8 (3, h, w), ``upsample`` the mode of the masks
    (:func:`tile_masks`). Units go in batches; a batch decodes the images no earlier batch needed, and
    an image is dropped after the last batch that shows it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    units = top.shape[0]
    names = [strip_name(u + 1) for u in range(units)]
    if top.shape[1] == 0:
        return []
    batch_of_unit = np.arange(units) // units_per_batch
    rows, first = np.unique(top, return_index=True)  # top is (U, k): flat index // k = unit
    last = np.zeros(len(rows), dtype=np.int64)
    np.maximum.at(last, np.searchsorted(rows, top.reshape(-1)), np.repeat(batch_of_unit, top.shape[1]))
    first = batch_of_unit[first // top.shape[1]]
    images: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    with ThreadPoolExecutor(max(1, threads)) as pool:
        in_flight: list = []
        for batch, start in enumerate(range(0, units, units_per_batch)):
            stop = min(start + units_per_batch, units)
            images.update(load_images(rows[first == batch], load_image, threads))
            sizes = np.array([[images[int(r)][0].shape[1:] for r in unit] for unit in top[start:stop]])
            masks = unit_masks(top[start:stop], maps[start:stop], thresholds[start:stop], sizes, upsample)
            for job in in_flight:  # the previous batch is written: drop its last images
                job.result()
            for row in rows[last == batch - 1]:
                del images[int(row)]
            in_flight = [
                pool.submit(_write_strip, folder / names[u], [images[int(r)] for r in top[u]], unit_mask, quality)
                for u, unit_mask in zip(range(start, stop), masks)
            ]
        for job in in_flight:
            job.result()
    return names
