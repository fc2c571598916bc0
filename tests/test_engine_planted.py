"""Planted detectors: units built to fire exactly on given concepts get IoU ≈ 1 and the right labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from netdissect import pipeline
from tests.test_engine_helpers import write_tiny_broden

# (image channel, label number, expected label name); channel R holds the object layer, G the scene,
# B the color layer of each image (written by the test below)
PLANTED = [(0, 5, "car"), (0, 6, "sky"), (0, 7, "tree"), (1, 13, "street-s"), (2, 1, "red-c"), (2, 3, "blue-c")]


class Detect(nn.Module):
    """Undo the ImageNet normalisation, read the label numbers in the pixels, one indicator map per unit."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        values = torch.round((x * std + mean) * 255)
        maps = [(values[:, ch] == label).float() for ch, label, _ in PLANTED]
        return torch.stack(maps + [torch.zeros_like(maps[0])], dim=1)  # the last unit never fires


class PlantedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.detect = Detect()
        self.head = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.head(self.detect(x))


@pytest.mark.parametrize("union", ["paper", "lite"])
def test_planted_units_get_their_concepts(tmp_path, union):
    data = write_tiny_broden(tmp_path / "labels", n_images=16, seg=16, scale=1, seed=5)
    images = np.zeros((16, 16, 16, 3), np.uint8)
    for i, layers in enumerate(data.layers):
        images[i, ..., 0] = layers[1]  # object layer
        images[i, ..., 1] = next((l for l in data.image_labels[i] if 13 <= l <= 15), 0)  # scene
        images[i, ..., 2] = layers[0]  # color layer
    planted = write_tiny_broden(tmp_path / "broden", n_images=16, seg=16, scale=1, seed=5, images=images)
    assert all(np.array_equal(a, b) for a, b in zip(planted.layers, data.layers))
    out = tmp_path / "out"
    # q = 0.5: every planted concept covers well under half of its unit's pixels, so the threshold is 0
    # and the mask is exactly the indicator map
    pipeline.dissect(
        planted.root,
        "tests.test_engine_planted:PlantedNet",
        ["detect"],
        out,
        q=0.5,
        union=union,
        batch_size=5,
        progress=False,
    )
    assert np.array_equal(np.load(out / "detect" / "thresholds.npy"), np.zeros(len(PLANTED) + 1))
    rows = {int(r.split(",")[0]): r.split(",") for r in (out / "detect" / "result.csv").read_text().splitlines()[1:]}
    for unit, (_, _, name) in enumerate(PLANTED, start=1):
        assert rows[unit][2] == name
        assert float(rows[unit][3]) == pytest.approx(1.0, abs=1e-9)
    dead = rows[len(PLANTED) + 1]
    assert dead[2] == "" and float(dead[3]) == 0.0
    summary = json.loads((out / "detect" / "summary.json").read_text())
    assert summary["detectors"] == len(PLANTED) and summary["unique_top"] == len(PLANTED)
    assert summary["per_category"]["color"]["detectors"] == 2
    assert summary["per_category"]["scene"]["unique_top"] == 1
