"""Caffe's layer types as torch modules with Caffe's test-time semantics (docs/caffe-models.md §2).

:func:`build_layer` turns one ``LayerParameter`` and the shapes of its bottom blobs into a module,
as Caffe's layer set-up does: parameter shapes that a prototxt leaves implicit (an InnerProduct's
input size) come from the bottom shapes. A module's Caffe blobs (weights, bias, BatchNorm
statistics, ...) are buffers named in ``blob_names``, created on the ``meta`` device with their
expected shapes; :meth:`CaffeLayer.set_blobs` puts the trained values in. ``forward`` takes the
bottom tensors and returns one tensor, or a tuple for several tops. Only plain torch operations are
used, so a module runs wherever its buffers are (CPU or CUDA); a batch of 0 gives shapes only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from netdissect.errors import NetDissectError

Shape = tuple[int, ...]

# Layer types that are not part of a deployed network (data reading, losses): skipped.
SKIPPED_TYPES = frozenset(
    {
        "Data", "ImageData", "HDF5Data", "HDF5Output", "WindowData", "MemoryData", "DummyData", "Silence",
        "Accuracy", "SoftmaxWithLoss", "EuclideanLoss", "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss",
        "SigmoidCrossEntropyLoss", "ContrastiveLoss",
    }
)  # fmt: skip


class CaffeLayer(nn.Module):
    """A layer with Caffe blobs held as buffers named ``blob_names`` (in the caffemodel's order)."""

    blob_names: tuple[str, ...] = ()

    def add_blob(self, name: str, shape: Shape) -> None:
        self.blob_names = (*self.blob_names, name)
        self.register_buffer(name, torch.empty(shape, device="meta"))

    def blob_shapes(self) -> list[Shape]:
        return [tuple(getattr(self, n).shape) for n in self.blob_names]

    def set_blobs(self, values: Sequence[torch.Tensor]) -> None:
        for name, value in zip(self.blob_names, values, strict=True):
            self.register_buffer(name, value)


def canonical_axis(axis: int, ndim: int, what: str, ctx: str) -> int:
    """Caffe's CanonicalAxisIndex: -ndim <= axis < ndim, negative from the end."""
    if not -ndim <= axis < ndim:
        raise NetDissectError(f"{ctx}: {what} {axis} is out of range for a {ndim}-axis bottom blob")
    return axis % ndim


def _pair(values: Sequence[int], h: int | None, w: int | None, default: int, name: str, ctx: str) -> tuple[int, int]:
    """A 2-D window parameter: repeated (none, one value for both axes, or two: h, w) or *_h/*_w."""
    if h is not None or w is not None:
        if len(values):
            raise NetDissectError(f"{ctx}: give either {name} or {name}_h/{name}_w, not both")
        return int(default if h is None else h), int(default if w is None else w)
    if len(values) == 0:
        return default, default
    if len(values) == 1:
        return int(values[0]), int(values[0])
    if len(values) == 2:
        return int(values[0]), int(values[1])
    raise NetDissectError(f"{ctx}: {name} has {len(values)} values; only 2-D (one or two values) is supported")


def _opt(message, field: str) -> int | None:
    return getattr(message, field) if message.HasField(field) else None


# -- convolution and inner product --------------------------------------------------------------------
class Convolution(CaffeLayer):
    def __init__(self, out_channels, in_channels, kernel, stride, padding, dilation, groups, bias):
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.add_blob("weight", (out_channels, in_channels // groups, *kernel))
        if bias:
            self.add_blob("bias", (out_channels,))

    def forward(self, x):
        bias = self.bias if "bias" in self.blob_names else None
        return F.conv2d(x, self.weight, bias, self.stride, self.padding, self.dilation, self.groups)


def _convolution(p, bottoms: list[Shape], ctx: str) -> Convolution:
    c = p.convolution_param
    (shape,) = _bottoms(bottoms, 1, ctx)
    if len(shape) != 4 or canonical_axis(c.axis, len(shape), "axis", ctx) != 1:
        raise NetDissectError(f"{ctx}: only 2-D convolution over channel axis 1 of a 4-axis blob is supported")
    if not c.HasField("num_output") or c.num_output == 0:
        raise NetDissectError(f"{ctx}: convolution_param needs num_output")
    kernel = _pair(c.kernel_size, _opt(c, "kernel_h"), _opt(c, "kernel_w"), 0, "kernel_size", ctx)
    if min(kernel) < 1:
        raise NetDissectError(f"{ctx}: convolution_param needs kernel_size (or kernel_h and kernel_w)")
    pad = _pair(c.pad, _opt(c, "pad_h"), _opt(c, "pad_w"), 0, "pad", ctx)
    stride = _pair(c.stride, _opt(c, "stride_h"), _opt(c, "stride_w"), 1, "stride", ctx)
    dilation = _pair(c.dilation, None, None, 1, "dilation", ctx)
    if shape[1] % c.group or c.num_output % c.group:
        raise NetDissectError(
            f"{ctx}: group {c.group} must divide the input channels ({shape[1]}) and num_output ({c.num_output})"
        )
    return Convolution(c.num_output, shape[1], kernel, stride, pad, dilation, c.group, c.bias_term)


class InnerProduct(CaffeLayer):
    def __init__(self, outputs: int, inputs: int, axis: int, transpose: bool, bias: bool):
        super().__init__()
        self.axis, self.transpose = axis, transpose
        self.add_blob("weight", (inputs, outputs) if transpose else (outputs, inputs))
        if bias:
            self.add_blob("bias", (outputs,))

    def forward(self, x):
        bias = self.bias if "bias" in self.blob_names else None
        weight = self.weight.t() if self.transpose else self.weight
        return F.linear(x.flatten(self.axis), weight, bias)


def _inner_product(p, bottoms, ctx):
    q = p.inner_product_param
    (shape,) = _bottoms(bottoms, 1, ctx)
    if not q.HasField("num_output") or q.num_output == 0:
        raise NetDissectError(f"{ctx}: inner_product_param needs num_output")
    axis = canonical_axis(q.axis, len(shape), "axis", ctx)
    return InnerProduct(q.num_output, math.prod(shape[axis:]), axis, q.transpose, q.bias_term)


# -- pooling --------------------------------------------------------------------------------------------
class Pooling(CaffeLayer):
    """MAX, AVE or STOCHASTIC pooling with Caffe's output size and AVE divisor.

    Output size per axis: ceil((in + 2·pad − k) / s) + 1 (floor with ``round_mode: FLOOR``), minus one
    when pad > 0 and the last window would start at or past in + pad. MAX ignores the padding; AVE
    divides by the window clipped to [−pad, in + pad). STOCHASTIC at test time is Caffe's GPU rule:
    Σx² / Σx over the window (0 where Σx = 0), windows from 0 without padding."""

    def __init__(self, method: str, kernel, stride, pad, global_pooling: bool, ceil: bool, ctx: str):
        super().__init__()
        self.method, self.kernel, self.stride, self.pad = method, kernel, stride, pad
        self.global_pooling, self.ceil, self.ctx = global_pooling, ceil, ctx

    def output_size(self, size: int, axis: int) -> int:
        k, s, p = self.kernel[axis], self.stride[axis], self.pad[axis]
        if size + 2 * p < k:
            raise NetDissectError(f"{self.ctx}: an input of {size} pixels (pad {p}) is smaller than the window {k}")
        rounded = math.ceil if self.ceil else math.floor
        out = int(rounded((size + 2 * p - k) / s)) + 1
        if p > 0 and (out - 1) * s >= size + p:
            out -= 1
        if (out - 1) * s >= size + p:
            raise NetDissectError(
                f"{self.ctx}: for an input of {size} pixels the last pooling window would lie outside the input "
                f"(Caffe's output there is undefined); use an input size where stride {s} windows of {k} fit"
            )
        return out

    def _torch_size(self, size: int, axis: int) -> int:
        """Output size of torch's pooling with the same window, padding and rounding."""
        k, s, p = self.kernel[axis], self.stride[axis], self.pad[axis]
        if not self.ceil:
            return (size + 2 * p - k) // s + 1
        out = (size + 2 * p - k + s - 1) // s + 1
        return out - 1 if (out - 1) * s >= size + p else out

    def forward(self, x):
        if self.global_pooling:
            return x.amax(dim=(2, 3), keepdim=True) if self.method == "MAX" else x.mean(dim=(2, 3), keepdim=True)
        h, w = x.shape[2:]
        out = (self.output_size(h, 0), self.output_size(w, 1))
        if self.method == "STOCHASTIC":
            return self._stochastic(x, out)
        same = out == (self._torch_size(h, 0), self._torch_size(w, 1))
        if same and all(2 * p <= k for k, p in zip(self.kernel, self.pad)):  # torch: same windows and divisors
            if self.method == "MAX":
                return F.max_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil)
            return F.avg_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil, count_include_pad=True)
        return self._padded(x, out)

    def _extent(self, size: int, out: int, axis: int) -> int:
        """Padding after the input so that ``out`` windows fit (may be negative: rows to drop)."""
        return (out - 1) * self.stride[axis] + self.kernel[axis] - size - self.pad[axis]

    def _padded(self, x, out):
        (h, w), (ph, pw) = x.shape[2:], self.pad
        after_h, after_w = self._extent(h, out[0], 0), self._extent(w, out[1], 1)
        if self.method == "MAX":
            padded = F.pad(x, (pw, after_w, ph, after_h), value=-math.inf)
            return F.max_pool2d(padded, self.kernel, self.stride)
        sums = F.avg_pool2d(F.pad(x, (pw, after_w, ph, after_h)), self.kernel, self.stride, divisor_override=1)
        return sums / (self._counts(h, out[0], 0, x)[:, None] * self._counts(w, out[1], 1, x)[None, :])

    def _counts(self, size: int, out: int, axis: int, x) -> torch.Tensor:
        """AVE divisor per output position of one axis: the window clipped to [−pad, size + pad)."""
        k, s, p = self.kernel[axis], self.stride[axis], self.pad[axis]
        start = torch.arange(out, device=x.device, dtype=x.dtype) * s - p
        return torch.clamp(start + k, max=size + p) - start

    def _stochastic(self, x, out):
        (h, w), (kh, kw), (sh, sw) = x.shape[2:], self.kernel, self.stride
        right, bottom = max(0, (out[1] - 1) * sw + kw - w), max(0, (out[0] - 1) * sh + kh - h)
        padded = F.pad(x, (0, right, 0, bottom))[:, :, : (out[0] - 1) * sh + kh, : (out[1] - 1) * sw + kw]
        total = F.avg_pool2d(padded, self.kernel, self.stride, divisor_override=1)
        squares = F.avg_pool2d(padded * padded, self.kernel, self.stride, divisor_override=1)
        return torch.where(total > 0, squares / torch.where(total > 0, total, 1), 0)


def _pooling(p, bottoms, ctx):
    q = p.pooling_param
    (shape,) = _bottoms(bottoms, 1, ctx)
    if len(shape) != 4:
        raise NetDissectError(f"{ctx}: pooling needs a 4-axis bottom blob, got shape {shape}")
    method = type(q).PoolMethod.Name(q.pool)
    if q.global_pooling:
        if q.HasField("kernel_size") or q.HasField("kernel_h") or q.HasField("kernel_w"):
            raise NetDissectError(f"{ctx}: global_pooling takes no kernel size")
        if method == "STOCHASTIC":
            raise NetDissectError(f"{ctx}: global STOCHASTIC pooling is not supported")
        return Pooling(method, (0, 0), (1, 1), (0, 0), True, True, ctx)
    kernel = _pair([q.kernel_size] if q.HasField("kernel_size") else [], _opt(q, "kernel_h"), _opt(q, "kernel_w"), 0, "kernel_size", ctx)  # fmt: skip
    if min(kernel) < 1:
        raise NetDissectError(f"{ctx}: pooling_param needs kernel_size (or kernel_h and kernel_w), or global_pooling")
    pad = _pair([q.pad] if q.HasField("pad") else [], _opt(q, "pad_h"), _opt(q, "pad_w"), 0, "pad", ctx)
    stride = _pair([q.stride] if q.HasField("stride") else [], _opt(q, "stride_h"), _opt(q, "stride_w"), 1, "stride", ctx)  # fmt: skip
    if any(pd >= k for pd, k in zip(pad, kernel)):
        raise NetDissectError(f"{ctx}: pad {pad} must be smaller than the kernel {kernel} (as Caffe requires)")
    ceil = type(q).RoundMode.Name(q.round_mode) == "CEIL"
    return Pooling(method, kernel, stride, pad, False, ceil, ctx)


# -- normalisation --------------------------------------------------------------------------------------
class LRN(CaffeLayer):
    """ACROSS_CHANNELS: x / (k + alpha/n · Σ x² over n channels)^beta; WITHIN_CHANNEL: x / (1 + alpha/n² ·
    Σ x² over an n×n window)^beta (Caffe's within-channel form has no k)."""

    def __init__(self, size: int, alpha: float, beta: float, k: float, across: bool):
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.across = size, alpha, beta, k, across

    def forward(self, x):
        if self.across:
            return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
        pad = (self.size - 1) // 2
        mean = F.avg_pool2d(x * x, self.size, 1, pad, count_include_pad=True)
        return x * (1 + self.alpha * mean).pow(-self.beta)


def _lrn(p, bottoms, ctx):
    q = p.lrn_param
    (shape,) = _bottoms(bottoms, 1, ctx)
    if q.local_size % 2 == 0:
        raise NetDissectError(f"{ctx}: local_size {q.local_size} must be odd (as Caffe requires)")
    if len(shape) != 4:
        raise NetDissectError(f"{ctx}: LRN needs a 4-axis bottom blob, got shape {shape}")
    across = type(q).NormRegion.Name(q.norm_region) == "ACROSS_CHANNELS"
    return LRN(q.local_size, q.alpha, q.beta, q.k, across)


class BatchNorm(CaffeLayer):
    """(x − mean/s) / sqrt(variance/s + eps) per channel, s the stored scale factor (s = 0: factor 0)."""

    def __init__(self, channels: int, eps: float, ndim: int):
        super().__init__()
        self.eps, self.ndim = eps, ndim
        self.add_blob("mean", (channels,))
        self.add_blob("variance", (channels,))
        self.add_blob("scale_factor", (1,))

    def forward(self, x):
        s = self.scale_factor[0]
        factor = torch.where(s == 0, torch.zeros_like(s), 1 / torch.where(s == 0, torch.ones_like(s), s))
        scale = torch.rsqrt(self.variance * factor + self.eps)
        shift = -self.mean * factor * scale
        view = (1, -1) + (1,) * (self.ndim - 2)
        return x * scale.view(view) + shift.view(view)


def _batch_norm(p, bottoms, ctx):
    q = p.batch_norm_param
    (shape,) = _bottoms(bottoms, 1, ctx)
    if q.HasField("use_global_stats") and not q.use_global_stats:
        raise NetDissectError(
            f"{ctx}: use_global_stats is false, so Caffe would normalise every batch by its own statistics; a "
            f"dissection needs a fixed network: remove the line (Caffe's test-time default is true)"
        )
    if len(shape) < 2:
        raise NetDissectError(f"{ctx}: BatchNorm needs a bottom blob with a channel axis, got shape {shape}")
    return BatchNorm(shape[1], q.eps, len(shape))


class Affine(CaffeLayer):
    """Scale (x · a, plus b with ``bias_term``) and Bias (x + b): a and b have the shape of the bottom's
    axes [axis, axis + num_axes) and come from blobs, or from a second bottom."""

    def __init__(self, kind: str, shape: Shape, axis: int, ndim: int, bias: bool, second_bottom: bool):
        super().__init__()
        self.kind, self.second_bottom, self.axis, self.ndim = kind, second_bottom, axis, ndim
        if kind == "Scale" and not second_bottom:
            self.add_blob("scale", shape)
        if (kind == "Bias" and not second_bottom) or (kind == "Scale" and bias):
            self.add_blob("bias", shape)

    def _view(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` (the shape of axes [axis, axis + k) of the bottom) broadcastable against it."""
        return values.reshape((1,) * self.axis + tuple(values.shape) + (1,) * (self.ndim - self.axis - values.dim()))

    def forward(self, x, other=None):
        if self.kind == "Bias":
            return x + self._view(other if self.second_bottom else self.bias)
        y = x * self._view(other if self.second_bottom else self.scale)
        return y + self._view(self.bias) if "bias" in self.blob_names else y


def _affine(p, bottoms, ctx):
    q = p.scale_param if p.type == "Scale" else p.bias_param
    if len(bottoms) not in (1, 2):
        raise NetDissectError(f"{ctx}: expected 1 or 2 bottom blobs, got {len(bottoms)}")
    shape = bottoms[0]
    if len(bottoms) == 2:  # the second bottom's shape gives the axes, as in Caffe
        axis = canonical_axis(q.axis, len(shape), "axis", ctx)
        params = bottoms[1]
    else:
        axis = canonical_axis(q.axis, len(shape), "axis", ctx) if shape else 0
        num_axes = len(shape) - axis if q.num_axes == -1 else q.num_axes
        if num_axes < 0 or axis + num_axes > len(shape):
            raise NetDissectError(f"{ctx}: num_axes {q.num_axes} does not fit a bottom of shape {shape}")
        params = shape[axis : axis + num_axes]
    if tuple(shape[axis : axis + len(params)]) != tuple(params):
        raise NetDissectError(f"{ctx}: the second bottom's shape {params} does not match {shape} from axis {axis}")
    bias = p.type == "Scale" and q.bias_term
    return Affine(p.type, tuple(params), axis, len(shape), bias, len(bottoms) == 2)


# -- element-wise -----------------------------------------------------------------------------------------
class ReLU(CaffeLayer):
    def __init__(self, negative_slope: float):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return F.relu(x) if self.negative_slope == 0 else F.leaky_relu(x, self.negative_slope)


class Power(CaffeLayer):
    """(shift + scale·x)^power."""

    def __init__(self, power: float, scale: float, shift: float):
        super().__init__()
        self.power, self.scale, self.shift = power, scale, shift

    def forward(self, x):
        y = x * self.scale + self.shift
        return y if self.power == 1 else y.pow(self.power)


class Softmax(CaffeLayer):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        return torch.softmax(x, dim=self.axis)


class Function(CaffeLayer):
    """A parameter-free element-wise layer: Sigmoid, TanH, AbsVal, Dropout (the identity at test time)."""

    FUNCTIONS = {"Sigmoid": torch.sigmoid, "TanH": torch.tanh, "AbsVal": torch.abs, "Dropout": lambda x: x}

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        return self.FUNCTIONS[self.kind](x)


def _relu(p, bottoms, ctx):
    _bottoms(bottoms, 1, ctx)
    return ReLU(p.relu_param.negative_slope)


def _power(p, bottoms, ctx):
    _bottoms(bottoms, 1, ctx)
    return Power(p.power_param.power, p.power_param.scale, p.power_param.shift)


def _function(p, bottoms, ctx):
    _bottoms(bottoms, 1, ctx)
    return Function(p.type)


def _softmax(p, bottoms, ctx):
    (shape,) = _bottoms(bottoms, 1, ctx)
    return Softmax(canonical_axis(p.softmax_param.axis, len(shape), "axis", ctx))


# -- several blobs ----------------------------------------------------------------------------------------
class Eltwise(CaffeLayer):
    def __init__(self, operation: str, coeffs: Sequence[float]):
        super().__init__()
        self.operation, self.coeffs = operation, tuple(coeffs)

    def forward(self, *xs):
        if self.operation == "PROD":
            out = xs[0]
            for x in xs[1:]:
                out = out * x
            return out
        if self.operation == "MAX":
            out = xs[0]
            for x in xs[1:]:
                out = torch.maximum(out, x)
            return out
        out = xs[0] if self.coeffs[0] == 1 else xs[0] * self.coeffs[0]
        for c, x in zip(self.coeffs[1:], xs[1:]):
            out = out + x if c == 1 else out + c * x
        return out


def _eltwise(p, bottoms, ctx):
    q = p.eltwise_param
    if len(bottoms) < 2:
        raise NetDissectError(f"{ctx}: Eltwise needs at least 2 bottom blobs, got {len(bottoms)}")
    if any(s != bottoms[0] for s in bottoms):
        raise NetDissectError(f"{ctx}: Eltwise bottoms must have one shape, got {', '.join(map(str, bottoms))}")
    operation = type(q).EltwiseOp.Name(q.operation)
    coeffs = list(q.coeff) or [1.0] * len(bottoms)
    if len(coeffs) != len(bottoms):
        raise NetDissectError(f"{ctx}: {len(coeffs)} coeff values for {len(bottoms)} bottoms (one per bottom)")
    if operation != "SUM" and len(q.coeff):
        raise NetDissectError(f"{ctx}: coeff is only for operation SUM")
    return Eltwise(operation, coeffs)


class Concat(CaffeLayer):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, *xs):
        return torch.cat(xs, dim=self.axis)


def _concat(p, bottoms, ctx):
    q = p.concat_param
    if not bottoms:
        raise NetDissectError(f"{ctx}: Concat needs bottom blobs")
    ndim = len(bottoms[0])
    axis = q.concat_dim if q.HasField("concat_dim") else canonical_axis(q.axis, ndim, "axis", ctx)
    if axis >= ndim or any(len(s) != ndim or s[:axis] + s[axis + 1 :] != bottoms[0][:axis] + bottoms[0][axis + 1 :] for s in bottoms):  # fmt: skip
        raise NetDissectError(
            f"{ctx}: bottoms of shapes {', '.join(map(str, bottoms))} differ outside the concatenation axis {axis}"
        )
    return Concat(axis)


class Split(CaffeLayer):
    def __init__(self, tops: int):
        super().__init__()
        self.tops = tops

    def forward(self, x):
        return (x,) * self.tops


class Slice(CaffeLayer):
    def __init__(self, axis: int, sizes: Sequence[int]):
        super().__init__()
        self.axis, self.sizes = axis, list(sizes)

    def forward(self, x):
        return tuple(torch.split(x, self.sizes, dim=self.axis))


def _slice(p, bottoms, ctx, tops: int):
    q = p.slice_param
    (shape,) = _bottoms(bottoms, 1, ctx)
    axis = q.slice_dim if q.HasField("slice_dim") else canonical_axis(q.axis, len(shape), "axis", ctx)
    if axis >= len(shape):
        raise NetDissectError(f"{ctx}: slice axis {axis} is out of range for shape {shape}")
    n = shape[axis]
    if len(q.slice_point):
        points = list(q.slice_point)
        if len(points) != tops - 1 or points != sorted(points) or points[0] <= 0 or points[-1] >= n:
            raise NetDissectError(f"{ctx}: slice_point {points} must be {tops - 1} increasing points inside 1..{n - 1}")
        sizes = [b - a for a, b in zip([0, *points], [*points, n])]
    else:
        if n % tops:
            raise NetDissectError(f"{ctx}: axis {axis} of size {n} does not split evenly into {tops} tops")
        sizes = [n // tops] * tops
    return Slice(axis, sizes)


# -- shape --------------------------------------------------------------------------------------------------
class Flatten(CaffeLayer):
    def __init__(self, axis: int, end_axis: int):
        super().__init__()
        self.axis, self.end_axis = axis, end_axis

    def forward(self, x):
        return x.flatten(self.axis, self.end_axis)


def _flatten(p, bottoms, ctx):
    (shape,) = _bottoms(bottoms, 1, ctx)
    q = p.flatten_param
    axis = canonical_axis(q.axis, len(shape), "axis", ctx)
    end = canonical_axis(q.end_axis, len(shape), "end_axis", ctx)
    if end < axis:
        raise NetDissectError(f"{ctx}: end_axis {q.end_axis} comes before axis {q.axis}")
    return Flatten(axis, end)


class Reshape(CaffeLayer):
    """Caffe's Reshape: the axes [axis, axis + num_axes) become ``dims`` (0 = copy that axis, −1 = infer)."""

    def __init__(self, dims: Sequence[int], axis: int, num_axes: int, ctx: str):
        super().__init__()
        self.dims, self.axis, self.num_axes, self.ctx = list(dims), axis, num_axes, ctx

    def target(self, shape: Sequence[int]) -> list[int]:
        if shape[0] == 0:  # a batch of 0 (shapes only): the shape of a batch of 1, the batch axis 0 again
            out = self.target((1, *shape[1:]))
            if self.axis > 0 or (self.dims and self.dims[0] == 0):
                out[0] = 0
            return out
        end = len(shape) if self.num_axes == -1 else self.axis + self.num_axes
        dims = [shape[self.axis + i] if d == 0 else d for i, d in enumerate(self.dims)]
        out = [*shape[: self.axis], *dims, *shape[end:]]
        total = math.prod(shape)
        if -1 in out:
            known = math.prod(d for d in out if d != -1)
            if known == 0 or total % known:
                raise NetDissectError(f"{self.ctx}: cannot reshape {tuple(shape)} to {self.dims}")
            out[out.index(-1)] = total // known
        if math.prod(out) != total:
            raise NetDissectError(f"{self.ctx}: cannot reshape {tuple(shape)} ({total} values) to {tuple(out)}")
        return out

    def forward(self, x):
        return x.reshape(self.target(x.shape))


def _reshape(p, bottoms, ctx):
    (shape,) = _bottoms(bottoms, 1, ctx)
    q = p.reshape_param
    dims = list(q.shape.dim)
    if dims.count(-1) > 1 or any(d < -1 for d in dims):
        raise NetDissectError(f"{ctx}: reshape dims {dims}: at most one -1 and no other negative value")
    axis = canonical_axis(q.axis, len(shape) + 1, "axis", ctx) if q.axis < 0 else q.axis
    if axis > len(shape) or (q.num_axes != -1 and (q.num_axes < 0 or axis + q.num_axes > len(shape))):
        raise NetDissectError(f"{ctx}: axis {q.axis} / num_axes {q.num_axes} do not fit a bottom of shape {shape}")
    if any(d == 0 and axis + i >= len(shape) for i, d in enumerate(dims)):
        raise NetDissectError(f"{ctx}: dim 0 (copy) refers to an axis the bottom {shape} lacks")
    layer = Reshape(dims, axis, q.num_axes, ctx)
    layer.target(shape)  # checks the sizes at the declared input
    return layer


# -- the table ------------------------------------------------------------------------------------------------
def _bottoms(bottoms: list[Shape], n: int, ctx: str) -> list[Shape]:
    if len(bottoms) != n:
        raise NetDissectError(f"{ctx}: expected {n} bottom blob{'s' if n > 1 else ''}, got {len(bottoms)}")
    return bottoms


_BUILDERS: dict[str, Callable] = {
    "Convolution": _convolution,
    "InnerProduct": _inner_product,
    "Pooling": _pooling,
    "LRN": _lrn,
    "BatchNorm": _batch_norm,
    "Scale": _affine,
    "Bias": _affine,
    "ReLU": _relu,
    "Sigmoid": _function,
    "TanH": _function,
    "AbsVal": _function,
    "Power": _power,
    "Dropout": _function,
    "Softmax": _softmax,
    "Eltwise": _eltwise,
    "Concat": _concat,
    "Flatten": _flatten,
    "Reshape": _reshape,
}
SUPPORTED_TYPES = ("Input", *_BUILDERS, "Split", "Slice")


def build_layer(p, bottoms: list[Shape], tops: int, ctx: str) -> CaffeLayer:
    """The module of layer ``p`` (a LayerParameter of a supported type) for bottoms of these shapes."""
    if p.type == "Split":
        _bottoms(bottoms, 1, ctx)
        return Split(tops)
    if p.type == "Slice":
        return _slice(p, bottoms, ctx, tops)
    return _BUILDERS[p.type](p, bottoms, ctx)
