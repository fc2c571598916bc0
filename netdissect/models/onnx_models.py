"""ONNX files as torch modules: ``--model model.onnx``.

The graph is converted by onnx2pytorch (one torch module per ONNX node, run in the graph's order), so
the forward hooks of :mod:`netdissect.models.layers` capture node outputs like any module's. A layer is
named by the ONNX value a node outputs (``/layer4/layer4.1/relu_1/Relu_output_0``, ``onnx::Conv_251``:
names may hold ``/`` and ``:``; files use :func:`netdissect.names.layer_file_name`). The layers are
the outputs of the nodes that depend on the image input (not weights, constants or shapes of constants).

Before the conversion, two rewrites that change no value:

* an ``Identity`` of an initializer becomes an initializer (torch's exporter writes such nodes for
  weights it deduplicated; onnx2pytorch would pass them to a convolution as a second input);
* ``BatchNormalization``'s ``training_mode=0`` attribute (the default, which exporters write out) is
  dropped, since onnx2pytorch refuses the attribute.

``Concat`` nodes become small modules (onnx2pytorch runs them as a plain function, which a hook cannot
see). A node onnx2pytorch has no exact conversion for (it would guess a torch function and ignore the
attributes) is refused. The graph's declared input shape is enforced: a fixed height and width must
equal the dataset's images, and a fixed batch size of 1 makes the extraction run one image at a time.
A patch embedding (a convolution whose kernel equals its stride) declares the token grid of
transformer layers (:mod:`netdissect.models.readout`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netdissect.errors import NetDissectError


class Concat(nn.Module):
    """ONNX ``Concat`` as a module (so that its output can be hooked)."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return torch.cat(tensors, dim=self.axis)


class OnnxModule(nn.Module):
    """A converted ONNX graph behind a check of the input's shape; ``graph`` is onnx2pytorch's module."""

    def __init__(self, graph: nn.Module, path: str, input_name: str, dims: list[int | None], patch: Any):
        super().__init__()
        self.graph = graph
        self.path = path
        self.input_name = input_name
        self.dims = dims  # declared input dimensions, None where symbolic
        if patch is not None:
            self.patch_size = patch  # the token grid (readout.token_layout); prefix tokens: what it leaves
            self.num_prefix_tokens = None

    def forward(self, x: torch.Tensor) -> Any:
        if any(d is not None and x.shape[2 + i] != d for i, d in enumerate(self.dims[2:])):
            h, w = ("?" if d is None else d for d in self.dims[2:])
            raise NetDissectError(
                f"--model {self.path}: the graph's input {self.input_name!r} is {_dims_text(self.dims)}, so it "
                f"takes {h}x{w} images, not the dataset's {x.shape[2]}x{x.shape[3]}; dissect it with a dataset "
                f"of that size, or export it with dynamic height and width (torch.onnx.export(..., "
                f"dynamic_axes={{'{self.input_name}': {{0: 'batch', 2: 'height', 3: 'width'}}}}))"
            )
        try:
            return self.graph(x)
        except (RuntimeError, ValueError, IndexError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise NetDissectError(
                f"--model {self.path}: the graph's shapes cannot be resolved for {x.shape[2]}x{x.shape[3]} images "
                f"({reason}); dissect it with a dataset of the size it was exported for, or export it with "
                f"dynamic axes"
            ) from None


def _dims_text(dims: list[int | None]) -> str:
    return "x".join("?" if d is None else str(d) for d in dims)


def load_onnx(spec: str) -> tuple[OnnxModule, dict[str, Any]]:
    """The ONNX file ``spec`` as an :class:`OnnxModule`, and the LoadedModel fields it sets
    (``layer_modules``, ``fixed_batch``)."""
    from netdissect.models.loading import require

    onnx = require("onnx", "onnx", f"--model {spec}")
    require("onnx2pytorch", "onnx", f"--model {spec}")
    from onnx2pytorch import ConvertModel

    if not Path(spec).is_file():
        raise NetDissectError(f"--model {spec}: file not found (an ONNX model file was expected)")
    try:
        proto = onnx.load(spec)
    except Exception as err:
        raise NetDissectError(f"--model {spec}: not a readable ONNX file ({str(err).splitlines()[0]})") from None
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise NetDissectError(
            f"--model {spec}: the graph has {len(inputs)} inputs ({', '.join(v.name for v in inputs)}); "
            f"expected one image input (batch, 3, height, width)"
        )
    image = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in image.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] not in (3, None):
        raise NetDissectError(
            f"--model {spec}: input {image.name!r} is {_dims_text(dims)}; expected (batch, 3, height, width)"
        )
    if dims[0] not in (None, 1):
        raise NetDissectError(
            f"--model {spec}: input {image.name!r} fixes the batch size to {dims[0]}; export it with a dynamic "
            f"batch axis (dynamic_axes={{'{image.name}': {{0: 'batch'}}}}) or with batch size 1"
        )
    _fold_initializer_identities(onnx, graph)
    _drop_default_training_mode(graph)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            converted = ConvertModel(proto)
        except (NotImplementedError, KeyError, ValueError, TypeError) as err:
            raise NetDissectError(
                f"--model {spec}: onnx2pytorch cannot convert this graph ({str(err).splitlines()[0]})"
            ) from None
    guessed = [str(w.message) for w in caught if "No explicit conversion" in str(w.message)]
    if guessed:
        raise NetDissectError(
            f"--model {spec}: onnx2pytorch has no exact conversion for some nodes ({guessed[0]}); "
            f"export the model with operators it supports"
        )
    # onnx2pytorch's Slice and Gather index with lists, which torch warns about on every new call site
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
    _hookable_concats(converted)
    layer_modules = _layer_modules(graph, converted, image.name)
    module = OnnxModule(converted, spec, image.name, dims, _patch_size(graph, image.name))
    return module, {"layer_modules": layer_modules, "fixed_batch": 1 if dims[0] == 1 else None}


