"""Model specs -> torch modules in eval mode, their weights files, and their input normalisation.

A model SPEC is one of

* a torchvision architecture name (``resnet18``, ``alexnet``, ``vgg16``, ``densenet161``, ...),
  randomly initialised unless ``weights`` is given;
* a TorchScript file (``*.pt`` / ``*.pth`` loadable by ``torch.jit.load``). Forward hooks cannot be
  attached inside a TorchScript module, so its layers are its *outputs* (:mod:`netdissect.models.layers`);
* ``package.module:factory``, a callable returning an ``nn.Module`` (named architectures of the
  examples: :mod:`netdissect.models.zoo`).

Torchvision and factory models are built under a fixed random seed (``seed``, default
``RANDOM_INIT_SEED``) without touching the caller's random state, so every process, hence every
shard, gets the same random initialisation.

``weights`` is a state_dict or a checkpoint dict holding one under ``state_dict``, ``model``,
``model_state_dict`` or ``net``; DataParallel's ``module.`` path components are stripped
(also inside a key, e.g. ``features.module.0.weight``). Files are always read
with ``torch.load(..., weights_only=True)``; :func:`save_checkpoint` writes them.
"""

from __future__ import annotations

import difflib
import importlib
import io
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netdissect.defaults import IMAGENET_MEAN, IMAGENET_STD, RANDOM_INIT_SEED
from netdissect.errors import NetDissectError
from netdissect.io import atomic_write_bytes, sha256_file
from netdissect.models.fieldmap import FieldMap


def normalise(
    images: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    divisor: float = 255.0,
    bgr: bool = False,
) -> torch.Tensor:
    """uint8 (B, 3, H, W) RGB -> float32 ``(v/divisor - mean) / std`` per channel, on the images' device.

    ``divisor`` 255 gives [0, 1] inputs (torchvision), 1 keeps 0–255 values (Caffe); ``bgr`` reverses the
    channel order first (Caffe models), so ``mean`` and ``std`` are then given in B, G, R order."""
    x = images.to(torch.float32, copy=True).div_(divisor)  # in place on one new array (memory layout kept)
    if bgr:
        x = x.flip(1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean_t).div_(std_t)


_CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict", "net")


@dataclass
class LoadedModel:
    """A model ready for dissection: module in eval mode plus how to normalise its input."""

    module: nn.Module
    spec: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weights: str | None = None
    weights_sha256: str | None = None
    scripted: bool = field(default=False)
    # layer -> receptive-field map, for models whose layers are not torch modules (e.g. converted
    # Caffe nets); None: derived from the module structure when the fieldmap upsampling asks for it
    field_maps: dict[str, FieldMap] | None = None
    divisor: float = 255.0  # pixel values are divided by this before the mean is subtracted
    bgr: bool = False  # the model reads B, G, R channels (mean and std are then in that order)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) RGB -> the model's float32 input (:func:`normalise` with this model's values)."""
        return normalise(images, self.mean, self.std, self.divisor, self.bgr)


def load_model(
    spec: str,
    weights: str | Path | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = RANDOM_INIT_SEED,
) -> LoadedModel:
    """Build the model a SPEC names (see module docstring), load ``weights``, put it in eval mode.
    ``seed`` fixes the random initialisation of torchvision and factory models."""
    scripted = False
    factory = ":" in spec and not Path(spec).exists()
    if not factory and (Path(spec).suffix in (".pt", ".pth", ".ts") or Path(spec).exists()):
        module = _from_torchscript(spec)
        scripted = True
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = _from_factory(spec) if factory else _from_torchvision(spec)
    weights_sha = None
    if weights is not None:
        if scripted:
            raise NetDissectError(
                f"--weights {weights}: model {spec} is a TorchScript file, which carries its "
                f"own weights; drop --weights"
            )
        load_weights(module, weights)
        weights_sha = sha256_file(weights)
    elif scripted:
        weights_sha = sha256_file(spec)  # a TorchScript file carries its weights
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedModel(
        module=module,
        spec=spec,
        mean=_triple(mean, IMAGENET_MEAN, "--mean"),
        std=_triple(std, IMAGENET_STD, "--std"),
        weights=str(weights) if weights is not None else None,
        weights_sha256=weights_sha,
        scripted=scripted,
    )


