"""A captured layer's values are its own, whatever is requested with it and whatever in-place
operation follows it (torchvision's own models: ReLU(inplace=True), ``out += identity``); and every
layer's result.csv is the same whether it is dissected alone or with others."""

from __future__ import annotations

import warnings

import pytest
import torch

from netdissect import pipeline
from netdissect.broden import BrodenDataset
from netdissect.extract import extract_shard
from netdissect.models import capture, load_model
from tests.test_engine_helpers import write_tiny_broden

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def captured(model, layers, x, copy_all=False):
    with capture(model, layers, copy_all) as run:
        first, second = run(x), run(x)  # the first call runs the whole model, later ones stop early
        return first, second, run.copied


def test_alexnet_conv1_alone_and_with_conv2(images):
    model = load_model("alexnet")
    x = model.normalise(images)
    with torch.no_grad():
        direct = model.module.features[0](x)  # no in-place ReLU has run on it
    assert direct.min() < 0
    for layers in (["features.0"], ["features.0", "features.4"], ["features.4", "features.0"]):
        first, second, copied = captured(model, layers, x)
        assert torch.equal(first["features.0"], direct) and torch.equal(second["features.0"], direct), layers
        assert "features.0" in copied
    with torch.no_grad():
        conv2 = model.module.features[:5](x.clone())
    assert torch.equal(captured(model, ["features.0", "features.4"], x)[1]["features.4"], conv2)


def test_vgg_convolutions_before_their_relus(images):
    model = load_model("vgg11")
    x = model.normalise(images)
    with torch.no_grad():
        conv1 = model.module.features[0](x)
        conv2 = model.module.features[:4](x.clone())
    first, second, copied = captured(model, ["features.0", "features.3", "features.20"], x)
    for out in (first, second):
        assert torch.equal(out["features.0"], conv1) and torch.equal(out["features.3"], conv2)
    assert {"features.0", "features.3"} <= copied and conv1.min() < 0 and conv2.min() < 0


def test_resnet_bn2_before_the_residual_add(images):
    model = load_model("resnet18")
    m = model.module
    x = model.normalise(images)
    with torch.no_grad():
        stem = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        block = m.layer1[0]
        bn2 = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(stem)))))
        after = torch.relu(bn2 + stem)
    first, second, copied = captured(model, ["layer1.0.bn2", "layer1.0", "layer2"], x)
    for out in (first, second):
        assert torch.equal(out["layer1.0.bn2"], bn2) and torch.equal(out["layer1.0"], after)
    assert copied == {"layer1.0.bn2"}  # blocks' outputs are never changed afterwards: not copied


def test_densenet_norm_before_its_relu(images):
    model = load_model("densenet121")
    x = model.normalise(images)
    layer = model.module.features.denseblock1.denselayer1
    with torch.no_grad():
        norm2 = layer.norm2(layer.conv1(layer.relu1(layer.norm1(model.module.features[:4](x)))))
    assert norm2.min() < 0
    name = "features.denseblock1.denselayer1.norm2"
    first, second, _ = captured(model, [name, "features.transition1"], x)
    assert torch.equal(first[name], norm2) and torch.equal(second[name], norm2)


def test_default_layers_are_never_copied(images):
    """The default run's layers (the demo net's blocks, resnet18's stages) are not changed in place,
    so they are captured by reference as before: nothing to copy, the same values."""
    for spec, layers in (
        ("resnet18", ["layer2", "layer3", "layer4"]),
        ("netdissect.demo:DemoNet", ["conv2", "conv3", "conv4"]),
    ):
        model = load_model(spec)
        x = model.normalise(images)
        first, second, copied = captured(model, layers, x)
        assert copied == set()
        copies = captured(model, layers, x, copy_all=True)[1]
        assert all(torch.equal(second[n], copies[n]) for n in layers)


def dissect_with(model, dataset, layers, out):
    """extract (one shard) -> quantile -> tally -> score, with an already loaded model."""
    ds = BrodenDataset(dataset, load_labels=False)
    extract_shard(ds, model, layers, 0, 1, out / "shards", batch_size=4, quantile=0.1, progress=False)
    texts = {}
    for layer in layers:
        pipeline.quantile([out / "shards"], layer, out / layer)
        pipeline.tally(
            dataset,
            out / "shards",
            layer,
            out / layer / "thresholds.npy",
            out / layer / "c.npz",
            batch_size=4,
            progress=False,
        )
        pipeline.score(out / layer / "c.npz", dataset, out / layer)
        texts[layer] = (out / layer / "result.csv").read_text()
    return texts


@pytest.mark.parametrize(
    "spec,layers",
    [
        ("alexnet", [f"features.{i}" for i in range(13)]),
        (
            "resnet18",
            ["conv1", "bn1", "relu", "maxpool"]
            + [f"layer1.0.{n}" for n in ("conv1", "bn1", "relu", "conv2", "bn2")]
            + ["layer1.0", "layer1.1.bn2", "layer2.0.bn2", "layer2.0.downsample.1", "layer2.0", "layer4.1.bn2"],
        ),
    ],
)
def test_every_layer_alone_equals_with_the_others(tmp_path, spec, layers):
    dataset = write_tiny_broden(tmp_path / "broden", n_images=6, seg=32, scale=2, seed=5).root
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(spec)
    together = dissect_with(model, dataset, layers, tmp_path / "all")
    for layer in layers:
        alone = dissect_with(model, dataset, [layer], tmp_path / f"alone_{layer}")
        assert alone[layer] == together[layer], layer
