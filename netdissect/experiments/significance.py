"""Per-unit significance: a permutation test of each unit's score (docs/experiments.md §3).

The statistic of unit u is its score s_u, the best IoU over all labels (docs/dissection.md §5). Under
the null, a unit's masks carry no information about which image they came from: permutation k pairs
the masks of image ``π_k(i)`` with the labels of image i (images are only exchanged with images of
the same segmentation size), the intersections I and category activations C are counted again (the
label areas G do not change), and the best IoU over all labels gives ``s_u^(k)``. Then
``p_u = (1 + #{k: s_u^(k) ≥ s_u}) / (K + 1)``.

Cost. Each (image, unit) mask is decided once (:func:`batch_masks`, with the tally's
:mod:`netdissect.masks`) and kept as runs of consecutive pixels; every label layer is cut once into
segments of equal label (:class:`LabelTable`, 2 bytes per label pixel, like the packed labels, held
in memory so that any image's masks can be paired with any image's labels). A permutation then only
finds, for each run and each layer of the paired image, the segments it meets, and counts
(:func:`permuted_counts`): no mask is decided again and no pixel is visited.

Permutation 0 is always the identity: its counts must equal the tally's (``counts.npz``), a check
that the shards, thresholds and labels are the ones the layer was counted with.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netdissect.defaults import ALPHA, BATCH_SIZE, IOU_THRESHOLD, PERMUTATION_SEED, PERMUTATIONS
from netdissect.errors import NetDissectError
from netdissect.io import atomic_write_text, save_json, save_npy
from netdissect.masks import BILINEAR, grid_cells, mask_runs
from netdissect.ops import nonzero, pick
from netdissect.score import detector_mask, iou

PERCENTILES = (95, 99)  # of the null scores, written per unit


def check_permutations(permutations: int, alpha: float) -> None:
    """K ≥ 1, 0 < α < 1, and 1/(K + 1) ≤ α: otherwise no p-value could ever reach α."""
    if permutations < 1:
        raise NetDissectError(f"--permutations {permutations}: expected a whole number >= 1 (100 is usual)")
    if not 0 < alpha < 1:
        raise NetDissectError(f"--alpha {alpha}: expected a level between 0 and 1 (0.01 is usual)")
    if 1 / (permutations + 1) > alpha:
        need = int(np.ceil(1 / alpha - 1 - 1e-9))
        raise NetDissectError(
            f"--permutations {permutations}: the smallest p-value {permutations} permutations can give is "
            f"1/{permutations + 1} = {1 / (permutations + 1):.4g}, above alpha = {alpha:g}, so no unit could "
            f"be significant; use --permutations {need} or more (or a larger --alpha)"
        )


def draw_permutations(sizes: np.ndarray, permutations: int, seed: int) -> np.ndarray:
    """(K + 1, N) int64 image permutations: row 0 the identity, rows 1..K seeded random permutations
    within each group of images of the same segmentation size (``sizes`` (N, 2): sh, sw per image).

    Row k maps label image i to mask image ``perm[k, i]``. numpy's ``Generator(PCG64(seed))``: the
    same seed gives the same permutations on every machine."""
    sizes = np.asarray(sizes, dtype=np.int64).reshape(len(sizes), 2)
    n = len(sizes)
    rng = np.random.default_rng(seed)
    _, group = np.unique(sizes, axis=0, return_inverse=True)
    members = [np.flatnonzero(group.reshape(-1) == g) for g in range(int(group.max()) + 1)] if n else []
    out = np.tile(np.arange(n, dtype=np.int64), (permutations + 1, 1))
    for k in range(1, permutations + 1):
        for rows in members:
            out[k, rows] = rows[rng.permutation(len(rows))]
    return out


def check_pairing(perms: np.ndarray, sizes: np.ndarray) -> None:
    """Every row of ``perms`` is a permutation of the images that pairs images of one segmentation size."""
    sizes = np.asarray(sizes, dtype=np.int64).reshape(len(sizes), 2)
    n = len(sizes)
    if perms.ndim != 2 or perms.shape[1] != n:
        raise NetDissectError(f"permutations: expected shape (K, {n}) for {n} images, got {perms.shape}")
    for k, perm in enumerate(perms):
        if not np.array_equal(np.sort(perm), np.arange(n)):
            raise NetDissectError(f"permutation {k}: not a permutation of the {n} image indices")
        odd = np.flatnonzero((sizes[perm] != sizes).any(axis=1))
        if odd.size:
            i, j = int(odd[0]), int(perm[odd[0]])
            raise NetDissectError(
                f"permutation {k} pairs the labels of image {i} (index.csv row {i + 2}, segmentation "
                f"{sizes[i, 0]}x{sizes[i, 1]}) with the masks of image {j} (row {j + 2}, {sizes[j, 0]}x"
                f"{sizes[j, 1]}); masks and labels are compared pixel by pixel, so a permutation may only "
                f"exchange images of the same segmentation size"
            )


@dataclass(frozen=True)
class LabelTable:
    """Every image's labels as runs of equal labels, so that any image's masks can be paired with any
    image's labels.

    Each pixel layer, read row by row as one line of sh·sw pixels, is cut into segments of equal
    label. ``segment`` holds, for every pixel of every layer of every image (concatenated, then one
    block of zeros), the number of its segment within its layer (uint16, or uint32 for layers over
    65,536 pixels); ``pixel_base`` (Kmax, N) int64 is where layer t of image i starts in it and
    ``segment_base`` (Kmax, N) where its segments start in ``start``, ``stop`` (pixel range within the
    layer) and ``label``. A layer an image lacks points at the zeros and at one segment of label 0
    (never counted) covering any pixel. ``layers`` (N,): each image's number of layers.
    ``image_labels`` (N, J) int64, unique per image, 0-padded. ``has`` (N, K) bool: the image has
    category c (some label of primary category c, any layer or image-level: the ``paper`` union);
    ``image_category`` (N, K) bool: it has an image-level label of primary category c (part of the
    ``lite`` union). ``sizes`` (N, 2): sh, sw.
    """

    segment: np.ndarray
    pixel_base: np.ndarray
    segment_base: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    label: np.ndarray
    layers: np.ndarray
    image_labels: np.ndarray
    has: np.ndarray
    image_category: np.ndarray
    sizes: np.ndarray


def label_table(items: Sequence[dict[str, Any]], num_labels: int, primary: np.ndarray, num_categories: int):
    """A :class:`LabelTable` from the label items of every image (``pixel_labels`` (K, sh, sw),
    ``image_labels`` (J,), optionally ``label_pixels``, as BrodenDataset or PackedLabels give them)."""
    n = len(items)
    layers = np.array([int(item["pixel_labels"].shape[0]) for item in items], dtype=np.int64)
    sizes = np.array([tuple(item["pixel_labels"].shape[1:]) for item in items], dtype=np.int64).reshape(n, 2)
    area = sizes.prod(axis=1)
    largest = int(area.max(initial=1))
    kmax = int(layers.max(initial=1)) or 1
    offset = np.concatenate([[0], np.cumsum(layers * area)]).astype(np.int64)
    segment = np.zeros(int(offset[-1]) + largest, dtype=np.uint16 if largest <= 2**16 else np.uint32)
    pixel_base = np.full((kmax, n), offset[-1], dtype=np.int64)
    segment_base = np.zeros((kmax, n), dtype=np.int64)  # segment 0: label 0 over any pixel
    starts, stops, labels, counts = [np.array([0])], [np.array([largest])], [np.array([0])], []
    total = 1  # segments so far
    image_sets = [sorted(set(item["image_labels"].tolist()) - {0}) for item in items]
    image_labels = np.zeros((n, max([len(j) for j in image_sets] + [0])), dtype=np.int64)
    for i, item in enumerate(items):
        flat = item["pixel_labels"].numpy().reshape(layers[i], -1)
        if flat.size and int(flat.max()) >= num_labels:
            raise NetDissectError(
                f"image {i} (index.csv row {i + 2}): label number {int(flat.max())} is not in label.csv "
                f"({num_labels - 1} labels); check the dataset (`netdissect broden check`)"
            )
        change = np.ones(flat.shape, dtype=bool)
        change[:, 1:] = flat[:, 1:] != flat[:, :-1]
        segment[offset[i] : offset[i + 1]] = (np.cumsum(change, axis=1) - 1).reshape(-1)
        t, first = np.nonzero(change)  # layer by layer, segments in pixel order
        last = np.r_[first[1:], 0]
        last[np.r_[t[1:] != t[:-1], True]] = area[i]  # a layer's last segment ends at its last pixel
        pixel_base[: layers[i], i] = offset[i] + np.arange(layers[i]) * area[i]
        segment_base[: layers[i], i] = total + np.searchsorted(t, np.arange(layers[i]))
        starts.append(first)
        stops.append(last)
        labels.append(flat[t, first])
        counts.append(len(first))
        total += len(first)
        image_labels[i, : len(image_sets[i])] = image_sets[i]
    as_int64 = lambda parts: np.concatenate(parts).astype(np.int64)
    label = as_int64(labels)
    # which labels each image has (any pixel layer, image-level), and so which categories
    present = np.zeros((n, num_labels), dtype=bool)
    present[np.repeat(np.arange(n), counts), label[1:]] = True
    member = np.zeros((n, num_labels), dtype=bool)
    member[np.repeat(np.arange(n), image_labels.shape[1]), image_labels.reshape(-1)] = True
    present[:, 0] = member[:, 0] = False
    of_category = np.asarray(primary)[:, None] == np.arange(num_categories)[None, :]  # (L, K)
    has = (present | member).astype(np.int64) @ of_category > 0
    image_category = member.astype(np.int64) @ of_category > 0
    return LabelTable(
        segment,
        pixel_base,
        segment_base,
        as_int64(starts),
        as_int64(stops),
        label,
        layers,
        image_labels,
        has,
        image_category,
        sizes,
    )


@dataclass(frozen=True)
class BatchMasks:
    """The masks of a batch of images (one segmentation size), decided once: ``image`` (A,) global
    image index and ``unit`` (A,) of each non-empty (image, unit) mask and ``size`` (A,) its pixel
    count; the mask's pixels as runs of consecutive flat pixels (within the image), ``run_pair``
    (R,) the mask of each run and ``run_start``, ``run_stop`` its pixels [start, stop), maximal (two
    runs of a mask never touch) and in pixel order."""

    image: np.ndarray
    unit: np.ndarray
    size: np.ndarray
    run_pair: np.ndarray
    run_start: np.ndarray
    run_stop: np.ndarray


def batch_masks(
    acts: torch.Tensor,
    imgmax: torch.Tensor,
    thresholds: torch.Tensor,
    rows: np.ndarray,
    seg_size: tuple[int, int],
    upsample=BILINEAR,
) -> BatchMasks:
    """The masks M[i, u] of docs/dissection.md §3 of images ``rows`` (acts (B, U, H, W), imgmax (B, U),
    thresholds (U,) float64), as the tally decides them (:func:`netdissect.counts.tally_batch`)."""
    b, units = imgmax.shape
    thresholds = thresholds.to(torch.float64)
    img_idx, unit_idx = nonzero(imgmax.to(torch.float64) > thresholds[None, :])
    maps = pick(acts.reshape(b * units, *acts.shape[2:]), img_idx * units + unit_idx)
    ys, xs = grid_cells(upsample, acts.shape[2], acts.shape[3], seg_size[0], seg_size[1], str(acts.device))
    run_pair, run_start, run_length = (t.numpy() for t in mask_runs(maps, pick(thresholds, unit_idx), ys, xs))
    size = np.bincount(run_pair, run_length, minlength=img_idx.numel()).astype(np.int64)
    keep = run_length > 0
    run_pair, run_start, run_stop = run_pair[keep], run_start[keep], (run_start + run_length)[keep]
    order = np.lexsort((run_start, run_pair))
    run_pair, run_start, run_stop = run_pair[order], run_start[order], run_stop[order]
    joined = np.r_[False, (run_pair[1:] == run_pair[:-1]) & (run_start[1:] == run_stop[:-1])]
    head = np.flatnonzero(~joined)  # the first run of every maximal run
    tail = np.r_[head[1:], len(run_pair)] - 1
    return BatchMasks(
        np.asarray(rows, dtype=np.int64)[img_idx.numpy()],
        unit_idx.numpy(),
        size,
        run_pair[head],
        run_start[head],
        run_stop[tail],
    )


def _expand(length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For groups of ``length[r]`` items: each item's group r and its position within the group."""
    owner = np.repeat(np.arange(len(length)), length)
    return owner, np.arange(len(owner)) - np.repeat(np.cumsum(length) - length, length)


