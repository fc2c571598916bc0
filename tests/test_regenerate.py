"""The merge: naming rules, resizing, and a full regeneration from fixtures of all four sources."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
from PIL import Image

from netdissect.broden import colors
from netdissect.broden.format import decode_label_png, split_hash
from netdissect.broden.sources.fixtures import (
    MINI_PART2IND,
    AdeImage,
    PascalImage,
    PascalObject,
    write_ade20k,
    write_dtd,
    write_opensurfaces,
    write_pascal,
)
from netdissect.broden.sources.merge import color_labels, color_lut, label_shares, load_layers, regenerate, save_layers
from netdissect.broden.sources.naming import clean_names, name_keys, rewrite_synonyms
from netdissect.broden.writer import nearest_indices, resize_labels
from netdissect.cli import main
from netdissect.errors import NetDissectError

# ---------------------------------------------------------------------------------------------------
# naming (docs/broden-sources.md §6.2-6.3)


@pytest.mark.parametrize(
    "names, expected",
    [
        (["left arm"], ["arm"]),
        (["paper", "tissue"], ["paper"]),
        (["fabric", "cloth"], ["fabric", "cloth", "textile"]),
        (["person head"], ["head"]),
        (["airport-airport-s"], ["airport-s", "airport-airport-s"]),
        (["windopane"], ["window", "windopane"]),
        (["sky"], ["sky"]),
    ],
)
def test_synonym_rewrite(names, expected):
    assert rewrite_synonyms(names) == expected


def test_clean_names_lowercases_and_drops_unlabeled():
    assert clean_names(["Wood", "", "-", "Left Arm"]) == ["arm", "wood"]  # "arm" makes "left arm" confusing


def test_claiming_and_merging_examples():
    freq = {
        ("ade20k", "object", 1): 900,
        ("pascal", "object", 5): 300,
        ("ade20k", "object", 2): 50,
        ("ade20k", "object", 3): 40,
        ("ade20k", "part", 7): 20,
        ("dtd", "texture", 1): 5,
    }
    cov = {
        ("ade20k", "object", 1): 90.0,
        ("pascal", "object", 5): 30.0,
        ("ade20k", "object", 2): 50 * 0.05,
        ("ade20k", "object", 3): 40 * 0.30,
        ("ade20k", "part", 7): 20 * 0.25,
        ("dtd", "texture", 1): 5.0,
    }
    names = {
        ("ade20k", "object", 1): ["windowpane", "window"],
        ("pascal", "object", 5): ["window"],
        ("ade20k", "object", 2): ["x"],
        ("ade20k", "object", 3): ["y"],
        ("ade20k", "part", 7): ["x", "y"],
        ("dtd", "texture", 1): [],
    }
    naming = name_keys(freq, cov, names.__getitem__)
    assert naming.label[("ade20k", "object", 1)] == "windowpane"  # owns both, named by the first
    assert naming.label[("pascal", "object", 5)] == "windowpane"  # B merges into its owner's label
    assert naming.label[("ade20k", "part", 7)] == "y"  # C: closest mean size (0.25 vs 0.30)
    assert naming.label[("dtd", "texture", 1)] == "-"
    assert naming.syns() == {"windowpane": ["window"]}


def test_merge_tie_prefers_larger_owner_frequency():
    freq = {("a", "o", 1): 10, ("a", "o", 2): 20, ("b", "p", 1): 5}
    cov = {("a", "o", 1): 2.0, ("a", "o", 2): 4.0, ("b", "p", 1): 1.0}  # same mean size 0.2
    names = {("a", "o", 1): ["x"], ("a", "o", 2): ["y"], ("b", "p", 1): ["x", "y"]}
    assert name_keys(freq, cov, names.__getitem__).label[("b", "p", 1)] == "y"


# ---------------------------------------------------------------------------------------------------
# resizing and statistics


def test_nearest_indices_examples():
    assert nearest_indices(8, 4).tolist() == [0, 2, 5, 7]
    rows = nearest_indices(375, 112)
    assert rows[:6].tolist() == [0, 3, 7, 10, 13, 17] and rows[-2:].tolist() == [371, 374]
    assert nearest_indices(3, 5).tolist() == [0, 1, 1, 2, 2]


@pytest.mark.parametrize("shape", [(375, 500), (8, 8), (5, 3), (113, 227)])
def test_resize_labels_matches_brute_force_and_zoom(shape):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 50, size=(2,) + shape)
    side = 7
    out = resize_labels(labels, side)
    h, w = shape
    brute = np.array(
        [
            [
                [
                    labels[
                        k,
                        int(np.floor(i * ((h - 1) / (side - 1)) + 0.5)),
                        int(np.floor(j * ((w - 1) / (side - 1)) + 0.5)),
                    ]
                    for j in range(side)
                ]
                for i in range(side)
            ]
            for k in range(2)
        ]
    )
    np.testing.assert_array_equal(out, brute)
    zoomed = scipy.ndimage.zoom(
        labels[0], (side / h, side / w), order=0, grid_mode=False
    )  # docs/broden-sources.md §6.6: the same
    assert zoomed.shape == (side, side)
    np.testing.assert_array_equal(out[0], zoomed)


def test_label_shares():
    stack = np.array([[[1, 1], [0, 2]], [[1, 0], [0, 0]]])
    assert label_shares(stack) == {1: 0.75, 2: 0.25}  # over all layers, divided by H*W
    assert label_shares([3, 5]) == {3: 1.0, 5: 1.0}
    assert label_shares(0) == {0: 1.0}
    assert label_shares([]) == {}


def test_flat_colour_lookup_equals_the_colour_module():
    rgb = np.random.default_rng(1).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    table = colors.fallback_table()
    np.testing.assert_array_equal(color_labels(rgb, color_lut(table)), colors.name_colors(rgb, table) + 1)
    other = np.random.default_rng(2).integers(0, 11, size=(32, 32, 32), dtype=np.uint8)
    np.testing.assert_array_equal(color_labels(rgb, color_lut(other)), colors.name_colors(rgb, other) + 1)


def test_layers_survive_between_passes(tmp_path):
    layers = {
        "object": np.array([[0, 6000], [3, 1]]),
        "part": np.zeros((2, 2, 2), int),
        "scene": 4,
        "texture": [3, 1],
        "none": [],
    }
    save_layers(tmp_path / "0.npz", layers)
    back = load_layers(tmp_path / "0.npz")
    np.testing.assert_array_equal(back["object"], layers["object"])
    assert back["part"].shape == (2, 2, 2)
    assert (back["scene"], back["texture"], back["none"]) == ([4], [3, 1], [])


# ---------------------------------------------------------------------------------------------------
# a full build from fixtures of all four sources

RED, BLUE, GREEN, WHITE = (250, 10, 10), (10, 10, 250), (20, 200, 20), (250, 250, 250)
ADE_NAMES = ["wall", "car, auto, automobile", "windowpane, window", "wheel"]


def _flat(shape, top, bottom):
    rgb = np.empty(shape + (3,), np.uint8)
    rgb[: shape[0] // 2] = top
    rgb[shape[0] // 2 :] = bottom
    return rgb


def write_sources(root: Path) -> dict[str, Path]:
    car = np.ones((12, 20), int)  # wall everywhere ...
    car[:6, 10:] = 2  # ... a car top right
    car[8:, :4] = 3  # a window bottom left
    wheel = np.zeros((12, 20), int)
    wheel[4:6, 12:16] = 4
    window_part = np.zeros((12, 20), int)
    window_part[1, 11] = 3
    ade_b = np.full((10, 10), 3)
    ade = write_ade20k(
        root / "ade20k",
        [
            AdeImage(
                "ADE_train_00000001.jpg",
                "training/s/street",
                "street",
                _flat((12, 20), RED, BLUE),
                car,
                [wheel, window_part],
            ),
            AdeImage("ADE_val_00000001.jpg", "validation/b/bedroom", "bedroom", _flat((10, 10), WHITE, GREEN), ade_b),
        ],
        ADE_NAMES,
    )
    ctx = np.full((9, 6), 3, np.uint16)
    ctx[:4] = 5  # window (PASCAL-Context)
    cat_mask = np.zeros((9, 6), np.uint8)
    cat_mask[4:] = 1
    head = np.zeros((9, 6), np.uint8)
    head[4:6, :3] = 1
    pascal = write_pascal(
        root / "pascal",
        [
            PascalImage(
                "2008_000002", _flat((9, 6), BLUE, RED), ctx, [PascalObject("cat", 8, cat_mask, [("head", head)])]
            ),
            PascalImage("2008_000003", _flat((6, 6), GREEN, GREEN), np.full((6, 6), 1, np.uint16), []),
        ],
        {1: "cat", 3: "wall", 4: "unknown", 5: "window"},
        MINI_PART2IND,
    )
    material = np.zeros((24, 32, 3), np.uint8)
    material[:12, :, 0] = 1  # Wood on top
    material[12:, :, 0] = 2  # Fabric/cloth below
    surfaces = write_opensurfaces(
        root / "opensurfaces",
        [
            (100, _flat((48, 64), WHITE, RED), material),
            (7, _flat((40, 40), BLUE, BLUE), np.zeros((20, 20, 3), np.uint8)),
        ],
        [(1, "Wood", 1), (2, "Fabric/cloth", 2), (3, "Glass", 3)],
    )
    dtd = write_dtd(
        root / "dtd",
        [
            ("banded/banded_0002.jpg", _flat((30, 20), WHITE, GREEN), ["banded", "striped"]),
            ("striped/striped_0001.jpg", _flat((16, 16), RED, RED), ["striped"]),
        ],
    )
    return {
        "ade20k": ade,
        "pascal": pascal,
        "opensurfaces": surfaces,
        "dtd": dtd,
        "car": car,
        "wheel": wheel,
        "material": material[..., 0],
    }


def read_csv(path: Path) -> list[dict[str, str]]:
    data = path.read_bytes()
    assert data.endswith(b"\r\n") and b"\n" not in data.replace(b"\r\n", b"")  # CRLF everywhere
    return list(csv.DictReader(data.decode("utf-8").splitlines()))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("regen")
    src = write_sources(root / "sources")
    out = root / "broden_regen_16"
    regenerate(
        out,
        16,
        {k: src[k] for k in ("ade20k", "pascal", "opensurfaces", "dtd")},
        min_frequency=1,
        min_coverage=0.0,
        workers=2,
        progress=False,
    )
    return out, src


def names_by_number(out: Path) -> dict[int, str]:
    return {0: "-", **{int(r["number"]): r["name"] for r in read_csv(out / "label.csv")}}


def test_build_passes_the_reader_and_checker(built):
    out, _ = built
    from netdissect.broden import BrodenDataset

    ds = BrodenDataset(out)
    assert len(ds) == 8
    assert set(ds.categories) == {"color", "object", "part", "material", "scene", "texture"}
    item = ds[0]
    assert tuple(item["image"].shape) == (3, 16, 16) and item["pixel_labels"].shape[1:] == (8, 8)
    from netdissect.broden import check_broden

    assert check_broden(out) == []


def test_index_rows_sorted_by_split_hash(built):
    out, _ = built
    rows = read_csv(out / "index.csv")
    hashes = [split_hash(r["image"]) for r in rows]
    assert hashes == sorted(hashes)
    assert all(r["split"] == ("train" if split_hash(r["image"]) <= 0.7 else "val") for r in rows)
    assert {r["image"] for r in rows} == {
        "ade20k/ADE_train_00000001.jpg",
        "ade20k/ADE_val_00000001.jpg",
        "pascal/2008_000002.jpg",
        "pascal/2008_000003.jpg",
        "opensurfaces/100.jpg",
        "opensurfaces/7.jpg",
        "dtd/banded_0002.jpg",
        "dtd/striped_0001.jpg",
    }
    by_image = {r["image"]: r for r in rows}
    ade = by_image["ade20k/ADE_train_00000001.jpg"]
    assert ade["part"] == "ade20k/ADE_train_00000001_part_1.png;ade20k/ADE_train_00000001_part_2.png"
    assert by_image["ade20k/ADE_val_00000001.jpg"]["part"] == ""
    assert by_image["pascal/2008_000002.jpg"]["part"] == "pascal/2008_000002_part.png"
    assert by_image["pascal/2008_000003.jpg"]["part"] == ""
    assert all((r["ih"], r["iw"], r["sh"], r["sw"]) == ("16", "16", "8", "8") for r in rows)
    names = names_by_number(out)
    assert names[int(ade["scene"])] == "street-s"
    assert [names[int(v)] for v in by_image["dtd/banded_0002.jpg"]["texture"].split(";")] == ["banded", "striped"]


def test_car_pixels_end_up_as_car_after_resizing(built):
    out, src = built
    names = names_by_number(out)
    got = decode_label_png(out / "images/ade20k/ADE_train_00000001_object.png")
    rows, cols = nearest_indices(12, 8), nearest_indices(20, 8)
    source_names = {1: "wall", 2: "car", 3: "windowpane"}
    expected = np.vectorize(source_names.get)(src["car"][np.ix_(rows, cols)])
    assert (np.vectorize(names.get)(got) == expected).all()
    assert (np.vectorize(names.get)(got[:3, 4:]) == "car").all()  # top right is car
    wheel = decode_label_png(out / "images/ade20k/ADE_train_00000001_part_1.png")
    assert names[int(wheel[rows.tolist().index(5), cols.tolist().index(14)])] == "wheel"


def test_materials_resized_independently_of_the_photo(built):
    out, src = built
    names = names_by_number(out)
    got = decode_label_png(out / "images/opensurfaces/100_material.png")
    expected = np.vectorize({1: "wood", 2: "fabric"}.get)(
        src["material"][np.ix_(nearest_indices(24, 8), nearest_indices(32, 8))]
    )
    assert (np.vectorize(names.get)(got) == expected).all()
    assert not decode_label_png(out / "images/opensurfaces/7_material.png").any()  # all-black label PNG
    assert Image.open(out / "images/opensurfaces/100.jpg").size == (16, 16)


def test_window_merges_across_sources_and_categories(built):
    out, _ = built
    labels = {r["name"]: r for r in read_csv(out / "label.csv")}
    assert "window" not in labels
    window = labels["windowpane"]
    assert sorted(c.split("(")[0] for c in window["category"].split(";")) == ["object", "part"]
    assert "window" in window["syns"].split(";")
    assert labels["car"]["syns"].split(";") == ["auto", "automobile"]
    pascal_object = decode_label_png(out / "images/pascal/2008_000002_object.png")
    assert labels["windowpane"]["number"] == str(pascal_object[0, 0])  # PASCAL-Context window
    assert "fabric" in labels and "cloth" in labels["fabric"]["syns"]
    # the "head" part of the PASCAL cat
    part = decode_label_png(out / "images/pascal/2008_000002_part.png")
    assert labels["head"]["number"] == str(part[nearest_indices(9, 8).tolist().index(5), 0])
    assert "-" not in labels and "unknown" not in labels


def test_colour_labels_from_the_original_pixels(built):
    out, _ = built
    names = names_by_number(out)
    color = decode_label_png(out / "images/ade20k/ADE_train_00000001_color.png")
    assert names[int(color[0, 0])] == "red-c" and names[int(color[-1, -1])] == "blue-c"
    assert color.min() > 0
    readme = (out / "README.txt").read_text()
    assert "fallback" in readme and "ade20k: 2 images" in readme
    syns = (out / "syns.txt").read_text()
    assert "ade20k/object#3: 2, (windowpane;window)" in syns


def test_filtered_scene_becomes_zero(built, tmp_path):
    _, src = built
    objects = np.ones((6, 6), int)
    rgb = _flat((6, 6), RED, BLUE)
    ade = write_ade20k(
        tmp_path / "ade",
        [
            AdeImage(f"ADE_train_0000000{i}.jpg", f"training/x/{scene}", scene, rgb, objects)
            for i, scene in enumerate(["street", "street", "bedroom"], 1)
        ],
        ADE_NAMES,
    )
    out = tmp_path / "filtered"
    regenerate(
        out, 16, {"ade20k": ade, "dtd": src["dtd"]}, min_frequency=2, min_coverage=0.0, workers=1, progress=False
    )
    rows = {r["image"]: r for r in read_csv(out / "index.csv")}
    names = names_by_number(out)
    assert names[int(rows["ade20k/ADE_train_00000001.jpg"]["scene"])] == "street-s"
    assert rows["ade20k/ADE_train_00000003.jpg"]["scene"] == "0"  # bedroom-s seen once: dropped
    assert "striped" in names.values() and "banded" not in names.values()
    assert "part" not in read_csv(out / "index.csv")[0]  # no part anywhere: no column
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_category_empty_in_one_source_but_not_another(built, tmp_path):
    _, src = built
    grey = np.full((6, 6, 3), 128, np.uint8)
    pascal = write_pascal(
        tmp_path / "pascal",
        [
            PascalImage("2008_000010", grey, np.full((6, 6), 1, np.uint16)),
            PascalImage("2008_000011", grey, np.full((6, 6), 1, np.uint16)),
        ],
        {1: "cat"},
        MINI_PART2IND,
    )  # no part data at all
    out = tmp_path / "out"
    regenerate(
        out, 16, {"ade20k": src["ade20k"], "pascal": pascal}, min_frequency=1, min_coverage=0, workers=1, progress=False
    )
    rows = {r["image"]: r for r in read_csv(out / "index.csv")}
    assert rows["pascal/2008_000010.jpg"]["part"] == ""
    assert rows["ade20k/ADE_train_00000001.jpg"]["part"].count(".png") == 2


def test_bad_input_leaves_no_output(built, tmp_path):
    _, src = built
    ade = tmp_path / "ade20k"
    shutil.copytree(src["ade20k"], ade)
    next(ade.rglob("ADE_val_00000001_seg.png")).unlink()
    out = tmp_path / "out"
    with pytest.raises(NetDissectError, match="ADE_val_00000001_seg.png"):
        regenerate(out, 16, {"ade20k": ade}, min_frequency=1, min_coverage=0, workers=2, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ade20k"]
    with pytest.raises(NetDissectError, match="fetch_source_archive.*datasets/sources/dtd/dtd-r1.0.1"):
        regenerate(out, 16, {"dtd": tmp_path / "no_dtd"}, progress=False)
    out.mkdir()
    (out / "x").write_text("")
    with pytest.raises(NetDissectError, match="already exists"):
        regenerate(out, 16, {"dtd": src["dtd"]}, progress=False)
    with pytest.raises(NetDissectError, match="no label passes"):
        regenerate(tmp_path / "out2", 16, {"dtd": src["dtd"]}, progress=False)  # default thresholds
    bad_table = tmp_path / "table.npy"
    np.save(bad_table, np.zeros((32, 32, 32), np.uint8))
    with pytest.raises(NetDissectError, match="not the published colour-name table"):
        regenerate(tmp_path / "out3", 16, {"dtd": src["dtd"]}, color_table=bad_table, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ade20k", "out", "table.npy"]


def test_published_colour_table_is_used_when_it_checks_out(built, tmp_path, monkeypatch):
    _, src = built
    table = np.full((32, 32, 32), colors.COLOR_NAMES.index("brown"), np.uint8)
    np.save(tmp_path / "table.npy", table)
    # stand-in for the published table: make its checksum the expected one
    monkeypatch.setattr(colors, "ORIGINAL_TABLE_SHA256", hashlib.sha256(table.tobytes()).hexdigest())
    out = tmp_path / "out"
    regenerate(
        out,
        16,
        {"dtd": src["dtd"]},
        min_frequency=1,
        min_coverage=0,
        workers=1,
        color_table=tmp_path / "table.npy",
        progress=False,
    )
    names = names_by_number(out)
    assert {names[int(v)] for v in np.unique(decode_label_png(out / "images/dtd/striped_0001_color.png"))} == {
        "brown-c"
    }
    assert "published colour-name table" in (out / "README.txt").read_text()


def test_missing_image_names_the_file(built, tmp_path):
    _, src = built
    dtd = tmp_path / "dtd"
    shutil.copytree(src["dtd"], dtd)
    next(dtd.rglob("striped_0001.jpg")).unlink()
    with pytest.raises(NetDissectError, match="striped_0001.jpg is missing"):
        regenerate(tmp_path / "out", 16, {"dtd": dtd}, min_frequency=1, min_coverage=0, workers=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_regenerate(built, tmp_path, capsys):
    _, src = built
    out = tmp_path / "cli_out"
    code = main(
        [
            "broden",
            "regenerate",
            "--out",
            str(out),
            "--size",
            "10",
            "--dtd",
            str(src["dtd"]),
            "--opensurfaces",
            str(src["opensurfaces"]),
            "--min-frequency",
            "1",
            "--min-coverage",
            "0",
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0
    assert Image.open(out / "images/dtd/banded_0002.jpg").size == (10, 10)
    assert decode_label_png(out / "images/dtd/banded_0002_color.png").shape == (5, 5)
    code = main(
        [
            "broden",
            "regenerate",
            "--out",
            str(tmp_path / "x"),
            "--size",
            "10",
            "--ade20k",
            str(tmp_path / "missing"),
            "--no-progress",
        ]
    )
    assert code == 2 and "datasets/sources/ade20k/ADE20K_2016_07_26" in capsys.readouterr().err
