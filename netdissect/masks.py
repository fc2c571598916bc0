"""Which pixels of an upsampled activation map exceed the unit's threshold: the mask decision
(docs/dissection.md §3), exact and without upsampling whole maps.

An upsampling mode maps each axis of an h×w map to the sh×sw segmentation grid by linear
interpolation between two source positions: output pixel o reads source ``i0[o]`` with weight
``1 − w[o]`` and ``i1[o]`` with weight ``w[o]`` (:class:`AxisTable`). A mode is one function that
builds those per-axis tables; everything else is shared:

- :func:`axis_cells` groups the output pixels of an axis into cells that read the same two sources;
- :func:`mask_runs` decides the masks ``upsampled(map) > T`` (strict) cell by cell and row by row,
  giving each row's mask as one run of columns, and evaluates :func:`bilinear_at` (THE formula, in
  float64) only for pixels within a margin of the threshold;
- :func:`masked_pixels` lists the pixels of those runs.

Modes: :data:`BILINEAR`, the interpolation of ``F.interpolate(mode="bilinear", align_corners=False)``
(half-pixel centres, clamped edges), and :class:`FieldMapUpsampling`, the original system's: linear
between knots at the centres of the units' receptive fields, constant outside them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch

from netdissect.defaults import UPSAMPLES
from netdissect.errors import NetDissectError
from netdissect.models.fieldmap import FieldMap
from netdissect.ops import expand_runs, nonzero, pick, select_rows


@dataclass(frozen=True)
class AxisTable:
    """One axis of an upsampling: output pixel o reads ``i0[o]`` with weight ``1 − w[o]`` and ``i1[o]``
    with weight ``w[o]`` (int64, int64, float64 arrays of length n_out). Within a run of output pixels
    that read the same (i0, i1), ``w`` must be affine in o (linear interpolation)."""

    i0: np.ndarray
    i1: np.ndarray
    w: np.ndarray


def bilinear_table(n_in: int, n_out: int) -> AxisTable:
    """Bilinear source positions along one axis (half-pixel centres, clamped edges), float64.

    ``real = max((o + 0.5)·n_in/n_out − 0.5, 0)``, ``i0 = floor(real)``, ``i1 = min(i0 + 1, n_in − 1)``,
    ``w = real − i0`` (the definition of ``F.interpolate(mode="bilinear", align_corners=False)``).
    """
    real = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = np.floor(real).astype(np.int64)
    return AxisTable(i0, np.minimum(i0 + 1, n_in - 1), real - i0)


@dataclass(frozen=True)
class Bilinear:
    """Plain bilinear upsampling of the map to the segmentation grid (the default)."""

    name: str = "bilinear"

    def tables(self, h: int, w: int, sh: int, sw: int) -> tuple[AxisTable, AxisTable]:
        """The (y, x) axis tables of an h×w map upsampled to sh×sw."""
        return bilinear_table(h, sh), bilinear_table(w, sw)


BILINEAR = Bilinear()


def fieldmap_knots(offset: int, size: int, step: int, n: int, reduction: int) -> np.ndarray:
    """Segmentation pixels of the n knots of one axis: ``c_k = (size // 2 + offset) // r + k·(step // r)``
    (floor division; the centre of unit k's receptive field, in pixels of a grid ``r`` times coarser than
    the input)."""
    return (size // 2 + offset) // reduction + np.arange(n, dtype=np.int64) * (step // reduction)


def knot_table(knots: np.ndarray, n_out: int) -> AxisTable:
    """Linear interpolation between increasing integer ``knots`` at output pixels 0..n_out−1, constant
    (the edge knot's value) outside them.

    Pixel y in (c_{k−1}, c_k] reads knots k−1 and k with weight ``w = (y − c_{k−1}) / (c_k − c_{k−1})``,
    so a cell ends at its knot with w = 1 (the knot's own value, exactly) and w is affine within it;
    pixels y ≤ c_0 read knot 0 alone and pixels y > c_{n−1} the last knot alone (w = 0)."""
    y = np.arange(n_out, dtype=np.int64)
    last = len(knots) - 1
    inside = (y > knots[0]) & (y <= knots[-1])
    k = np.clip(np.searchsorted(knots, y, side="left"), 1, max(last, 1))  # first knot >= y
    i1 = np.where(inside, k, np.where(y <= knots[0], 0, last))
    i0 = np.where(inside, k - 1, i1)
    gap = np.where(inside, knots[i1] - knots[i0], 1)
    w = np.where(inside, (y - knots[i0]) / gap, 0.0)
    return AxisTable(i0.astype(np.int64), i1.astype(np.int64), w.astype(np.float64))


@dataclass(frozen=True)
class FieldMapUpsampling:
    """The original system's upsampling (docs/dissection.md §3): unit k of the map is a knot at the
    centre of its receptive field (``field_map``, in input pixels), values are linear between knots and
    constant outside them. On a grid of width sw the reduction is ``r = round(image_width / sw)``
    (2 for Broden's segmentations, 1 at the image's own size). ``layer`` only names it in messages."""

    field_map: FieldMap
    image_width: int
    layer: str = field(default="", compare=False)
    name: str = "fieldmap"

    def reduction(self, sw: int) -> int:
        r = round(self.image_width / sw)
        if r < 1:
            raise NetDissectError(
                f"layer {self.layer}: a {sw}-pixel grid is more than twice as wide as the "
                f"{self.image_width}-pixel images; the fieldmap upsampling needs r = round(iw / sw) >= 1"
            )
        return r

    def tables(self, h: int, w: int, sh: int, sw: int) -> tuple[AxisTable, AxisTable]:
        """The (y, x) axis tables of an h×w map on an sh×sw grid."""
        r = self.reduction(sw)
        tables = []
        for axis, n, n_out in ((0, h, sh), (1, w, sw)):
            step = self.field_map.step[axis]
            if n > 1 and step // r < 1:
                raise NetDissectError(
                    f"layer {self.layer}: its field map's step {step} is smaller than the reduction "
                    f"r = {r} of the {sw}-pixel segmentations, so its knots would coincide; use "
                    f"--upsample bilinear for this layer"
                )
            knots = fieldmap_knots(self.field_map.offset[axis], self.field_map.size[axis], step, n, r)
            tables.append(knot_table(knots, n_out))
        return tables[0], tables[1]


def upsampling(
    name: str, field_map: FieldMap | None = None, image_width: int = 0, layer: str = "", why_none: str = ""
) -> Bilinear | FieldMapUpsampling:
    """The upsampling mode ``--upsample name`` of a layer; ``fieldmap`` needs the layer's field map
    (``why_none`` says why it has none) and the images' width."""
    if name == BILINEAR.name:
        return BILINEAR
    if name == "fieldmap":
        if field_map is None:
            raise NetDissectError(
                f"--upsample fieldmap: layer {layer} has no field map: {why_none or 'none was recorded'}. "
                f"Use --upsample bilinear for this layer"
            )
        return FieldMapUpsampling(field_map, image_width, layer)
    raise NetDissectError(f"--upsample {name}: expected one of {', '.join(UPSAMPLES)}")


@dataclass(frozen=True)
class AxisCells:
    """The output pixels of one axis grouped into cells that read the same two source pixels.

    Cell j covers the ``size[j]`` output pixels from ``start[j]`` on, reading sources ``i0[j]`` with
    weight ``w1 = 1 − w`` and ``i1[j]`` with weight ``w`` (padded to the largest cell with NaN, so
    padded values never exceed a threshold). Where the edge is clamped (w = 0 throughout) the cell
    reads one source only (``i1 = i0``). ``n_out``: the axis length.
    """

    i0: torch.Tensor  # (n,) int64
    i1: torch.Tensor  # (n,) int64
    start: torch.Tensor  # (n,) int64
    size: torch.Tensor  # (n,) int64
    w: torch.Tensor  # (n, m) float64
    w1: torch.Tensor  # (n, m) float64
    end_w: torch.Tensor  # (n, 2) float64: weights of the cell's first and last pixel
    end_w1: torch.Tensor  # (n, 2) float64
    n_out: int


def axis_cells(table: AxisTable, device: str = "cpu") -> AxisCells:
    """Group an axis table's output pixels into cells (consecutive pixels with the same sources)."""
    i0, i1, w = table.i0, table.i1, table.w
    n_out = len(i0)
    i1 = np.where(w == 0, i0, i1)  # a clamped pixel reads one source
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
        n_out,
    )


@functools.lru_cache(maxsize=32)
def grid_cells(mode, h: int, w: int, sh: int, sw: int, device: str = "cpu") -> tuple[AxisCells, AxisCells]:
    """The (y, x) cells of an h×w map upsampled to sh×sw by ``mode`` (cached: the same for every batch)."""
    ys, xs = mode.tables(h, w, sh, sw)
    return axis_cells(ys, device), axis_cells(xs, device)


def first_above(low: torch.Tensor, rise: torch.Tensor, n: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """For rows of n values rising linearly from ``low`` by ``rise`` ≥ 0 in total (value at position
    p = low + rise·p/(n − 1)), the first position whose value exceeds ``level`` (n if none).

    One formula for every row: a flat row (rise = 0) divides by zero into ±inf (all or none above)
    or NaN (the level equals the row: none above), and a one-pixel row is flat."""
    steps = (n - 1).clamp(min=1).to(low.dtype)
    p = torch.floor((level - low) * steps / rise).add_(1)
    p = torch.nan_to_num(p, nan=float("inf")).clamp_(min=0)
    return torch.minimum(p, n.to(low.dtype)).to(torch.int64)


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


def mask_runs(
    maps: torch.Tensor, thresholds: torch.Tensor, ys: AxisCells, xs: AxisCells
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The masks ``upsampled(maps[a]) > thresholds[a]`` on the grid of ``ys`` × ``xs`` (from
    :func:`grid_cells`), as runs of pixels within rows:
    (map number, flat first pixel, length) per run; every masked pixel is in exactly one run (runs
    may be empty).

    The decision equals evaluating :func:`bilinear_at` (float64) at every pixel, but works on rows:

    1. A cell (the output pixels that read the same 2×2 source values) holds values between the
       min and max of those 4, so cells whose 4 values are all at or below the threshold are
       skipped. (At top-0.5% thresholds most cells are skipped.)
    2. Along one row of a cell the values are linear in the column, so the row's two end values
       (evaluated with the formula) give, by one division, the columns certainly above the
       threshold and those certainly at or below it: each row's mask is a run of columns.
    3. Only columns within a margin of the threshold (usually none) are evaluated with the formula.

    The margin, 1e-9·max|a| per map, exceeds the float64 rounding of the formula and of the
    division by orders of magnitude, so every shortcut gives the formula's own answer.

    Args:
        maps: (A, h, w) float activations; thresholds: (A,) float64.
    """
    h, w = maps.shape[1], maps.shape[2]
    sw = xs.n_out
    t = thresholds.to(torch.float64)
    # max|a| per map, exact in the maps' own type (and so after widening): no float64 copy of the maps
    margin = 1e-9 * torch.maximum(maps.amax(dim=(1, 2)), -maps.amin(dim=(1, 2))).to(torch.float64)
    t_low, t_high = t - margin, t + margin

    # 1. cells whose largest corner may exceed the threshold, and their 4 corners
    row_max = torch.maximum(select_rows(maps, ys.i0), select_rows(maps, ys.i1))  # (A, cy, w)
    across = row_max.transpose(1, 2).contiguous()  # (A, w, cy): the columns as rows, to pick them fast
    cell_max = torch.maximum(select_rows(across, xs.i0), select_rows(across, xs.i1)).transpose(1, 2)  # (A, cy, cx)
    m, cy, cx = nonzero(cell_max > t_low[:, None, None])
    flat = maps.reshape(-1)
    top, bottom = m * (h * w) + pick(ys.i0, cy) * w, m * (h * w) + pick(ys.i1, cy) * w
    left, right = pick(xs.i0, cx), pick(xs.i1, cx)
    c00, c01, c10, c11 = (pick(flat, row + col).to(torch.float64) for row in (top, bottom) for col in (left, right))

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


def masked_pixels(
    maps: torch.Tensor, thresholds: torch.Tensor, ys: AxisCells, xs: AxisCells
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels of the masks of :func:`mask_runs`, as (map number, flat pixel) per masked pixel."""
    run_map, start, length = mask_runs(maps, thresholds, ys, xs)
    pixel, pixel_map = expand_runs(start, length, run_map)
    return pixel_map, pixel
