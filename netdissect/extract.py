"""The extract stage: one forward pass over a shard for every requested layer, written as shard files
(:mod:`netdissect.shards`): activations, per-image maxima and quantile candidates.

One forward pass per batch serves all requested layers and stops after the deepest one. Thresholds
and masks use the values as stored (after float16 rounding when requested), so every stage sees the
same numbers. Memory follows the batch size: activations stream to disk batch by batch (header
first, then rows), never held for the whole shard.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netdissect.broden.dataset import check_not_empty, single_thread_worker
from netdissect.defaults import BATCH_SIZE, DTYPE, MEMORY_FORMAT, MEMORY_FORMATS, QUANTILE
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
    memory_format: str = MEMORY_FORMAT,
    store_activations: bool = True,
    tokens: str | None = None,
    progress: bool = True,
    timings: dict[str, float] | None = None,
    preset: str | None = None,
    copy_all: bool = False,
    rotation: tuple[int, float] | None = None,
) -> dict[str, Any]:
    """Run the model over shard ``shard`` of ``ds`` and write the shard folder; returns meta.json's content.

    ``store_activations`` False (``--recompute``) writes no ``{layer}.act.npy``: the later stages rerun
    the forward pass (:mod:`netdissect.recompute`), with the batches, device, memory format and readouts
    that meta.json records, so they see the same numbers.

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
        probe, memory_format = probe_forward(run, model, (ih, iw), device, memory_format)
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
        turns = {layer: rotation_turn(rotations[layer], rotation, device) for layer in layers}
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
        if store_activations:
            check_disk(out_dir, {layer: (stop - start) * u * h * w for layer, (u, h, w) in shapes.items()}, dtype)
        with contextlib.ExitStack() as stack:
            writers, topks, imgmax = {}, {}, {}
            for layer, info in layer_info.items():
                if store_activations:
                    target = shard_file(out_dir, layer, "act")
                    tmp = stack.enter_context(atomic_path(target))
                    f = stack.enter_context(open_for_writing(tmp, target))
                    writers[layer] = NpyRowWriter(f, (stop - start, *shapes[layer]), np_dtype, target)
                else:
                    shard_file(out_dir, layer, "act").unlink(missing_ok=True)  # never mix runs
                topks[layer] = TopK(candidate_count(info["num_values"], quantile))
                imgmax[layer] = np.empty((stop - start, info["units"]), dtype=np.float32)
            bar = tqdm(total=stop - start, desc=f"extract shard {shard}", unit="img", disable=not progress)
            forward_s, loop_start = 0.0, time.perf_counter()
            for rows, outputs, seconds in forward_batches(
                ds, model, run, layers, start, stop, batch_size, workers, device, memory_format
            ):
                forward_s += seconds
                for layer in layers:
                    stored, maxima = stored_maps(outputs[layer], readouts[layer], layer, dtype, rows, ds, turns[layer])
                    if store_activations:
                        writers[layer].write(np.ascontiguousarray(stored.cpu().numpy(), dtype=np_dtype))
                    lo = int(rows[0]) - start
                    imgmax[layer][lo : lo + len(rows)] = maxima.cpu().numpy()
                    topks[layer].add(stored.permute(1, 0, 2, 3).reshape(stored.shape[1], -1))
                bar.update(len(rows))
            bar.close()
            if timings is not None:
                timings.update(forward_s=forward_s, loop_s=time.perf_counter() - loop_start)
            for layer in writers:
                writers[layer].close()
            for layer in layers:
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
        "batch_size": batch_size,
        "memory_format": memory_format,
        "device": device,
        "activations": "store" if store_activations else "recompute",
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


def rotation_turn(matrix: np.ndarray | None, rotation: tuple[int, float] | None, device: str) -> torch.Tensor | None:
    """The matrix :func:`stored_maps` applies (None: nothing to rotate, also at power 0)."""
    if matrix is None or rotation is None or rotation[1] == 0:
        return None
    return torch.from_numpy(matrix).to(device)


def check_disk(out_dir: Path, values: dict[str, int], dtype: str) -> None:
    """Refuse to start when the activations (``values`` per layer, stored as ``dtype``) would not fit on
    the disk of ``out_dir``, saying how much they need and what to do."""
    import shutil

    need = sum(values.values()) * np.dtype(NUMPY_DTYPES[dtype]).itemsize
    free = shutil.disk_usage(out_dir).free
    if need > free:
        gb = lambda n: f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} bytes"  # noqa: E731
        per_layer = ", ".join(
            f"{layer} {gb(v * np.dtype(NUMPY_DTYPES[dtype]).itemsize)}" for layer, v in values.items()
        )
        half = " or --dtype float16 (half of it)," if dtype == "float32" else ""
        raise NetDissectError(
            f"{out_dir}: the {dtype} activations need {gb(need)} ({per_layer}) but only {gb(free)} are free "
            f"there; free some space,{half} or use --recompute (dissect.activations: recompute), which "
            f"stores no activations and reruns the forward pass in the tally and the report"
        )


