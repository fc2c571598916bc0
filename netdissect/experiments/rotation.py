"""Dissecting a layer in a rotated basis (docs/experiments.md §1): the random rotation Q of a layer's
units, its fractional powers R(p), and the rotated activations.

- :func:`random_rotation`: Q, a uniformly distributed rotation (orthogonal, det +1) of U units from a
  seeded Gaussian matrix (numpy ``Generator(PCG64(seed))``, float64): QR decomposition, columns
  sign-fixed by the signs of R's diagonal, the first column negated if det Q = -1.
- :func:`fractional_rotation`: R(p) = W·B(p)·Wᵀ from the real Schur form Q = W·B·Wᵀ
  (``scipy.linalg.schur(output="real")``; B is block diagonal for an orthogonal Q: 2×2 blocks
  rotating by θ_j ∈ (−π, π], 1×1 blocks ±1, the −1s taken in pairs as rotations by π), every angle
  scaled by p. R(0) = I, R(1) = Q, R(p)·R(q) = R(p + q).
- :func:`rotate_maps`: a'[i, c, y, x] = Σ_c' R[c, c'] · a[i, c', y, x].

At p = 0 nothing is rotated at all (:func:`rotation_matrix` returns None), so results are identical
to an unrotated run's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from netdissect.errors import NetDissectError


def check_rotation(units: int, power: float, layer: str = "") -> None:
    """A rotation needs 2 or more units and a power 0 ≤ p ≤ 1."""
    if not 0.0 <= power <= 1.0:
        raise NetDissectError(
            f"--rotation-power {power}: expected a fraction of the full rotation from 0 (none) to 1 (all of Q)"
        )
    if units < 2:
        raise NetDissectError(
            f"--rotation-power {power}: layer {layer} has {units} unit; a rotation mixes two or more units, "
            f"so rotate a layer with several units (or leave out --rotation-power)"
        )


def random_rotation(units: int, seed: int) -> np.ndarray:
    """Q: a (units, units) float64 rotation drawn uniformly (Haar measure on SO(U)) with ``seed``."""
    gaussian = np.random.default_rng(seed).standard_normal((units, units))
    q, r = np.linalg.qr(gaussian)
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def rotation_angles(q: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """The real Schur form of a rotation Q = W·B·Wᵀ as (W, [(i, j, θ), ...]): B rotates the plane of
    Schur vectors (i, j) by θ ∈ (−π, π] (θ = π for a pair of −1 eigenvalues); every other Schur
    vector is fixed (eigenvalue +1)."""
    from scipy.linalg import schur

    b, w = schur(q, output="real")
    planes, minus, k = [], [], 0
    while k < len(b):
        if k + 1 < len(b) and b[k + 1, k] != 0.0:  # a 2×2 block [[c, -s], [s, c]]
            planes.append(
                (k, k + 1, float(np.arctan2((b[k + 1, k] - b[k, k + 1]) / 2, (b[k, k] + b[k + 1, k + 1]) / 2)))
            )
            k += 2
        else:
            if b[k, k] < 0:
                minus.append(k)
            k += 1
    if len(minus) % 2:
        raise NetDissectError("rotation: the matrix has det -1, so it is not a rotation; draw it with random_rotation")
    planes += [(i, j, float(np.pi)) for i, j in zip(minus[::2], minus[1::2])]
    return w, planes


def fractional_rotation(q: np.ndarray, power: float) -> np.ndarray:
    """R(p) = W·B(p)·Wᵀ: every rotation angle of Q scaled by ``power`` (R(0) = I, R(1) = Q)."""
    if power == 0:
        return np.eye(len(q))
    if power == 1:
        return q.copy()
    w, planes = rotation_angles(q)
    b = np.eye(len(q))
    for i, j, theta in planes:
        c, s = np.cos(power * theta), np.sin(power * theta)
        b[i, i], b[i, j], b[j, i], b[j, j] = c, -s, s, c
    return w @ b @ w.T


def rotation_matrix(units: int, seed: int, power: float, layer: str = "") -> np.ndarray | None:
    """R(power) of a layer of ``units`` units rotated with ``seed``; None at power 0 (nothing to rotate)."""
    check_rotation(units, power, layer)
    if power == 0:
        return None
    return fractional_rotation(random_rotation(units, seed), power)


def rotate_maps(maps: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """a'[i, c] = Σ_c' R[c, c'] · a[i, c'] for maps (B, U, H, W), in the maps' dtype (float32: the
    precision of the activations themselves, and 5 times faster than float64 on the CPU)."""
    b, u, h, w = maps.shape
    return torch.matmul(rotation.to(maps.dtype), maps.reshape(b, u, h * w)).reshape(b, u, h, w)


def shard_rotation(metas: list[tuple[Path, dict[str, Any]]], layer: str) -> np.ndarray | None:
    """The matrix the shards of a layer were rotated with ((folder, meta.json) pairs, as
    :func:`netdissect.shards.layer_shards` gives them), or None when they were not rotated; every
    shard must have used the same one (same seed, power and matrix, to the last bit)."""
    from netdissect.shards import shard_file

    first_dir, first = metas[0]
    for d, meta in metas[1:]:
        if meta.get("rotation") != first.get("rotation"):
            raise NetDissectError(
                f"{d}: rotation {meta.get('rotation')} differs from {first_dir}'s {first.get('rotation')}; "
                f"extract every shard with the same --rotation-seed and --rotation-power"
            )
    if first.get("rotation") is None:
        return None
    matrices = [np.load(shard_file(d, layer, "rotation")) for d, _ in metas]
    for (d, _), matrix in zip(metas[1:], matrices[1:]):
        if not np.array_equal(matrix, matrices[0]):
            raise NetDissectError(
                f"{d}: its {layer}.rotation.npy differs from {first_dir}'s although seed and power agree "
                f"(another numpy or LAPACK build?); extract every shard on one kind of machine"
            )
    return matrices[0]
