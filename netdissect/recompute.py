"""The forward pass run again instead of stored activations (``--recompute``, workflow
``dissect.activations: recompute``): disk then holds only candidates, maxima and counts.

A shard extracted with ``--recompute`` has no ``{layer}.act.npy``. The tally and the report rerun the
forward pass with what its meta.json records (model, weights, input convention, device, memory format,
batch size, each layer's readout, storage type) over the same batches as extraction, so they see the same numbers bit for
bit: on the CPU a convolution's last bits depend on the batch an image is in, so batches are never
regrouped. Every recomputed batch's per-image maxima are checked against the stored ones
(``{layer}.imgmax.npy``): a forward pass that gives other numbers (another library version, another
device) is refused instead of counted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netdissect.errors import NetDissectError
from netdissect.shards import load_meta, shard_dirs_of, shard_file

Forward = Any  # a callable (rows or None) -> iterator of (rows, {layer: float32 (B, U, H, W) tensor})


def stores_activations(shard_dir: str | Path, layer: str) -> bool:
    """Whether the shard keeps ``layer``'s activations (False: extracted with ``--recompute``)."""
    return shard_file(shard_dir, layer, "act").is_file() or load_meta(shard_dir).get("activations") != "recompute"


@contextlib.contextmanager
def recomputed(
    dataset: str | Path, shard_dir: str | Path, layers: Sequence[str], *, workers: int = 0
) -> Iterator[Forward]:
    """The forward pass of a shard again: yields ``forward(rows=None)``, which iterates over the
    extraction batches of the shard (only those holding one of ``rows``, global row numbers, when given)
    as (rows int64 array, {layer: activations as stored, float32 (B, U, H, W) tensor}).

    The model, weights, input convention, device, memory format, batch size, readouts and dtype come from
    the shard's meta.json; the weights must still have the recorded sha256, and each batch's maxima must equal the
    stored ones."""
    from netdissect.defaults import DIVISOR, MEAN_PRECISIONS
    from netdissect.extract import forward_batches, rotation_turn, stored_maps
    from netdissect.models import capture, load_model
    from netdissect.models.readout import Readout
    from netdissect.pipeline import open_dataset
    from netdissect.shards import layer_meta

    meta = load_meta(shard_dir)
    for layer in layers:
        layer_meta(meta, layer, shard_dir)
    missing = [key for key in ("batch_size", "memory_format", "device") if key not in meta]
    missing += [f"layers.{layer}.readout" for layer in layers if "readout" not in meta["layers"][layer]]
    if missing:
        raise NetDissectError(
            f"{shard_dir}/meta.json lacks {', '.join(missing)} (written by an older netdissect); re-run "
            f"`netdissect extract` to recompute its activations"
        )
    model = load_model(meta["model"], meta["weights"], meta["mean"], meta["std"])
    # the input convention as recorded (a preset's or a mean file's values, without reading them again)
    model.divisor = meta.get("divisor", DIVISOR)
    model.bgr = meta.get("bgr", False)
    model.mean_precision = meta.get("mean_precision", MEAN_PRECISIONS[0])
    model.mean_file = meta.get("mean_file")
    readouts = {}
    for layer in layers:
        info = meta["layers"][layer]["readout"]
        readouts[layer] = Readout(
            info["kind"], info.get("prefix", 0), tuple(info["grid"]) if info.get("grid") else None
        )
    if model.weights_sha256 != meta["weights_sha256"]:
        raise NetDissectError(
            f"{shard_dir}: its activations are recomputed from {meta['weights'] or meta['model']}, whose "
            f"sha256 is no longer the one recorded at extraction; re-run `netdissect extract`"
        )
    ds = open_dataset(dataset, labels=False)
    if len(ds) != meta["num_images"] or ds.fingerprint() != meta["dataset_fingerprint"]:
        raise NetDissectError(
            f"{shard_dir} was extracted from another dataset than {dataset}; recompute with the dataset "
            f"the shard came from ({meta['dataset']})"
        )
    device, start, stop = meta["device"], meta["start"], meta["stop"]
    model.module.to(device)
    if device.startswith("cuda"):
        torch.backends.cudnn.allow_tf32 = False  # as extraction did
        torch.backends.cuda.matmul.allow_tf32 = False
    imgmax = {layer: np.load(shard_file(shard_dir, layer, "imgmax"), mmap_mode="r") for layer in layers}
    rotation = meta.get("rotation")  # the rotated units, as extraction stored them (its saved matrices)
    turns = {
        layer: rotation_turn(
            np.load(shard_file(shard_dir, layer, "rotation")) if rotation else None,
            (rotation["seed"], rotation["power"]) if rotation else None,
            device,
        )
        for layer in layers
    }

    with capture(model, layers) as run:
        run(model.normalise(torch.zeros(1, 3, *meta["image_size"], dtype=torch.uint8, device=device)))

        def forward(rows: Sequence[int] | None = None) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
            for batch_rows, outputs, _ in forward_batches(
                ds, model, run, layers, start, stop, meta["batch_size"], workers, device, meta["memory_format"], rows
            ):
                maps = {}
                for layer in layers:
                    stored, maxima = stored_maps(
                        outputs[layer], readouts[layer], layer, meta["dtype"], batch_rows, ds, turns[layer]
                    )
                    maps[layer] = stored.cpu()
                    local = batch_rows.numpy() - start
                    if not np.array_equal(maxima.cpu().numpy(), imgmax[layer][local]):
                        raise NetDissectError(
                            f"{shard_dir}: the recomputed activations of layer {layer} (rows {int(batch_rows[0])}.."
                            f"{int(batch_rows[-1])}) differ from those seen at extraction (another device, "
                            f"library version or thread setting?); re-run `netdissect extract`, or store the "
                            f"activations (no --recompute)"
                        )
                yield batch_rows.numpy(), maps

        yield forward


