"""Writer: the tables of the worked example recomputed from its maps, byte for byte; round trips."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from netdissect.broden import BrodenDataset
from netdissect.broden.format import format_short_float, split_hash, split_of
from netdissect.broden.writer import (
    BrodenImage,
    compute_tables,
    image_statistics,
    index_text,
    tables_text,
    write_broden,
)
from tests.conftest import (
    WORKED_CATEGORY,
    WORKED_CODES,
    WORKED_INDEX,
    WORKED_LABEL,
    WORKED_MAPS,
    worked_image,
    worked_map,
)

CRLF = lambda text: text.replace("\n", "\r\n")  # noqa: E731

NAMES = {
    1: "black-c",
    2: "white-c",
    3: "grey-c",
    4: "brown-c",
    5: "blue-c",
    6: "wall",
    7: "window",
    8: "banded",
    9: "street-s",
    10: "striped",
    11: "sky",
    12: "wood",
    13: "person",
    14: "building",
    15: "torso",
    16: "door",
    17: "floor",
    18: "glass",
    19: "head",
    20: "green-c",
    21: "pane",
    22: "tree",
}


def worked_images() -> list[BrodenImage]:
    """The worked example's four images as the writer takes them (category -> map, stack or ints)."""
    m = {name: worked_map(text) for name, text in WORKED_MAPS.items()}
    return [
        BrodenImage(
            "dtd/banded_0002.jpg", worked_image(0), {"color": m["dtd/banded_0002_color.png"], "texture": [8, 10]}
        ),
        BrodenImage(
            "pascal/2008_000002.jpg",
            worked_image(1),
            {
                "color": m["pascal/2008_000002_color.png"],
                "object": m["pascal/2008_000002_object.png"],
                "part": m["pascal/2008_000002_part.png"],
            },
        ),
        BrodenImage(
            "opensurfaces/100.jpg",
            worked_image(2),
            {"color": m["opensurfaces/100_color.png"], "material": m["opensurfaces/100_material.png"]},
        ),
        BrodenImage(
            "ade20k/ADE_train_00000001.jpg",
            worked_image(3),
            {
                "color": m["ade20k/ADE_train_00000001_color.png"],
                "object": m["ade20k/ADE_train_00000001_object.png"],
                "part": np.stack(
                    [m["ade20k/ADE_train_00000001_part_1.png"], m["ade20k/ADE_train_00000001_part_2.png"]]
                ),
                "scene": [9],
            },
        ),
    ]


def worked_stats() -> dict[tuple[str, str], tuple[int, float]]:
    stats: dict[tuple[str, str], list] = defaultdict(lambda: [0, 0.0])
    for item in worked_images():
        for category, data in item.layers.items():
            for label, coverage in image_statistics(data).items():
                stats[NAMES[label], category][0] += 1
                stats[NAMES[label], category][1] += coverage
    return {key: (n, c) for key, (n, c) in stats.items()}


def test_tables_of_worked_example_byte_for_byte() -> None:
    tables = compute_tables(worked_stats())
    files = tables_text(tables)
    assert files["label.csv"] == CRLF(WORKED_LABEL)
    assert files["category.csv"] == CRLF(WORKED_CATEGORY)
    for category, text in WORKED_CODES.items():
        assert files[f"c_{category}.csv"] == CRLF(text)
    assert tables.categories == ["color", "object", "part", "texture", "scene", "material"]
    assert tables.number("window") == 7 and tables.number("nothing") == 0


def test_filter_drops_rare_names_and_dash() -> None:
    stats = {
        ("a", "object"): (10, 0.4),
        ("a", "part"): (1, 0.2),
        ("b", "object"): (9, 5.0),
        ("c", "object"): (12, 0.49),
        ("-", "object"): (50, 9.0),
    }
    tables = compute_tables(stats, min_frequency=10, min_coverage=0.5, syns={"a": ["a", "alpha"]})
    assert tables.numbers == {"a": 1}  # F = 11 and C = 0.6 when summed over categories
    assert tables.label_rows[0].categories == {"object": 10, "part": 1}
    assert tables.label_rows[0].syns == ["alpha"]
    assert tables_text(tables)["label.csv"].splitlines()[1] == "1,a,object(10);part(1),11,0.600000,alpha"


@pytest.mark.parametrize(
    "value, text",
    [
        (0.910724454131, "0.910724454131"),
        (0.5625, "0.5625"),
        (1840.0, "1840.0"),
        (123.0, "123.0"),
        (5.3e-05, "0.000053"),
        (1e-10, "0.0000000001"),
        (2 / 3, "0.666666666667"),
        (1e20, "100000000000000000000.0"),
    ],
)
def test_short_float_never_uses_exponent(value: float, text: str) -> None:
    assert format_short_float(value) == text
    assert float(format_short_float(value)) == pytest.approx(value, rel=1e-11)


def test_split_hash_examples_of_spec() -> None:
    assert split_hash("dtd/banded_0002.jpg") == pytest.approx(0.10514, abs=1e-5)
    assert split_hash("ade20k/ADE_train_00000001.jpg") == pytest.approx(0.94627, abs=1e-5)
    assert split_of("dtd/banded_0002.jpg") == "train" and split_of("ade20k/ADE_train_00000001.jpg") == "val"


def test_round_trip_worked_example(tmp_path: Path) -> None:
    tables = compute_tables(worked_stats())
    write_broden(tmp_path / "out", worked_images(), tables)
    assert (tmp_path / "out/index.csv").read_bytes() == CRLF(WORKED_INDEX).encode()
    ds = BrodenDataset(tmp_path / "out")
    assert ds.label_names[1:] == [NAMES[n] for n in range(1, 23)]
    for i, item in enumerate(worked_images()):
        got = ds[i]
        assert got["image"].shape == (3, 8, 8)
        layers = [d if d.ndim == 3 else d[None] for d in item.layers.values() if isinstance(d, np.ndarray)]
        assert np.array_equal(got["pixel_labels"].numpy(), np.concatenate(layers))
        assert got["image_labels"].tolist() == [v for d in item.layers.values() if isinstance(d, list) for v in d]


def test_round_trip_large_numbers_and_crlf(tmp_path: Path) -> None:
    """Numbers above 255 survive R + 256*G; every line of every CSV ends with CRLF."""
    rng = np.random.default_rng(0)
    names = [f"label {k}" for k in range(300)]
    stats = {(name, "object"): (1, 1.0 / (k + 1)) for k, name in enumerate(names)}
    tables = compute_tables(stats)
    layer = rng.integers(0, 301, size=(6, 5))
    write_broden(tmp_path / "d", [BrodenImage("src/a.jpg", np.zeros((12, 10, 3), np.uint8), {"object": layer})], tables)
    ds = BrodenDataset(tmp_path / "d")
    assert np.array_equal(ds[0]["pixel_labels"][0].numpy(), layer)
    assert ds.label_names[300] == "label 299"
    for path in (tmp_path / "d").glob("*.csv"):
        data = path.read_bytes()
        assert data.endswith(b"\r\n") and data.count(b"\n") == data.count(b"\r\n")


def test_index_rejects_duplicate_images() -> None:
    from netdissect.broden.writer import IndexRow
    from netdissect.errors import NetDissectError

    rows = [IndexRow("a/x.jpg", 2, 2, 1, 1), IndexRow("a/x.jpg", 2, 2, 1, 1)]
    with pytest.raises(NetDissectError, match="twice"):
        index_text(rows, ["color"])
