"""A procedural Broden-format dataset whose labels are true to its pixels (``netdissect synth``).

Three kinds of images, mixed like Broden mixes its sources (folders under ``images/``):

- ``synth_scene`` (6 of 10 images, like ADE20K): a background (sky, grass, road, water, sand, wall,
  floor) and objects standing in it; object, part (up to two layers: parts, and parts of parts),
  material, scene and colour labels. The scene is determined by its background and its objects.
- ``synth_material`` (2 of 10, like OpenSurfaces): 2-4 regions of distinct procedural materials.
- ``synth_texture`` (2 of 10, like DTD): a whole-image texture, sometimes with a second one on top
  (then both are image-level labels).

Concepts are meant to be learnable: every object class has its own shape, parts at fixed places
inside it, and a typical look; every material is one procedural pattern (objects are painted with
the materials they are made of); every texture one pattern with random colours and orientation.

Geometry is drawn at the image side S, and every label map is derived from the same S x S id maps:
statistics (frequency, coverage) are taken there (the "source resolution"), and the label PNGs are
their nearest-neighbour reduction to s = S // 2 on the corner-aligned grid of docs/broden-sources.md §6.6.
Colour labels name the colour of each rendered pixel BEFORE JPEG encoding (the JPEG is lossy, so
naming the decoded JPEG can differ by a bin); the colour table is the fallback rule unless one is given.

Numbering follows docs/broden-sources.md §6.4-6.5 (:func:`netdissect.broden.writer.compute_tables`), so the
generator runs twice over the images: once for the statistics, once to write with final numbers.
Every image is a pure function of (seed, row number), hence the output is the same for a seed
whatever the number of worker processes.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from netdissect.broden.colors import COLOR_NAMES, name_colors
from netdissect.broden.writer import (
    BrodenTables,
    IndexRow,
    compute_tables,
    resize_labels,
    write_index,
    write_jpeg,
    write_label_layers,
    write_tables,
)
from netdissect.errors import NetDissectError
from netdissect.io import atomic_write_text

if TYPE_CHECKING:
    import torch

SIZES = (224, 227, 384)
CATEGORIES = ("color", "object", "part", "material", "scene", "texture")

# ---------------------------------------------------------------------------------------------
# Vocabulary. Local ids (1-based positions in VOCABULARY) fit in uint8; global numbers come later.

MATERIALS = ["wood", "brick", "tile", "fabric", "metal", "glass", "foliage", "stone", "rubber"]
TEXTURES = ["striped", "banded", "checkered", "dotted", "grid", "zigzagged", "wavy", "spiralled"]
SCENES = ["street-s", "village-s", "park-s", "beach-s", "bedroom-s", "dining_room-s"]
BACKGROUNDS = ["sky", "grass", "road", "water", "sand", "wall", "floor"]
OBJECTS = ["car", "house", "tree", "person", "table", "bed", "lamp", "boat", "window"]
PARTS = [
    "window",
    "door",
    "wheel",
    "hub",
    "roof",
    "pane",
    "trunk",
    "crown",
    "head",
    "torso",
    "leg",
    "tabletop",
    "blanket",
    "pillow",
    "shade",
    "base",
    "hull",
    "sail",
]
COLOR_LABELS = [f"{c}-c" for c in COLOR_NAMES]
VOCABULARY = list(dict.fromkeys(COLOR_LABELS + BACKGROUNDS + OBJECTS + PARTS + MATERIALS + TEXTURES + SCENES))
ID = {name: k + 1 for k, name in enumerate(VOCABULARY)}
COLOR_IDS = np.array([ID[c] for c in COLOR_LABELS], dtype=np.uint8)

KIND_OF_ROW = ["scene"] * 6 + ["material"] * 2 + ["texture"] * 2  # row i has kind KIND_OF_ROW[i % 10]


def image_name(i: int) -> str:
    """The index.csv ``image`` cell of row ``i`` (before sorting by split hash)."""
    kind = KIND_OF_ROW[i % len(KIND_OF_ROW)]
    return f"synth_{kind}/{kind}_{i:06d}.jpg"


# ---------------------------------------------------------------------------------------------
# Canvas and shapes. A shape is a boolean mask inside a window (two slices) of the S x S canvas.


@dataclass
class Shape:
    """A boolean ``mask`` over the window ``canvas[ys, xs]``."""

    ys: slice
    xs: slice
    mask: np.ndarray

    def __or__(self, other: Shape) -> Shape:
        ys = slice(min(self.ys.start, other.ys.start), max(self.ys.stop, other.ys.stop))
        xs = slice(min(self.xs.start, other.xs.start), max(self.xs.stop, other.xs.stop))
        mask = np.zeros((ys.stop - ys.start, xs.stop - xs.start), dtype=bool)
        for part in (self, other):
            mask[
                part.ys.start - ys.start : part.ys.stop - ys.start, part.xs.start - xs.start : part.xs.stop - xs.start
            ] |= part.mask
        return Shape(ys, xs, mask)

    def full(self, size: int) -> np.ndarray:
        """The mask on the whole S x S canvas."""
        out = np.zeros((size, size), dtype=bool)
        out[self.ys, self.xs] = self.mask
        return out


@dataclass
class Canvas:
    """What one image is drawn into: RGB (float, 0..255) and S x S maps of local label ids."""

    size: int
    rng: np.random.Generator
    rgb: np.ndarray = field(init=False)
    object: np.ndarray = field(init=False)
    parts: np.ndarray = field(init=False)  # (2, S, S): parts, and parts of parts
    material: np.ndarray = field(init=False)
    drawn: list[tuple[str, Shape]] = field(default_factory=list)  # objects in drawing order

    def __post_init__(self) -> None:
        s = self.size
        self.rgb = np.zeros((s, s, 3), dtype=np.float32)
        self.object = np.zeros((s, s), dtype=np.uint8)
        self.parts = np.zeros((2, s, s), dtype=np.uint8)
        self.material = np.zeros((s, s), dtype=np.uint8)
        self._noise: dict[int, np.ndarray] = {}

    def window(self, x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice]:
        s = self.size
        ys = slice(min(max(int(math.floor(y0)), 0), s), min(max(int(math.ceil(y1)), 0), s))
        xs = slice(min(max(int(math.floor(x0)), 0), s), min(max(int(math.ceil(x1)), 0), s))
        return ys, xs

    def grid(self, ys: slice, xs: slice) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates (y, x) of a window, as broadcastable float32 arrays."""
        y = np.arange(ys.start, ys.stop, dtype=np.float32)[:, None] + 0.5
        x = np.arange(xs.start, xs.stop, dtype=np.float32)[None, :] + 0.5
        return y, x

    def noise(self, cells: int) -> np.ndarray:
        """Smooth noise in [0, 1) over the canvas: a random cells x cells grid, bilinearly upsampled."""
        if cells not in self._noise:
            small = self.rng.random((cells, cells), dtype=np.float32)
            self._noise[cells] = np.asarray(
                Image.fromarray(small, mode="F").resize((self.size, self.size), Image.BILINEAR)
            )
        return self._noise[cells]

    # -- shapes ---------------------------------------------------------------------------------

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> Shape:
        ys, xs = self.window(x0, y0, x1, y1)
        y, x = self.grid(ys, xs)
        return Shape(ys, xs, (y >= y0) & (y < y1) & (x >= x0) & (x < x1))

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> Shape:
        ys, xs = self.window(cx - rx, cy - ry, cx + rx, cy + ry)
        y, x = self.grid(ys, xs)
        return Shape(ys, xs, ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0)

    def polygon(self, points: list[tuple[float, float]]) -> Shape:
        """A convex polygon given clockwise on screen (x right, y down)."""
        px, py = zip(*points)
        ys, xs = self.window(min(px), min(py), max(px), max(py))
        y, x = self.grid(ys, xs)
        inside = np.ones((ys.stop - ys.start, xs.stop - xs.start), dtype=bool)
        for (ax, ay), (bx, by) in zip(points, points[1:] + points[:1]):
            inside &= (bx - ax) * (y - ay) - (by - ay) * (x - ax) >= 0
        return Shape(ys, xs, inside)

    # -- painting -------------------------------------------------------------------------------

    def paint(self, shape: Shape, material: str, tint: tuple[float, float, float]) -> None:
        """Fill ``shape`` with a material's pattern in the given colour (does not label the material)."""
        y, x = self.grid(shape.ys, shape.xs)
        pattern = MATERIAL_PATTERNS[material](self, shape.ys, shape.xs, y, x, np.asarray(tint, np.float32))
        np.copyto(self.rgb[shape.ys, shape.xs], pattern, where=shape.mask[..., None])

    def label(self, layer: np.ndarray, shape: Shape, name: str) -> None:
        layer[shape.ys, shape.xs][shape.mask] = ID[name] if name else 0


