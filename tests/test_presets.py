"""Presets (netdissect/presets.py): one word sets every convention of the original system or of
NetDissect-Lite; the input is computed as each system computes it, bit for bit; explicit options
override a preset and say so; the resolved values are recorded and shown."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from netdissect import pipeline
from netdissect.counts import load_counts
from netdissect.errors import NetDissectError
from netdissect.models import load_model
from netdissect.models.loading import LoadedModel
from netdissect.presets import LITE_MEAN, apply_input, preset, resolve
from tests.test_engine_helpers import write_tiny_broden

torch.set_num_threads(1)
BGR_MEAN = [109.5388, 118.6897, 124.6901]  # both systems' mean, as their code lists it (B, G, R)
SPEC = "tests.test_engine_fieldmap:make_model"


def system_input(images: np.ndarray, mean) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB -> the model input, step by step as both systems compute it: float32
    pixels, channels to BGR, ``-= mean`` (a Python list in Lite, a float32 array in the original),
    channels first, back to RGB, then torch's in-place division by 255·0.224."""
    batch = []
    for rgb in images:
        img = np.array(rgb, dtype=np.float32)[:, :, ::-1]
        img -= mean
        batch.append(img.transpose((2, 0, 1)))
    x = torch.from_numpy(np.stack(batch)[:, ::-1, :, :].copy())
    x.div_(255.0 * 0.224)
    return x


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).integers(0, 256, size=(4, 24, 24, 3), dtype=np.uint8)


def test_inputs_are_bit_identical_to_each_systems(pixels):
    chw = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    lite = load_model("resnet18", preset="lite").normalise(chw)
    original = load_model("resnet18", preset="original").normalise(chw)
    assert torch.equal(lite, system_input(pixels, BGR_MEAN))  # numpy: float32 -= list is float64 arithmetic
    assert torch.equal(original, system_input(pixels, np.array(BGR_MEAN, dtype=np.float32)))
    assert not torch.equal(lite, original)  # the last bits differ
    # the [0, 1] form with mean/255 and std 0.224 (docs §1 before presets) rounds many values differently
    approx = load_model("resnet18", mean=[m / 255 for m in LITE_MEAN], std=[0.224]).normalise(chw)
    assert (approx != lite).float().mean() > 0.3
    torch.testing.assert_close(approx, lite, rtol=1e-5, atol=1e-5)


def test_features_are_those_of_lites_input(tmp_path):
    data = write_tiny_broden(tmp_path / "broden", n_images=5, seg=16, scale=2, seed=1)
    meta = pipeline.extract(data.root, "resnet18", ["layer1"], 0, 1, tmp_path / "s", preset="lite", progress=False)
    m = load_model("resnet18").module
    with torch.no_grad():
        x = system_input(data.images, BGR_MEAN).contiguous(memory_format=torch.channels_last)  # as extract feeds it
        direct = m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x)))))
    assert np.array_equal(np.load(tmp_path / "s" / "layer1.act.npy"), direct.numpy())
    assert meta["preset"] == "lite" and meta["quantile"] == 5 / 999
    assert (meta["mean"], meta["divisor"], meta["mean_precision"]) == (list(LITE_MEAN), 1.0, "float64")


def test_resolve_and_overrides(caplog):
    assert resolve(None, union=None, upsample=None, quantile=None) == {
        "union": "paper",
        "upsample": "bilinear",
        "quantile": 0.005,
    }
    assert resolve("original", union=None, upsample=None, quantile=None) == {
        "union": "paper",
        "upsample": "fieldmap",
        "quantile": 5 / 999,
    }
    with caplog.at_level(logging.WARNING):
        assert resolve("lite", union="paper", upsample="bilinear")["union"] == "paper"
    assert "--union paper overrides preset lite's union lite" in caplog.text
    assert "upsample" not in caplog.text  # the same value as the preset's is no override
    with pytest.raises(NetDissectError, match="--preset caffe: expected one of original, lite"):
        preset("caffe")


