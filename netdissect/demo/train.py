"""Training the demo network: targets from a Broden dataset, and a deterministic training loop.

``netdissect train-demo`` trains :func:`~netdissect.demo.net.DemoNet` to predict, at every cell of its
``conv4`` map, which labels cover that cell (a coarse semantic segmentation with soft targets: the
fraction of the cell each label covers; image-level labels cover every cell). Color labels are left
out of the target, so what the network learns is objects, parts, materials, scenes and textures. The
prediction head (a 1x1 convolution) is used only for training; the saved file holds the ``DemoNet``
weights, which is all a dissection needs.

Training gives the same weights, to the bit, on every x86-64 machine with AVX2 for a given seed,
dataset and PyTorch version, whatever the thread count (docs/benchmarks.md, "Reproducible training"):
seeded initialisation, order and crops; one thread; convolutions by PyTorch's own im2col + BLAS path
(oneDNN off: its kernels and blocking depend on the CPU); and the process environment
:data:`REPRODUCIBLE_ENV`, read by the libraries when they load, so ``netdissect train-demo`` trains in a
child process that starts with it (:func:`reproducible_process`): MKL's conditional numerical
reproducibility fixed to the AVX2 code path (``MKL_CBWR``), PyTorch's own kernels to their baseline
build (``ATEN_CPU_CAPABILITY``), one OpenMP/MKL thread. It trains on random 112-pixel crops (a quarter
of the cost of whole images, same scale as at dissection time, since the network is fully
convolutional).

Saved file (:func:`netdissect.models.save_checkpoint`, read with ``torch.load(path,
weights_only=True)``): a dict with ``state_dict`` (the weights), ``spec``, ``seed``, ``epochs``,
``dataset_fingerprint``, ``target_labels`` (global label numbers predicted by the head, in head order)
and ``history`` (mean loss per epoch).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netdissect.demo.net import WIDTHS, DemoNet
from netdissect.errors import NetDissectError
from netdissect.models.loading import normalise

# Read by MKL and PyTorch when they load: set before the training process starts.
REPRODUCIBLE_ENV = {
    "MKL_CBWR": "AVX2",  # MKL's reproducible AVX2 code path on every CPU that has AVX2 (Intel and AMD)
    "ATEN_CPU_CAPABILITY": "default",  # PyTorch's kernels as built for every x86-64, not per CPU
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def reproducible_process() -> bool:
    """Whether this process started with :data:`REPRODUCIBLE_ENV`."""
    return all(os.environ.get(key) == value for key, value in REPRODUCIBLE_ENV.items())


@contextlib.contextmanager
def reproducible_kernels() -> Iterator[None]:
    """One thread, deterministic algorithms, no oneDNN; restored afterwards."""
    import torch

    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = onednn
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)


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
    and a random horizontal flip, identical for image and target. Deterministic for a given seed; the
    same on every machine in a process started with :data:`REPRODUCIBLE_ENV` (module docstring).
    """
    if images.ndim != 4 or images.shape[1] != 3 or targets.ndim != 4 or len(images) != len(targets):
        raise NetDissectError(
            f"train_demo: expected images (N, 3, H, W) and targets (N, T, h, w) with the same N, "
            f"got {tuple(images.shape)} and {tuple(targets.shape)}"
        )
    if epochs < 1 or batch_size < 1:
        raise NetDissectError(f"--epochs and the batch size must be >= 1, got {epochs} and {batch_size}")
    with reproducible_kernels():
        return _train(images, targets, epochs, seed, batch_size, crop, lr, log)


def _train(images, targets, epochs, seed, batch_size, crop, lr, log) -> tuple[torch.nn.Module, list[float]]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
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
            logits = head(net(normalise(x)))
            logits = F.adaptive_avg_pool2d(logits, t.shape[-2:]) if logits.shape[-2:] != t.shape[-2:] else logits
            loss = F.binary_cross_entropy_with_logits(logits, t)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(rows)
        history.append(total / len(images))
        log(f"epoch {epoch + 1}/{epochs}: loss {history[-1]:.4f} ({time.monotonic() - start:.1f} s)")
    return net.eval(), history
