"""``--recompute`` (no stored activations) gives the numbers of a run that stores them, byte for byte; the
forward pass's input layout and the bad inputs of extraction (disk, GPU memory) are handled clearly."""

from __future__ import annotations

import json
import logging
import shutil
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch import nn

from netdissect import pipeline
from netdissect.cli import main
from netdissect.errors import NetDissectError
from netdissect.models import save_checkpoint
from netdissect.recompute import ActivationReader
from netdissect.shards import read_activations
from tests.test_engine_helpers import write_tiny_broden

SPEC = "tests.test_engine_reference:make_model"  # layers 0, 2, 4: 16x16, 8x8, 4x4 maps
LAYERS = ["0", "2", "4"]
OUTPUTS = ["thresholds.npy", "counts.npz", "result.csv", "summary.json"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_broden(tmp_path_factory.mktemp("tiny") / "broden", n_images=13, seg=8, scale=2, seed=5)


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """The same dissection stored and recomputed (batches of 5: the last one is short)."""
    root = tmp_path_factory.mktemp("runs")
    for mode in ("store", "recompute"):
        pipeline.dissect(tiny.root, SPEC, LAYERS, root / mode, q=0.05, batch_size=5, activations=mode, progress=False)
    return root


@pytest.mark.parametrize("layer", LAYERS)
def test_recompute_equals_store_byte_for_byte(runs, layer):
    for name in OUTPUTS:
        assert (runs / "store" / layer / name).read_bytes() == (runs / "recompute" / layer / name).read_bytes(), name
    assert (runs / "store" / "shards" / "0" / f"{layer}.act.npy").is_file()
    assert not (runs / "recompute" / "shards" / "0" / f"{layer}.act.npy").exists()


def test_recompute_keeps_less_disk(runs):
    size = lambda d: sum(p.stat().st_size for p in d.rglob("*.npy"))  # noqa: E731
    stored, recomputed = size(runs / "store" / "shards"), size(runs / "recompute" / "shards")
    acts = sum(p.stat().st_size for p in (runs / "store" / "shards" / "0").glob("*.act.npy"))
    assert stored - recomputed == acts > 0


def test_report_maps_are_recomputed_exactly(tiny, runs):
    rows = [1, 7, 8, 12]  # in batches 0, 1 and 2 (the short one)
    for layer in LAYERS:
        with ActivationReader(runs / "recompute" / "shards" / "0", layer, tiny.root) as reader:
            assert not reader.stored
            got = reader(rows)
            again = reader([8])  # from the kept batch
        expected = read_activations(runs / "store" / "shards" / "0", layer, rows)
        assert got.dtype == np.float32 and np.array_equal(got, expected)
        assert np.array_equal(again, expected[2:3])


def test_stage_commands_recompute(tiny, runs, tmp_path):
    shard = tmp_path / "shard"
    args = ["--dataset", str(tiny.root), "--model", SPEC, "--layers", "2,4", "--out", str(shard), "--no-progress"]
    assert main(["extract", *args, "--recompute", "--batch-size", "5", "--quantile", "0.05"]) == 0
    assert sorted(p.name for p in shard.iterdir()) == [
        "2.imgmax.npy",
        "2.topk.npy",
        "4.imgmax.npy",
        "4.topk.npy",
        "meta.json",
    ]
    thresholds = runs / "store" / "4" / "thresholds.npy"
    tally = ["tally", "--dataset", str(tiny.root), "--shard", str(shard), "--layer", "4", "--no-progress"]
    assert main([*tally, "--thresholds", str(thresholds), "--out", str(tmp_path / "c.npz")]) == 0
    with np.load(tmp_path / "c.npz") as got, np.load(runs / "store" / "4" / "counts.npz") as want:
        for key in ("G", "I", "C", "thresholds"):
            assert np.array_equal(got[key], want[key])


def test_recompute_refuses_a_forward_pass_with_other_numbers(tiny, tmp_path):
    shard = tmp_path / "shard"
    pipeline.extract(
        tiny.root, SPEC, ["4"], 0, 1, shard, batch_size=5, quantile=0.05, store_activations=False, progress=False
    )
    pipeline.quantile([shard], "4", tmp_path / "4", q=0.05)
    imgmax = np.load(shard / "4.imgmax.npy")
    imgmax[6, 1] = np.nextafter(imgmax[6, 1], np.float32(np.inf))  # one last bit of one image, batch 1
    np.save(shard / "4.imgmax.npy", imgmax)
    with pytest.raises(NetDissectError, match=r"rows 5\.\.9\) differ from those seen at extraction"):
        pipeline.tally(tiny.root, shard, "4", tmp_path / "4" / "thresholds.npy", tmp_path / "c.npz", progress=False)
    assert not (tmp_path / "c.npz").exists()


def test_recompute_refuses_changed_weights(tiny, tmp_path):
    from tests.test_engine_reference import make_model

    weights = tmp_path / "w.pt"
    save_checkpoint(weights, make_model().state_dict())
    shard = tmp_path / "shard"
    pipeline.extract(
        tiny.root,
        SPEC,
        ["2"],
        0,
        1,
        shard,
        weights=str(weights),
        quantile=0.05,
        store_activations=False,
        progress=False,
    )
    pipeline.quantile([shard], "2", tmp_path / "2", q=0.05)
    state = make_model().state_dict()
    state["0.bias"] += 1
    save_checkpoint(weights, state)
    with pytest.raises(NetDissectError, match="sha256 is no longer the one recorded"):
        pipeline.tally(tiny.root, shard, "2", tmp_path / "2" / "thresholds.npy", tmp_path / "c.npz", progress=False)


def test_not_enough_disk_is_refused_before_the_forward_pass(tiny, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(NetDissectError) as err:
        pipeline.extract(tiny.root, SPEC, ["0", "2"], 0, 1, tmp_path / "s", progress=False)
    text = str(err.value)
    need = 13 * (4 * 16 * 16 + 5 * 8 * 8) * 4  # float32 activations of both layers
    layer0, layer2 = 13 * 4 * 16 * 16 * 4, 13 * 5 * 8 * 8 * 4
    assert f"need {need} bytes (0 {layer0} bytes, 2 {layer2} bytes) but only 1000 bytes are free" in text
    assert "--recompute" in text and "--dtype float16" in text
    assert not list((tmp_path / "s").glob("*"))
    pipeline.extract(tiny.root, SPEC, ["0", "2"], 0, 1, tmp_path / "s", store_activations=False, progress=False)
    assert (tmp_path / "s" / "meta.json").is_file()


class ViewFlatten(nn.Module):
    """``x.view(batch, -1)``, as older model code flattens: needs contiguous features."""

    def forward(self, x):
        return x.view(x.shape[0], -1)


def view_model() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), ViewFlatten(), nn.Linear(4 * 16 * 16, 3))