def test_a_model_with_its_own_input_keeps_it(caplog):
    """A converted Caffe net (BGR, 0–255, its own mean) keeps its convention under a preset."""
    caffe = LoadedModel(
        torch.nn.Identity(), "caffenet", mean=(104.0, 117.0, 123.0), std=(1.0,) * 3, divisor=1.0, bgr=True
    )
    with caplog.at_level(logging.WARNING):
        apply_input(caffe, "original")
    assert (caffe.mean, caffe.std, caffe.divisor, caffe.bgr) == ((104.0, 117.0, 123.0), (1.0,) * 3, 1.0, True)
    assert "brings its own input convention (BGR, pixel values / 1, mean 104, 117, 123)" in caplog.text
    torchvision_model = LoadedModel(torch.nn.Identity(), "resnet18")
    apply_input(torchvision_model, "original", mean=(120.0, 110.0, 100.0))
    assert torchvision_model.mean == (120.0, 110.0, 100.0) and torchvision_model.divisor == 1.0
    assert "--mean 120,110,100 overrides preset original's mean 124.69,118.69,109.539" in caplog.text


def netdissect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netdissect", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_broden(tmp_path_factory.mktemp("tiny") / "broden", n_images=8, seg=16, scale=2, seed=4)


def test_presets_on_the_command_line(tiny, tmp_path):
    common = ["--dataset", str(tiny.root), "--model", SPEC, "--layers", "3", "--no-progress"]
    run = netdissect("dissect", *common, "--out", str(tmp_path / "original"), "--preset", "original")
    assert run.returncode == 0, run.stderr
    settings = json.loads((tmp_path / "original" / "3" / "summary.json").read_text())["settings"]
    assert {k: settings[k] for k in ("preset", "union", "upsample", "quantile", "divisor", "mean_precision")} == {
        "preset": "original",
        "union": "paper",
        "upsample": "fieldmap",
        "quantile": 5 / 999,
        "divisor": 1.0,
        "mean_precision": "float32",
    }
    assert settings["mean"] == list(LITE_MEAN) and settings["std"] == [255 * 0.224] * 3
    assert settings["field_map"] == {"offset": [-3, -3], "size": [17, 17], "step": [8, 8]}

    run = netdissect("dissect", *common, "--out", str(tmp_path / "lite"), "--preset", "lite", "--union", "paper")
    assert run.returncode == 0, run.stderr
    assert "--union paper overrides preset lite's union lite" in run.stderr
    assert run.stderr.count("overrides") == 1  # said once, not once per stage
    settings = json.loads((tmp_path / "lite" / "3" / "summary.json").read_text())["settings"]
    assert (settings["preset"], settings["union"], settings["upsample"], settings["mean_precision"]) == (
        "lite",
        "paper",
        "bilinear",
        "float64",
    )

    run = netdissect("dissect", *common, "--out", str(tmp_path / "x"), "--preset", "caffe")
    assert run.returncode == 2 and "invalid choice: 'caffe'" in run.stderr


def test_tally_takes_the_shards_preset(tiny, tmp_path):
    shard = tmp_path / "s"
    pipeline.extract(tiny.root, SPEC, ["3"], 0, 1, shard, preset="lite", progress=False)
    pipeline.quantile([shard], "3", tmp_path / "l")
    pipeline.tally(tiny.root, shard, "3", tmp_path / "l" / "thresholds.npy", tmp_path / "t.npz", progress=False)
    settings = load_counts(tmp_path / "t.npz")["settings"]
    assert (settings["preset"], settings["union"], settings["quantile"]) == ("lite", "lite", 5 / 999)


def test_report_says_which_upsampling(tiny, tmp_path):
    out = tmp_path / "out"
    pipeline.dissect(tiny.root, SPEC, ["3"], out, preset="original", progress=False)
    run = netdissect(
        "report", "--dataset", str(tiny.root), "--layer-dir", str(out / "3"), "--shards", str(out / "shards" / "0"),
        "--out", str(out / "3" / "report"), "--topk", "2",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    page = (out / "3" / "report" / "index.html").read_text()
    assert "fieldmap" in page and "original" in page and "masks shown" not in page
    run = netdissect(
        "report", "--dataset", str(tiny.root), "--layer-dir", str(out / "3"), "--shards", str(out / "shards" / "0"),
        "--out", str(out / "3" / "report2"), "--topk", "2", "--upsample", "bilinear",
    )  # fmt: skip
    assert run.returncode == 0 and "the masks shown will differ from the counted ones" in run.stderr
    assert "masks shown upsampled by" in (out / "3" / "report2" / "index.html").read_text()
