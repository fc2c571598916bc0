"""Forward pass: activations, per-image maxima and quantile candidates of every layer, per shard.

One forward pass per batch serves all requested layers and stops after the deepest one. A shard is
the contiguous rows ``[k*N//n, (k+1)*N//n)`` of index.csv (:func:`shard_range`). Files of a shard
folder (names fixed in docs/interfaces.md)::

    {layer}.act.npy      (n_k, U, H, W) float32 (or float16 on request), activations in row order
    {layer}.imgmax.npy   (n_k, U) float32, per-image maximum of each unit's map (of the stored values)
    {layer}.topk.npy     (U, k_shard) float32, each unit's largest values, descending (see quantile.py)
    meta.json            written LAST: the shard is finished iff meta.json exists

meta.json (``format: "netdissect-shard"``, ``version: 1``)::

    {"format": "netdissect-shard", "version": 1,
     "shard": k, "shards": n, "start": first row, "stop": row after the last, "num_images": N (whole dataset),
     "image_size": [ih, iw], "dataset": str, "dataset_fingerprint": sha256 hex,
     "model": SPEC, "weights": path or null, "weights_sha256": hex or null, "mean": [3], "std": [3],
     "quantile": q the candidates were kept for, "dtype": "float32" | "float16",
     "layers": {layer: {"units": U, "height": H, "width": W, "flat": true if the output was N×U
                        (stored as 1×1 maps), "num_values": N·H·W (whole dataset), "candidates": k_shard}}}

Thresholds and masks use the values as stored (after float16 rounding when requested), so every stage
sees the same numbers. Memory follows the batch size: activations stream to disk batch by batch
(header first, then rows), never held for the whole shard.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from netdissect.errors import NetDissectError
from netdissect.io import atomic_path, save_json, save_npy
from netdissect.models import LoadedModel, capture
from netdissect.quantile import TopK, candidate_count

log = logging.getLogger(__name__)

SHARD_FORMAT = "netdissect-shard"
SHARD_VERSION = 1
DTYPES = {"float32": np.float32, "float16": np.float16}


def shard_range(num_images: int, shard: int, shards: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of shard ``shard`` of ``shards``: ``[k*N//n, (k+1)*N//n)``."""
    if shards < 1 or not 0 <= shard < shards:
        raise NetDissectError(f"--shard {shard} --shards {shards}: expected 0 <= shard < shards and shards >= 1")
    return shard * num_images // shards, (shard + 1) * num_images // shards


class NpyRowWriter:
    """Writes a C-order .npy file of known shape row block by row block (no memory map, flat RSS)."""

    def __init__(self, f: BinaryIO, shape: tuple[int, ...], dtype: np.dtype):
        self.f, self.shape, self.dtype = f, shape, np.dtype(dtype)
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        )
        self.rows = 0

    def write(self, block: np.ndarray) -> None:
        assert block.shape[1:] == self.shape[1:] and block.dtype == self.dtype
        self.f.write(np.ascontiguousarray(block).tobytes())
        self.rows += block.shape[0]

    def close(self) -> None:
        if self.rows != self.shape[0]:
            raise RuntimeError(f"wrote {self.rows} rows, header says {self.shape[0]}")
        self.f.flush()