def probe_forward(
    run: Any, model: LoadedModel, size: tuple[int, int], device: str, memory_format: str
) -> tuple[dict[str, torch.Tensor], str]:
    """One black image through the model: the layers' outputs, and the memory format the batches will
    use. A model whose code cannot take channels-last input (``x.view`` on its features) falls back to
    contiguous input, with a warning."""
    if memory_format not in MEMORY_FORMATS:
        raise NetDissectError(f"--memory-format {memory_format}: expected one of {', '.join(MEMORY_FORMATS)}")
    x = model.normalise(torch.zeros(1, 3, *size, dtype=torch.uint8, device=device))
    if memory_format == "channels_last":
        try:
            return run(x.contiguous(memory_format=torch.channels_last)), memory_format
        except (RuntimeError, AssertionError, ValueError) as err:
            probe = _probe(run, model, x, size)  # a model that fails on contiguous input too: its message
            log.warning(
                "model %s fails on channels-last input (%s); using contiguous input (--memory-format contiguous)",
                model.spec,
                _reason(err),
            )
            return probe, "contiguous"
    return _probe(run, model, x.contiguous(), size), "contiguous"


def _reason(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _probe(run: Any, model: LoadedModel, x: torch.Tensor, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The requested layers' outputs for the probe input ``x``: the model must run at the dataset's size."""
    try:
        return run(x)
    except (RuntimeError, AssertionError, ValueError) as err:
        raise NetDissectError(
            f"--model {model.spec}: cannot run on the dataset's {size[0]}x{size[1]} images ({_reason(err)}); use "
            f"a dataset of the size the model takes (docs/models.md)"
        ) from None


def forward_batches(
    ds: Any,
    model: LoadedModel,
    run: Any,
    layers: Sequence[str],
    start: int,
    stop: int,
    batch_size: int,
    workers: int,
    device: str,
    memory_format: str,
    rows: Sequence[int] | None = None,
):
    """The forward pass over rows [start, stop) in batches of ``batch_size`` from ``start`` on (the
    batches of extraction: same batches, same numbers): yields (rows, {layer: output}, seconds in the
    model). ``rows``: only the batches that hold one of these rows (the others are not decoded)."""
    import time

    channels_last = memory_format == "channels_last"
    if rows is None:
        loader = ds.loader(batch_size, workers, start, stop, channels_last=channels_last)
    else:
        wanted = np.unique((np.asarray(rows, dtype=np.int64) - start) // batch_size)
        batches = [list(range(start + j * batch_size, min(start + (j + 1) * batch_size, stop))) for j in wanted]
        loader = torch.utils.data.DataLoader(
            ds,
            batch_sampler=batches,
            num_workers=workers,
            collate_fn=functools.partial(ds.collate, channels_last=channels_last),
            worker_init_fn=single_thread_worker if workers else None,
        )
    for batch in unwrap_worker_errors(loader):
        images = batch["image"]
        if not isinstance(images, torch.Tensor):
            raise NetDissectError(
                f"{ds.root}: rows {batch['i'][0].item() + 2}.. have images of different "
                f"sizes; dissection needs one image size"
            )
        tic = time.perf_counter()
        x = model.normalise(images.to(device))
        try:
            outputs = run(x if channels_last else x.contiguous())
            if device != "cpu":
                torch.cuda.synchronize()
        except torch.cuda.OutOfMemoryError:
            raise NetDissectError(
                f"--batch-size {batch_size}: a batch of {len(images)} images does not fit in the memory of "
                f"{device}; lower --batch-size (e.g. {max(1, batch_size // 2)})"
            ) from None
        yield batch["i"], outputs, time.perf_counter() - tic


def stored_maps(
    output: torch.Tensor,
    readout: Readout,
    layer: str,
    dtype: str,
    rows: torch.Tensor,
    ds: Any,
    turn: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's output for a batch, read as ``readout`` says, as the shards store it: float32
    (B, U, H, W), its units rotated by ``turn`` (U, U) when given (:func:`rotation_turn`), rounded to
    float16 when ``dtype`` is float16 (so that every stage sees the same numbers), and its per-image
    maxima (B, U). A non-finite stored value is refused, naming the image."""
    maps = read_maps(output, readout, layer).to(torch.float32)
    if maps.shape[0] != len(rows):
        raise NetDissectError(
            f"layer {layer}: output has batch size {maps.shape[0]} for {len(rows)} images; the "
            f"model mixes the images of a batch (a fixed batch size?): run with --batch-size 1"
        )
    if turn is not None:
        maps = rotate_maps(maps, turn)
    if dtype == "float16":
        maps = maps.to(torch.float16).to(torch.float32)
    maxima = maps.amax(dim=(2, 3))  # NaN and +inf reach the maxima, -inf the minima
    finite = torch.isfinite(maxima).all(dim=1) & torch.isfinite(maps.amin(dim=(2, 3))).all(dim=1)
    if not bool(finite.all()):
        row = int(rows[int(torch.nonzero(~finite)[0, 0])])
        overflow = " (float16 holds up to 65504: use --dtype float32)" if dtype == "float16" else ""
        raise NetDissectError(
            f"layer {layer}: NaN or infinite activation{overflow} for image {ds.image_path(row)} "
            f"(index.csv row {row + 2}, image index {row}); check the model's weights and "
            f"--mean/--std"
        )
    return maps, maxima
