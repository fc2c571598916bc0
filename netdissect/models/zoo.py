"""Named architectures: torchvision models with the class counts of published weights, as factories
for model SPECs (``netdissect.models.zoo:resnet18_places365``), so that the released weights fit them.
"""

from __future__ import annotations

from torch import nn


def resnet18_places365() -> nn.Module:
    """torchvision's resnet18 with the 365-way classifier of the Places365 release, so that
    resnet18_places365.pth.tar fits it."""
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=365)


def alexnet_places365() -> nn.Module:
    """torchvision's alexnet with the 365-way classifier of the Places365 release."""
    import torchvision

    return torchvision.models.alexnet(weights=None, num_classes=365)
