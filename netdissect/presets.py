"""Named presets: one word sets every convention of the original Network Dissection system or of
NetDissect-Lite, so that a run compares like with like (docs/dissection.md §9).

=============  ===============  ==============  =====================  ===================================
preset         union (§4)       upsample (§3)   quantile q (§2)        input of a torch model (§1)
=============  ===============  ==============  =====================  ===================================
``original``   ``paper``        ``fieldmap``    5/999 (level 994/999)  (v − mean) / 57.12 in float32
``lite``       ``lite``         ``bilinear``    5/999 (level 994/999)  float32(v − mean, in float64) / 57.12
=============  ===============  ==============  =====================  ===================================

v are the 0–255 pixel values, mean = 124.6901, 118.6897, 109.5388 (R, G, B: both systems' BGR mean
109.5388, 118.6897, 124.6901 in RGB order) and 57.12 = 255 · 0.224. The two systems differ in the
last bits only: the original subtracts a float32 mean from float32 pixels; Lite subtracts a list of
Python floats from a float32 array (numpy computes that in float64 and rounds the difference to
float32). Both then divide by 57.12 in float32. A model that brings its own input convention (a
converted Caffe net: BGR, 0–255, its mean) keeps it under either preset, as the original system did.

Explicit options win over the preset; each override is logged (:func:`resolve`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from netdissect.defaults import DIVISOR, PRESETS, QUANTILE, UNION, UPSAMPLE
from netdissect.errors import NetDissectError

log = logging.getLogger(__name__)

LITE_MEAN = (124.6901, 118.6897, 109.5388)  # R, G, B, on 0–255 values
LITE_STD = 255.0 * 0.224  # what both systems divide by (57.12)


@dataclass(frozen=True)
class Input:
    """How pixel values become a model's input: float32 ``(v / divisor − mean) / std`` per channel,
    the mean subtracted in ``mean_precision`` arithmetic (see :func:`netdissect.models.normalise`)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    divisor: float
    mean_precision: str


@dataclass(frozen=True)
class Preset:
    union: str
    upsample: str
    quantile: float
    input: Input


PRESET_TABLE = {
    "original": Preset("paper", "fieldmap", 5 / 999, Input(LITE_MEAN, (LITE_STD,) * 3, 1.0, "float32")),
    "lite": Preset("lite", "bilinear", 5 / 999, Input(LITE_MEAN, (LITE_STD,) * 3, 1.0, "float64")),
}
assert tuple(PRESET_TABLE) == PRESETS

_DEFAULTS = {"union": UNION, "upsample": UPSAMPLE, "quantile": QUANTILE}
_said: set[str] = set()  # overrides already logged by this process (the stages of `dissect` resolve again)


def _say(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.warning("%s", message)


def preset(name: str | None) -> Preset | None:
    """The preset called ``name`` (None: no preset)."""
    if name is None:
        return None
    if name not in PRESET_TABLE:
        raise NetDissectError(f"--preset {name}: expected one of {', '.join(PRESETS)}")
    return PRESET_TABLE[name]


def resolve(name: str | None, **given: Any) -> dict[str, Any]:
    """The value of each convention in ``given`` (``union``, ``upsample``, ``quantile``): the given one
    when not None, else the preset's, else netdissect's default (defaults.py). A given value that
    differs from the preset's is logged as an override."""
    chosen = preset(name)
    values = {}
    for key, value in given.items():
        of_preset = getattr(chosen, key) if chosen is not None else None
        if value is None:
            value = of_preset if chosen is not None else _DEFAULTS[key]
        elif chosen is not None and value != of_preset:
            _say(f"--{key} {value} overrides preset {name}'s {key} {of_preset}")
        values[key] = value
    return values


def apply_input(model: Any, name: str | None, mean: Any = None, std: Any = None) -> None:
    """Set the input convention of a LoadedModel: the preset's (unless the model brings its own),
    then the explicit ``mean`` / ``std`` (already checked triples) on top, logging each override."""
    chosen = preset(name)
    if chosen is not None:
        if model.bgr or model.divisor != DIVISOR:  # set by the model's loader
            _say(
                f"model {model.spec} brings its own input convention ({'BGR' if model.bgr else 'RGB'}, pixel "
                f"values / {model.divisor:g}, mean {', '.join(f'{m:g}' for m in model.mean)}); preset {name} keeps it"
            )
        else:
            model.mean, model.std = chosen.input.mean, chosen.input.std
            model.divisor, model.mean_precision = chosen.input.divisor, chosen.input.mean_precision
    for key, value in (("mean", mean), ("std", std)):
        if value is None:
            continue
        if chosen is not None and tuple(value) != tuple(getattr(model, key)):
            _say(
                f"--{key} {','.join(f'{v:g}' for v in value)} overrides preset {name}'s {key} "
                f"{','.join(f'{v:g}' for v in getattr(model, key))} (on pixel values / {model.divisor:g})"
            )
        setattr(model, key, tuple(value))
