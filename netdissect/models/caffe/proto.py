"""Caffe's messages without Caffe: the subset of ``caffe.proto`` a deployed vision network uses, built
in code with the ``protobuf`` runtime, and the readers of both files (docs/caffe-models.md §1, §4).

* :func:`read_prototxt`: a ``deploy.prototxt`` (protobuf text format) -> ``NetParameter``, with the
  file line of every layer. Syntax errors name ``file:line:column``. Fields outside the declared
  subset are skipped when they belong to a net or a layer (data, loss and training parameters: each
  is blanked out of the text and the text parsed again); inside the parameters of a layer
  (``convolution_param { ... }``, declared in full) an unknown field is an error, since its meaning
  would be lost.
* :func:`read_caffemodel`: a ``.caffemodel`` (binary) -> each layer's blobs as numpy arrays. The
  large float arrays are read straight from the file into their arrays: the walk over the binary
  format (:class:`_Wire`) only locates them, and every other byte is parsed by the protobuf
  messages. Memory stays at one copy of the weights.
* :func:`upgrade_v1`: a legacy ``V1LayerParameter`` (enum ``type``) as a current ``LayerParameter``,
  so the rest of the converter reads one generation.
* :func:`encode_caffemodel`: the inverse of :func:`read_caffemodel` (tests and benchmarks write
  caffemodels with it; the float arrays are written as packed fields, the rest by protobuf).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import DecodeError

from netdissect.errors import NetDissectError

# -- the message subset (field numbers, types and defaults of BVLC caffe.proto; docs/caffe-models.md §5)
# A field: (name, number, type, label, default). Types in lower case are scalars; others name a
# message or an enum (nested enums as Message.Enum). label "r" = repeated, "rp" = repeated packed.
_ENGINE = ("Engine", ("DEFAULT", "CAFFE", "CUDNN"))
_ENUMS: dict[str, list[tuple[str, Sequence[str] | dict[str, int]]]] = {
    "": [("Phase", ("TRAIN", "TEST"))],
    "FillerParameter": [("VarianceNorm", ("FAN_IN", "FAN_OUT", "AVERAGE"))],
    "ConvolutionParameter": [_ENGINE],
    "PoolingParameter": [("PoolMethod", ("MAX", "AVE", "STOCHASTIC")), _ENGINE, ("RoundMode", ("CEIL", "FLOOR"))],
    "LRNParameter": [("NormRegion", ("ACROSS_CHANNELS", "WITHIN_CHANNEL")), _ENGINE],
    "EltwiseParameter": [("EltwiseOp", ("PROD", "SUM", "MAX"))],
    "ReLUParameter": [_ENGINE],
    "SoftmaxParameter": [_ENGINE],
    "V1LayerParameter": [
        (
            "LayerType",
            dict(
                NONE=0,
                ABSVAL=35,
                ACCURACY=1,
                ARGMAX=30,
                BNLL=2,
                CONCAT=3,
                CONTRASTIVE_LOSS=37,
                CONVOLUTION=4,
                DATA=5,
                DECONVOLUTION=39,
                DROPOUT=6,
                DUMMY_DATA=32,
                EUCLIDEAN_LOSS=7,
                ELTWISE=25,
                EXP=38,
                FLATTEN=8,
                HDF5_DATA=9,
                HDF5_OUTPUT=10,
                HINGE_LOSS=28,
                IM2COL=11,
                IMAGE_DATA=12,
                INFOGAIN_LOSS=13,
                INNER_PRODUCT=14,
                LRN=15,
                MEMORY_DATA=29,
                MULTINOMIAL_LOGISTIC_LOSS=16,
                MVN=34,
                POOLING=17,
                POWER=26,
                RELU=18,
                SIGMOID=19,
                SIGMOID_CROSS_ENTROPY_LOSS=27,
                SILENCE=36,
                SOFTMAX=20,
                SOFTMAX_LOSS=21,
                SPLIT=22,
                SLICE=33,
                TANH=23,
                WINDOW_DATA=24,
                THRESHOLD=31,
            ),  # fmt: skip
        )
    ],
}

_PARAMS_CURRENT = {  # LayerParameter field -> (number, message)
    "batch_norm_param": (139, "BatchNormParameter"),
    "bias_param": (141, "BiasParameter"),
    "concat_param": (104, "ConcatParameter"),
    "convolution_param": (106, "ConvolutionParameter"),
    "dropout_param": (108, "DropoutParameter"),
    "eltwise_param": (110, "EltwiseParameter"),
    "flatten_param": (135, "FlattenParameter"),
    "inner_product_param": (117, "InnerProductParameter"),
    "input_param": (143, "InputParameter"),
    "lrn_param": (118, "LRNParameter"),
    "pooling_param": (121, "PoolingParameter"),
    "power_param": (122, "PowerParameter"),
    "relu_param": (123, "ReLUParameter"),
    "reshape_param": (133, "ReshapeParameter"),
    "scale_param": (142, "ScaleParameter"),
    "softmax_param": (125, "SoftmaxParameter"),
    "slice_param": (126, "SliceParameter"),
}
_PARAMS_V1 = {
    "concat_param": 9,
    "convolution_param": 10,
    "dropout_param": 12,
    "eltwise_param": 24,
    "inner_product_param": 17,
    "lrn_param": 18,
    "pooling_param": 19,
    "power_param": 21,
    "relu_param": 30,
    "softmax_param": 39,
    "slice_param": 31,
}

_MESSAGES: dict[str, list[tuple]] = {
    "BlobShape": [("dim", 1, "int64", "rp", None)],
    "BlobProto": [
        ("shape", 7, "BlobShape", "", None),
        ("data", 5, "float", "rp", None),
        ("diff", 6, "float", "rp", None),
        ("double_data", 8, "double", "rp", None),
        ("double_diff", 9, "double", "rp", None),
        ("num", 1, "int32", "", "0"),
        ("channels", 2, "int32", "", "0"),
        ("height", 3, "int32", "", "0"),
        ("width", 4, "int32", "", "0"),
    ],
    "NetState": [("phase", 1, "Phase", "", "TEST"), ("level", 2, "int32", "", "0"), ("stage", 3, "string", "r", None)],
    "NetStateRule": [
        ("phase", 1, "Phase", "", None),
        ("min_level", 2, "int32", "", None),
        ("max_level", 3, "int32", "", None),
        ("stage", 4, "string", "r", None),
        ("not_stage", 5, "string", "r", None),
    ],
    "ParamSpec": [
        ("name", 1, "string", "", None),
        ("share_mode", 2, "int32", "", None),
        ("lr_mult", 3, "float", "", "1"),
        ("decay_mult", 4, "float", "", "1"),
    ],
    "FillerParameter": [
        ("type", 1, "string", "", "constant"),
        ("value", 2, "float", "", "0"),
        ("min", 3, "float", "", "0"),
        ("max", 4, "float", "", "1"),
        ("mean", 5, "float", "", "0"),
        ("std", 6, "float", "", "1"),
        ("sparse", 7, "int32", "", "-1"),
        ("variance_norm", 8, "FillerParameter.VarianceNorm", "", "FAN_IN"),
    ],
    "InputParameter": [("shape", 1, "BlobShape", "r", None)],
    "ConvolutionParameter": [
        ("num_output", 1, "uint32", "", None),
        ("bias_term", 2, "bool", "", "true"),
        ("pad", 3, "uint32", "r", None),
        ("kernel_size", 4, "uint32", "r", None),
        ("stride", 6, "uint32", "r", None),
        ("dilation", 18, "uint32", "r", None),
        ("pad_h", 9, "uint32", "", "0"),
        ("pad_w", 10, "uint32", "", "0"),
        ("kernel_h", 11, "uint32", "", None),
        ("kernel_w", 12, "uint32", "", None),
        ("stride_h", 13, "uint32", "", None),
        ("stride_w", 14, "uint32", "", None),
        ("group", 5, "uint32", "", "1"),
        ("weight_filler", 7, "FillerParameter", "", None),
        ("bias_filler", 8, "FillerParameter", "", None),
        ("engine", 15, "ConvolutionParameter.Engine", "", "DEFAULT"),
        ("axis", 16, "int32", "", "1"),
        ("force_nd_im2col", 17, "bool", "", "false"),
    ],
    "PoolingParameter": [
        ("pool", 1, "PoolingParameter.PoolMethod", "", "MAX"),
        ("pad", 4, "uint32", "", "0"),
        ("pad_h", 9, "uint32", "", "0"),
        ("pad_w", 10, "uint32", "", "0"),
        ("kernel_size", 2, "uint32", "", None),
        ("kernel_h", 5, "uint32", "", None),
        ("kernel_w", 6, "uint32", "", None),
        ("stride", 3, "uint32", "", "1"),
        ("stride_h", 7, "uint32", "", None),
        ("stride_w", 8, "uint32", "", None),
        ("engine", 11, "PoolingParameter.Engine", "", "DEFAULT"),
        ("global_pooling", 12, "bool", "", "false"),
        ("round_mode", 13, "PoolingParameter.RoundMode", "", "CEIL"),
    ],
    "LRNParameter": [
        ("local_size", 1, "uint32", "", "5"),
        ("alpha", 2, "float", "", "1"),
        ("beta", 3, "float", "", "0.75"),
        ("norm_region", 4, "LRNParameter.NormRegion", "", "ACROSS_CHANNELS"),
        ("k", 5, "float", "", "1"),
        ("engine", 6, "LRNParameter.Engine", "", "DEFAULT"),
    ],
    "BatchNormParameter": [
        ("use_global_stats", 1, "bool", "", None),
        ("moving_average_fraction", 2, "float", "", "0.999"),
        ("eps", 3, "float", "", "1e-5"),
    ],
    "ScaleParameter": [
        ("axis", 1, "int32", "", "1"),
        ("num_axes", 2, "int32", "", "1"),
        ("filler", 3, "FillerParameter", "", None),
        ("bias_term", 4, "bool", "", "false"),
        ("bias_filler", 5, "FillerParameter", "", None),
    ],
    "BiasParameter": [
        ("axis", 1, "int32", "", "1"),
        ("num_axes", 2, "int32", "", "1"),
        ("filler", 3, "FillerParameter", "", None),
    ],
    "EltwiseParameter": [
        ("operation", 1, "EltwiseParameter.EltwiseOp", "", "SUM"),
        ("coeff", 2, "float", "r", None),
        ("stable_prod_grad", 3, "bool", "", "true"),
    ],
    "ConcatParameter": [("axis", 2, "int32", "", "1"), ("concat_dim", 1, "uint32", "", "1")],
    "InnerProductParameter": [
        ("num_output", 1, "uint32", "", None),
        ("bias_term", 2, "bool", "", "true"),
        ("weight_filler", 3, "FillerParameter", "", None),
        ("bias_filler", 4, "FillerParameter", "", None),
        ("axis", 5, "int32", "", "1"),
        ("transpose", 6, "bool", "", "false"),
    ],
    "ReLUParameter": [("negative_slope", 1, "float", "", "0"), ("engine", 2, "ReLUParameter.Engine", "", "DEFAULT")],
    "PowerParameter": [("power", 1, "float", "", "1"), ("scale", 2, "float", "", "1"), ("shift", 3, "float", "", "0")],
    "SoftmaxParameter": [("engine", 1, "SoftmaxParameter.Engine", "", "DEFAULT"), ("axis", 2, "int32", "", "1")],
    "FlattenParameter": [("axis", 1, "int32", "", "1"), ("end_axis", 2, "int32", "", "-1")],
    "ReshapeParameter": [
        ("shape", 1, "BlobShape", "", None),
        ("axis", 2, "int32", "", "0"),
        ("num_axes", 3, "int32", "", "-1"),
    ],
    "DropoutParameter": [("dropout_ratio", 1, "float", "", "0.5")],
    "SliceParameter": [
        ("axis", 3, "int32", "", "1"),
        ("slice_point", 2, "uint32", "r", None),
        ("slice_dim", 1, "uint32", "", "1"),
    ],
    "LayerParameter": [
        ("name", 1, "string", "", None),
        ("type", 2, "string", "", None),
        ("bottom", 3, "string", "r", None),
        ("top", 4, "string", "r", None),
        ("phase", 10, "Phase", "", None),
        ("loss_weight", 5, "float", "r", None),
        ("param", 6, "ParamSpec", "r", None),
        ("blobs", 7, "BlobProto", "r", None),
        ("propagate_down", 11, "bool", "r", None),
        ("include", 8, "NetStateRule", "r", None),
        ("exclude", 9, "NetStateRule", "r", None),
        *((name, number, message, "", None) for name, (number, message) in _PARAMS_CURRENT.items()),
    ],
    "V1LayerParameter": [
        ("bottom", 2, "string", "r", None),
        ("top", 3, "string", "r", None),
        ("name", 4, "string", "", None),
        ("include", 32, "NetStateRule", "r", None),
        ("exclude", 33, "NetStateRule", "r", None),
        ("type", 5, "V1LayerParameter.LayerType", "", None),
        ("blobs", 6, "BlobProto", "r", None),
        ("blobs_lr", 7, "float", "r", None),
        ("weight_decay", 8, "float", "r", None),
        *((name, number, _PARAMS_CURRENT[name][1], "", None) for name, number in _PARAMS_V1.items()),
    ],
    "NetParameter": [
        ("name", 1, "string", "", None),
        ("input", 3, "string", "r", None),
        ("input_shape", 8, "BlobShape", "r", None),
        ("input_dim", 4, "int32", "r", None),
        ("force_backward", 5, "bool", "", "false"),
        ("state", 6, "NetState", "", None),
        ("debug_info", 7, "bool", "", "false"),
        ("layer", 100, "LayerParameter", "r", None),
        ("layers", 2, "V1LayerParameter", "r", None),
    ],
}

_SCALARS = {
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "float": descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
    "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "uint32": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The subset above as a proto2 file ``netdissect_caffe.proto``, package ``caffe``."""
    fdp = descriptor_pb2.FileDescriptorProto(name="netdissect_caffe.proto", package="caffe", syntax="proto2")
    enum_names = {f"{scope}.{name}".lstrip(".") for scope, enums in _ENUMS.items() for name, _ in enums}

    def add_enums(target, scope: str) -> None:
        for name, values in _ENUMS.get(scope, []):
            enum = target.enum_type.add(name=name)
            numbered = values.items() if isinstance(values, dict) else ((v, i) for i, v in enumerate(values))
            for value_name, number in numbered:
                enum.value.add(name=value_name, number=number)

    add_enums(fdp, "")
    for message_name, fields in _MESSAGES.items():
        message = fdp.message_type.add(name=message_name)
        add_enums(message, message_name)
        for name, number, kind, label, default in fields:
            field = message.field.add(name=name, number=number)
            field.label = (
                descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
                if label.startswith("r")
                else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
            )
            if label == "rp":
                field.options.packed = True
            if kind in _SCALARS:
                field.type = _SCALARS[kind]
            else:
                field.type = (
                    descriptor_pb2.FieldDescriptorProto.TYPE_ENUM
                    if kind in enum_names
                    else descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
                )
                field.type_name = f".caffe.{kind}"
            if default is not None:
                field.default_value = default
    return fdp


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())


