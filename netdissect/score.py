"""IoU, labels, detectors and unique-detector counts (docs/dissection.md §5); result.csv and summary.json (§6).

The rules of §5 are defined once, here, over arrays (:func:`detector_mask`, :func:`count_units`): the
scores of a counts file and the report read from result.csv both count with them.

Everything here is a function of the counts (G, I, C), so scores can be recomputed from a counts
file without the model: ``netdissect score --counts counts.npz --dataset DIR --out LAYER_DIR``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from netdissect.defaults import IOU_THRESHOLD
from netdissect.errors import NetDissectError
from netdissect.io import atomic_write_text, save_json

IOU_EPS = 1e-10


@dataclass
class Scores:
    """Per-unit results of one layer. U units, L labels, K categories."""

    iou: np.ndarray  # (U, L) float64; 0 for labels without a primary category and label 0
    best_label: np.ndarray  # (U, K) int64, best label of each category, 0 = empty
    best_iou: np.ndarray  # (U, K) float64
    category: np.ndarray  # (U,) int64, index of the unit's category
    label: np.ndarray  # (U,) int64, the unit's label (0 = empty)
    score: np.ndarray  # (U,) float64, IoU of that label
    detector: np.ndarray  # (U,) bool, :func:`detector_mask`
    iou_threshold: float


def iou(G: np.ndarray, I: np.ndarray, C: np.ndarray, primary: np.ndarray) -> np.ndarray:
    """IoU[u,l] = I / (C[u, primary(l)] + G[l] − I + 1e-10); 0 where l has no primary category or l = 0."""
    scorable = primary >= 0
    scorable[0] = False
    cat = np.where(scorable, primary, 0)
    union = C[:, cat].astype(np.float64) + G[None, :].astype(np.float64) - I + IOU_EPS
    return np.where(scorable[None, :], I / union, 0.0)


def score_units(
    G: np.ndarray, I: np.ndarray, C: np.ndarray, primary: np.ndarray, iou_threshold: float = IOU_THRESHOLD
) -> Scores:
    """Labels, scores and detectors of every unit (docs/dissection.md §5)."""
    primary = np.asarray(primary, dtype=np.int64)
    num_categories = C.shape[1]
    values = iou(G, I, C, primary)
    in_cat = primary[None, :] == np.arange(num_categories)[:, None]  # (K, L)
    per_cat = np.where(in_cat[None], values[:, None, :], -1.0)  # (U, K, L)
    best_label = per_cat.argmax(axis=2)  # ties: lowest label
    best_iou = np.take_along_axis(values, best_label, axis=1) * (per_cat.max(axis=2) >= 0)
    best_label = np.where(best_iou > 0, best_label, 0)
    category = best_iou.argmax(axis=1)  # ties: earlier category
    score = best_iou[np.arange(len(category)), category]
    label = best_label[np.arange(len(category)), category]
    return Scores(
        iou=values,
        best_label=best_label,
        best_iou=best_iou,
        category=category,
        label=label,
        score=score,
        detector=detector_mask(score, label > 0, iou_threshold),
        iou_threshold=iou_threshold,
    )


def detector_mask(score: np.ndarray, labelled: np.ndarray, iou_threshold: float) -> np.ndarray:
    """THE detector rule: a unit with a label whose score is >= ``iou_threshold`` (docs/dissection.md §5).
    (A unit without a label detects nothing, also at ``iou_threshold`` 0.)"""
    return (np.asarray(score, dtype=np.float64) >= iou_threshold) & np.asarray(labelled, dtype=bool)


@dataclass(frozen=True)
class LayerCounts:
    """Detector counts of one layer (docs/dissection.md §5).

    ``per_category[c]`` holds ``detectors`` (detectors whose overall category is c), ``unique_top``
    (distinct labels among those) and ``unique_by_category`` (distinct c-best labels among units whose
    c-best IoU > threshold).
    """

    units: int
    detectors: int
    unique_top: int
    unique_by_category: int
    iou_threshold: float
    per_category: dict[str, dict[str, int]] = field(default_factory=dict)


def count_units(
    score: np.ndarray,
    label: np.ndarray,
    category: np.ndarray,
    best_iou: np.ndarray,
    best_label: np.ndarray,
    categories: Sequence[str],
    iou_threshold: float,
    empty: Any = 0,
) -> LayerCounts:
    """Detectors and both unique-detector counts, overall and per category.

    ``score``, ``label`` (U,): each unit's score and label; ``category`` (U,): index of its category in
    ``categories``; ``best_iou``, ``best_label`` (U, K): its best label and IoU in every category.
    Labels may be numbers or names; ``empty`` is the value of "no label" (0, or "" in result.csv).
    """
    label, best_label = np.asarray(label), np.asarray(best_label)
    detector = detector_mask(score, label != empty, iou_threshold)
    per_category = {}
    for c, name in enumerate(categories):
        of_category = detector & (np.asarray(category) == c)
        chosen = (np.asarray(best_iou)[:, c] > iou_threshold) & (best_label[:, c] != empty)
        per_category[name] = {
            "detectors": int(of_category.sum()),
            "unique_top": int(np.unique(label[of_category]).size),
            "unique_by_category": int(np.unique(best_label[chosen, c]).size),
        }
    return LayerCounts(
        units=int(len(label)),
        detectors=int(detector.sum()),
        unique_top=int(np.unique(label[detector]).size),
        unique_by_category=sum(c["unique_by_category"] for c in per_category.values()),
        iou_threshold=iou_threshold,
        per_category=per_category,
    )


def unit_counts(scores: Scores, categories: Sequence[str]) -> LayerCounts:
    """:func:`count_units` of a layer's :class:`Scores`."""
    return count_units(
        scores.score,
        scores.label,
        scores.category,
        scores.best_iou,
        scores.best_label,
        categories,
        scores.iou_threshold,
    )


