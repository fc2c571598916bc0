"""Merge source datasets into one Broden folder (docs/broden-sources.md §6; ``netdissect broden regenerate``).

Two passes over the images, each parallel over images with a process pool (bounded memory: a worker
holds one image at a time; the parent holds per-key counters and one short index row per image):

1. **Convert** (:func:`_convert`): decode the image and its annotations once, at source resolution:
   add its share to the statistics of every key ``(source, category, local label)`` (colour labels
   computed from the original pixels), write the ``S×S`` JPEG (Pillow bilinear, no crop), and keep its
   label layers nearest-resized to ``S//2`` (corner-aligned grid), still in local numbers, in a
   compressed file of the work folder.
2. **Name, filter, number** in the parent: :func:`~.naming.name_keys`, then the Broden writer's
   :func:`~netdissect.broden.writer.compute_tables`; each ``(source, category)`` gets an integer lookup
   array from local to global numbers.
3. **Translate** (:func:`_translate`): remap the kept layers and write the label PNGs
   (:func:`~netdissect.broden.writer.write_label_layers`); then the tables, ``syns.txt``,
   ``README.txt`` and ``index.csv`` (last).

Everything is written into a temporary folder beside ``--out``, renamed to ``--out`` at the end, so an
interrupted or failed build leaves nothing that looks finished.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from netdissect.broden import colors
from netdissect.broden.sources import SOURCE_NAMES, adapter_class
from netdissect.broden.sources.base import FETCH_HINTS, LabelData, Source, SourceImage
from netdissect.broden.sources.naming import Key, Naming, name_keys
from netdissect.broden.writer import (
    IndexRow,
    compute_tables,
    resize_labels,
    tables_text,
    write_index,
    write_jpeg,
    write_label_layers,
)
from netdissect.errors import NetDissectError
from netdissect.io import atomic_dir, atomic_write_text

COLOR = "color"
NO_LABELS = np.zeros(1, dtype=np.int32)  # the lookup of a (source, category) without any label
T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# Pure array functions


def remap(labels: np.ndarray, lookup: np.ndarray) -> np.ndarray:
    """Local → global numbers through ``lookup``; values beyond the lookup become 0."""
    labels = np.asarray(labels)
    inside = labels < len(lookup)
    return np.where(inside, lookup[np.where(inside, labels, 0)], 0).astype(np.int32)


def label_shares(data: LabelData) -> dict[int, float]:
    """One image's statistics in one category (docs/broden-sources.md §6.1): local label → coverage.

    Maps and stacks: every nonzero value, its pixel count over all layers / (H·W). Image-level labels:
    1.0 per listing (label 0 included, as in the original; it is named ``-`` and never kept).
    """
    if isinstance(data, np.ndarray) and data.ndim >= 2:
        counts = np.bincount(data.ravel())
        present = np.flatnonzero(counts)
        present = present[present != 0]
        area = data.shape[-1] * data.shape[-2]
        return dict(zip(present.tolist(), (counts[present] / area).tolist()))
    shares: dict[int, float] = defaultdict(float)
    for label in np.atleast_1d(np.asarray(data, dtype=np.int64)).tolist():
        shares[label] += 1.0
    return dict(shares)


def load_rgb(path: Path, source: str) -> np.ndarray:
    """Decode an image to RGB uint8 (grayscale replicated, alpha dropped, no EXIF rotation)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise NetDissectError(
            f"{source}: image {path} is missing; fetch the source again with the {FETCH_HINTS[source]}"
        ) from None
    except Exception as err:
        raise NetDissectError(
            f"{source}: cannot decode image {path} ({err}); it is corrupt or truncated: fetch it again"
        ) from None


def resize_rgb(rgb: np.ndarray, side: int) -> np.ndarray:
    """``side×side`` with Pillow's BILINEAR (antialiased when shrinking); no crop, aspect not kept."""
    return np.asarray(Image.fromarray(rgb).resize((side, side), Image.BILINEAR))


