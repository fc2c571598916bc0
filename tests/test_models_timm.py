"""timm models (``timm:NAME``, random weights, never a download) through ``dissect`` and the workflow,
safetensors weights for every kind of model, and the bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from netdissect.cli import main
from netdissect.errors import NetDissectError
from netdissect.models import load_model
from tests.test_engine_helpers import write_tiny_broden
from tests.workflow_run import read_csv, snakemake, tiny_config

pytest.importorskip("timm")
os.environ["HF_HUB_OFFLINE"] = "1"  # defensively: nothing here may reach a model hub

VIT = "timm:vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def images224(tmp_path_factory):
    return write_tiny_broden(tmp_path_factory.mktemp("timm") / "broden", n_images=4, seg=112, scale=2, seed=6)


def test_vit_tiny_dissects_end_to_end(images224, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["dissect", "--dataset", str(images224.root), "--model", VIT, "--layers", "blocks.6,head"]
    assert main([*args, "--out", str(out), "--quantile", "0.05", "--no-progress"]) == 0
    assert "blocks.6: " in capsys.readouterr().out
    meta = json.loads((out / "shards" / "0" / "meta.json").read_text())
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["std"] == [0.5, 0.5, 0.5]  # the model's pretrained_cfg
    block = meta["layers"]["blocks.6"]
    assert block["readout"] == {"kind": "tokens", "prefix": 1, "grid": [14, 14]}
    assert (block["units"], block["height"], block["width"]) == (192, 14, 14)
    assert meta["layers"]["head"]["readout"]["kind"] == "flat"
    rows = read_csv(out / "blocks.6" / "result.csv")
    assert len(rows) == 1 + 192 and rows[0][:4] == ["unit", "category", "label", "score"]
    # the stored maps are the block's patch tokens laid out on the grid
    model = load_model(VIT)
    x = model.normalise(torch.from_numpy(images224.images).permute(0, 3, 1, 2))
    with torch.inference_mode():
        tokens = model.module.blocks[:7](model.module._pos_embed(model.module.patch_embed(x)))
    want = tokens[:, 1:].transpose(1, 2).reshape(4, 192, 14, 14).numpy()
    np.testing.assert_allclose(np.load(out / "shards" / "0" / "blocks.6.act.npy"), want, rtol=1e-4, atol=1e-4)


def test_timm_random_init_is_seeded_and_mean_std_can_be_overridden():
    a, b = load_model(VIT), load_model(VIT)
    assert all(torch.equal(a.module.state_dict()[k], v) for k, v in b.module.state_dict().items())
    other = load_model(VIT, seed=1)
    assert not torch.equal(
        other.module.state_dict()["blocks.0.attn.qkv.weight"], a.module.state_dict()["blocks.0.attn.qkv.weight"]
    )
    assert load_model(VIT, mean=[0.1, 0.2, 0.3], std=[1.0]).mean == (0.1, 0.2, 0.3)
    assert load_model("timm:resnet18").mean == (0.485, 0.456, 0.406)


def test_timm_bad_input(capsys, monkeypatch):
    assert main(["layers", "--model", "timm:vit_smal_patch16_224"]) == 2
    err = capsys.readouterr().err
    assert "timm has no architecture 'vit_smal_patch16_224'. Closest: vit_small_patch16_224" in err
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(NetDissectError, match=r'needs the timm package.*pip install "netdissect\[timm\]"'):
        load_model(VIT)


def test_safetensors_weights_for_torchvision_timm_and_factory_models(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    for spec in ("resnet18", "timm:resnet18", "netdissect.demo:DemoNet"):
        source = load_model(spec, seed=5).module.state_dict()
        path = tmp_path / f"{spec.replace(':', '_')}.safetensors"
        save_file({k: v.contiguous() for k, v in source.items()}, str(path))
        loaded = load_model(spec, weights=path)
        assert all(torch.equal(loaded.module.state_dict()[k], v) for k, v in source.items()), spec
        assert loaded.weights == str(path) and loaded.weights_sha256 is not None
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(NetDissectError, match="not a readable safetensors file"):
        load_model("resnet18", weights=tmp_path / "bad.safetensors")
    with pytest.raises(NetDissectError, match="does not fit the architecture"):
        load_model("resnet34", weights=tmp_path / "resnet18.safetensors")
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(NetDissectError, match=r'pip install "netdissect\[safetensors\]"'):
        load_model("resnet18", weights=tmp_path / "resnet18.safetensors")


def test_workflow_with_a_timm_spec(tmp_path):
    config = tiny_config(images=4, shards=1, demo=False)
    config["models"] = {
        "vit": {"spec": VIT, "weights": {"source": "random", "seed": 0}, "layers": ["blocks.6"], "tokens": "cls"}
    }
    config["runs"] = [{"dataset": "tiny", "models": ["vit"]}]
    proc = snakemake(tmp_path, "--cores", "2", "results", config=config, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    layer_dir = tmp_path / "results" / "layers" / "tiny" / "vit" / "blocks.6"
    meta = json.loads((tmp_path / "results" / "shards" / "tiny" / "vit" / "0" / "meta.json").read_text())
    assert meta["model"] == VIT and meta["tokens"] == "cls"
    assert meta["layers"]["blocks.6"]["readout"]["kind"] == "cls"
    # the same numbers as one `netdissect dissect` with the workflow's random weights
    out = tmp_path / "oneshot"
    subprocess.run(
        ["netdissect", "dissect", "--dataset", str(tmp_path / "datasets" / "tiny"), "--model", VIT]
        + ["--weights", str(tmp_path / "models" / "vit.pt"), "--layers", "blocks.6", "--tokens", "cls"]
        + ["--out", str(out), "--dtype", "float32", "--batch-size", "4", "--no-progress"],
        check=True,
        capture_output=True,
    )
    assert read_csv(layer_dir / "result.csv") == read_csv(out / "blocks.6" / "result.csv")
    assert len(read_csv(layer_dir / "result.csv")) == 1 + 192