def result_csv(
    scores: Scores, G: np.ndarray, I: np.ndarray, C: np.ndarray, categories: Sequence[str], label_names: Sequence[str]
) -> str:
    """result.csv text (docs/dissection.md §6): header, then one row per unit sorted by score descending (ties: unit)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    header = ["unit", "category", "label", "score"]
    for cat in categories:
        header += [f"{cat}-label", f"{cat}-truth", f"{cat}-activation", f"{cat}-intersect", f"{cat}-iou"]
    writer.writerow(header)
    order = np.argsort(-scores.score, kind="stable")
    for u in order:
        lab = int(scores.label[u])
        row: list[Any] = [
            u + 1,
            categories[int(scores.category[u])],
            label_names[lab] if lab else "",
            repr(float(scores.score[u])),
        ]
        for c in range(len(categories)):
            l = int(scores.best_label[u, c])
            if l:
                row += [label_names[l], int(G[l]), int(C[u, c]), int(I[u, l]), repr(float(scores.best_iou[u, c]))]
            else:
                row += ["", 0, int(C[u, c]), 0, repr(0.0)]
        writer.writerow(row)
    return out.getvalue()


def summary(
    scores: Scores,
    categories: Sequence[str],
    label_names: Sequence[str],
    settings: dict[str, Any],
    num_images: int,
    paths: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """summary.json content: units, detectors, both unique counts, per-category counts, settings, and
    ``paths`` (where the dataset and the shards are, relative to the layer folder; read by
    ``netdissect report LAYER_DIR``) when given."""
    counts = unit_counts(scores, categories)
    info = {
        "layer": settings.get("layer"),
        "units": counts.units,
        "detectors": counts.detectors,
        "iou_threshold": scores.iou_threshold,
        "unique_top": counts.unique_top,
        "unique_by_category": counts.unique_by_category,
        "per_category": counts.per_category,
        "num_images": num_images,
        "settings": settings,
        "fingerprints": {
            "dataset": settings.get("dataset_fingerprint"),
            "model": settings.get("model"),
            "weights_sha256": settings.get("weights_sha256"),
        },
    }
    if paths is not None:
        info["paths"] = paths
    return info


def write_scores(
    out_dir: str | Path,
    counts: dict[str, Any],
    categories: Sequence[str],
    label_names: Sequence[str],
    primary: np.ndarray,
    iou_threshold: float = IOU_THRESHOLD,
    paths: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score a counts dict and write ``result.csv`` and ``summary.json`` into ``out_dir``; returns the summary.
    ``paths`` goes into summary.json as is (see :func:`summary`)."""
    if not iou_threshold >= 0:
        raise NetDissectError(f"--iou-threshold {iou_threshold}: expected a number >= 0")
    G, I, C = counts["G"], counts["I"], counts["C"]
    if len(label_names) != G.shape[0] or len(categories) != C.shape[1]:
        raise NetDissectError(
            f"the counts have {G.shape[0]} labels and {C.shape[1]} categories, the dataset "
            f"{len(label_names)} labels and {len(categories)} categories; score with the "
            f"dataset (and --categories) the counts were made from"
        )
    scores = score_units(G, I, C, primary, iou_threshold)
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "result.csv", result_csv(scores, G, I, C, categories, label_names))
    info = summary(scores, categories, label_names, counts["settings"], counts["stop"] - counts["start"], paths)
    save_json(out_dir / "summary.json", info)
    return info
