"""Model specs -> torch modules, their normalisation, and capturing layer outputs.

A model SPEC is one of

* a torchvision architecture name (``resnet18``, ``alexnet``, ``vgg16``, ``densenet161``, ...),
  randomly initialised unless ``weights`` is given;
* a TorchScript file (``*.pt`` / ``*.pth`` loadable by ``torch.jit.load``). Forward hooks cannot be
  attached inside a TorchScript module, so its layers are its *outputs*: ``output`` when forward
  returns one tensor, the keys when it returns a dict of tensors, ``0``, ``1``, ... for a tuple;
* ``package.module:factory``, a callable returning an ``nn.Module``.

Torchvision and factory models are built under a fixed random seed (``seed``, default
``RANDOM_INIT_SEED``) without touching the caller's random state, so every process, hence every
shard, gets the same random initialisation.

``weights`` is a state_dict or a checkpoint dict holding one under ``state_dict``, ``model``,
``model_state_dict`` or ``net``; DataParallel's ``module.`` path components are stripped
(also inside a key, e.g. ``features.module.0.weight``). Files are always read
with ``torch.load(..., weights_only=True)``.

Layers of ordinary modules are named by module path (``layer4``, ``features.28``) and captured with
forward hooks (:func:`capture`). When a module runs several times in one forward pass (torchvision's
ResNet blocks call their ``relu`` twice), its LAST output of the pass is the layer's output.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from netdissect.errors import NetDissectError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_INIT_SEED = 0
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

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) RGB -> float32 ``(x/255 - mean) / std`` on the images' device."""
        x = images.to(torch.float32) / 255.0
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
            f"{name}: {_few(keys)}"
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


def _few(items: list[str], n: int = 8) -> str:
    more = f" ... and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


# ---------------------------------------------------------------------------------------------------
# Layers


class _StopForward(Exception):
    """Raised from the last hook to end the forward pass once every requested layer is captured."""


def layer_names(model: LoadedModel) -> list[str]:
    """Candidate layer names: every named submodule (ordinary model) or output names (TorchScript)."""
    if model.scripted:
        return list(_script_outputs(model, torch.zeros(1, 3, 64, 64)).keys())
    return [name for name, _ in model.module.named_modules() if name]


def check_layers(model: LoadedModel, layers: Sequence[str]) -> None:
    """Raise a NetDissectError naming every unknown layer, the closest names, and the valid ones."""
    if not layers:
        raise NetDissectError("--layers: no layer given; `netdissect layers --model SPEC` lists them")
    names = layer_names(model)
    known = set(names)
    for layer in layers:
        if layer not in known:
            close = difflib.get_close_matches(layer, names, n=3, cutoff=0.5)
            hint = f" Closest: {', '.join(close)}." if close else ""
            raise NetDissectError(
                f"--layers: model {model.spec} has no layer {layer!r}.{hint} Layers: "
                f"{_few(names, 40)} (see `netdissect layers --model {model.spec}`)"
            )


def _script_outputs(model: LoadedModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = model.module(x)
    if isinstance(out, torch.Tensor):
        return {"output": out}
    if isinstance(out, dict):
        return {str(k): v for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return {str(i): v for i, v in enumerate(out)}
    raise NetDissectError(
        f"--model {model.spec}: TorchScript forward returned {type(out).__name__}; expected a "
        f"tensor, a dict of tensors or a tuple of tensors"
    )


class LayerCapture:
    """Runs the model and returns the outputs of the requested layers, stopping after the last one.

    Use through :func:`capture`. ``calls`` = how many times each layer's module runs per forward pass;
    it is measured by the first call (which runs the whole model) and then used to stop early.
    """

    def __init__(self, model: LoadedModel, layers: Sequence[str]):
        self.model = model
        self.layers = list(layers)
        self.outputs: dict[str, torch.Tensor] = {}
        self.seen: dict[str, int] = {}
        self.calls: dict[str, int] | None = None
        self._handles: list = []

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs, output) -> None:
            self.outputs[name] = output
            self.seen[name] = self.seen.get(name, 0) + 1
            if self.calls is not None and all(self.seen.get(n, 0) >= c for n, c in self.calls.items()):
                raise _StopForward

        return hook

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Outputs of the requested layers for the normalised batch ``x``."""
        with torch.inference_mode():
            if self.model.scripted:
                outs = _script_outputs(self.model, x)
                return {n: outs[n] for n in self.layers}
            self.outputs, self.seen = {}, {}
            try:
                self.model.module(x)
            except _StopForward:
                pass
            if self.calls is None:
                self.calls = dict(self.seen)
            missing = [n for n in self.layers if n not in self.outputs]
            if missing:
                raise NetDissectError(
                    f"--layers: module(s) {', '.join(missing)} of model {self.model.spec} never "
                    f"ran in the forward pass; choose layers that compute features"
                )
            return {n: self.outputs[n] for n in self.layers}


@contextlib.contextmanager
def capture(model: LoadedModel, layers: Sequence[str]) -> Iterator[LayerCapture]:
    """Hook ``layers`` of ``model`` for the duration of the block; yields a callable batch -> outputs."""
    check_layers(model, layers)
    cap = LayerCapture(model, layers)
    if not model.scripted:
        modules = dict(model.module.named_modules())
        cap._handles = [modules[n].register_forward_hook(cap._hook(n)) for n in layers]
    try:
        yield cap
    finally:
        for h in cap._handles:
            h.remove()


def layer_shapes(
    model: LoadedModel, layers: Sequence[str] | None = None, size: int = 224
) -> dict[str, tuple[int, ...] | str]:
    """Output shape (without batch) of each layer for one ``size``×``size`` image; non-tensors by type."""
    if model.scripted:
        names = layer_names(model) if layers is None else list(layers)
    else:
        names = [n for n, m in model.module.named_modules() if n] if layers is None else list(layers)
    x = model.normalise(torch.zeros(1, 3, size, size, dtype=torch.uint8))
    if model.scripted:
        with torch.inference_mode():
            outs = _script_outputs(model, x)
        return {n: tuple(outs[n].shape[1:]) for n in names if n in outs}
    shapes: dict[str, tuple[int, ...] | str] = {}
    modules = dict(model.module.named_modules())

    def hook(name):
        def f(_m, _i, out):
            shapes[name] = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__

        return f

    if layers is not None:
        check_layers(model, names)
    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.inference_mode():
            model.module(x)
    finally:
        for h in handles:
            h.remove()
    return {n: shapes[n] for n in names if n in shapes}
