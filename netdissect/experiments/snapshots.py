"""Training snapshots (docs/experiments.md §2): the steps at which a network is saved during training,
and their file names.

A snapshot at step s holds the weights after s optimiser steps (s ≥ 1). ``netdissect train-demo
--snapshots DIR`` writes ``DIR/step{s}.pt`` (:func:`snapshot_name`), at the given steps or, by
default, at :data:`netdissect.defaults.SNAPSHOT_COUNT` log-spaced steps ending with the last one
(:func:`log_steps`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from netdissect.errors import NetDissectError


def log_steps(total: int, count: int) -> list[int]:
    """Up to ``count`` whole steps from 1 to ``total``, evenly spaced on a log scale (repeats after
    rounding dropped), the last one ``total``."""
    if total < 1 or count < 1:
        raise NetDissectError(f"snapshots: {count} log-spaced steps of {total}: expected at least 1 of each")
    return sorted({int(round(v)) for v in np.geomspace(1, total, count)} | {total})


def check_steps(steps: Sequence[int], total: int | None = None, what: str = "--snapshot-steps") -> list[int]:
    """Steps are whole numbers ≥ 1, strictly increasing and (when ``total`` is known) ≤ ``total``."""
    steps = list(steps)
    if not steps:
        raise NetDissectError(f"{what}: no steps given; list the training steps to save, e.g. 1,10,100")
    for s in steps:
        if isinstance(s, bool) or not float(s).is_integer() or s < 1:
            raise NetDissectError(f"{what}: step {s!r} is not a whole number >= 1 (step 1 = after the first update)")
    for a, b in zip(steps, steps[1:]):
        if b <= a:
            raise NetDissectError(f"{what}: step {b} follows step {a}; give the steps in increasing order, each once")
    if total is not None and steps[-1] > total:
        raise NetDissectError(
            f"{what}: step {steps[-1]} is past the end of training ({total} steps); give steps up to {total} "
            f"or train for more epochs"
        )
    return [int(s) for s in steps]


def snapshot_name(step: int) -> str:
    """The file name of the snapshot at ``step`` in a snapshots folder."""
    return f"step{int(step)}.pt"
