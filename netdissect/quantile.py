"""Exact per-unit thresholds (docs/dissection.md §2), mergeable across shards with bounded memory.

The threshold of unit u is ``numpy.quantile(values, 1 - q)`` over all ``n = N·H·W`` values of that
unit in the whole dataset (linear interpolation between order statistics). numpy computes it as::

    v  = (n - 1) * (1 - q)           # virtual index into the ascending order statistics
    lo = floor(v);  gamma = v - lo
    T  = lerp(sorted[lo], sorted[lo + 1], gamma)      (sorted[n - 1] when v >= n - 1)

so T depends only on the ``k = n - lo`` LARGEST values of the unit (:func:`candidate_count`). Each
shard keeps its top-k values per unit (k computed from the GLOBAL n, which extraction knows from the
dataset length); the top-k of a union is the top-k of the shards' top-k's, so merging loses nothing
and :func:`thresholds_from_candidates` reproduces numpy's result bit for bit (same float64 formula).

Memory bound. ``k ≈ q·n + 1``. A shard's candidates file is (U, min(k, n_shard)) float32, e.g.
ResNet-18 layer4 on Broden (63,305 images, 7×7, q = 0.005): k = 15,510, 512 units → 32 MB.
While extracting, :class:`TopK` holds one buffer of U·(k + max(k/2, B·H·W)) float32 values per layer
(B = batch), whatever N; merging holds two shards' candidates at once: U·2k. Big maps cost more (layer1,
56×56, 64 units: k ≈ 993,000 → 254 MB per shard file, a 381 MB buffer); pass ``--quantile`` to extract
only as small as you need.

Candidates files (``{layer}.topk.npy``) hold (U, k_shard) float32, each row sorted descending.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from netdissect.errors import NetDissectError


def candidate_count(num_values: int, q: float) -> int:
    """How many of the largest values per unit the level ``1 - q`` quantile needs (exact, numpy's formula)."""
    if not 0.0 <= q < 1.0:
        raise NetDissectError(f"--quantile {q}: expected a fraction 0 <= q < 1 (0.005 = top 0.5%)")
    if num_values < 1:
        raise NetDissectError("no activation values: the dataset is empty")
    virtual = (num_values - 1) * (1.0 - q)
    if virtual >= num_values - 1:
        return 1
    return num_values - math.floor(virtual)


class TopK:
    """Streaming top-k per unit: ``add`` (U, m) blocks, ``result`` gives (U, ≤k) sorted descending.

    The values live in one buffer per layer, (U, k + room) with room = max(k/2, first block), allocated
    at the first block (its pages are touched as it fills): the first columns hold the values kept so
    far, new blocks are copied in after them, and when the next block would not fit, the buffer is
    partitioned in place so that each unit's k largest come first (no index array, no second copy).
    Memory is therefore bounded by the buffer and the block being added, whatever N. Once k values are
    kept, a unit's smallest kept value is a floor: a new value at or below it cannot change the k
    largest values (an equal one only swaps with an equal one), so when k exceeds a block only as many
    values per unit are copied in as the unit with the most values above its floor has (at the top
    0.5 %, few), and reductions are rare.
    """

    def __init__(self, k: int):
        self.k = k
        self.buffer: torch.Tensor | None = None  # (U, capacity): kept values, then the pending ones
        self.size = 0  # columns of the buffer in use
        self.pending_size = 0  # of them, values added since the last reduction
        self.floor: torch.Tensor | None = None  # (U,) smallest kept value, once k are kept

    def add(self, values: torch.Tensor) -> None:
        if self.floor is not None and self.k > values.shape[1]:  # (a k smaller than a block: reduced at once)
            above = int((values > self.floor[:, None]).sum(dim=1).max())
            if above == 0:
                return
            if above < values.shape[1]:
                values = torch.topk(values, above, dim=1, sorted=False).values
        m = values.shape[1]
        if self.buffer is None:
            self.buffer = torch.empty(
                (values.shape[0], self.k + max(m, self.k // 2)), dtype=values.dtype, device=values.device
            )
        if self.size + m > self.buffer.shape[1]:
            self._reduce()
        if self.size + m > self.buffer.shape[1]:  # a block wider than any before: a larger buffer
            grown = torch.empty(
                (self.buffer.shape[0], self.size + m), dtype=self.buffer.dtype, device=self.buffer.device
            )
            grown[:, : self.size] = self.buffer[:, : self.size]
            self.buffer = grown
        self.buffer[:, self.size : self.size + m] = values
        self.size += m
        self.pending_size += m

    def _reduce(self) -> None:
        """Keep each unit's k largest values in the buffer's first k columns (in no order)."""
        k = min(self.k, self.size)
        if k < self.size:
            used = self.buffer[:, : self.size]
            if used.device.type == "cpu":  # in place: -x ascending is x descending, and negation is exact
                array = used.numpy()
                np.negative(array, out=array)
                array.partition(k - 1, axis=1)
                np.negative(array, out=array)
            else:
                self.buffer[:, :k] = torch.topk(used, k, dim=1, sorted=False).values
        self.size, self.pending_size = k, 0
        self.floor = self.buffer[:, :k].amin(dim=1) if k == self.k else None

    def result(self) -> np.ndarray:
        """(U, min(k, values seen)) float32, each row descending. On the CPU a view of the buffer, sorted
        in place: valid until the next ``add``."""
        if self.buffer is None:
            raise NetDissectError("no activation values were added: the shard is empty")
        if self.pending_size:
            self._reduce()
        kept = self.buffer[:, : self.size]
        if kept.device.type != "cpu" or kept.dtype != torch.float32:
            return torch.sort(kept, dim=1, descending=True).values.cpu().numpy().astype(np.float32, copy=False)
        array = kept.numpy()
        np.negative(array, out=array)
        array.sort(axis=1)
        np.negative(array, out=array)
        return array


def merge_candidates(parts: Iterable[np.ndarray], k: int) -> np.ndarray:
    """Top-k per unit of several (U, k_i) candidate arrays: (U, min(k, Σk_i)), rows descending.

    Sorted in place (negated, so that ascending is descending; negation is exact): the memory is the
    joined array, with no index array (a 56x56 layer's candidates at 63,305 images are 254 MB a shard)."""
    merged: np.ndarray | None = None
    for part in parts:
        if merged is not None and part.shape[0] != merged.shape[0]:
            raise NetDissectError(
                f"candidate arrays disagree on the number of units: {merged.shape[0]} vs "
                f"{part.shape[0]}; were the shards extracted from the same model and layer?"
            )
        both = np.array(part, dtype=np.float32) if merged is None else np.concatenate([merged, part], axis=1)
        kk = min(k, both.shape[1])
        np.negative(both, out=both)
        if kk < both.shape[1]:
            both.partition(kk - 1, axis=1)
        top = both[:, :kk]
        top.sort(axis=1)
        np.negative(top, out=top)
        merged = top
    if merged is None:
        raise NetDissectError("no shards given to merge")
    return merged


def thresholds_from_candidates(candidates: np.ndarray, num_values: int, q: float) -> np.ndarray:
    """Per-unit ``numpy.quantile(all values, 1 - q)`` from the top candidates (rows descending), float64."""
    k = candidate_count(num_values, q)
    if candidates.shape[1] < k:
        raise NetDissectError(
            f"the shards kept {candidates.shape[1]} candidates per unit but the quantile "
            f"1 - {q} over {num_values} values needs {k}; re-run extract with --quantile {q} "
            f"(or a larger q)"
        )
    virtual = (num_values - 1) * (1.0 - q)
    if virtual >= num_values - 1:
        return candidates[:, 0].astype(np.float64)
    lo = math.floor(virtual)
    gamma = virtual - lo
    a = candidates[:, num_values - 1 - lo].astype(np.float64)  # ascending order statistic lo
    b = candidates[:, num_values - 2 - lo].astype(np.float64)  # ascending order statistic lo + 1
    diff = b - a  # numpy's _lerp, exactly
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


def load_thresholds(path: str | Path, units: int, layer: str) -> np.ndarray:
    """Read a thresholds file (one number per unit, .npy) as float64 (U,), checking its length."""
    try:
        t = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise NetDissectError(f"--thresholds {path}: file not found") from None
    except Exception as err:
        raise NetDissectError(f"--thresholds {path}: not a .npy array ({err})") from None
    t = np.asarray(t)
    if t.ndim != 1 or t.shape[0] != units or not np.issubdtype(t.dtype, np.number):
        raise NetDissectError(
            f"--thresholds {path}: expected {units} numbers (one per unit of layer {layer}), "
            f"found an array of shape {t.shape} and type {t.dtype}; give the thresholds.npy "
            f"of the same model and layer"
        )
    t = t.astype(np.float64)
    if not np.isfinite(t).all():
        raise NetDissectError(
            f"--thresholds {path}: unit {int(np.flatnonzero(~np.isfinite(t))[0])} has a "
            f"non-finite threshold; thresholds must be finite numbers"
        )
    return t
