"""Masks and exact integer counts (spec §3–4), per shard, and their merge.

For a batch of images, only (image, unit) pairs whose map maximum exceeds the unit's threshold can
have a non-empty mask (bilinear values never exceed the map's maximum), so only those pairs are
gathered. Their masks ``bilinear(map) > T`` (strict) are found without upsampling whole maps
(:func:`mask_runs`): the output pixels that read the same 2×2 source values form a cell; cells
whose 4 values are all ≤ T are skipped (a 7×7 map upsampled to 112×112 has 64 cells of up to 16×16
pixels; at the top-0.5% threshold about 6 remain). Along a row of a cell the values are linear, so
the row's two end values give, by one division (:func:`first_above`), the run of columns inside the
mask; only pixels within a margin of T (rare) are evaluated one by one. The bilinear values are those
of ``F.interpolate(mode="bilinear", align_corners=False)`` (half-pixel centres, clamped edges), as
computed in float64 by one formula, :func:`bilinear_at` (torch computes them in float32; the two can
differ in the last float32 bit, which changes a mask only where a value equals the threshold to ~7
digits); every shortcut gives that formula's answer (tests/test_engine_tally.py checks it pixel by
pixel, at ties too).

The runs become pixel lists (:func:`expand_runs`); each pixel layer's label at those pixels is added
to flat (unit, label) counts with ``index_add_``, and for image-level labels the mask size per
(unit, label). Every count is int64 and exact; the imgmax test compares float32 maxima with float64
thresholds exactly.

A shard is counted batch by batch (:class:`ShardBatches`, :class:`BatchCounter`); on the CPU
``workers`` threads each take the next batch and keep their own totals (:func:`tally_shard`). The
labels come from the dataset's PNGs or, much faster, from packed labels
(:mod:`netdissect.broden.pack`, decoded once per dataset).

Speed (ResNet-18 ``layer4``, 1000 synthetic 224-px images, 2 cores, ``benchmarks/bench_engine.py
--tally-only``): about 1.2–1.3 ms of CPU per image, and 1240–1320 images/s with 2 threads and
packed labels (520–600 images/s decoding the PNGs). On the CPU, ``index_select`` replaces advanced
indexing and :func:`nonzero` goes through numpy: each is several times faster there. See README.

Counts file (``tally/{k}.npz`` per shard, ``counts.npz`` merged), ``format_version`` 1, numpy npz
without pickles::

    format_version  int64 ()          1
    G               int64 (L,)        label areas (label 0 is always 0)
    I               int64 (U, L)      intersections of unit masks with labels (column 0 is always 0)
    C               int64 (U, K)      category-restricted mask areas, K = len(categories), union rule below
    thresholds      float64 (U,)      the thresholds the masks used
    imgmax          float32 (n, U)    per-image maxima of the rows counted, in row order
    start, stop     int64 ()          the rows [start, stop) counted (merged: 0, N)
    num_images      int64 ()          images counted (stop - start)
    settings        str () JSON       {"layer", "quantile", "thresholds_file", "union", "upsample": "bilinear",
                                       "categories": [...], "model", "weights", "weights_sha256", "mean",
                                       "std", "dtype", "dataset", "dataset_fingerprint", "dataset_images": N}

The ``fieldmap`` upsampling of the original system is not implemented.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netdissect.errors import NetDissectError
from netdissect.io import save_npz

COUNTS_VERSION = 1
UNIONS = ("paper", "lite")


def pad_labels(
    pixel_labels: Sequence[torch.Tensor], image_labels: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-image label data: (B, K, sh, sw) int32 pixel layers, padded with 0-layers to the
    largest K; (B, J) int64 image-level labels, de-duplicated per image and padded with 0 (label 0 is
    never counted)."""
    sh, sw = pixel_labels[0].shape[1:]
    kmax = max(int(p.shape[0]) for p in pixel_labels)
    if all(int(p.shape[0]) == kmax for p in pixel_labels):
        layers = torch.stack(list(pixel_labels)).to(torch.int32)
    else:
        layers = torch.zeros((len(pixel_labels), kmax, sh, sw), dtype=torch.int32)
        for b, p in enumerate(pixel_labels):
            layers[b, : p.shape[0]] = p
    uniq = [sorted(set(j.tolist()) - {0}) for j in image_labels]  # a few labels per image
    jmax = max([len(u) for u in uniq] + [0])
    img = torch.tensor([u + [0] * (jmax - len(u)) for u in uniq], dtype=torch.int64).reshape(len(uniq), jmax)
    return layers, img


