"""Model specs, weights files, layer capture (one pass, early stop), TorchScript outputs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from netdissect.cli import main
from netdissect.errors import NetDissectError
from netdissect.models import capture, layer_shapes, load_model

CALLS = {"after": 0}


class CountCalls(nn.Module):
    def forward(self, x):
        CALLS["after"] += 1
        return x


def counting_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), CountCalls(), nn.Conv2d(4, 2, 1))


def test_one_pass_serves_all_layers_and_stops_after_the_deepest():
    model = load_model("tests.test_engine_models:counting_model")
    x = torch.randn(2, 3, 12, 12)
    CALLS["after"] = 0
    with capture(model, ["2", "0"]) as run:
        for _ in range(4):
            out = run(x)
    assert CALLS["after"] == 1  # only the first pass (which measures the call counts) ran on
    with torch.no_grad():
        assert torch.equal(out["0"], model.module[0](x))
        assert torch.equal(out["2"], model.module[:3](x))
    # hooks are removed afterwards
    assert not any(m._forward_hooks for m in model.module.modules())


def test_module_called_twice_gives_its_last_output():
    model = load_model("resnet18")
    x = model.normalise(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8))
    with capture(model, ["layer1.0.relu", "layer1.0"]) as run:
        out = run(x)
    assert torch.equal(out["layer1.0.relu"], out["layer1.0"])


def test_layer_shapes_and_cli(capsys):
    model = load_model("resnet18")
    shapes = layer_shapes(model, size=64)
    assert shapes["layer4"] == (512, 2, 2) and shapes["fc"] == (1000,) and shapes["layer1.0.conv1"] == (64, 16, 16)
    assert main(["layers", "--model", "resnet18", "--size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # name, shape, how it is read, field map (offset, size, step; y,x) or why there is none
    assert "layer4\t512x2x2\tconv: 512 units, 2x2 maps\toffset -217,-217 size 435,435 step 32,32" in lines
    assert (
        "avgpool\t512x1x1\tconv: 512 units, 1x1 maps\tnone (adaptive_avg_pool2d in avgpool changes the map from "
        "2x2 to 1x1)" in lines
    )
    assert any(line.startswith("fc\t1000\tflat: 1000 units, 1x1 maps (image-level)\t") for line in lines)


def test_weights_state_dict_checkpoint_and_module_prefix(tmp_path):
    torch.manual_seed(3)
    source = torchvision.models.squeezenet1_0()
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "ckpt.pth"
    )
    model = load_model("squeezenet1_0", tmp_path / "ckpt.pth")
    assert torch.equal(model.module.features[0].weight, source.features[0].weight)
    assert model.weights_sha256 and len(model.weights_sha256) == 64
    assert not model.module.training


def test_weights_with_data_parallel_inside_a_key(tmp_path):
    """Places365's alexnet checkpoint wraps only `features` in DataParallel: `features.module.0.weight`."""
    torch.manual_seed(4)
    source = torchvision.models.alexnet()
    state = {k.replace("features.", "features.module.", 1): v for k, v in source.state_dict().items()}
    assert "features.module.0.weight" in state
    torch.save({"state_dict": state}, tmp_path / "alexnet.pth.tar")
    model = load_model("alexnet", tmp_path / "alexnet.pth.tar")
    assert torch.equal(model.module.features[0].weight, source.features[0].weight)
    assert torch.equal(model.module.classifier[1].weight, source.classifier[1].weight)


def test_weights_that_do_not_fit_list_the_keys(tmp_path):
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    del state["layer4.1.bn2.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(NetDissectError) as err:
        load_model("resnet18", tmp_path / "w.pt")
    text = str(err.value)
    assert "fc.weight (file (10, 512), model (1000, 512))" in text
    assert "missing: layer4.1.bn2.bias" in text and "unexpected: extra.weight" in text
    assert main(["layers", "--model", "resnet18", "--weights", str(tmp_path / "w.pt")]) == 2


def test_normalisation_options():
    model = load_model("tests.test_engine_models:counting_model", mean=[0.5], std=[0.25, 0.5, 1.0])
    x = model.normalise(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8))
    assert x.flatten().tolist() == [2.0, 1.0, 0.5]
    with pytest.raises(NetDissectError, match="--std"):
        load_model("tests.test_engine_models:counting_model", std=[1.0, 0.0, 1.0])


class DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        a = self.conv(x)
        return {"conv": a, "pooled": a.mean(dim=(2, 3))}


def test_torchscript_layers_are_its_outputs(tmp_path):
    torch.manual_seed(0)
    torch.jit.script(DictNet()).save(str(tmp_path / "m.pt"))
    model = load_model(str(tmp_path / "m.pt"))
    assert layer_shapes(model, size=8) == {"conv": (4, 8, 8), "pooled": (4,)}
    with capture(model, ["conv"]) as run:
        assert run(torch.zeros(2, 3, 8, 8))["conv"].shape == (2, 4, 8, 8)
    with pytest.raises(NetDissectError, match="Closest: conv"):
        with capture(model, ["cnv"]):
            pass


def test_unknown_model_and_layer_messages():
    with pytest.raises(NetDissectError, match="Closest: resnet18"):
        load_model("resnet81")
    with pytest.raises(NetDissectError, match="cannot import"):
        load_model("no_such_module_xyz:make")
    model = load_model("resnet18")
    with pytest.raises(NetDissectError, match=r"no layer 'layer5'.*Closest: layer.*Layers: conv1"):
        with capture(model, ["layer5"]):
            pass


def test_random_init_is_the_same_in_every_process():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b = load_model("resnet18"), load_model("resnet18")
    assert torch.equal(a.module.conv1.weight, b.module.conv1.weight)
    assert torch.equal(torch.rand(1), expected)  # the caller's random state is untouched


def test_factory_models_get_the_same_random_initialisation_in_every_load():
    """Each shard is extracted by its own process: an unweighted model must be the same network in each."""
    a = load_model("netdissect.demo:DemoNet").module.state_dict()
    torch.manual_seed(123)  # the caller's random state does not matter ...
    b = load_model("netdissect.demo:DemoNet").module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = load_model("netdissect.demo:DemoNet", seed=1).module.state_dict()  # ... the seed does
    assert not torch.equal(a["conv1.0.weight"], c["conv1.0.weight"])
