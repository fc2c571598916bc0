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
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from netdissect.defaults import (
    ACTIVATION_CHOICES,
    ACTIVATIONS,
    ALPHA,
    BATCH_SIZE,
    DEVICE,
    DIVISOR,
    DTYPE,
    IOU_THRESHOLD,
    MEAN_PRECISIONS,
    MEMORY_FORMAT,
    PERMUTATION_SEED,
    TOPK,
)
from netdissect.errors import NetDissectError
from netdissect.io import exclusive_lock, save_json, save_npy, sha256_file
from netdissect.manifest import EXTRACT, LOCK, DissectManifest, stage_dir
from netdissect.names import layer_file_name
from netdissect.presets import resolve

log = logging.getLogger(__name__)


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
    mean_file: str | None = None,
    batch_size: int = BATCH_SIZE,
    workers: int = 0,
    device: str = DEVICE,
    dtype: str = DTYPE,
    quantile: float | None = None,
    memory_format: str = MEMORY_FORMAT,
    store_activations: bool = True,
    tokens: str | None = None,
    progress: bool = True,
    rotation: tuple[int, float] | None = None,
    preset: str | None = None,
) -> dict[str, Any]:
    """Stage 1: forward pass over one shard (see :func:`netdissect.extract.extract_shard`). ``quantile``
    and the model's input convention: as given, else ``preset``'s, else the defaults (netdissect/presets.py);
    ``rotation`` (seed, power) rotates every layer's units first (docs/experiments.md §1)."""
    from netdissect.extract import extract_shard
    from netdissect.models import load_model

    quantile = resolve(preset, quantile=quantile)["quantile"]
    model = load_model(model_spec, weights, mean, std, preset=preset, mean_file=mean_file)
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
        tokens=tokens,
        progress=progress,
        rotation=rotation,
        preset=preset,
    )


def quantile(
    shard_dirs: Sequence[str | Path],
    layer: str,
    out: str | Path,
    *,
    q: float | None = None,
    thresholds_file: str | Path | None = None,
) -> np.ndarray:
    """Stage 2: merge the shards' candidates into exact thresholds (or read them from a file). The
    rotation matrix of rotated shards is copied beside them (LAYER_DIR/rotation.npy)."""
    from netdissect.experiments.rotation import shard_rotation
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
    rotation = shard_rotation(metas, layer)
    if rotation is not None:
        save_npy(out / "rotation.npy", rotation)
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
    union: str | None = None,
    upsample: str | None = None,
    preset: str | None = None,
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
    pass (:mod:`netdissect.recompute`; ``workers`` then decode its images). ``union`` and ``upsample``:
    as given, else ``preset``'s (default: the preset the shard was extracted with), else the defaults."""
    from netdissect.counts import save_counts
    from netdissect.quantile import load_thresholds
    from netdissect.recompute import stores_activations, tally_recomputed
    from netdissect.shards import layer_meta, load_meta, shard_file
    from netdissect.tally import tally_shard

    meta = load_meta(shard_dir)
    info = {layer: layer_meta(meta, layer, shard_dir) for layer in jobs}
    if preset is None:
        preset = meta.get("preset")
    elif meta.get("preset") != preset:
        log.warning(
            "%s was extracted with preset %s (its input convention and quantile); counting with preset %s",
            shard_dir,
            meta.get("preset"),
            preset,
        )
    chosen = resolve(preset, union=union, upsample=upsample)
    union = chosen["union"]
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
    modes = {layer: layer_upsampling(chosen["upsample"], info[layer], meta, layer) for layer in jobs}
    for layer, mode in modes.items():
        for sh, sw in sorted(set(map(tuple, ds.index[["sh", "sw"]].to_numpy().tolist()))):
            mode.tables(info[layer]["height"], info[layer]["width"], int(sh), int(sw))  # refuses knots that coincide
    recompute = [layer for layer in jobs if not stores_activations(shard_dir, layer)]
    counts = {}
    if recompute:
        counts = tally_recomputed(
            ds,
            dataset,
            shard_dir,
            {layer: thresholds[layer] for layer in recompute},
            union=union,
            upsample={layer: modes[layer] for layer in recompute},
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
            upsample=modes[layer],
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
            "upsample": modes[layer].name,
            "field_map": info[layer].get("field_map") if modes[layer].name == "fieldmap" else None,
            "preset": preset,
            "categories": list(ds.categories),
            "model": meta["model"],
            "weights": meta["weights"],
            "weights_sha256": meta["weights_sha256"],
            "mean": meta["mean"],
            "std": meta["std"],
            "divisor": meta.get("divisor", DIVISOR),
            "bgr": meta.get("bgr", False),
            "mean_precision": meta.get("mean_precision", MEAN_PRECISIONS[0]),
            "mean_file": meta.get("mean_file"),
            "dtype": meta["dtype"],
            "dataset": str(dataset),
            "dataset_fingerprint": meta["dataset_fingerprint"],
            "dataset_images": meta["num_images"],
            **({"rotation": meta["rotation"]} if meta.get("rotation") else {}),
        }
        save_counts(out, counts[layer], thresholds[layer], meta["start"], meta["stop"], settings)
    return counts