def _message(name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"caffe.{name}"))


NetParameter = _message("NetParameter")
LayerParameter = _message("LayerParameter")
V1LayerParameter = _message("V1LayerParameter")
BlobProto = _message("BlobProto")
BlobShape = _message("BlobShape")

# V1 enum type -> the current type string (Caffe's own upgrade table)
V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL", "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DATA": "Data",
    "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}  # fmt: skip


def upgrade_v1(layer) -> LayerParameter:
    """A ``V1LayerParameter`` as the ``LayerParameter`` it means (name, type string, bottoms, tops,
    rules, blobs and the layer parameters, which are the same messages in both generations)."""
    enum_name = V1LayerParameter.LayerType.Name(layer.type)
    out = LayerParameter(name=layer.name, type=V1_TYPES.get(enum_name, enum_name))
    out.bottom.extend(layer.bottom)
    out.top.extend(layer.top)
    out.include.extend(layer.include)
    out.exclude.extend(layer.exclude)
    out.blobs.extend(layer.blobs)
    for name in _PARAMS_V1:
        if layer.HasField(name):
            getattr(out, name).CopyFrom(getattr(layer, name))
    return out


# -- prototxt ----------------------------------------------------------------------------------------
_LENIENT_SCOPES = {"caffe.NetParameter", "caffe.LayerParameter", "caffe.V1LayerParameter"}
_UNKNOWN_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')


