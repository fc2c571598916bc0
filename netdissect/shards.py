"""The shard files: one owner of their format. A shard is the contiguous rows ``[k*N//n, (k+1)*N//n)``
of index.csv (:func:`shard_range`), written by ``netdissect extract`` and read by every later stage.

Files of a shard folder (:func:`shard_file` gives their paths)::

    {layer}.act.npy      (n_k, U, H, W) float32 (or float16 on request), activations in row order
    {layer}.imgmax.npy   (n_k, U) float32, per-image maximum of each unit's map (of the stored values)
    {layer}.topk.npy     (U, k_shard) float32, each unit's largest values, descending (see quantile.py)
    {layer}.rotation.npy (U, U) float64, only when the units were rotated: the matrix R applied (a' = R·a)
    meta.json            written LAST: the shard is finished iff meta.json exists

meta.json (``format: "netdissect-shard"``, ``version: 1``)::

    {"format": "netdissect-shard", "version": 1,
     "shard": k, "shards": n, "start": first row, "stop": row after the last, "num_images": N (whole dataset),
     "image_size": [ih, iw], "dataset": str, "dataset_fingerprint": sha256 hex,
     "model": SPEC, "weights": path or null, "weights_sha256": hex or null,
     "preset": "original" | "lite" | null (netdissect/presets.py),
     "mean": [3], "std": [3], "divisor": d, "bgr": bool, "mean_precision": "float32" | "float64"
         (the input: float32 (v/d − mean)/std per channel, netdissect.models.normalise),
     "mean_file": path or null (the Caffe mean image the mean came from),
     "quantile": q the candidates were kept for, "dtype": "float32" | "float16",
     "tokens": --tokens given (null, "spatial" or "cls"),
     "rotation": null | {"seed": S, "power": p} (every layer's units rotated: docs/experiments.md §1),
     "layers": {layer: {"units": U, "height": H, "width": W, "flat": true if the output was N×U
                        (stored as 1×1 maps), "readout": {"kind": "conv" | "channels_last" | "tokens" | "cls"
                        | "flat", "prefix": tokens before the patch grid, "grid": [h, w] or null} (how the
                        output became maps: netdissect/models/readout.py), "num_values": N·H·W (whole
                        dataset), "candidates": k_shard,
                        "field_map": {"offset": [y, x], "size": [y, x], "step": [y, x]} or null,
                        "field_map_none": why there is none, or null}}}

(Shards written before field maps were recorded lack the last four top-level keys and the field
map keys; readers treat them as the defaults and as "no field map recorded".)

Activations are written row block by row block (:class:`NpyRowWriter`) and read by rows
(:func:`read_npy_rows`), so no stage holds a whole shard in memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from netdissect.errors import NetDissectError
from netdissect.io import disk_full_names
from netdissect.names import layer_file_name

SHARD_FORMAT = "netdissect-shard"


SHARD_VERSION = 1


NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}  # the choices of defaults.DTYPES


def shard_range(num_images: int, shard: int, shards: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of shard ``shard`` of ``shards``: ``[k*N//n, (k+1)*N//n)``."""
    if shards < 1 or not 0 <= shard < shards:
        raise NetDissectError(f"--shard {shard} --shards {shards}: expected 0 <= shard < shards and shards >= 1")
    return shard * num_images // shards, (shard + 1) * num_images // shards


class NpyRowWriter:
    """Writes a C-order .npy file of known shape row block by row block (no memory map, flat RSS).

    ``name`` is the file the user will see (the target of the atomic write ``f`` belongs to): a full
    disk is an error naming it (:func:`netdissect.io.no_space_error`)."""

    def __init__(self, f: BinaryIO, shape: tuple[int, ...], dtype: np.dtype, name: str | Path | None = None):
        self.f, self.shape, self.dtype = f, shape, np.dtype(dtype)
        self.name = name if name is not None else f.name
        with disk_full_names(self.name):
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
            )
        self.rows = 0

    def write(self, block: np.ndarray) -> None:
        assert block.shape[1:] == self.shape[1:] and block.dtype == self.dtype
        with disk_full_names(self.name):
            self.f.write(np.ascontiguousarray(block))  # the buffer itself: no copy to bytes
        self.rows += block.shape[0]

    def close(self) -> None:
        if self.rows != self.shape[0]:
            raise RuntimeError(f"wrote {self.rows} rows, header says {self.shape[0]}")
        with disk_full_names(self.name):
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