def layer_upsampling(name: str, info: dict[str, Any], meta: dict[str, Any], layer: str):
    """The upsampling mode ``name`` of a layer of a shard (``info``: its meta.json entry; ``meta``:
    the shard's meta.json, for the image size)."""
    from netdissect.masks import upsampling
    from netdissect.models.fieldmaps import field_map_from_json

    why = (
        info.get("field_map_none") or "the shard records none: it was extracted before field maps were; re-run extract"
    )
    return upsampling(name, field_map_from_json(info), int(meta["image_size"][1]), layer, why)


def merge(inputs: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Stage 4: sum shard counts into one counts file."""
    from netdissect.counts import load_counts, merge_counts, save_counts

    merged = merge_counts([load_counts(p) for p in inputs], [str(p) for p in inputs])
    save_counts(out, merged, merged["thresholds"], merged["start"], merged["stop"], merged["settings"])
    return merged


def relative_paths(layer_dir: str | Path, dataset: str | Path, shards: Sequence[str | Path] = ()) -> dict[str, Any]:
    """summary.json's ``paths``: the dataset and the shard folders relative to the layer folder, so that
    ``netdissect report LAYER_DIR`` finds them wherever it runs, and after the tree moves as a whole."""
    here = os.path.abspath(layer_dir)
    return {
        "dataset": Path(os.path.relpath(os.path.abspath(dataset), here)).as_posix(),
        "shards": [Path(os.path.relpath(os.path.abspath(s), here)).as_posix() for s in shards],
    }


def score(
    counts_path: str | Path,
    dataset: str | Path,
    out: str | Path,
    *,
    iou_threshold: float = IOU_THRESHOLD,
    shards: Sequence[str | Path] = (),
    significance: str | Path | None = None,
) -> dict[str, Any]:
    """Stage 5: result.csv and summary.json from a counts file; summary.json records where the dataset
    and ``shards`` (the activations, for the report) are (:func:`relative_paths`); ``significance`` (a
    significance.csv with its significance.json beside it) adds the permutation test's counts to summary.json."""
    from netdissect.counts import load_counts
    from netdissect.experiments.significance import read_significance
    from netdissect.score import write_scores

    counts = load_counts(counts_path)
    ds = open_dataset(dataset, counts["settings"].get("categories"), images=False, labels=False)
    if counts["settings"].get("dataset_fingerprint") not in (None, ds.fingerprint()):
        raise NetDissectError(
            f"{counts_path} was counted on another dataset than {dataset} (fingerprints "
            f"differ); score with the dataset the counts came from"
        )
    test = read_significance(significance, counts["I"].shape[0]) if significance else None
    paths = relative_paths(out, dataset, shards)
    return write_scores(
        out, counts, ds.categories, ds.label_names, ds.primary, iou_threshold, significance=test, paths=paths
    )


def dissect(
    dataset: str | Path,
    model_spec: str,
    layers: Sequence[str],
    out: str | Path,
    *,
    weights: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    mean_file: str | None = None,
    q: float | None = None,
    thresholds_file: str | None = None,
    union: str | None = None,
    upsample: str | None = None,
    preset: str | None = None,
    iou_threshold: float = IOU_THRESHOLD,
    batch_size: int = BATCH_SIZE,
    workers: int = 0,
    threads: int | None = None,
    device: str = DEVICE,
    categories: Sequence[str] | None = None,
    dtype: str = DTYPE,
    tokens: str | None = None,
    progress: bool = True,
    labels: str | Path | None = None,
    rotation: tuple[int, float] | None = None,
    permutations: int = 0,
    permutation_seed: int = PERMUTATION_SEED,
    alpha: float = ALPHA,
    memory_format: str = MEMORY_FORMAT,
    activations: str = ACTIVATIONS,
    report: bool = True,
    topk: int = TOPK,
) -> dict[str, dict[str, Any]]:
    """All stages in one process with one shard: OUT/shards/0/, OUT/<layer>/{thresholds.npy,
    thresholds.json, counts.npz, result.csv, summary.json} and, unless ``report`` is False, the layer's
    HTML report OUT/<layer>/report/index.html (``topk`` images per unit). ``thresholds_file`` may
    contain ``{layer}``. ``q``, ``union``, ``upsample`` and the input convention: as given, else
    ``preset``'s, else the defaults. <layer> is the layer's file name (:func:`netdissect.names.layer_file_name`:
    ``/`` becomes ``%2F``), also in ``thresholds_file``. ``rotation`` (seed, power) rotates the units
    (+ OUT/<layer>/rotation.npy); ``permutations`` K > 0 runs the significance test before the scores
    (+ OUT/<layer>/significance.csv, docs/experiments.md). OUT/dissect.json is the record that lets a
    killed run resume (same settings) or start over (netdissect.manifest); one process at a time per OUT
    (the lock OUT/.dissect.lock).

    The labels are read from packed labels (:mod:`netdissect.labelcache`): ``labels`` names the pack
    folder (None: the cache's pack of the dataset, written first if missing; ``"none"``: decode the PNGs).
    ``activations`` ``store`` keeps them in OUT/shards/0; ``recompute`` keeps none and counts every
    layer in one rerun of the forward pass (same numbers, :mod:`netdissect.recompute`). ``threads``
    counting threads and the report's encoding threads (None: every core this process may use)."""
    from netdissect.experiments.significance import check_permutations, permutation_test

    if activations not in ACTIVATION_CHOICES:
        raise NetDissectError(f"activations {activations!r}: expected one of {', '.join(ACTIVATION_CHOICES)}")
    if permutations:
        check_permutations(permutations, alpha)
    chosen = resolve(preset, quantile=q, union=union, upsample=upsample)
    if thresholds_file and len(layers) > 1 and "{layer}" not in thresholds_file:
        raise NetDissectError(
            f"--thresholds {thresholds_file}: several layers were given, so the file name must "
            f"contain {{layer}} (e.g. runs/old/{{layer}}/thresholds.npy)"
        )
    if report and not 1 <= topk <= 1000:
        raise NetDissectError(f"--topk {topk}: expected a whole number from 1 to 1000 (images shown per unit).")
    if "shards" in layers:
        raise NetDissectError(
            "--layers: a layer named 'shards' would share OUT/shards with the activations; "
            "dissect it with the stage commands (docs/interfaces.md)"
        )
    import os

    from netdissect.labelcache import PackJob, pack_folder, spare_cores

    threads = threads or len(os.sched_getaffinity(0))

    out = Path(out)
    settings = dissect_settings(
        dataset,
        model_spec,
        layers,
        weights=weights,
        mean=mean,
        std=std,
        mean_file=mean_file,
        rotation=rotation,
        permutations=permutations,
        permutation_seed=permutation_seed,
        alpha=alpha,
        memory_format=memory_format,
        activations=activations,
        preset=preset,
        q=chosen["quantile"],
        thresholds_file=thresholds_file,
        union=chosen["union"],
        upsample=chosen["upsample"],
        iou_threshold=iou_threshold,
        categories=categories,
        dtype=dtype,
        tokens=tokens,
    )
    with exclusive_lock(out / LOCK, f"the dissection in {out}"):  # a refused run starts nothing
        tables = open_dataset(dataset, images=False, labels=False)
        pack = pack_folder(tables, labels)
        packing = None
        if pack is not None:  # in the background only where cores are spare and nothing forks meanwhile
            background = spare_cores() > 0 and workers == 0
            packing = PackJob(dataset, pack, tables, background=background, progress=progress)
        manifest = DissectManifest.open(out, settings, list(layers))
        shard_dir = stage_dir(out, EXTRACT)
        if not manifest.is_done(EXTRACT):
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
                mean_file=mean_file,
                batch_size=batch_size,
                workers=workers,
                device=device,
                dtype=dtype,
                quantile=q,
                memory_format=memory_format,
                store_activations=activations == "store",
                tokens=tokens,
                progress=progress,
                rotation=rotation,
                preset=preset,
            )
            manifest.finish(EXTRACT)
        from netdissect.shards import load_meta

        meta = load_meta(shard_dir)
        for layer in layers:  # a layer without a field map fails before any tally
            layer_upsampling(chosen["upsample"], meta["layers"][layer], meta, layer)
        pending = {layer: stage_dir(out, layer) for layer in layers if not manifest.is_done(layer)}
        for layer, layer_dir in pending.items():
            manifest.clear(layer)
            file = thresholds_file.replace("{layer}", layer_file_name(layer)) if thresholds_file else None
            quantile([shard_dir], layer, layer_dir, q=chosen["quantile"], thresholds_file=file)
        packed = packing.wait() if packing else None
        if pending:
            tally_layers(  # all layers at once: a recompute run reruns the forward pass once
                dataset,
                shard_dir,
                {
                    layer: (layer_dir / "thresholds.npy", layer_dir / "counts.npz")
                    for layer, layer_dir in pending.items()
                },
                union=union,
                upsample=upsample,
                preset=preset,
                categories=categories,
                device=device,
                batch_size=batch_size,
                threads=threads,
                workers=workers,
                progress=progress,
                labels=packed,
            )
        summaries = {}
        for layer in layers:
            layer_dir = stage_dir(out, layer)
            if layer not in pending:
                summaries[layer] = json.loads((layer_dir / "summary.json").read_text())
            else:
                if permutations:
                    permutation_test(
                        dataset,
                        layer_dir,
                        [shard_dir],
                        permutations=permutations,
                        seed=permutation_seed,
                        alpha=alpha,
                        labels=packed,
                        batch_size=batch_size,
                        progress=progress,
                        iou_threshold=iou_threshold,
                    )
                summaries[layer] = score(
                    layer_dir / "counts.npz",
                    dataset,
                    layer_dir,
                    iou_threshold=iou_threshold,
                    shards=[shard_dir],
                    significance=layer_dir / "significance.csv" if permutations else None,
                )
                manifest.finish(layer)
            # the report changes no number: written (again) whenever asked for, also for a resumed layer
            if report:
                from netdissect.report.build import write_layer_report

                summaries[layer]["report"] = str(write_layer_report(layer_dir, topk=topk, threads=threads))
        manifest.complete()
    return summaries