@dataclass
class Prototxt:
    """A parsed deploy.prototxt: the message, its layers in the current generation, and where each
    layer starts in the file (1-based line; None when not found)."""

    path: Path
    net: NetParameter
    layers: list[LayerParameter]
    lines: list[int | None]
    v1: bool


def read_prototxt(path: str | Path) -> Prototxt:
    """Parse a ``deploy.prototxt`` (see the module docstring for how unknown fields are treated)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NetDissectError(f"--model {path}: file not found (a Caffe deploy.prototxt was expected)") from None
    except UnicodeDecodeError:
        raise NetDissectError(
            f"--model {path}: not a text file; a Caffe model SPEC is the deploy.prototxt (text), and the "
            f"binary .caffemodel goes to --weights"
        ) from None
    work = text
    while True:
        net = NetParameter()
        try:
            text_format.Parse(work, net)
            break
        except text_format.ParseError as err:
            unknown = _UNKNOWN_FIELD.search(str(err))
            if unknown is None or unknown.group(1) not in _LENIENT_SCOPES:
                raise NetDissectError(_parse_error(path, err, unknown)) from None
            # an unknown net- or layer-level field (data, loss, training): blanked out, then parsed again
            work = _without_field(work, err.GetLine(), err.GetColumn())
    if len(net.layer) and len(net.layers):
        raise NetDissectError(
            f"{path}: has both `layer` (current) and `layers` (legacy V1) entries; a net is written in one generation"
        )
    v1 = bool(len(net.layers))
    layers = [upgrade_v1(layer) for layer in net.layers] if v1 else list(net.layer)
    lines = _layer_lines(text, "layers" if v1 else "layer")
    lines = lines if len(lines) == len(layers) else [None] * len(layers)
    return Prototxt(path, net, layers, lines, v1)


def _parse_error(path: Path, err: text_format.ParseError, unknown: re.Match | None) -> str:
    where = f"{path}:{err.GetLine()}:{err.GetColumn()}" if err.GetLine() else str(path)
    message = re.sub(r"^\d+:\d+ : ", "", str(err))
    message = re.sub(r"^'.*?': (?=\S)", "", message)  # protobuf repeats the line of the error
    hint = "; fix the syntax (protobuf text format: `field: value`, `message { ... }`)"
    if unknown is not None:
        hint = (
            f"; {unknown.group(1)} of BVLC Caffe has no such field, so its meaning (a Caffe fork's?) is not "
            f"known to this converter: remove it if Caffe's own behaviour is meant"
        )
    return f"{where}: {message}{hint}"


_TOKEN = re.compile(r'#[^\n]*|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|[{}<>\[\]:,;]|[^\s{}<>\[\]:,;"\'#]+|\s+')


def _without_field(text: str, line: int, column: int) -> str:
    """``text`` with the field whose name starts at ``line``:``column`` (1-based) and its value (a
    scalar, a ``[...]`` list or a ``{...}`` message) replaced by spaces; newlines stay, so every later
    line and column keeps its place."""
    start = sum(len(row) + 1 for row in text.split("\n")[: line - 1]) + column - 1
    tokens = (m for m in _TOKEN.finditer(text, start) if not (m.group().isspace() or m.group().startswith("#")))
    end = next(tokens).end()  # the field name
    value = next(tokens, None)
    if value is not None and value.group() == ":":
        value = next(tokens, None)
    if value is not None:
        end, close = value.end(), {"{": "}", "<": ">", "[": "]"}.get(value.group())
        depth = 1 if close else 0
        while depth:
            token = next(tokens, None)
            if token is None:
                break
            depth += token.group() in "{<[" and len(token.group()) == 1
            depth -= token.group() in "}>]" and len(token.group()) == 1
            end = token.end()
    return text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]


def _layer_lines(text: str, keyword: str) -> list[int]:
    """1-based lines of the top-level ``layer {`` (or ``layers {``) entries, in order, skipping
    comments and strings."""
    lines, depth = [], 0
    token = re.compile(r'#[^\n]*|"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|[{}<>]|[A-Za-z_]\w*|\n|.', re.S)
    line, pending = 1, None
    for match in token.finditer(text):
        tok = match.group()
        if tok == "\n":
            line += 1
        elif tok in "{<":
            if depth == 0 and pending is not None:
                lines.append(pending)
            depth += 1
            pending = None
        elif tok in "}>":
            depth -= 1
        elif tok.startswith("#") or tok.isspace() or tok == ":":
            continue
        else:
            pending = line if depth == 0 and tok == keyword else None
            line += tok.count("\n")
    return lines


# -- caffemodel --------------------------------------------------------------------------------------
@dataclass
class Blob:
    """One blob of a caffemodel: its values (float32, in the blob's shape) and whether the shape came
    from the legacy 4-D fields (num, channels, height, width) rather than ``shape``."""

    values: np.ndarray
    legacy: bool


@dataclass
class CaffeModel:
    """A parsed caffemodel: blobs by layer name (a later layer of the same name wins, as in Caffe's
    copy of trained layers), each layer's type, and whether the file is legacy V1."""

    path: Path
    blobs: dict[str, list[Blob]]
    types: dict[str, str]
    v1: bool


_WIRE_VARINT, _WIRE_64, _WIRE_LEN, _WIRE_32 = 0, 1, 2, 5


class _Wire:
    """Sequential reading of the protobuf binary format from a file: tags, varints, lengths; large
    payloads are read into numpy arrays or skipped without being held as bytes."""

    def __init__(self, f: io.BufferedReader, size: int, path: Path):
        self.f, self.size, self.path = f, size, path

    def pos(self) -> int:
        return self.f.tell()

    def fail(self, what: str) -> NetDissectError:
        return NetDissectError(
            f"--weights {self.path}: {what} at byte {self.pos()} of {self.size}; the file is truncated or not a "
            f"Caffe .caffemodel (binary NetParameter); download it again or give the right file"
        )

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self.f.read(1)
            if not byte:
                raise self.fail("the file ends inside a number")
            value |= (byte[0] & 0x7F) << shift
            if byte[0] < 0x80:
                return value
            shift += 7
            if shift > 63:
                raise self.fail("a malformed number")

    def tag(self) -> tuple[int, int]:
        tag = self.varint()
        if tag >> 3 == 0 or tag & 7 not in (_WIRE_VARINT, _WIRE_64, _WIRE_LEN, _WIRE_32):
            raise self.fail(f"an invalid field tag {tag}")
        return tag >> 3, tag & 7

    def length(self, end: int) -> int:
        n = self.varint()
        if self.pos() + n > end:
            raise self.fail(f"a field of {n} bytes running past its end (byte {end})")
        return n

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise self.fail(f"the file ends inside a field of {n} bytes")
        return data

    def read_into(self, array: np.ndarray) -> None:
        view = memoryview(array).cast("B")
        done = 0
        while done < len(view):
            got = self.f.readinto(view[done:])
            if not got:
                raise self.fail(f"the file ends inside an array of {len(view)} bytes")
            done += got

    def field_bytes(self, number: int, wire: int, end: int) -> bytes:
        """The raw encoding of the field whose tag was just read (tag included)."""
        tag = _encode_varint(number << 3 | wire)
        if wire == _WIRE_VARINT:
            return tag + _encode_varint(self.varint())
        if wire == _WIRE_64:
            return tag + self.read(8)
        if wire == _WIRE_32:
            return tag + self.read(4)
        n = self.length(end)
        return tag + _encode_varint(n) + self.read(n)

    def skip(self, wire: int, end: int) -> None:
        if wire == _WIRE_VARINT:
            self.varint()
        elif wire == _WIRE_LEN:
            self.f.seek(self.length(end), io.SEEK_CUR)
        else:
            self.f.seek(8 if wire == _WIRE_64 else 4, io.SEEK_CUR)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


_LAYER_CURRENT, _LAYER_V1 = 100, 2  # NetParameter.layer, NetParameter.layers
_BLOBS = {_LAYER_CURRENT: 7, _LAYER_V1: 6}  # LayerParameter.blobs, V1LayerParameter.blobs
_DATA, _DIFF, _DOUBLE_DATA, _DOUBLE_DIFF = 5, 6, 8, 9  # BlobProto fields


def read_caffemodel(path: str | Path) -> CaffeModel:
    """Every layer's blobs of a binary caffemodel (both generations), read with one copy of the weights."""
    path = Path(path)
    if not path.is_file():
        raise NetDissectError(f"--weights {path}: file not found (a Caffe .caffemodel was expected)")
    with open(path, "rb") as f:
        head = f.read(64)
        _refuse_other_formats(path, head)
        f.seek(0)
        wire = _Wire(f, path.stat().st_size, path)
        blobs: dict[str, list[Blob]] = {}
        types: dict[str, str] = {}
        generations = set()
        while wire.pos() < wire.size:
            number, kind = wire.tag()
            if number in _BLOBS and kind == _WIRE_LEN:
                end = wire.length(wire.size) + wire.pos()  # length first: it moves the position
                name, type_name, layer_blobs = _read_layer(wire, end, number)
                blobs[name], types[name] = layer_blobs, type_name
                generations.add(number)
            else:
                wire.skip(kind, wire.size)
    if not blobs:
        raise NetDissectError(
            f"--weights {path}: holds no layers; a Caffe .caffemodel (binary NetParameter with trained "
            f"layers) was expected"
        )
    return CaffeModel(path, blobs, types, v1=generations == {_LAYER_V1})


def _refuse_other_formats(path: Path, head: bytes) -> None:
    """Clear errors for files that are evidently something else (no NetParameter starts like these)."""
    what = None
    if head.startswith(b"PK\x03\x04"):
        what = "a zip archive (a PyTorch checkpoint?)"
    elif head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        what = "a Python pickle (a PyTorch checkpoint?)"
    elif head.startswith(b"\x89HDF"):
        what = "an HDF5 file"
    if what:
        raise NetDissectError(
            f"--weights {path}: is {what}, not a Caffe .caffemodel (binary NetParameter); give the network's "
            f".caffemodel"
        )
    text = head.strip()
    if text and all(32 <= b < 127 or b in b"\t\r\n" for b in head) and re.match(rb"#|(name|layers?|input)\b", text):
        raise NetDissectError(
            f"--weights {path}: is text (a prototxt?); --weights takes the binary .caffemodel and --model the "
            f"deploy.prototxt"
        )


def _read_layer(wire: _Wire, end: int, field: int) -> tuple[str, str, list[Blob]]:
    """One layer: its other fields parsed by protobuf, its blobs read by :func:`_read_blob`."""
    start, rest, blobs = wire.pos(), bytearray(), []
    while wire.pos() < end:
        number, kind = wire.tag()
        if number == _BLOBS[field] and kind == _WIRE_LEN:
            blob_end = wire.length(end) + wire.pos()
            blobs.append(_read_blob(wire, blob_end))
        else:
            rest += wire.field_bytes(number, kind, end)
    if wire.pos() != end:
        raise wire.fail("a layer whose fields run past its end")
    message = (LayerParameter if field == _LAYER_CURRENT else V1LayerParameter)()
    try:
        message.MergeFromString(bytes(rest))
    except DecodeError:
        raise wire.fail(f"an undecodable layer (starting at byte {start})") from None
    type_name = message.type if field == _LAYER_CURRENT else upgrade_v1(message).type
    return message.name, type_name, blobs


def _read_blob(wire: _Wire, end: int) -> Blob:
    rest, chunks = bytearray(), []
    while wire.pos() < end:
        number, kind = wire.tag()
        if number in (_DATA, _DOUBLE_DATA):
            dtype = np.dtype("<f4") if number == _DATA else np.dtype("<f8")
            if kind == _WIRE_LEN:
                n = wire.length(end)
                if n % dtype.itemsize:
                    raise wire.fail(f"a float array of {n} bytes (not a multiple of {dtype.itemsize})")
                # torch's allocator aligns to 64 bytes (numpy's to 16), as its matrix kernels prefer
                chunk = torch.empty(n // dtype.itemsize, dtype=torch.float32 if number == _DATA else torch.float64)
                chunk = chunk.numpy()
                wire.read_into(chunk)
            elif kind == (_WIRE_32 if number == _DATA else _WIRE_64):  # one unpacked value
                chunk = np.frombuffer(wire.read(dtype.itemsize), dtype=dtype)
            else:
                raise wire.fail(f"blob data with wire type {kind}")
            chunks.append(chunk)
        elif number in (_DIFF, _DOUBLE_DIFF):
            wire.skip(kind, end)  # gradients of a training snapshot: not needed
        else:
            rest += wire.field_bytes(number, kind, end)
    header = BlobProto()
    try:
        header.MergeFromString(bytes(rest))
    except DecodeError:
        raise wire.fail("an undecodable blob") from None
    values = chunks[0] if len(chunks) == 1 else np.concatenate(chunks) if chunks else np.empty(0, np.float32)
    values = values.astype(np.float32, copy=False)
    legacy = not header.HasField("shape")
    shape = tuple(header.shape.dim) if not legacy else (header.num, header.channels, header.height, header.width)
    if int(np.prod(shape, dtype=np.int64)) != values.size:
        raise wire.fail(f"a blob of shape {shape} holding {values.size} values")
    return Blob(values.reshape(shape), legacy)


def blob_values(blob) -> np.ndarray:
    """A ``BlobProto`` message's values as float32 in its shape (small blobs: mean files)."""
    legacy = not blob.HasField("shape")
    shape = tuple(blob.shape.dim) if not legacy else (blob.num, blob.channels, blob.height, blob.width)
    data = np.asarray(blob.double_data if len(blob.double_data) else blob.data, dtype=np.float32)
    if int(np.prod(shape, dtype=np.int64)) != data.size:
        raise ValueError(f"shape {shape} but {data.size} values")
    return data.reshape(shape)


def read_mean_file(path: str | Path) -> tuple[float, float, float]:
    """Per-channel means (in the file's channel order, B, G, R for Caffe) of a ``mean.binaryproto``."""
    path = Path(path)
    if not path.is_file():
        raise NetDissectError(f"--mean-file {path}: file not found (a Caffe mean.binaryproto was expected)")
    blob = BlobProto()
    try:
        blob.ParseFromString(path.read_bytes())
        values = blob_values(blob)
    except (DecodeError, ValueError) as err:
        raise NetDissectError(
            f"--mean-file {path}: not a Caffe mean.binaryproto (a BlobProto of a 3-channel mean image): {err}"
        ) from None
    image = values[0] if values.ndim == 4 and values.shape[0] == 1 else values
    if image.ndim != 3 or image.shape[0] != 3 or image.size == 0:
        raise NetDissectError(
            f"--mean-file {path}: holds a blob of shape {values.shape}; expected a 3-channel mean image "
            f"(1, 3, H, W) or (3, H, W)"
        )
    means = image.astype(np.float64).mean(axis=(1, 2))
    return float(means[0]), float(means[1]), float(means[2])


# -- writing (tests, benchmarks) ---------------------------------------------------------------------
def encode_caffemodel(
    layers: Iterable[tuple[object, Sequence[np.ndarray]]], *, legacy_shapes: bool = False, name: str = ""
) -> Iterable[bytes]:
    """The bytes of a caffemodel, in pieces: ``layers`` are (LayerParameter or V1LayerParameter without
    blobs, arrays); each array becomes a BlobProto with ``shape`` (or, with ``legacy_shapes``, the 4-D
    num/channels/height/width fields, left-padded with 1s) and its float32 values as one packed field."""
    if name:
        yield NetParameter(name=name).SerializeToString()
    for layer, arrays in layers:
        v1 = isinstance(layer, V1LayerParameter)
        body = [layer.SerializeToString()]
        for array in arrays:
            values = np.ascontiguousarray(array, dtype="<f4")
            header = BlobProto()
            if legacy_shapes:
                dims = (1,) * (4 - values.ndim) + values.shape
                header.num, header.channels, header.height, header.width = dims
            else:
                header.shape.dim.extend(values.shape)
            data = values.tobytes()
            # fields in number order, as protobuf writes them: num..width (1-4), data (5), shape (7)
            before, after = (header.SerializeToString(), b"") if legacy_shapes else (b"", header.SerializeToString())
            blob = [before, _encode_varint(_DATA << 3 | _WIRE_LEN), _encode_varint(len(data)), data, after]
            body += [_encode_varint(_BLOBS[_LAYER_V1 if v1 else _LAYER_CURRENT] << 3 | _WIRE_LEN)]
            body += [_encode_varint(sum(len(b) for b in blob)), *blob]
        yield _encode_varint((_LAYER_V1 if v1 else _LAYER_CURRENT) << 3 | _WIRE_LEN)
        yield _encode_varint(sum(len(b) for b in body))
        yield from body
