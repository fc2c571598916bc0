"""The field map of every layer of a torch model, derived from the operations that actually run between
the input and the layer (docs/dissection.md §3).

:func:`trace_field_maps` runs the model once on a dummy image under a ``TorchFunctionMode`` that sees
every torch function call (``F.conv2d``, ``torch.cat``, ``out += identity``, ...) and gives each
tensor computed from the input a field map (:class:`~netdissect.models.fieldmap.FieldMap`), or the
reason it has none:

- convolutions, poolings and ``F.pad`` compose their window after their input's map
  (``FieldMap.of_window``; padding ``'same'`` as torch pads it);
- any other operation whose output keeps its inputs' spatial size (the last two dimensions) is the
  identity; where several inputs meet (an add, a concat) the largest of their maps is taken
  (:func:`~netdissect.models.fieldmap.largest`, as the original system did); an input of spatial size
  1×1 broadcast over a larger map (a squeeze-and-excitation gate) does not count;
- an operation that changes the spatial size otherwise (adaptive or global pooling, upsampling,
  flatten), moves the spatial axes (transpose, permute) or mixes positions (matmul, attention,
  transposed convolution, interpolation) leaves no field map, and neither does anything computed
  from its output.

A layer (a module, by its path) gets the map of its output when its forward returns (its LAST call,
as :mod:`netdissect.models.layers` captures it). Converted graphs (``LoadedModel.field_maps``) bring
their own maps; a TorchScript model's operations cannot be followed, so its layers have none.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from netdissect.models.fieldmap import IDENTITY, FieldMap, largest
from netdissect.models.loading import LoadedModel

Field = FieldMap | str  # a field map, or why there is none

_MIXING = {  # operations whose output positions are not their inputs' positions
    "conv_transpose2d",
    "interpolate",
    "upsample",
    "upsample_nearest",
    "upsample_bilinear",
    "grid_sample",
    "affine_grid",
    "pixel_shuffle",
    "pixel_unshuffle",
    "fold",
    "unfold",
    "roll",
    "flip",
    "fliplr",
    "flipud",
    "rot90",
    "linear",
    "matmul",
    "__matmul__",
    "mm",
    "bmm",
    "baddbmm",
    "einsum",
    "scaled_dot_product_attention",
    "multi_head_attention_forward",
    "movedim",
    "moveaxis",
    "mT",
    "T",
}
_SWAPS = {"transpose", "transpose_", "swapaxes", "swapdims"}


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1])) if len(value) else (0, 0)
    return int(value), int(value)


def _size(t: torch.Tensor) -> str:
    return "x".join(str(s) for s in t.shape[-2:])


# the positions of (kernel_size, stride, padding, dilation) among a pooling's arguments (None: it has none)
_POOLS = {
    "max_pool2d": (1, 2, 3, 4),
    "max_pool2d_with_indices": (1, 2, 3, 4),
    "avg_pool2d": (1, 2, 3, None),
    "lp_pool2d": (2, 3, None, None),
}


def _window(name: str, args: tuple, kwargs: dict) -> FieldMap:
    """The window of a convolution, pooling or padding call, from the call's own arguments."""
    if name == "pad":  # (left, right, top, bottom, ...) of the last two dimensions
        pad = [int(p) for p in _arg(args, kwargs, 1, "pad")]
        return FieldMap(offset=(-pad[2] if len(pad) > 2 else 0, -pad[0]))
    if name == "conv2d":
        kernel = tuple(_arg(args, kwargs, 1, "weight").shape[-2:])
        stride = _pair(_arg(args, kwargs, 3, "stride", 1))
        padding = _arg(args, kwargs, 4, "padding", 0)
        dilation = _pair(_arg(args, kwargs, 5, "dilation", 1))
        if padding == "valid":
            padding = 0
        elif padding == "same":  # torch pads (total // 2) before, the rest after
            padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
        return FieldMap.of_window(kernel, stride, _pair(padding), dilation)
    at_kernel, at_stride, at_padding, at_dilation = _POOLS[name]
    kernel = _pair(_arg(args, kwargs, at_kernel, "kernel_size"))
    stride = _arg(args, kwargs, at_stride, "stride")
    stride = kernel if stride is None or (isinstance(stride, (tuple, list)) and not stride) else _pair(stride)
    padding = _pair(_arg(args, kwargs, at_padding, "padding", 0)) if at_padding else (0, 0)
    dilation = _pair(_arg(args, kwargs, at_dilation, "dilation", 1)) if at_dilation else (1, 1)
    return FieldMap.of_window(kernel, stride, padding, dilation)


def _moves_spatial_axes(name: str, args: tuple, kwargs: dict, ndim: int) -> bool:
    """Whether a transpose or permute moves one of the last two (spatial) axes."""
    last = {ndim - 2, ndim - 1}
    if name in _SWAPS:
        return bool({int(_arg(args, kwargs, i, n)) % ndim for i, n in ((1, "dim0"), (2, "dim1"))} & last)
    dims = list(args[1:]) if len(args) > 1 else list(kwargs.get("dims", ()))
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = list(dims[0])
    return [int(d) % ndim for d in dims][-2:] != [ndim - 2, ndim - 1]


