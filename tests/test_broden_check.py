"""`netdissect broden check`: one planted defect per kind, each found with its file, row and column."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from netdissect.broden.check import check_broden
from netdissect.cli import main


def replace(path: Path, old: str, new: str) -> None:
    data = path.read_bytes()
    assert old.encode() in data, old
    path.write_bytes(data.replace(old.encode(), new.encode(), 1))


def save_map(path: Path, values: np.ndarray, blue: int = 0) -> None:
    rgb = np.zeros(values.shape + (3,), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = values % 256, values // 256, blue
    Image.fromarray(rgb).save(path)


def add_column(path: Path) -> None:
    lines = path.read_bytes().split(b"\r\n")[:-1]
    path.write_bytes(b"".join(line + (b",extra" if k == 0 else b",") + b"\r\n" for k, line in enumerate(lines)))


MATERIAL = "images/opensurfaces/100_material.png"
MATERIAL_MAP = np.array([[0, 0, 18, 18], [12, 12, 12, 0], [12, 12, 12, 0], [12, 12, 0, 0]])

# (defect, file named in the problem, words the problem must contain)
DEFECTS: dict[str, tuple[Callable[[Path], None], str, list[str]]] = {
    "missing jpeg": (
        lambda r: (r / "images/dtd/banded_0002.jpg").unlink(),
        "images/dtd/banded_0002.jpg",
        ["missing", "row 2", "'image'"],
    ),
    "missing png": (
        lambda r: (r / "images/pascal/2008_000002_part.png").unlink(),
        "images/pascal/2008_000002_part.png",
        ["missing", "row 3", "'part'"],
    ),
    "unreadable png": (
        lambda r: (r / "images/ade20k/ADE_train_00000001_part_2.png").write_bytes(b"not a png"),
        "images/ade20k/ADE_train_00000001_part_2.png",
        ["cannot be decoded", "row 5", "'part'"],
    ),
    "png size": (
        lambda r: save_map(r / MATERIAL, np.zeros((5, 4), int)),
        MATERIAL,
        ["5x4", "sh=4", "row 4", "'material'"],
    ),
    "jpeg size": (
        lambda r: Image.new("RGB", (8, 9)).save(r / "images/opensurfaces/100.jpg"),
        "images/opensurfaces/100.jpg",
        ["9x8", "ih=8", "row 4"],
    ),
    "malformed cell": (
        lambda r: replace(r / "index.csv", "100_color.png,,", "100_color.png,abc,"),
        "index.csv",
        ["row 4", "'object'", "'abc'"],
    ),
    "malformed size": (
        lambda r: replace(r / "index.csv", ",train,8,8,4,4,pascal", ",train,8,8,four,4,pascal"),
        "index.csv",
        ["row 3", "'sh'", "'four'"],
    ),
    "bad split": (
        lambda r: replace(r / "index.csv", "100.jpg,val", "100.jpg,test"),
        "index.csv",
        ["row 4", "'split'", "'test'"],
    ),
    "number of another category": (
        lambda r: save_map(r / MATERIAL, np.where(MATERIAL_MAP == 18, 7, MATERIAL_MAP)),
        MATERIAL,
        ["7", "not listed in c_material.csv", "row 4", "'material'"],
    ),
    "number beyond label.csv": (
        lambda r: save_map(r / MATERIAL, np.where(MATERIAL_MAP == 18, 300, MATERIAL_MAP)),
        MATERIAL,
        ["300", "not listed in c_material.csv", "row 4"],
    ),
    "blue channel": (lambda r: save_map(r / MATERIAL, MATERIAL_MAP, blue=9), MATERIAL, ["blue channel", "row 4"]),
    "colour hole": (
        lambda r: save_map(r / "images/dtd/banded_0002_color.png", np.array([[0, 2, 2, 2]] * 4)),
        "images/dtd/banded_0002_color.png",
        ["4 unlabeled", "row 2", "'color'"],
    ),
    "int label unknown": (
        lambda r: replace(r / "index.csv", ",8;10,", ",8;99,"),
        "index.csv",
        ["99", "missing from label.csv", "row 2", "'texture'"],
    ),
    "int label of another category": (
        lambda r: replace(r / "index.csv", ",8;10,", ",8;9,"),
        "index.csv",
        ["9", "not listed in c_texture.csv", "row 2", "'texture'"],
    ),
    "c_ number missing from label.csv": (
        lambda r: replace(r / "label.csv", "21,pane,part(1),1,0.062500,\r\n", ""),
        "c_part.csv",
        ["21", "missing from label.csv", "'number'"],
    ),
    "missing c_ file": (lambda r: (r / "c_scene.csv").unlink(), "c_scene.csv", ["missing"]),
    "category count": (
        lambda r: replace(r / "category.csv", "part,7,21,5,5", "part,7,21,6,5"),
        "category.csv",
        ["'part'", "count is 6", "'count'"],
    ),
    "label frequency": (
        lambda r: replace(r / "label.csv", "6,wall,object(2),2,", "6,wall,object(2),x,"),
        "label.csv",
        ["row 7", "'frequency'", "'x'"],
    ),
    "label category field": (
        lambda r: replace(r / "label.csv", "6,wall,object(2),2,", "6,wall,part(2),2,"),
        "label.csv",
        ["label 6", "'category'"],
    ),
    "duplicate image": (
        lambda r: replace(r / "index.csv", "opensurfaces/100.jpg,val", "dtd/banded_0002.jpg,val"),
        "index.csv",
        ["row 4", "already listed in row 2"],
    ),
    "unknown column": (lambda r: add_column(r / "index.csv"), "index.csv", ["row 1", "'extra'"]),
    "code order": (
        lambda r: replace(r / "c_material.csv", "2,18,glass", "3,18,glass"),
        "c_material.csv",
        ["1..2", "'code'"],
    ),
}


def test_clean_example_has_no_problems(broden_example: Path) -> None:
    assert check_broden(broden_example, workers=1) == []


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_planted_defect_is_reported(broden_example: Path, defect: str) -> None:
    plant, file, words = DEFECTS[defect]
    plant(broden_example)
    problems = check_broden(broden_example, workers=1)
    matching = [p for p in problems if p.startswith(str(broden_example / file)) and all(w in p for w in words)]
    assert matching, problems


def test_every_problem_is_reported_and_cli_exit_codes(broden_example: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["broden", "check", str(broden_example)]) == 0
    assert "no problems" in capsys.readouterr().out
    for defect in ("missing jpeg", "png size", "bad split", "category count", "colour hole"):
        DEFECTS[defect][0](broden_example)
    assert main(["broden", "check", str(broden_example)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5
    assert main(["broden", "check", str(broden_example / "nowhere")]) == 2


def test_synthetic_dataset_is_clean_with_workers(synth_dataset: Path, tmp_path: Path) -> None:
    assert check_broden(synth_dataset, workers=2) == []
    copy = shutil.copytree(synth_dataset, tmp_path / "copy")
    victim = sorted((copy / "images/synth_scene").glob("*_object.png"))[3]
    victim.unlink()
    problems = check_broden(copy, workers=2)
    assert len(problems) == 1 and victim.name in problems[0] and "missing" in problems[0]