def _triple(
    values: Sequence[float] | None, default: tuple[float, float, float], option: str
) -> tuple[float, float, float]:
    if values is None:
        return default
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise NetDissectError(f"{option}: expected 1 or 3 numbers (one per RGB channel), got {len(values)}")
    if option == "--std" and any(v <= 0 for v in values):
        raise NetDissectError(f"{option}: every value must be positive, got {values}")
    return values  # type: ignore[return-value]


def _from_torchvision(name: str) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise NetDissectError(
            f"--model {name}: not a torchvision architecture, an existing TorchScript file, "
            f"nor package.module:factory.{hint}"
        )
    return torchvision.models.get_model(name, weights=None)


def _from_torchscript(path: str) -> nn.Module:
    if not Path(path).is_file():
        raise NetDissectError(f"--model {path}: file not found (a TorchScript model file was expected)")
    try:
        return torch.jit.load(path, map_location="cpu")
    except Exception as err:  # torch raises RuntimeError with a long C++ trace
        raise NetDissectError(
            f"--model {path}: cannot be loaded by torch.jit.load ({str(err).splitlines()[0]}); "
            f"give a TorchScript file, or a state_dict via --weights with an architecture "
            f"name as --model"
        ) from None


def _from_factory(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # `--model mymodels:make` from the folder holding mymodels.py
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise NetDissectError(
            f"--model {spec}: cannot import {attr!r} from {module_name!r} ({err}); expected "
            f"package.module:factory with the package importable"
        ) from None
    model = factory()
    if not isinstance(model, nn.Module):
        raise NetDissectError(
            f"--model {spec}: the factory returned {type(model).__name__}, expected a torch.nn.Module"
        )
    return model


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a state_dict (or a checkpoint holding one) into ``module``; every key must fit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NetDissectError(f"--weights {path}: file not found") from None
    except Exception as err:
        raise NetDissectError(
            f"--weights {path}: not a loadable state_dict ({str(err).splitlines()[0]}); save "
            f"weights with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict):
        for key in _CHECKPOINT_KEYS:
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NetDissectError(
            f"--weights {path}: expected a state_dict (name -> tensor) or a checkpoint dict "
            f"holding one under {', '.join(_CHECKPOINT_KEYS)}"
        )
    own = module.state_dict()
    state = {_without_data_parallel(k, own): v for k, v in state.items()}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        parts = [
            f"{name}: {few(keys)}"
            for name, keys in (("mismatched shapes", mismatched), ("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise NetDissectError(
            f"--weights {path} does not fit the architecture; "
            + "; ".join(parts)
            + ". Check that --model names the architecture the weights were trained with."
        )
    module.load_state_dict(state)


def _without_data_parallel(key: str, own: dict[str, torch.Tensor]) -> str:
    """The key with DataParallel's ``module`` path components removed, where that makes it one of the
    model's own keys (``module.conv1.weight``; ``features.module.0.weight`` as in the Places365 alexnet)."""
    if key in own:
        return key
    stripped = ".".join(part for part in key.split(".") if part != "module")
    return stripped if stripped in own else key


def few(items: list[str], n: int = 8) -> str:
    """The first ``n`` items, comma-separated, and how many more there are (for error messages)."""
    more = f" ... and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def save_checkpoint(path: str | Path, state_dict: dict, **meta: Any) -> None:
    """Write ``{"state_dict": ..., **meta}`` atomically with torch.save (readable with weights_only=True).

    The same weights give the same bytes: torch names the archive's folder after the file it writes,
    so it writes to memory (folder ``archive``) rather than to the temporary file."""
    buffer = io.BytesIO()
    torch.save({"state_dict": state_dict, **meta}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
