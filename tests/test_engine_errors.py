"""Bad input: a clear NetDissectError (exit status 2 from the CLI) and no output that looks finished."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from netdissect import pipeline
from netdissect.cli import main
from netdissect.errors import NetDissectError
from tests.test_engine_helpers import write_tiny_broden

SPEC = "tests.test_engine_errors:make_model"


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )


class NanOnDarkCorner(nn.Module):
    """Activations are NaN for an image whose top-left pixel is black."""

    def forward(self, x):
        dark = (x[:, :, 0, 0] * torch.tensor([0.229, 0.224, 0.225]) + torch.tensor([0.485, 0.456, 0.406])) < 1e-3
        out = torch.ones_like(x[:, :2])
        out[dark.all(dim=1)] = float("nan")
        return out


def nan_model() -> nn.Module:
    return nn.Sequential(NanOnDarkCorner())


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_broden(tmp_path / "broden", n_images=6, seg=4, scale=2, seed=1)


def test_unknown_layer_names_the_closest(tiny, tmp_path, capsys):
    code = main(
        [
            "extract",
            "--dataset",
            str(tiny.root),
            "--model",
            SPEC,
            "--layers",
            "0,44",
            "--out",
            str(tmp_path / "s"),
            "--no-progress",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "no layer '44'" in err and "Closest: 4" in err and err.startswith("netdissect extract: error:")
    assert not (tmp_path / "s" / "meta.json").exists()


def test_flat_layer_is_treated_as_1x1_maps_with_a_warning(tiny, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        meta = pipeline.extract(tiny.root, SPEC, ["4"], 0, 1, tmp_path / "s", quantile=0.2, progress=False)
    assert "no spatial dimensions" in caplog.text and "4" in caplog.text
    assert meta["layers"]["4"] | {} == {
        "units": 3,
        "height": 1,
        "width": 1,
        "flat": True,
        "readout": {"kind": "flat", "prefix": 0, "grid": None},
        "num_values": 6,
        "candidates": 2,
        "field_map": None,  # (global pooling on the way: --upsample fieldmap refuses this layer)
        "field_map_none": "adaptive_avg_pool2d in 2 changes the map from 8x8 to 1x1",
    }
    assert np.load(tmp_path / "s" / "4.act.npy").shape == (6, 3, 1, 1)
    # and it dissects: a 1x1 map upsampled is constant, so masks are whole images or empty
    out = pipeline.dissect(tiny.root, SPEC, ["4"], tmp_path / "d", q=0.2, progress=False)
    assert out["4"]["units"] == 3


def test_nan_activation_names_layer_and_image(tmp_path):
    images = np.full((5, 8, 8, 3), 200, np.uint8)
    images[3, 0, 0] = 0
    tiny = write_tiny_broden(tmp_path / "b", n_images=5, seg=4, scale=2, images=images)
    with pytest.raises(NetDissectError) as err:
        pipeline.extract(
            tiny.root, "tests.test_engine_errors:nan_model", ["0"], 0, 1, tmp_path / "s", batch_size=2, progress=False
        )
    text = str(err.value)
    assert "layer 0" in text and "img003.jpg" in text and "row 5" in text
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == []  # nothing left behind


@pytest.mark.parametrize("workers", [0, 2])
def test_image_size_differs_from_index(tiny, tmp_path, capsys, workers):
    Image.fromarray(np.zeros((5, 8, 3), np.uint8)).save(tiny.root / "images" / "src" / "img004.jpg", format="PNG")
    code = main(
        [
            "dissect",
            "--dataset",
            str(tiny.root),
            "--model",
            SPEC,
            "--layers",
            "0",
            "--out",
            str(tmp_path / "d"),
            "--workers",
            str(workers),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "img004.jpg" in err and "ih=8, iw=8" in err
    assert "Traceback" not in err
    assert not (tmp_path / "d" / "shards" / "0" / "meta.json").exists()
    assert not (tmp_path / "d" / "shards" / "0" / "0.act.npy").exists()
    assert not (tmp_path / "d" / "0" / "result.csv").exists()


def test_empty_dataset(tiny, tmp_path, capsys):
    index = tiny.root / "index.csv"
    index.write_bytes(index.read_bytes().split(b"\r\n")[0] + b"\r\n")
    assert (
        main(
            [
                "dissect",
                "--dataset",
                str(tiny.root),
                "--model",
                SPEC,
                "--layers",
                "0",
                "--out",
                str(tmp_path / "d"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "empty" in capsys.readouterr().err


def test_thresholds_file_of_wrong_length(tiny, tmp_path, capsys):
    np.save(tmp_path / "t.npy", np.zeros(7))
    code = main(
        [
            "dissect",
            "--dataset",
            str(tiny.root),
            "--model",
            SPEC,
            "--layers",
            "0",
            "--out",
            str(tmp_path / "d"),
            "--thresholds",
            str(tmp_path / "t.npy"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "expected 4 numbers (one per unit of layer 0)" in err and "(7,)" in err
    assert not (tmp_path / "d" / "0" / "thresholds.npy").exists()
    # a right-length file is used as given
    np.save(tmp_path / "t.npy", np.array([0.1, 0.2, 0.3, 0.4]))
    assert (
        main(
            [
                "dissect",
                "--dataset",
                str(tiny.root),
                "--model",
                SPEC,
                "--layers",
                "0",
                "--out",
                str(tmp_path / "d"),
                "--thresholds",
                str(tmp_path / "t.npy"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert np.array_equal(np.load(tmp_path / "d" / "0" / "thresholds.npy"), [0.1, 0.2, 0.3, 0.4])


def test_missing_or_repeated_shards(tiny, tmp_path, capsys):
    dirs = []
    for k in range(3):
        dirs.append(str(tmp_path / f"s{k}"))
        assert (
            main(
                [
                    "extract",
                    "--dataset",
                    str(tiny.root),
                    "--model",
                    SPEC,
                    "--layers",
                    "0",
                    "--shard",
                    str(k),
                    "--shards",
                    "3",
                    "--out",
                    dirs[-1],
                    "--no-progress",
                ]
            )
            == 0
        )
    assert main(["quantile", "--shards", dirs[0], dirs[2], "--layer", "0", "--out", str(tmp_path / "l")]) == 2
    assert "a shard is missing" in capsys.readouterr().err
    assert main(["quantile", "--shards", *dirs, "--layer", "0", "--out", str(tmp_path / "l")]) == 0
    tallies = []
    for k in range(3):
        tallies.append(str(tmp_path / f"t{k}.npz"))
        assert (
            main(
                [
                    "tally",
                    "--dataset",
                    str(tiny.root),
                    "--shard",
                    dirs[k],
                    "--layer",
                    "0",
                    "--thresholds",
                    str(tmp_path / "l" / "thresholds.npy"),
                    "--out",
                    tallies[-1],
                    "--no-progress",
                ]
            )
            == 0
        )
    assert (
        main(["merge", "--inputs", tallies[0], tallies[1], tallies[1], tallies[2], "--out", str(tmp_path / "c.npz")])
        == 2
    )
    assert "given twice" in capsys.readouterr().err and not (tmp_path / "c.npz").exists()
    assert main(["merge", "--inputs", *tallies, "--out", str(tmp_path / "c.npz")]) == 0
    assert (
        main(["score", "--counts", str(tmp_path / "c.npz"), "--dataset", str(tiny.root), "--out", str(tmp_path / "l")])
        == 0
    )
    assert (tmp_path / "l" / "result.csv").read_text().startswith("unit,category,label,score,color-label")
