"""PASCAL: VOC2010 images + PASCAL-Context objects + PASCAL-Part parts. See docs/broden-sources.md §2.

Layout under the root: ``VOC2010/JPEGImages/<id>.jpg``, ``context/labels.txt``,
``context/trainval/<id>.mat`` (``LabelMap``), ``part/part2ind.m``, ``part/Annotations_Part/<id>.mat``.
Part codes come from parsing ``part2ind.m`` as text (:func:`parse_part2ind`); each distinct
(object, readable part name) pair gets one local code whose name is the part name alone, so that
e.g. ``head`` of cat and of dog become separate keys that the merge unifies.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from netdissect.broden.sources.base import (
    LabelData,
    Source,
    SourceImage,
    load_mat,
    missing_annotation,
    require_dir,
    require_file,
    unnamed_label,
)
from netdissect.errors import NetDissectError

EXPANSIONS = {
    "lfho": "left front hoof",
    "rfho": "right front hoof",
    "lbho": "left back hoof",
    "rbho": "right back hoof",
    "fwheel": "front wheel",
    "bwheel": "back wheel",
    "frontside": "front side",
    "leftside": "left side",
    "rightside": "right side",
    "backside": "back side",
    "roofside": "roof side",
    "leftmirror": "left mirror",
    "rightmirror": "right mirror",
}
DROPPED_WORDS = {"left", "right", "front", "back", "upper", "lower", "side"}

_HEADER = re.compile(r"^%\s*\[([^\]]+)\]")
_KEY = re.compile(r"^pimap\{(\d+)\}\('([^']+)'\)\s*=\s*\d+\s*;\s*(?:%\s*(.*?))?\s*$")
_LONG_NAME = re.compile(r"[A-Za-z0-9_ ]+")
_FOR = re.compile(r"^\s*for\s+ii\s*=\s*1\s*:\s*(\d+)")
_SPRINTF = re.compile(
    r"^\s*pimap\{(\d+)\}\(sprintf\('([^']+)_%d',\s*ii\)\)\s*=\s*\d+\s*\+\s*ii\s*;\s*(?:%\s*(.*?))?\s*$"
)
_SILHOUETTE = re.compile(r"^%\s*only has si")
_KEYSET = re.compile(r"^\s*keySet\s*=\s*keys\(pimap\{(\d+)\}\)")
_COPY = re.compile(r"^\s*pimap\{(\d+)\}\s*=\s*containers\.Map\(keySet")


def readable(name: str) -> str:
    """Readable part/object name: expand abbreviations, aeroplane → airplane, drop side words."""
    name = EXPANSIONS.get(name, name).replace("aeroplane", "airplane")
    return " ".join(w for w in name.split() if w not in DROPPED_WORDS)


def parse_part2ind(text: str) -> dict[int, tuple[str, dict[str, str]]]:
    """Parse PASCAL-Part's ``part2ind.m``: object index → (object name, {part key: readable part name}).

    Only the line forms listed in docs/broden-sources.md §2 are recognised; everything else is ignored (``remove`` too).
    """
    objects: dict[int, tuple[str, dict[str, str]]] = {}
    header, last_index, loop_n, copy_from = "", 0, 0, None

    def entry(index: int) -> dict[str, str]:
        nonlocal last_index
        last_index = index
        if index not in objects:
            objects[index] = (readable(header), {})
        return objects[index][1]

    for line in text.splitlines():
        if m := _HEADER.match(line):
            header = m.group(1).strip()
        elif m := _KEY.match(line):
            key, long_name = m.group(2), m.group(3)
            usable = long_name and _LONG_NAME.fullmatch(long_name.strip())
            entry(int(m.group(1)))[key] = readable(long_name.strip() if usable else key)
        elif m := _FOR.match(line):
            loop_n = int(m.group(1))
        elif m := _SPRINTF.match(line):
            key, comment = m.group(2), (m.group(3) or "").strip()
            name = readable(comment if comment and "multiple" not in comment else key)
            parts = entry(int(m.group(1)))
            for ii in range(1, loop_n + 1):
                parts[f"{key}_{ii}"] = name
        elif _SILHOUETTE.match(line):
            entry(last_index + 1)["silhouette"] = "silhouette"
        elif m := _KEYSET.match(line):
            copy_from = int(m.group(1))
        elif (m := _COPY.match(line)) and copy_from is not None:
            entry(int(m.group(1))).update(objects.get(copy_from, ("", {}))[1])
            copy_from = None
    return objects


def part_codes(objects: dict[int, tuple[str, dict[str, str]]]) -> tuple[dict[tuple[int, str], int], list[str]]:
    """Local part codes: (object index, part key) → code, and the code names (index = code, [0] = "-").

    One code per distinct (object name, readable part name) pair, numbered in file order; a part whose
    readable name is empty (car/bus side panels) maps to 0 (unlabeled).
    """
    code_of_pair: dict[tuple[str, str], int] = {}
    codes: dict[tuple[int, str], int] = {}
    names = ["-"]
    for index, (obj, parts) in objects.items():
        for key, part in parts.items():
            if not part:
                codes[(index, key)] = 0
                continue
            if (obj, part) not in code_of_pair:
                code_of_pair[(obj, part)] = len(names)
                names.append(part)
            codes[(index, key)] = code_of_pair[(obj, part)]
    return codes, names


def read_context_labels(path: Path) -> dict[int, str]:
    """``labels.txt`` of PASCAL-Context: ``<int>: <name>`` per line; ``unknown`` becomes ``-``."""
    labels = {}
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        number, sep, name = line.partition(": ")
        if not sep or not number.strip().isdigit() or not name.strip():
            raise NetDissectError(f"pascal: {path} line {line_number}: expected '<number>: <name>', got {line!r}")
        labels[int(number)] = "-" if name.strip() == "unknown" else name.strip()
    return labels


def _text(value) -> str:
    """A MATLAB char array as loaded by default loadmat (``array(['x'])``) → ``'x'``."""
    return str(np.asarray(value).ravel()[0]) if np.asarray(value).size else ""


class Pascal(Source):
    name = "pascal"
    categories = ("object", "part")

    def __init__(self, root) -> None:
        self.root = require_dir(root, self.name)
        labels_txt = require_file(self.root / "context" / "labels.txt", self.name, "PASCAL-Context class list")
        part2ind = require_file(self.root / "part" / "part2ind.m", self.name, "PASCAL-Part code table")
        self.annotations = self.root / "part" / "Annotations_Part"
        if not self.annotations.is_dir():
            require_file(self.annotations / "2008_000002.mat", self.name, "PASCAL-Part annotation folder")
        self.context_labels = read_context_labels(labels_txt)
        self.codes, self.part_names = part_codes(parse_part2ind(part2ind.read_text(encoding="utf-8")))

    def images(self) -> list[SourceImage]:
        ids = sorted(p.stem for p in self.annotations.glob("*.mat"))
        return [SourceImage(stem=i, jpeg=self.root / "VOC2010" / "JPEGImages" / f"{i}.jpg", key=i) for i in ids]

    def labels(self, image: SourceImage) -> dict[str, LabelData]:
        context = self.root / "context" / "trainval" / f"{image.key}.mat"
        if not context.is_file():
            raise missing_annotation(self.name, image.jpeg, context)
        try:
            objects = np.asarray(load_mat(context, self.name)["LabelMap"], dtype=np.int32)
        except KeyError:
            raise NetDissectError(f"pascal: {context} has no variable LabelMap; is it a PASCAL-Context file?") from None
        if objects.ndim != 2:
            raise NetDissectError(f"pascal: {context}: LabelMap has shape {objects.shape}, expected H×W")
        present = np.flatnonzero(np.bincount(objects.ravel())).tolist()  # the distinct labels, not pixels
        unknown = [v for v in present if v != 0 and v not in self.context_labels]
        if unknown:
            raise unnamed_label(self.name, "object", unknown[0], context, str(self.root / "context" / "labels.txt"))
        return {"object": objects, "part": self._part_map(self.annotations / f"{image.key}.mat")}

    def _part_map(self, path: Path) -> LabelData:
        try:
            anno = load_mat(path, self.name)["anno"][0, 0]
            objs = anno["objects"]
        except (KeyError, IndexError, ValueError) as err:
            raise NetDissectError(f"pascal: {path} lacks anno.objects ({err}); is it a PASCAL-Part file?") from None
        if objs.size == 0:
            return []
        part_map = None
        for o in objs.ravel():
            mask = np.asarray(o["mask"])
            if part_map is None:
                part_map = np.zeros(mask.shape, dtype=np.int32)
            class_ind = int(np.asarray(o["class_ind"]).ravel()[0])
            parts = np.asarray(o["parts"])
            for p in parts.ravel() if parts.size else ():
                key = _text(p["part_name"])
                code = self.codes.get((class_ind, key))
                if code is None:
                    raise NetDissectError(
                        f"pascal: {path}: part {key!r} of object class {class_ind} "
                        f"({_text(o['class'])}) is not in part/part2ind.m (a label with no name); "
                        f"check that both come from the same PASCAL-Part release"
                    )
                part_mask = np.asarray(p["mask"]).astype(bool)
                if part_mask.shape != part_map.shape:
                    raise NetDissectError(
                        f"pascal: {path}: part mask {key!r} has shape {part_mask.shape}, expected {part_map.shape}"
                    )
                part_map[part_mask] = code
        return part_map

    def names(self, category: str, j: int) -> list[str]:
        if j == 0:
            return []
        if category == "object":
            return [self.context_labels[j]]
        return [self.part_names[j]]