# ---------------------------------------------------------------------------------------------
# Materials: one procedural pattern each. A pattern maps window coordinates and a tint to RGB.

PatternFn = Callable[[Canvas, slice, slice, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _shade(tint: np.ndarray, lum: np.ndarray) -> np.ndarray:
    return tint * lum[..., None]  # the canvas is clipped to 0..255 once, at the end


def _wood(c: Canvas, ys, xs, y, x, tint):
    warp = c.noise(5)[ys, xs] * c.size / 12
    grain = 0.5 + 0.5 * np.sin((y + warp) * (2 * np.pi / (c.size / 28)))
    return _shade(tint, 0.65 + 0.45 * grain)


def _brick(c: Canvas, ys, xs, y, x, tint):
    h = c.size / 16
    row = np.floor(y / h)
    u = x / (2 * h) + 0.5 * (row % 2)
    mortar = ((y % h) < h * 0.18) | ((u % 1.0) < 0.09)
    brick_id = row * 131 + np.floor(u)
    lum = 0.85 + 0.25 * ((brick_id * 0.618) % 1.0)
    rgb = _shade(tint, lum)
    return np.where(mortar[..., None], np.float32(205), rgb)


def _tile(c: Canvas, ys, xs, y, x, tint):
    t = c.size / 9
    grout = ((y % t) < t * 0.08) | ((x % t) < t * 0.08)
    lum = 0.95 + 0.1 * c.noise(40)[ys, xs]
    return np.where(grout[..., None], np.float32(70), _shade(tint, lum))


def _fabric(c: Canvas, ys, xs, y, x, tint):
    weave = ((np.floor(y / 2) + np.floor(x / 2)) % 2) * 0.22
    return _shade(tint, 0.78 + weave + 0.1 * c.noise(12)[ys, xs])


def _metal(c: Canvas, ys, xs, y, x, tint):
    top, height = ys.start, max(ys.stop - ys.start, 1)
    t = (y - top) / height
    highlight = np.exp(-(((t - 0.3) / 0.08) ** 2)) * 0.5
    return _shade(tint, 0.75 + 0.25 * (1 - t) + highlight)


def _glass(c: Canvas, ys, xs, y, x, tint):
    streak = (((x + y) % (c.size / 10)) < c.size / 60) * 0.35
    return _shade(tint, 0.85 + streak + 0.1 * (y - ys.start) / max(ys.stop - ys.start, 1))


def _foliage(c: Canvas, ys, xs, y, x, tint):
    blotch = c.noise(40)[ys, xs]
    return _shade(tint, 0.45 + 0.9 * blotch * blotch)


def _stone(c: Canvas, ys, xs, y, x, tint):
    speckle = c.rng.random((ys.stop - ys.start, xs.stop - xs.start), dtype=np.float32)
    return _shade(tint, 0.7 + 0.25 * c.noise(12)[ys, xs] + 0.35 * speckle * speckle)


def _rubber(c: Canvas, ys, xs, y, x, tint):
    return _shade(tint, 0.9 + 0.2 * c.noise(40)[ys, xs])


def _sky(c: Canvas, ys, xs, y, x, tint):
    clouds = np.clip((c.noise(5)[ys, xs] - 0.55) * 4, 0, 1)[..., None]
    blue = tint * (0.8 + 0.25 * y / c.size)[..., None]
    return blue * (1 - clouds) + 245 * clouds


def _grass(c: Canvas, ys, xs, y, x, tint):
    blades = (np.sin(x * 1.7 + 3 * c.noise(12)[ys, xs]) > 0.3) * 0.25
    return _shade(tint, 0.75 + blades + 0.2 * c.noise(12)[ys, xs])


def _road(c: Canvas, ys, xs, y, x, tint):
    centre = c.size / 2
    dash = (np.abs(x - centre) < c.size / 90) & ((y % (c.size / 8)) < c.size / 16) & (y > ys.start + c.size / 20)
    return np.where(dash[..., None], np.float32(235), _shade(tint, 0.9 + 0.2 * c.noise(40)[ys, xs]))


def _water(c: Canvas, ys, xs, y, x, tint):
    waves = 0.5 + 0.5 * np.sin(y * 0.9 + 2.5 * np.sin(x * 0.08))
    return _shade(tint, 0.75 + 0.35 * waves * waves)


def _sand(c: Canvas, ys, xs, y, x, tint):
    grain = c.rng.random((ys.stop - ys.start, xs.stop - xs.start), dtype=np.float32)
    return _shade(tint, 0.85 + 0.15 * grain + 0.1 * c.noise(12)[ys, xs])


def _plain(c: Canvas, ys, xs, y, x, tint):
    return _shade(tint, 0.93 + 0.07 * c.noise(5)[ys, xs])


MATERIAL_PATTERNS: dict[str, PatternFn] = {
    "wood": _wood,
    "brick": _brick,
    "tile": _tile,
    "fabric": _fabric,
    "metal": _metal,
    "glass": _glass,
    "foliage": _foliage,
    "stone": _stone,
    "rubber": _rubber,
    # surfaces without a material label
    "sky": _sky,
    "grass": _grass,
    "road": _road,
    "water": _water,
    "sand": _sand,
    "plain": _plain,
}
MATERIAL_TINT = {
    "wood": (150, 95, 50),
    "brick": (165, 62, 45),
    "tile": (225, 220, 205),
    "fabric": (90, 110, 190),
    "metal": (165, 168, 175),
    "glass": (160, 205, 230),
    "foliage": (45, 125, 40),
    "stone": (128, 124, 118),
    "rubber": (38, 38, 40),
}
VIVID = [
    (215, 40, 35),
    (40, 80, 200),
    (235, 205, 40),
    (40, 150, 60),
    (240, 130, 30),
    (130, 50, 160),
    (240, 150, 190),
    (245, 245, 240),
    (30, 30, 30),
    (120, 75, 40),
    (140, 140, 140),
]


def _jitter(rng: np.random.Generator, tint: tuple[float, ...], amount: float = 0.12) -> tuple[float, ...]:
    scale = 1 + amount * (2 * rng.random() - 1)
    return tuple(min(255.0, v * scale) for v in tint)


# ---------------------------------------------------------------------------------------------
# Objects: a shape, parts at fixed places, materials. Each draws itself into a box (x, y, w, h).


@dataclass
class Piece:
    """One painted piece of an object: its shape, material, colour and labels."""

    shape: Shape
    material: str  # a MATERIALS name, or a surface name (no material label)
    tint: tuple[float, ...]
    part: str = ""  # part label (layer 1), "" for none
    subpart: str = ""  # part-of-part label (layer 2), "" for none


def _car(c: Canvas, x: float, y: float, w: float, h: float) -> list[Piece]:
    body = _jitter(c.rng, VIVID[c.rng.choice([0, 1, 2, 7, 8, 10])], 0.05)
    r = 0.17 * h
    pieces = [
        Piece(c.rect(x, y + 0.4 * h, x + w, y + 0.8 * h), "metal", body),
        Piece(
            c.polygon(
                [
                    (x + 0.18 * w, y + 0.41 * h),
                    (x + 0.3 * w, y + 0.06 * h),
                    (x + 0.72 * w, y + 0.06 * h),
                    (x + 0.86 * w, y + 0.41 * h),
                ]
            ),
            "metal",
            body,
        ),
        Piece(
            c.polygon(
                [
                    (x + 0.29 * w, y + 0.38 * h),
                    (x + 0.36 * w, y + 0.13 * h),
                    (x + 0.5 * w, y + 0.13 * h),
                    (x + 0.5 * w, y + 0.38 * h),
                ]
            ),
            "glass",
            MATERIAL_TINT["glass"],
            "window",
        ),
        Piece(
            c.polygon(
                [
                    (x + 0.53 * w, y + 0.38 * h),
                    (x + 0.53 * w, y + 0.13 * h),
                    (x + 0.68 * w, y + 0.13 * h),
                    (x + 0.79 * w, y + 0.38 * h),
                ]
            ),
            "glass",
            MATERIAL_TINT["glass"],
            "window",
        ),
        Piece(
            c.rect(x + 0.36 * w, y + 0.43 * h, x + 0.6 * w, y + 0.74 * h),
            "metal",
            tuple(v * 0.72 for v in body),
            "door",
        ),
    ]
    for cx in (x + 0.22 * w, x + 0.78 * w):
        pieces.append(Piece(c.ellipse(cx, y + h - r, r, r), "rubber", MATERIAL_TINT["rubber"], "wheel"))
        pieces.append(Piece(c.ellipse(cx, y + h - r, 0.45 * r, 0.45 * r), "metal", (200, 200, 205), "wheel", "hub"))
    return pieces


def _window_pieces(c: Canvas, x0: float, y0: float, x1: float, y1: float, part: str, pane_level: str) -> list[Piece]:
    """A white frame with four glass panes; panes labelled ``pane`` on layer ``pane_level``."""
    pieces = [Piece(c.rect(x0, y0, x1, y1), "wood", (235, 235, 230), part)]
    bar_x, bar_y = 0.08 * (x1 - x0), 0.08 * (y1 - y0)
    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
    for px0, px1 in ((x0 + bar_x, mx - bar_x / 2), (mx + bar_x / 2, x1 - bar_x)):
        for py0, py1 in ((y0 + bar_y, my - bar_y / 2), (my + bar_y / 2, y1 - bar_y)):
            shape = c.rect(px0, py0, px1, py1)
            if pane_level == "part":
                pieces.append(Piece(shape, "glass", MATERIAL_TINT["glass"], "pane"))
            else:
                pieces.append(Piece(shape, "glass", MATERIAL_TINT["glass"], part, "pane"))
    return pieces


def _house(c: Canvas, x: float, y: float, w: float, h: float) -> list[Piece]:
    pieces = [
        Piece(c.rect(x + 0.06 * w, y + 0.4 * h, x + 0.94 * w, y + h), "brick", _jitter(c.rng, MATERIAL_TINT["brick"])),
        Piece(
            c.polygon([(x, y + 0.42 * h), (x + 0.5 * w, y), (x + w, y + 0.42 * h)]),
            "tile",
            _jitter(c.rng, (120, 45, 35)),
            "roof",
        ),
        Piece(c.rect(x + 0.42 * w, y + 0.66 * h, x + 0.58 * w, y + h), "wood", _jitter(c.rng, (110, 70, 40)), "door"),
    ]
    for wx in (0.14, 0.64):
        pieces += _window_pieces(c, x + wx * w, y + 0.5 * h, x + (wx + 0.22) * w, y + 0.72 * h, "window", "subpart")
    return pieces


def _tree(c: Canvas, x: float, y: float, w: float, h: float) -> list[Piece]:
    return [
        Piece(c.rect(x + 0.42 * w, y + 0.55 * h, x + 0.58 * w, y + h), "wood", _jitter(c.rng, (95, 62, 35)), "trunk"),
        Piece(
            c.ellipse(x + 0.5 * w, y + 0.34 * h, 0.5 * w, 0.34 * h),
            "foliage",
            _jitter(c.rng, MATERIAL_TINT["foliage"]),
            "crown",
        ),
    ]


def _person(c: Canvas, x: float, y: float, w: float, h: float) -> list[Piece]:
    shirt = VIVID[c.rng.choice([0, 1, 3, 4, 5, 6, 7])]
    return [
        Piece(c.rect(x + 0.24 * w, y + 0.55 * h, x + 0.47 * w, y + h), "fabric", (45, 55, 105), "leg"),
        Piece(c.rect(x + 0.53 * w, y + 0.55 * h, x + 0.76 * w, y + h), "fabric", (45, 55, 105), "leg"),
        Piece(c.rect(x + 0.15 * w, y + 0.2 * h, x + 0.85 * w, y + 0.57 * h), "fabric", shirt, "torso"),
        Piece(c.ellipse(x + 0.5 * w, y + 0.1 * h, 0.1 * h, 0.1 * h), "plain", _jitter(c.rng, (225, 180, 140)), "head"),
    ]


def _table(c: Canvas, x: float, y: float, w: float, h: float) -> list[Piece]:
    wood = _jitter(c.rng, MATERIAL_TINT["wood"])
    return [
        Piece(c.rect(x + 0.05 * w, y + 0.15 * h, x + 0.13 * w, y + h), "wood", wood, "leg"),
        Piece(c.rect(x + 0.87 * w, y + 0.15 * h, x + 0.95 * w, y + h), "wood", wood, "leg"),
        Piece(c.rect(x, y, x + w, y + 0.16 * h), "wood", wood, "tabletop"),
    ]


def _bed(c: Canvas, x: float, y: float, w: float, h: float) -> list[Piece]:
    wood = _jitter(c.rng, MATERIAL_TINT["wood"])
    cover = VIVID[c.rng.choice([1, 3, 5, 6])]
    return [
        Piece(c.rect(x, y, x + 0.08 * w, y + h), "wood", wood),
        Piece(c.rect(x, y + 0.5 * h, x + w, y + h), "wood", wood),
        Piece(c.rect(x + 0.3 * w, y + 0.3 * h, x + w, y + 0.78 * h), "fabric", cover, "blanket"),
        Piece(c.ellipse(x + 0.19 * w, y + 0.38 * h, 0.1 * w, 0.11 * h), "fabric", (240, 240, 235), "pillow"),
    ]


def _lamp(c: Canvas, x: float, y: float, w: float, h: float) -> list[Piece]:
    return [
        Piece(c.rect(x + 0.46 * w, y + 0.3 * h, x + 0.54 * w, y + 0.93 * h), "metal", (90, 90, 95)),
        Piece(c.rect(x + 0.2 * w, y + 0.92 * h, x + 0.8 * w, y + h), "metal", (90, 90, 95), "base"),
        Piece(
            c.polygon([(x + 0.12 * w, y + 0.35 * h), (x + 0.3 * w, y), (x + 0.7 * w, y), (x + 0.88 * w, y + 0.35 * h)]),
            "fabric",
            _jitter(c.rng, (245, 225, 140)),
            "shade",
        ),
    ]


def _boat(c: Canvas, x: float, y: float, w: float, h: float) -> list[Piece]:
    return [
        Piece(c.rect(x + 0.48 * w, y, x + 0.52 * w, y + 0.72 * h), "wood", (110, 75, 45)),
        Piece(
            c.polygon([(x + 0.53 * w, y), (x + 0.92 * w, y + 0.64 * h), (x + 0.53 * w, y + 0.64 * h)]),
            "fabric",
            (245, 245, 240),
            "sail",
        ),
        Piece(
            c.polygon([(x, y + 0.7 * h), (x + w, y + 0.7 * h), (x + 0.84 * w, y + h), (x + 0.16 * w, y + h)]),
            "wood",
            _jitter(c.rng, (140, 60, 40)),
            "hull",
        ),
    ]


def _window(c: Canvas, x: float, y: float, w: float, h: float) -> list[Piece]:
    return _window_pieces(c, x, y, x + w, y + h, "", "part")


# name -> (drawing function, aspect w/h, height range as a fraction of S at the bottom of the image)
OBJECT_SHAPES: dict[str, tuple[Callable[..., list[Piece]], float, tuple[float, float]]] = {
    "car": (_car, 2.0, (0.2, 0.3)),
    "house": (_house, 1.0, (0.32, 0.45)),
    "tree": (_tree, 0.62, (0.4, 0.6)),
    "person": (_person, 0.42, (0.3, 0.45)),
    "table": (_table, 1.7, (0.22, 0.3)),
    "bed": (_bed, 2.0, (0.25, 0.32)),
    "lamp": (_lamp, 0.5, (0.35, 0.5)),
    "boat": (_boat, 1.2, (0.25, 0.35)),
    "window": (_window, 0.8, (0.25, 0.32)),
}


def draw_object(c: Canvas, name: str, x: float, y: float, w: float, h: float) -> None:
    """Draw object ``name`` in box (x, y, w, h): paint its pieces and write its object, part and material
    labels. It hides whatever it covers, including the parts and materials of objects behind it."""
    pieces = OBJECT_SHAPES[name][0](c, x, y, w, h)
    outline = pieces[0].shape
    for piece in pieces[1:]:
        outline = outline | piece.shape
    c.label(c.object, outline, name)
    for layer in (c.parts[0], c.parts[1], c.material):
        c.label(layer, outline, "")
    for piece in pieces:
        c.paint(piece.shape, piece.material, piece.tint)
        c.label(c.parts[0], piece.shape, piece.part)
        c.label(c.parts[1], piece.shape, piece.subpart)
        c.label(c.material, piece.shape, piece.material if piece.material in MATERIALS else "")
    c.drawn.append((name, outline))


# ---------------------------------------------------------------------------------------------
# Scenes: background bands and the objects that appear (name, minimum count, maximum count).


@dataclass(frozen=True)
class SceneKind:
    top: str  # background above the horizon
    bottom: str  # background below it
    horizon: tuple[float, float]  # fraction of S
    objects: tuple[tuple[str, int, int], ...]
    band: str = ""  # optional middle band (water on the beach)


SCENE_KINDS = {
    "street-s": SceneKind(
        "sky", "road", (0.42, 0.52), (("house", 0, 1), ("tree", 0, 1), ("car", 1, 2), ("person", 0, 2))
    ),
    "village-s": SceneKind("sky", "grass", (0.38, 0.5), (("house", 1, 3), ("tree", 0, 2), ("person", 0, 1))),
    "park-s": SceneKind("sky", "grass", (0.35, 0.48), (("tree", 2, 3), ("person", 0, 2))),
    "beach-s": SceneKind("sky", "sand", (0.3, 0.4), (("boat", 1, 2), ("person", 0, 2)), band="water"),
    "bedroom-s": SceneKind("wall", "floor", (0.55, 0.65), (("window", 0, 1), ("bed", 1, 1), ("lamp", 0, 1))),
    "dining_room-s": SceneKind(
        "wall", "floor", (0.55, 0.65), (("window", 0, 1), ("table", 1, 1), ("lamp", 0, 1), ("person", 0, 2))
    ),
}
SURFACE_TINT = {
    "sky": (110, 160, 225),
    "grass": (70, 150, 55),
    "road": (85, 85, 90),
    "water": (40, 95, 170),
    "sand": (220, 195, 140),
}
WALL_TINTS = [(235, 225, 195), (200, 220, 235), (235, 200, 205), (215, 230, 200)]


def render_scene(c: Canvas) -> str:
    """Draw a scene image; return its scene name."""
    s, rng = c.size, c.rng
    scene = SCENES[int(rng.integers(len(SCENES)))]
    kind = SCENE_KINDS[scene]
    horizon = s * rng.uniform(*kind.horizon)
    top, bottom = c.rect(0, 0, s, horizon), c.rect(0, horizon, s, s)
    indoor = kind.top == "wall"
    c.paint(
        top, "plain" if indoor else kind.top, WALL_TINTS[int(rng.integers(4))] if indoor else SURFACE_TINT[kind.top]
    )
    c.label(c.object, top, kind.top)
    floor_material = "wood" if rng.random() < 0.5 else "tile"
    c.paint(
        bottom,
        floor_material if indoor else kind.bottom,
        MATERIAL_TINT[floor_material] if indoor else SURFACE_TINT[kind.bottom],
    )
    c.label(c.object, bottom, kind.bottom)
    if indoor:
        c.label(c.material, bottom, floor_material)
    ground = horizon
    if kind.band:
        ground = horizon + (s - horizon) * rng.uniform(0.35, 0.5)
        band = c.rect(0, horizon, s, ground)
        c.paint(band, kind.band, SURFACE_TINT[kind.band])
        c.label(c.object, band, kind.band)

    placed = []  # (depth key, name, x, w, h, top y); windows first
    for name, low, high in kind.objects:
        for _ in range(int(rng.integers(low, high + 1))):
            aspect, (h_lo, h_hi) = OBJECT_SHAPES[name][1:]
            if name == "window":  # hangs on the wall
                h = s * rng.uniform(h_lo, h_hi)
                w = h * aspect
                top_y = rng.uniform(0.06 * s, max(0.07 * s, horizon - h - 0.05 * s))
                placed.append((-1.0, name, rng.uniform(0, s - w), w, h, top_y))
                continue
            if name == "boat":  # floats on the water band
                floor_top, floor_bottom = horizon + 0.1 * (ground - horizon), ground + 0.04 * s
            else:  # stands on the ground (the sand, on a beach)
                floor_top, floor_bottom = ground, s
            foot = rng.uniform(floor_top + 0.08 * (floor_bottom - floor_top), floor_bottom)
            depth = 0.55 + 0.45 * (foot - floor_top) / max(floor_bottom - floor_top, 1.0)  # nearer is larger
            h = s * rng.uniform(h_lo, h_hi) * depth
            w = h * aspect
            placed.append((foot, name, rng.uniform(-0.1 * w, s - 0.9 * w), w, h, foot - h))
    for _, name, x, w, h, y in sorted(placed, key=lambda p: p[0]):  # far (higher) objects first
        draw_object(c, name, x, y, w, h)
    return scene


def render_material(c: Canvas) -> None:
    """A material image: 2-4 regions (Voronoi cells), each a distinct material; sometimes one unlabeled."""
    s, rng = c.size, c.rng
    k = int(rng.integers(2, 5))
    seeds = rng.uniform(0, s, size=(k, 2)).astype(np.float32)
    y, x = c.grid(slice(0, s), slice(0, s))
    cell = np.argmin((y[None] - seeds[:, 0, None, None]) ** 2 + (x[None] - seeds[:, 1, None, None]) ** 2, axis=0)
    chosen = rng.choice(len(MATERIALS), size=k, replace=False)
    unlabeled = int(rng.integers(k)) if rng.random() < 0.15 else -1
    for j in range(k):
        region = Shape(slice(0, s), slice(0, s), cell == j)
        if j == unlabeled:
            c.paint(region, "plain", (150, 150, 150))
            continue
        material = MATERIALS[chosen[j]]
        tint = VIVID[int(rng.integers(len(VIVID)))] if material == "fabric" else _jitter(rng, MATERIAL_TINT[material])
        c.paint(region, material, tint)
        c.label(c.material, region, material)


# ---------------------------------------------------------------------------------------------
# Textures: whole-image patterns in random colours and orientation.


def _texture_mask(name: str, rng: np.random.Generator, s: int, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Where texture ``name`` shows its foreground colour: a float array, 0/1 or a band index."""
    angle = rng.uniform(0, np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    if name == "striped":
        return ((u / (s * rng.uniform(0.05, 0.09))) % 1.0) < 0.45
    if name == "banded":
        return np.floor(u / (s * rng.uniform(0.22, 0.32))) % 3
    if name == "checkered":
        p = s * rng.uniform(0.08, 0.14)
        return (np.floor(u / p) + np.floor(v / p)) % 2 == 1
    if name == "dotted":
        p = s * rng.uniform(0.07, 0.11)
        return ((u / p) % 1 - 0.5) ** 2 + ((v / p) % 1 - 0.5) ** 2 < 0.2**2
    if name == "grid":
        p = s * rng.uniform(0.08, 0.13)
        return (((u / p) % 1) < 0.12) | (((v / p) % 1) < 0.12)
    if name in ("zigzagged", "wavy"):
        q = s * rng.uniform(0.1, 0.16)
        phase = (u / q) % 1.0
        wave = np.abs(2 * phase - 1) if name == "zigzagged" else 0.5 + 0.5 * np.sin(2 * np.pi * phase)
        return (((v + 0.5 * q * wave) / (s * rng.uniform(0.08, 0.12))) % 1.0) < 0.4
    if name == "spiralled":
        cy, cx = rng.uniform(0.3, 0.7, size=2) * s
        radius = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
        theta = np.arctan2(y - cy, x - cx) / (2 * np.pi)
        return ((radius / (s * rng.uniform(0.07, 0.1)) - theta) % 1.0) < 0.5
    raise ValueError(name)


def render_texture(c: Canvas) -> list[str]:
    """A texture image: one texture over the whole image, sometimes a second one on top. Returns the
    texture names, dominant first."""
    s, rng = c.size, c.rng
    y, x = c.grid(slice(0, s), slice(0, s))
    names = [TEXTURES[int(rng.integers(len(TEXTURES)))]]
    colors = np.array([VIVID[k] for k in rng.choice(len(VIVID), size=4, replace=False)], dtype=np.float32)
    index = _texture_mask(names[0], rng, s, y, x).astype(np.int64)
    if rng.random() < 0.35:
        second = "dotted" if names[0] != "dotted" else "grid"
        names.append(second)
        index = np.where(_texture_mask(second, rng, s, y, x), 3, index)
    shade = 0.9 + 0.15 * c.noise(12)
    c.rgb[:] = colors[index] * shade[..., None]
    return names


# ---------------------------------------------------------------------------------------------
# One image: render, then label maps at S (statistics) and at s (files).


@dataclass
class SynthImage:
    """One rendered image. ``maps`` are S x S local-id maps by category (``part`` is (k, S, S)); ``image_labels``
    the image-level label names by category; ``rgb`` the render before JPEG encoding."""

    image: str
    kind: str
    rgb: np.ndarray
    maps: dict[str, np.ndarray]
    image_labels: dict[str, list[str]]
    drawn: list[tuple[str, Shape]]


def render_image(i: int, seed: int, size: int, color_table: np.ndarray | None = None) -> SynthImage:
    """Render row ``i`` of the dataset of ``seed`` at side ``size`` (a pure function of its arguments)."""
    c = Canvas(size, np.random.default_rng([seed, i]))
    kind = KIND_OF_ROW[i % len(KIND_OF_ROW)]
    image_labels: dict[str, list[str]] = {}
    if kind == "scene":
        image_labels["scene"] = [render_scene(c)]
    elif kind == "material":
        render_material(c)
    else:
        image_labels["texture"] = render_texture(c)
    rgb = np.clip(np.rint(c.rgb), 0, 255).astype(np.uint8)
    maps = {"color": COLOR_IDS[name_colors(rgb, color_table)]}
    if kind == "scene":
        maps["object"] = c.object
        levels = 2 if c.parts[1].any() else 1 if c.parts[0].any() else 0
        maps["part"] = c.parts[:levels]
    if kind in ("scene", "material"):
        maps["material"] = c.material
    return SynthImage(image_name(i), kind, rgb, maps, image_labels, c.drawn)


def image_statistics(item: SynthImage) -> dict[tuple[str, str], float]:
    """``(label name, category) -> coverage`` of one image at S x S (docs/broden-sources.md §6.1)."""
    out: dict[tuple[str, str], float] = {}
    for category, labels in item.maps.items():
        area = labels.shape[-1] * labels.shape[-2]
        counts = np.bincount(labels.ravel(), minlength=len(VOCABULARY) + 1)
        for local in np.flatnonzero(counts[1:]) + 1:
            out[VOCABULARY[local - 1], category] = counts[local] / area
    for category, names in item.image_labels.items():
        for name in names:
            out[name, category] = out.get((name, category), 0.0) + 1.0
    return out


# ---------------------------------------------------------------------------------------------
# The dataset: two parallel passes over the rows.
#   1. render each image, write its JPEG, return its statistics and its reduced label maps (local
#      ids, zip-compressed: a few kB per image)      -> number the labels (compute_tables)
#   2. remap each image's maps to global numbers and write its PNGs.


@dataclass(frozen=True)
class _Job:
    out_dir: Path
    seed: int
    size: int
    color_table: np.ndarray | None
    to_global: np.ndarray | None = None  # local id -> global number (second pass)


_JOB: _Job | None = None


def _init_worker(job: _Job) -> None:
    global _JOB
    _JOB = job


def _render_task(i: int) -> tuple[dict[tuple[str, str], float], dict[str, list[str]], bytes]:
    """Pass 1 for row i: writes the JPEG; returns statistics, image-level labels and reduced local maps (.npz bytes)."""
    job = _JOB
    assert job is not None
    item = render_image(i, job.seed, job.size, job.color_table)
    write_jpeg(job.out_dir / "images" / item.image, item.rgb)
    maps = io.BytesIO()
    np.savez_compressed(maps, **{c: resize_labels(m, job.size // 2) for c, m in item.maps.items() if m.size})
    return image_statistics(item), item.image_labels, maps.getvalue()


def _label_task(task: tuple[int, bytes]) -> dict[str, list[int | str]]:
    """Pass 2 for row i: the label PNGs in global numbers; returns their index cells."""
    job = _JOB
    assert job is not None and job.to_global is not None
    i, data = task
    with np.load(io.BytesIO(data)) as maps:
        layers = {category: job.to_global[maps[category]] for category in maps.files}
    cells, _ = write_label_layers(job.out_dir, image_name(i), layers)
    return cells


def _map(task: Callable[[Any], Any], job: _Job, rows: Iterable[Any], workers: int) -> Iterator[Any]:
    """``task`` over ``rows`` in order, in ``workers`` processes (inline for 1)."""
    if workers <= 1:
        _init_worker(job)
        yield from map(task, rows)
        return
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(job,)) as pool:
        yield from pool.imap(task, rows, chunksize=8)


def synthesize(
    out_dir: str | Path,
    images: int,
    size: int = 224,
    seed: int = 0,
    workers: int | None = None,
    color_table: np.ndarray | None = None,
) -> BrodenTables:
    """Write a synthetic dataset of ``images`` rows into ``out_dir`` (index.csv last); return its tables.

    Every label is kept (no frequency filter). ``workers`` processes (default: all usable cores)
    render the images; the output does not depend on their number.
    """
    out_dir = Path(out_dir)
    if size not in SIZES:
        raise NetDissectError(f"--size {size}: expected one of {', '.join(map(str, SIZES))}")
    if images < 1:
        raise NetDissectError(f"--images {images}: expected at least 1 image")
    if (out_dir / "index.csv").exists():
        raise NetDissectError(f"{out_dir} already holds a dataset (index.csv); remove it or choose another folder")
    workers = workers if workers is not None else len(os.sched_getaffinity(0))
    workers = max(1, min(workers, images))
    rows = range(images)
    job = _Job(out_dir, seed, size, color_table)

    stats: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    image_labels: list[dict[str, list[str]]] = []
    maps: list[bytes] = []
    for shares, labels, reduced in _map(_render_task, job, rows, workers):
        image_labels.append(labels)
        maps.append(reduced)
        for key, coverage in shares.items():
            stats[key][0] += 1
            stats[key][1] += coverage
    tables = compute_tables({key: (int(n), float(c)) for key, (n, c) in stats.items()})
    to_global = np.zeros(len(VOCABULARY) + 1, dtype=np.int32)
    for name, number in tables.numbers.items():
        to_global[ID[name]] = number
    job = _Job(out_dir, seed, size, color_table, to_global)
    side = size // 2
    index_rows = []
    for i, cells in enumerate(_map(_label_task, job, zip(rows, maps), workers)):
        for category, names in image_labels[i].items():
            cells[category] = [tables.number(name) for name in names]
        index_rows.append(IndexRow(image_name(i), size, size, side, side, cells))

    write_tables(out_dir, tables)
    atomic_write_text(
        out_dir / "README.txt", _readme(out_dir, images, size, seed, color_table is not None), newline="\r\n"
    )
    write_index(out_dir, index_rows, tables.categories)
    return tables


def _readme(out_dir: Path, images: int, size: int, seed: int, user_table: bool) -> str:
    kinds = {k: sum(1 for i in range(images) if KIND_OF_ROW[i % 10] == k) for k in ("scene", "material", "texture")}
    return (
        f"{out_dir.name} synthetic segmentation data set (netdissect synth)\n\n"
        f"images: {images} = synth_scene {kinds['scene']} + synth_material {kinds['material']} "
        f"+ synth_texture {kinds['texture']}\nsize: ({size}, {size}); segmentation size: ({size // 2}, {size // 2})\n"
        f"seed: {seed}\ncolour table: {'user-supplied' if user_table else 'HSV fallback rule (approximate)'}\n"
        "Procedurally rendered; labels are computed from the rendered geometry and pixels.\n"
    )


# ---------------------------------------------------------------------------------------------
# A training target for the demo model.


def training_target(
    pixel_labels: torch.Tensor,
    image_labels: torch.Tensor,
    num_labels: int,
    primary: np.ndarray | None = None,
    skip_category: int | None = None,
) -> torch.Tensor:
    """Multi-hot presence (float tensor (num_labels,)) of every label in one image of a BrodenDataset.

    ``pixel_labels`` (K, h, w) and ``image_labels`` (J,) are an item's tensors. A model trained to
    predict it (binary cross-entropy per label) learns objects, parts, materials, scenes and textures.
    Pass ``primary`` (``ds.primary``) and ``skip_category`` (an index into ``ds.categories``, e.g. of
    ``color``) to leave one category's labels out. Label 0 is never a target.
    """
    import torch

    target = torch.zeros(num_labels, dtype=torch.float32)
    present = torch.cat([pixel_labels.reshape(-1).long().unique(), image_labels.long()])
    target[present] = 1.0
    target[0] = 0.0
    if primary is not None and skip_category is not None:
        target[torch.as_tensor(primary) == skip_category] = 0.0
    return target
