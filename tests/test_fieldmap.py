"""Field maps compose as docs/dissection.md §3 says (CaffeNet/AlexNet conv5 is (-64, 163, 16)), and
are traced from the operations a torch model runs (netdissect/models/fieldmaps.py), hand-checked."""

import warnings

import pytest
import torch
import torchvision
from torch import nn

from netdissect.models import load_model
from netdissect.models.fieldmap import IDENTITY, FieldMap, largest
from netdissect.models.fieldmaps import trace_field_maps
from netdissect.models.loading import LoadedModel


def test_caffenet_conv5_field_map():
    layers = [(11, 4, 0), (3, 2, 0), (5, 1, 2), (3, 2, 0), (3, 1, 1), (3, 1, 1), (3, 1, 1)]  # conv1 .. conv5
    field = IDENTITY
    for kernel, stride, pad in layers:
        field = field.then(FieldMap.of_window((kernel, kernel), (stride, stride), (pad, pad)))
    assert field == FieldMap(offset=(-64, -64), size=(163, 163), step=(16, 16))


def test_dilation_identity_and_merge():
    dilated = FieldMap.of_window((3, 3), dilation=(2, 1))
    assert dilated.size == (5, 3) and dilated.offset == (0, 0)
    one = FieldMap.of_window((7, 7), (2, 2), (3, 3))
    assert one.then(IDENTITY) == one == IDENTITY.then(one)
    assert largest(one, IDENTITY) == one and largest(IDENTITY, one) == one


# ---------------------------------------------------------------- field maps traced from torch models


def traced(module: nn.Module, layers, size=(224, 224)):
    return trace_field_maps(LoadedModel(module.eval(), "test"), layers, size)


def fm(offset: int, size: int, step: int) -> FieldMap:
    return FieldMap((offset, offset), (size, size), (step, step))


def test_caffenet_conv5_built_in_torch():
    """CaffeNet (227-px input, grouped convolutions, LRN, in-place ReLUs): conv5 is (-64, 163, 16)."""
    net = nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2), nn.LocalResponseNorm(5),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2), nn.LocalResponseNorm(5),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(inplace=True),
    )  # fmt: skip
    fields = traced(net, ["0", "4", "12", "13"], (227, 227))
    assert fields["0"] == fm(0, 11, 4) and fields["4"] == fm(-16, 51, 8)
    assert fields["12"] == fields["13"] == fm(-64, 163, 16)


def test_torchvision_alexnet_features_11():
    """torchvision's AlexNet pads conv1 by 2: conv1 (-2, 11, 4), pool (-2, 19, 8), conv2 (-18, 51, 8),
    pool (-18, 67, 16), conv3 (-34, 99, 16), conv4 (-50, 131, 16), conv5 and its ReLU (-66, 163, 16)."""
    fields = traced(torchvision.models.alexnet(), ["features.0", "features.5", "features.10", "features.11"])
    assert fields["features.0"] == fm(-2, 11, 4) and fields["features.5"] == fm(-18, 67, 16)
    assert fields["features.10"] == fields["features.11"] == fm(-66, 163, 16)
    assert "leaves no spatial map" in traced(torchvision.models.alexnet(), ["classifier.1"])["classifier.1"]


def test_resnet_paths_merge_to_the_largest():
    """A residual add takes the larger of the block's path and the shortcut."""
    fields = traced(
        torchvision.models.resnet18(),
        ["maxpool", "layer1.0.bn2", "layer1.0", "layer2.0.downsample", "layer2.0", "avgpool"],
    )
    assert fields["maxpool"] == fm(-5, 11, 4)  # conv1 (-3, 7, 2), then pool 3/2/1
    assert fields["layer1.0.bn2"] == fields["layer1.0"] == fm(-13, 27, 4)  # two 3x3 convs; the shortcut is smaller
    assert fields["layer2.0.downsample"] == fm(-21, 43, 8)  # shortcut: the 1x1 stride-2 conv after layer1
    assert fields["layer2.0"] == fm(-33, 67, 8)  # the path: layer1 (-21, 43, 4), then 3x3/2/1 and 3x3/1/1
    assert fields["avgpool"] == "adaptive_avg_pool2d in avgpool changes the map from 7x7 to 1x1"


