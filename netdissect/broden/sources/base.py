"""The adapter contract shared by the source converters (docs/broden-sources.md §0.1).

An adapter reads one source dataset as it ships on disk. It lists the source's images
(:meth:`Source.images`, cheap: paths only) and, per image, loads the label data of each category
(:meth:`Source.labels`) as

- an ``int`` (one image-level label, 0 = none) or a ``list[int]`` (several, dominant first);
- an ``H×W`` integer array (one label map) or a ``k×H×W`` array (a stack of maps, dominant first);
- an empty list (nothing for this image).

:meth:`Source.names` gives the English names of a local label number, preferred first (``[]`` for 0).
Local numbers mean something only inside one ``(source, category)``. Colour labels are not the
adapters' business: the merge computes them from each image's pixels.
Adapters are pickled into worker processes, so they hold only small tables, never images.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netdissect.errors import NetDissectError

LabelData = int | list | np.ndarray

# Where each source comes from: used in "missing source folder" messages.
FETCH_HINTS = {
    "ade20k": "Snakemake rule fetch_source_archive (snakemake datasets/sources/ade20k/ADE20K_2016_07_26 "
    "--configfile config/examples/regenerate.yaml), or: netdissect fetch "
    "http://groups.csail.mit.edu/vision/datasets/ADE20K/ADE20K_2016_07_26.zip --out ADE20K_2016_07_26.zip "
    "--extract DIR/ADE20K_2016_07_26 --strip 1",
    "pascal": "Snakemake rules fetch_source_archive and fetch_source_file (snakemake datasets/sources/pascal/VOC2010 "
    "datasets/sources/pascal/context/trainval datasets/sources/pascal/context/labels.txt "
    "datasets/sources/pascal/part --configfile config/examples/regenerate.yaml; URLs and --strip values there)",
    "opensurfaces": "Snakemake rules fetch_source_archive and fetch_source_file (snakemake "
    "datasets/sources/opensurfaces/release --configfile config/examples/regenerate.yaml), then the "
    "source's process_opensurfaces_release_0.py run inside that folder for photos/ and photos-labels/",
    "dtd": "Snakemake rule fetch_source_archive (snakemake datasets/sources/dtd/dtd-r1.0.1 --configfile "
    "config/examples/regenerate.yaml), or: netdissect fetch "
    "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz --out dtd-r1.0.1.tar.gz "
    "--extract DIR/dtd-r1.0.1 --strip 1",
}


@dataclass(frozen=True)
class SourceImage:
    """One image of a source: where its JPEG is, its output stem, and what the adapter needs to load it."""

    stem: str  # output base name: images/<source>/<stem>.jpg
    jpeg: Path  # the original JPEG
    key: object = None  # adapter-specific (picklable): e.g. a row number


class Source(ABC):
    """One source dataset read from its shipped layout."""

    name: str  # "ade20k", "pascal", "opensurfaces", "dtd": also the images/ folder
    categories: tuple[str, ...]  # the categories it supplies (colour excluded)

    @abstractmethod
    def images(self) -> list[SourceImage]:
        """Every image of the source, in a fixed order."""

    @abstractmethod
    def labels(self, image: SourceImage) -> dict[str, LabelData]:
        """Label data of ``image`` per category (see the module docstring)."""

    @abstractmethod
    def names(self, category: str, j: int) -> list[str]:
        """English names of local label ``j`` of ``category``, preferred first; ``[]`` for 0."""


def require_file(path: Path, source: str, what: str) -> Path:
    """``path`` if it is a file, else a NetDissectError naming it and how to fetch the source."""
    if not path.is_file():
        raise NetDissectError(
            f"{source}: {what} {path} is missing; is the --{source} folder laid out as the "
            f"source ships it? Fetch it with the {FETCH_HINTS[source]}"
        )
    return path


def require_dir(path: str | os.PathLike, source: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise NetDissectError(
            f"--{source} {path}: no such folder; fetch the source first with the {FETCH_HINTS[source]}"
        )
    return path


def missing_annotation(source: str, image: Path, annotation: Path) -> NetDissectError:
    return NetDissectError(
        f"{source}: image {image} has no annotation file {annotation}; restore the file "
        f"(fetch the source again) or remove the image from the source's image list"
    )


def unnamed_label(source: str, category: str, j: int, file: Path, table: str) -> NetDissectError:
    return NetDissectError(
        f"{source}: {file} uses {category} label {j}, which has no name in {table}; "
        f"the annotation and the name table do not match (fetch both again)"
    )


def load_mat(path: Path, source: str, **kwargs) -> dict:
    """scipy.io.loadmat with errors that name the file."""
    import scipy.io

    try:
        return scipy.io.loadmat(path, **kwargs)
    except FileNotFoundError:
        raise
    except Exception as err:  # scipy raises ValueError, TypeError, MatReadError ... on corrupt files
        raise NetDissectError(
            f"{source}: cannot read the MATLAB file {path} ({type(err).__name__}: {err}); "
            f"it is corrupt or truncated: fetch it again"
        ) from None


def load_png_rgb(path: Path, source: str) -> np.ndarray:
    """An annotation PNG as uint8 H×W×3, with an error naming the file if it cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise
    except Exception as err:
        raise NetDissectError(
            f"{source}: cannot decode the annotation image {path} ({err}); it is corrupt or truncated: fetch it again"
        ) from None
