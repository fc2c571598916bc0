"""The tally stage: the counts of one shard of one layer, batch by batch (docs/dissection.md §3–4).

A shard is read batch by batch (:class:`ShardBatches`: labels, activations and maxima of
``batch_size`` rows) and each batch is counted (:class:`BatchCounter`, with
:func:`netdissect.counts.tally_batch`). On the CPU ``threads`` threads each take the next batch and
keep their own totals (torch releases the GIL inside its kernels, so threads share the cores without
the start-up and copying costs of processes); on a GPU ``workers`` loader processes read the batches
and the main process counts them. The labels come from the dataset's PNGs or, much faster, from
packed labels (:mod:`netdissect.broden.pack`, decoded once per dataset).
"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netdissect.broden.dataset import single_thread_worker
from netdissect.counts import check_union, label_groups, tally_batch
from netdissect.defaults import BATCH_SIZE, UNION
from netdissect.errors import NetDissectError, unwrap_worker_errors
from netdissect.masks import BILINEAR
from netdissect.ops import keep_freed_memory
from netdissect.shards import read_npy_rows


class ShardBatches(torch.utils.data.Dataset):
    """Batch j of a shard's rows (``batch_size`` rows from ``start`` on) as one DataLoader item: the
    label groups (:func:`label_groups`), activations and maxima, ready to count; or, with a
    ``counter``, already counted (``{"rows", "G", "I", "C"}``), so that each counting thread does all
    the work of its batches.

    ``labels`` yields ``{"i", "pixel_labels", "image_labels"}`` per dataset row (a BrodenDataset
    opened with ``load_images=False``, or packed labels); ``act_path`` is the shard's
    ``{layer}.act.npy`` whose row 0 is dataset row ``start``, ``imgmax`` its (stop - start, U) maxima.
    """

    def __init__(
        self,
        labels: Any,
        num_labels: int,
        act_path: str | Path,
        imgmax: np.ndarray,
        start: int,
        stop: int,
        batch_size: int,
        counter: BatchCounter | None = None,
    ):
        self.labels, self.num_labels, self.act_path, self.imgmax = labels, num_labels, act_path, imgmax
        self.start, self.stop, self.batch_size, self.counter = start, stop, batch_size, counter

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch_size)

    def __getitem__(self, j: int) -> dict[str, Any]:
        local = np.arange(j * self.batch_size, min((j + 1) * self.batch_size, self.stop - self.start))
        items = [self.labels[self.start + int(r)] for r in local]
        batch = {
            "rows": len(local),
            "groups": label_groups(items, self.num_labels),
            "acts": torch.from_numpy(read_npy_rows(self.act_path, local).astype(np.float32, copy=False)),
            "imgmax": torch.from_numpy(self.imgmax[local]),
        }
        return self.counter(batch) if self.counter is not None else batch


class BatchCounter:
    """Counts G, I, C of one :class:`ShardBatches` batch, summed over its label groups, on ``device``,
    with masks upsampled by ``upsample`` (:mod:`netdissect.masks`)."""

    def __init__(
        self,
        thresholds: np.ndarray,
        primary: np.ndarray,
        num_categories: int,
        union: str,
        device: str = "cpu",
        upsample=BILINEAR,
    ):
        self.thresholds = torch.from_numpy(np.asarray(thresholds, dtype=np.float64)).to(device)
        self.primary = torch.as_tensor(np.asarray(primary, dtype=np.int64), device=device)
        self.num_categories, self.union, self.device, self.upsample = num_categories, union, device, upsample

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        on = lambda x: x.to(self.device, non_blocking=True)
        acts, maxima = on(batch["acts"]), on(batch["imgmax"])
        totals = None
        for sel, layers, image_labels, pixels, member in batch["groups"]:  # one group per label shape
            rows = torch.tensor(sel, device=self.device)
            counts = tally_batch(
                acts[rows],
                maxima[rows],
                self.thresholds,
                on(layers),
                on(image_labels),
                self.primary,
                self.num_categories,
                self.union,
                presence=(on(pixels), on(member)),
                upsample=self.upsample,
            )
            totals = counts if totals is None else [t + c for t, c in zip(totals, counts)]
        return {"rows": batch["rows"], **dict(zip("GIC", totals))}


def tally_shard(
    ds: Any,
    act_path: str | Path,
    imgmax: np.ndarray,
    thresholds: np.ndarray,
    start: int,
    stop: int,
    *,
    union: str = UNION,
    upsample=BILINEAR,
    batch_size: int = BATCH_SIZE,
    threads: int = 1,
    workers: int = 0,
    device: str = "cpu",
    progress: bool = True,
    layer: str = "",
    labels: Any = None,
) -> dict[str, np.ndarray]:
    """Counts G, I, C of rows [start, stop) of ``ds`` (a BrodenDataset, for its tables).

    The labels come from ``labels`` (packed labels, :class:`netdissect.broden.pack.PackedLabels`) if
    given, else from ``ds`` itself (opened with ``load_images=False``: decodes the PNGs). ``act_path``
    is the shard's ``{layer}.act.npy`` whose row 0 is dataset row ``start``; ``imgmax`` its
    (stop - start, U) maxima.

    On the CPU, ``threads`` threads (1: the calling thread) each take the next batch, read and count
    it, and add its counts to their own totals. On a GPU, ``workers`` DataLoader processes read the
    batches and the main process counts them.
    """
    from tqdm import tqdm

    check_union(union)
    units = imgmax.shape[1]
    if thresholds.shape != (units,):
        raise NetDissectError(
            f"layer {layer}: {thresholds.shape[0]} thresholds for {units} units; use the "
            f"thresholds.npy of this model and layer"
        )
    if batch_size < 1 or threads < 1 or workers < 0:
        raise NetDissectError(
            f"--batch-size {batch_size} / --threads {threads} / --workers {workers}: expected >= 1, >= 1 and >= 0"
        )
    keep_freed_memory()
    num_labels, num_categories = ds.num_labels, len(ds.categories)
    counter = BatchCounter(thresholds, ds.primary, num_categories, union, device, upsample)
    on_cpu = torch.device(device).type == "cpu"
    batches = ShardBatches(
        ds if labels is None else labels,
        num_labels,
        act_path,
        imgmax,
        start,
        stop,
        batch_size,
        counter if on_cpu else None,
    )
    zeros = lambda: {
        "G": torch.zeros(num_labels, dtype=torch.int64),
        "I": torch.zeros((units, num_labels), dtype=torch.int64),
        "C": torch.zeros((units, num_categories), dtype=torch.int64),
    }
    bar = tqdm(total=stop - start, desc=f"tally {layer}", unit="img", disable=not progress)
    lock = threading.Lock()

    def add(totals: dict[str, torch.Tensor], counts: dict[str, Any]) -> None:
        for key in totals:
            totals[key] += counts[key].cpu()
        with lock:
            bar.update(counts["rows"])

    if on_cpu:
        next_batch = itertools.count()  # shared by the threads (atomic under the GIL)
        failed = threading.Event()  # one thread's error stops the others

        def count_batches() -> dict[str, torch.Tensor]:
            totals = zeros()
            try:
                while not failed.is_set() and (j := next(next_batch)) < len(batches):
                    add(totals, batches[j])
            except BaseException:
                failed.set()
                raise
            return totals

        if threads == 1:
            parts = [count_batches()]
        else:
            torch_threads = torch.get_num_threads()
            torch.set_num_threads(1)  # one core per thread
            try:
                with ThreadPoolExecutor(threads, thread_name_prefix="tally") as pool:
                    parts = [f.result() for f in [pool.submit(count_batches) for _ in range(threads)]]
            finally:
                torch.set_num_threads(torch_threads)
    else:
        loader = torch.utils.data.DataLoader(
            batches,
            batch_size=None,
            num_workers=workers,
            worker_init_fn=single_thread_worker if workers else None,
            prefetch_factor=2 if workers else None,
        )
        parts = [zeros()]
        for batch in unwrap_worker_errors(loader):
            add(parts[0], counter(batch))
    bar.close()
    return {key: sum(part[key] for part in parts).numpy() for key in parts[0]}
