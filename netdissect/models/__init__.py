"""Models: a SPEC becomes a torch module in eval mode (:mod:`~netdissect.models.loading`), whose layer
outputs are captured by hooks (:mod:`~netdissect.models.layers`) and whose field maps are traced
(:mod:`~netdissect.models.fieldmaps`); named architectures live in
:mod:`~netdissect.models.zoo`, the ``layers`` and ``random-weights`` commands in
:mod:`~netdissect.models.cli`."""

import importlib

# Imported on first use (PEP 562): the command registrations import this package without loading torch.
_HOMES = {
    "LayerCapture": "layers",
    "capture": "layers",
    "check_layers": "layers",
    "layer_names": "layers",
    "layer_shapes": "layers",
    "LoadedModel": "loading",
    "load_model": "loading",
    "load_weights": "loading",
    "normalise": "loading",
    "save_checkpoint": "loading",
    "trace_field_maps": "fieldmaps",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"netdissect.models.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'netdissect.models' has no attribute {name!r}")


__all__ = sorted(_HOMES)
