"""The demo network of the default workflow, and seeded random weights for untrained baselines.

``DemoNet`` is a small fully convolutional CNN (model SPEC ``netdissect.demo:DemoNet``): four blocks
``conv1`` .. ``conv4`` (convolution, batch norm, ReLU), each halving the resolution, so a 224-pixel
image gives feature maps of 112, 56, 28 and 14 pixels. ``netdissect train-demo`` trains it on a
Broden-format dataset to predict, at every cell of its ``conv4`` map, which labels cover that cell (a
coarse semantic segmentation with soft targets: the fraction of the cell each label covers; image-level
labels cover every cell). Color labels are left out of the target, so what the network learns is
objects, parts, materials, scenes and textures. The prediction head (a 1x1 convolution) is used only
for training; the saved file holds the ``DemoNet`` weights, which is all a dissection needs.

Training is deterministic for a given seed and thread count: seeded initialisation, seeded order and
crops, deterministic algorithms. It trains on random 112-pixel crops (a quarter of the cost of whole
images, same scale as at dissection time, since the network is fully convolutional).

``netdissect random-weights`` writes a seeded random initialisation of any model SPEC, so that every
shard of a dissection of an "untrained" network sees the same network.

``resnet18_places365`` and ``alexnet_places365`` are the torchvision architectures with the 365 outputs
of the Places365 release, as factories for the examples in config/examples/.

Saved file (``torch.load(path, weights_only=True)``): a dict with ``state_dict`` (the weights),
``spec``, ``seed`` and, for the demo, ``epochs``, ``dataset_fingerprint``, ``target_labels`` (global
label numbers predicted by the head, in head order) and ``history`` (mean loss per epoch).
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netdissect.errors import NetDissectError

if TYPE_CHECKING:
    import numpy as np
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


def resnet18_places365() -> torch.nn.Module:
    """torchvision's resnet18 with the 365-way classifier of the Places365 release (SPEC
    ``netdissect.demo:resnet18_places365``), so that resnet18_places365.pth.tar fits it."""
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=365)


def alexnet_places365() -> torch.nn.Module:
    """torchvision's alexnet with the 365-way classifier of the Places365 release."""
    import torchvision

    return torchvision.models.alexnet(weights=None, num_classes=365)


# ---------------------------------------------------------------------------------------------------
# Training data: arrays in, arrays out


def target_labels(primary: np.ndarray, categories: Sequence[str]) -> np.ndarray:
    """Global label numbers the demo learns to predict: every label with a primary category other than
    color (all labels that have a primary category when the dataset has nothing else)."""
    import numpy as np

    has_primary = primary >= 0
    has_primary[0] = False
    non_color = has_primary & np.array([categories[c] != "color" if c >= 0 else False for c in primary])
    chosen = non_color if non_color.any() else has_primary
    return np.flatnonzero(chosen)


