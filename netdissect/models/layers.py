"""Capturing layer outputs: layer names, the check that they exist, hooks, and output shapes.

Layers of ordinary modules are named by module path (``layer4``, ``features.28``) and captured with
forward hooks (:func:`capture`); the forward pass stops once every requested layer has run. When a
module runs several times in one forward pass (torchvision's ResNet blocks call their ``relu``
twice), its LAST output of the pass is the layer's output.

A captured output is the layer's own value whatever runs after it: an in-place operation later in
the pass (``ReLU(inplace=True)`` after a convolution, ``out += identity`` after a ResNet block's
``bn2``) would overwrite a tensor kept by reference. Every captured tensor's version counter (which
torch bumps on each in-place change) is checked at the end of the pass; a layer whose output was
changed is copied in its hook from then on, and the batch is run again, so no pass ever returns a
changed value and layers nothing changes are never copied. A TorchScript module cannot be hooked:
its layers are its outputs (``output`` when forward returns one tensor, the keys of a dict of
tensors, ``0``, ``1``, ... for a tuple). A model with ``layer_modules`` (ONNX graphs) names its layers
itself; each is captured by its module's hook (:meth:`LoadedModel.layer_module`).
tensors, ``0``, ``1``, ... for a tuple). A module that computes named blobs itself (a converted Caffe
net, :class:`netdissect.models.caffe.graph.CaffeNet`: ``blob_names`` and ``forward(x, blobs=names)``)
has its blobs as layers, each with its own value after in-place layers, and needs no hooks.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from netdissect.errors import NetDissectError
from netdissect.models.loading import LoadedModel, few


class _StopForward(Exception):
    """Raised from the last hook to end the forward pass once every requested layer is captured."""


def _named_blobs(model: LoadedModel) -> bool:
    """Whether the module computes named blobs itself (converted Caffe nets)."""
    return hasattr(model.module, "blob_names")


def layer_names(model: LoadedModel) -> list[str]:
    """Candidate layer names: every named submodule (ordinary model), output names (TorchScript), or
    blob names (converted Caffe nets)."""
    if _named_blobs(model):
        return list(model.module.blob_names)
    if model.scripted:
        return list(_script_outputs(model, torch.zeros(1, 3, 64, 64)).keys())
    if model.layer_modules is not None:
        return list(model.layer_modules)
    return [name for name, _ in model.module.named_modules() if name]


def check_layers(model: LoadedModel, layers: Sequence[str]) -> None:
    """Raise a NetDissectError naming every unknown layer, the closest names, and the valid ones."""
    if not layers:
        raise NetDissectError("--layers: no layer given; `netdissect layers --model SPEC` lists them")
    names = layer_names(model)
    known = set(names)
    kind = "blob" if _named_blobs(model) else "layer"
    for layer in layers:
        if layer not in known:
            close = difflib.get_close_matches(layer, names, n=3, cutoff=0.5)
            hint = f" Closest: {', '.join(close)}." if close else ""
            raise NetDissectError(
                f"--layers: model {model.spec} has no {kind} {layer!r}.{hint} {kind.capitalize()}s: "
                f"{few(names, 40)} (see `netdissect layers --model {model.spec}`)"
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
    ``copied``: the layers whose output a later in-place operation changes, copied in the hook (all
    of them with ``copy_all``).
    """

    def __init__(self, model: LoadedModel, layers: Sequence[str], copy_all: bool = False):
        self.model = model
        self.layers = list(layers)
        self.outputs: dict[str, torch.Tensor] = {}
        self.versions: dict[str, int] = {}
        self.seen: dict[str, int] = {}
        self.calls: dict[str, int] | None = None
        self.copied: set[str] = set(self.layers) if copy_all else set()
        self._handles: list = []

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs, output) -> None:
            if isinstance(output, torch.Tensor):
                if name in self.copied:
                    output = output.clone()
                self.versions[name] = output._version
            self.outputs[name] = output
            self.seen[name] = self.seen.get(name, 0) + 1
            if self.calls is not None and all(self.seen.get(n, 0) >= c for n, c in self.calls.items()):
                raise _StopForward

        return hook

    def changed(self) -> list[str]:
        """The captured layers (not copied) whose tensor an in-place operation changed after the hook."""
        return [
            n
            for n, out in self.outputs.items()
            if n not in self.copied and isinstance(out, torch.Tensor) and out._version != self.versions[n]
        ]

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Outputs of the requested layers for the normalised batch ``x``."""
        # no_grad, not inference_mode: inference tensors have no version counter
        with torch.no_grad():
            if _named_blobs(self.model):  # a converted Caffe net returns each blob's final value itself
                return self.model.module(x, blobs=self.layers)
            if self.model.scripted:
                outs = _script_outputs(self.model, x)
                return {n: outs[n] for n in self.layers}
            while True:
                self.outputs, self.seen, self.versions = {}, {}, {}
                try:
                    self.model.module(x)
                except _StopForward:
                    pass
                changed = self.changed()
                if not changed:
                    break
                self.copied.update(changed)  # their values were overwritten: copy them and run again
            if self.calls is None:
                self.calls = dict(self.seen)
            missing = [n for n in self.layers if n not in self.outputs]
            if missing:
                raise NetDissectError(
                    f"--layers: module(s) {', '.join(missing)} of model {self.model.spec} never "
                    f"ran in the forward pass; choose layers that compute features"
                )
            return {n: self.model.layer_output(n, self.outputs[n]) for n in self.layers}


def require_weights(model: LoadedModel) -> None:
    """Refuse a model whose tensors are placeholders (a Caffe deploy.prototxt loaded without its
    caffemodel: enough for names and shapes, not for values)."""
    if any(t.is_meta for t in (*model.module.parameters(), *model.module.buffers())):
        raise NetDissectError(
            f"--weights: model {model.spec} has no weights (a Caffe deploy.prototxt holds none); give "
            f"--weights net.caffemodel"
        )


@contextlib.contextmanager
def capture(model: LoadedModel, layers: Sequence[str], copy_all: bool = False) -> Iterator[LayerCapture]:
    """Hook ``layers`` of ``model`` for the duration of the block; yields a callable batch -> outputs.
    ``copy_all`` copies every captured output (to measure what copying costs; the default copies the
    ones an in-place operation changes)."""
    check_layers(model, layers)
    require_weights(model)
    cap = LayerCapture(model, layers, copy_all)
    if not model.scripted and not _named_blobs(model):
        modules = dict(model.module.named_modules())
        cap._handles = [modules[model.layer_module(n)].register_forward_hook(cap._hook(n)) for n in layers]
    try:
        yield cap
    finally:
        for h in cap._handles:
            h.remove()


def layer_shapes(
    model: LoadedModel, layers: Sequence[str] | None = None, size: int | None = None
) -> dict[str, tuple[int, ...] | str]:
    """Output shape (without batch) of each layer for one ``size``×``size`` image; non-tensors by type.
    ``size`` None: the input size a converted Caffe net declares, else 224."""
    if _named_blobs(model):
        if layers is not None:
            check_layers(model, layers)
        hw = model.module.input_size if size is None else (size, size)
        return model.module.shapes_at(hw, layers)
    size = 224 if size is None else size
    if model.scripted:
        names = layer_names(model) if layers is None else list(layers)
    else:
        names = layer_names(model) if layers is None else list(layers)
    x = model.normalise(torch.zeros(1, 3, size, size, dtype=torch.uint8))
    if model.scripted:
        with torch.inference_mode():
            outs = _script_outputs(model, x)
        return {n: tuple(outs[n].shape[1:]) for n in names if n in outs}
    shapes: dict[str, tuple[int, ...] | str] = {}
    modules = dict(model.module.named_modules())

    def hook(name):
        def f(_m, _i, out):
            out = model.layer_output(name, out)
            shapes[name] = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__

        return f

    if layers is not None:
        check_layers(model, names)
    handles = [modules[model.layer_module(n)].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.inference_mode():
            model.module(x)
    finally:
        for h in handles:
            h.remove()
    return {n: shapes[n] for n in names if n in shapes}
