"""The synthetic dataset: labels true to the rendered pixels and geometry, spec-conform tables, determinism."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from netdissect.broden import BrodenDataset
from netdissect.broden.colors import COLOR_NAMES, fallback_table
from netdissect.broden.synth import ID, VOCABULARY, render_image, synthesize, training_target
from netdissect.broden.writer import nearest_indices
from netdissect.cli import main
from tests.conftest import SYNTH_IMAGES

SEED = 0  # the seed of the synth_dataset fixture


def row_of(ds: BrodenDataset) -> dict[int, int]:
    """Generator row number (from the file name) -> index.csv row (the writer sorts by split hash)."""
    return {int(name.rsplit("_", 1)[1][:-4]): i for i, name in enumerate(ds.index["image"])}


def test_contents(synth_dataset: Path) -> None:
    ds = BrodenDataset(synth_dataset)
    assert len(ds) == SYNTH_IMAGES
    assert sorted(ds.categories) == ["color", "material", "object", "part", "scene", "texture"]
    assert ds.num_labels - 1 >= 40
    assert {"object", "part"} <= set(ds.label_categories[ds.label_names.index("window")])
    parts = ds.index["part"].str.count(";")
    assert (parts == 1).any()  # two part layers
    assert ds.index["texture"].str.contains(";").any()  # several textures
    sources = ds.index["image"].str.split("/").str[0].value_counts().to_dict()
    assert sources == {"synth_scene": 36, "synth_material": 12, "synth_texture": 12}
    assert set(ds.index["ih"]) == {224} and set(ds.index["sh"]) == {112}
    colors = [n for n in range(1, ds.num_labels) if ds.categories[ds.primary[n]] == "color"]
    assert sorted(ds.label_names[n] for n in colors) == sorted(f"{c}-c" for c in COLOR_NAMES)


def test_color_labels_name_the_rendered_pixels(synth_dataset: Path) -> None:
    """Each colour PNG pixel is the table's name of the RENDERED pixel (before JPEG) it samples."""
    ds = BrodenDataset(synth_dataset, categories=["color"])
    rows = nearest_indices(224, 112)
    table = np.array([f"{name}-c" for name in COLOR_NAMES])[fallback_table()]
    names = np.array(ds.label_names)
    where = row_of(ds)
    for generator_row in (0, 6, 8, 13):  # scene, material, texture, scene
        rgb = render_image(generator_row, SEED, 224).rgb[rows][:, rows].astype(np.int64) >> 3
        expected = table[rgb[..., 0], rgb[..., 1], rgb[..., 2]]
        got = names[ds[where[generator_row]]["pixel_labels"][0].numpy()]
        assert (got == expected).all()


def test_object_and_part_maps_follow_the_drawn_geometry(synth_dataset: Path) -> None:
    ds = BrodenDataset(synth_dataset, categories=["object", "part"])
    names = np.array(ds.label_names)
    where = row_of(ds)
    rows = nearest_indices(224, 112)
    checked_hub = checked_pane = False
    for generator_row in (0, 1, 2, 3, 4, 5, 10, 11, 12, 13):
        item = render_image(generator_row, SEED, 224)
        # repaint the drawn objects in order over the background: must give the object map
        expected = item.maps["object"].copy()
        foreground = np.zeros_like(expected, dtype=bool)
        for name, shape in item.drawn:
            mask = shape.full(224)
            expected[mask] = ID[name]
            foreground |= mask
        assert np.array_equal(expected, item.maps["object"])
        parts = item.maps["part"]
        assert not (parts.any(axis=0) & ~foreground).any()  # parts lie on objects
        if len(parts) == 2:
            assert not ((parts[1] > 0) & (parts[0] == 0)).any()  # parts of parts lie on parts
            hub, pane = parts[1] == ID["hub"], parts[1] == ID["pane"]
            assert (parts[0][hub] == ID["wheel"]).all() and (parts[0][pane] == ID["window"]).all()
            checked_hub |= hub.any()
            checked_pane |= pane.any()
        # the files hold the same maps, reduced to 112 x 112 and in global numbers
        got = ds[where[generator_row]]["pixel_labels"].numpy()
        local = np.concatenate([item.maps["object"][None], parts])[:, rows][:, :, rows]
        assert (names[got] == np.array(["-"] + VOCABULARY)[local]).all()
    assert checked_hub and checked_pane


def test_tables_are_the_statistics_of_the_render(synth_dataset: Path) -> None:
    """Frequency and coverage recomputed by brute force at S x S; numbering by (-F, -C, name)."""
    freq: dict[tuple[str, str], int] = defaultdict(int)
    cov: dict[tuple[str, str], float] = defaultdict(float)
    for i in range(SYNTH_IMAGES):
        item = render_image(i, SEED, 224)
        for category, labels in item.maps.items():
            values, counts = np.unique(labels, return_counts=True)
            for v, k in zip(values, counts):
                if v:
                    freq[VOCABULARY[v - 1], category] += 1
                    cov[VOCABULARY[v - 1], category] += k / 224**2
        for category, names in item.image_labels.items():
            for name in names:
                freq[name, category] += 1
                cov[name, category] += 1.0
    ds = BrodenDataset(synth_dataset)
    for category in ds.categories:
        for row in ds.codes[category]:
            assert row.frequency == freq[row.name, category]
            assert row.coverage == pytest.approx(cov[row.name, category], rel=1e-9)
    totals = {
        name: (sum(f for (n, _), f in freq.items() if n == name), sum(c for (n, _), c in cov.items() if n == name))
        for name, _ in freq
    }
    order = sorted(totals, key=lambda name: (-totals[name][0], -totals[name][1], name))
    assert ds.label_names[1:] == order


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path, synth_dataset: Path) -> None:
    a, b, c = tmp_path / "1/ds", tmp_path / "2/ds", tmp_path / "3/ds"  # same folder name: README names it
    synthesize(a, 14, size=227, seed=5, workers=1)
    synthesize(b, 14, size=227, seed=5, workers=2)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 14 * 3
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    ds = BrodenDataset(a)
    assert ds[0]["image"].shape == (3, 227, 227) and ds[0]["pixel_labels"].shape[1:] == (113, 113)
    synthesize(c, 14, size=227, seed=6, workers=1)
    assert (a / "images/synth_scene/scene_000000.jpg").read_bytes() != (
        c / "images/synth_scene/scene_000000.jpg"
    ).read_bytes()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["synth", str(tmp_path / "d"), "--images", "3", "--size", "224", "--seed", "1", "--workers", "1"]) == 0
    assert "wrote 3 images" in capsys.readouterr().out
    assert len(BrodenDataset(tmp_path / "d")) == 3
    assert main(["synth", str(tmp_path / "d"), "--images", "3"]) == 2  # refuses to overwrite a dataset
    assert "already holds a dataset" in capsys.readouterr().err


def test_training_target(synth_dataset: Path) -> None:
    ds = BrodenDataset(synth_dataset)
    item = ds[0]
    target = training_target(item["pixel_labels"], item["image_labels"], ds.num_labels)
    present = set(item["pixel_labels"].unique().tolist()) | set(item["image_labels"].tolist())
    assert set(torch.nonzero(target).ravel().tolist()) == present - {0}
    color = ds.categories.index("color")
    no_color = training_target(item["pixel_labels"], item["image_labels"], ds.num_labels, ds.primary, color)
    assert set(torch.nonzero(no_color).ravel().tolist()) == {n for n in present - {0} if ds.primary[n] != color}