def test_model_that_needs_contiguous_input_falls_back(tiny, tmp_path, caplog):
    spec = "tests.test_recompute:view_model"
    with pytest.raises(RuntimeError, match="view size"):
        view_model()(torch.zeros(1, 3, 16, 16).contiguous(memory_format=torch.channels_last))
    with caplog.at_level(logging.WARNING):
        meta = pipeline.extract(tiny.root, spec, ["0"], 0, 1, tmp_path / "a", progress=False)
    assert meta["memory_format"] == "contiguous" and "fails on channels-last input" in caplog.text
    plain = pipeline.extract(tiny.root, spec, ["0"], 0, 1, tmp_path / "b", memory_format="contiguous", progress=False)
    assert plain["memory_format"] == "contiguous"
    assert np.array_equal(np.load(tmp_path / "a" / "0.act.npy"), np.load(tmp_path / "b" / "0.act.npy"))


def test_channels_last_is_the_default_and_recorded(runs):
    import json

    meta = json.loads((runs / "store" / "shards" / "0" / "meta.json").read_text())
    assert (meta["memory_format"], meta["batch_size"], meta["device"]) == ("channels_last", 5, "cpu")


class OutOfMemoryAbove(nn.Module):
    """Raises torch's (CUDA) out-of-memory error for batches of more than two images."""

    def forward(self, x):
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return x


def oom_model() -> nn.Module:
    return nn.Sequential(OutOfMemoryAbove())


