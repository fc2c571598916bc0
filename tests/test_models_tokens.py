"""Token and channels-last layers (netdissect/models/readout.py): planted detectors in token space, the
class token as image-level units, the same counts as a plain brute force, and the bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netdissect import pipeline
from netdissect.cli import main
from netdissect.counts import load_counts
from netdissect.errors import NetDissectError
from netdissect.models.readout import TokenLayout, looks_spatial, plan_readout
from tests.test_engine_helpers import reference, write_tiny_broden
from tests.test_engine_planted import PLANTED

PATCH = 8  # pixels per token side
PREFIX = 3  # class token + 2 register tokens before the patch grid
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class PatchEmbed(nn.Module):
    """Declares the patch size the way timm does; computes nothing itself."""

    patch_size = (PATCH, PATCH)


class TokenDetector(nn.Module):
    """ViT-shaped: output (B, PREFIX + h·w, D). Token d of patch (y, x) = the coverage of planted label d in
    that patch (the label numbers are planted in the pixels); the class token holds whether the image has
    the label at all; the register tokens hold junk (they must never be read as patches)."""

    num_prefix_tokens = PREFIX
    has_class_token = True

    def __init__(self):
        super().__init__()
        self.patch_embed = PatchEmbed()
        self.block = nn.Identity()  # the layer to dissect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = torch.round((x * STD + MEAN) * 255)
        present = torch.stack([(values[:, ch] == label).float() for ch, label, _ in PLANTED], dim=1)  # B,D,H,W
        coverage = F.avg_pool2d(present, PATCH)  # B, D, h, w
        patches = coverage.flatten(2).transpose(1, 2)  # B, h·w, D (row by row)
        cls = present.amax(dim=(2, 3))[:, None, :]
        registers = torch.full((x.shape[0], PREFIX - 1, len(PLANTED)), 7.0)
        return self.block(torch.cat([cls, registers, patches], dim=1))


def planted_dataset(tmp_path, seg: int, scale: int):
    """A tiny Broden dataset whose pixels carry the label numbers of PLANTED (as in test_engine_planted):
    red = the object layer, green = the scene, blue = the color layer, each label pixel an scale×scale block."""
    data = write_tiny_broden(tmp_path / "labels", n_images=12, seg=seg, scale=scale, seed=3)
    size = seg * scale
    images = np.zeros((12, size, size, 3), np.uint8)
    for i, layers in enumerate(data.layers):
        up = lambda a: np.kron(a, np.ones((scale, scale), np.int64))
        images[i, ..., 0] = up(layers[1])
        images[i, ..., 1] = next((l for l in data.image_labels[i] if 13 <= l <= 15), 0)
        images[i, ..., 2] = up(layers[0])
    planted = write_tiny_broden(tmp_path / "broden", n_images=12, seg=seg, scale=scale, seed=3, images=images)
    assert all(np.array_equal(a, b) for a, b in zip(planted.layers, data.layers))
    return planted


def label_coverage(data, seg: int, patch_seg: int, kind: str) -> np.ndarray:
    """The planted maps computed from the label files directly: (N, D, seg/patch_seg, seg/patch_seg)
    coverage per patch, or (N, D, 1, 1) presence for the class token."""
    maps = []
    for i, layers in enumerate(data.layers):
        scene = next((l for l in data.image_labels[i] if 13 <= l <= 15), 0)
        units = []
        for ch, label, _ in PLANTED:
            source = {0: layers[1], 2: layers[0]}.get(ch)
            hit = (source == label) if source is not None else np.full((seg, seg), scene == label)
            hit = hit.astype(np.float64)
            if kind == "cls":
                units.append(hit.max()[None, None])
            else:
                g = seg // patch_seg
                units.append(hit.reshape(g, patch_seg, g, patch_seg).mean(axis=(1, 3)))
        maps.append(np.stack(units))
    return np.stack(maps).astype(np.float32)


def rows_of(path):
    return {int(r.split(",")[0]): r.split(",") for r in path.read_text().splitlines()[1:]}


def test_planted_token_detectors_get_iou_1(tmp_path):
    # one token per segmentation pixel (32-px images, 8-px patches, 4x4 segmentations): the coverage map
    # is the label's indicator, so q = 0.5 gives threshold 0 and masks equal to the labels
    data = planted_dataset(tmp_path, seg=4, scale=PATCH)
    out = tmp_path / "out"
    pipeline.dissect(data.root, "tests.test_models_tokens:TokenDetector", ["block"], out, q=0.5, progress=False)
    meta = json.loads((out / "shards" / "0" / "meta.json").read_text())
    assert meta["layers"]["block"]["readout"] == {"kind": "tokens", "prefix": PREFIX, "grid": [4, 4]}
    acts = np.load(out / "shards" / "0" / "block.act.npy")
    assert np.array_equal(acts, label_coverage(data, 4, 1, "tokens"))
    rows = rows_of(out / "block" / "result.csv")
    for unit, (_, _, name) in enumerate(PLANTED, start=1):
        assert rows[unit][2] == name
        assert float(rows[unit][3]) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("tokens", ["spatial", "cls"])
def test_token_maps_count_like_the_brute_force(tmp_path, tokens):
    # 2x2 segmentation pixels per patch: the 4x4 coverage maps are upsampled to 8x8 with the same
    # bilinear rule as convolutional maps; the class token gives 1x1 maps (whole image or nothing).
    # Threshold 0.5: a mask is where more than half of a patch (or of the images' presence) has the label
    data = planted_dataset(tmp_path, seg=8, scale=PATCH // 2)
    out = tmp_path / "out"
    thresholds = np.full(len(PLANTED), 0.5)
    np.save(tmp_path / "t.npy", thresholds)
    spec = "tests.test_models_tokens:TokenDetector"
    pipeline.dissect(
        data.root, spec, ["block"], out, thresholds_file=str(tmp_path / "t.npy"), tokens=tokens, progress=False
    )
    meta = json.loads((out / "shards" / "0" / "meta.json").read_text())
    info = meta["layers"]["block"]
    assert meta["tokens"] == tokens
    assert info["readout"]["kind"] == ("tokens" if tokens == "spatial" else "cls")
    assert (info["height"], info["width"]) == ((4, 4) if tokens == "spatial" else (1, 1))
    acts = np.load(out / "shards" / "0" / "block.act.npy")
    expected = label_coverage(data, 8, 2, "tokens" if tokens == "spatial" else "cls")
    np.testing.assert_allclose(acts, expected, atol=1e-6)
    ref = reference(acts, data, thresholds=thresholds)
    counts = load_counts(out / "block" / "counts.npz")
    for key in ("G", "I", "C"):
        assert np.array_equal(counts[key], ref[key]), key
    if tokens == "cls":
        # image-level units: the scene unit's class token is exactly the image-level scene label
        scene_unit = next(u for u, (_, _, name) in enumerate(PLANTED, start=1) if name == "street-s")
        row = rows_of(out / "block" / "result.csv")[scene_unit]
        assert row[2] == "street-s" and float(row[3]) == pytest.approx(1.0, abs=1e-9)


class GridFeatures(nn.Module):
    """Some fixed features on a 4x4 grid of 8-px patches, returned as B×D×h×w, B×h×w×D or tokens."""

    def __init__(self, layout: str):
        super().__init__()
        self.layout = layout
        self.patch_embed = PatchEmbed()
        self.num_prefix_tokens = 1
        self.out = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x, PATCH)  # B, 3, 4, 4
        maps = torch.cat([pooled, pooled.square(), pooled[:, :1] * pooled[:, 1:2]], dim=1)  # B, 7, 4, 4
        if self.layout == "conv":
            return self.out(maps)
        if self.layout == "channels_last":
            return self.out(maps.permute(0, 2, 3, 1))
        tokens = maps.flatten(2).transpose(1, 2)
        return self.out(torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1))


def grid_conv():
    return GridFeatures("conv")


def grid_channels_last():
    return GridFeatures("channels_last")


def grid_tokens():
    return GridFeatures("tokens")


def test_conv_channels_last_and_tokens_give_the_same_result(tmp_path):
    data = write_tiny_broden(tmp_path / "broden", n_images=8, seg=8, scale=4, seed=2)
    results = {}
    for kind in ("conv", "channels_last", "tokens"):
        out = tmp_path / kind
        pipeline.dissect(data.root, f"tests.test_models_tokens:grid_{kind}", ["out"], out, q=0.1, progress=False)
        meta = json.loads((out / "shards" / "0" / "meta.json").read_text())
        assert meta["layers"]["out"]["readout"]["kind"] == kind
        results[kind] = (out / "out" / "result.csv").read_bytes()
    assert results["conv"] == results["channels_last"] == results["tokens"]


def test_channels_last_is_recognised_only_when_unambiguous():
    assert looks_spatial(56, 56, 224, 224) and not looks_spatial(56, 96, 224, 224)
    assert looks_spatial(15, 20, 227, 300) and not looks_spatial(15, 40, 227, 300)
    plan = lambda shape, size=(224, 224): plan_readout(shape, "x", size, None).kind
    assert plan((96, 56, 56)) == "conv"  # NCHW
    assert plan((56, 56, 96)) == "channels_last"  # NHWC (Swin)
    assert plan((56, 56, 56)) == "conv"  # ambiguous: read as stored, as before
    assert plan((512, 7, 7), (224, 300)) == "conv"  # pooled to a fixed size: not spatial either way, as stored
    assert plan((1000,)) == "flat"


def test_token_layout_errors():
    layout = TokenLayout(patch=(16, 16), prefix=1, class_token=True)
    assert plan_readout((197, 384), "blocks.6", (224, 224), layout).grid == (14, 14)
    assert plan_readout((196, 384), "patch_embed", (224, 224), layout).prefix == 0
    with pytest.raises(NetDissectError, match=r"200 tokens do not fit the model's patch grid.*14x14 = 196"):
        plan_readout((200, 384), "blocks.6", (224, 224), layout)
    with pytest.raises(NetDissectError, match="declares no patch grid"):
        plan_readout((197, 384), "blocks.6", (224, 224), None)
    with pytest.raises(NetDissectError, match="--tokens cls: layer patch_embed has no class token"):
        plan_readout((196, 384), "patch_embed", (224, 224), layout, "cls")
    no_cls = TokenLayout(patch=(16, 16), prefix=0, class_token=False)
    with pytest.raises(NetDissectError, match="has no class token"):
        plan_readout((196, 384), "blocks.6", (224, 224), no_cls, "cls")
    with pytest.raises(NetDissectError, match="expected \\(batch, units, height"):
        plan_readout((3, 4, 5, 6), "attn", (224, 224), layout)


def test_bad_token_options_exit_2(tmp_path, capsys):
    data = write_tiny_broden(tmp_path / "broden", n_images=4, seg=8, scale=4, seed=2)
    base = ["extract", "--dataset", str(data.root), "--out", str(tmp_path / "s"), "--no-progress"]
    # --tokens on a convolutional layer
    assert main([*base, "--model", "tests.test_models_tokens:grid_conv", "--layers", "out", "--tokens", "cls"]) == 2
    assert "--tokens cls: layer out outputs 7x4x4, not a token sequence" in capsys.readouterr().err
    # a token count that does not fit the patch grid: 24-px images on a model built for 32 px
    small = write_tiny_broden(tmp_path / "small", n_images=4, seg=6, scale=4, seed=2)
    bad = ["extract", "--dataset", str(small.root), "--out", str(tmp_path / "t"), "--no-progress"]
    assert main([*bad, "--model", "tests.test_models_tokens:fixed_tokens", "--layers", "out"]) == 2
    err = capsys.readouterr().err
    assert "layer out: 17 tokens do not fit the model's patch grid: 24x24 images in patches of 8x8 give 3x3" in err
    assert not (tmp_path / "s" / "meta.json").exists() and not (tmp_path / "t" / "meta.json").exists()


class FixedTokens(GridFeatures):
    """Always 1 + 16 tokens, whatever the input size (a model with a fixed position table would fail so)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.zeros(x.shape[0], 17, 7))


def fixed_tokens():
    return FixedTokens("tokens")
