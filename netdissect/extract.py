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
from netdissect.io import atomic_path, save_json, save_npy
from netdissect.models import LoadedModel, capture
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


def as_maps(output: torch.Tensor, layer: str) -> torch.Tensor:
    """A layer's output as (B, U, H, W): N×U outputs become 1×1 maps; other ranks are an error."""
    if not isinstance(output, torch.Tensor):
        raise NetDissectError(
            f"layer {layer}: output is a {type(output).__name__}, expected a tensor; choose a "
            f"layer whose module returns one tensor"
        )
    if output.dim() == 2:
        return output[:, :, None, None]
    if output.dim() != 4:
        raise NetDissectError(
            f"layer {layer}: output has shape {tuple(output.shape)}, expected (batch, units, "
            f"height, width) or (batch, units); choose a convolutional or linear layer"
        )
    return output


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
    progress: bool = True,
    timings: dict[str, float] | None = None,
    rotation: tuple[int, float] | None = None,
) -> dict[str, Any]:
    """Run the model over shard ``shard`` of ``ds`` and write the shard folder; returns meta.json's content.

    ``rotation`` (seed, power): every layer's units are rotated by R(power) of its own seeded random
    rotation before anything is stored (:mod:`netdissect.experiments.rotation`), and the matrix is
    written beside its files (``{layer}.rotation.npy``); at power 0 nothing is transformed.

    ``timings``, when given, receives ``forward_s`` (seconds inside the model) and ``loop_s`` (the
    whole batch loop: decoding, forward, writing, candidates).
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
    model.module.to(device)
    if device.startswith("cuda"):
        # full float32 convolutions and matmuls (PyTorch lets cuDNN use TF32 by default, ~1e-3 relative)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    with capture(model, layers) as run:
        probe = run(model.normalise(torch.zeros(1, 3, ih, iw, dtype=torch.uint8, device=device)))
        shapes = {}
        for layer in layers:
            maps = as_maps(probe[layer], layer)
            if probe[layer].dim() == 2:
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
                "flat": probe[layer].dim() == 2,
                "num_values": values,
                "candidates": min(candidate_count(values, quantile), (stop - start) * height * width),
            }
        with contextlib.ExitStack() as stack:
            writers, topks, imgmax = {}, {}, {}
            for layer, info in layer_info.items():
                tmp = stack.enter_context(atomic_path(shard_file(out_dir, layer, "act")))
                f = stack.enter_context(open(tmp, "wb"))
                writers[layer] = NpyRowWriter(f, (stop - start, *shapes[layer]), np_dtype)
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
                    maps = as_maps(outputs[layer], layer).to(torch.float32)
                    _check_finite(maps, layer, rows, ds)
                    if rotation is not None and rotation[1] != 0:
                        maps = rotate_maps(maps, torch.from_numpy(rotations[layer]).to(maps.device))
                    stored = maps.to(torch.float16).to(torch.float32) if dtype == "float16" else maps
                    writers[layer].write(stored.cpu().numpy().astype(np_dtype))
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
        "mean": list(model.mean),
        "std": list(model.std),
        "quantile": quantile,
        "dtype": dtype,
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
