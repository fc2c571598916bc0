"""timm architectures: ``timm:NAME`` (``timm:resnet50``, ``timm:vit_small_patch16_224``).

The model is built with ``pretrained=False``, always: nothing is downloaded (the hub is also switched
off for this process, ``HF_HUB_OFFLINE=1``, unless the caller set it). Weights come from ``--weights``
(a state_dict, a checkpoint or a .safetensors file) or are the seeded random initialisation of
:func:`netdissect.models.loading.load_model`. The model's own input normalisation is its
``pretrained_cfg`` mean and std, when timm has them (``--mean``/``--std`` override it).
"""

from __future__ import annotations

import difflib
import os
from typing import Any

from torch import nn

from netdissect.errors import NetDissectError


def build_timm(spec: str) -> tuple[nn.Module, dict[str, Any]]:
    """The randomly initialised timm architecture of ``timm:NAME`` and its own ``{"mean", "std"}``."""
    from netdissect.models.loading import require

    name = spec.removeprefix("timm:")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before timm imports huggingface_hub
    timm = require("timm", "timm", f"--model {spec}")
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise NetDissectError(
            f"--model {spec}: timm has no architecture {name!r}.{hint} List them with "
            f"python -c \"import timm; print(timm.list_models('*vit*'))\""
        )
    module = timm.create_model(name, pretrained=False)
    cfg = getattr(module, "pretrained_cfg", None) or {}
    norm = {key: tuple(float(v) for v in cfg[key]) for key in ("mean", "std") if len(cfg.get(key) or ()) == 3}
    return module, norm
