"""The packed label cache: PackedLabels serves exactly BrodenDataset's label items, for any category
subset, through DataLoader workers too; stale, foreign or incomplete packs are refused by name;
packing is atomic."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from netdissect.broden import BrodenDataset
from netdissect.broden import pack as pack_module
from netdissect.broden.pack import PackedLabels, pack_labels
from netdissect.cli import main
from netdissect.errors import NetDissectError


def assert_same_items(expected: BrodenDataset, packed: PackedLabels) -> None:
    """Every row: the reader's keys with the same dtypes, shapes and values, and ``label_pixels``: the
    pixel count of every label of every layer, as counted here."""
    assert len(packed) == len(expected)
    for i in range(len(expected)):
        want, got = expected[i], packed[i]
        assert got.keys() == want.keys() | {"label_pixels"} and got["i"] == want["i"] == i
        for key in ("pixel_labels", "image_labels"):
            assert got[key].dtype == want[key].dtype, (i, key)
            assert got[key].shape == want[key].shape, (i, key)
            assert torch.equal(got[key], want[key]), (i, key)
        labels, counts = got["label_pixels"]
        expected_counts = [
            (int(label), int((layer == label).sum())) for layer in want["pixel_labels"] for label in torch.unique(layer)
        ]
        assert sorted(zip(labels.tolist(), counts.tolist())) == sorted(expected_counts), i


def packed(pack: Path, root: Path, categories: list[str] | None = None) -> PackedLabels:
    return PackedLabels(pack, BrodenDataset(root, categories, load_images=False, load_labels=False))


@pytest.fixture(scope="module")
def synth_pack(synth_dataset: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "labels"
    pack_labels(synth_dataset, out, workers=0, progress=False)
    return out


@pytest.mark.parametrize("categories", [None, ["scene", "texture"], ["color", "part", "scene"], ["material", "part"]])
def test_packed_items_equal_the_readers(synth_dataset: Path, synth_pack: Path, categories: list[str] | None):
    expected = BrodenDataset(synth_dataset, categories, load_images=False)
    if categories == ["scene", "texture"]:
        assert not set(categories) & set(expected.pixel_categories)
    assert_same_items(expected, packed(synth_pack, synth_dataset, categories))


def test_pack_index_describes_the_pixels(synth_dataset: Path, synth_pack: Path):
    ds = BrodenDataset(synth_dataset, load_images=False)
    pixels = np.load(synth_pack / "pixels.npy", mmap_mode="r")
    assert pixels.dtype == np.uint16 and pixels.ndim == 1
    with np.load(synth_pack / "index.npz", allow_pickle=False) as z:
        assert int(z["format_version"]) == 2 and str(z["fingerprint"]) == ds.fingerprint()
        assert int(z["num_labels"]) == ds.num_labels
        row = 7
        k, sh, sw = z["shape"][row]
        start = z["offset"][row]
        stack = pixels[start : start + k * sh * sw].reshape(k, sh, sw)
        assert np.array_equal(stack, ds[row]["pixel_labels"].numpy())
        assert z["layer_start"][-1] == len(z["layer_category"]) == z["shape"][:, 0].sum()


def test_worked_example_with_constant_layers_and_zero_items(broden_example: Path, tmp_path: Path):
    """Int items in a pixel category (a constant layer; 0 dropped), several layers of one category,
    several image-level labels: every subset, including ones that keep non-adjacent layers."""
    index = broden_example / "index.csv"
    text = index.read_bytes().replace(b"8;10,,\r\n", b"8;10,,0;12\r\n", 1)  # dtd row: material "0;12"
    text = text.replace(b"pascal/2008_000002_part.png,,,", b"pascal/2008_000002_part.png;0;7,,,", 1)
    index.write_bytes(text)
    pack_labels(broden_example, tmp_path / "labels", workers=0, progress=False)
    for categories in (None, ["material"], ["color", "part"], ["object", "scene", "texture"], ["part", "texture"]):
        assert_same_items(
            BrodenDataset(broden_example, categories, load_images=False),
            packed(tmp_path / "labels", broden_example, categories),
        )
    dtd = packed(tmp_path / "labels", broden_example, ["material"])[0]["pixel_labels"]
    assert dtd.shape == (1, 4, 4) and bool((dtd == 12).all())


def test_dataloader_workers_give_the_same_items(synth_dataset: Path, synth_pack: Path):
    expected = BrodenDataset(synth_dataset, ["color", "object", "scene"], load_images=False)
    labels = packed(synth_pack, synth_dataset, ["color", "object", "scene"])
    labels[0]  # mapped here: must not travel to the workers
    seen = 0
    for batch in labels.loader(batch_size=8, workers=2, start=3, stop=29):
        for i, pixel, image in zip(batch["i"].tolist(), batch["pixel_labels"], batch["image_labels"]):
            want = expected[i]
            assert torch.equal(pixel, want["pixel_labels"]) and pixel.dtype == torch.int32
            assert torch.equal(image, want["image_labels"])
            seen += 1
    assert seen == 26


def _copy(root: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(root, tmp_path / name))


def test_refusals_name_the_pack_and_the_fix(broden_example: Path, tmp_path: Path):
    pack = tmp_path / "labels"
    pack_labels(broden_example, pack, workers=0, progress=False)

    def refusal(root: Path, at: Path = pack) -> str:
        with pytest.raises(NetDissectError) as err:
            packed(at, root)
        message = str(err.value)
        assert str(at) in message and f"netdissect broden pack-labels {root} --out {at}" in message
        return message

    assert "missing" in refusal(broden_example, tmp_path / "nowhere")

    other = _copy(broden_example, tmp_path, "renamed")  # same rows, another label table
    label_csv = other / "label.csv"
    label_csv.write_bytes(label_csv.read_bytes().replace(b"22,tree,", b"22,shrub,"))
    assert "another dataset" in refusal(other)

    shorter = _copy(broden_example, tmp_path, "shorter")  # one row fewer
    lines = (shorter / "index.csv").read_bytes().split(b"\r\n")
    (shorter / "index.csv").write_bytes(b"\r\n".join(lines[:-2] + [b""]))
    assert "holds 4 rows" in refusal(shorter) and "has 3" in refusal(shorter)

    version = _copy(pack, tmp_path, "v9")
    with np.load(version / "index.npz") as z:
        arrays = dict(z)
    np.savez(version / "index.npz", **{**arrays, "format_version": np.int64(9)})
    assert "format_version is 9" in refusal(broden_example, version)

    truncated = _copy(pack, tmp_path, "truncated")
    data = (truncated / "pixels.npy").read_bytes()
    (truncated / "pixels.npy").write_bytes(data[:-2])
    assert "incomplete" in refusal(broden_example, truncated) or "cannot read" in refusal(broden_example, truncated)

    no_index = _copy(pack, tmp_path, "no_index")
    (no_index / "index.npz").unlink()
    assert "incomplete" in refusal(broden_example, no_index)


def test_interrupted_pack_leaves_the_old_one(synth_dataset: Path, tmp_path: Path, monkeypatch):
    pack = tmp_path / "labels"
    original = pack_module.unwrap_worker_errors

    def fail_after_one_batch(loader):
        for n, batch in enumerate(original(loader)):
            if n == 1:
                raise RuntimeError("interrupted")
            yield batch

    monkeypatch.setattr(pack_module, "unwrap_worker_errors", fail_after_one_batch)
    with pytest.raises(RuntimeError):
        pack_labels(synth_dataset, pack, workers=0, progress=False)
    # nothing half-written is left; only the lock file, which stays (netdissect.io.exclusive_lock)
    assert not pack.exists() and [p.name for p in tmp_path.iterdir()] == [".labels.lock"]

    monkeypatch.setattr(pack_module, "unwrap_worker_errors", original)
    small = _copy(synth_dataset, tmp_path, "small")  # pack of another dataset first
    lines = (small / "index.csv").read_bytes().split(b"\r\n")
    (small / "index.csv").write_bytes(b"\r\n".join(lines[:11] + [b""]))
    pack_labels(small, pack, workers=0, progress=False)
    before = (pack / "pixels.npy").read_bytes()

    monkeypatch.setattr(pack_module, "unwrap_worker_errors", fail_after_one_batch)
    with pytest.raises(RuntimeError):
        pack_labels(synth_dataset, pack, workers=0, progress=False)  # over it: fails, old pack stays
    assert (pack / "pixels.npy").read_bytes() == before
    assert len(packed(pack, small)) == 10

    monkeypatch.setattr(pack_module, "unwrap_worker_errors", original)
    pack_labels(synth_dataset, pack, workers=0, progress=False)  # over it: succeeds, replaced
    assert_same_items(BrodenDataset(synth_dataset, load_images=False), packed(pack, synth_dataset))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".labels.lock", "labels", "small"]


def test_cli_packs_and_reports(broden_example: Path, tmp_path: Path, capsys):
    out = tmp_path / "labels"
    assert (
        main(["broden", "pack-labels", str(broden_example), "--out", str(out), "--workers", "0", "--no-progress"]) == 0
    )
    printed = capsys.readouterr().out
    assert "wrote 4 images, 10 label layers" in printed and "images/s" in printed
    assert_same_items(BrodenDataset(broden_example, load_images=False), packed(out, broden_example))


@pytest.mark.parametrize("workers", [0, 1])
def test_cli_keeps_the_readers_message_for_a_bad_png(broden_example: Path, tmp_path: Path, capsys, workers: int):
    png = broden_example / "images" / "opensurfaces" / "100_material.png"
    png.write_bytes(b"not a png")
    out = tmp_path / "labels"
    assert (
        main(
            [
                "broden",
                "pack-labels",
                str(broden_example),
                "--out",
                str(out),
                "--workers",
                str(workers),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"{png} (index.csv row 4): cannot read the label PNG" in err and "Traceback" not in err
    assert not out.exists()


def test_cli_names_a_folder_without_index(tmp_path: Path, capsys):
    assert main(["broden", "pack-labels", str(tmp_path), "--out", str(tmp_path / "labels")]) == 2
    assert "no index.csv" in capsys.readouterr().err


def make_model() -> torch.nn.Module:
    """A tiny seeded conv net for the tally CLI test (`tests.test_broden_pack:make_model`)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())