class ActivationReader(contextlib.AbstractContextManager):
    """``reader(rows)`` -> float32 (len(rows), U, H, W) activations of ``layer`` for GLOBAL ``rows``: read
    from the shards (:func:`netdissect.shards.read_activations`), or, where the shards store none,
    recomputed (:func:`recomputed`: only the batches holding one of the rows run; the last batch is kept,
    since the report asks for one row first, to learn the map size). Use it as a context manager: it
    keeps each shard's model loaded until the block ends. ``torch_threads``: the threads the recomputed
    forward pass runs with (the report renders with one torch thread per Python thread, but its forward
    pass, which reruns nearly every batch of a wide layer, should use the cores as extract did)."""

    def __init__(
        self,
        shards: str | Path | Sequence[str | Path],
        layer: str,
        dataset: str | Path,
        workers: int = 0,
        torch_threads: int | None = None,
    ):
        self.shards, self.layer, self.dataset, self.workers = shards, layer, dataset, workers
        self.torch_threads = torch_threads
        self.dirs = shard_dirs_of(shards)
        self.stored = all(stores_activations(d, layer) for d in self.dirs)
        self._stack = contextlib.ExitStack()
        self._forward: dict[Path, Forward] = {}
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # rows and maps of the last batch

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def __call__(self, rows: Sequence[int]) -> np.ndarray:
        from netdissect.shards import read_activations

        if self.stored:
            return read_activations(self.shards, self.layer, rows)
        rows = np.asarray(rows, dtype=np.int64)
        out: np.ndarray | None = None
        done = np.zeros(rows.size, dtype=bool)
        previous = torch.get_num_threads()
        torch.set_num_threads(self.torch_threads or previous)
        try:
            for batch_rows, acts in self._batches(rows):
                if out is None:
                    out = np.empty((rows.size, *acts.shape[1:]), dtype=np.float32)
                hit = np.flatnonzero(np.isin(rows, batch_rows))
                out[hit] = acts[np.searchsorted(batch_rows, rows[hit])]
                done[hit] = True
        finally:
            torch.set_num_threads(previous)
        if out is None or not done.all():
            raise NetDissectError(
                f"rows {rows[~done][:10].tolist()} are in none of the shards given "
                f"({', '.join(str(d) for d in self.dirs)})"
            )
        return out

    def _batches(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self._last is not None and np.isin(rows, self._last[0]).any():
            yield self._last
            rows = rows[~np.isin(rows, self._last[0])]
        for shard_dir in self.dirs:
            meta = load_meta(shard_dir)
            inside = rows[(rows >= meta["start"]) & (rows < meta["stop"])]
            if not inside.size:
                continue
            if shard_dir not in self._forward:
                self._forward[shard_dir] = self._stack.enter_context(
                    recomputed(self.dataset, shard_dir, [self.layer], workers=self.workers)
                )
            for batch_rows, maps in self._forward[shard_dir](inside):
                self._last = (batch_rows, maps[self.layer].numpy())
                yield self._last


def tally_recomputed(
    ds: Any,
    dataset: str | Path,
    shard_dir: str | Path,
    thresholds: dict[str, np.ndarray],
    *,
    union: str,
    upsample: dict[str, Any],
    device: str = "cpu",
    workers: int = 0,
    progress: bool = True,
    labels: Any = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Counts G, I, C of every layer of ``thresholds`` ({layer: (U,) thresholds}) over one shard, in ONE
    rerun of its forward pass (:func:`recomputed`); the counting is :class:`netdissect.tally.BatchCounter`'s,
    as for stored activations, with each layer's upsampling mode ``upsample[layer]``. ``ds`` gives the
    tables (and the labels, decoding the PNGs, unless ``labels``, packed labels, is given); ``workers``
    decode the images."""
    from tqdm import tqdm

    from netdissect.counts import check_union, label_groups
    from netdissect.ops import keep_freed_memory
    from netdissect.tally import BatchCounter

    check_union(union)
    keep_freed_memory()
    meta = load_meta(shard_dir)
    source = ds if labels is None else labels
    counters = {
        layer: BatchCounter(t, ds.primary, len(ds.categories), union, device, upsample[layer])
        for layer, t in thresholds.items()
    }
    num_labels, num_categories = ds.num_labels, len(ds.categories)
    totals = {
        layer: {
            "G": torch.zeros(num_labels, dtype=torch.int64),
            "I": torch.zeros((len(t), num_labels), dtype=torch.int64),
            "C": torch.zeros((len(t), num_categories), dtype=torch.int64),
        }
        for layer, t in thresholds.items()
    }
    start = meta["start"]
    bar = tqdm(total=meta["stop"] - start, desc=f"tally {','.join(thresholds)} (recomputed)", disable=not progress)
    with recomputed(dataset, shard_dir, list(thresholds), workers=workers) as forward:
        for rows, maps in forward():
            groups = label_groups([source[int(r)] for r in rows], ds.num_labels)
            for layer, counter in counters.items():
                batch = {
                    "rows": len(rows),
                    "groups": groups,
                    "acts": maps[layer],
                    "imgmax": maps[layer].amax(dim=(2, 3)),
                }
                counts = counter(batch)
                for key in "GIC":
                    totals[layer][key] += counts[key].cpu()
            bar.update(len(rows))
    bar.close()
    return {layer: {key: value.numpy() for key, value in part.items()} for layer, part in totals.items()}
