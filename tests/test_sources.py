"""Source adapters read fixtures written in each source's real on-disk format (docs/broden-sources.md §1-4)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io as scipy_io
from PIL import Image

from netdissect.broden.sources.ade20k import ADE20K
from netdissect.broden.sources.dtd import DTD
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
from netdissect.broden.sources.opensurfaces import OpenSurfaces, material_names
from netdissect.broden.sources.pascal import Pascal, parse_part2ind, part_codes, readable
from netdissect.errors import NetDissectError

OBJECTNAMES = ["wall", "person, individual, someone", "windowpane, window", "door"]


def ade_fixture(root):
    a = np.zeros((6, 10), int)
    a[:, :5] = 1
    a[:, 5:] = 2
    a[0, 0] = 4  # a door pixel at the corner
    parts1 = np.zeros((6, 10), int)
    parts1[2:4, 6:8] = 3
    parts2 = np.zeros((6, 10), int)
    parts2[3, 7] = 4
    b = np.full((8, 8), 3)
    rgb_a = np.full((6, 10, 3), 200, np.uint8)
    rgb_b = np.full((8, 8, 3), 20, np.uint8)
    images = [
        AdeImage("ADE_train_00000001.jpg", "training/s/street", "street", rgb_a, a, [parts1, parts2]),
        AdeImage("ADE_val_00000001.jpg", "validation/b/bedroom", "bedroom", rgb_b, b),
    ]
    return write_ade20k(root, images, OBJECTNAMES), (a, parts1, parts2, b)


def test_ade20k_reads_objects_parts_scenes(tmp_path):
    root, (a, p1, p2, b) = ade_fixture(tmp_path / "ade20k")
    ade = ADE20K(root)
    images = ade.images()
    assert [im.stem for im in images] == ["ADE_train_00000001", "ADE_val_00000001"]
    assert images[0].jpeg == root / "ADE20K_2016_07_26/images/training/s/street/ADE_train_00000001.jpg"
    first = ade.labels(images[0])
    np.testing.assert_array_equal(first["object"], a)
    assert first["part"].shape == (2, 6, 10)
    np.testing.assert_array_equal(first["part"][1], p2)
    second = ade.labels(images[1])
    np.testing.assert_array_equal(second["object"], b)
    assert second["part"] == []
    # scenes sorted: bedroom = 1, street = 2
    assert (first["scene"], second["scene"]) == (2, 1)
    assert ade.names("scene", 2) == ["street-s"]
    assert ade.names("object", 2) == ["person", "individual", "someone"]
    assert ade.names("part", 3) == ["windowpane", "window"]
    assert ade.names("object", 0) == []


def test_ade20k_class_numbers_above_255(tmp_path):
    names = [f"c{k}" for k in range(1, 701)]
    objects = np.array([[300, 699], [1, 0]])
    images = [
        AdeImage("ADE_train_00000001.jpg", "training/a/x", "a/b", np.zeros((2, 2, 3), np.uint8), objects),
        AdeImage("ADE_train_00000002.jpg", "training/a/x", "~odd", np.zeros((2, 2, 3), np.uint8), objects),
    ]
    ade = ADE20K(write_ade20k(tmp_path, images, names) / "ADE20K_2016_07_26")  # the version folder works too
    np.testing.assert_array_equal(ade.labels(ade.images()[0])["object"], objects)
    assert ade.names("object", 699) == ["c699"]
    assert ade.names("scene", ade.labels(ade.images()[0])["scene"]) == ["a-b-s"]
    assert ade.labels(ade.images()[1])["scene"] == 0  # "~..." scenes are unlabeled


def test_ade20k_errors_name_the_file(tmp_path):
    with pytest.raises(NetDissectError, match="fetch_source_archive.*ADE20K_2016_07_26.zip"):
        ADE20K(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NetDissectError, match="index_ade20k.mat"):
        ADE20K(tmp_path / "empty")
    root, _ = ade_fixture(tmp_path / "ade")
    ade = ADE20K(root)
    seg = root / "ADE20K_2016_07_26/images/validation/b/bedroom/ADE_val_00000001_seg.png"
    seg.unlink()
    with pytest.raises(NetDissectError, match="no annotation file .*ADE_val_00000001_seg.png"):
        ade.labels(ade.images()[1])
    seg.write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    with pytest.raises(NetDissectError, match="ADE_val_00000001_seg.png.*corrupt"):
        ade.labels(ade.images()[1])
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(seg)  # class 9*256+90: no such name
    with pytest.raises(NetDissectError, match="no name"):
        ade.labels(ade.images()[1])
    mat = root / "ADE20K_2016_07_26/index_ade20k.mat"
    mat.write_bytes(mat.read_bytes()[:100])
    with pytest.raises(NetDissectError, match="index_ade20k.mat"):
        ADE20K(root)


def test_part2ind_mini_file_parses_as_the_spec_says():
    objects = parse_part2ind(MINI_PART2IND)
    assert objects[8] == (
        "cat",
        {
            "head": "head",
            "leye": "eye",
            "whisker_1": "whisker",
            "whisker_2": "whisker",
            "whisker_3": "whisker",
            "whisker_4": "whisker",
        },
    )
    name, dog = objects[12]
    assert name == "dog"
    assert sorted(set(dog.values())) == ["eye", "head", "muzzle", "whisker"]  # remove() not applied
    codes, names = part_codes(objects)
    assert names[codes[(8, "head")]] == "head" and names[codes[(12, "head")]] == "head"
    assert codes[(8, "head")] != codes[(12, "head")]  # separate keys per object
    assert codes[(8, "whisker_1")] == codes[(8, "whisker_4")]


def test_part2ind_forms_of_the_real_file():
    text = """% [aeroplane]
