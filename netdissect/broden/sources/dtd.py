"""DTD r1.0.1 → texture (multi-label, image-level). See docs/broden-sources.md §4.

Layout: ``<root>/images/<class>/<class>_<4 digits>.jpg`` and ``<root>/labels/labels_joint_anno.txt``
(one line per image: the path relative to ``images/`` then its attribute words). The root may also be
the folder holding ``dtd/`` or ``dtd-r1.0.1/``.
"""

from __future__ import annotations

from pathlib import Path

from netdissect.broden.sources.base import LabelData, Source, SourceImage, require_dir, require_file
from netdissect.errors import NetDissectError

ANNOTATIONS = Path("labels") / "labels_joint_anno.txt"


class DTD(Source):
    name = "dtd"
    categories = ("texture",)

    def __init__(self, root) -> None:
        root = require_dir(root, self.name)
        for candidate in (root, root / "dtd-r1.0.1", root / "dtd"):
            if (candidate / ANNOTATIONS).is_file():
                root = candidate
                break
        self.root = root
        path = require_file(root / ANNOTATIONS, self.name, "annotation list")
        self.entries: list[tuple[str, list[str]]] = []
        for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            pieces = line.split(maxsplit=1)
            if len(pieces) < 2:
                raise NetDissectError(
                    f"dtd: {path} line {line_number}: image {pieces[0]!r} has no texture word; "
                    f"expected '<class>/<file>.jpg word word ...'"
                )
            self.entries.append((pieces[0], pieces[1].split()))
        self.words = sorted({w for _, words in self.entries for w in words})
        number = {w: k + 1 for k, w in enumerate(self.words)}
        self.numbers = [[number[w] for w in words] for _, words in self.entries]

    def images(self) -> list[SourceImage]:
        return [
            SourceImage(stem=Path(rel).stem, jpeg=self.root / "images" / rel, key=i)
            for i, (rel, _) in enumerate(self.entries)
        ]

    def labels(self, image: SourceImage) -> dict[str, LabelData]:
        return {"texture": list(self.numbers[image.key])}

    def names(self, category: str, j: int) -> list[str]:
        return [self.words[j - 1]] if j else []