class _Tracer(TorchFunctionMode):
    """Gives every tensor computed from the traced input its :data:`Field` (see module docstring)."""

    def __init__(self, modules: dict[int, str]):
        super().__init__()
        self.fields: dict[int, Field] = {}  # id(tensor) -> field, dropped when the tensor is freed
        self.modules = modules  # id(module) -> name
        self.running: list[str] = []  # names of the modules whose forward is running

    def track(self, t: torch.Tensor, field: Field) -> None:
        if id(t) not in self.fields:
            weakref.finalize(t, self.fields.pop, id(t), None)
        self.fields[id(t)] = field

    def where(self) -> str:
        """`` in <the innermost module running>`` (the model's own forward has no name)."""
        inner = [n for n in self.running if n]
        return f" in {inner[-1]}" if inner else " in the model's own forward"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and id(t) in self.fields]
        if inputs:
            name = getattr(func, "__name__", str(func))
            fields = [self.fields[id(t)] for t in inputs]
            for o in tree_flatten(out)[0]:
                if isinstance(o, torch.Tensor):
                    self.track(o, self.rule(name, args, kwargs, inputs, fields, o))
        return out

    def rule(
        self, name: str, args: tuple, kwargs: dict, inputs: list[torch.Tensor], fields: list[Field], out: torch.Tensor
    ) -> Field:
        """The field of ``out``, computed by ``name`` from the traced ``inputs`` with ``fields``."""
        broadcast = out.dim() >= 3 and out.shape[-2:].numel() > 1
        meeting = [
            (t, field)
            for t, field in zip(inputs, fields)
            if not (broadcast and t.dim() >= 3 and t.shape[-2:].numel() == 1)  # a 1x1 map spread over the output
        ]
        for _, field in meeting:
            if not isinstance(field, FieldMap):
                return field  # the first reason on the way
        if name in ("conv2d", "pad") or name in _POOLS:
            return meeting[0][1].then(_window(name, args, kwargs))
        if out.dim() < 3:
            return f"{name}{self.where()} leaves no spatial map (its output is {'x'.join(map(str, out.shape))})"
        if name in _MIXING:
            return f"{name}{self.where()} moves or mixes positions"
        if (name in _SWAPS or name in ("permute", "permute_")) and _moves_spatial_axes(
            name, args, kwargs, inputs[0].dim()
        ):
            return f"{name}{self.where()} moves the spatial axes"
        for t, _ in meeting:
            if t.dim() < 3 or t.shape[-2:] != out.shape[-2:]:
                return f"{name}{self.where()} changes the map from {_size(t)} to {_size(out)}"
        return largest(*(field for _, field in meeting)) if meeting else f"{name}{self.where()} has no spatial input"


def trace_field_maps(
    model: LoadedModel, layers: Sequence[str] | None = None, size: tuple[int, int] = (224, 224)
) -> dict[str, Field]:
    """The field map (or why there is none) of each layer (default: every named module) of ``model``,
    traced on one ``size`` = (height, width) image (the size matters only where an operation's output
    size depends on it, e.g. adaptive pooling to the size it already has is the identity)."""
    names = [n for n, _ in model.module.named_modules() if n] if layers is None else list(layers)
    if model.field_maps is not None:
        return {n: model.field_maps.get(n, "the converted graph records no field map for it") for n in names}
    if model.scripted:
        return {n: "a TorchScript model's operations cannot be followed" for n in names}
    named = dict(model.module.named_modules())
    tracer = _Tracer({id(m): n for n, m in reversed(list(named.items()))})
    found: dict[str, Field] = {}

    def before(module, _inputs):
        tracer.running.append(tracer.modules.get(id(module), type(module).__name__))

    def after(module, _inputs, output):
        tracer.running.pop()

    def record(name: str):
        def hook(_module, _inputs, output) -> None:
            output = model.layer_output(name, output)  # a module with several outputs (ONNX graphs)
            if isinstance(output, torch.Tensor):
                found[name] = tracer.fields.get(id(output), "its output does not depend on the input")
            else:
                found[name] = f"its output is a {type(output).__name__}, not a tensor"

        return hook

    handles = [
        torch.nn.modules.module.register_module_forward_pre_hook(before),
        torch.nn.modules.module.register_module_forward_hook(after),
    ]
    handles += [
        named[model.layer_module(n)].register_forward_hook(record(n)) for n in names if model.layer_module(n) in named
    ]
    device = next(model.module.parameters(), torch.zeros(())).device
    x = model.normalise(torch.zeros(1, 3, *size, dtype=torch.uint8, device=device))
    try:
        with torch.no_grad(), tracer:
            tracer.track(x, IDENTITY)
            model.module(x)
    finally:
        for h in handles:
            h.remove()
    return {n: found.get(n, "it never ran in the forward pass") for n in names}


def field_map_text(field: Field) -> str:
    """``offset -64,-64 size 163,163 step 16,16`` (y, x), or ``none (why)``."""
    if not isinstance(field, FieldMap):
        return f"none ({field})"
    pairs = (("offset", field.offset), ("size", field.size), ("step", field.step))
    return " ".join(f"{key} {a},{b}" for key, (a, b) in pairs)


def field_map_json(field: Field) -> dict[str, Any]:
    """The shard meta.json form: ``{"field_map": {"offset", "size", "step"} | null, "field_map_none": why | null}``."""
    if isinstance(field, FieldMap):
        as_lists = {"offset": list(field.offset), "size": list(field.size), "step": list(field.step)}
        return {"field_map": as_lists, "field_map_none": None}
    return {"field_map": None, "field_map_none": field}


def field_map_from_json(info: dict[str, Any]) -> FieldMap | None:
    """The FieldMap of a shard's layer entry (None when it has none or none was recorded)."""
    fm = info.get("field_map")
    if not fm:
        return None
    return FieldMap(tuple(fm["offset"]), tuple(fm["size"]), tuple(fm["step"]))