def label_presence(
    layers: torch.Tensor,
    image_labels: torch.Tensor,
    num_labels: int,
    label_pixels: Sequence[tuple[torch.Tensor, torch.Tensor] | None] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: pixel counts of every label over all pixel layers (B, L) int64, and image-level
    membership (B, L) int64 (1 where the image has the label as an image-level label). The pixel
    counts come from ``label_pixels`` (per image: labels and counts, as packed labels give them)
    when every image has them, else from counting ``layers``."""
    b = layers.shape[0]
    if len(label_pixels) == b and all(p is not None for p in label_pixels):
        rows = torch.cat([torch.full_like(labels, j) for j, (labels, _) in enumerate(label_pixels)])
        labels, counts = (torch.cat(parts) for parts in zip(*label_pixels))
        pixels = torch.zeros(b * num_labels, dtype=torch.int64).index_add_(0, rows * num_labels + labels, counts)
        pixels = pixels.reshape(b, num_labels).to(layers.device)
    else:
        pixels = count_pairs(
            torch.arange(b, device=layers.device), num_labels, layers.reshape(b, -1), b * num_labels
        ).reshape(b, num_labels)
    member = torch.zeros((b, num_labels), dtype=torch.int64, device=layers.device)
    member.scatter_(1, image_labels, 1)
    member[:, 0] = 0
    return pixels, member


def label_groups(items: list[dict[str, Any]], num_labels: int) -> list[tuple]:
    """Per group of images with the same number of pixel layers and segmentation size (so no 0-layers
    are padded in and counted for nothing): (positions in ``items``, stacked layers and image labels
    (:func:`pad_labels`), their per-image statistics (:func:`label_presence`))."""
    sizes = [tuple(item["pixel_labels"].shape) for item in items]  # (layers, sh, sw)
    groups = []
    for size in dict.fromkeys(sizes):
        sel = [j for j, s in enumerate(sizes) if s == size]
        layers, image_labels = pad_labels(
            [items[j]["pixel_labels"] for j in sel], [items[j]["image_labels"] for j in sel]
        )
        pixels, member = label_presence(layers, image_labels, num_labels, [items[j].get("label_pixels") for j in sel])
        groups.append((sel, layers, image_labels, pixels, member))
    return groups


def keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed memory for reuse (blocks under 32 MiB from its heaps, and up to
    1 GiB of free heap kept). The tally allocates and frees arrays of 1–20 MB for every batch; by
    default glibc maps each one anew and returns it on free, and every page of it then faults in again
    (about 1 in 10 of the tally's CPU time). A process-wide setting, harmless for the other stages; a
    no-op without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def axis_table(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear source positions along one axis (half-pixel centres, clamped edges), float64.

    Output pixel o reads input i0[o] with weight 1 − w[o] and i1[o] with weight w[o], where
    ``real = max((o + 0.5)·n_in/n_out − 0.5, 0)``, ``i0 = floor(real)``, ``i1 = min(i0 + 1, n_in − 1)``,
    ``w = real − i0`` (the definition of ``F.interpolate(mode="bilinear", align_corners=False)``).
    """
    real = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = np.floor(real).astype(np.int64)
    return i0, np.minimum(i0 + 1, n_in - 1), real - i0


@dataclass(frozen=True)
class AxisCells:
    """The output pixels of one axis grouped into cells that read the same two source pixels.

    Cell j covers the ``size[j]`` output pixels from ``start[j]`` on, reading sources ``i0[j]`` with
    weight ``w1 = 1 − w`` and ``i1[j]`` with weight ``w`` (padded to the largest cell with NaN, so
    padded values never exceed a threshold). Where the edge is clamped (w = 0 throughout) the cell
    reads one source only (``i1 = i0``).
    """

    i0: torch.Tensor  # (n,) int64
    i1: torch.Tensor  # (n,) int64
    start: torch.Tensor  # (n,) int64
    size: torch.Tensor  # (n,) int64
    w: torch.Tensor  # (n, m) float64
    w1: torch.Tensor  # (n, m) float64
    end_w: torch.Tensor  # (n, 2) float64: weights of the cell's first and last pixel
    end_w1: torch.Tensor  # (n, 2) float64


@functools.lru_cache(maxsize=32)
def axis_cells(n_in: int, n_out: int, device: str = "cpu") -> AxisCells:
    i0, i1, w = axis_table(n_in, n_out)
    clamped = w == 0
    i1 = np.where(clamped, i0, i1)
    # consecutive output pixels with the same (i0, i1) form a cell
    starts = np.flatnonzero(np.r_[True, (i0[1:] != i0[:-1]) | (i1[1:] != i1[:-1])])
    sizes = np.diff(np.r_[starts, n_out])
    weight = np.full((len(starts), sizes.max()), np.nan)
    for j, (start, size) in enumerate(zip(starts, sizes)):
        weight[j, :size] = w[start : start + size]
    ends = np.stack([w[starts], w[starts + sizes - 1]], axis=1)
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
    return AxisCells(
        as_t(i0[starts]),
        as_t(i1[starts]),
        as_t(starts),
        as_t(sizes),
        as_t(weight),
        as_t(1 - weight),
        as_t(ends),
        as_t(1 - ends),
    )


def bilinear_at(
    c00: torch.Tensor,
    c01: torch.Tensor,
    c10: torch.Tensor,
    c11: torch.Tensor,
    wx: torch.Tensor,
    wx1: torch.Tensor,
    wy: torch.Tensor,
    wy1: torch.Tensor,
) -> torch.Tensor:
    """``(c00·wx1 + c01·wx)·wy1 + (c10·wx1 + c11·wx)·wy``: THE bilinear formula (one rounding order)."""
    return (c00 * wx1 + c01 * wx) * wy1 + (c10 * wx1 + c11 * wx) * wy


def expand_runs(start: torch.Tensor, length: torch.Tensor, *tags: torch.Tensor) -> list[torch.Tensor]:
    """The integers of runs ``start[r], start[r] + 1, ...`` (``length[r]`` of them) in one list,
    followed by each ``tags`` tensor's value of the run of every integer. (On the CPU numpy's
    ``repeat`` does it, about 3× faster than ``torch.repeat_interleave``.)"""
    first = torch.cumsum(length, 0) - length  # list position of each run's start
    items = torch.arange(int(length.sum()), device=start.device)
    if start.device.type == "cpu":
        repeat = lambda values: torch.from_numpy(np.repeat(values.numpy(), length.numpy()))
    else:
        repeat = lambda values: torch.repeat_interleave(values, length)
    return [items + repeat(start - first)] + [repeat(g) for g in tags]


def first_above(low: torch.Tensor, rise: torch.Tensor, n: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """For rows of n values rising linearly from ``low`` by ``rise`` ≥ 0 in total (value at position
    p = low + rise·p/(n − 1)), the first position whose value exceeds ``level`` (n if none).

    One formula for every row: a flat row (rise = 0) divides by zero into ±inf (all or none above)
    or NaN (the level equals the row: none above), and a one-pixel row is flat."""
    steps = (n - 1).clamp(min=1).to(low.dtype)
    p = torch.floor((level - low) * steps / rise).add_(1)
    p = torch.nan_to_num(p, nan=float("inf")).clamp_(min=0)
    return torch.minimum(p, n.to(low.dtype)).to(torch.int64)


def pick(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]`` along the first axis; ``index_select`` is several times faster on the CPU."""
    return values.index_select(0, index)


def nonzero(mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``torch.nonzero(mask, as_tuple=True)``; on the CPU through numpy, several times faster."""
    if mask.device.type != "cpu":
        return torch.nonzero(mask, as_tuple=True)
    flat = torch.from_numpy(np.flatnonzero(mask.numpy()))
    index = []
    for size in reversed(mask.shape[1:]):
        index.append(flat % size)
        flat = flat // size
    return (flat, *reversed(index))


def mask_runs(
    maps: torch.Tensor, thresholds: torch.Tensor, sh: int, sw: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The masks ``bilinear(maps[a]) > thresholds[a]`` at sh×sw, as runs of pixels within rows:
    (map number, flat first pixel, length) per run; every masked pixel is in exactly one run (runs
    may be empty).

    The decision equals evaluating :func:`bilinear_at` (float64) at every pixel, but works on rows:

    1. A cell (the output pixels that read the same 2×2 source values) holds values between the
       min and max of those 4, so cells whose 4 values are all at or below the threshold are
       skipped. (At the top-0.5% thresholds of a 7×7 map about 6 of its 64 cells remain.)
    2. Along one row of a cell the values are linear in the column, so the row's two end values
       (evaluated with the formula) give, by one division, the columns certainly above the
       threshold and those certainly at or below it: each row's mask is a run of columns.
    3. Only columns within a margin of the threshold (usually none) are evaluated with the formula.

    The margin, 1e-9·max|a| per map, exceeds the float64 rounding of the formula and of the
    division by orders of magnitude, so every shortcut gives the formula's own answer.

    Args:
        maps: (A, h, w) float activations; thresholds: (A,) float64.
    """
    device = maps.device
    h, w = maps.shape[1], maps.shape[2]
    ys, xs = axis_cells(h, sh, str(device)), axis_cells(w, sw, str(device))
    a = maps.to(torch.float64)
    t = thresholds.to(torch.float64)
    margin = 1e-9 * a.abs().amax(dim=(1, 2))
    t_low, t_high = t - margin, t + margin

    # 1. cells whose largest corner may exceed the threshold, and their 4 corners
    row_max = torch.maximum(maps.index_select(1, ys.i0), maps.index_select(1, ys.i1))  # (A, cy, w)
    cell_max = torch.maximum(row_max.index_select(2, xs.i0), row_max.index_select(2, xs.i1))  # (A, cy, cx)
    m, cy, cx = nonzero(cell_max > t_low[:, None, None])
    flat = a.reshape(-1)
    top, bottom = m * (h * w) + pick(ys.i0, cy) * w, m * (h * w) + pick(ys.i1, cy) * w
    left, right = pick(xs.i0, cx), pick(xs.i1, cx)
    c00, c01, c10, c11 = (pick(flat, row + col) for row in (top, bottom) for col in (left, right))

    # 2. the values at both ends of every row of those cells (the formula, its x part once per
    #    cell); rows that may hold mask pixels (padded rows have NaN ends: never), and in each the
    #    run of columns certainly above the threshold and the run of uncertain ones
    wy, wy1 = pick(ys.w, cy), pick(ys.w1, cy)  # (cells, rows)
    end_w, end_w1 = pick(xs.end_w, cx), pick(xs.end_w1, cx)  # (cells, 2)
    ends = [
        (
            (c00 * end_w1[:, f] + c01 * end_w[:, f])[:, None] * wy1
            + (c10 * end_w1[:, f] + c11 * end_w[:, f])[:, None] * wy
        ).reshape(-1)
        for f in (0, 1)
    ]
    rows_per_cell = wy.shape[1]
    k, y = nonzero(torch.maximum(*ends).view(-1, rows_per_cell) > pick(t_low, m)[:, None])
    at = k * rows_per_cell + y
    first, last = pick(ends[0], at), pick(ends[1], at)
    row_map, row_cx = pick(m, k), pick(cx, k)
    n = pick(xs.size, row_cx)  # pixels in each row
    cell_base = pick(ys.start, cy) * sw + pick(xs.start, cx)  # flat pixel of each cell's corner
    row_base = pick(cell_base, k) + y * sw  # and of each row's column 0
    rising = last >= first  # positions count from the low end
    low, rise = torch.minimum(first, last), (last - first).abs()
    above = first_above(low, rise, n, pick(t_high, row_map))  # positions [above, n) are inside
    unsure = first_above(low, rise, n, pick(t_low, row_map))  # [unsure, above): evaluate
    run_start = row_base + above * rising

    # 3. the uncertain pixels, evaluated with the formula: runs of one pixel
    if not bool((above > unsure).any()):  # the usual case
        return row_map, run_start, n - above
    (r,) = nonzero(above > unsure)
    col, r = expand_runs(torch.where(rising, unsure, n - above)[r], (above - unsure)[r], r)
    kr, cxr, yr = k[r], row_cx[r], y[r]
    values = bilinear_at(c00[kr], c01[kr], c10[kr], c11[kr], xs.w[cxr, col], xs.w1[cxr, col], wy[kr, yr], wy1[kr, yr])
    inside = values > t[row_map[r]]
    r, col = r[inside], col[inside]
    return (
        torch.cat([row_map, row_map[r]]),
        torch.cat([run_start, row_base[r] + col]),
        torch.cat([n - above, torch.ones_like(r)]),
    )


def masked_pixels(maps: torch.Tensor, thresholds: torch.Tensor, sh: int, sw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels of the masks ``bilinear(maps[a]) > thresholds[a]`` at sh×sw, as (map number, flat
    pixel), from :func:`mask_runs`."""
    run_map, start, length = mask_runs(maps, thresholds, sh, sw)
    pixel, pixel_map = expand_runs(start, length, run_map)
    return pixel_map, pixel


def count_pairs(rows: torch.Tensor, width: int, columns: torch.Tensor, bins: int) -> torch.Tensor:
    """Counts of ``(rows[n], columns[n, k])`` over all n, k, as a flat (bins,) int64 histogram of
    ``row·width + column``. The keys are int32 when ``bins`` allows (half the memory traffic of int64)."""
    dtype = torch.int32 if bins < 2**31 else torch.int64
    keys = (rows * width).to(dtype)[:, None] + columns.to(dtype)
    return torch.bincount(keys.reshape(-1), minlength=bins)


def tally_batch(
    acts: torch.Tensor,
    imgmax: torch.Tensor,
    thresholds: torch.Tensor,
    layers: torch.Tensor,
    image_labels: torch.Tensor,
    primary: torch.Tensor,
    num_categories: int,
    union: str = "paper",
    presence: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Counts of spec §4 for one batch of images of one segmentation size.

    Args:
        acts: (B, U, H, W) float32 activations.
        imgmax: (B, U) float32 per-image maxima of ``acts``.
        thresholds: (U,) float64 thresholds.
        layers: (B, K, sh, sw) int32 pixel layers (global label numbers, 0 = none), from :func:`pad_labels`.
        image_labels: (B, J) int64 image-level labels, unique per image, 0-padded.
        primary: (L,) int64 primary category per label, -1 = none.
        num_categories: K, the number of categories.
        union: ``paper`` or ``lite`` (spec §4).
        presence: :func:`label_presence` of these labels, if already computed.
    Returns:
        G (L,), I (U, L), C (U, K), all int64.
    """
    if union not in UNIONS:
        raise NetDissectError(f"--union {union}: expected one of {', '.join(UNIONS)}")
    device = acts.device
    b, units = imgmax.shape
    num_labels = primary.shape[0]
    k, sh, sw = layers.shape[1:]
    pixels_per_image = sh * sw
    cat1 = primary + 1  # category + 1; 0 = none
    pixels, member = presence if presence is not None else label_presence(layers, image_labels, num_labels)
    area = pixels.sum(0) + member.sum(0) * pixels_per_image
    area[0] = 0

    # active (image, unit) pairs (a map whose maximum is <= T has an empty mask) and their masks
    thresholds = thresholds.to(torch.float64)
    img_idx, unit_idx = nonzero(imgmax.to(torch.float64) > thresholds[None, :])
    inter = torch.zeros(units * num_labels, dtype=torch.int64, device=device)
    cat_area = torch.zeros((units, num_categories), dtype=torch.int64, device=device)
    if img_idx.numel() == 0:
        return area, inter.reshape(units, num_labels), cat_area
    maps = pick(acts.reshape(b * units, *acts.shape[2:]), img_idx * units + unit_idx)
    run_pair, run_start, run_length = mask_runs(maps, pick(thresholds, unit_idx), sh, sw)
    mask_size = torch.zeros(img_idx.numel(), dtype=torch.int64, device=device).index_add_(0, run_pair, run_length)

    # pixel layers: every masked pixel, every layer -> (unit, label), one layer at a time (a pixel's
    # labels sit pixels_per_image apart); index_add_ costs the same for any number of units x labels
    key_dtype = torch.int32 if units * num_labels < 2**31 else torch.int64
    tags = [pick((unit_idx * num_labels).to(key_dtype), run_pair)] + ([run_pair] if union == "lite" else [])
    at, unit_key, *pixel_pair = expand_runs(
        pick(img_idx, run_pair) * (k * pixels_per_image) + run_start, run_length, *tags
    )
    ones = torch.ones(1, dtype=torch.int64, device=device).expand(at.numel())
    flat_layers = layers.reshape(-1)
    if union == "lite":
        pair_cat = torch.zeros(img_idx.numel() * (num_categories + 1), dtype=torch.int64, device=device)
        pair_key = pixel_pair[0] * (num_categories + 1)
        cat1_of = cat1.to(flat_layers.dtype)
    for j in range(k):
        labels_j = flat_layers.take(at + j * pixels_per_image)
        inter.index_add_(0, unit_key + labels_j.to(key_dtype), ones)
        if union == "lite":  # categories each mask touches
            pair_cat.index_add_(0, pair_key + pick(cat1_of, labels_j), ones)
    # image-level labels: |M| for each (unit, label of the image)
    if image_labels.shape[1]:
        flat = (unit_idx[:, None] * num_labels + pick(image_labels, img_idx)).reshape(-1)
        inter.scatter_add_(0, flat, mask_size[:, None].expand(-1, image_labels.shape[1]).reshape(-1))
    inter = inter.reshape(units, num_labels)
    inter[:, 0] = 0

    # category-restricted activation
    if union == "paper":
        present = (pixels > 0) | (member > 0)  # (B, L)
        has = torch.zeros((b, num_categories + 1), dtype=torch.int64, device=device)
        has.index_add_(1, cat1, present.to(torch.int64))
        hit = pick(has, img_idx)[:, 1:] > 0  # (A, K)
    else:
        hit = pair_cat.reshape(-1, num_categories + 1)[:, 1:] > 0
        img_cat = torch.zeros((b, num_categories + 1), dtype=torch.int64, device=device)
        img_cat.index_add_(1, cat1, member)
        hit |= pick(img_cat, img_idx)[:, 1:] > 0
    cat_area.index_add_(0, unit_idx, hit.to(torch.int64) * mask_size[:, None])
    return area, inter, cat_area


class ShardBatches(torch.utils.data.Dataset):
    """Batch j of a shard's rows (``batch_size`` rows from ``start`` on) as one DataLoader item: the
    label groups (:func:`label_groups`), activations and maxima, ready to count; or, with a
    ``counter``, already counted (``{"rows", "G", "I", "C"}``), so that each counting thread does all
    the work of its batches.

    ``labels`` yields ``{"i", "pixel_labels", "image_labels"}`` per dataset row (a BrodenDataset
    opened with ``load_images=False``, or packed labels); ``act_path`` is the shard's
    ``{layer}.act.npy`` whose row 0 is dataset row ``start``, ``imgmax`` its (stop - start, U) maxima.
    """

    def __init__(
        self,
        labels: Any,
        num_labels: int,
        act_path: str | Path,
        imgmax: np.ndarray,
        start: int,
        stop: int,
        batch_size: int,
        counter: BatchCounter | None = None,
    ):
        self.labels, self.num_labels, self.act_path, self.imgmax = labels, num_labels, act_path, imgmax
        self.start, self.stop, self.batch_size, self.counter = start, stop, batch_size, counter

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch_size)

    def __getitem__(self, j: int) -> dict[str, Any]:
        from netdissect.extract import read_npy_rows

        local = np.arange(j * self.batch_size, min((j + 1) * self.batch_size, self.stop - self.start))
        items = [self.labels[self.start + int(r)] for r in local]
        batch = {
            "rows": len(local),
            "groups": label_groups(items, self.num_labels),
            "acts": torch.from_numpy(read_npy_rows(self.act_path, local).astype(np.float32, copy=False)),
            "imgmax": torch.from_numpy(self.imgmax[local]),
        }
        return self.counter(batch) if self.counter is not None else batch


class BatchCounter:
    """Counts G, I, C of one :class:`ShardBatches` batch, summed over its label groups, on ``device``."""

    def __init__(
        self, thresholds: np.ndarray, primary: np.ndarray, num_categories: int, union: str, device: str = "cpu"
    ):
        self.thresholds = torch.from_numpy(np.asarray(thresholds, dtype=np.float64)).to(device)
        self.primary = torch.as_tensor(np.asarray(primary, dtype=np.int64), device=device)
        self.num_categories, self.union, self.device = num_categories, union, device

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        on = lambda x: x.to(self.device, non_blocking=True)
        acts, maxima = on(batch["acts"]), on(batch["imgmax"])
        totals = None
        for sel, layers, image_labels, pixels, member in batch["groups"]:  # one group per label shape
            rows = torch.tensor(sel, device=self.device)
            counts = tally_batch(
                acts[rows],
                maxima[rows],
                self.thresholds,
                on(layers),
                on(image_labels),
                self.primary,
                self.num_categories,
                self.union,
                presence=(on(pixels), on(member)),
            )
            totals = counts if totals is None else [t + c for t, c in zip(totals, counts)]
        return {"rows": batch["rows"], **dict(zip("GIC", totals))}


def tally_shard(
    ds: Any,
    act_path: str | Path,
    imgmax: np.ndarray,
    thresholds: np.ndarray,
    start: int,
    stop: int,
    *,
    union: str = "paper",
    batch_size: int = 50,
    workers: int = 0,
    device: str = "cpu",
    progress: bool = True,
    layer: str = "",
    labels: Any = None,
) -> dict[str, np.ndarray]:
    """Counts G, I, C of rows [start, stop) of ``ds`` (a BrodenDataset, for its tables).

    The labels come from ``labels`` (packed labels, :class:`netdissect.broden.pack.PackedLabels`) if
    given, else from ``ds`` itself (opened with ``load_images=False``: decodes the PNGs). ``act_path``
    is the shard's ``{layer}.act.npy`` whose row 0 is dataset row ``start``; ``imgmax`` its
    (stop - start, U) maxima.

    On the CPU, ``workers`` threads (0: the calling thread) each take the next batch, read and count
    it, and add its counts to their own totals. (torch releases the GIL inside its kernels, so
    threads share the cores without the start-up and copying costs of processes.) On a GPU,
    ``workers`` DataLoader processes read the batches and the main process counts them.
    """
    from tqdm import tqdm

    if union not in UNIONS:
        raise NetDissectError(f"--union {union}: expected one of {', '.join(UNIONS)}")
    units = imgmax.shape[1]
    if thresholds.shape != (units,):
        raise NetDissectError(
            f"layer {layer}: {thresholds.shape[0]} thresholds for {units} units; use the "
            f"thresholds.npy of this model and layer"
        )
    if batch_size < 1 or workers < 0:
        raise NetDissectError(f"--batch-size {batch_size} / --workers {workers}: expected >= 1 and >= 0")
    keep_freed_memory()
    num_labels, num_categories = ds.num_labels, len(ds.categories)
    counter = BatchCounter(thresholds, ds.primary, num_categories, union, device)
    on_cpu = torch.device(device).type == "cpu"
    batches = ShardBatches(
        ds if labels is None else labels,
        num_labels,
        act_path,
        imgmax,
        start,
        stop,
        batch_size,
        counter if on_cpu else None,
    )
    zeros = lambda: {
        "G": torch.zeros(num_labels, dtype=torch.int64),
        "I": torch.zeros((units, num_labels), dtype=torch.int64),
        "C": torch.zeros((units, num_categories), dtype=torch.int64),
    }
    bar = tqdm(total=stop - start, desc=f"tally {layer}", unit="img", disable=not progress)
    lock = threading.Lock()

    def add(totals: dict[str, torch.Tensor], counts: dict[str, Any]) -> None:
        for key in totals:
            totals[key] += counts[key].cpu()
        with lock:
            bar.update(counts["rows"])

    if on_cpu:
        next_batch = itertools.count()  # shared by the threads (atomic under the GIL)
        failed = threading.Event()  # one thread's error stops the others

        def count_batches() -> dict[str, torch.Tensor]:
            totals = zeros()
            try:
                while not failed.is_set() and (j := next(next_batch)) < len(batches):
                    add(totals, batches[j])
            except BaseException:
                failed.set()
                raise
            return totals

        if workers == 0:
            parts = [count_batches()]
        else:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # one core per thread
            try:
                with ThreadPoolExecutor(workers, thread_name_prefix="tally") as pool:
                    parts = [f.result() for f in [pool.submit(count_batches) for _ in range(workers)]]
            finally:
                torch.set_num_threads(threads)
    else:
        from netdissect.extract import iterate_batches

        loader = torch.utils.data.DataLoader(
            batches,
            batch_size=None,
            num_workers=workers,
            worker_init_fn=_worker_init if workers else None,
            prefetch_factor=2 if workers else None,
        )
        parts = [zeros()]
        for batch in iterate_batches(loader):
            add(parts[0], counter(batch))
    bar.close()
    return {key: sum(part[key] for part in parts).numpy() for key in parts[0]}


def save_counts(
    path: str | Path,
    counts: dict[str, np.ndarray],
    thresholds: np.ndarray,
    imgmax: np.ndarray,
    start: int,
    stop: int,
    settings: dict[str, Any],
) -> None:
    """Write a counts file (format in the module docstring), atomically."""
    save_npz(
        path,
        format_version=np.int64(COUNTS_VERSION),
        G=counts["G"].astype(np.int64),
        I=counts["I"].astype(np.int64),
        C=counts["C"].astype(np.int64),
        thresholds=np.asarray(thresholds, np.float64),
        imgmax=np.asarray(imgmax, np.float32),
        start=np.int64(start),
        stop=np.int64(stop),
        num_images=np.int64(stop - start),
        settings=np.array(json.dumps(settings, sort_keys=True)),
    )


def load_counts(path: str | Path) -> dict[str, Any]:
    """Read a counts file; ``settings`` comes back as a dict, scalars as Python ints."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise NetDissectError(f"{path}: counts file not found; run `netdissect tally` / `merge` first") from None
    except Exception as err:
        raise NetDissectError(f"{path}: not a counts file ({err})") from None
    if int(data.get("format_version", -1)) != COUNTS_VERSION:
        raise NetDissectError(
            f"{path}: counts format version {data.get('format_version')} (expected "
            f"{COUNTS_VERSION}); re-run `netdissect tally`"
        )
    data["settings"] = json.loads(str(data["settings"]))
    for key in ("start", "stop", "num_images", "format_version"):
        data[key] = int(data[key])
    return data


def merge_counts(parts: Sequence[dict[str, Any]], names: Sequence[str] | None = None) -> dict[str, Any]:
    """Sum shard counts: they must share settings and thresholds and tile contiguous rows."""
    if not parts:
        raise NetDissectError("merge: no counts files given")
    names = list(names) if names is not None else [f"input {k}" for k in range(len(parts))]
    order = sorted(range(len(parts)), key=lambda k: parts[k]["start"])
    first = parts[order[0]]
    for k in order:
        p = parts[k]
        if p["settings"] != first["settings"]:
            diff = sorted(
                key
                for key in set(p["settings"]) | set(first["settings"])
                if p["settings"].get(key) != first["settings"].get(key)
            )
            raise NetDissectError(
                f"merge: {names[k]} was counted with other settings than {names[order[0]]} "
                f"(differs in: {', '.join(diff)}); re-run its tally with the same options"
            )
        if not np.array_equal(p["thresholds"], first["thresholds"]) or p["I"].shape != first["I"].shape:
            raise NetDissectError(
                f"merge: {names[k]} used other thresholds or shapes than {names[order[0]]}; "
                f"every shard must be tallied with the same thresholds.npy"
            )
    expected = 0
    for k in order:
        if parts[k]["start"] != expected:
            raise NetDissectError(
                f"merge: {names[k]} covers rows [{parts[k]['start']}, {parts[k]['stop']}) but "
                f"rows must continue at {expected}; a shard is missing or given twice"
            )
        expected = parts[k]["stop"]
    total = first["settings"].get("dataset_images")
    if total is not None and expected != total:
        raise NetDissectError(f"merge: the inputs cover rows [0, {expected}) of {total}; shards are missing")
    return {
        "G": sum(p["G"] for p in parts),
        "I": sum(p["I"] for p in parts),
        "C": sum(p["C"] for p in parts),
        "thresholds": first["thresholds"],
        "imgmax": np.concatenate([parts[k]["imgmax"] for k in order], axis=0),
        "start": 0,
        "stop": expected,
        "settings": first["settings"],
    }
