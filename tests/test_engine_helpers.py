"""Helpers of the engine tests: tiny Broden folders written by hand, and a plain brute-force reference.

Nothing here uses the engine. The reference follows docs/dissection.md literally: numpy, one image
and one unit at a time, ``np.quantile`` over all values, bilinear upsampling written out by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# label numbers of the random datasets: (name, categories it is listed in with coverage)
# 8 "window" is listed in object and part with equal coverage: primary = the later category (part).
CATEGORIES = ["color", "object", "part", "scene", "texture"]
COLOR, OBJECT, PART, SCENE, TEXTURE = [1, 2, 3, 4], [5, 6, 7, 8, 9], [8, 10, 11, 12], [13, 14, 15], [16, 17, 18]
NAMES = {
    1: "red-c",
    2: "green-c",
    3: "blue-c",
    4: "black-c",
    5: "car",
    6: "sky",
    7: "tree",
    8: "window",
    9: "dog",
    10: "wheel",
    11: "door",
    12: "head",
    13: "street-s",
    14: "beach-s",
    15: "office-s",
    16: "striped",
    17: "dotted",
    18: "banded",
}
MEMBERS = {"color": COLOR, "object": OBJECT, "part": PART, "scene": SCENE, "texture": TEXTURE}
PRIMARY = {l: CATEGORIES.index(c) for c in CATEGORIES for l in MEMBERS[c]}  # later category wins the tie of 8


@dataclass
class TinyBroden:
    root: Path
    images: np.ndarray  # (N, ih, iw, 3) uint8 exactly as stored
    layers: list[np.ndarray]  # per image (K_i, sh, sw) int64 pixel layers
    image_labels: list[list[int]]  # per image: image-level labels (nonzero, unique)
    categories: list[str] = field(default_factory=lambda: list(CATEGORIES))
    num_labels: int = 19

    @property
    def primary(self) -> np.ndarray:
        p = np.full(self.num_labels, -1, dtype=np.int64)
        for label, c in PRIMARY.items():
            p[label] = c
        return p


def _crlf(path: Path, lines: list[str]) -> None:
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))


def _label_png(path: Path, labels: np.ndarray) -> None:
    rgb = np.zeros((*labels.shape, 3), np.uint8)
    rgb[..., 0] = labels % 256
    rgb[..., 1] = labels // 256
    Image.fromarray(rgb).save(path, format="PNG")


def write_tiny_broden(
    root: Path, n_images: int = 12, seg: int = 8, scale: int = 2, seed: int = 0, images: np.ndarray | None = None
) -> TinyBroden:
    """A random Broden folder: color, object (pixel), part (0-2 layers), scene (int, sometimes 0 or
    empty), texture (1-2 ints). Images are stored losslessly (PNG bytes under .jpg names; Pillow reads
    by content) so tests can plant exact values in them. ``images`` overrides the random pixels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "images" / "src").mkdir(parents=True, exist_ok=True)
    size = seg * scale
    if images is None:
        images = np.random.default_rng(seed + 1000).integers(0, 256, size=(n_images, size, size, 3), dtype=np.uint8)
    rows, all_layers, all_image_labels = [], [], []
    for i in range(n_images):
        stem = f"img{i:03d}"
        Image.fromarray(images[i]).save(root / "images" / "src" / f"{stem}.jpg", format="PNG")
        blocks = lambda vals, p0: np.where(rng.random((seg, seg)) < p0, 0, rng.choice(vals, size=(seg, seg)))
        color = rng.choice(COLOR, size=(seg, seg))
        obj = blocks(OBJECT, 0.3)
        obj[: seg // 2, : seg // 2] = rng.choice(OBJECT)  # some spatial structure
        n_parts = i % 3
        parts = [blocks(PART, 0.6) for _ in range(n_parts)]
        cells = {"color": f"src/{stem}_color.png", "object": f"src/{stem}_object.png"}
        _label_png(root / "images" / "src" / f"{stem}_color.png", color)
        _label_png(root / "images" / "src" / f"{stem}_object.png", obj)
        part_paths = []
        for k, p in enumerate(parts):
            name = f"src/{stem}_part_{k + 1}.png"
            _label_png(root / "images" / name, p)
            part_paths.append(name)
        cells["part"] = ";".join(part_paths)
        scene = [int(rng.choice(SCENE + [0]))] if i % 4 else []
        cells["scene"] = ";".join(map(str, scene))
        texture = sorted({int(t) for t in rng.choice(TEXTURE, size=1 + i % 2)}) if i % 3 != 1 else []
        cells["texture"] = ";".join(map(str, texture))
        rows.append(
            ",".join(
                [f"src/{stem}.jpg", "train", str(size), str(size), str(seg), str(seg)] + [cells[c] for c in CATEGORIES]
            )
        )
        all_layers.append(np.stack([color, obj, *parts]).astype(np.int64))
        all_image_labels.append(sorted({l for l in scene + texture if l}))
    _crlf(root / "index.csv", [",".join(["image", "split", "ih", "iw", "sh", "sw"] + CATEGORIES)] + rows)
    cat_lines = ["name,first,last,count,frequency"]
    for c in CATEGORIES:
        m = MEMBERS[c]
        cat_lines.append(f"{c},{min(m)},{max(m)},{len(m)},{len(m)}")
    _crlf(root / "category.csv", cat_lines)
    label_lines = ["number,name,category,frequency,coverage,syns"]
    for l in range(1, 19):
        cats = [c for c in CATEGORIES if l in MEMBERS[c]]
        label_lines.append(f"{l},{NAMES[l]},{';'.join(f'{c}(1)' for c in cats)},{len(cats)},1.000000,")
    _crlf(root / "label.csv", label_lines)
    for c in CATEGORIES:
        _crlf(
            root / f"c_{c}.csv",
            ["code,number,name,frequency,coverage"]
            + [f"{k + 1},{l},{NAMES[l]},1,1.0" for k, l in enumerate(MEMBERS[c])],
        )
    return TinyBroden(root, images, all_layers, all_image_labels)


def bilinear(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres and clamped edges, in float64, one pixel at a time."""
    h, w = a.shape
    out = np.empty((out_h, out_w))

    def source(dst: int, n_in: int, n_out: int) -> tuple[int, int, float]:
        real = max((dst + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = int(np.floor(real))
        i1 = min(i0 + 1, n_in - 1)
        return i0, i1, real - i0

    for y in range(out_h):
        y0, y1, wy = source(y, h, out_h)
        for x in range(out_w):
            x0, x1, wx = source(x, w, out_w)
            top = a[y0, x0] * (1 - wx) + a[y0, x1] * wx
            bottom = a[y1, x0] * (1 - wx) + a[y1, x1] * wx
            out[y, x] = top * (1 - wy) + bottom * wy
    return out


def fieldmap_upsample(a: np.ndarray, knots_y: list[int], knots_x: list[int], out_h: int, out_w: int) -> np.ndarray:
    """docs/dissection.md §3's fieldmap values, one pixel at a time: linear between the knots around
    the pixel, the edge knot's value outside them (float64; the same rounding order as :func:`bilinear`)."""

    def source(y: int, knots: list[int]) -> tuple[int, int, float]:
        if y <= knots[0]:
            return 0, 0, 0.0
        if y >= knots[-1]:
            return len(knots) - 1, len(knots) - 1, 0.0
        k = max(j for j in range(len(knots)) if knots[j] <= y)
        return k, k + 1, (y - knots[k]) / (knots[k + 1] - knots[k])

    out = np.empty((out_h, out_w))
    for y in range(out_h):
        y0, y1, wy = source(y, knots_y)
        for x in range(out_w):
            x0, x1, wx = source(x, knots_x)
            top = a[y0, x0] * (1 - wx) + a[y0, x1] * wx
            bottom = a[y1, x0] * (1 - wx) + a[y1, x1] * wx
            out[y, x] = top * (1 - wy) + bottom * wy
    return out


def reference(
    acts: np.ndarray,
    data: TinyBroden,
    q: float = 0.005,
    union: str = "paper",
    rows: range | None = None,
    thresholds: np.ndarray | None = None,
    upsample=None,
) -> dict[str, np.ndarray]:
    """Thresholds and counts of docs/dissection.md §2-4, plainly. ``acts``: (N, U, H, W) activations of
    all images; ``upsample(map, sh, sw)`` gives the upsampled values (default :func:`bilinear`)."""
    upsample = upsample or bilinear
    n, units = acts.shape[:2]
    if thresholds is None:
        thresholds = np.array([np.quantile(acts[:, u].astype(np.float64).ravel(), 1 - q) for u in range(units)])
    num_labels, num_cats = data.num_labels, len(data.categories)
    primary = data.primary
    G = np.zeros(num_labels, np.int64)
    I = np.zeros((units, num_labels), np.int64)
    C = np.zeros((units, num_cats), np.int64)
    for i in rows if rows is not None else range(n):
        layers, image_labels = data.layers[i], data.image_labels[i]
        sh, sw = layers.shape[1:]
        for layer in layers:
            for l in np.unique(layer):
                if l:
                    G[l] += int((layer == l).sum())
        for l in image_labels:
            G[l] += sh * sw
        image_cats = {primary[l] for layer in layers for l in np.unique(layer) if l} | {
            primary[l] for l in image_labels
        }
        for u in range(units):
            mask = upsample(acts[i, u].astype(np.float64), sh, sw) > thresholds[u]
            size = int(mask.sum())
            for layer in layers:
                for l in np.unique(layer[mask]):
                    if l:
                        I[u, l] += int(((layer == l) & mask).sum())
            for l in image_labels:
                I[u, l] += size
            if union == "paper":
                cats = image_cats
            else:
                cats = {primary[l] for layer in layers for l in np.unique(layer[mask]) if l} | {
                    primary[l] for l in image_labels
                }
            for c in cats:
                if c >= 0:
                    C[u, c] += size
    return {"thresholds": thresholds, "G": G, "I": I, "C": C}