pimap{1}('lwing')       = 3;                % left wing
for ii = 1:2
    pimap{1}(sprintf('engine_%d', ii)) = 10+ii;
end
% [boat]
% only has silhouette
% [car]
pimap{7}('frontside')   = 1;                % front side
pimap{7}('fliplate')    = 7;                % front license plate
pimap{7}('leftmirror')  = 8;
for ii = 1:3
    pimap{7}(sprintf('door_%d', ii)) = 10+ii;
end
"""
    objects = parse_part2ind(text)
    assert objects[1] == ("airplane", {"lwing": "wing", "engine_1": "engine", "engine_2": "engine"})
    assert objects[2] == ("boat", {"silhouette": "silhouette"})
    assert objects[7][1] == {
        "frontside": "",
        "fliplate": "license plate",
        "leftmirror": "mirror",
        "door_1": "door",
        "door_2": "door",
        "door_3": "door",
    }
    codes, _ = part_codes(objects)
    assert codes[(7, "frontside")] == 0  # empty name = unlabeled
    assert readable("lfho") == "hoof" and readable("bwheel") == "wheel"


def pascal_fixture(root):
    h, w = 5, 7
    context = np.zeros((h, w), np.uint16)
    context[:, :3] = 1  # cat
    context[:, 3:] = 3  # wall
    context[0, 0] = 4  # unknown
    cat = np.zeros((h, w), np.uint8)
    cat[:, :3] = 1
    head = np.zeros((h, w), np.uint8)
    head[0:2, 0:2] = 1
    eye = np.zeros((h, w), np.uint8)
    eye[0, 1] = 1
    dog = np.zeros((h, w), np.uint8)
    dog[4, 4] = 1
    first = PascalImage(
        "2008_000002",
        np.full((h, w, 3), 128, np.uint8),
        context,
        [PascalObject("cat", 8, cat, [("head", head), ("leye", eye)]), PascalObject("dog", 12, dog)],
    )
    second = PascalImage("2008_000003", np.full((4, 4, 3), 60, np.uint8), np.full((4, 4), 2, np.uint16), [])
    labels = {1: "cat", 2: "dog", 3: "wall", 4: "unknown"}
    return write_pascal(root, [second, first], labels, MINI_PART2IND), head, eye


def test_pascal_context_objects_and_part_map(tmp_path):
    root, head, eye = pascal_fixture(tmp_path / "pascal")
    pascal = Pascal(root)
    images = pascal.images()
    assert [im.stem for im in images] == ["2008_000002", "2008_000003"]  # sorted annotation names
    first = pascal.labels(images[0])
    assert first["object"][0, 0] == 4 and first["object"][2, 5] == 3
    assert pascal.names("object", 4) == ["-"] and pascal.names("object", 1) == ["cat"]
    part = first["part"]
    codes = pascal.codes
    assert part[1, 0] == codes[(8, "head")]
    assert part[0, 1] == codes[(8, "leye")]  # later part overwrites
    assert pascal.names("part", int(part[0, 1])) == ["eye"]
    assert (part[2:, :] == 0).all()  # dog has no parts
    assert pascal.labels(images[1])["part"] == []  # objects of shape (1,0)


def test_pascal_errors(tmp_path):
    with pytest.raises(NetDissectError, match="datasets/sources/pascal/part"):
        Pascal(tmp_path / "missing")
    root, _, _ = pascal_fixture(tmp_path / "pascal")
    pascal = Pascal(root)
    scipy_io.savemat(root / "context/trainval/2008_000003.mat", {"LabelMap": np.full((4, 4), 7, np.uint16)})
    with pytest.raises(NetDissectError, match="2008_000003.mat uses object label 7, which has no name"):
        pascal.labels(pascal.images()[1])
    (root / "context/trainval/2008_000003.mat").unlink()
    with pytest.raises(NetDissectError, match="2008_000003.mat"):
        pascal.labels(pascal.images()[1])
    (root / "context/trainval/2008_000002.mat").write_bytes(b"MATLAB 5.0 truncated")
    with pytest.raises(NetDissectError, match="2008_000002.mat.*corrupt"):
        pascal.labels(pascal.images()[0])
    (root / "context/labels.txt").write_text("1: cat\n2 dog\n")
    with pytest.raises(NetDissectError, match="labels.txt line 2"):
        Pascal(root)


def test_opensurfaces_material_from_red_channel(tmp_path):
    label = np.zeros((20, 30, 3), np.uint8)
    label[..., 2] = 5  # scene in B
    label[:10, :, 0] = 2  # Fabric/cloth
    label[:10, :, 1] = 1
    black = np.zeros((12, 12, 3), np.uint8)
    root = write_opensurfaces(
        tmp_path / "os",
        [(17, np.zeros((40, 60, 3), np.uint8), label), (3, np.zeros((24, 24, 3), np.uint8), black)],
        [(1, "Wood", 1), (2, "Fabric/cloth", 2), (3, "Plastic - clear", 3)],
    )
    src = OpenSurfaces(root)
    images = src.images()
    assert [im.stem for im in images] == ["17", "3"]  # photos.csv order
    material = src.labels(images[0])["material"]
    assert material.shape == (20, 30) and (material[:10] == 2).all() and (material[10:] == 0).all()
    assert (src.labels(images[1])["material"] == 0).all()
    assert src.names("material", 2) == ["fabric", "cloth"]
    assert material_names("Plastic - clear") == ["plastic-clear"]
    label[0, 0, 0] = 9
    Image.fromarray(label).save(root / "photos-labels/17.png")
    with pytest.raises(NetDissectError, match="17.png uses material label 9"):
        src.labels(images[0])


def test_dtd_multi_label(tmp_path):
    root = write_dtd(
        tmp_path / "dtd",
        [
            ("banded/banded_0002.jpg", np.zeros((9, 9, 3), np.uint8), ["banded", "striped"]),
            ("striped/striped_0001.jpg", np.zeros((5, 7, 3), np.uint8), ["striped"]),
        ],
    )
    dtd = DTD(root)
    images = dtd.images()
    assert [im.stem for im in images] == ["banded_0002", "striped_0001"]
    assert dtd.labels(images[0]) == {"texture": [1, 2]}
    assert dtd.labels(images[1]) == {"texture": [2]}
    assert dtd.names("texture", 2) == ["striped"]
    (root / "dtd-r1.0.1/labels/labels_joint_anno.txt").write_text("banded/banded_0002.jpg\n")
    with pytest.raises(NetDissectError, match="line 1.*no texture word"):
        DTD(root)
