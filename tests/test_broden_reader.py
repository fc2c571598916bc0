"""BrodenDataset on the hand-written worked example of docs/broden-format.md §11."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from netdissect.broden import BrodenDataset
from netdissect.errors import NetDissectError
from tests.conftest import WORKED_MAPS, worked_map

CATEGORIES = ["color", "object", "part", "texture", "scene", "material"]


def test_tables_of_worked_example(broden_example: Path) -> None:
    ds = BrodenDataset(broden_example)
    assert ds.categories == CATEGORIES
    assert ds.num_labels == 23
    assert ds.label_names[0] == "-"
    assert ds.label_names[7] == "window" and ds.label_names[9] == "street-s" and ds.label_names[22] == "tree"
    assert ds.label_categories[7] == {"object": 1, "part": 1}
    assert ds.labels[1].coverage == pytest.approx(1.0625)
    assert ds.pixel_categories == ["color", "object", "part", "material"]
    expected = {
        **{n: "color" for n in (1, 2, 3, 4, 5, 20)},
        **{n: "object" for n in (6, 11, 13, 14, 17, 22)},
        **{n: "part" for n in (7, 15, 16, 19, 21)},
        8: "texture",
        10: "texture",
        9: "scene",
        12: "material",
        18: "material",
    }
    assert ds.primary.dtype == np.int64
    assert ds.primary[0] == -1
    assert {n: ds.categories[ds.primary[n]] for n in range(1, 23)} == expected
    assert list(ds.index["image"]) == [
        "dtd/banded_0002.jpg",
        "pascal/2008_000002.jpg",
        "opensurfaces/100.jpg",
        "ade20k/ADE_train_00000001.jpg",
    ]
    assert list(ds.index["split"]) == ["train", "train", "val", "val"]


def test_items_of_worked_example(broden_example: Path) -> None:
    ds = BrodenDataset(broden_example)
    assert len(ds) == 4
    m = {name.rsplit("/", 1)[1][:-4]: worked_map(text) for name, text in WORKED_MAPS.items()}
    expected_layers = [
        [m["banded_0002_color"]],
        [m["2008_000002_color"], m["2008_000002_object"], m["2008_000002_part"]],
        [m["100_color"], m["100_material"]],
        [m[f"ADE_train_00000001_{k}"] for k in ("color", "object", "part_1", "part_2")],
    ]
    expected_image_labels = [[8, 10], [], [], [9]]
    for i in range(4):
        item = ds[i]
        assert item["i"] == i
        assert item["pixel_labels"].dtype == torch.int32
        assert np.array_equal(item["pixel_labels"].numpy(), np.stack(expected_layers[i]))
        assert item["image_labels"].tolist() == expected_image_labels[i]
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 8, 8)
        decoded = np.asarray(Image.open(ds.image_path(i)).convert("RGB"))
        assert np.array_equal(item["image"].permute(1, 2, 0).numpy(), decoded)


def test_load_flags_and_subset(broden_example: Path) -> None:
    labels_only = BrodenDataset(broden_example, load_images=False)
    assert set(labels_only[3]) == {"i", "pixel_labels", "image_labels"}
    images_only = BrodenDataset(broden_example, load_labels=False)
    assert set(images_only[3]) == {"i", "image"}
    sub = BrodenDataset(broden_example, categories=["scene", "part"])
    assert sub.categories == ["part", "scene"]  # category.csv order is kept
    assert sub[3]["pixel_labels"].shape == (2, 4, 4)
    assert sub[3]["image_labels"].tolist() == [9]
    assert sub.primary[7] == 0  # window: part, the only candidate
    assert sub.primary[1] == -1  # black-c: colour not selected


def test_loader_with_workers_keeps_row_order(broden_example: Path) -> None:
    ds = BrodenDataset(broden_example)
    batches = list(ds.loader(batch_size=2, workers=2, start=1, stop=4))
    assert [b["i"].tolist() for b in batches] == [[1, 2], [3]]
    assert batches[0]["image"].shape == (2, 3, 8, 8)
    assert torch.equal(batches[1]["pixel_labels"][0], ds[3]["pixel_labels"])
    assert [t.tolist() for t in batches[1]["image_labels"]] == [[9]]


def test_fingerprint_is_sha256_of_three_files(broden_example: Path) -> None:
    data = b"".join((broden_example / n).read_bytes() for n in ("index.csv", "label.csv", "category.csv"))
    assert BrodenDataset(broden_example).fingerprint() == hashlib.sha256(data).hexdigest()


def test_tolerances_lf_gaps_zero_items_constant_layers_exponent(broden_example: Path) -> None:
    """§10: LF line ends, a gap in label numbers, int 0 items, an int in a pixel category,
    exponent-form coverage, unknown extra columns, quoted fields."""
    for path in broden_example.glob("*.csv"):
        path.write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))
    label = (broden_example / "label.csv").read_text().splitlines()
    label = [line for line in label if not line.startswith("21,")]  # 21 (pane) has no row: a gap
    label[0] += ",video_frequency"
    label[1:] = [line + ",0" for line in label[1:]]
    label[1] = label[1].replace("1,black-c,", '1,"black-c",')
    (broden_example / "label.csv").write_text("\n".join(label) + "\n")
    code = (broden_example / "c_color.csv").read_text().replace("0.0625", "6.25e-02")
    (broden_example / "c_color.csv").write_text(code)
    index = (broden_example / "index.csv").read_text()
    index = index.replace(",8;10,,", ",0;8;10;0,,").replace("100_color.png,,", "100_color.png,3,")
    (broden_example / "index.csv").write_text(index)
    ds = BrodenDataset(broden_example)
    assert ds.label_names[21] == "" and ds.label_names[1] == "black-c" and ds.num_labels == 23
    assert ds.categories[ds.primary[21]] == "part"
    assert ds.categories[ds.primary[20]] == "color"
    assert ds[0]["image_labels"].tolist() == [8, 10]
    layers = ds[2]["pixel_labels"]  # an int in a pixel category:
    assert layers.shape == (3, 4, 4) and bool((layers[1] == 3).all())  # a constant object layer


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda root: (root / "c_part.csv").unlink(), ["c_part.csv", "missing"]),
        (lambda root: _replace(root / "index.csv", ",train,8,8,4,4,dtd", ",train,8,x,4,4,dtd"), ["row 2", "'iw'"]),
        (
            lambda root: _replace(root / "label.csv", "6,wall,object(2),2,", "6,wall,object(2),two,"),
            ["label.csv", "row 7", "'frequency'"],
        ),
        (
            lambda root: _replace(root / "index.csv", "dtd/banded_0002.jpg,train", "../banded_0002.jpg,train"),
            ["row 2", "'image'", "relative path"],
        ),
    ],
)
def test_bad_tables_raise_with_place(broden_example: Path, edit, words: list[str]) -> None:
    edit(broden_example)
    with pytest.raises(NetDissectError) as err:
        BrodenDataset(broden_example)
    for word in words:
        assert word in str(err.value)


def test_bad_png_raises_when_read(broden_example: Path) -> None:
    Image.fromarray(np.zeros((5, 4, 3), np.uint8)).save(broden_example / "images/opensurfaces/100_material.png")
    ds = BrodenDataset(broden_example)
    with pytest.raises(NetDissectError, match=r"100_material.png.*row 4.*5x4.*sh=4"):
        ds[2]
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (44, 1, 0)  # 300 > the last label, 22
    Image.fromarray(rgb).save(broden_example / "images/opensurfaces/100_material.png")
    with pytest.raises(NetDissectError, match="label number 300"):
        ds[2]


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
