"""Shared fixtures.

- ``broden_example``: the 4-image worked example of docs/broden-format.md §11, written by hand in
  the released byte layout (CRLF), in a fresh folder per test.
- ``synth_dataset``: a small synthetic Broden dataset (session-scoped, read-only: copy it before
  changing anything), made by ``netdissect.broden.synth``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

WORKED_INDEX = """\
image,split,ih,iw,sh,sw,color,object,part,texture,scene,material
dtd/banded_0002.jpg,train,8,8,4,4,dtd/banded_0002_color.png,,,8;10,,
pascal/2008_000002.jpg,train,8,8,4,4,pascal/2008_000002_color.png,pascal/2008_000002_object.png,pascal/2008_000002_part.png,,,
opensurfaces/100.jpg,val,8,8,4,4,opensurfaces/100_color.png,,,,,opensurfaces/100_material.png
ade20k/ADE_train_00000001.jpg,val,8,8,4,4,ade20k/ADE_train_00000001_color.png,ade20k/ADE_train_00000001_object.png,ade20k/ADE_train_00000001_part_1.png;ade20k/ADE_train_00000001_part_2.png,,9,
"""

WORKED_CATEGORY = """\
name,first,last,count,frequency
color,1,20,6,16
object,6,22,7,8
part,7,21,5,5
texture,8,10,2,2
scene,9,9,1,1
material,12,18,2,2
"""

WORKED_LABEL = """\
number,name,category,frequency,coverage,syns
1,black-c,color(4),4,1.062500,
2,white-c,color(4),4,0.750000,
3,grey-c,color(3),3,0.937500,
4,brown-c,color(2),2,0.625000,
5,blue-c,color(2),2,0.562500,
6,wall,object(2),2,0.562500,
7,window,object(1);part(1),2,0.250000,
8,banded,texture(1),1,1.000000,
9,street-s,scene(1),1,1.000000,
10,striped,texture(1),1,1.000000,
11,sky,object(1),1,0.500000,
12,wood,material(1),1,0.500000,
13,person,object(1),1,0.375000,
14,building,object(1),1,0.250000,
15,torso,part(1),1,0.250000,
16,door,part(1),1,0.125000,
17,floor,object(1),1,0.125000,
18,glass,material(1),1,0.125000,
19,head,part(1),1,0.125000,
20,green-c,color(1),1,0.062500,
21,pane,part(1),1,0.062500,
22,tree,object(1),1,0.062500,
"""

WORKED_CODES = {
    "color": """\
code,number,name,frequency,coverage
1,1,black-c,4,1.0625
2,2,white-c,4,0.75
3,3,grey-c,3,0.9375
4,4,brown-c,2,0.625
5,5,blue-c,2,0.5625
6,20,green-c,1,0.0625
""",
    "object": """\
code,number,name,frequency,coverage
1,6,wall,2,0.5625
2,11,sky,1,0.5
3,13,person,1,0.375
4,14,building,1,0.25
5,7,window,1,0.125
6,17,floor,1,0.125
7,22,tree,1,0.0625
""",
    "part": """\
code,number,name,frequency,coverage
1,15,torso,1,0.25
2,7,window,1,0.125
3,16,door,1,0.125
4,19,head,1,0.125
5,21,pane,1,0.0625
""",
    "texture": """\
code,number,name,frequency,coverage
1,8,banded,1,1.0
2,10,striped,1,1.0
""",
    "scene": """\
code,number,name,frequency,coverage
1,9,street-s,1,1.0
""",
    "material": """\
