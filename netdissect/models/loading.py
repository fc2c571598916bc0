"""Model specs -> torch modules in eval mode, their weights files, and their input normalisation.

A model SPEC is one of

* a torchvision architecture name (``resnet18``, ``alexnet``, ``vgg16``, ``densenet161``, ...),
  randomly initialised unless ``weights`` is given;
* a TorchScript file (``*.pt`` / ``*.pth`` loadable by ``torch.jit.load``). Forward hooks cannot be
  attached inside a TorchScript module, so its layers are its *outputs* (:mod:`netdissect.models.layers`);
* ``package.module:factory``, a callable returning an ``nn.Module`` (named architectures of the
  examples: :mod:`netdissect.models.zoo`);
* ``timm:NAME``, a timm architecture built with ``pretrained=False`` (:mod:`netdissect.models.timm_models`);
* an ONNX file (``*.onnx``), converted to torch; its layers are the graph's node output names
  (:mod:`netdissect.models.onnx_models`).
* a Caffe ``deploy.prototxt`` (a path ending in ``.prototxt``), with its ``.caffemodel`` as
  ``weights``: converted by :mod:`netdissect.models.caffe` (no Caffe needed). Its input is B, G, R,
  0–255, minus a per-channel mean (docs/caffe-models.md §3).

Torchvision, timm and factory models are built under a fixed random seed (``seed``, default
``RANDOM_INIT_SEED``) without touching the caller's random state, so every process, hence every
shard, gets the same random initialisation.

``weights`` is a state_dict or a checkpoint dict holding one under ``state_dict``, ``model``,
``model_state_dict`` or ``net``, or a ``.safetensors`` file; DataParallel's ``module.`` path components
are stripped (also inside a key, e.g. ``features.module.0.weight``). Files are always read
with ``torch.load(..., weights_only=True)`` (safetensors files with ``safetensors.torch.load_file``);
:func:`save_checkpoint` writes them. Every kind of model: docs/models.md.
"""

from __future__ import annotations

import difflib
import importlib
import io
import os
import pickle
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netdissect.defaults import DIVISOR, IMAGENET_MEAN, IMAGENET_STD, MEAN_PRECISIONS, RANDOM_INIT_SEED
from netdissect.errors import NetDissectError
from netdissect.io import atomic_write_bytes, sha256_file
from netdissect.models.fieldmap import FieldMap
from netdissect.presets import apply_input


def normalise(
    images: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    divisor: float = DIVISOR,
    bgr: bool = False,
    mean_precision: str = MEAN_PRECISIONS[0],
) -> torch.Tensor:
    """uint8 (B, 3, H, W) RGB -> float32 ``(v/divisor - mean) / std`` per channel, on the images' device.

    ``divisor`` 255 gives [0, 1] inputs (torchvision), 1 keeps 0–255 values (Caffe); ``bgr`` reverses the
    channel order first (Caffe models), so ``mean`` and ``std`` are then given in B, G, R order.
    ``mean_precision`` ``float32``: every step in float32; ``float64``: ``v/divisor - mean`` in float64,
    rounded to float32, then divided by ``std`` in float32 (NetDissect-Lite's arithmetic, netdissect/presets.py).
    The steps run in place on one new array, so the images' memory layout (channels-last) is kept."""
    if mean_precision not in MEAN_PRECISIONS:
        raise NetDissectError(f"mean precision {mean_precision}: expected one of {', '.join(MEAN_PRECISIONS)}")
    dtype = torch.float64 if mean_precision == "float64" else torch.float32
    x = images.to(dtype, copy=True).div_(divisor)
    if bgr:
        x = x.flip(1)
    mean_t = torch.tensor(mean, dtype=dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    x = x.sub_(mean_t)
    if dtype != torch.float32:
        x = x.to(torch.float32)  # keeps the memory layout
    return x.div_(std_t)


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
    divisor: float = DIVISOR  # pixel values are divided by this before the mean is subtracted
    bgr: bool = False  # the model reads B, G, R channels (mean and std are then in that order)
    mean_precision: str = MEAN_PRECISIONS[0]  # the arithmetic the mean is subtracted in (:func:`normalise`)
    # layer -> (module path, output position), for models whose layers are not module paths (ONNX
    # graphs: node output names); None: a layer is named by its module path
    layer_modules: dict[str, tuple[str, int]] | None = None
    fixed_batch: int | None = None  # the model runs batches of exactly this many images (ONNX graphs)

    def layer_module(self, layer: str) -> str:
        """The path of the module whose forward hook captures ``layer``."""
        return self.layer_modules[layer][0] if self.layer_modules is not None else layer

    def layer_output(self, layer: str, output: Any) -> Any:
        """The layer's value among its module's outputs (a module with several returns a tuple)."""
        if self.layer_modules is not None and isinstance(output, (tuple, list)):
            return output[self.layer_modules[layer][1]]
        return output

    mean_file: str | None = None  # the Caffe mean image ``mean`` was computed from

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) RGB -> the model's float32 input (:func:`normalise` with this model's values)."""
        return normalise(images, self.mean, self.std, self.divisor, self.bgr, self.mean_precision)

    def input_settings(self) -> dict[str, Any]:
        """The input convention as recorded in shard meta.json and the counts' settings."""
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "divisor": self.divisor,
            "bgr": self.bgr,
            "mean_precision": self.mean_precision,
            "mean_file": self.mean_file,
        }


