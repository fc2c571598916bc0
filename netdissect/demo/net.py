"""The demo network: ``DemoNet``, a small fully convolutional CNN (model SPEC ``netdissect.demo:DemoNet``).

Four blocks ``conv1`` .. ``conv4`` (convolution, batch norm, ReLU), each halving the resolution, so a
224-pixel image gives feature maps of 112, 56, 28 and 14 pixels. Trained by ``netdissect train-demo``
(:mod:`netdissect.demo.train`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


DEMO_SPEC = "netdissect.demo:DemoNet"


WIDTHS = (32, 64, 128, 256)


def DemoNet() -> torch.nn.Module:  # noqa: N802  (a factory named like the class it builds)
    """The demo CNN, randomly initialised: blocks ``conv1`` .. ``conv4``; forward returns ``conv4``."""
    from torch import nn

    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    channels = 3
    for n, width in enumerate(WIDTHS, start=1):
        kernel = 5 if n == 1 else 3
        blocks[f"conv{n}"] = nn.Sequential(
            nn.Conv2d(channels, width, kernel, stride=2, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=False),
        )
        channels = width
    return nn.Sequential(blocks)