def read_npy_rows(path: str | Path, rows: Sequence[int] | np.ndarray | slice) -> np.ndarray:
    """Rows of a C-order .npy file, read with plain file reads (contiguous runs read at once)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = (
            np.lib.format.read_array_header_1_0(f) if version == (1, 0) else np.lib.format.read_array_header_2_0(f)
        )
        if fortran:
            raise NetDissectError(f"{path}: Fortran-order arrays are not supported; re-run extract")
        offset = f.tell()
        row_items = int(np.prod(shape[1:], dtype=np.int64))
        row_bytes = row_items * dtype.itemsize
        if isinstance(rows, slice):
            rows = np.arange(shape[0])[rows]
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= shape[0]):
            raise NetDissectError(f"{path}: rows {rows.min()}..{rows.max()} requested, file has {shape[0]}")
        out = np.empty((rows.size, *shape[1:]), dtype=dtype)
        # split into runs of consecutive rows
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        pos = 0
        for run in np.split(rows, breaks) if rows.size else []:
            f.seek(offset + int(run[0]) * row_bytes)
            data = f.read(run.size * row_bytes)
            out[pos : pos + run.size] = np.frombuffer(data, dtype=dtype).reshape(run.size, *shape[1:])
            pos += run.size
        return out


def load_meta(shard_dir: str | Path) -> dict[str, Any]:
    """A finished shard's meta.json (error if the shard is missing or unfinished)."""
    path = Path(shard_dir) / "meta.json"
    if not path.is_file():
        raise NetDissectError(
            f"{shard_dir}: no meta.json, so this shard is missing or unfinished; run "
            f"`netdissect extract ... --out {shard_dir}`"
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != SHARD_FORMAT or meta.get("version") != SHARD_VERSION:
        raise NetDissectError(f"{path}: not a version {SHARD_VERSION} {SHARD_FORMAT} file; re-run extract")
    return meta


def layer_meta(meta: dict[str, Any], layer: str, shard_dir: str | Path) -> dict[str, Any]:
    if layer not in meta["layers"]:
        raise NetDissectError(
            f"{shard_dir}/meta.json: layer {layer!r} was not extracted; layers here: {', '.join(meta['layers'])}"
        )
    return meta["layers"][layer]


def shard_dirs_of(shards: str | Path | Iterable[str | Path]) -> list[Path]:
    """Shard folders from one shard folder, a folder of shard folders, or a list of shard folders."""
    if isinstance(shards, (str, os.PathLike)):
        path = Path(shards)
        if (path / "meta.json").is_file():
            return [path]
        found = (
            sorted((p for p in path.iterdir() if (p / "meta.json").is_file()), key=lambda p: p.name)
            if path.is_dir()
            else []
        )
        if not found:
            raise NetDissectError(f"{path}: neither a finished shard (meta.json) nor a folder of shards")
        return found
    return [Path(p) for p in shards]


def read_activations(
    shards_dir: str | Path | Iterable[str | Path], layer: str, rows: Sequence[int] | np.ndarray
) -> np.ndarray:
    """float32 (len(rows), U, H, W) activations of ``layer`` for GLOBAL row numbers ``rows``."""
    rows = np.asarray(rows, dtype=np.int64)
    metas = [(d, load_meta(d)) for d in shard_dirs_of(shards_dir)]
    if not metas:
        raise NetDissectError("no shard folders given")
    lm = layer_meta(metas[0][1], layer, metas[0][0])
    out = np.empty((rows.size, lm["units"], lm["height"], lm["width"]), dtype=np.float32)
    done = np.zeros(rows.size, dtype=bool)
    for d, meta in metas:
        inside = (rows >= meta["start"]) & (rows < meta["stop"])
        if inside.any():
            local = rows[inside] - meta["start"]
            order = np.argsort(local, kind="stable")
            block = read_npy_rows(Path(d) / f"{layer}.act.npy", local[order])
            idx = np.flatnonzero(inside)[order]
            out[idx] = block
            done[idx] = True
    if not done.all():
        raise NetDissectError(
            f"rows {rows[~done][:10].tolist()} are in none of the shards given ({', '.join(str(d) for d, _ in metas)})"
        )
    return out


def _clean_loader_error(err: Exception) -> NetDissectError:
    """DataLoader workers re-raise with a traceback glued on; keep the user's message only."""
    text = str(err)
    marker = "NetDissectError: "
    if marker in text:
        text = text.rsplit(marker, 1)[1].strip()
    return NetDissectError(text)


def iterate_batches(loader: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """Iterate a Broden DataLoader, turning worker-wrapped NetDissectErrors back into plain ones."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except NetDissectError as err:
            raise _clean_loader_error(err) from None
        yield batch


def image_size(ds: Any) -> tuple[int, int]:
    """The (ih, iw) shared by every row of index.csv (extraction batches and stores whole maps)."""
    if len(ds) == 0:
        raise NetDissectError(f"{ds.root}/index.csv has no rows: the dataset is empty, nothing to dissect")
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
    batch_size: int = 32,
    workers: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    quantile: float = 0.005,
    progress: bool = True,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Run the model over shard ``shard`` of ``ds`` and write the shard folder; returns meta.json's content.

    ``timings``, when given, receives ``forward_s`` (seconds inside the model) and ``loop_s`` (the
    whole batch loop: decoding, forward, writing, candidates).
    """
    import time

    from tqdm import tqdm

    if dtype not in DTYPES:
        raise NetDissectError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    if batch_size < 1:
        raise NetDissectError(f"--batch-size {batch_size}: expected a positive number")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # an old meta.json must not vouch for new files
    num_images = len(ds)
    ih, iw = image_size(ds)
    start, stop = shard_range(num_images, shard, shards)
    np_dtype = DTYPES[dtype]
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
                tmp = stack.enter_context(atomic_path(out_dir / f"{layer}.act.npy"))
                f = stack.enter_context(open(tmp, "wb"))
                writers[layer] = NpyRowWriter(f, (stop - start, *shapes[layer]), np_dtype)
                topks[layer] = TopK(candidate_count(info["num_values"], quantile))
                imgmax[layer] = np.empty((stop - start, info["units"]), dtype=np.float32)
            loader = ds.loader(batch_size, workers, start, stop)
            bar = tqdm(total=stop - start, desc=f"extract shard {shard}", unit="img", disable=not progress)
            forward_s, loop_start = 0.0, time.perf_counter()
            for batch in iterate_batches(loader):
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
                save_npy(out_dir / f"{layer}.imgmax.npy", imgmax[layer])
                if stop > start:
                    save_npy(out_dir / f"{layer}.topk.npy", topks[layer].result())
                else:
                    save_npy(out_dir / f"{layer}.topk.npy", np.empty((shapes[layer][0], 0), np.float32))
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
        "layers": layer_info,
    }
    save_json(out_dir / "meta.json", meta)
    return meta


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
