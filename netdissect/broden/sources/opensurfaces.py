"""OpenSurfaces (release 0) → material. See docs/broden-sources.md §3.

Layout under the root: ``photos.csv``, ``label-substance-colors.csv``, ``photos/<id>.jpg``,
``photos-labels/<id>.png``. The label PNG's R channel holds the substance's ``red_color`` value
(0 = unlabeled); it is 1024 pixels high and generally not the photo's size.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from netdissect.broden.sources.base import (
    LabelData,
    Source,
    SourceImage,
    load_png_rgb,
    missing_annotation,
    require_dir,
    require_file,
    unnamed_label,
)
from netdissect.errors import NetDissectError


def material_names(substance: str) -> list[str]:
    """``Fabric/cloth`` → ``[fabric, cloth]``; ``Plastic - clear`` → ``[plastic-clear]``."""
    return [piece.replace(" - ", "-").strip().lower() for piece in substance.split("/")]


def _read_csv(path: Path, columns: list[str]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in columns if c not in header]
        if missing:
            raise NetDissectError(
                f"opensurfaces: {path}: header lacks column(s) {', '.join(missing)} "
                f"(found {', '.join(header)}); is it the release-0 file?"
            )
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


class OpenSurfaces(Source):
    name = "opensurfaces"
    categories = ("material",)

    def __init__(self, root) -> None:
        self.root = require_dir(root, self.name)
        photos = require_file(self.root / "photos.csv", self.name, "photo table")
        substances = require_file(self.root / "label-substance-colors.csv", self.name, "substance table")
        self.photo_ids = []
        for line, row in enumerate(_read_csv(photos, ["photo_id"]), 2):
            try:
                self.photo_ids.append(str(int(row["photo_id"])))
            except ValueError:
                raise NetDissectError(
                    f"opensurfaces: {photos} line {line}: photo_id {row['photo_id']!r} is not an integer"
                ) from None
        self.substance_table = substances
        self.substances: dict[int, str] = {}
        for line, row in enumerate(_read_csv(substances, ["substance_name", "red_color"]), 2):
            try:
                self.substances[int(row["red_color"])] = row["substance_name"]
            except ValueError:
                raise NetDissectError(
                    f"opensurfaces: {substances} line {line}: red_color {row['red_color']!r} is not an integer"
                ) from None
        self.known = np.zeros(256, dtype=bool)
        self.known[[c for c in self.substances if 0 <= c < 256]] = True
        self.known[0] = True

    def images(self) -> list[SourceImage]:
        return [SourceImage(stem=i, jpeg=self.root / "photos" / f"{i}.jpg", key=i) for i in self.photo_ids]

    def labels(self, image: SourceImage) -> dict[str, LabelData]:
        png = self.root / "photos-labels" / f"{image.key}.png"
        try:
            material = load_png_rgb(png, self.name)[..., 0].astype(np.int32)
        except FileNotFoundError:
            raise missing_annotation(self.name, image.jpeg, png) from None
        present = np.flatnonzero(np.bincount(material.ravel(), minlength=256))
        unknown = present[~self.known[present]]
        if unknown.size:
            raise unnamed_label(self.name, "material", int(unknown[0]), png, str(self.substance_table))
        return {"material": material}

    def names(self, category: str, j: int) -> list[str]:
        return material_names(self.substances[j]) if j else []
