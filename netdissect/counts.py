"""Exact integer counts of one layer (docs/dissection.md §4): per batch, their file format, and the merge.

For a batch of images, only (image, unit) pairs whose map maximum exceeds the unit's threshold can
have a non-empty mask (upsampled values never exceed the map's maximum), so only those pairs are
gathered; their masks come from :mod:`netdissect.masks` as runs of pixels. The runs become pixel
lists; each pixel layer's label at those pixels is added to flat (unit, label) counts with
``index_add_``, and for image-level labels the mask size per (unit, label). Every count is int64 and
exact; the imgmax test compares float32 maxima with float64 thresholds exactly.

Counts file (``tally/{k}.npz`` per shard, ``counts.npz`` merged), ``format_version`` 2, numpy npz
without pickles::

    format_version  int64 ()          2
    G               int64 (L,)        label areas (label 0 is always 0)
    I               int64 (U, L)      intersections of unit masks with labels (column 0 is always 0)
    C               int64 (U, K)      category-restricted mask areas, K = len(categories), union rule below
    thresholds      float64 (U,)      the thresholds the masks used
    start, stop     int64 ()          the rows [start, stop) counted (merged: 0, N)
    num_images      int64 ()          images counted (stop - start)
    settings        str () JSON       {"layer", "quantile", "thresholds_file", "union", "upsample",
                                       "categories": [...], "model", "weights", "weights_sha256", "mean",
                                       "std", "divisor", "bgr", "mean_precision", "mean_file", "dtype", "dataset",
                                       "dataset_fingerprint", "dataset_images": N}

(Version 1 also held the per-image maxima, which live in the shards: ``{layer}.imgmax.npy``.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netdissect.defaults import UNION, UNIONS
from netdissect.errors import NetDissectError
from netdissect.io import save_npz
from netdissect.masks import BILINEAR, grid_cells, mask_runs
from netdissect.ops import expand_runs, nonzero, pick
from netdissect.shards import check_contiguous

COUNTS_VERSION = 2


def check_union(union: str) -> None:
    if union not in UNIONS:
        raise NetDissectError(f"--union {union}: expected one of {', '.join(UNIONS)}")


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
    union: str = UNION,
    presence: tuple[torch.Tensor, torch.Tensor] | None = None,
    upsample=BILINEAR,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Counts of docs/dissection.md §4 for one batch of images of one segmentation size.

    Args:
        acts: (B, U, H, W) float32 activations.
        imgmax: (B, U) float32 per-image maxima of ``acts``.
        thresholds: (U,) float64 thresholds.
        layers: (B, K, sh, sw) int32 pixel layers (global label numbers, 0 = none), from :func:`pad_labels`.
        image_labels: (B, J) int64 image-level labels, unique per image, 0-padded.
        primary: (L,) int64 primary category per label, -1 = none.
        num_categories: K, the number of categories.
        union: ``paper`` or ``lite`` (docs/dissection.md §4).
        presence: :func:`label_presence` of these labels, if already computed.
        upsample: the upsampling mode of the masks (:mod:`netdissect.masks`).
    Returns:
        G (L,), I (U, L), C (U, K), all int64.
    """
    check_union(union)
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
    ys, xs = grid_cells(upsample, acts.shape[2], acts.shape[3], sh, sw, str(device))
    run_pair, run_start, run_length = mask_runs(maps, pick(thresholds, unit_idx), ys, xs)
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


def save_counts(
    path: str | Path,
    counts: dict[str, np.ndarray],
    thresholds: np.ndarray,
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
    check_contiguous(
        [(names[k], parts[k]["start"], parts[k]["stop"]) for k in order],
        first["settings"].get("dataset_images"),
        "merge: ",
    )
    return {
        "G": sum(p["G"] for p in parts),
        "I": sum(p["I"] for p in parts),
        "C": sum(p["C"] for p in parts),
        "thresholds": first["thresholds"],
        "start": 0,
        "stop": parts[order[-1]]["stop"],
        "settings": first["settings"],
    }
