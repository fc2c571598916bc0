"""ONNX models (netdissect/models/onnx_models.py): an exported torchvision model dissects to the result
of the torch model; layers are node output names; token layers of an exported ViT-shaped model; bad input."""

from __future__ import annotations

import csv
import json
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from netdissect import pipeline
from netdissect.cli import main
from netdissect.errors import NetDissectError
from netdissect.models import load_model
from netdissect.names import layer_file_name
from tests.test_engine_helpers import write_tiny_broden

pytest.importorskip("onnx2pytorch")

LAYERS = {"layer2": "/layer2/layer2.1/relu_1/Relu_output_0", "layer3": "/layer3/layer3.1/relu_1/Relu_output_0"}


def export(module: nn.Module, path, size: int, **kwargs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(module, torch.zeros(1, 3, size, size), path, dynamo=False, input_names=["image"], **kwargs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_broden(tmp_path_factory.mktemp("onnx") / "broden", n_images=8, seg=8, scale=4, seed=4)


def read_rows(path):
    with open(path, newline="") as f:
        return {row["unit"]: row for row in csv.DictReader(f)}


def test_exported_torchvision_model_dissects_like_the_torch_model(tiny, tmp_path, capsys):
    model = load_model("resnet18")  # the seeded random initialisation of every load
    onnx_file = tmp_path / "resnet18.onnx"
    export(model.module, onnx_file, 32)  # a fixed batch of 1: the extraction runs one image at a time
    assert main(["layers", "--model", str(onnx_file), "--size", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # name, shape, reading, field map (traced through the converted graph: conv1 is 7x7, stride 2, pad 3)
    assert any(line.startswith(f"{LAYERS['layer3']}\t256x2x2\tconv: 256 units, 2x2 maps\toffset ") for line in lines)
    assert lines[0] == "/conv1/Conv_output_0\t64x16x16\tconv: 64 units, 16x16 maps\toffset -3,-3 size 7,7 step 2,2"
    assert not any("Constant" in line or line.startswith("onnx::") for line in lines)  # weights are not layers

    pipeline.dissect(tiny.root, "resnet18", list(LAYERS), tmp_path / "torch", q=0.05, progress=False)
    pipeline.dissect(tiny.root, str(onnx_file), list(LAYERS.values()), tmp_path / "onnx", q=0.05, progress=False)
    meta = json.loads((tmp_path / "onnx" / "shards" / "0" / "meta.json").read_text())
    assert meta["weights_sha256"] is not None and set(meta["layers"]) == set(LAYERS.values())
    for torch_layer, onnx_layer in LAYERS.items():
        ours = read_rows(tmp_path / "torch" / torch_layer / "result.csv")
        theirs = read_rows(tmp_path / "onnx" / layer_file_name(onnx_layer) / "result.csv")
        assert ours.keys() == theirs.keys() and len(ours) == {"layer2": 128, "layer3": 256}[torch_layer]
        for unit, row in ours.items():
            other = theirs[unit]
            for key, value in row.items():
                if key == "score" or key.endswith("-iou"):
                    assert float(other[key]) == pytest.approx(float(value), abs=1e-6), (torch_layer, unit, key)
                else:
                    assert other[key] == value, (torch_layer, unit, key)
        acts = np.load(tmp_path / "torch" / "shards" / "0" / f"{torch_layer}.act.npy")
        onnx_acts = np.load(tmp_path / "onnx" / "shards" / "0" / f"{layer_file_name(onnx_layer)}.act.npy")
        np.testing.assert_allclose(onnx_acts, acts, rtol=1e-4, atol=1e-4)


class PatchEmbed(nn.Module):
    patch_size = (8, 8)

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 6, 8, stride=8)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TinyViT(nn.Module):
    """ViT-shaped: an 8-px patch embedding, a class token, one residual MLP block."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.patch_embed = PatchEmbed()
        self.cls_token = nn.Parameter(torch.randn(1, 1, 6))
        self.block = nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 6), nn.GELU())

    def forward(self, x):
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), self.patch_embed(x)], dim=1)
        return tokens + self.block(tokens)


def test_exported_vit_token_layers_read_the_patch_grid(tiny, tmp_path):
    onnx_file = tmp_path / "vit.onnx"
    export(TinyViT().eval(), onnx_file, 32, output_names=["tokens"], dynamic_axes={"image": {0: "batch"}})
    model = load_model(str(onnx_file))
    assert model.fixed_batch is None and model.module.patch_size == (8, 8)  # from the patch embedding's Conv
    for tokens in ("spatial", "cls"):
        out_onnx = tmp_path / f"onnx_{tokens}"
        pipeline.dissect(tiny.root, str(onnx_file), ["tokens"], out_onnx, q=0.1, tokens=tokens, progress=False)
        meta = json.loads((out_onnx / "shards" / "0" / "meta.json").read_text())
        kind = "tokens" if tokens == "spatial" else "cls"
        assert meta["layers"]["tokens"]["readout"] == {"kind": kind, "prefix": 1, "grid": [4, 4]}
        with torch.inference_mode():
            direct = TinyViT().eval()(model.normalise(torch.from_numpy(tiny.images).permute(0, 3, 1, 2)))
        want = direct[:, 1:].transpose(1, 2).reshape(8, 6, 4, 4) if tokens == "spatial" else direct[:, 0, :, None, None]
        np.testing.assert_allclose(np.load(out_onnx / "shards" / "0" / "tokens.act.npy"), want.numpy(), atol=1e-5)


class FlattenHead(nn.Module):
    """Convolution, then a linear layer over the flattened map: runs only at the size it was built for."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * 32 * 32, 3)  # 64-px images

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


def test_onnx_bad_input(tiny, tmp_path, capsys, monkeypatch):
    fixed, dynamic = tmp_path / "fixed.onnx", tmp_path / "dynamic.onnx"
    export(FlattenHead().eval(), fixed, 64)
    axes = {"image": {0: "batch", 2: "height", 3: "width"}}
    export(FlattenHead().eval(), dynamic, 64, dynamic_axes=axes, output_names=["logits"])
    base = ["extract", "--dataset", str(tiny.root), "--out", str(tmp_path / "s"), "--no-progress"]
    # a fixed input size other than the dataset's (32x32)
    assert main([*base, "--model", str(fixed), "--layers", "/conv/Conv_output_0"]) == 2
    err = capsys.readouterr().err
    assert "input 'image' is 1x3x64x64, so it takes 64x64 images, not the dataset's 32x32" in err
    # dynamic axes, but the linear layer's input size is fixed: the shapes cannot be resolved at 32x32
    assert main([*base, "--model", str(dynamic), "--layers", "logits"]) == 2
    assert "the graph's shapes cannot be resolved for 32x32 images" in capsys.readouterr().err
    assert not (tmp_path / "s" / "meta.json").exists()
    # unknown layer: the closest node output names
    assert main([*base, "--model", str(dynamic), "--layers", "/conv/Conv_output"]) == 2
    assert "Closest: /conv/Conv_output_0" in capsys.readouterr().err
    # weights: an ONNX file carries its own
    with pytest.raises(NetDissectError, match="is an ONNX file, which carries its own weights"):
        load_model(str(dynamic), weights=str(fixed))
    with pytest.raises(NetDissectError, match="not a readable ONNX file"):
        (tmp_path / "junk.onnx").write_bytes(b"not a model")
        load_model(str(tmp_path / "junk.onnx"))
    # the converter is not installed: which extra installs it
    monkeypatch.setitem(sys.modules, "onnx2pytorch", None)
    with pytest.raises(NetDissectError, match=r'needs the onnx2pytorch package.*pip install "netdissect\[onnx\]"'):
        load_model(str(dynamic))