def dissect_settings(
    dataset: str | Path,
    model_spec: str,
    layers: Sequence[str],
    *,
    weights: str | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    mean_file: str | None,
    preset: str | None,
    q: float,
    thresholds_file: str | None,
    union: str,
    upsample: str,
    iou_threshold: float,
    categories: Sequence[str] | None,
    dtype: str,
    tokens: str | None,
    rotation: Any,
    permutations: int,
    permutation_seed: int,
    alpha: float,
    memory_format: str,
    activations: str,
) -> dict[str, Any]:
    """What decides the numbers of a dissection (netdissect.manifest): the options and the checksums of
    every input file; not the batch size, threads, loader processes, device or packed labels."""
    from netdissect import __version__
    from netdissect.broden.dataset import dataset_fingerprint

    def checksum(path: str | Path) -> str | None:
        return sha256_file(path) if Path(path).is_file() else None

    return {
        "netdissect": __version__,
        "dataset": str(dataset),
        "dataset_fingerprint": dataset_fingerprint(dataset),
        "model": model_spec,
        "model_sha256": checksum(model_spec),  # a TorchScript, ONNX or prototxt file; None for a name
        "weights_sha256": checksum(weights) if weights else None,
        "mean_file_sha256": checksum(mean_file) if mean_file else None,
        "preset": preset,
        "layers": list(layers),
        "quantile": q,
        "thresholds_sha256": {
            layer: checksum(thresholds_file.replace("{layer}", layer_file_name(layer))) for layer in layers
        }
        if thresholds_file
        else None,
        "union": union,
        "upsample": upsample,
        "iou_threshold": iou_threshold,
        "categories": list(categories) if categories else None,
        "dtype": dtype,
        "mean": list(mean) if mean is not None else None,
        "std": list(std) if std is not None else None,
        "tokens": tokens,
        "rotation": rotation,
        "permutations": permutations,
        "permutation_seed": permutation_seed if permutations else None,
        "alpha": alpha if permutations else None,
        "memory_format": memory_format,  # the last bits of the activations (docs/benchmarks.md)
        "activations": activations,  # what OUT/shards/0 holds
    }
