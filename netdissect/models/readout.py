"""How a layer's output is read as unit maps (B, U, H, W): one function per kind of output.

=================  =====================  ==========================================================
kind               output (batch first)   units and maps
=================  =====================  ==========================================================
``conv``           B×C×H×W                C units, H×W maps (as stored)
``channels_last``  B×H×W×C                C units, H×W maps (Swin stages, ConvNeXt block internals)
``tokens``         B×T×D                  D units, h×w maps: the patch tokens after the prefix tokens
``cls``            B×T×D                  D units, 1×1 maps: the class token (image-level units)
``flat``           B×U                    U units, 1×1 maps (fully connected and pooled outputs)
=================  =====================  ==========================================================

Which kind a layer is follows from its output shape, the input size and the model
(:func:`plan_readout`, decided once on a probe image; docs/models.md):

* 4-D outputs are ``conv`` unless only the middle two dimensions look like a spatial grid of the input
  (same downsampling on both axes, see :func:`looks_spatial`) — then ``channels_last``. A square
  input with a square map is therefore always ``conv``, as before.
* 3-D outputs are token sequences. Their patch grid comes from the model (:func:`token_layout`): the
  patch size of its patch embedding and the input size give h×w, and the tokens before the grid
  (class and register tokens) are ``num_prefix_tokens``. A sequence is read when it holds exactly the
  h·w patch tokens (a patch embedding's output) or the prefix tokens and then them; any other count is
  an error. ``tokens="cls"`` reads the class token instead.
* 2-D outputs are ``flat``: their 1×1 maps make masks that cover the whole image or nothing, so such
  units are scored against every label as image-level evidence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from netdissect.defaults import TOKEN_MODES
from netdissect.errors import NetDissectError


@dataclass(frozen=True)
class TokenLayout:
    """Where the patch grid sits in a token sequence: ``prefix`` tokens (class, registers) come first,
    then one token per patch of ``patch`` = (ph, pw) pixels, row by row. ``prefix`` None: not declared
    by the model (ONNX graphs): the tokens that the grid leaves over. ``class_token``: token 0 is one."""

    patch: tuple[int, int]
    prefix: int | None
    class_token: bool
    grid_of: Any = None  # optional callable (ih, iw) -> (h, w): the model's own rule (timm's dynamic_feat_size)

    def grid(self, ih: int, iw: int) -> tuple[int, int]:
        if self.grid_of is not None:
            h, w = self.grid_of((ih, iw))
            return int(h), int(w)
        return ih // self.patch[0], iw // self.patch[1]


@dataclass(frozen=True)
class Readout:
    """How one layer is read: ``kind`` (module docstring) and, for tokens, the prefix and the grid."""

    kind: str
    prefix: int = 0
    grid: tuple[int, int] | None = None

    def describe(self, shape: tuple[int, ...]) -> str:
        """One line for ``netdissect layers``: the kind, the units and their maps."""
        if self.kind == "conv":
            return f"conv: {shape[0]} units, {shape[1]}x{shape[2]} maps"
        if self.kind == "channels_last":
            return f"channels_last: {shape[2]} units, {shape[0]}x{shape[1]} maps"
        if self.kind == "tokens":
            return f"tokens: {shape[1]} units, {self.grid[0]}x{self.grid[1]} patch grid after {self.prefix} prefix token(s)"
        if self.kind == "cls":
            return f"cls: {shape[1]} units, 1x1 maps (class token)"
        return f"flat: {shape[0]} units, 1x1 maps (image-level)"

    def to_json(self) -> dict[str, Any]:
        info = asdict(self)
        info["grid"] = list(self.grid) if self.grid else None
        return info


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    h, w = value
    return int(h), int(w)


def token_layout(module: nn.Module) -> TokenLayout | None:
    """The patch grid a model declares, or None. Read the way timm and torchvision name it:
    patch size from ``patch_embed.patch_size`` or ``patch_size``; prefix tokens from
    ``num_prefix_tokens``, else 1 when the model has a ``cls_token`` / ``class_token``; the class token
    from ``has_class_token``, else prefix ≥ 1. A factory model declares its grid by the same names."""
    embed = getattr(module, "patch_embed", None)
    patch = getattr(embed, "patch_size", None) if embed is not None else None
    if patch is None:
        patch = getattr(module, "patch_size", None)
    if patch is None:
        return None
    if hasattr(module, "num_prefix_tokens"):
        prefix = module.num_prefix_tokens
    else:
        prefix = int(any(getattr(module, n, None) is not None for n in ("cls_token", "class_token")))
    class_token = bool(getattr(module, "has_class_token", prefix is None or prefix >= 1))
    grid_of = getattr(embed, "dynamic_feat_size", None) if embed is not None else None
    return TokenLayout(patch=_pair(patch), prefix=prefix, class_token=class_token, grid_of=grid_of)


def looks_spatial(h: int, w: int, ih: int, iw: int) -> bool:
    """An h×w map is a spatial grid of an ih×iw input: both axes downsampled by the same factor. A square
    input needs a square map; otherwise each side may be one cell off (floors and ceilings of strides)."""
    if h < 1 or w < 1 or h > ih or w > iw:
        return False
    if ih == iw:
        return h == w
    return abs(w - iw * h / ih) <= 1 and abs(h - ih * w / iw) <= 1


def plan_readout(
    shape: tuple[int, ...],
    layer: str,
    image_size: tuple[int, int],
    layout: TokenLayout | None,
    tokens: str | None = None,
) -> Readout:
    """How a layer whose output (without batch) has ``shape`` is read, for ih×iw inputs; ``tokens`` is
    ``--tokens`` (None: the patch grid). Raises a NetDissectError for an output that cannot be read."""
    ih, iw = image_size
    if tokens is not None and tokens not in TOKEN_MODES:
        raise NetDissectError(f"--tokens {tokens}: expected one of {', '.join(TOKEN_MODES)}")
    if tokens is not None and len(shape) != 2:
        raise NetDissectError(
            f"--tokens {tokens}: layer {layer} outputs {_shape_text(shape)}, not a token sequence "
            f"(batch × tokens × channels); drop --tokens or choose a transformer block's output"
        )
    if len(shape) == 1:
        return Readout("flat")
    if len(shape) == 3:
        if not looks_spatial(shape[1], shape[2], ih, iw) and looks_spatial(shape[0], shape[1], ih, iw):
            return Readout("channels_last")
        return Readout("conv")
    if len(shape) != 2:
        raise NetDissectError(
            f"layer {layer}: output has shape (batch, {_shape_text(shape)}), expected (batch, units, height, "
            f"width), (batch, height, width, units), (batch, tokens, units) or (batch, units); choose a "
            f"convolutional, transformer or linear layer"
        )
    count = shape[0]
    if layout is None:
        raise NetDissectError(
            f"layer {layer}: output (batch, {count} tokens, {shape[1]}) is a token sequence but the model "
            f"declares no patch grid (a patch embedding with patch_size, as timm and torchvision ViTs have); "
            f"give it `patch_embed.patch_size` and `num_prefix_tokens` (docs/models.md), or choose another layer"
        )
    h, w = layout.grid(ih, iw)
    if count == h * w:
        prefix = 0  # patch tokens only (a patch embedding's output)
    else:
        prefix = count - h * w if layout.prefix is None else layout.prefix
        if prefix < 0 or count != prefix + h * w:
            declared = "" if layout.prefix is None else f", or those plus {layout.prefix} prefix token(s)"
            raise NetDissectError(
                f"layer {layer}: {count} tokens do not fit the model's patch grid: {ih}x{iw} images in patches "
                f"of {layout.patch[0]}x{layout.patch[1]} give {h}x{w} = {h * w} patch tokens{declared}; choose "
                f"a layer whose tokens are the patch grid (a block's output, not a pooled or merged one)"
            )
    if tokens == "cls":
        if not layout.class_token or prefix == 0:
            raise NetDissectError(
                f"--tokens cls: layer {layer} has no class token (the model declares none, or the layer's "
                f"{count} tokens are all patches); use --tokens spatial"
            )
        return Readout("cls", prefix=prefix, grid=(h, w))
    return Readout("tokens", prefix=prefix, grid=(h, w))


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def conv_maps(output: torch.Tensor) -> torch.Tensor:
    """B×C×H×W: already unit maps."""
    return output


def channels_last_maps(output: torch.Tensor) -> torch.Tensor:
    """B×H×W×C -> B×C×H×W."""
    return output.permute(0, 3, 1, 2)


def token_maps(output: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """B×T×D -> B×D×h×w: drop the ``prefix`` tokens, lay the rest out row by row on the grid."""
    patches = output[:, prefix:, :]
    return patches.transpose(1, 2).reshape(output.shape[0], output.shape[2], *grid)


def cls_maps(output: torch.Tensor) -> torch.Tensor:
    """B×T×D -> B×D×1×1: the class token (token 0)."""
    return output[:, 0, :, None, None]


def flat_maps(output: torch.Tensor) -> torch.Tensor:
    """B×U -> B×U×1×1."""
    return output[:, :, None, None]


def read_maps(output: Any, readout: Readout, layer: str) -> torch.Tensor:
    """A layer's output as (B, U, H, W) unit maps, the way ``readout`` says."""
    if not isinstance(output, torch.Tensor):
        raise NetDissectError(
            f"layer {layer}: output is a {type(output).__name__}, expected a tensor; choose a "
            f"layer whose module returns one tensor"
        )
    if readout.kind == "conv":
        return conv_maps(output)
    if readout.kind == "channels_last":
        return channels_last_maps(output)
    if readout.kind == "tokens":
        return token_maps(output, readout.prefix, readout.grid)
    if readout.kind == "cls":
        return cls_maps(output)
    return flat_maps(output)


def output_shape(output: Any, layer: str) -> tuple[int, ...]:
    """The shape of a layer's output without the batch dimension (a clear error for non-tensors)."""
    if not isinstance(output, torch.Tensor):
        raise NetDissectError(
            f"layer {layer}: output is a {type(output).__name__}, expected a tensor; choose a "
            f"layer whose module returns one tensor"
        )
    return tuple(output.shape[1:])
