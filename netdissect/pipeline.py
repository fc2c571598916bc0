"""The stages as functions over files, shared by the per-stage commands and the one-shot ``dissect``.

    extract  -> SHARD_DIR/{layer}.act.npy, .imgmax.npy, .topk.npy, meta.json   (netdissect.shards)
    quantile -> LAYER_DIR/thresholds.npy, thresholds.json
    tally    -> TALLY.npz (counts of one shard; netdissect.counts)
    merge    -> COUNTS.npz (sum of the shards' counts)
    score    -> LAYER_DIR/result.csv, summary.json

``thresholds.json`` (beside thresholds.npy) records where the thresholds came from:
``{"layer", "quantile" (null when read from a file), "thresholds_file" (null when computed), "units"}``;
tally reads it (``FILE.json`` beside ``--thresholds FILE.npy``) into the counts' settings. Each
array is stored once: the per-image maxima stay in the shards (``{layer}.imgmax.npy``), where the
tally and the report read them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from netdissect.defaults import (
    ACTIVATION_CHOICES,
    ACTIVATIONS,
    BATCH_SIZE,
    DEVICE,
    DTYPE,
    IOU_THRESHOLD,
    MEMORY_FORMAT,
    QUANTILE,
    UNION,
)
from netdissect.errors import NetDissectError
from netdissect.io import save_json, save_npy


def open_dataset(
    root: str | Path, categories: Sequence[str] | None = None, *, images: bool = True, labels: bool = True
):
    """A BrodenDataset with rows (an empty one is refused)."""
    from netdissect.broden.dataset import BrodenDataset, check_not_empty

    ds = BrodenDataset(
        root, categories=list(categories) if categories else None, load_images=images, load_labels=labels
    )
    check_not_empty(ds)
    return ds


def extract(
    dataset: str | Path,
    model_spec: str,
    layers: Sequence[str],
    shard: int,
    shards: int,
    out: str | Path,
    *,
    weights: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = BATCH_SIZE,
    workers: int = 0,
    device: str = DEVICE,
    dtype: str = DTYPE,
    quantile: float = QUANTILE,
    memory_format: str = MEMORY_FORMAT,
    store_activations: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Stage 1: forward pass over one shard (see :func:`netdissect.extract.extract_shard`)."""
    from netdissect.extract import extract_shard
    from netdissect.models import load_model

    model = load_model(model_spec, weights, mean, std)
    ds = open_dataset(dataset, labels=False)
    return extract_shard(
        ds,
        model,
        layers,
        shard,
        shards,
        out,
        batch_size=batch_size,
        workers=workers,
        device=device,
        dtype=dtype,
        quantile=quantile,
        memory_format=memory_format,
        store_activations=store_activations,
        progress=progress,
    )


def quantile(
    shard_dirs: Sequence[str | Path],
    layer: str,
    out: str | Path,
    *,
    q: float | None = None,
    thresholds_file: str | Path | None = None,
) -> np.ndarray:
    """Stage 2: merge the shards' candidates into exact thresholds (or read them from a file)."""
    from netdissect.quantile import candidate_count, load_thresholds, merge_candidates, thresholds_from_candidates
    from netdissect.shards import layer_meta, layer_shards, shard_file

    metas = layer_shards(shard_dirs, layer)
    first_dir, first = metas[0]
    info = layer_meta(first, layer, first_dir)
    if thresholds_file is not None:
        thresholds = load_thresholds(thresholds_file, info["units"], layer)
    else:
        q = first["quantile"] if q is None else q
        k = candidate_count(info["num_values"], q)
        candidates = merge_candidates((np.load(shard_file(d, layer, "topk")) for d, _ in metas), k)
        thresholds = thresholds_from_candidates(candidates, info["num_values"], q)
    out = Path(out)
    save_json(
        out / "thresholds.json",
        {
            "layer": layer,
            "quantile": None if thresholds_file else q,
            "thresholds_file": str(thresholds_file) if thresholds_file else None,
            "units": info["units"],
        },
    )
    save_npy(out / "thresholds.npy", thresholds)
    return thresholds


def tally(
    dataset: str | Path,
    shard_dir: str | Path,
    layer: str,
    thresholds_path: str | Path,
    out: str | Path,
    **options: Any,
) -> dict[str, np.ndarray]:
    """Stage 3: counts of one shard under given thresholds, written to ``out`` (a counts .npz); the
    options are :func:`tally_layers`'s."""
    return tally_layers(dataset, shard_dir, {layer: (thresholds_path, out)}, **options)[layer]