def load_model(
    spec: str,
    weights: str | Path | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = RANDOM_INIT_SEED,
    preset: str | None = None,
    mean_file: str | Path | None = None,
) -> LoadedModel:
    """Build the model a SPEC names (see module docstring), load ``weights``, put it in eval mode.
    ``seed`` fixes the random initialisation of torchvision and factory models. The input convention
    is ImageNet's ``mean`` / ``std`` on [0, 1] values (a timm model's own, a Caffe model's B, G, R
    0–255 convention), or ``preset``'s (netdissect/presets.py), with an explicit ``mean`` / ``std`` on
    top; ``mean_file`` (Caffe models only) gives the mean as the per-channel means of a mean image."""
    if is_caffe_spec(spec):
        from netdissect.models.caffe import load_caffe

        model = load_caffe(spec, weights, mean, std, mean_file)
        apply_input(model, preset)  # a Caffe model keeps its own convention (logged)
        return model
    if mean_file is not None:
        raise NetDissectError(
            f"--mean-file {mean_file}: only for Caffe models (--model deploy.prototxt); give --mean/--std instead"
        )
    scripted = False
    own_weights = None  # the kind of file that carries its own weights (TorchScript, ONNX)
    own_norm: dict[str, Any] = {}  # the model's own mean/std (timm's pretrained_cfg)
    extra: dict[str, Any] = {}
    factory = ":" in spec and not Path(spec).exists()
    if spec.startswith("timm:"):
        from netdissect.models.timm_models import build_timm

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module, own_norm = build_timm(spec)
    elif Path(spec).suffix.lower() == ".onnx":
        from netdissect.models.onnx_models import load_onnx

        module, extra = load_onnx(spec)
        own_weights = "an ONNX file"
    elif not factory and (Path(spec).suffix in (".pt", ".pth", ".ts") or Path(spec).exists()):
        module = _from_torchscript(spec)
        scripted = True
        own_weights = "a TorchScript file"
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = _from_factory(spec) if factory else _from_torchvision(spec)
    weights_sha = None
    if weights is not None:
        if own_weights:
            raise NetDissectError(
                f"--weights {weights}: model {spec} is {own_weights}, which carries its own weights; drop --weights"
            )
        load_weights(module, weights)
        weights_sha = sha256_file(weights)
    elif own_weights:
        weights_sha = sha256_file(spec)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    model = LoadedModel(
        module=module,
        spec=spec,
        mean=tuple(float(v) for v in own_norm.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in own_norm.get("std", IMAGENET_STD)),
        weights=str(weights) if weights is not None else None,
        weights_sha256=weights_sha,
        scripted=scripted,
        **extra,
    )
    apply_input(model, preset, triple(mean, None, "--mean"), triple(std, None, "--std"))
    return model


def require(package: str, extra: str, spec: str) -> Any:
    """Import an optional package, or say which extra of netdissect installs it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise NetDissectError(
            f"{spec} needs the {package.split('.')[0]} package, which is not installed; install it with "
            f'pip install "netdissect[{extra}]"'
        ) from None


def is_caffe_spec(spec: str) -> bool:
    """A SPEC naming a Caffe deploy.prototxt."""
    return str(spec).lower().endswith(".prototxt")


def triple(
    values: Sequence[float] | None, default: tuple[float, float, float] | None, option: str, channels: str = "RGB"
) -> tuple[float, float, float] | None:
    """1 or 3 numbers (one per channel, in the order ``channels``) as a triple; ``default`` when None."""
    if values is None:
        return default
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise NetDissectError(f"{option}: expected 1 or 3 numbers (one per {channels} channel), got {len(values)}")
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
            f"--model {name}: not a torchvision architecture, an existing TorchScript or ONNX file, "
            f"timm:NAME nor package.module:factory.{hint}"
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
    """Load a state_dict (or a checkpoint holding one, or a .safetensors file) into ``module``; every key must fit."""
    if Path(path).suffix.lower() == ".safetensors":
        state = _load_safetensors(path)
    else:
        state = _load_torch_file(path)
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


def _load_torch_file(path: str | Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NetDissectError(f"--weights {path}: file not found") from None
    except pickle.UnpicklingError as err:
        raise refused_pickle(path, err) from None
    except Exception as err:
        caffe = " (a .caffemodel goes with --model deploy.prototxt)" if str(path).endswith(".caffemodel") else ""
        raise NetDissectError(
            f"--weights {path}: not a loadable state_dict{caffe} ({str(err).splitlines()[0]}); save "
            f"weights with torch.save(model.state_dict(), path)"
        ) from None


def refused_pickle(path: str | Path, err: Exception) -> NetDissectError:
    """The error for a weights file that torch.load(weights_only=True) refused: it holds Python objects
    other than tensors and containers, which unpickling would create by running code named in the file."""
    found = re.search(r"GLOBAL (\S+)", str(err))
    what = f"it names {found.group(1)}" if found else str(err).strip().splitlines()[-1]
    return NetDissectError(
        f"--weights {path}: refused: the file holds Python objects beyond tensors ({what}), and unpickling "
        f"it could run code; netdissect reads weights with torch.load(weights_only=True) only. If the file "
        f"comes from a source you trust, convert it once to a plain state_dict, e.g. in Python: "
        f"obj = torch.load(FILE, weights_only=False); torch.save(obj['state_dict'] if isinstance(obj, dict) "
        f"else obj.state_dict(), 'clean.pt'), and pass --weights clean.pt"
    )


def _load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    st = require("safetensors.torch", "safetensors", f"--weights {path}")
    if not Path(path).is_file():
        raise NetDissectError(f"--weights {path}: file not found")
    try:
        return st.load_file(str(path), device="cpu")
    except Exception as err:
        raise NetDissectError(
            f"--weights {path}: not a readable safetensors file ({str(err).splitlines()[0]}); write one with "
            f"safetensors.torch.save_file(model.state_dict(), path)"
        ) from None


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