def permuted_counts(
    masks: BatchMasks,
    label_rows: np.ndarray,
    table: LabelTable,
    primary: np.ndarray,
    units: int,
    union: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Counts I (U, L) and C (U, K) of one batch's masks, each mask of image j paired with the labels
    of image ``label_rows[j]`` (global indices; j global too). docs/dissection.md §4 with the labels
    exchanged; exact int64.

    Every run of a mask meets, in each layer of the paired image, the label segments from the one
    holding its first pixel to the one holding its last; each (run, layer, segment) adds the pixels
    they share to (unit, segment's label)."""
    num_labels = len(primary)
    num_categories = table.has.shape[1]
    cat1 = np.asarray(primary, dtype=np.int64) + 1
    paired = label_rows[masks.image]  # (A,) the image whose labels each mask meets
    run_image = paired[masks.run_pair]
    run_layers = table.layers[run_image]
    run_key = (masks.unit * num_labels)[masks.run_pair]  # (unit, label 0) of every run's mask
    inter = np.zeros(units * num_labels)
    touched = []  # lite: (mask, category + 1) of every piece of a mask that meets a label
    for t in range(table.pixel_base.shape[0]):  # layer t of every paired image that has one
        runs = slice(None) if t < run_layers.min(initial=0) else np.flatnonzero(run_layers > t)
        image, pair, unit_key = run_image[runs], masks.run_pair[runs], run_key[runs]
        start, stop = masks.run_start[runs], masks.run_stop[runs]
        if not len(start):
            break
        pixel_base, segment_base = table.pixel_base[t][image], table.segment_base[t][image]
        first = segment_base + table.segment[pixel_base + start]
        last = segment_base + table.segment[pixel_base + stop - 1]
        # a run inside one segment adds its length to that segment's label
        whole = np.where(first == last, stop - start, 0)
        inter += np.bincount(unit_key + table.label[first], whole.astype(np.float64), minlength=len(inter))
        # a run that crosses segments adds, to each segment's label, the pixels it shares with it
        (cut,) = np.nonzero(whole == 0)
        piece, step = _expand(last[cut] - first[cut] + 1)
        piece = cut[piece]
        seg = first[piece] + step
        shared = np.minimum(stop[piece], table.stop[seg]) - np.maximum(start[piece], table.start[seg])
        inter += np.bincount(unit_key[piece] + table.label[seg], shared.astype(np.float64), minlength=len(inter))
        if union == "lite":
            touched += [pair[whole > 0] * (num_categories + 1) + cat1[table.label[first[whole > 0]]]]
            touched += [pair[piece] * (num_categories + 1) + cat1[table.label[seg]]]
    # image-level labels: |M| for each (unit, image-level label of the paired image)
    image_labels = table.image_labels[paired]  # (A, J)
    if image_labels.shape[1]:
        keys = (masks.unit * num_labels)[:, None] + image_labels
        sizes = np.broadcast_to(masks.size[:, None], keys.shape).astype(np.float64)
        inter += np.bincount(keys.reshape(-1), sizes.reshape(-1), minlength=units * num_labels)
    inter = np.rint(inter).astype(np.int64).reshape(units, num_labels)
    inter[:, 0] = 0
    # category-restricted activation
    if union == "paper":
        hit = table.has[paired]  # (A, K)
    else:
        touched = np.bincount(
            np.concatenate(touched or [[]]).astype(np.int64), minlength=len(paired) * (num_categories + 1)
        )
        hit = (touched.reshape(-1, num_categories + 1)[:, 1:] > 0) | table.image_category[paired]
    keys = (masks.unit * num_categories)[:, None] + np.arange(num_categories)
    cat_area = np.bincount(
        keys.reshape(-1), (hit * masks.size[:, None]).reshape(-1).astype(np.float64), minlength=units * num_categories
    )
    return inter, np.rint(cat_area).astype(np.int64).reshape(units, num_categories)


def count_permutations(
    batches: Iterable[tuple[np.ndarray, torch.Tensor, torch.Tensor]],
    perms: np.ndarray,
    table: LabelTable,
    primary: np.ndarray,
    thresholds: np.ndarray,
    units: int,
    union: str,
    upsample=BILINEAR,
) -> tuple[np.ndarray, np.ndarray]:
    """I (K, U, L) and C (K, U, Kc) of every permutation ``perms[k]`` (label image i meets the masks of
    image ``perms[k, i]``, :func:`draw_permutations`), from ``batches`` of (global rows, activations
    (B, U, H, W), maxima (B, U)) that cover every image once. Each mask is decided once per batch."""
    check_pairing(perms, table.sizes)
    label_rows = np.argsort(perms, axis=1)  # label_rows[k, j]: the image whose labels mask image j meets
    inter = np.zeros((len(perms), units, len(primary)), dtype=np.int64)
    cat_area = np.zeros((len(perms), units, table.has.shape[1]), dtype=np.int64)
    thresholds = torch.from_numpy(np.asarray(thresholds, dtype=np.float64))
    for rows, acts, imgmax in batches:
        for size in np.unique(table.sizes[rows], axis=0):
            sel = np.flatnonzero((table.sizes[rows] == size).all(axis=1))
            masks = batch_masks(acts[sel], imgmax[sel], thresholds, rows[sel], tuple(size), upsample)
            for k in range(len(perms)):
                i_k, c_k = permuted_counts(masks, label_rows[k], table, primary, units, union)
                inter[k] += i_k
                cat_area[k] += c_k
    return inter, cat_area


def best_iou(G: np.ndarray, I: np.ndarray, C: np.ndarray, primary: np.ndarray) -> np.ndarray:
    """Each unit's score: its best IoU over all labels (docs/dissection.md §5), (U,) float64; for
    stacked counts I (..., U, L), C (..., U, K) the scores (..., U)."""
    if I.ndim == 2:
        return iou(G, I, C, np.asarray(primary, dtype=np.int64).copy()).max(axis=1)
    return np.stack([best_iou(G, i, c, primary) for i, c in zip(I, C)])


def p_values(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """``(1 + #{k: null[k, u] ≥ observed[u]}) / (K + 1)`` per unit (null (K, U))."""
    return (1 + (null >= observed[None, :]).sum(axis=0)) / (null.shape[0] + 1)


def null_percentiles(null: np.ndarray) -> np.ndarray:
    """(len(PERCENTILES), U): the null scores' percentiles per unit (numpy's linear interpolation)."""
    return np.percentile(null, PERCENTILES, axis=0)


def significance_csv(
    score: np.ndarray,
    label: np.ndarray,
    category: np.ndarray,
    p: np.ndarray,
    percentiles: np.ndarray,
    categories: Sequence[str],
    label_names: Sequence[str],
) -> str:
    """significance.csv: ``unit,category,label,score,p,null_95,null_99``, one row per unit in unit order
    (1-based units; the label and score of result.csv; full-precision numbers)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["unit", "category", "label", "score", "p", *(f"null_{q}" for q in PERCENTILES)])
    for u in range(len(score)):
        lab = int(label[u])
        writer.writerow(
            [
                u + 1,
                categories[int(category[u])] if lab else "",
                label_names[lab] if lab else "",
                repr(float(score[u])),
                repr(float(p[u])),
                *(repr(float(v)) for v in percentiles[:, u]),
            ]
        )
    return out.getvalue()


def summary_block(p: np.ndarray, detector: np.ndarray, alpha: float, permutations: int, seed: int) -> dict[str, Any]:
    """What summary.json gains: the test's settings and the counts of units and detectors with p ≤ α."""
    significant = np.asarray(p) <= alpha
    return {
        "permutations": int(permutations),
        "seed": int(seed),
        "alpha": float(alpha),
        "min_p": 1 / (permutations + 1),
        "significant_units": int(significant.sum()),
        "significant_detectors": int((significant & np.asarray(detector, dtype=bool)).sum()),
    }


def permutation_test(
    dataset: str | Path,
    layer_dir: str | Path,
    shard_dirs: Sequence[str | Path],
    *,
    permutations: int = PERMUTATIONS,
    seed: int = PERMUTATION_SEED,
    alpha: float = ALPHA,
    labels: str | Path | None = None,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
    iou_threshold: float | None = None,
) -> dict[str, Any]:
    """The test of every unit of the layer in ``layer_dir`` (its counts.npz, with the thresholds it
    holds), with the activations of ``shard_dirs`` (shard folders or folders of them) and the labels of ``dataset`` (or the packed
    ``labels``). Writes LAYER_DIR/significance.csv, significance.json and null_scores.npy ((K, U)
    float64), adds the test to LAYER_DIR/summary.json when there is one; returns significance.json.
    Detectors are counted with ``iou_threshold`` (default: summary.json's, else the default one)."""
    from tqdm import tqdm

    from netdissect.counts import load_counts
    from netdissect.pipeline import layer_upsampling, open_dataset
    from netdissect.score import score_units
    from netdissect.shards import layer_shards, read_npy_rows, shard_dirs_of, shard_file

    check_permutations(permutations, alpha)
    if batch_size < 1:
        raise NetDissectError(f"--batch-size {batch_size}: expected a positive number")
    layer_dir = Path(layer_dir)
    counts = load_counts(layer_dir / "counts.npz")
    settings = counts["settings"]
    layer = settings["layer"]
    ds = open_dataset(dataset, settings.get("categories"), images=False, labels=labels is None)
    if ds.fingerprint() != settings.get("dataset_fingerprint", ds.fingerprint()):
        raise NetDissectError(
            f"{layer_dir / 'counts.npz'} was counted on another dataset than {dataset} (fingerprints differ); "
            f"test with the dataset the counts came from"
        )
    metas = layer_shards([d for given in shard_dirs for d in shard_dirs_of(given)], layer)
    if metas[0][1]["num_images"] != len(ds) or (counts["start"], counts["stop"]) != (0, len(ds)):
        raise NetDissectError(
            f"{layer_dir / 'counts.npz'} covers rows [{counts['start']}, {counts['stop']}) and the shards "
            f"{metas[0][1]['num_images']} images; the test needs the merged counts of all {len(ds)} images"
        )
    source = ds
    if labels is not None:
        from netdissect.broden.pack import PackedLabels

        source = PackedLabels(labels, ds)
    G, thresholds = counts["G"], counts["thresholds"]
    units = counts["I"].shape[0]
    table = label_table([source[i] for i in range(len(ds))], len(ds.primary), ds.primary, len(ds.categories))
    perms = draw_permutations(table.sizes, permutations, seed)
    upsample = layer_upsampling(
        settings.get("upsample", BILINEAR.name), metas[0][1]["layers"][layer], metas[0][1], layer
    )

    def batches():
        bar = tqdm(total=len(ds), desc=f"significance {layer}", unit="img", disable=not progress)
        for shard_dir, meta in metas:
            imgmax = np.load(shard_file(shard_dir, layer, "imgmax"))
            for first in range(0, meta["stop"] - meta["start"], batch_size):
                local = np.arange(first, min(first + batch_size, meta["stop"] - meta["start"]))
                acts = read_npy_rows(shard_file(shard_dir, layer, "act"), local).astype(np.float32)
                yield meta["start"] + local, torch.from_numpy(acts), torch.from_numpy(imgmax[local])
                bar.update(len(local))
        bar.close()

    inter, cat_area = count_permutations(
        batches(), perms, table, ds.primary, thresholds, units, settings["union"], upsample
    )
    if not (np.array_equal(inter[0], counts["I"]) and np.array_equal(cat_area[0], counts["C"])):
        raise NetDissectError(
            f"{layer_dir / 'counts.npz'}: recounting the unpermuted masks does not give its counts; the shards, "
            f"labels or dataset are not the ones the layer was tallied with (re-run tally and merge)"
        )
    observed = score_units(G, counts["I"], counts["C"], ds.primary)
    null = best_iou(G, inter[1:], cat_area[1:], ds.primary)
    p = p_values(observed.score, null)
    percentiles = null_percentiles(null)
    atomic_write_text(
        layer_dir / "significance.csv",
        significance_csv(
            observed.score, observed.label, observed.category, p, percentiles, ds.categories, ds.label_names
        ),
    )
    save_npy(layer_dir / "null_scores.npy", null)
    summary_path = layer_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if iou_threshold is None:
        iou_threshold = summary["iou_threshold"] if summary else IOU_THRESHOLD
    detector = detector_mask(observed.score, observed.label > 0, iou_threshold)
    info = {
        "layer": layer,
        "units": units,
        "images": len(ds),
        "iou_threshold": iou_threshold,
        **summary_block(p, detector, alpha, permutations, seed),
        "fixed_points": float((perms[1:] == perms[0]).sum(axis=1).mean()),
    }
    save_json(layer_dir / "significance.json", info)
    if summary is not None:
        save_json(summary_path, {**summary, "significance": summary_block(p, detector, alpha, permutations, seed)})
    return info


def read_significance(path: str | Path, units: int) -> dict[str, Any]:
    """A significance.csv (and the significance.json beside it) as ``{"p": (U,) float64, "alpha",
    "permutations", "seed"}``, checked to hold one row per unit 1..``units``."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError as err:
        raise NetDissectError(
            f"--significance {path}: {err.filename} not found; run `netdissect significance`"
        ) from None
    try:
        unit = np.array([int(r["unit"]) for r in rows])
        p = np.array([float(r["p"]) for r in rows])
        test = {"p": p, **{key: meta[key] for key in ("alpha", "permutations", "seed")}}
    except (KeyError, ValueError, TypeError) as err:
        raise NetDissectError(
            f"--significance {path}: not a significance.csv with its significance.json ({err}); "
            f"run `netdissect significance` again"
        ) from None
    if not np.array_equal(unit, np.arange(1, units + 1)):
        raise NetDissectError(
            f"--significance {path}: {len(rows)} rows for units {unit[:3].tolist()}..., expected units 1..{units} "
            f"in order; use the significance.csv of this layer"
        )
    return test