def tally_layers(
    dataset: str | Path,
    shard_dir: str | Path,
    jobs: dict[str, tuple[str | Path, str | Path]],
    *,
    union: str = UNION,
    categories: Sequence[str] | None = None,
    device: str = DEVICE,
    batch_size: int = BATCH_SIZE,
    threads: int = 1,
    workers: int = 0,
    progress: bool = True,
    labels: str | Path | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Stage 3 for several layers of one shard: ``jobs`` is {layer: (thresholds .npy, counts .npz to
    write)}. The labels come from the packed labels folder ``labels`` if given, else from the dataset's
    PNGs. Stored activations are read (``threads`` count on the CPU, ``workers`` loader processes feed
    a GPU); layers whose shard keeps none (``--recompute``) are counted in one rerun of the forward
    pass (:mod:`netdissect.recompute`; ``workers`` then decode its images)."""
    from netdissect.counts import save_counts
    from netdissect.masks import BILINEAR
    from netdissect.quantile import load_thresholds
    from netdissect.recompute import stores_activations, tally_recomputed
    from netdissect.shards import layer_meta, load_meta, shard_file
    from netdissect.tally import tally_shard

    meta = load_meta(shard_dir)
    info = {layer: layer_meta(meta, layer, shard_dir) for layer in jobs}
    ds = open_dataset(dataset, categories, images=False, labels=labels is None)
    if len(ds) != meta["num_images"] or ds.fingerprint() != meta["dataset_fingerprint"]:
        raise NetDissectError(
            f"{shard_dir} was extracted from a different dataset ({meta['dataset']}, "
            f"{meta['num_images']} images) than {dataset} ({len(ds)} images); tally with the "
            f"dataset the activations came from"
        )
    thresholds = {layer: load_thresholds(path, info[layer]["units"], layer) for layer, (path, _) in jobs.items()}
    packed = None
    if labels is not None:
        from netdissect.broden.pack import PackedLabels

        packed = PackedLabels(labels, ds)
    upsample = BILINEAR
    recompute = [layer for layer in jobs if not stores_activations(shard_dir, layer)]
    counts = {}
    if recompute:
        counts = tally_recomputed(
            ds,
            dataset,
            shard_dir,
            {layer: thresholds[layer] for layer in recompute},
            union=union,
            upsample=upsample,
            device=device,
            workers=workers,
            progress=progress,
            labels=packed,
        )
    for layer in jobs:
        if layer in recompute:
            continue
        counts[layer] = tally_shard(
            ds,
            shard_file(shard_dir, layer, "act"),
            np.load(shard_file(shard_dir, layer, "imgmax"), mmap_mode="r"),  # read by batch: memory flat in N
            thresholds[layer],
            meta["start"],
            meta["stop"],
            union=union,
            upsample=upsample,
            batch_size=batch_size,
            threads=threads,
            workers=workers,
            device=device,
            progress=progress,
            layer=layer,
            labels=packed,
        )
    for layer, (thresholds_path, out) in jobs.items():
        source_path = Path(thresholds_path).with_suffix(".json")
        source = json.loads(source_path.read_text()) if source_path.is_file() else {}
        settings = {
            "layer": layer,
            "quantile": source.get("quantile"),
            "thresholds_file": source.get("thresholds_file", str(thresholds_path)),
            "union": union,
            "upsample": upsample.name,
            "categories": list(ds.categories),
            "model": meta["model"],
            "weights": meta["weights"],
            "weights_sha256": meta["weights_sha256"],
            "mean": meta["mean"],
            "std": meta["std"],
            "dtype": meta["dtype"],
            "dataset": str(dataset),
            "dataset_fingerprint": meta["dataset_fingerprint"],
            "dataset_images": meta["num_images"],
        }
        save_counts(out, counts[layer], thresholds[layer], meta["start"], meta["stop"], settings)
    return counts


def merge(inputs: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Stage 4: sum shard counts into one counts file."""
    from netdissect.counts import load_counts, merge_counts, save_counts

    merged = merge_counts([load_counts(p) for p in inputs], [str(p) for p in inputs])
    save_counts(out, merged, merged["thresholds"], merged["start"], merged["stop"], merged["settings"])
    return merged


def score(
    counts_path: str | Path, dataset: str | Path, out: str | Path, *, iou_threshold: float = IOU_THRESHOLD
) -> dict[str, Any]:
    """Stage 5: result.csv and summary.json from a counts file."""
    from netdissect.counts import load_counts
    from netdissect.score import write_scores

    counts = load_counts(counts_path)
    ds = open_dataset(dataset, counts["settings"].get("categories"), images=False, labels=False)
    if counts["settings"].get("dataset_fingerprint") not in (None, ds.fingerprint()):
        raise NetDissectError(
            f"{counts_path} was counted on another dataset than {dataset} (fingerprints "
            f"differ); score with the dataset the counts came from"
        )
    return write_scores(out, counts, ds.categories, ds.label_names, ds.primary, iou_threshold)


def dissect(
    dataset: str | Path,
    model_spec: str,
    layers: Sequence[str],
    out: str | Path,
    *,
    weights: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    q: float = QUANTILE,
    thresholds_file: str | None = None,
    union: str = UNION,
    iou_threshold: float = IOU_THRESHOLD,
    batch_size: int = BATCH_SIZE,
    workers: int = 0,
    threads: int | None = None,
    device: str = DEVICE,
    categories: Sequence[str] | None = None,
    dtype: str = DTYPE,
    progress: bool = True,
    labels: str | Path | None = None,
    memory_format: str = MEMORY_FORMAT,
    activations: str = ACTIVATIONS,
) -> dict[str, dict[str, Any]]:
    """All stages in one process with one shard: OUT/shards/0/, OUT/<layer>/{thresholds.npy,
    thresholds.json, counts.npz, result.csv, summary.json}. ``thresholds_file`` may contain ``{layer}``.

    The labels are read from packed labels (:mod:`netdissect.labelcache`): ``labels`` names the pack
    folder (None: the cache's pack of the dataset, written first if missing; ``"none"``: decode the PNGs).
    ``activations`` ``store`` keeps them in OUT/shards/0; ``recompute`` keeps none and counts every
    layer in one rerun of the forward pass (same numbers, :mod:`netdissect.recompute`). ``threads``
    counting threads (None: every core this process may use)."""
    if activations not in ACTIVATION_CHOICES:
        raise NetDissectError(f"activations {activations!r}: expected one of {', '.join(ACTIVATION_CHOICES)}")
    if thresholds_file and len(layers) > 1 and "{layer}" not in thresholds_file:
        raise NetDissectError(
            f"--thresholds {thresholds_file}: several layers were given, so the file name must "
            f"contain {{layer}} (e.g. runs/old/{{layer}}/thresholds.npy)"
        )
    if "shards" in layers:
        raise NetDissectError(
            "--layers: a layer named 'shards' would share OUT/shards with the activations; "
            "dissect it with the stage commands (docs/interfaces.md)"
        )
    import os

    from netdissect.labelcache import PackJob, pack_folder, spare_cores

    threads = threads or len(os.sched_getaffinity(0))

    out = Path(out)
    shard_dir = out / "shards" / "0"
    tables = open_dataset(dataset, images=False, labels=False)
    pack = pack_folder(tables, labels)
    packing = None
    if pack is not None:  # in the background only where cores are spare and nothing forks meanwhile
        background = spare_cores() > 0 and workers == 0
        packing = PackJob(dataset, pack, tables, background=background, progress=progress)
    extract(
        dataset,
        model_spec,
        layers,
        0,
        1,
        shard_dir,
        weights=weights,
        mean=mean,
        std=std,
        batch_size=batch_size,
        workers=workers,
        device=device,
        dtype=dtype,
        quantile=q,
        memory_format=memory_format,
        store_activations=activations == "store",
        progress=progress,
    )
    for layer in layers:
        file = thresholds_file.replace("{layer}", layer) if thresholds_file else None
        quantile([shard_dir], layer, out / layer, q=q, thresholds_file=file)
    tally_layers(
        dataset,
        shard_dir,
        {layer: (out / layer / "thresholds.npy", out / layer / "counts.npz") for layer in layers},
        union=union,
        categories=categories,
        device=device,
        batch_size=batch_size,
        threads=threads,
        workers=workers,
        progress=progress,
        labels=packing.wait() if packing else None,
    )
    return {
        layer: score(out / layer / "counts.npz", dataset, out / layer, iou_threshold=iou_threshold) for layer in layers
    }
