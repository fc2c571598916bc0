"""Reading a Broden folder: :class:`BrodenDataset`, a torch ``Dataset`` over the rows of index.csv.

Row i of index.csv (both splits, file order) is image i everywhere in the system. ``ds[i]`` decodes
the JPEG and every label PNG of the selected categories; ``ds.loader(...)`` wraps it in a
``DataLoader`` with worker processes. The tables (label names, primary categories, codes) are read
once, at construction, and every defect in them is reported at once.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from netdissect.broden.format import (
    INDEX_FIXED_COLUMNS,
    MAX_LABEL,
    MAX_SIDE,
    CategoryRow,
    CodeRow,
    ImageSizeError,
    LabelRow,
    Problems,
    decode_label_png,
    parse_cell,
    parse_int,
    primary_categories,
    read_category_csv,
    read_code_csv,
    read_csv_rows,
    read_label_csv,
    read_rgb,
)
from netdissect.errors import NetDissectError

MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 2**31  # larger images are refused (Pillow calls them decompression bombs)
Item = int | str  # one item of a category cell: an int label or a PNG path relative to images/


def safe_relative_path(text: str) -> bool:
    """True if ``text`` is a relative ``/``-separated path that stays inside its folder, printable and
    without surrounding spaces (a name no writer makes, and one that would garble messages)."""
    return (
        bool(text)
        and text == text.strip()
        and text.isprintable()
        and not text.startswith("/")
        and "\\" not in text
        and ".." not in text.split("/")
    )


class BrodenDataset(torch.utils.data.Dataset):
    """A Broden folder (docs/broden-format.md) as a map-style torch dataset.

    Args:
        root: the folder holding index.csv, label.csv, category.csv, c_*.csv and images/.
        categories: names of the categories to use (default: all, in category.csv order). The
            result keeps category.csv order; primary categories are chosen among these.
        load_images: decode the JPEGs (``item["image"]``); False for the tally stage.
        load_labels: decode the label PNGs (``item["pixel_labels"]``, ``item["image_labels"]``);
            False for the extract stage.

    Attributes (see docs/interfaces.md): ``root``, ``categories``, ``num_labels``, ``label_names``,
    ``primary``, ``label_categories``, ``index``; also ``labels`` (label.csv rows by number, None
    for gaps), ``codes`` (c_ rows per category), ``category_rows`` and ``pixel_categories`` (the
    categories with at least one PNG in index.csv; int items there are constant layers, elsewhere
    image-level labels).
    """

    def __init__(
        self,
        root: str | Path,
        categories: Sequence[str] | None = None,
        load_images: bool = True,
        load_labels: bool = True,
    ) -> None:
        self.root = Path(root)
        self.load_images = load_images
        self.load_labels = load_labels
        if not (self.root / "index.csv").is_file():
            raise _no_index(self.root)
        tables, index = _parsed_tables(self.root, categories)
        self.category_rows: list[CategoryRow] = tables["category_rows"]
        self.categories: list[str] = tables["categories"]
        self.labels: list[LabelRow | None] = tables["labels"]
        self.codes: dict[str, list[CodeRow]] = tables["codes"]
        self.num_labels: int = len(self.labels)
        self.label_names: list[str] = ["-"] + [r.name if r else "" for r in self.labels[1:]]
        self.label_categories: list[dict[str, int]] = [{}] + [dict(r.categories) if r else {} for r in self.labels[1:]]
        self.primary: np.ndarray = primary_categories(self.codes, self.categories, self.num_labels)

        self.index: pd.DataFrame = index["frame"]
        self.pixel_categories: list[str] = index["pixel_categories"]
        self._images: list[str] = index["images"]
        self._sizes: np.ndarray = index["sizes"]  # (N, 4) ih, iw, sh, sw
        self._layers: list[list[Item]] = index["layers"]  # per row: PNG paths and constant ints
        self._image_labels: list[list[int]] = index["image_labels"]

    # -- torch Dataset ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Row i as ``dict(i, image, pixel_labels, image_labels)`` (keys not loaded are absent)."""
        ih, iw, sh, sw = (int(v) for v in self._sizes[i])
        item: dict[str, Any] = {"i": int(i)}
        if self.load_images:
            item["image"] = torch.from_numpy(self._decode_image(i, ih, iw)).permute(2, 0, 1)
        if self.load_labels:
            layers = np.empty((len(self._layers[i]), sh, sw), dtype=np.int32)
            for k, layer in enumerate(self._layers[i]):
                layers[k] = layer if isinstance(layer, int) else self._decode_png(i, layer, sh, sw)
            item["pixel_labels"] = torch.from_numpy(layers)
            item["image_labels"] = torch.tensor(self._image_labels[i], dtype=torch.int64)
        return item

    def _decode_image(self, i: int, ih: int, iw: int) -> np.ndarray:
        path = self.root / "images" / self._images[i]
        try:
            return np.array(read_rgb(path, (ih, iw)))
        except ImageSizeError as err:
            raise NetDissectError(
                f"{path} (index.csv row {i + 2}): image is {err.found[0]}x{err.found[1]} (h x w), "
                f"index.csv says ih={ih}, iw={iw}; regenerate the dataset or fix the row"
            ) from None
        except (OSError, ValueError) as err:
            raise NetDissectError(
                f"{path} (index.csv row {i + 2}, column 'image'): cannot read the image "
                f"({err}); run `netdissect broden check {self.root}`"
            ) from None

    def _decode_png(self, i: int, relative: str, sh: int, sw: int) -> np.ndarray:
        path = self.root / "images" / relative
        try:
            labels = decode_label_png(path, (sh, sw))
        except ImageSizeError as err:
            raise NetDissectError(
                f"{path} (index.csv row {i + 2}): label map is {err.found[0]}x{err.found[1]}, "
                f"index.csv says sh={sh}, sw={sw}; regenerate the dataset or fix the row"
            ) from None
        except (OSError, ValueError) as err:
            raise NetDissectError(
                f"{path} (index.csv row {i + 2}): cannot read the label PNG ({err}); "
                f"run `netdissect broden check {self.root}`"
            ) from None
        if labels.max(initial=0) >= self.num_labels:
            raise NetDissectError(
                f"{path} (index.csv row {i + 2}): holds label number {int(labels.max())}, "
                f"but label.csv ends at {self.num_labels - 1}; run `netdissect broden check`"
            )
        return labels

    # -- batches ------------------------------------------------------------------------------

    @staticmethod
    def collate(batch: list[dict[str, Any]], channels_last: bool = False) -> dict[str, Any]:
        """Batch items: ``i`` as an int64 tensor, images stacked (B, 3, H, W) when their sizes agree
        (else a list), ``pixel_labels`` and ``image_labels`` as lists of per-image tensors.
        ``channels_last``: the stacked images are (B, 3, H, W) in channels-last memory, (B, H, W, 3)
        underneath: the decoder's own order, so stacking copies without transposing."""
        out: dict[str, Any] = {"i": torch.tensor([item["i"] for item in batch], dtype=torch.int64)}
        if batch and "image" in batch[0]:
            images = [item["image"] for item in batch]
            same = all(img.shape == images[0].shape for img in images)
            if same and channels_last:  # numpy's copy: one thread, no waiting on torch's thread pool
                hwc = np.stack([img.permute(1, 2, 0).numpy() for img in images])
                out["image"] = torch.from_numpy(hwc).permute(0, 3, 1, 2)
            else:
                out["image"] = torch.stack(images) if same else images
        for key in ("pixel_labels", "image_labels"):
            if batch and key in batch[0]:
                out[key] = _views_of_one_storage([item[key] for item in batch])
        return out

    def loader(
        self, batch_size: int, workers: int = 0, start: int = 0, stop: int | None = None, channels_last: bool = False
    ) -> torch.utils.data.DataLoader:
        """A DataLoader over rows ``[start, stop)`` in row order, batched with :meth:`collate`
        (``channels_last``: images in channels-last memory)."""
        stop = len(self) if stop is None else stop
        if not 0 <= start <= stop <= len(self):
            raise NetDissectError(
                f"rows [{start}, {stop}) are outside the dataset's 0..{len(self)} rows of {self.root}"
            )
        if batch_size < 1 or workers < 0:
            raise NetDissectError(f"batch size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
        subset = torch.utils.data.Subset(self, range(start, stop))
        return torch.utils.data.DataLoader(
            subset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=functools.partial(self.collate, channels_last=channels_last) if channels_last else self.collate,
            worker_init_fn=single_thread_worker if workers else None,
            prefetch_factor=4 if workers else None,
        )

    # -- identity -----------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """sha256 (hex) of the bytes of index.csv, label.csv and category.csv (:func:`dataset_fingerprint`)."""
        return dataset_fingerprint(self.root)

    def image_path(self, i: int) -> Path:
        """The JPEG of row i."""
        return self.root / "images" / self._images[i]

    def __repr__(self) -> str:
        return (
            f"BrodenDataset({str(self.root)!r}, {len(self)} images, {self.num_labels - 1} labels, "
            f"categories={self.categories})"
        )


def _views_of_one_storage(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The same tensors as views into one new storage, so that a batch leaves a worker process as
    one shared-memory block instead of one per tensor."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    views, start = [], 0
    for t in tensors:
        views.append(flat[start : start + t.numel()].view(t.shape))
        start += t.numel()
    return views


def _no_index(root: Path) -> NetDissectError:
    return NetDissectError(
        f"{root}: no index.csv here; expected a Broden dataset folder "
        f"(make one with `netdissect synth {root} --images 100`)"
    )


def dataset_fingerprint(root: str | Path) -> str:
    """sha256 (hex) of the bytes of index.csv, label.csv and category.csv, concatenated in that order."""
    if not (Path(root) / "index.csv").is_file():
        raise _no_index(Path(root))
    digest = hashlib.sha256()
    for name in ("index.csv", "label.csv", "category.csv"):
        path = Path(root) / name
        try:
            digest.update(path.read_bytes())
        except OSError as err:
            raise NetDissectError(
                f"{path}: cannot be read ({err.strerror}); expected a Broden dataset folder at {root}"
            ) from None
    return digest.hexdigest()


def check_not_empty(ds: BrodenDataset) -> None:
    """Refuse a dataset without rows: there is nothing to dissect."""
    if len(ds) == 0:
        raise NetDissectError(f"{ds.root}/index.csv has no rows: the dataset is empty, nothing to dissect")


def single_thread_worker(_: int) -> None:
    """DataLoader worker_init_fn: one torch thread per worker process (the processes share the cores)."""
    torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# Table and index parsing (shared with the checker)


def read_tables(root: Path, problems: Problems, categories: Sequence[str] | None = None) -> dict[str, Any]:
    """Read category.csv, label.csv and the c_ files of the selected categories.

    Returns dict(category_rows, categories, labels, codes); ``labels`` is indexed by label number
    (None at 0 and at gaps), long enough for every number of label.csv and of the c_ files.
    """
    category_rows = read_category_csv(root / "category.csv", problems)
    all_names = [r.name for r in category_rows]
    if categories is None:
        selected = all_names
    else:
        unknown = [c for c in categories if c not in all_names]
        if unknown and all_names:
            problems.add(
                root / "category.csv",
                f"has no category {', '.join(map(repr, unknown))}; choose among {', '.join(all_names)}",
            )
        selected = [c for c in all_names if c in categories]
    label_rows = read_label_csv(root / "label.csv", problems)
    codes = {}
    for row in category_rows:
        if row.name in selected:
            if (root / f"c_{row.name}.csv").is_file():
                codes[row.name] = read_code_csv(root / f"c_{row.name}.csv", problems)
            else:
                problems.add(
                    root / f"c_{row.name}.csv",
                    f"file is missing (category {row.name!r} is listed in category.csv, row {row.line})",
                )
                codes[row.name] = []
    top = max([r.number for r in label_rows] + [r.number for rows in codes.values() for r in rows], default=0)
    labels: list[LabelRow | None] = [None] * (top + 1)
    for row in label_rows:
        labels[row.number] = row
    return {"category_rows": category_rows, "categories": selected, "labels": labels, "codes": codes}


_PARSED: dict[tuple, tuple[dict[str, Any], dict[str, Any]]] = {}
_PARSED_KEEP = 4


def _parsed_tables(root: Path, categories: Sequence[str] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tables and the parsed index.csv of ``root``, parsed once per process for the same bytes of its
    CSV files (keyed by their digest, which costs milliseconds where parsing costs seconds): one
    dissection opens its dataset several times, and index.csv of the released Broden (63,305 rows)
    takes seconds to parse. The parsed objects are shared between datasets and never changed."""
    digest = hashlib.blake2b(digest_size=16)
    for f in sorted(root.glob("*.csv")):
        digest.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    key = (str(root.resolve()), tuple(categories) if categories is not None else None, digest.hexdigest())
    if key not in _PARSED:
        problems = Problems()
        tables = read_tables(root, problems, categories)
        problems.raise_if_any(f"dataset {root}")
        index = read_index(root / "index.csv", tables["categories"], problems, len(tables["labels"]))
        problems.raise_if_any(f"dataset {root}")
        while len(_PARSED) >= _PARSED_KEEP:
            del _PARSED[next(iter(_PARSED))]
        _PARSED[key] = (tables, index)
    return _PARSED[key]


def read_index(path: Path, categories: list[str], problems: Problems, num_labels: int | None = None) -> dict[str, Any]:
    """Parse index.csv for the given categories.

    Returns dict(frame, header, images, sizes, layers, image_labels, pixel_categories, cells, lines):
    ``layers[i]`` lists row i's pixel layers (PNG paths, constant ints) in category order,
    ``image_labels[i]`` its nonzero image-level labels, ``cells[i]`` its items per category,
    ``lines[i]`` its line number in the file. Every defect is reported; defective items are left out
    and unreadable sizes are 0, so that the checker can go on with the rest of the row. Integer items
    must be label numbers: below ``num_labels`` when given, else at most MAX_LABEL.
    """
    header, rows = read_csv_rows(path, INDEX_FIXED_COLUMNS + categories, problems)
    images: list[str] = []
    sizes = np.zeros((len(rows), 4), dtype=np.int64)
    cells: list[list[list[Item]]] = []
    lines: list[int] = []
    has_png = dict.fromkeys(categories, False)
    for line, row in rows:
        image = row["image"]
        if not safe_relative_path(image):
            problems.add(
                path,
                f"expected a relative path under images/ such as ade20k/x.jpg, found {image!r}",
                row=line,
                column="image",
            )
        if row["split"] not in ("train", "val"):
            problems.add(path, f"expected 'train' or 'val', found {row['split']!r}", row=line, column="split")
        for k, column in enumerate(("ih", "iw", "sh", "sw")):
            value = parse_int(row[column], 1, MAX_SIDE)
            if value is None:
                problems.add(
                    path,
                    f"expected a whole number from 1 to {MAX_SIDE}, found {row[column][:40]!r}",
                    row=line,
                    column=column,
                )
            else:
                sizes[len(images), k] = value  # 0 stays where the size is unknown
        for what, (h, w) in (("image", sizes[len(images), :2]), ("label map", sizes[len(images), 2:])):
            if h * w > MAX_PIXELS:
                problems.add(
                    path,
                    f"{what} size {h}x{w} is larger than {MAX_PIXELS:,} pixels (Pillow's limit for an image)",
                    row=line,
                )
        row_cells = []
        for category in categories:
            items = []
            for item in parse_cell(row[category]):
                if isinstance(item, int) and item > (MAX_LABEL if num_labels is None else num_labels - 1):
                    problems.add(
                        path,
                        f"label {item} is not a label number of label.csv (1..{(num_labels or MAX_LABEL + 1) - 1})",
                        row=line,
                        column=category,
                    )
                    continue
                if isinstance(item, str):
                    has_png[category] = True
                    if not safe_relative_path(item) or not item.endswith(".png"):
                        problems.add(
                            path,
                            f"item {item!r} is neither an integer label nor a relative path to a .png under images/",
                            row=line,
                            column=category,
                        )
                        continue  # a defective item is left out
                items.append(item)
            row_cells.append(items)
        images.append(image)
        cells.append(row_cells)
        lines.append(line)
    pixel = [c for c in categories if has_png[c]]
    layers: list[list[Item]] = []
    image_labels: list[list[int]] = []
    for row_cells in cells:
        row_layers: list[Item] = []
        row_image_labels: list[int] = []
        for category, items in zip(categories, row_cells):
            target = row_layers if has_png[category] else row_image_labels
            target.extend(item for item in items if item != 0)
        layers.append(row_layers)
        image_labels.append(row_image_labels)
    frame = pd.DataFrame([row for _, row in rows], columns=header).astype(
        {c: "int64" for c in ("ih", "iw", "sh", "sw")} if not len(problems) else {}
    )
    return {
        "frame": frame,
        "header": header,
        "images": images,
        "sizes": sizes,
        "layers": layers,
        "image_labels": image_labels,
        "pixel_categories": pixel,
        "cells": cells,
        "lines": lines,
    }
