"""A Caffe net (prototxt layers + caffemodel blobs) as one torch module whose forward computes named
blobs (docs/caffe-models.md §3).

:func:`build_net` does what Caffe's net set-up does for the TEST phase: keeps the layers whose
include/exclude rules admit the phase and skips data and loss layers, finds the one image input
(an ``Input`` layer or the net-level ``input``), builds every layer for the shapes of its bottoms
(:func:`netdissect.models.caffe.layers.build_layer`, shapes propagated by :func:`empty_run`), and
copies the trained blobs by layer name, checking their number and shapes. It also composes every
blob's receptive field (:mod:`netdissect.models.fieldmap`).

Blobs keep Caffe's names and in-place meaning: layers run in prototxt order, each reads the current
value of its bottom names and replaces the value of its top names, so a blob holds the output of the
LAST layer that writes it (CaffeNet's ``conv5`` is the output of ``relu5``). :meth:`CaffeNet.forward`
returns the requested blobs and runs only the layers they depend on (none after the last layer that
writes one of them, no branch they do not read).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from netdissect.errors import NetDissectError
from netdissect.models.caffe.layers import SKIPPED_TYPES, SUPPORTED_TYPES, CaffeLayer, Shape, build_layer
from netdissect.models.caffe.proto import CaffeModel, Prototxt
from netdissect.models.fieldmap import IDENTITY, FieldMap, largest

_TEST = 1  # Phase TEST


class CaffeNet(nn.Module):
    """The converted net. ``blob_names``: every blob (the input first, then tops in order of first
    appearance); ``blob_shapes``: their shapes without the batch axis at the declared input size;
    ``field_maps``: their receptive fields where they have one (not after global pooling or an
    InnerProduct); ``layer_names``/``layer_types``: the layers kept."""

    def __init__(self, name: str, input_name: str, input_shape: Shape, steps: list[_Step]):
        super().__init__()
        self.name, self.input_name, self.input_shape = name, input_name, tuple(input_shape)
        self.layers = nn.ModuleList(step.module for step in steps)
        self.layer_names = [step.name for step in steps]
        self.layer_types = [step.type for step in steps]
        self.bottoms = [list(step.bottoms) for step in steps]
        self.tops = [list(step.tops) for step in steps]
        self.blob_names = list(dict.fromkeys([input_name, *(t for step in steps for t in step.tops)]))
        self.last_write = {input_name: -1}
        last_read: dict[str, int] = {}
        for i, step in enumerate(steps):
            last_read.update((name, i) for name in step.bottoms)
            self.last_write.update((name, i) for name in step.tops)
        # the net's outputs: blobs whose final value no layer reads (an in-place layer reads the value before)
        self.outputs = [n for n in self.blob_names if last_read.get(n, -1) <= self.last_write[n]]
        self._plans: dict[tuple[str, ...], list[tuple[int, list[str]]]] = {}
        self.blob_shapes: dict[str, Shape] = {}
        self.field_maps: dict[str, FieldMap] = {}

    @property
    def input_size(self) -> tuple[int, int]:
        return self.input_shape[2], self.input_shape[3]

    def forward(self, x: torch.Tensor, blobs: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """The values of ``blobs`` (default: the net's outputs, the blobs no later layer reads) for the
        input batch ``x`` (N, 3, H, W), by name; only the layers they depend on run (:meth:`plan`)."""
        wanted = list(self.outputs if blobs is None else blobs)
        unknown = [n for n in wanted if n not in self.last_write]
        if unknown:
            raise NetDissectError(f"net {self.name}: no blob {', '.join(map(repr, unknown))}")
        values = {self.input_name: x}
        for i, release in self.plan(wanted):
            try:
                out = self.layers[i](*(values[b] for b in self.bottoms[i]))
            except RuntimeError as err:
                if isinstance(err, torch.OutOfMemoryError):
                    raise
                shapes = ", ".join(str(tuple(values[b].shape[1:])) for b in self.bottoms[i])
                h, w = x.shape[2:]
                raise NetDissectError(
                    f"layer {self.layer_names[i]!r} ({self.layer_types[i]}) cannot run on bottoms of shape {shapes} "
                    f"per image (input {h}x{w}; the prototxt declares {self.input_size[0]}x{self.input_size[1]}): "
                    f"{str(err).splitlines()[0]}"
                ) from None
            for name, value in zip(self.tops[i], out if isinstance(out, tuple) else (out,)):
                values[name] = value
            for name in release:
                del values[name]
        return {n: values[n] for n in wanted}

    def plan(self, wanted: Sequence[str]) -> list[tuple[int, list[str]]]:
        """The layers that compute ``wanted``, in order, each with the names whose values no later layer of
        the plan (nor the caller) needs. A layer runs when a later step, or the caller, reads a value it
        writes: walking back from the last writer of a wanted blob, a layer's tops stop being needed
        before it and its bottoms become needed (an in-place layer's blob stays needed)."""
        key = tuple(wanted)
        if key not in self._plans:
            needed, run = set(wanted), []
            for i in range(max(self.last_write[n] for n in wanted), -1, -1):
                if needed & set(self.tops[i]):
                    run.append(i)
                    needed = (needed - set(self.tops[i])) | set(self.bottoms[i])
            run.reverse()
            last_use = {}
            for position, i in enumerate(run):
                last_use.update((name, position) for name in (*self.bottoms[i], *self.tops[i]))
            release = [[] for _ in run]
            for name, position in last_use.items():
                if name not in key:
                    release[position].append(name)
            self._plans[key] = list(zip(run, release))
        return self._plans[key]

    def shapes_at(self, size: tuple[int, int], blobs: Sequence[str] | None = None) -> dict[str, Shape]:
        """The shapes (without the batch axis) of ``blobs`` (default: all) for one input of ``size`` (H, W),
        by :func:`empty_run` (no arithmetic, no memory; the weights stay where they are)."""
        wanted = list(self.blob_names if blobs is None else blobs)
        x = torch.empty((0, self.input_shape[1], *size))
        values = empty_run(self, self.layers, x, blobs=wanted)
        return {name: tuple(v.shape[1:]) for name, v in values.items()}


def empty_run(module: nn.Module, layers: Sequence[CaffeLayer], *inputs, **kwargs):
    """``module(*inputs, **kwargs)`` on inputs with a batch of 0, the Caffe blobs of ``layers`` replaced
    by uninitialised CPU tensors of their shapes for the call: every output shape, with no arithmetic
    and no memory touched. (The ``meta`` device would do the same, but its kernels of pooling and
    LRN are Python code that imports sympy: ~150 MB and a second.)"""
    saved = [[getattr(layer, name) for name in layer.blob_names] for layer in layers]
    try:
        for layer, values in zip(layers, saved):
            layer.set_blobs([torch.empty(v.shape, dtype=v.dtype) for v in values])
        return module(*inputs, **kwargs)
    finally:
        for layer, values in zip(layers, saved):
            layer.set_blobs(values)


@dataclass
class _Step:
    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    module: CaffeLayer


def _included(layer, state) -> bool:
    """Caffe's NetStateRule logic for the net state (phase TEST, the net's level and stages)."""

    def meets(rule) -> bool:
        if rule.HasField("phase") and rule.phase != state["phase"]:
            return False
        if rule.HasField("min_level") and state["level"] < rule.min_level:
            return False
        if rule.HasField("max_level") and state["level"] > rule.max_level:
            return False
        if any(s not in state["stages"] for s in rule.stage):
            return False
        return not any(s in state["stages"] for s in rule.not_stage)

    if len(layer.include):
        return any(meets(r) for r in layer.include)
    return not any(meets(r) for r in layer.exclude)


def _inputs(proto: Prototxt) -> dict[str, Shape]:
    """Net-level inputs: ``input`` names with ``input_shape`` (one each) or four ``input_dim`` each."""
    net, where = proto.net, proto.path
    names = list(net.input)
    if not names:
        if len(net.input_shape) or len(net.input_dim):
            raise NetDissectError(f'{where}: input_shape/input_dim given without `input: "<blob name>"`')
        return {}
    if len(net.input_shape):
        if len(net.input_shape) != len(names):
            raise NetDissectError(f"{where}: {len(names)} inputs but {len(net.input_shape)} input_shape entries")
        return {n: tuple(s.dim) for n, s in zip(names, net.input_shape)}
    if len(net.input_dim):
        if len(net.input_dim) != 4 * len(names):
            raise NetDissectError(
                f"{where}: {len(net.input_dim)} input_dim values for {len(names)} input(s); give four per input "
                f"(N, C, H, W)"
            )
        dims = list(net.input_dim)
        return {n: tuple(dims[4 * i : 4 * i + 4]) for i, n in enumerate(names)}
    raise NetDissectError(f"{where}: input {', '.join(names)} has no shape" + _INPUT_HINT)


_INPUT_HINT = (
    "; declare it with four `input_dim:` values (N, C, H, W) or `input_shape { dim: ... }` after `input:`, or with "
    'a layer { type: "Input" input_param { shape { dim: 1 dim: 3 dim: 227 dim: 227 } } }'
)


def build_net(proto: Prototxt, weights: CaffeModel | None = None) -> CaffeNet:
    """The :class:`CaffeNet` of a parsed prototxt, with the blobs of ``weights`` (else its buffers stay
    on the ``meta`` device: enough for names, shapes and field maps)."""
    path = proto.path
    state_msg = proto.net.state
    state = {"phase": _TEST, "level": state_msg.level, "stages": set(state_msg.stage)}
    inputs = _inputs(proto)
    shapes: dict[str, Shape] = dict(inputs)
    layers = []
    for layer, line in zip(proto.layers, proto.lines):
        ctx = (
            f"{path}:{line}: layer {layer.name!r} ({layer.type})"
            if line
            else f"{path}: layer {layer.name!r} ({layer.type})"
        )
        if not _included(layer, state) or layer.type in SKIPPED_TYPES or layer.type.endswith("Loss"):
            continue
        if layer.type == "Input":
            shape_list = [tuple(s.dim) for s in layer.input_param.shape]
            if len(shape_list) not in (1, len(layer.top)) or not len(layer.top):
                raise NetDissectError(f"{ctx}: needs one input_param shape (for all tops) or one per top" + _INPUT_HINT)
            for i, top in enumerate(layer.top):
                shapes[top] = shape_list[i if len(shape_list) > 1 else 0]
                inputs[top] = shapes[top]
            continue
        if layer.type not in SUPPORTED_TYPES:
            raise NetDissectError(
                f"{ctx}: layer type {layer.type!r} is not supported; supported types: {', '.join(sorted(SUPPORTED_TYPES))} "
                f"(data and loss layers are skipped)"
            )
        layers.append((layer, ctx))
    if not inputs:
        raise NetDissectError(f"{path}: the prototxt declares no input shape" + _INPUT_HINT)
    if len(inputs) != 1:
        raise NetDissectError(
            f"{path}: declares {len(inputs)} inputs ({', '.join(inputs)}); a dissection feeds one image input"
        )
    input_name, input_shape = next(iter(inputs.items()))
    if len(input_shape) != 4 or input_shape[1] != 3 or min(input_shape) < 1:
        raise NetDissectError(
            f"{path}: input {input_name!r} has shape {input_shape}; expected (N, 3, H, W): one colour image per item"
        )

    steps, field_maps = [], {input_name: IDENTITY}
    shapes = {input_name: tuple(input_shape)}  # with the declared batch size, as the layers are built for
    for layer, ctx in layers:
        missing = [b for b in layer.bottom if b not in shapes]
        if missing:
            close = difflib.get_close_matches(missing[0], list(shapes), n=3)
            hint = f" (closest: {', '.join(close)})" if close else ""
            raise NetDissectError(
                f"{ctx}: reads blob {missing[0]!r}, which no earlier layer writes{hint}"
                + (f"; the input is {input_name!r}" if not steps else "")
            )
        if not len(layer.top):
            raise NetDissectError(f"{ctx}: has no top blob")
        module = build_layer(layer, [shapes[b] for b in layer.bottom], len(layer.top), ctx)
        try:
            out = empty_run(module, [module], *(torch.empty((0, *shapes[b][1:])) for b in layer.bottom))
        except RuntimeError as err:
            bottoms = ", ".join(str(shapes[b]) for b in layer.bottom)
            raise NetDissectError(
                f"{ctx}: cannot run on bottoms of shape {bottoms}: {str(err).splitlines()[0]}"
            ) from None
        outs = out if isinstance(out, tuple) else (out,)
        if len(outs) != len(layer.top):
            raise NetDissectError(f"{ctx}: has {len(layer.top)} tops but computes {len(outs)} blobs")
        fields = _field_map(layer, module, [field_maps.get(b) for b in layer.bottom])
        for top, value in zip(layer.top, outs):
            shapes[top] = (input_shape[0], *value.shape[1:])
            if fields is None:
                field_maps.pop(top, None)
            else:
                field_maps[top] = fields
        steps.append(_Step(layer.name, layer.type, list(layer.bottom), list(layer.top), module))

    if weights is not None:
        _copy_blobs(steps, [ctx for _, ctx in layers], weights)
    net = CaffeNet(proto.net.name or path.stem, input_name, input_shape, steps)
    net.blob_shapes = {name: tuple(shapes[name][1:]) for name in net.blob_names}
    net.field_maps = {name: field_maps[name] for name in net.blob_names if name in field_maps}
    return net


def _copy_blobs(steps: list[_Step], contexts: list[str], weights: CaffeModel) -> None:
    """Trained blobs into the layers that need them, matched by layer name; number and shapes checked
    (a legacy 4-D blob matches a shape that equals it left-padded with 1s, as in Caffe)."""
    for step, ctx in zip(steps, contexts):
        module = step.module
        if not module.blob_names:
            continue
        expected = module.blob_shapes()
        described = ", ".join(f"{n} {s}" for n, s in zip(module.blob_names, expected))
        found = weights.blobs.get(step.name)
        if found is None:
            close = difflib.get_close_matches(step.name, list(weights.blobs), n=3)
            hint = f" (closest layer names there: {', '.join(close)})" if close else ""
            raise NetDissectError(
                f"{ctx}: --weights {weights.path} has no blobs for this layer, which needs {described}{hint}; "
                f"give the caffemodel of this network"
            )
        if len(found) != len(expected):
            raise NetDissectError(
                f"{ctx}: --weights {weights.path} holds {len(found)} blob(s) for this layer, expected "
                f"{len(expected)}: {described}"
            )
        values = []
        for name, shape, blob in zip(module.blob_names, expected, found):
            have = tuple(blob.values.shape)
            fits = have == shape or (blob.legacy and len(shape) <= 4 and (1,) * (4 - len(shape)) + shape == have)
            if not fits:
                raise NetDissectError(
                    f"{ctx}: blob {name} in --weights {weights.path} has shape {have}, expected {shape} "
                    f"(from the prototxt and the shapes of the bottom blobs)"
                )
            values.append(torch.from_numpy(blob.values.reshape(shape)))
        module.set_blobs(values)


_SAME_FIELD = {"ReLU", "Sigmoid", "TanH", "AbsVal", "Power", "Dropout", "BatchNorm", "Scale", "Bias", "Split"}


def _field_map(layer, module: CaffeLayer, bottoms: list[FieldMap | None]) -> FieldMap | None:
    """The receptive field of a layer's tops from those of its bottoms (None: no spatial map)."""
    if any(b is None for b in bottoms):
        return None
    kind = layer.type
    if kind == "Convolution":
        return bottoms[0].then(
            FieldMap.of_window(module.weight.shape[2:], module.stride, module.padding, module.dilation)
        )
    if kind == "Pooling":
        if module.global_pooling:
            return None
        return bottoms[0].then(FieldMap.of_window(module.kernel, module.stride, module.pad))
    if kind == "LRN":
        if module.across:
            return bottoms[0]
        half = (module.size - 1) // 2
        return bottoms[0].then(FieldMap.of_window((module.size,) * 2, padding=(half, half)))
    if kind in _SAME_FIELD or (kind == "Softmax" and module.axis == 1) or (kind == "Slice" and module.axis == 1):
        return bottoms[0]
    if kind == "Eltwise" or (kind == "Concat" and module.axis == 1):
        return largest(*bottoms)
    return None  # InnerProduct, Flatten, Reshape, and operations across spatial axes
