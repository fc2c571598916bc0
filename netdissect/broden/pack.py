"""The packed label cache: every label PNG of a dataset decoded once, read by every tally.

Decoding the label PNGs is the largest part of a tally's CPU time, and the workflow tallies the same
dataset once per (model, layer, shard). ``pack_labels`` decodes them once (``netdissect broden
pack-labels DIR --out PACK``) and :class:`PackedLabels` serves the same items as
``BrodenDataset(root, categories, load_images=False)`` from a memory-mapped file.

A pack is a folder, written with :func:`netdissect.io.atomic_dir` (complete or absent):

``pixels.npy``
    uint16, 1-D: every row's pixel layers exactly as ``BrodenDataset(root, load_images=False)[i]
    ["pixel_labels"]`` returns them (all categories), layer-major ``(K, sh, sw)``, C order,
    concatenated in row order. Label numbers are ``R + 256*G`` of the PNGs, so they fit uint16.
``index.npz`` (no pickles)
    ``format_version`` (2); ``offset`` int64 (N,): element offset of row i in pixels.npy; ``shape``
    int64 (N, 3): its (K, sh, sw); ``layer_category`` int64 (sum K,): index into ``categories`` of
    every stored layer; ``layer_start`` int64 (N+1,): row i's layers are
    ``layer_category[layer_start[i]:layer_start[i+1]]``; ``image_labels``, ``image_label_category``
    int64 (M,) and ``image_start`` int64 (N+1,): image-level labels with their category, the same way;
    ``fingerprint`` (str): ``BrodenDataset.fingerprint()``; ``categories`` (str): JSON list of ALL
    categories in category.csv order; ``num_labels`` int64; ``hist_label``, ``hist_count`` int64 and
    ``hist_start`` int64 (sum K + 1,): every stored layer's pixel count per label (the labels it holds,
    0 included), CSR by layer, so that a tally needs no pass over all pixels to know each image's
    label areas.

All categories are packed; a category subset is applied when reading (per-row selections are
computed once, in ``PackedLabels.__init__``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netdissect.broden.dataset import BrodenDataset, read_index
from netdissect.broden.format import Problems
from netdissect.errors import NetDissectError, unwrap_worker_errors
from netdissect.io import atomic_dir, disk_full_names, exclusive_lock, lock_beside, open_for_writing

FORMAT_VERSION = 2
PIXELS = "pixels.npy"
INDEX = "index.npz"
INDEX_KEYS = (
    "format_version",
    "offset",
    "shape",
    "layer_category",
    "layer_start",
    "image_labels",
    "image_label_category",
    "image_start",
    "fingerprint",
    "categories",
    "num_labels",
    "hist_label",
    "hist_count",
    "hist_start",
)


def layer_categories(root: Path, categories: list[str]) -> dict[str, np.ndarray]:
    """The category of every pixel layer and image-level label of every row, as CSR arrays.

    Follows ``BrodenDataset``'s rules: items of a pixel category (one with a PNG somewhere in
    index.csv) are layers, items of the other categories image-level labels; ``0`` items are dropped.
    Returns ``layer_category``, ``layer_start``, ``image_labels``, ``image_label_category``,
    ``image_start`` (indices into ``categories``).
    """
    problems = Problems()
    index = read_index(root / "index.csv", categories, problems)
    problems.raise_if_any(f"dataset {root}")
    pixel = [c in index["pixel_categories"] for c in categories]
    layer_category: list[int] = []
    image_labels: list[int] = []
    image_label_category: list[int] = []
    layer_start, image_start = [0], [0]
    for row_cells in index["cells"]:
        for c, items in enumerate(row_cells):
            kept = [item for item in items if item != 0]
            if pixel[c]:
                layer_category.extend([c] * len(kept))
            else:
                image_labels.extend(kept)  # ints only: a PNG makes the category a pixel one
                image_label_category.extend([c] * len(kept))
        layer_start.append(len(layer_category))
        image_start.append(len(image_labels))
    as_int64 = lambda values: np.asarray(values, dtype=np.int64)  # noqa: E731
    return {
        "layer_category": as_int64(layer_category),
        "layer_start": as_int64(layer_start),
        "image_labels": as_int64(image_labels),
        "image_label_category": as_int64(image_label_category),
        "image_start": as_int64(image_start),
    }


def pack_labels(
    root: str | Path, out: str | Path, *, workers: int | None = None, progress: bool = True, batch_size: int = 32
) -> dict[str, Any]:
    """Decode every label PNG of the dataset at ``root`` once and write the pack folder ``out``.

    The PNGs are decoded by ``BrodenDataset(root, load_images=False)`` through its DataLoader
    (``workers`` single-threaded processes, default: all usable cores) and streamed into
    ``out/pixels.npy``; ``out`` replaces an existing pack only when everything is written.
    Returns dict(out, images, layers, bytes, seconds).
    """
    root, out = Path(root), Path(out)
    start = time.perf_counter()
    ds = BrodenDataset(root, load_images=False)
    fingerprint = ds.fingerprint()
    csr = layer_categories(root, ds.categories)
    sizes = np.asarray(ds.index[["sh", "sw"]], dtype=np.int64).reshape(-1, 2)
    count = np.diff(csr["layer_start"])
    shape = np.column_stack([count, sizes])
    numel = shape.prod(axis=1)
    offset = np.concatenate([[0], np.cumsum(numel)]).astype(np.int64)
    workers = len(os.sched_getaffinity(0)) if workers is None else workers
    if workers < 0:
        raise NetDissectError(f"--workers must be >= 0, got {workers}")
    workers = min(workers, len(ds) // batch_size + 1)

    from tqdm import tqdm

    hist_label: list[np.ndarray] = []
    hist_count: list[np.ndarray] = []
    with exclusive_lock(lock_beside(out), f"label pack {out}"), atomic_dir(out, replace=True) as tmp:
        with open_for_writing(tmp / PIXELS, out / PIXELS) as f:
            np.lib.format.write_array_header_1_0(
                f,
                {
                    "descr": np.lib.format.dtype_to_descr(np.dtype("<u2")),
                    "fortran_order": False,
                    "shape": (int(offset[-1]),),
                },
            )
            bar = tqdm(total=len(ds), unit="img", desc=f"pack {root.name}", disable=not progress, file=sys.stderr)
            if workers:
                batches = ds.loader(batch_size=batch_size, workers=workers)
            else:  # items straight from the reader: no batching, no torch kernels (packing may run in a thread)
                items = (ds[i] for i in range(len(ds)))
                batches = ({"i": [item["i"]], "pixel_labels": [item["pixel_labels"]]} for item in items)
            for batch in unwrap_worker_errors(batches):
                for i, layers in zip(list(map(int, batch["i"])), batch["pixel_labels"]):
                    layers = layers.numpy()
                    if tuple(layers.shape) != tuple(shape[i]):
                        raise NetDissectError(
                            f"{root / 'index.csv'} row {i + 2}: the reader gave layers "
                            f"{tuple(layers.shape)}, the index says {tuple(shape[i])}; "
                            f"report this bug"
                        )
                    if layers.size and int(layers.max()) > np.iinfo(np.uint16).max:
                        raise NetDissectError(
                            f"{root / 'index.csv'} row {i + 2}: label number {int(layers.max())} "
                            f"does not fit 16 bits (R + 256*G); fix the row"
                        )
                    f.write(layers.astype("<u2").tobytes())
                    for layer in layers.reshape(len(layers), -1):
                        counts = np.bincount(layer)
                        hist_label.append(np.flatnonzero(counts))
                        hist_count.append(counts[hist_label[-1]])
                bar.update(len(batch["i"]))
            bar.close()
        with disk_full_names(out / INDEX):
            np.savez(
                tmp / INDEX,
                format_version=np.int64(FORMAT_VERSION),
                offset=offset[:-1],
                shape=shape,
                fingerprint=np.str_(fingerprint),
                categories=np.str_(json.dumps(ds.categories)),
                num_labels=np.int64(ds.num_labels),
                **csr,
                hist_label=np.concatenate(hist_label or [np.zeros(0)]).astype(np.int64),
                hist_count=np.concatenate(hist_count or [np.zeros(0)]).astype(np.int64),
                hist_start=np.concatenate([[0], np.cumsum([len(h) for h in hist_label])]).astype(np.int64),
            )
    return {
        "out": out,
        "images": len(ds),
        "layers": int(count.sum()),
        "bytes": int(offset[-1]) * 2,
        "seconds": time.perf_counter() - start,
    }


# Each entry of index.npz: numpy kind ("i" integer, "U" text), number of dimensions.
_ENTRY_TYPES = {
    "format_version": ("i", 0),
    "offset": ("i", 1),
    "shape": ("i", 2),
    "layer_category": ("i", 1),
    "layer_start": ("i", 1),
    "image_labels": ("i", 1),
    "image_label_category": ("i", 1),
    "image_start": ("i", 1),
    "fingerprint": ("U", 0),
    "categories": ("U", 0),
    "num_labels": ("i", 0),
    "hist_label": ("i", 1),
    "hist_count": ("i", 1),
    "hist_start": ("i", 1),
}


def check_index(index: dict[str, np.ndarray], ds: BrodenDataset, refuse) -> None:
    """Check every entry of a pack's index.npz against the format and the dataset ``ds``; raise
    ``refuse(why)`` at the first entry that does not fit. Adds ``index["category_list"]``.

    Besides types and shapes: the format version, the fingerprint and row count of ``ds``, each
    CSR start array (0 first, non-decreasing, ending at its values' length), layer counts and map
    sizes equal to index.csv's, offsets that lay the rows out one after the other, category indices
    and label numbers in range, and every layer's histogram adding up to its pixels."""

    def entry(key: str, why: str) -> NetDissectError:
        return refuse(f"{INDEX}, entry {key!r}: {why} (a damaged or foreign pack)")

    for key, (kind, ndim) in _ENTRY_TYPES.items():
        value = index[key]
        if value.dtype.kind not in (("i", "u") if kind == "i" else ("U",)) or value.ndim != ndim:
            raise entry(key, f"holds {value.dtype} with {value.ndim} dimension(s), expected {kind!r} with {ndim}")
    if int(index["format_version"]) != FORMAT_VERSION:
        raise refuse(
            f"{INDEX}: format_version is {int(index['format_version'])}, this netdissect reads version {FORMAT_VERSION}"
        )
    n = len(index["offset"])
    if n != len(ds):
        raise refuse(f"{INDEX} holds {n} rows, the dataset {ds.root} has {len(ds)}")
    if str(index["fingerprint"]) != ds.fingerprint():
        raise refuse(
            f"{INDEX}: was made from another dataset (fingerprint of index.csv, label.csv, category.csv differs from {ds.root}'s)"
        )
    try:
        categories = json.loads(str(index["categories"]))
    except ValueError:
        categories = None
    if categories != [r.name for r in ds.category_rows]:
        raise entry("categories", f"is not the JSON list of category.csv's names {[r.name for r in ds.category_rows]}")
    index["category_list"] = categories
    if int(index["num_labels"]) != ds.num_labels:
        raise entry("num_labels", f"is {int(index['num_labels'])}, the dataset has {ds.num_labels}")
    sizes = np.asarray(ds.index[["sh", "sw"]], dtype=np.int64).reshape(-1, 2)
    shape = index["shape"]
    if shape.shape != (n, 3) or (shape[:, 1:] != sizes).any() or (shape[:, 0] < 0).any():
        raise entry("shape", "does not hold (layers, sh, sw) of every row of index.csv")
    for start, values in (
        ("layer_start", "layer_category"),
        ("image_start", "image_labels"),
        ("hist_start", "hist_label"),
    ):
        s = index[start]
        rows = n if start != "hist_start" else len(index["layer_category"])
        if len(s) != rows + 1 or s[0] != 0 or (np.diff(s) < 0).any() or s[-1] != len(index[values]):
            raise entry(start, f"is not {rows + 1} non-decreasing starts from 0 to {len(index[values])}")
    if (np.diff(index["layer_start"]) != shape[:, 0]).any():
        raise entry("layer_start", "gives other layer counts than 'shape'")
    for values, other in (("image_label_category", "image_labels"), ("hist_count", "hist_label")):
        if len(index[values]) != len(index[other]):
            raise entry(values, f"has {len(index[values])} values, {other!r} has {len(index[other])}")
    numel = shape.prod(axis=1)
    if n and (index["offset"] != np.concatenate([[0], np.cumsum(numel)[:-1]])).any():
        raise entry("offset", "does not lay the rows out one after the other")
    for key, top in (
        ("layer_category", len(categories)),
        ("image_label_category", len(categories)),
        ("image_labels", ds.num_labels),
        ("hist_label", ds.num_labels),
    ):
        if index[key].size and (index[key].min() < 0 or index[key].max() >= top):
            raise entry(key, f"holds values outside 0..{top - 1}")
    counts, starts = index["hist_count"], index["hist_start"]
    total = np.concatenate([[0], np.cumsum(counts)])
    layer_pixels = np.repeat(shape[:, 1] * shape[:, 2], shape[:, 0])
    if (counts < 0).any() or (total[starts[1:]] - total[starts[:-1]] != layer_pixels).any():
        raise entry("hist_count", "does not add up to each layer's pixels")


def _refuse(pack: Path, root: Path, why: str) -> NetDissectError:
    return NetDissectError(
        f"label pack {pack}: {why}; rebuild it with `netdissect broden pack-labels {root} --out {pack}`"
    )


class PackedLabels(torch.utils.data.Dataset):
    """The labels of a dataset from its pack: ``self[i]`` holds
    ``BrodenDataset(ds.root, ds.categories, load_images=False)[i]`` (keys ``i``, ``pixel_labels``
    int32 (K', sh, sw), ``image_labels`` int64 (J',)) for ``ds``'s category subset, and
    ``label_pixels``: (labels, counts) int64, the pixel count of every label in each of its layers.

    Args:
        pack: the folder written by :func:`pack_labels`.
        ds: the dataset, opened with the categories to use (``BrodenDataset(root, categories,
            load_images=False, load_labels=False)`` is enough: only its tables are used).

    Refuses (NetDissectError) a missing or incomplete pack, an unknown format version, a pack of
    another dataset (fingerprint) or another row count. pixels.npy is opened on first use, in each
    process, so the object pickles cheaply to DataLoader workers; rows are read with ``pread``.
    """

    def __init__(self, pack: str | Path, ds: BrodenDataset) -> None:
        self.pack = Path(pack)
        self.root = ds.root
        self.categories = list(ds.categories)
        index = self._read_index()
        check_index(index, ds, lambda why: _refuse(self.pack, self.root, why))
        n = len(index["offset"])
        self._check_pixels(int(index["offset"][-1] + index["shape"][-1].prod()) if n else 0)
        all_categories = index["category_list"]
        selected = np.isin(
            np.arange(len(all_categories)), [all_categories.index(c) for c in self.categories if c in all_categories]
        )
        self._offset: np.ndarray = index["offset"]
        self._shape: np.ndarray = index["shape"]
        # the kept layers of row i (positions in its stack) as CSR; a _contiguous row takes one slice
        keep = selected[index["layer_category"]]
        row_of_layer = np.repeat(np.arange(n), np.diff(index["layer_start"]))
        position = np.arange(len(keep)) - index["layer_start"][row_of_layer]
        self._kept_layers = position[keep]
        self._kept_start = np.concatenate([[0], np.cumsum(np.bincount(row_of_layer[keep], minlength=n))])
        kept = np.diff(self._kept_start)
        has = kept > 0
        self._first = np.zeros(n, dtype=np.int64)  # first kept layer's position in the row's stack
        last = np.full(n, -1, dtype=np.int64)
        self._first[has] = self._kept_layers[self._kept_start[:-1][has]]
        last[has] = self._kept_layers[self._kept_start[1:][has] - 1]
        self._contiguous = last - self._first + 1 == kept
        # label histograms of the kept layers, CSR per row (the kept layers of a row are consecutive in it)
        layer_of_entry = np.repeat(np.arange(len(keep)), np.diff(index["hist_start"]))
        entry_kept = keep[layer_of_entry]
        self._hist_label = index["hist_label"][entry_kept]
        self._hist_count = index["hist_count"][entry_kept]
        self._hist_start = np.concatenate(
            [[0], np.cumsum(np.bincount(row_of_layer[layer_of_entry[entry_kept]], minlength=n))]
        )
        # image-level labels of the selected categories, CSR
        keep = selected[index["image_label_category"]]
        row_of_label = np.repeat(np.arange(n), np.diff(index["image_start"]))
        self._image_labels = index["image_labels"][keep]
        self._image_start = np.concatenate([[0], np.cumsum(np.bincount(row_of_label[keep], minlength=n))])
        self._file = None  # pixels.npy, opened on first use in each process

    def _read_index(self) -> dict[str, np.ndarray]:
        path = self.pack / INDEX
        if not (self.pack / PIXELS).is_file() or not path.is_file():
            raise _refuse(self.pack, self.root, f"no {PIXELS} and {INDEX} there (missing or incomplete pack)")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in INDEX_KEYS if k not in z.files]
                if missing:
                    raise _refuse(self.pack, self.root, f"{INDEX} lacks {', '.join(missing)} (incomplete pack)")
                return {k: z[k] for k in INDEX_KEYS}
        except NetDissectError:
            raise
        except Exception as err:  # zip and npy decoding of a damaged file: every failure is the file's
            raise _refuse(self.pack, self.root, f"cannot read {INDEX} ({type(err).__name__}: {err})") from None

    def _check_pixels(self, total: int) -> None:
        """pixels.npy is a 1-D uint16 array of ``total`` elements, filling its file (nothing stays open)."""
        path = self.pack / PIXELS
        try:
            pixels = np.load(path, mmap_mode="r")
            shape, dtype, end = pixels.shape, pixels.dtype, pixels.offset + pixels.nbytes
            self._data_offset = pixels.offset  # bytes of the .npy header
            del pixels
        except Exception as err:  # a damaged .npy header: every failure is the file's
            raise _refuse(self.pack, self.root, f"cannot read {PIXELS} ({type(err).__name__}: {err})") from None
        if shape != (total,) or dtype != np.dtype("<u2") or end != path.stat().st_size:
            raise _refuse(
                self.pack,
                self.root,
                f"{PIXELS} holds {shape} {dtype} ({path.stat().st_size} bytes), "
                f"the index expects ({total},) uint16 (incomplete pack)",
            )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None  # each process opens the file itself
        return state

    def _read_pixels(self, start: int, count: int) -> np.ndarray:
        """``count`` values of pixels.npy from element ``start``, in one ``pread``. The file is read, not
        memory-mapped: a map's pages, once touched, count as the process's own memory, so a tally's
        resident size grew with the rows it had read (by the pack's 5 GB at the released Broden's size);
        read, they stay in the kernel's page cache, shared and reclaimable."""
        if self._file is None:
            self._file = open(self.pack / PIXELS, "rb", buffering=0)  # noqa: SIM115 (closed with the object)
        data = os.pread(self._file.fileno(), count * 2, self._data_offset + start * 2)
        if len(data) != count * 2:
            raise _refuse(self.pack, self.root, f"{PIXELS} ended early (it changed after it was checked)")
        return np.frombuffer(data, dtype="<u2")

    def __len__(self) -> int:
        return len(self._offset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Row i as ``dict(i, pixel_labels, image_labels, label_pixels)``; copies only row i's slice of
        pixels.npy. ``label_pixels`` is (labels, pixel counts) over its layers (a label may repeat)."""
        k, sh, sw = (int(v) for v in self._shape[i])
        a, b = int(self._kept_start[i]), int(self._kept_start[i + 1])
        if self._contiguous[i]:
            start = int(self._offset[i] + self._first[i] * sh * sw)
            stack = self._read_pixels(start, (b - a) * sh * sw).reshape(b - a, sh, sw)
        else:
            whole = self._read_pixels(int(self._offset[i]), k * sh * sw).reshape(k, sh, sw)
            stack = whole[self._kept_layers[a:b]]
        c, d = self._image_start[i], self._image_start[i + 1]
        e, f = self._hist_start[i], self._hist_start[i + 1]
        return {
            "i": int(i),
            "pixel_labels": torch.from_numpy(stack.astype(np.int32)),
            "image_labels": torch.from_numpy(self._image_labels[c:d].copy()),
            "label_pixels": (torch.from_numpy(self._hist_label[e:f]), torch.from_numpy(self._hist_count[e:f])),
        }

    collate = staticmethod(BrodenDataset.collate)
    loader = BrodenDataset.loader  # rows [start, stop) in order, batched like the dataset's

    def __repr__(self) -> str:
        return f"PackedLabels({str(self.pack)!r}, {len(self)} images, categories={self.categories})"