def test_vgg_densenet_googlenet_demo():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # googlenet's note on its init
        googlenet = torchvision.models.googlenet(init_weights=False)
    vgg = traced(torchvision.models.vgg16(), ["features.0", "features.4", "features.29", "features.30"])
    assert vgg["features.0"] == fm(-1, 3, 1) and vgg["features.4"] == fm(-2, 6, 2)  # conv1_1; pool1
    assert vgg["features.29"] == fm(-90, 196, 16) and vgg["features.30"] == fm(-90, 212, 32)  # conv5_3's ReLU, pool5
    dense = traced(
        torchvision.models.densenet121(), ["features.pool0", "features.denseblock1.denselayer1", "features.denseblock1"]
    )
    assert dense["features.pool0"] == fm(-5, 11, 4)
    assert dense["features.denseblock1.denselayer1"] == fm(-9, 19, 4)  # 1x1 then 3x3 conv
    assert dense["features.denseblock1"] == fm(-29, 59, 4)  # concat: the largest path, 6 layers deep
    inception = traced(googlenet, ["maxpool2", "inception3a.branch4", "inception3a"])
    assert inception["maxpool2"] == fm(-7, 27, 8)  # 7x7/2/3, pool 3/2, 1x1, 3x3/1/1, pool 3/2 (ceil mode)
    assert inception["inception3a.branch4"] == fm(-15, 43, 8)  # 3x3/1/1 pool then a 1x1 conv
    assert inception["inception3a"] == fm(-15, 43, 8)  # concat of 4 branches: the widest (not the 1x1 one)
    demo = trace_field_maps(load_model("netdissect.demo:DemoNet"), ["conv1", "conv2", "conv3", "conv4"])
    assert [demo[f"conv{n}"] for n in (1, 2, 3, 4)] == [fm(-2, 5, 2), fm(-4, 9, 4), fm(-8, 17, 8), fm(-16, 33, 16)]


class Op(nn.Module):
    """A function as a module, so that its output is a layer with a name."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, *xs):
        return self.f(*xs)


class Odd(nn.Module):
    """Functional operations: padding, a 'same' dilated convolution, a broadcast gate, an upsampling,
    transposes, and a matmul over flattened positions."""

    def __init__(self):
        super().__init__()
        self.pad = Op(lambda x: torch.nn.functional.pad(x, (3, 1, 2, 0)))  # left 3, right 1, top 2
        self.same = nn.Conv2d(3, 4, 5, padding="same", dilation=2)
        self.gate = nn.Conv2d(4, 4, 1)
        self.gated = Op(lambda x, g: x * torch.sigmoid(g))
        self.up = Op(lambda x: torch.nn.functional.interpolate(x, scale_factor=2))
        self.swapped = Op(lambda x: x.transpose(2, 3))
        self.kept = Op(lambda x: x.transpose(0, 1))
        self.mixed = Op(lambda x: (x.flatten(2) @ x.flatten(2).transpose(1, 2) @ x.flatten(2)).view(x.shape))

    def forward(self, x):
        x = self.same(self.pad(x))
        x = self.gated(x, self.gate(x.mean((2, 3), keepdim=True)))  # squeeze-and-excitation
        return self.up(x), self.swapped(x), self.kept(x), self.mixed(x)


def test_functional_operations():
    fields = trace_field_maps(LoadedModel(Odd().eval(), "odd"), None, (20, 20))
    assert fields["pad"] == FieldMap((-2, -3), (1, 1), (1, 1))
    assert fields["same"] == FieldMap((-6, -7), (9, 9), (1, 1))  # 'same' pads 4 = 2·(5-1)/2 before
    assert fields["gate"] == "mean in the model's own forward changes the map from 22x24 to 1x1"  # global pooling
    assert fields["gated"] == fields["same"]  # a 1x1 gate broadcast over the map does not count
    assert fields["up"] == "interpolate in up moves or mixes positions"
    assert fields["swapped"] == "transpose in swapped moves the spatial axes"
    assert fields["kept"] == fields["same"]  # batch and channel axes swapped: the map stays
    assert fields["mixed"] == "flatten in mixed changes the map from 22x24 to 4x528"


def test_converted_and_scripted_models(tmp_path):
    own = LoadedModel(nn.Conv2d(3, 4, 3), "caffe", field_maps={"conv5": fm(-64, 163, 16)})
    assert trace_field_maps(own, ["conv5", "fc6"]) == {
        "conv5": fm(-64, 163, 16),
        "fc6": "the converted graph records no field map for it",
    }
    path = tmp_path / "net.pt"
    torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3))).save(str(path))
    assert trace_field_maps(load_model(str(path)), ["output"]) == {
        "output": "a TorchScript model's operations cannot be followed"
    }


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "shufflenet_v2_x0_5"])
def test_more_torchvision_families(name):
    """Squeeze-and-excitation gates (broadcast 1x1 maps) and channel shuffles (views that keep the map)."""
    layers = ["features.12"] if name.startswith("mobilenet") else ["stage4", "conv5"]
    fields = traced(torchvision.models.get_model(name, weights=None), layers)
    assert all(isinstance(f, FieldMap) and f.step == (32, 32) for f in fields.values()), fields
