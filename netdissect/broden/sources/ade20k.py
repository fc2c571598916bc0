"""ADE20K (2016 full release) → object, part (several levels), scene. See docs/broden-sources.md §1.

Layout: ``<root>/ADE20K_2016_07_26/index_ade20k.mat`` and, per image,
``<root>/<folder>/<name>.jpg``, ``..._seg.png``, ``..._parts_1.png``, ``..._parts_2.png``, ...
The PNGs hold class ``(R // 10) * 256 + G``; objects and parts share the ``objectnames`` table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from netdissect.broden.sources.base import (
    LabelData,
    Source,
    SourceImage,
    load_mat,
    load_png_rgb,
    missing_annotation,
    require_dir,
    require_file,
    unnamed_label,
)
from netdissect.errors import NetDissectError

VERSION = "ADE20K_2016_07_26"


def ade_classes(rgb: np.ndarray) -> np.ndarray:
    """Class numbers of an ADE20K ``_seg.png`` / ``_parts_k.png`` (H×W×3 uint8) as int32 H×W."""
    return (rgb[..., 0].astype(np.int32) // 10) * 256 + rgb[..., 1]


def normalise_scene(raw: str) -> str:
    """``train_station/outdoor`` → ``train_station-outdoor`` (the label name adds ``-s``)."""
    return raw.replace(" - ", "-").replace("/", "-")


class ADE20K(Source):
    name = "ade20k"
    categories = ("object", "part", "scene")

    def __init__(self, root) -> None:
        root = require_dir(root, self.name)
        if (root / "index_ade20k.mat").is_file():  # given the ADE20K_2016_07_26 folder itself
            root = root.parent
        self.root = root
        self.index_file = require_file(root / VERSION / "index_ade20k.mat", self.name, "index file")
        mat = load_mat(self.index_file, self.name, squeeze_me=True)
        try:
            index = mat["index"]
            self.filenames = [str(s) for s in index["filename"][()]]
            self.folders = [str(s) for s in index["folder"][()]]
            raw_scenes = [str(s) for s in index["scene"][()]]
            self.objectnames = [str(s) for s in index["objectnames"][()]]
        except (KeyError, ValueError, TypeError, IndexError) as err:
            raise NetDissectError(
                f"ade20k: {self.index_file} lacks the struct `index` with cell arrays filename, "
                f"folder, scene, objectnames ({err}); is it the 2016 release's index file?"
            ) from None
        if not (len(self.filenames) == len(self.folders) == len(raw_scenes)):
            raise NetDissectError(
                f"ade20k: {self.index_file}: index.filename, index.folder and index.scene have "
                f"different lengths ({len(self.filenames)}, {len(self.folders)}, {len(raw_scenes)})"
            )
        distinct = sorted(set(raw_scenes))
        self.scene_names = [normalise_scene(s) for s in distinct]  # local scene j is scene_names[j-1]
        number = {
            raw: (0 if name.startswith("~") else k + 1) for k, (raw, name) in enumerate(zip(distinct, self.scene_names))
        }
        self.scene_of_image = [number[s] for s in raw_scenes]

    def images(self) -> list[SourceImage]:
        return [
            SourceImage(stem=f.removesuffix(".jpg"), jpeg=self.root / folder / f, key=i)
            for i, (f, folder) in enumerate(zip(self.filenames, self.folders))
        ]

    def labels(self, image: SourceImage) -> dict[str, LabelData]:
        base = str(image.jpeg).removesuffix(".jpg")
        seg = Path(base + "_seg.png")
        try:
            objects = ade_classes(load_png_rgb(seg, self.name))
        except FileNotFoundError:
            raise missing_annotation(self.name, image.jpeg, seg) from None
        levels = []
        for k in range(1, 1000):
            path = Path(f"{base}_parts_{k}.png")
            try:
                levels.append(ade_classes(load_png_rgb(path, self.name)))
            except FileNotFoundError:
                break
            if levels[-1].shape != objects.shape:
                raise NetDissectError(
                    f"ade20k: {path} is {levels[-1].shape[1]}x{levels[-1].shape[0]} pixels but "
                    f"{seg} is {objects.shape[1]}x{objects.shape[0]}; fetch the image again"
                )
        parts = np.stack(levels) if levels else []
        for array, path in ((objects, seg), (parts, Path(base + "_parts_*.png"))):
            if len(array) and int(np.max(array)) > len(self.objectnames):
                raise unnamed_label(
                    self.name,
                    "object/part",
                    int(np.max(array)),
                    path,
                    f"{self.index_file} (index.objectnames has {len(self.objectnames)} classes)",
                )
        return {"object": objects, "part": parts, "scene": self.scene_of_image[image.key]}

    def names(self, category: str, j: int) -> list[str]:
        if j == 0:
            return []
        if category == "scene":
            return [self.scene_names[j - 1] + "-s"]
        return [name.strip() for name in self.objectnames[j - 1].split(",")]
