"""The extract stage: one forward pass over a shard for every requested layer, written as shard files
(:mod:`netdissect.shards`): activations, per-image maxima and quantile candidates.

One forward pass per batch serves all requested layers and stops after the deepest one. Thresholds
and masks use the values as stored (after float16 rounding when requested), so every stage sees the
same numbers. Memory follows the batch size: activations stream to disk batch by batch (header
first, then rows), never held for the whole shard.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netdissect.broden.dataset import check_not_empty
from netdissect.defaults import BATCH_SIZE, DTYPE, QUANTILE
from netdissect.errors import NetDissectError, unwrap_worker_errors
from netdissect.experiments.rotation import rotate_maps, rotation_matrix
from netdissect.io import atomic_path, open_for_writing, save_json, save_npy
from netdissect.models import LoadedModel, capture
from netdissect.models.fieldmaps import field_map_json, trace_field_maps
from netdissect.models.layers import require_weights
from netdissect.models.readout import Readout, output_shape, plan_readout, read_maps, token_layout
from netdissect.ops import keep_freed_memory
from netdissect.quantile import TopK, candidate_count
from netdissect.shards import NUMPY_DTYPES, SHARD_FORMAT, SHARD_VERSION, NpyRowWriter, shard_file, shard_range

log = logging.getLogger(__name__)


def image_size(ds: Any) -> tuple[int, int]:
    """The (ih, iw) shared by every row of index.csv (extraction batches and stores whole maps)."""
    check_not_empty(ds)
    sizes = ds.index[["ih", "iw"]].to_numpy()
    odd = np.flatnonzero((sizes != sizes[0]).any(axis=1))
    if odd.size:
        r = int(odd[0])
        raise NetDissectError(
            f"{ds.root}/index.csv row {r + 2}: image size {sizes[r, 0]}x{sizes[r, 1]} differs from "
            f"row 2's {sizes[0, 0]}x{sizes[0, 1]}; dissection needs one image size (resize the "
            f"dataset, e.g. regenerate it with one --size)"
        )
    return int(sizes[0, 0]), int(sizes[0, 1])


def extract_shard(
    ds: Any,
    model: LoadedModel,
    layers: Sequence[str],
    shard: int,
    shards: int,
    out_dir: str | Path,
    *,
    batch_size: int = BATCH_SIZE,
    workers: int = 0,
    device: str = "cpu",
    dtype: str = DTYPE,
    quantile: float = QUANTILE,
    tokens: str | None = None,
    progress: bool = True,
    timings: dict[str, float] | None = None,
    preset: str | None = None,
    copy_all: bool = False,
    rotation: tuple[int, float] | None = None,
) -> dict[str, Any]:
    """Run the model over shard ``shard`` of ``ds`` and write the shard folder; returns meta.json's content.

    Each layer's output is read as unit maps the way :func:`netdissect.models.readout.plan_readout`
    decides on a probe image (``tokens``: ``--tokens spatial|cls`` for token layers); meta.json records it.
    ``rotation`` (seed, power): every layer's units are rotated by R(power) of its own seeded random
    rotation before anything is stored (:mod:`netdissect.experiments.rotation`), and the matrix is
    written beside its files (``{layer}.rotation.npy``); at power 0 nothing is transformed.

    ``timings``, when given, receives ``forward_s`` (seconds inside the model) and ``loop_s`` (the
    whole batch loop: decoding, forward, writing, candidates). ``preset`` is only recorded (the model's
    input convention and ``quantile`` already follow it); ``copy_all`` copies every captured output
    (:func:`netdissect.models.capture`, to measure the cost).
    """
    import time

    from tqdm import tqdm

    if dtype not in NUMPY_DTYPES:
        raise NetDissectError(f"--dtype {dtype}: expected one of {', '.join(NUMPY_DTYPES)}")
    if batch_size < 1:
        raise NetDissectError(f"--batch-size {batch_size}: expected a positive number")
    keep_freed_memory()  # the forward pass allocates and frees large buffers every batch
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # an old meta.json must not vouch for new files
    num_images = len(ds)
    ih, iw = image_size(ds)
    start, stop = shard_range(num_images, shard, shards)
    np_dtype = NUMPY_DTYPES[dtype]
    require_weights(model)
    model.module.to(device)
    if device.startswith("cuda"):
        # full float32 convolutions and matmuls (PyTorch lets cuDNN use TF32 by default, ~1e-3 relative)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    if model.fixed_batch is not None and batch_size != model.fixed_batch:
        log.warning(
            "model %s takes batches of %d only: --batch-size %d ignored", model.spec, model.fixed_batch, batch_size
        )
        batch_size = model.fixed_batch
    try:
        fields = trace_field_maps(model, layers, (ih, iw))
    except Exception as err:  # only --upsample fieldmap needs them: record why, extract anyway
        log.warning(
            "field maps of %s could not be traced (%s); --upsample fieldmap will refuse its layers", model.spec, err
        )
        fields = {layer: f"tracing the model's operations failed: {err}" for layer in layers}
    with capture(model, layers, copy_all) as run:
        probe = _probe(run, model, ih, iw, device)
        layout = token_layout(model.module)
        readouts: dict[str, Readout] = {}
        shapes = {}
        for layer in layers:
            readouts[layer] = plan_readout(output_shape(probe[layer], layer), layer, (ih, iw), layout, tokens)
            maps = read_maps(probe[layer], readouts[layer], layer)
            if readouts[layer].kind == "flat":
                log.warning(
                    "layer %s outputs (batch, %d) with no spatial dimensions: each unit is treated as a 1x1 map",
                    layer,
                    maps.shape[1],
                )
            shapes[layer] = tuple(maps.shape[1:])
        rotations = {layer: _rotation(rotation, shapes[layer][0], layer) for layer in layers}
        layer_info = {}
        for layer, (units, height, width) in shapes.items():
            values = num_images * height * width
            layer_info[layer] = {
                "units": units,
                "height": height,
                "width": width,
                "flat": readouts[layer].kind == "flat",
                "readout": readouts[layer].to_json(),
                "num_values": values,
                "candidates": min(candidate_count(values, quantile), (stop - start) * height * width),
                **field_map_json(fields[layer]),
            }
        with contextlib.ExitStack() as stack:
            writers, topks, imgmax = {}, {}, {}
            for layer, info in layer_info.items():
                target = shard_file(out_dir, layer, "act")
                tmp = stack.enter_context(atomic_path(target))
                f = stack.enter_context(open_for_writing(tmp, target))
                writers[layer] = NpyRowWriter(f, (stop - start, *shapes[layer]), np_dtype, target)
                topks[layer] = TopK(candidate_count(info["num_values"], quantile))
                imgmax[layer] = np.empty((stop - start, info["units"]), dtype=np.float32)
            loader = ds.loader(batch_size, workers, start, stop)
            bar = tqdm(total=stop - start, desc=f"extract shard {shard}", unit="img", disable=not progress)
            forward_s, loop_start = 0.0, time.perf_counter()
            for batch in unwrap_worker_errors(loader):
                images = batch["image"]
                if not isinstance(images, torch.Tensor):
                    raise NetDissectError(
                        f"{ds.root}: rows {batch['i'][0].item() + 2}.. have images of different "
                        f"sizes; dissection needs one image size"
                    )
                tic = time.perf_counter()
                outputs = run(model.normalise(images.to(device)))
                if device != "cpu":
                    torch.cuda.synchronize()
                forward_s += time.perf_counter() - tic
                rows = batch["i"]
                for layer in layers:
                    maps = read_maps(outputs[layer], readouts[layer], layer).to(torch.float32)
                    if maps.shape[0] != len(rows):
                        raise NetDissectError(
                            f"layer {layer}: output has batch size {maps.shape[0]} for {len(rows)} images; the "
                            f"model mixes the images of a batch (a fixed batch size?): run with --batch-size 1"
                        )
                    if not bool(torch.isfinite(maps.sum())):  # one reduction; the full check only when needed
                        _check_finite(maps, layer, rows, ds)
                    if rotation is not None and rotation[1] != 0:
                        maps = rotate_maps(maps, torch.from_numpy(rotations[layer]).to(maps.device))
                    stored = maps.to(torch.float16).to(torch.float32) if dtype == "float16" else maps
                    writers[layer].write(stored.cpu().numpy().astype(np_dtype, copy=False))
                    lo = int(rows[0]) - start
                    imgmax[layer][lo : lo + len(rows)] = stored.amax(dim=(2, 3)).cpu().numpy()
                    topks[layer].add(stored.permute(1, 0, 2, 3).reshape(stored.shape[1], -1))
                bar.update(len(rows))
            bar.close()
            if timings is not None:
                timings.update(forward_s=forward_s, loop_s=time.perf_counter() - loop_start)
            for layer in layers:
                writers[layer].close()
                if rotation is not None:
                    save_npy(shard_file(out_dir, layer, "rotation"), rotations[layer])
                save_npy(shard_file(out_dir, layer, "imgmax"), imgmax[layer])
                if stop > start:
                    save_npy(shard_file(out_dir, layer, "topk"), topks[layer].result())
                else:
                    save_npy(shard_file(out_dir, layer, "topk"), np.empty((shapes[layer][0], 0), np.float32))
    meta = {
        "format": SHARD_FORMAT,
        "version": SHARD_VERSION,
        "shard": shard,
        "shards": shards,
        "start": start,
        "stop": stop,
        "num_images": num_images,
        "image_size": [ih, iw],
        "dataset": str(ds.root),
        "dataset_fingerprint": ds.fingerprint(),
        "model": model.spec,
        "weights": model.weights,
        "weights_sha256": model.weights_sha256,
        "preset": preset,
        **model.input_settings(),
        "quantile": quantile,
        "dtype": dtype,
        "tokens": tokens,
        "rotation": None if rotation is None else {"seed": rotation[0], "power": rotation[1]},
        "layers": layer_info,
    }
    save_json(out_dir / "meta.json", meta)
    return meta


def _rotation(rotation: tuple[int, float] | None, units: int, layer: str) -> np.ndarray | None:
    """The (units, units) matrix of ``rotation`` (seed, power) for a layer: R(power), the identity at power 0."""
    if rotation is None:
        return None
    seed, power = rotation
    matrix = rotation_matrix(units, seed, power, layer)
    return np.eye(units) if matrix is None else matrix


def _probe(run: Any, model: LoadedModel, ih: int, iw: int, device: str) -> dict[str, torch.Tensor]:
    """The requested layers' outputs for one black image: the model must run at the dataset's size."""
    try:
        return run(model.normalise(torch.zeros(1, 3, ih, iw, dtype=torch.uint8, device=device)))
    except (RuntimeError, AssertionError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NetDissectError(
            f"--model {model.spec}: cannot run on the dataset's {ih}x{iw} images ({reason}); use a dataset of "
            f"the size the model takes (docs/models.md)"
        ) from None


def _check_finite(maps: torch.Tensor, layer: str, rows: torch.Tensor, ds: Any) -> None:
    finite = torch.isfinite(maps).flatten(1).all(dim=1)
    if not bool(finite.all()):
        b = int(torch.nonzero(~finite)[0, 0])
        row = int(rows[b])
        raise NetDissectError(
            f"layer {layer}: NaN or infinite activation for image {ds.image_path(row)} "
            f"(index.csv row {row + 2}, image index {row}); check the model's weights and "
            f"--mean/--std"
        )