def coverage_targets(
    pixel_labels: Sequence[torch.Tensor],
    image_labels: Sequence[torch.Tensor],
    lookup: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """Soft targets of a batch: (B, T, h, w) fraction of each cell of an h×w grid covered by each target label.

    Per image b: ``pixel_labels[b]`` is (K, sh, sw) global numbers (K may be 0; sh, sw the same for the
    batch), ``image_labels[b]`` (J,) global numbers. ``lookup`` (L,) maps a global number to its target
    index, or -1 when it is not a target. Pixel row y belongs to cell row ``y * h // sh`` (likewise
    columns), so the cells partition the map. Each pixel layer adds its coverage; image-level labels
    cover every cell. Values are clipped to [0, 1]. One ``bincount`` for the whole batch.
    """
    import torch

    batch, num_targets, (h, w) = len(pixel_labels), int(lookup.max().item()) + 1, size
    cells = h * w
    out = torch.zeros(batch, num_targets, h, w)
    layers = torch.cat([p.reshape(-1, *p.shape[-2:]) for p in pixel_labels]) if batch else None
    if layers is not None and len(layers):
        sh, sw = layers.shape[-2:]
        cell = (torch.arange(sh) * h // sh)[:, None] * w + (torch.arange(sw) * w // sw)[None, :]  # (sh, sw)
        owner = torch.repeat_interleave(torch.arange(batch), torch.tensor([len(p) for p in pixel_labels]))
        target = lookup.where(lookup >= 0, num_targets)[layers.long()]  # non-targets -> extra row T
        flat = (owner[:, None, None] * (num_targets + 1) + target) * cells + cell
        area = torch.bincount(flat.flatten(), minlength=batch * (num_targets + 1) * cells)
        cell_pixels = torch.bincount(cell.flatten(), minlength=cells).clamp(min=1)
        out += (area.view(batch, num_targets + 1, cells)[:, :num_targets] / cell_pixels).view(out.shape)
    for b, labels in enumerate(image_labels):
        targets = lookup[labels.long()] if labels.numel() else labels
        out[b, targets[targets >= 0]] = 1.0
    return out.clamp_(0.0, 1.0)


def load_training_data(root: str | Path, workers: int = 0) -> dict[str, Any]:
    """Every image of a Broden folder as uint8 (N, 3, H, W) and its soft targets (N, T, H/16, W/16).

    All images must have one size (the synthetic and released datasets do).
    """
    import torch

    from netdissect.broden import BrodenDataset

    ds = BrodenDataset(root)
    labels = target_labels(ds.primary, ds.categories)
    if labels.size == 0:
        raise NetDissectError(
            f"dataset {root}: no label has a primary category, so there is nothing to train "
            f"on; check label.csv and the c_*.csv files (`netdissect broden check {root}`)"
        )
    lookup = torch.full((ds.num_labels,), -1, dtype=torch.int64)
    lookup[torch.from_numpy(labels)] = torch.arange(len(labels))
    images, targets = [], []
    for batch in ds.loader(batch_size=64, workers=workers):
        if isinstance(batch["image"], list):
            raise NetDissectError(
                f"dataset {root}: images of several sizes near index.csv row "
                f"{int(batch['i'][0]) + 2}; train-demo needs images of one size"
            )
        if images and batch["image"].shape[1:] != images[0].shape[1:]:
            raise NetDissectError(
                f"dataset {root}: index.csv row {int(batch['i'][0]) + 2} starts images of "
                f"another size; train-demo needs images of one size"
            )
        images.append(batch["image"])
        h, w = batch["image"].shape[-2:]
        grid = (max(1, h // 16), max(1, w // 16))
        targets.append(coverage_targets(batch["pixel_labels"], batch["image_labels"], lookup, grid))
    return {
        "images": torch.cat(images),
        "targets": torch.cat(targets),
        "labels": labels,
        "fingerprint": ds.fingerprint(),
    }


# ---------------------------------------------------------------------------------------------------
# Training


def _normalise(images: torch.Tensor) -> torch.Tensor:
    import torch

    from netdissect.models import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def train_demo(
    images: torch.Tensor,
    targets: torch.Tensor,
    epochs: int = 6,
    seed: int = 0,
    batch_size: int = 32,
    crop: int = 112,
    lr: float = 3e-3,
    log=print,
) -> tuple[torch.nn.Module, list[float]]:
    """Train a DemoNet (plus a throw-away 1x1 head) on uint8 images (N, 3, H, W) and soft targets
    (N, T, H/16, W/16); return the network in eval mode and the mean loss of every epoch.

    Each step takes a random ``crop``-pixel window (multiple of 16; whole images when they are smaller)
    and a random horizontal flip, identical for image and target. Deterministic for a given seed.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    if images.ndim != 4 or images.shape[1] != 3 or targets.ndim != 4 or len(images) != len(targets):
        raise NetDissectError(
            f"train_demo: expected images (N, 3, H, W) and targets (N, T, h, w) with the same N, "
            f"got {tuple(images.shape)} and {tuple(targets.shape)}"
        )
    if epochs < 1 or batch_size < 1:
        raise NetDissectError(f"--epochs and the batch size must be >= 1, got {epochs} and {batch_size}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    net = DemoNet()
    head = nn.Conv2d(WIDTHS[-1], targets.shape[1], kernel_size=1)
    params = list(net.parameters()) + list(head.parameters())
    steps = epochs * -(-len(images) // batch_size)
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    h, w = images.shape[-2:]
    th, tw = targets.shape[-2:]
    stride = h // th
    cell = max(1, min(crop, h, w) // stride)  # crop size in target cells
    history = []
    net.train()
    for epoch in range(epochs):
        start, total = time.monotonic(), 0.0
        order = torch.randperm(len(images), generator=generator)
        for first in range(0, len(images), batch_size):
            rows = order[first : first + batch_size]
            y0 = int(torch.randint(0, th - cell + 1, (1,), generator=generator))
            x0 = int(torch.randint(0, tw - cell + 1, (1,), generator=generator))
            x = images[rows, :, y0 * stride : (y0 + cell) * stride, x0 * stride : (x0 + cell) * stride]
            t = targets[rows, :, y0 : y0 + cell, x0 : x0 + cell]
            if bool(torch.rand(1, generator=generator) < 0.5):
                x, t = x.flip(-1), t.flip(-1)
            logits = head(net(_normalise(x)))
            logits = F.adaptive_avg_pool2d(logits, t.shape[-2:]) if logits.shape[-2:] != t.shape[-2:] else logits
            loss = F.binary_cross_entropy_with_logits(logits, t)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(rows)
        history.append(total / len(images))
        log(f"epoch {epoch + 1}/{epochs}: loss {history[-1]:.4f} ({time.monotonic() - start:.1f} s)")
    torch.use_deterministic_algorithms(False)
    return net.eval(), history


def save_checkpoint(path: str | Path, state_dict: dict, **meta: Any) -> None:
    """Write ``{"state_dict": ..., **meta}`` atomically with torch.save (readable with weights_only=True)."""
    import torch

    from netdissect.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"state_dict": state_dict, **meta}, tmp)


# ---------------------------------------------------------------------------------------------------
# CLI


def register(sub, *groups) -> None:
    """Add ``train-demo`` and ``random-weights``."""
    p = sub.add_parser(
        "train-demo",
        help="train the demo CNN (netdissect.demo:DemoNet) on a Broden dataset",
        description="Train DemoNet to predict which non-color labels cover each cell of its conv4 "
        "map; save its weights with spec and training settings (deterministic).",
    )
    p.add_argument("--dataset", required=True, metavar="DIR", help="Broden folder to train on")
    p.add_argument("--out", required=True, metavar="MODEL.pt", help="weights file to write")
    p.add_argument("--epochs", type=int, default=6, help="passes over the dataset (default 6)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, order and crops (default 0)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    p.add_argument("--workers", type=int, default=0, help="data loader processes for reading the dataset")
    p.set_defaults(func=_train_demo)

    r = sub.add_parser(
        "random-weights",
        help="write a seeded random initialisation of a model",
        description="Build the model SPEC with torch seeded by --seed and save its state_dict, so "
        "that every job dissecting an untrained network sees the same weights.",
    )
    r.add_argument("--model", required=True, metavar="SPEC", help="torchvision name or package.module:factory")
    r.add_argument("--seed", type=int, default=0, help="torch seed (default 0)")
    r.add_argument("--out", required=True, metavar="FILE.pt", help="weights file to write")
    r.set_defaults(func=_random_weights)


def _train_demo(args: argparse.Namespace) -> int:
    import torch

    threads = torch.get_num_threads()
    start = time.monotonic()
    data = load_training_data(args.dataset, workers=args.workers)
    print(
        f"{len(data['images'])} images, {len(data['labels'])} target labels, "
        f"targets {tuple(data['targets'].shape[1:])}, {threads} threads ({time.monotonic() - start:.1f} s to load)",
        flush=True,
    )
    net, history = train_demo(
        data["images"],
        data["targets"],
        epochs=args.epochs,
        seed=args.seed,
        batch_size=args.batch_size,
        log=lambda m: print(m, flush=True),
    )
    save_checkpoint(
        args.out,
        net.state_dict(),
        spec=DEMO_SPEC,
        seed=args.seed,
        epochs=args.epochs,
        dataset_fingerprint=data["fingerprint"],
        target_labels=data["labels"].tolist(),
        history=history,
    )
    print(f"wrote {args.out} ({time.monotonic() - start:.1f} s)")
    return 0


def _random_weights(args: argparse.Namespace) -> int:
    from netdissect.models import load_model

    model = load_model(args.model, seed=args.seed)
    if model.scripted:
        raise NetDissectError(
            f"--model {args.model}: a TorchScript file carries its own weights; use it as SPEC "
            f"with weights source `none` instead"
        )
    save_checkpoint(args.out, model.module.state_dict(), spec=args.model, seed=args.seed)
    print(f"wrote {args.out}: random {args.model}, seed {args.seed}")
    return 0