def color_labels(rgb: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Local colour labels (1..11) per pixel: ``lut[(R>>3)·1024 + (G>>3)·32 + (B>>3)]``.

    ``lut`` is a colour table ``T`` flattened in C order, plus 1 (see :func:`color_lut`); one flat
    lookup is several times faster than indexing ``T`` with three arrays.
    """
    bins = (rgb >> 3).astype(np.uint16)
    return lut[(bins[..., 0] << 10) | (bins[..., 1] << 5) | bins[..., 2]]


def color_lut(table: np.ndarray) -> np.ndarray:
    """A (32, 32, 32) colour table as the flat int32 lookup of :func:`color_labels` (values 1..11)."""
    return np.ascontiguousarray(table, dtype=np.int32).reshape(-1) + 1


def save_layers(path: Path, layers: Mapping[str, LabelData]) -> None:
    """Keep one image's resized local label data until the translate pass (compressed .npz).

    Maps and stacks are stored under ``map:<category>``, image-level labels under ``ids:<category>``.
    """
    arrays = {}
    for category, data in layers.items():
        if isinstance(data, np.ndarray) and data.ndim >= 2:
            arrays[f"map:{category}"] = data.astype(np.uint16 if data.max(initial=0) < 65536 else np.int32)
        else:
            arrays[f"ids:{category}"] = np.atleast_1d(np.asarray(data, dtype=np.int64))
    np.savez_compressed(path, **arrays)


def load_layers(path: Path) -> dict[str, LabelData]:
    """Inverse of :func:`save_layers` (image-level labels come back as lists)."""
    with np.load(path) as npz:
        return {
            key.split(":", 1)[1]: (npz[key].astype(np.int32) if key.startswith("map:") else npz[key].tolist())
            for key in npz.files
        }


# --------------------------------------------------------------------------------------------------
# Per-image work, run in worker processes


@dataclass
class Job:
    """What every worker needs; sent once per worker by the pool initializer."""

    sources: dict[str, Source]
    lut: np.ndarray  # colour lookup (color_lut)
    out: Path  # the dataset folder being built
    work: Path  # per-image data between the passes
    size: int
    lookups: dict[tuple[str, str], np.ndarray] | None = None  # translate: (source, category) -> local-to-global
    categories: tuple[str, ...] = ()  # translate: categories that kept some label


_JOB: Job | None = None
Task = tuple[int, str, SourceImage]  # (image number, source name, image)


def _init(job: Job) -> None:
    global _JOB
    _JOB = job


def image_labels(job: Job, source: str, image: SourceImage) -> tuple[np.ndarray, dict[str, LabelData]]:
    """Decode an image and gather its label data, colour included (computed at full resolution)."""
    rgb = load_rgb(image.jpeg, source)
    data = job.sources[source].labels(image)
    data[COLOR] = color_labels(rgb, job.lut)
    return rgb, data


def _convert(task: Task) -> tuple[str, dict[tuple[str, int], float]]:
    """Pass 1: statistics at source resolution; write the resized JPEG; keep the resized local labels."""
    number, source, image = task
    job = _JOB
    rgb, data = image_labels(job, source, image)
    shares = {(category, j): share for category, d in data.items() for j, share in label_shares(d).items()}
    write_jpeg(job.out / "images" / source / f"{image.stem}.jpg", resize_rgb(rgb, job.size))
    save_layers(
        job.work / f"{number}.npz",
        {
            category: resize_labels(d, job.size // 2) if isinstance(d, np.ndarray) and d.ndim >= 2 else d
            for category, d in data.items()
        },
    )
    return source, shares


def _translate(task: Task) -> IndexRow:
    """Pass 2: remap the kept local labels to global numbers and write the label PNGs."""
    number, source, image = task
    job = _JOB
    work = job.work / f"{number}.npz"
    layers: dict[str, LabelData] = {}
    for category, d in load_layers(work).items():
        if category not in job.categories:  # every label of this category was filtered out
            continue
        # no lookup: this source never had a label in this category (e.g. only empty part data)
        lookup = job.lookups.get((source, category), NO_LABELS)
        if isinstance(d, np.ndarray):
            layers[category] = remap(d, lookup)
        else:  # image-level: skip source 0, keep a filtered label as 0 (original behaviour)
            layers[category] = [int(lookup[j]) if j < len(lookup) else 0 for j in d if j != 0]
    name = f"{source}/{image.stem}.jpg"
    cells, _ = write_label_layers(job.out, name, layers)
    work.unlink()
    side = job.size // 2
    return IndexRow(name, job.size, job.size, side, side, cells)


def _map(
    func: Callable[[Task], T], tasks: list[Task], job: Job, workers: int, desc: str, progress: bool
) -> Iterator[T]:
    """``func`` over ``tasks`` in order, in ``workers`` processes (in this one when workers == 1)."""
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=desc, unit="img", file=sys.stderr, disable=not progress)
    try:
        if workers <= 1:
            _init(job)
            for task in tasks:
                yield func(task)
                bar.update()
            return
        chunk = max(1, min(16, len(tasks) // (workers * 8)))
        # forkserver: safe with threads in the parent, and the server imports this module once per session.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        with context.Pool(workers, initializer=_init, initargs=(job,)) as pool:
            for result in pool.imap(func, tasks, chunksize=chunk):
                yield result
                bar.update()
    finally:
        bar.close()


# --------------------------------------------------------------------------------------------------
# The whole build


def open_sources(paths: Mapping[str, str | os.PathLike]) -> dict[str, Source]:
    """Adapters for the given ``source name -> folder``, in the fixed order ade20k, dtd, opensurfaces, pascal."""
    unknown = set(paths) - set(SOURCE_NAMES)
    if unknown:
        raise NetDissectError(f"unknown source(s) {sorted(unknown)}; expected some of {list(SOURCE_NAMES)}")
    if not paths:
        raise NetDissectError("no source given: pass at least one of --ade20k, --pascal, --opensurfaces, --dtd")
    return {name: adapter_class(name)(paths[name]) for name in SOURCE_NAMES if name in paths}


def list_images(sources: Mapping[str, Source]) -> list[Task]:
    """Every image of every source, numbered; a repeated stem within a source gets a counter (``foo2`` ...)."""
    tasks: list[Task] = []
    for name, source in sources.items():
        seen: Counter[str] = Counter()
        images = source.images()
        if not images:
            raise NetDissectError(
                f"{name}: no images found under {getattr(source, 'root', '?')}; "
                f"is the folder laid out as the source ships it?"
            )
        for image in images:
            seen[image.stem] += 1
            if seen[image.stem] > 1:
                image = SourceImage(f"{image.stem}{seen[image.stem]}", image.jpeg, image.key)
            tasks.append((len(tasks), name, image))
    return tasks


def load_table(path: str | os.PathLike | None) -> tuple[np.ndarray, bool]:
    """The colour table: the published one from ``path`` (verified), else the fallback rule's table."""
    if path is None:
        return np.ascontiguousarray(colors.fallback_table()), False
    table = colors.load_color_table(path)
    if not colors.is_original_table(table):
        counts = np.bincount(table.ravel(), minlength=11)
        found = ", ".join(f"{n} {c}" for n, c in zip(colors.COLOR_NAMES, counts))
        raise NetDissectError(
            f"--color-table {path}: not the published colour-name table (sha256 of its "
            f"[r][g][b] bytes must be {colors.ORIGINAL_TABLE_SHA256}; cells per colour found: "
            f"{found}; expected black 194, blue 6071, brown 743, grey 293, green 9573, "
            f"orange 1698, pink 2748, purple 6749, red 1725, white 209, yellow 2765). "
            f"Rebuild it as docs/broden-sources.md §5 says, or leave the option out to use the "
            f"approximate fallback rule"
        )
    return table, True


def lookup_arrays(naming: Naming, numbers: Mapping[str, int]) -> dict[tuple[str, str], np.ndarray]:
    """Per (source, category): an int32 array mapping local label numbers to global ones (0 = dropped)."""
    top: dict[tuple[str, str], int] = defaultdict(int)
    for source, category, j in naming.label:
        top[(source, category)] = max(top[(source, category)], j)
    arrays = {sc: np.zeros(n + 1, dtype=np.int32) for sc, n in top.items()}
    for (source, category, j), name in naming.label.items():
        arrays[(source, category)][j] = numbers.get(name, 0)
    return arrays


def syns_text(naming: Naming, freq: Mapping[Key, int], adapter_names: Mapping[Key, list[str]]) -> str:
    """The debug list of merged names: per label name its keys with frequency and adapter names."""
    keys_of: dict[str, list[Key]] = defaultdict(list)
    for key, name in naming.label.items():
        keys_of[name].append(key)
    lines = []
    for name in sorted(keys_of, key=lambda n: (-len(keys_of[n]), n)):
        lines.append(f"name: {name}")
        for s, c, j in sorted(keys_of[name]):
            lines.append(f"{s}/{c}#{j}: {freq[(s, c, j)]}, ({';'.join(adapter_names[(s, c, j)])})")
        lines.append("")
    return "\n".join(lines) + "\n"


def readme_text(
    folder: str, counts: Mapping[str, int], size: int, min_frequency: int, min_coverage: float, original_colors: bool
) -> str:
    sources = "\n".join(f"  {name}: {n} images" for name, n in counts.items())
    color_note = (
        "colour labels from the published colour-name table (van de Weijer et al. 2009)"
        if original_colors
        else "colour labels from the APPROXIMATE fallback rule (docs/broden-sources.md §5), not the published "
        "table: this dataset is not Broden-identical in its colour labels"
    )
    return (
        f"{folder} joined segmentation data set\n\n"
        f"Sources:\n{sources}\n"
        f"Total: {sum(counts.values())} images\n\n"
        f"Settings: size ({size}, {size}), segmentation size ({size // 2}, {size // 2}), no crop, "
        f"splits train 0.7 / val 0.3 by md5 hash, min_frequency {min_frequency}, min_coverage {min_coverage}\n"
        f"Generated {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M:%S UTC')} "
        f"by netdissect broden regenerate.\n\n"
        f"Labels were named, merged across sources and categories, filtered and numbered as described in "
        f"docs/broden-sources.md §6; {color_note}. syns.txt lists which source labels were merged.\n"
    )


def regenerate(
    out: str | os.PathLike,
    size: int,
    sources: Mapping[str, str | os.PathLike],
    *,
    min_frequency: int = 10,
    min_coverage: float = 0.5,
    workers: int | None = None,
    color_table: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Build a Broden folder at ``out`` from ``sources`` (name → folder). Returns ``out``."""
    out = Path(out)
    if size < 2:
        raise NetDissectError(f"--size {size}: expected an image side of at least 2 (224, 227 or 384)")
    if min_frequency < 0 or min_coverage < 0:
        raise NetDissectError("--min-frequency and --min-coverage must be >= 0")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NetDissectError(f"--out {out} already exists; remove it (or choose another folder) to regenerate")
    workers = workers or os.cpu_count() or 1
    table, original_colors = load_table(color_table)
    adapters = open_sources(sources)
    tasks = list_images(adapters)
    with atomic_dir(out) as tmp:
        job = Job(adapters, color_lut(table), out=tmp, work=tmp / ".work", size=size)
        job.work.mkdir()

        # 1. statistics at source resolution; resized JPEGs; resized local labels kept in .work
        freq: Counter[Key] = Counter()
        cov: dict[Key, float] = defaultdict(float)
        counts: Counter[str] = Counter()
        for source, shares in _map(_convert, tasks, job, workers, "convert", progress):
            counts[source] += 1
            for (category, j), share in shares.items():
                freq[(source, category, j)] += 1
                cov[(source, category, j)] += share

        # 2. naming, filtering, numbering
        adapter_names = {key: key_names(adapters, key) for key in freq}
        naming = name_keys(freq, cov, adapter_names.__getitem__)
        tables = compute_tables(
            label_statistics(naming, freq, cov),
            syns=naming.syns(),
            min_frequency=min_frequency,
            min_coverage=min_coverage,
        )
        if not tables.label_rows:
            raise NetDissectError(
                f"no label passes --min-frequency {min_frequency} and --min-coverage "
                f"{min_coverage}; lower them or add images"
            )

        # 3. global label PNGs, tables, index.csv last; then the folder gets its name
        job.lookups = lookup_arrays(naming, tables.numbers)
        job.categories = tuple(tables.categories)
        rows = list(_map(_translate, tasks, job, workers, "translate", progress))
        job.work.rmdir()
        for name, text in tables_text(tables).items():
            atomic_write_text(tmp / name, text)
        atomic_write_text(tmp / "syns.txt", syns_text(naming, freq, adapter_names))
        atomic_write_text(
            tmp / "README.txt",
            readme_text(out.name, counts, size, min_frequency, min_coverage, original_colors),
            newline="\r\n",
        )
        write_index(tmp, rows, tables.categories)
    return out


def key_names(adapters: Mapping[str, Source], key: Key) -> list[str]:
    """The adapter's names of a key; colour keys are named ``<colour>-c``."""
    source, category, j = key
    if category == COLOR:
        return [f"{colors.COLOR_NAMES[j - 1]}-c"] if j else []
    return adapters[source].names(category, j)


def label_statistics(
    naming: Naming, freq: Mapping[Key, int], cov: Mapping[Key, float]
) -> dict[tuple[str, str], tuple[int, float]]:
    """(label name, category) -> (n, c): the keys' statistics summed per chosen name (writer input)."""
    stats: dict[tuple[str, str], list] = defaultdict(lambda: [0, 0.0])
    for key, name in naming.label.items():
        stats[(name, key[1])][0] += freq[key]
        stats[(name, key[1])][1] += cov[key]
    return {k: (n, c) for k, (n, c) in stats.items()}