def shard_file(shard_dir: str | Path, layer: str, kind: str) -> Path:
    """The path of one layer's file in a shard folder; ``kind`` is ``act``, ``imgmax``, ``topk`` or ``rotation``;
    the layer's name as a file name is :func:`netdissect.names.layer_file_name` (``inception_5b%2Foutput``)."""
    return Path(shard_dir) / f"{layer_file_name(layer)}.{kind}.npy"


def check_contiguous(parts: Sequence[tuple[str, int, int]], total: int | None, prefix: str = "") -> None:
    """Raise unless the row ranges ``(name, start, stop)``, in order, tile ``[0, total)`` exactly (one
    definition for every stage that combines shards). ``prefix`` starts each message (``"merge: "``)."""
    expected = 0
    for name, start, stop in parts:
        if start != expected:
            raise NetDissectError(
                f"{prefix}{name} covers rows [{start}, {stop}) but rows must continue at {expected}; "
                f"a shard is missing or given twice"
            )
        expected = stop
    if total is not None and expected != total:
        raise NetDissectError(
            f"{prefix}the shards cover rows [0, {expected}) of {total}; give every shard (missing: from row {expected})"
        )


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


def layer_shards(shards: str | Path | Iterable[str | Path], layer: str) -> list[tuple[Path, dict[str, Any]]]:
    """The finished shards of one layer as (folder, meta.json) in row order, checked to come from one
    model and to tile all rows of the dataset."""
    metas = sorted(((Path(d), load_meta(d)) for d in shard_dirs_of(shards)), key=lambda dm: dm[1]["start"])
    if not metas:
        raise NetDissectError("no shard folders given")
    first_dir, first = metas[0]
    info = layer_meta(first, layer, first_dir)
    shape = (info["units"], info["height"], info["width"])
    for d, meta in metas:
        other = layer_meta(meta, layer, d)
        if (
            (other["units"], other["height"], other["width"]) != shape
            or meta["model"] != first["model"]
            or meta["weights_sha256"] != first["weights_sha256"]
        ):
            raise NetDissectError(
                f"{d}: layer {layer} or model differs from {first_dir}; all shards must come from one model"
            )
    check_contiguous([(str(d), meta["start"], meta["stop"]) for d, meta in metas], first["num_images"])
    return metas


def read_imgmax(shards: str | Path | Iterable[str | Path], layer: str) -> np.ndarray:
    """(N, U) float32 per-image maxima of ``layer`` over all rows, from every shard in row order.

    Read into one array (one shard's file at a time), not concatenated: a 2048-unit layer's maxima at
    63,305 images are 519 MB, and a concatenation held them twice."""
    files = [shard_file(d, layer, "imgmax") for d, _ in layer_shards(shards, layer)]
    if len(files) == 1:
        return np.load(files[0])
    shapes = [np.load(f, mmap_mode="r").shape for f in files]  # headers only
    out = np.empty((sum(s[0] for s in shapes), *shapes[0][1:]), dtype=np.float32)
    row = 0
    for f, shape in zip(files, shapes):
        out[row : row + shape[0]] = np.load(f)
        row += shape[0]
    return out


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
            block = read_npy_rows(shard_file(d, layer, "act"), local[order])
            idx = np.flatnonzero(inside)[order]
            out[idx] = block
            done[idx] = True
    if not done.all():
        raise NetDissectError(
            f"rows {rows[~done][:10].tolist()} are in none of the shards given ({', '.join(str(d) for d, _ in metas)})"
        )
    return out
