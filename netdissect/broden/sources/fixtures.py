"""Tiny source datasets written in each source's real on-disk format (for tests and the benchmark).

Formats as in docs/broden-sources.md: ``scipy.io.savemat`` for MATLAB files, Pillow for JPEGs and PNGs,
CSV and text files as the sources ship them. Every writer takes the pixel content from the caller,
so a test knows what each pixel should become.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from netdissect.broden.sources.ade20k import VERSION


def _jpeg(path: Path, rgb: np.ndarray, quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(path, quality=quality)


def _png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(path)


# --------------------------------------------------------------------------------------------------
# ADE20K


@dataclass
class AdeImage:
    filename: str  # ADE_train_00000001.jpg
    folder: str  # e.g. "training/s/street" (below ADE20K_2016_07_26/images/)
    scene: str  # raw scene string, e.g. "street" or "train_station/outdoor"
    rgb: np.ndarray  # H×W×3 uint8
    objects: np.ndarray  # H×W class numbers (1-based into objectnames, 0 = unlabeled)
    parts: list[np.ndarray] = field(default_factory=list)  # one H×W map per part level


def ade_png(classes: np.ndarray, instances: np.ndarray | None = None) -> np.ndarray:
    """RGB of an ADE20K ``_seg.png``: R = (class // 256) * 10, G = class % 256, B = instance."""
    classes = np.asarray(classes)
    rgb = np.zeros(classes.shape + (3,), np.uint8)
    rgb[..., 0] = (classes // 256) * 10
    rgb[..., 1] = classes % 256
    if instances is not None:
        rgb[..., 2] = instances
    return rgb


def write_ade20k(root: str | Path, images: list[AdeImage], objectnames: list[str]) -> Path:
    """Write ``root/ADE20K_2016_07_26/index_ade20k.mat`` and every image's JPEG and PNGs."""
    import scipy.io

    if len(images) < 2 or len(objectnames) < 2:
        raise ValueError("keep >= 2 entries in every cell array (squeeze_me collapses 1-element cells)")
    root = Path(root)
    folders = [f"{VERSION}/images/{im.folder}" for im in images]
    index = {
        "filename": np.array([im.filename for im in images], dtype=object),
        "folder": np.array(folders, dtype=object),
        "scene": np.array([im.scene for im in images], dtype=object),
        "objectnames": np.array(objectnames, dtype=object),
    }
    (root / VERSION).mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / VERSION / "index_ade20k.mat", {"index": index})
    for im, folder in zip(images, folders):
        base = root / folder / im.filename.removesuffix(".jpg")
        _jpeg(root / folder / im.filename, im.rgb)
        instances = (np.arange(im.objects.size).reshape(im.objects.shape) % 7).astype(np.uint8)
        _png(Path(f"{base}_seg.png"), ade_png(im.objects, instances))
        for k, level in enumerate(im.parts, 1):
            _png(Path(f"{base}_parts_{k}.png"), ade_png(level))
    return root


def blocky_labels(rng: np.random.Generator, shape: tuple[int, int], values: np.ndarray, block: int) -> np.ndarray:
    """A piecewise-constant label map (rectangles of ``block`` pixels), like real segmentations."""
    h, w = shape
    coarse = rng.choice(values, size=(-(-h // block), -(-w // block)))
    return np.kron(coarse, np.ones((block, block), dtype=coarse.dtype))[:h, :w]


def write_ade20k_bulk(
    root: str | Path, n: int, height: int = 384, width: int = 512, seed: int = 0, classes: int = 150, scenes: int = 30
) -> Path:
    """``n`` synthetic ADE20K-format images (blocky objects, one part level on half of them)."""
    rng = np.random.default_rng(seed)
    names = [f"thing{c}, item{c}" for c in range(1, classes + 1)]
    images = []
    y, x = np.mgrid[0:height, 0:width]
    for i in range(n):
        objects = blocky_labels(rng, (height, width), np.arange(1, classes + 1), 32)
        rgb = np.stack(
            [(x * 255 // width + 40 * i) % 256, (y * 255 // height) % 256, (objects * 37) % 256], axis=-1
        ).astype(np.uint8)
        rgb = np.clip(rgb.astype(np.int16) + rng.integers(-8, 9, rgb.shape), 0, 255).astype(np.uint8)
        parts = []
        if i % 2 == 0:
            parts = [np.where(blocky_labels(rng, (height, width), np.array([0, 1]), 16) == 1, objects % 20 + 1, 0)]
        split = "training" if i % 10 else "validation"
        prefix = "ADE_train" if split == "training" else "ADE_val"
        scene = f"scene{i % scenes}"
        images.append(AdeImage(f"{prefix}_{i + 1:08d}.jpg", f"{split}/s/{scene}", scene, rgb, objects, parts))
    return write_ade20k(root, images, names)


# --------------------------------------------------------------------------------------------------
# PASCAL


@dataclass
class PascalObject:
    name: str  # VOC class name, e.g. "cat"
    class_ind: int  # 1..20, VOC alphabetical order
    mask: np.ndarray  # H×W 0/1
    parts: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (part key, H×W 0/1 mask)


@dataclass
class PascalImage:
    id: str  # e.g. "2008_000002"
    rgb: np.ndarray
    context: np.ndarray  # H×W PASCAL-Context class ids
    objects: list[PascalObject] = field(default_factory=list)


def write_pascal(root: str | Path, images: list[PascalImage], labels: dict[int, str], part2ind: str) -> Path:
    """Write VOC2010 JPEGs, PASCAL-Context (labels.txt, trainval/<id>.mat) and PASCAL-Part files."""
    import scipy.io

    root = Path(root)
    (root / "context" / "trainval").mkdir(parents=True, exist_ok=True)
    (root / "part" / "Annotations_Part").mkdir(parents=True, exist_ok=True)
    (root / "context" / "labels.txt").write_text("".join(f"{k}: {v}\n" for k, v in labels.items()))
    (root / "part" / "part2ind.m").write_text(part2ind)
    P = [("part_name", "O"), ("mask", "O")]
    O = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
    for im in images:
        _jpeg(root / "VOC2010" / "JPEGImages" / f"{im.id}.jpg", im.rgb)
        scipy.io.savemat(
            root / "context" / "trainval" / f"{im.id}.mat", {"LabelMap": np.asarray(im.context).astype(np.uint16)}
        )
        objs = np.zeros((1, len(im.objects)), dtype=O)
        for i, o in enumerate(im.objects):
            objs[0, i]["class"] = o.name
            objs[0, i]["class_ind"] = np.array([[float(o.class_ind)]])
            objs[0, i]["mask"] = np.asarray(o.mask, dtype=np.uint8)
            if o.parts:
                parts = np.zeros((1, len(o.parts)), dtype=P)
                for j, (key, mask) in enumerate(o.parts):
                    parts[0, j]["part_name"] = key
                    parts[0, j]["mask"] = np.asarray(mask, dtype=np.uint8)
                objs[0, i]["parts"] = parts
            else:
                objs[0, i]["parts"] = np.zeros((0, 0))
        anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
        anno[0, 0]["imname"] = im.id
        anno[0, 0]["objects"] = objs
        scipy.io.savemat(root / "part" / "Annotations_Part" / f"{im.id}.mat", {"anno": anno})
    return root


MINI_PART2IND = """\
function pimap = part2ind()
% [cat]
pimap{8}('head')        = 1;
pimap{8}('leye')        = 2;                % left eye
for ii = 1:4
    pimap{8}(sprintf('whisker_%d', ii)) = 10+ii;  % multiple whiskers
end

% [dog]
keySet = keys(pimap{8});
valueSet = values(pimap{8});
pimap{12} = containers.Map(keySet, valueSet);
pimap{12}('muzzle')     = 20;
remove(pimap{12}, 'head');
"""


# --------------------------------------------------------------------------------------------------
# OpenSurfaces and DTD


def write_opensurfaces(
    root: str | Path, photos: list[tuple[int, np.ndarray, np.ndarray]], substances: list[tuple[int, str, int]]
) -> Path:
    """``photos``: (photo_id, photo RGB, label RGB: R = substance red_color, B = scene);
    ``substances``: (substance_id, substance_name, red_color)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    header = (
        "photo_id,scene_category_name,scene_category_score,whitebalanced,whitebalanced_score,fov,"
        "flickr_url,license_name,license_is_creative_commons\n"
    )
    (root / "photos.csv").write_text(header + "".join(f"{pid},Kitchen,,,,,,,\n" for pid, _, _ in photos))
    (root / "label-substance-colors.csv").write_text(
        "substance_id,substance_name,red_color\n" + "".join(f"{i},{n},{r}\n" for i, n, r in substances)
    )
    (root / "label-name-colors.csv").write_text("name_id,name_name,green_color\n1,Table,1\n")
    for pid, rgb, label in photos:
        _jpeg(root / "photos" / f"{pid}.jpg", rgb)
        _png(root / "photos-labels" / f"{pid}.png", label)
    return root


def write_dtd(root: str | Path, images: list[tuple[str, np.ndarray, list[str]]]) -> Path:
    """``images``: (``<class>/<file>.jpg``, RGB, attribute words); writes ``root/dtd-r1.0.1/...``."""
    base = Path(root) / "dtd-r1.0.1"
    (base / "labels").mkdir(parents=True, exist_ok=True)
    (base / "labels" / "labels_joint_anno.txt").write_text(
        "".join(f"{rel} {' '.join(words)} \n" for rel, _, words in images)
    )
    for rel, rgb, _ in images:
        _jpeg(base / "images" / rel, rgb)
    return Path(root)