def test_batch_too_big_for_the_gpu_names_the_option(tiny, tmp_path, capsys):
    args = ["extract", "--dataset", str(tiny.root), "--model", "tests.test_recompute:oom_model", "--layers", "0"]
    assert main([*args, "--out", str(tmp_path / "s"), "--batch-size", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--batch-size 4: a batch of 4 images does not fit in the memory of cpu" in err
    assert "lower --batch-size (e.g. 2)" in err
    assert not (tmp_path / "s" / "meta.json").exists()


class Huge(nn.Module):
    """Activations of 1e5: finite in float32, infinite in float16."""

    def forward(self, x):
        return torch.full_like(x[:, :2], 1e5)


def huge_model() -> nn.Module:
    return nn.Sequential(Huge())


def test_float16_overflow_is_refused(tiny, tmp_path):
    spec = "tests.test_recompute:huge_model"
    with pytest.raises(NetDissectError, match=r"float16 holds up to 65504: use --dtype float32\) for image .*img000"):
        pipeline.extract(tiny.root, spec, ["0"], 0, 1, tmp_path / "s", dtype="float16", progress=False)
    assert not (tmp_path / "s" / "meta.json").exists()
    meta = pipeline.extract(tiny.root, spec, ["0"], 0, 1, tmp_path / "t", quantile=0.5, progress=False)
    assert meta["dtype"] == "float32" and np.load(tmp_path / "t" / "0.imgmax.npy").max() == 1e5


@pytest.mark.parametrize(
    "case",
    [
        ("conv", SPEC, ["2", "4"], {"preset": "original"}),  # fieldmap upsampling, BGR 0-255 float64 input
        ("tokens", "tests.test_models_tokens:TokenDetector", ["block"], {"tokens": "spatial"}),
        ("cls", "tests.test_models_tokens:TokenDetector", ["block"], {"tokens": "cls"}),
    ],
    ids=lambda case: case[0],
)
def test_recompute_keeps_presets_fieldmaps_and_token_readouts(tmp_path, case):
    from tests.test_models_tokens import PATCH, planted_dataset

    name, spec, layers, options = case
    if name == "conv":
        data = write_tiny_broden(tmp_path / "broden", n_images=13, seg=8, scale=2, seed=5)
    else:
        data = planted_dataset(tmp_path, seg=8, scale=PATCH // 2)
    for mode in ("store", "recompute"):
        pipeline.dissect(
            data.root, spec, layers, tmp_path / mode, q=0.05, batch_size=5, activations=mode, progress=False, **options
        )
    for layer in layers:
        for output in OUTPUTS:
            store, recompute = (tmp_path / mode / layer / output for mode in ("store", "recompute"))
            assert store.read_bytes() == recompute.read_bytes(), (layer, output)
        settings = json.loads((tmp_path / "recompute" / layer / "summary.json").read_text())["settings"]
        assert settings["upsample"] == ("fieldmap" if name == "conv" else "bilinear")
        strips = sorted((tmp_path / "store" / layer / "report").rglob("*.jpg"))
        assert strips and all(
            s.read_bytes() == (tmp_path / "recompute" / s.relative_to(tmp_path / "store")).read_bytes() for s in strips
        )


def test_recompute_of_a_rotated_layer_equals_store(tiny, tmp_path):
    """A rotated basis (docs/experiments.md §1) is rotated again, with the saved matrix, when recomputed."""
    for mode in ("store", "recompute"):
        pipeline.dissect(
            tiny.root, SPEC, ["2"], tmp_path / mode, q=0.05, batch_size=5, activations=mode, rotation=(3, 0.5),
            progress=False,
        )  # fmt: skip
    for name in [*OUTPUTS, "rotation.npy"]:
        assert (tmp_path / "store" / "2" / name).read_bytes() == (tmp_path / "recompute" / "2" / name).read_bytes()
    with ActivationReader(tmp_path / "recompute" / "shards" / "0", "2", tiny.root) as reader:
        stored = read_activations(tmp_path / "store" / "shards" / "0", "2", [0, 6, 12])
        assert np.array_equal(reader([0, 6, 12]), stored)
    plain = read_activations(tmp_path / "store" / "shards" / "0", "2", [0])
    pipeline.dissect(tiny.root, SPEC, ["2"], tmp_path / "plain", q=0.05, batch_size=5, progress=False, report=False)
    assert not np.array_equal(read_activations(tmp_path / "plain" / "shards" / "0", "2", [0]), plain)