def _fold_initializer_identities(onnx: Any, graph: Any) -> None:
    initializers = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _drop_default_training_mode(graph: Any) -> None:
    for node in graph.node:
        if node.op_type == "BatchNormalization":
            for i, attr in enumerate(node.attribute):
                if attr.name == "training_mode" and attr.i == 0:
                    del node.attribute[i]
                    break


def _hookable_concats(converted: nn.Module) -> None:
    from functools import partial

    for name in converted.mapping.values():
        op = getattr(converted, name)
        if isinstance(op, partial) and op.func is torch.cat:
            setattr(converted, name, Concat(int(op.keywords.get("dim", 0))))


def _image_dependent(graph: Any, input_name: str) -> set[str]:
    """The values computed from the image's pixels (nodes are in topological order); a ``Shape`` or
    ``Size`` of a value depends on its shape only, so shape arithmetic is not followed."""
    reached = {input_name}
    for node in graph.node:
        if node.op_type not in ("Shape", "Size") and any(i in reached for i in node.input):
            reached.update(o for o in node.output if o)
    return reached


def _layer_modules(graph: Any, converted: nn.Module, input_name: str) -> dict[str, tuple[str, int]]:
    """Node output name -> (module path of its node, position among the node's outputs)."""
    reached = _image_dependent(graph, input_name)
    layers = {}
    for node in graph.node:
        if node.output[0] not in reached:
            continue
        op = getattr(converted, converted.mapping[node.output[0]])
        if not isinstance(op, nn.Module):
            continue
        for position, name in enumerate(node.output):
            if name:
                layers[name] = (f"graph.{converted.mapping[node.output[0]]}", position)
    return layers


def _patch_size(graph: Any, input_name: str) -> tuple[int, int] | None:
    """The patch size of the graph's patch embedding: the first convolution on image values whose kernel
    equals its stride, without padding (None when there is none)."""
    reached = _image_dependent(graph, input_name)
    for node in graph.node:
        if node.op_type != "Conv" or node.input[0] not in reached:
            continue
        attrs = {a.name: list(a.ints) for a in node.attribute}
        kernel, strides, pads = attrs.get("kernel_shape"), attrs.get("strides"), attrs.get("pads", [0, 0, 0, 0])
        if kernel and len(kernel) == 2 and kernel == strides and min(kernel) > 1 and not any(pads):
            return int(kernel[0]), int(kernel[1])
        return None  # the first convolution on the image is not a patch embedding
    return None