def test_tally_reads_the_pack_and_refuses_a_foreign_one(broden_example: Path, tmp_path: Path, capsys):
    """`netdissect tally --labels PACK` counts exactly what the PNGs give; a pack of another dataset
    makes the CLI exit 2 naming the pack."""
    shard, layer_dir = tmp_path / "shard", tmp_path / "layer"
    assert (
        main(
            [
                "extract",
                "--dataset",
                str(broden_example),
                "--model",
                "tests.test_broden_pack:make_model",
                "--layers",
                "0",
                "--out",
                str(shard),
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["quantile", "--shards", str(shard), "--layer", "0", "--out", str(layer_dir)]) == 0
    tally = [
        "tally",
        "--dataset",
        str(broden_example),
        "--shard",
        str(shard),
        "--layer",
        "0",
        "--thresholds",
        str(layer_dir / "thresholds.npy"),
        "--no-progress",
    ]
    pack = tmp_path / "labels"
    pack_labels(broden_example, pack, workers=0, progress=False)
    assert main(tally + ["--out", str(tmp_path / "png.npz")]) == 0
    assert main(tally + ["--out", str(tmp_path / "pack.npz"), "--labels", str(pack)]) == 0
    with np.load(tmp_path / "png.npz") as png, np.load(tmp_path / "pack.npz") as packed_counts:
        compared = [key for key in png.files if png[key].dtype.kind in "biuf"]
        assert {"G", "I", "C"} <= set(compared) and png["G"].sum() > 0
        for key in compared:
            assert np.array_equal(png[key], packed_counts[key]), key

    other = _copy(broden_example, tmp_path, "other")
    (other / "label.csv").write_bytes((other / "label.csv").read_bytes().replace(b"22,tree,", b"22,shrub,"))
    pack_labels(other, tmp_path / "other_labels", workers=0, progress=False)
    capsys.readouterr()
    assert main(tally + ["--out", str(tmp_path / "bad.npz"), "--labels", str(tmp_path / "other_labels")]) == 2
    err = capsys.readouterr().err
    assert f"label pack {tmp_path / 'other_labels'}" in err and "pack-labels" in err
    assert not (tmp_path / "bad.npz").exists()
