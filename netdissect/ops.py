"""Tensor operations that torch's CPU kernels do slowly, written the fast way for the CPU.

Each function gives the same result as the plain torch expression named in its docstring on any
device; on the CPU it goes through ``index_select`` or numpy, which are several times faster there
(measured in docs/benchmarks.md). :func:`keep_freed_memory` tunes glibc's allocator for stages that
allocate and free many mid-sized arrays.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch


def pick(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]`` along the first axis; ``index_select`` is several times faster on the CPU."""
    return values.index_select(0, index)


def select_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values.index_select(1, index)`` of a (P, n, Q) tensor. On the CPU it picks whole rows of Q
    values along the first axis of a (P·n, Q) view instead (several times faster than torch's
    gather along a middle axis)."""
    if values.device.type != "cpu":
        return values.index_select(1, index)
    p, n, q = values.shape
    rows = (torch.arange(p)[:, None] * n + index[None, :]).reshape(-1)
    return values.reshape(p * n, q).index_select(0, rows).reshape(p, len(index), q)


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


def expand_runs(start: torch.Tensor, length: torch.Tensor, *tags: torch.Tensor) -> list[torch.Tensor]:
    """The integers of runs ``start[r], start[r] + 1, ...`` (``length[r]`` of them) in one list,
    followed by each ``tags`` tensor's value of the run of every integer. (On the CPU numpy's
    ``repeat`` does it, faster than ``torch.repeat_interleave``.)"""
    first = torch.cumsum(length, 0) - length  # list position of each run's start
    items = torch.arange(int(length.sum()), device=start.device)
    if start.device.type == "cpu":
        repeat = lambda values: torch.from_numpy(np.repeat(values.numpy(), length.numpy()))
    else:
        repeat = lambda values: torch.repeat_interleave(values, length)
    return [items + repeat(start - first)] + [repeat(g) for g in tags]


def keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed memory for reuse (blocks under 32 MiB from its heaps, and up to
    1 GiB of free heap kept). The tally allocates and frees mid-sized arrays for every batch; by
    default glibc maps each one anew and returns it on free, and every page of it then faults in again
    (docs/benchmarks.md has the cost). A process-wide setting, harmless for the other stages; a
    no-op without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass
