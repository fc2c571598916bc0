"""Masks and exact integer counts (spec §3–4), per shard, and their merge.

For a batch of images, only (image, unit) pairs whose map maximum exceeds the unit's threshold can
have a non-empty mask (bilinear values never exceed the map's maximum), so only those pairs are
gathered, upsampled to the segmentation grid in one ``F.interpolate(mode="bilinear",
align_corners=False)`` call and compared with the threshold (strict ``>``). The counts are then
``torch.bincount`` over flat (unit, label) indices of the masked pixels of every pixel layer, plus,
for image-level labels, the mask size per (unit, label). Every count is int64 and exact.

Thresholds are float64; masks compare float32 values against :func:`~netdissect.quantile.float32_below`
of them, which for float32 values means exactly the same as comparing with the float64 threshold.

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

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from netdissect.errors import NetDissectError
from netdissect.io import save_npz
from netdissect.quantile import float32_below

COUNTS_VERSION = 1
UNIONS = ("paper", "lite")


def pad_labels(pixel_labels: Sequence[torch.Tensor], image_labels: Sequence[torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-image label data: (B, Kmax, sh, sw) int64 layers padded with 0-layers, (B, Jmax) int64
    image-level labels, de-duplicated per image and padded with 0 (label 0 is never counted)."""
    sh, sw = pixel_labels[0].shape[1:]
    kmax = max(int(p.shape[0]) for p in pixel_labels)
    layers = torch.zeros((len(pixel_labels), kmax, sh, sw), dtype=torch.int64)
    for b, p in enumerate(pixel_labels):
        layers[b, :p.shape[0]] = p
    uniq = [torch.unique(j[j > 0]) for j in image_labels]
    jmax = max([int(u.numel()) for u in uniq] + [0])
    img = torch.zeros((len(image_labels), jmax), dtype=torch.int64)
    for b, u in enumerate(uniq):
        img[b, :u.numel()] = u
    return layers, img


def label_presence(layers: torch.Tensor, image_labels: torch.Tensor, num_labels: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: pixel counts of every label over all pixel layers (B, L) int64, and image-level
    membership (B, L) int64 (1 where the image has the label as an image-level label)."""
    b = layers.shape[0]
    flat = (torch.arange(b, device=layers.device)[:, None] * num_labels + layers.reshape(b, -1)).reshape(-1)
    pixels = torch.bincount(flat, minlength=b * num_labels).reshape(b, num_labels)
    member = torch.zeros((b, num_labels), dtype=torch.int64, device=layers.device)
    member.scatter_(1, image_labels, 1)
    member[:, 0] = 0
    return pixels, member


def label_area(layers: torch.Tensor, image_labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """G of spec §4 for a batch: (L,) int64; label 0 gets 0."""
    pixels, member = label_presence(layers, image_labels, num_labels)
    area = pixels.sum(0) + member.sum(0) * (layers.shape[2] * layers.shape[3])
    area[0] = 0
    return area


def tally_batch(acts: torch.Tensor, imgmax: torch.Tensor, thresholds32: torch.Tensor, layers: torch.Tensor,
                image_labels: torch.Tensor, primary: torch.Tensor, num_categories: int, union: str = "paper"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Counts of spec §4 for one batch of images of one segmentation size.

    Args:
        acts: (B, U, H, W) float32 activations.
        imgmax: (B, U) float32 per-image maxima of ``acts``.
        thresholds32: (U,) float32 thresholds from :func:`float32_below`.
        layers: (B, K, sh, sw) int64 pixel layers (global label numbers, 0 = none).
        image_labels: (B, J) int64 image-level labels, unique per image, 0-padded.
        primary: (L,) int64 primary category per label, -1 = none.
        num_categories: K, the number of categories.
        union: ``paper`` or ``lite`` (spec §4).
    Returns:
        G (L,), I (U, L), C (U, K), all int64.
    """
    if union not in UNIONS:
        raise NetDissectError(f"--union {union}: expected one of {', '.join(UNIONS)}")
    device = acts.device
    b, units = imgmax.shape
    num_labels = primary.shape[0]
    sh, sw = layers.shape[2], layers.shape[3]
    pixels_per_image = sh * sw
    cat1 = primary + 1                                       # category + 1; 0 = none
    pixels, member = label_presence(layers, image_labels, num_labels)
    area = pixels.sum(0) + member.sum(0) * pixels_per_image
    area[0] = 0

    # active (image, unit) pairs and their masks
    img_idx, unit_idx = torch.nonzero(imgmax > thresholds32[None, :], as_tuple=True)
    inter = torch.zeros(units * num_labels, dtype=torch.int64, device=device)
    cat_area = torch.zeros((units, num_categories), dtype=torch.int64, device=device)
    if img_idx.numel() == 0:
        return area, inter.reshape(units, num_labels), cat_area
    up = F.interpolate(acts[img_idx, unit_idx][:, None], size=(sh, sw), mode="bilinear", align_corners=False)
    masks = up.reshape(img_idx.numel(), pixels_per_image) > thresholds32[unit_idx][:, None]
    del up
    mask_size = masks.sum(1)                                  # |M[i,u]| per pair, int64

    # pixel layers: every masked pixel, every layer -> (unit, label)
    pair, pix = torch.nonzero(masks, as_tuple=True)
    labels_at = layers.permute(0, 2, 3, 1).reshape(b * pixels_per_image, -1)[img_idx[pair] * pixels_per_image + pix]
    inter += torch.bincount((unit_idx[pair][:, None] * num_labels + labels_at).reshape(-1),
                            minlength=units * num_labels)
    # image-level labels: |M| for each (unit, label of the image)
    if image_labels.shape[1]:
        flat = (unit_idx[:, None] * num_labels + image_labels[img_idx]).reshape(-1)
        inter.scatter_add_(0, flat, mask_size[:, None].expand(-1, image_labels.shape[1]).reshape(-1))
    inter = inter.reshape(units, num_labels)
    inter[:, 0] = 0

    # category-restricted activation
    if union == "paper":
        present = (pixels > 0) | (member > 0)                                  # (B, L)
        has = torch.zeros((b, num_categories + 1), dtype=torch.int64, device=device)
        has.index_add_(1, cat1, present.to(torch.int64))
        hit = has[img_idx, 1:] > 0                                             # (A, K)
    else:
        pair_cat = torch.bincount((pair[:, None] * (num_categories + 1) + cat1[labels_at]).reshape(-1),
                                  minlength=img_idx.numel() * (num_categories + 1))
        hit = pair_cat.reshape(-1, num_categories + 1)[:, 1:] > 0
        img_cat = torch.zeros((b, num_categories + 1), dtype=torch.int64, device=device)
        img_cat.index_add_(1, cat1, member)
        hit |= img_cat[img_idx, 1:] > 0
    cat_area.index_add_(0, unit_idx, hit.to(torch.int64) * mask_size[:, None])
    return area, inter, cat_area


def tally_shard(ds: Any, act_path: str | Path, imgmax: np.ndarray, thresholds: np.ndarray, start: int, stop: int,
                *, union: str = "paper", batch_size: int = 100, workers: int = 0, device: str = "cpu",
                progress: bool = True, layer: str = "") -> dict[str, np.ndarray]:
    """Counts G, I, C of rows [start, stop) of ``ds`` (opened with ``load_images=False``).

    ``act_path`` is the shard's ``{layer}.act.npy`` whose row 0 is dataset row ``start``; ``imgmax`` its
    (stop - start, U) maxima.
    """
    from tqdm import tqdm

    from netdissect.extract import iterate_batches, read_npy_rows

    if union not in UNIONS:
        raise NetDissectError(f"--union {union}: expected one of {', '.join(UNIONS)}")
    units = imgmax.shape[1]
    if thresholds.shape != (units,):
        raise NetDissectError(f"layer {layer}: {thresholds.shape[0]} thresholds for {units} units; use the "
                              f"thresholds.npy of this model and layer")
    num_labels, num_categories = ds.num_labels, len(ds.categories)
    primary = torch.as_tensor(np.asarray(ds.primary, dtype=np.int64), device=device)
    t32 = torch.from_numpy(float32_below(thresholds)).to(device)
    area = torch.zeros(num_labels, dtype=torch.int64, device=device)
    inter = torch.zeros((units, num_labels), dtype=torch.int64, device=device)
    cat_area = torch.zeros((units, num_categories), dtype=torch.int64, device=device)
    bar = tqdm(total=stop - start, desc=f"tally {layer}", unit="img", disable=not progress)
    for batch in iterate_batches(ds.loader(batch_size, workers, start, stop)):
        rows = batch["i"].numpy()
        local = rows - start
        acts = torch.from_numpy(read_npy_rows(act_path, local).astype(np.float32, copy=False)).to(device)
        maxima = torch.from_numpy(imgmax[local]).to(device)
        # group images by segmentation size (all equal in Broden, but not required)
        sizes = [tuple(p.shape[1:]) for p in batch["pixel_labels"]]
        for size in dict.fromkeys(sizes):
            sel = [j for j, s in enumerate(sizes) if s == size]
            layers, img_labels = pad_labels([batch["pixel_labels"][j] for j in sel],
                                            [batch["image_labels"][j] for j in sel])
            g, i, c = tally_batch(acts[sel], maxima[sel], t32, layers.to(device), img_labels.to(device),
                                  primary, num_categories, union)
            area += g
            inter += i
            cat_area += c
        bar.update(len(rows))
    bar.close()
    return {"G": area.cpu().numpy(), "I": inter.cpu().numpy(), "C": cat_area.cpu().numpy()}


def save_counts(path: str | Path, counts: dict[str, np.ndarray], thresholds: np.ndarray, imgmax: np.ndarray,
                start: int, stop: int, settings: dict[str, Any]) -> None:
    """Write a counts file (format in the module docstring), atomically."""
    save_npz(path, format_version=np.int64(COUNTS_VERSION), G=counts["G"].astype(np.int64),
             I=counts["I"].astype(np.int64), C=counts["C"].astype(np.int64),
             thresholds=np.asarray(thresholds, np.float64), imgmax=np.asarray(imgmax, np.float32),
             start=np.int64(start), stop=np.int64(stop), num_images=np.int64(stop - start),
             settings=np.array(json.dumps(settings, sort_keys=True)))


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
        raise NetDissectError(f"{path}: counts format version {data.get('format_version')} (expected "
                              f"{COUNTS_VERSION}); re-run `netdissect tally`")
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
            diff = sorted(key for key in set(p["settings"]) | set(first["settings"])
                          if p["settings"].get(key) != first["settings"].get(key))
            raise NetDissectError(f"merge: {names[k]} was counted with other settings than {names[order[0]]} "
                                  f"(differs in: {', '.join(diff)}); re-run its tally with the same options")
        if not np.array_equal(p["thresholds"], first["thresholds"]) or p["I"].shape != first["I"].shape:
            raise NetDissectError(f"merge: {names[k]} used other thresholds or shapes than {names[order[0]]}; "
                                  f"every shard must be tallied with the same thresholds.npy")
    expected = 0
    for k in order:
        if parts[k]["start"] != expected:
            raise NetDissectError(f"merge: {names[k]} covers rows [{parts[k]['start']}, {parts[k]['stop']}) but "
                                  f"rows must continue at {expected}; a shard is missing or given twice")
        expected = parts[k]["stop"]
    total = first["settings"].get("dataset_images")
    if total is not None and expected != total:
        raise NetDissectError(f"merge: the inputs cover rows [0, {expected}) of {total}; shards are missing")
    return {"G": sum(p["G"] for p in parts), "I": sum(p["I"] for p in parts), "C": sum(p["C"] for p in parts),
            "thresholds": first["thresholds"],
            "imgmax": np.concatenate([parts[k]["imgmax"] for k in order], axis=0),
            "start": 0, "stop": expected, "settings": first["settings"]}