code,number,name,frequency,coverage
1,12,wood,1,0.5
2,18,glass,1,0.125
""",
}

WORKED_MAPS = {
    "ade20k/ADE_train_00000001_color.png": "5 5 5 2 | 5 5 5 5 | 3 3 1 3 | 3 1 1 20",
    "ade20k/ADE_train_00000001_object.png": "11 11 11 11 | 11 11 11 11 | 14 14 14 14 | 6 6 6 22",
    "ade20k/ADE_train_00000001_part_1.png": "0 0 0 0 | 0 0 0 0 | 0 7 7 0 | 0 16 16 0",
    "ade20k/ADE_train_00000001_part_2.png": "0 0 0 0 | 0 0 0 0 | 0 0 21 0 | 0 0 0 0",
    "pascal/2008_000002_color.png": "2 3 3 5 | 3 4 4 5 | 3 1 1 3 | 3 1 1 3",
    "pascal/2008_000002_object.png": "6 6 6 7 | 6 13 13 7 | 6 13 13 6 | 17 13 13 17",
    "pascal/2008_000002_part.png": "0 0 0 0 | 0 19 19 0 | 0 15 15 0 | 0 15 15 0",
    "dtd/banded_0002_color.png": "2 2 2 2 | 1 1 1 1 | 2 2 2 2 | 1 1 1 1",
    "opensurfaces/100_color.png": "3 3 2 2 | 4 4 4 3 | 4 4 4 3 | 4 4 1 1",
    "opensurfaces/100_material.png": "0 0 18 18 | 12 12 12 0 | 12 12 12 0 | 12 12 0 0",
}


def worked_map(text: str) -> np.ndarray:
    """A §11 matrix written as 'a b c d | e f g h | ...' -> int32 (4, 4)."""
    return np.array([[int(v) for v in row.split()] for row in text.split("|")], dtype=np.int32)


def worked_image(i: int) -> np.ndarray:
    """The 8x8 RGB JPEG content used for row i of the worked example (any image will do)."""
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)


def write_worked_example(root: Path) -> Path:
    """Write the §11 example into ``root`` exactly as printed, with CRLF line ends."""

    def crlf(name: str, text: str) -> None:
        (root / name).write_bytes(text.replace("\n", "\r\n").encode("utf-8"))

    root.mkdir(parents=True, exist_ok=True)
    crlf("index.csv", WORKED_INDEX)
    crlf("category.csv", WORKED_CATEGORY)
    crlf("label.csv", WORKED_LABEL)
    for category, text in WORKED_CODES.items():
        crlf(f"c_{category}.csv", text)
    for relative, text in WORKED_MAPS.items():
        path = root / "images" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        values = worked_map(text)
        rgb = np.zeros((4, 4, 3), np.uint8)
        rgb[..., 0] = values
        Image.fromarray(rgb).save(path)
    for i, line in enumerate(WORKED_INDEX.splitlines()[1:]):
        path = root / "images" / line.split(",")[0]
        Image.fromarray(worked_image(i)).save(path, quality=75)
    return root


@pytest.fixture
def broden_example(tmp_path: Path) -> Path:
    """A fresh copy of the worked example of docs/broden-format.md §11 (CRLF, hand-written)."""
    return write_worked_example(tmp_path / "worked")


SYNTH_IMAGES = 60


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60-image, 224-px synthetic dataset (seed 0), shared by the whole session: do not modify it.

    36 scene images (objects, parts with up to two layers, materials, a scene), 12 material images,
    12 texture images; about 65 labels in six categories.
    """
    from netdissect.broden.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "synth224"
    synthesize(root, SYNTH_IMAGES, size=224, seed=0, workers=2)
    return root


def pytest_terminal_summary(terminalreporter) -> None:
    """The number of fuzz cases run (tests/fuzzing.py), when fuzz tests ran."""
    fuzzing = sys.modules.get("tests.fuzzing")
    if fuzzing is not None and fuzzing.CASES:
        per_target = ", ".join(f"{name} {n}" for name, n in sorted(fuzzing.CASES.items()))
        terminalreporter.write_line(f"fuzz cases run: {sum(fuzzing.CASES.values())} ({fuzzing.MODE}; {per_target})")


@pytest.fixture(autouse=True, scope="session")
def label_cache(tmp_path_factory: pytest.TempPathFactory):
    """``netdissect dissect`` packs labels into a cache (netdissect.labelcache): one per test session,
    never the user's ~/.cache (the commands the tests start inherit the variable)."""
    import os

    cache = tmp_path_factory.mktemp("netdissect-cache")
    previous = os.environ.get("NETDISSECT_CACHE")
    os.environ["NETDISSECT_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("NETDISSECT_CACHE", None)
    else:
        os.environ["NETDISSECT_CACHE"] = previous
