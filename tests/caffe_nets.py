"""Caffe pairs written by the tests: prototxt texts, random blobs of the right shapes, caffemodels in both
generations, OpenCV's Caffe importer as the independent implementation, and a torch twin of one net.

The caffemodels are serialised by protobuf itself (:func:`write_caffemodel`: every blob's values go
through ``BlobProto.data``), independently of the converter's own fast reader and writer;
:func:`netdissect.models.caffe.proto.encode_caffemodel` writes the full-size CaffeNet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format
from torch import nn

from netdissect.models.caffe import proto

# Every layer type the converter supports, in the current generation, with an Input layer; in-place
# chains (relu1, bn2 -> scale2 -> relu2, drop), a Split branch, merges (Eltwise x3, Concat).
CURRENT_NET = """
name: "every_type"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 29 dim: 27 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 }
  convolution_param { num_output: 8 kernel_size: 5 stride: 2 pad: 1 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 3 alpha: 0.3 beta: 0.75 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 8 kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 1 dilation: 2 group: 2 } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" batch_norm_param { eps: 0.001 } }
layer { name: "scale2" type: "Scale" bottom: "conv2" top: "conv2" scale_param { bias_term: true } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "split" type: "Split" bottom: "conv2" top: "a" top: "b" }
layer { name: "sig" type: "Sigmoid" bottom: "a" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "b" top: "tanh" }
layer { name: "sum" type: "Eltwise" bottom: "sig" bottom: "tanh" top: "sum" eltwise_param { operation: SUM coeff: 0.5 coeff: -2 } }
layer { name: "prod" type: "Eltwise" bottom: "sig" bottom: "tanh" top: "prod" eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "sum" bottom: "prod" top: "max" eltwise_param { operation: MAX } }
layer { name: "abs" type: "AbsVal" bottom: "max" top: "abs" }
layer { name: "pow" type: "Power" bottom: "abs" top: "pow" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "cat" type: "Concat" bottom: "pow" bottom: "sig" top: "cat" }
layer { name: "lrn2" type: "LRN" bottom: "cat" top: "lrn2" lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 0.2 beta: 0.5 } }
layer { name: "pool2" type: "Pooling" bottom: "lrn2" top: "pool2" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "drop" type: "Dropout" bottom: "pool2" top: "pool2" dropout_param { dropout_ratio: 0.5 } }
layer { name: "slice" type: "Slice" bottom: "pool2" top: "s1" top: "s2" slice_param { axis: 1 slice_point: 6 } }
layer { name: "flat" type: "Flatten" bottom: "s1" top: "flat" }
layer { name: "fc" type: "InnerProduct" bottom: "flat" top: "fc" inner_product_param { num_output: 12 } }
layer { name: "shape" type: "Reshape" bottom: "fc" top: "shaped" reshape_param { shape { dim: 0 dim: 3 dim: -1 } } }
layer { name: "fc3" type: "InnerProduct" bottom: "shaped" top: "fc3" inner_product_param { num_output: 5 axis: 2 } }
layer { name: "prob" type: "Softmax" bottom: "fc3" top: "prob" softmax_param { axis: 2 } }
layer { name: "gpool" type: "Pooling" bottom: "s2" top: "gpool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "gmax" type: "Pooling" bottom: "s2" top: "gmax" pooling_param { pool: MAX global_pooling: true } }
layer { name: "sm1" type: "Softmax" bottom: "cat" top: "sm1" }
"""

# The layer types legacy V1 files can express; written below in the current generation (Input layer)
# and in V1 (net-level input with input_dim).
SHARED_NET = """
name: "shared"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 31 dim: 31 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 6 kernel_size: 4 stride: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "pool1" lrn_param { local_size: 5 alpha: 0.001 beta: 0.75 } }
layer { name: "split" type: "Split" bottom: "pool1" top: "left" top: "right" }
layer { name: "conv_l" type: "Convolution" bottom: "left" top: "conv_l" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "conv_r" type: "Convolution" bottom: "right" top: "conv_r" convolution_param { num_output: 4 kernel_size: 3 pad: 1 group: 2 bias_term: false } }
layer { name: "sum" type: "Eltwise" bottom: "conv_l" bottom: "conv_r" top: "sum" eltwise_param { coeff: 1 coeff: 0.5 } }
layer { name: "cat" type: "Concat" bottom: "sum" bottom: "conv_l" top: "cat" concat_param { concat_dim: 1 } }
layer { name: "sig" type: "Sigmoid" bottom: "cat" top: "cat" }
layer { name: "tanh" type: "TanH" bottom: "cat" top: "t" }
layer { name: "abs" type: "AbsVal" bottom: "t" top: "t" }
layer { name: "pow" type: "Power" bottom: "t" top: "p" power_param { power: 1.5 shift: 0.1 } }
layer { name: "slice" type: "Slice" bottom: "p" top: "p1" top: "p2" slice_param { slice_dim: 1 slice_point: 3 } }
layer { name: "pool2" type: "Pooling" bottom: "p1" top: "pool2" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "flat" type: "Flatten" bottom: "pool2" top: "flat" }
layer { name: "fc" type: "InnerProduct" bottom: "flat" top: "fc" inner_product_param { num_output: 7 } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

# A CaffeNet (AlexNet as BVLC trained it) at full size: groups, LRN, ceil pooling; 61 M weights.
CAFFENET = """
name: "CaffeNet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 10 dim: 3 dim: 227 dim: 227 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 96 kernel_size: 11 stride: 4 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2" convolution_param { num_output: 256 pad: 2 kernel_size: 5 group: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm2" type: "LRN" bottom: "pool2" top: "norm2" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "conv3" type: "Convolution" bottom: "norm2" top: "conv3" convolution_param { num_output: 384 pad: 1 kernel_size: 3 } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "conv4" type: "Convolution" bottom: "conv3" top: "conv4" convolution_param { num_output: 384 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "relu4" type: "ReLU" bottom: "conv4" top: "conv4" }
layer { name: "conv5" type: "Convolution" bottom: "conv4" top: "conv5" convolution_param { num_output: 256 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "relu5" type: "ReLU" bottom: "conv5" top: "conv5" }
layer { name: "pool5" type: "Pooling" bottom: "conv5" top: "pool5" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6" inner_product_param { num_output: 4096 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7" inner_product_param { num_output: 4096 } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "drop7" type: "Dropout" bottom: "fc7" top: "fc7" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8" inner_product_param { num_output: 1000 } }
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
"""

# A small net whose blob name holds "/" (as GoogLeNet's do), and its torch twin (:func:`torch_twin`).
SLASH_NET = """
name: "slash"
input: "data"
input_shape { dim: 1 dim: 3 dim: 224 dim: 224 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 8 kernel_size: 5 stride: 4 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "block/conv" type: "Convolution" bottom: "pool1" top: "block/out" convolution_param { num_output: 12 kernel_size: 3 pad: 1 } }
layer { name: "block/relu" type: "ReLU" bottom: "block/out" top: "block/out" }
"""


def to_v1(text: str, input_dims: bool = True) -> str:
    """The same net in legacy V1 text: ``layers`` with enum types, the input as net-level ``input`` with
    four ``input_dim`` (or ``input_shape``)."""
    net = proto.NetParameter()
    text_format.Parse(text, net)
    enum = {v: k for k, v in proto.V1_TYPES.items()}
    old = proto.NetParameter(name=net.name)
    for layer in net.layer:
        if layer.type == "Input":
            old.input.extend(layer.top)
            dims = layer.input_param.shape[0].dim
            if input_dims:
                old.input_dim.extend(dims)
            else:
                old.input_shape.add().dim.extend(dims)
            continue
        v1 = old.layers.add(name=layer.name, type=proto.V1LayerParameter.LayerType.Value(enum[layer.type]))
        v1.bottom.extend(layer.bottom)
        v1.top.extend(layer.top)
        for field, _ in layer.ListFields():
            if field.name.endswith("_param"):
                getattr(v1, field.name).CopyFrom(getattr(layer, field.name))
    return text_format.MessageToString(old)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def random_blobs(prototxt: Path, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Random values for every blob the prototxt's layers need (shapes from the converter, values
    scaled to keep activations of order 1; BatchNorm variances and scale factors positive)."""
    from netdissect.models import load_model

    rng = np.random.default_rng(seed)
    net = load_model(str(prototxt)).module
    blobs = {}
    for name, module in zip(net.layer_names, net.layers):
        arrays = []
        for blob, shape in zip(module.blob_names, module.blob_shapes()):
            if blob == "variance":
                arrays.append(rng.uniform(0.5, 2.0, shape))
            elif blob == "scale_factor":
                arrays.append(np.full(shape, 0.5))
            elif blob == "weight":
                fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
                arrays.append(rng.standard_normal(shape) * (2.0 / fan_in) ** 0.5)
            else:
                arrays.append(rng.standard_normal(shape) * 0.5)
        if arrays:
            blobs[name] = [a.astype(np.float32) for a in arrays]
    return blobs


def write_caffemodel(path: Path, prototxt: Path, blobs: dict[str, list[np.ndarray]], v1: bool = False) -> Path:
    """A caffemodel serialised by protobuf: current (``layer``, blobs with ``shape``) or V1 (``layers``,
    enum types, blobs with num/channels/height/width), plus a layer the prototxt lacks (ignored)."""
    types = dict(zip(*_names_and_types(prototxt)))
    net = proto.NetParameter(name="written by the tests")
    enum = {v: k for k, v in proto.V1_TYPES.items()}
    for name, arrays in {**blobs, "train_only": [np.ones((2, 2), np.float32)]}.items():
        kind = types.get(name, "InnerProduct")
        if v1:
            layer = net.layers.add(name=name, type=proto.V1LayerParameter.LayerType.Value(enum[kind]))
        else:
            layer = net.layer.add(name=name, type=kind)
        for array in arrays:
            blob = layer.blobs.add()
            if v1:
                blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - array.ndim) + array.shape
            else:
                blob.shape.dim.extend(array.shape)
            blob.data.extend(array.ravel().tolist())
    path.write_bytes(net.SerializeToString())
    return path


def _names_and_types(prototxt: Path) -> tuple[list[str], list[str]]:
    layers = proto.read_prototxt(prototxt).layers
    return [layer.name for layer in layers], [layer.type for layer in layers]


def opencv_blobs(prototxt: Path, caffemodel: Path, x: np.ndarray, blobs: list[str]) -> dict[str, np.ndarray]:
    """Blob values computed by OpenCV's Caffe importer (layer fusion off): a blob is an output of the last
    layer that writes it. One forward pass per layer (OpenCV reuses the memory of outputs it was not
    asked for, e.g. a Split's second top, when several layers are retrieved at once)."""
    import cv2

    writer = {}
    for layer in proto.read_prototxt(prototxt).layers:
        for k, top in enumerate(layer.top):
            writer[top] = (layer.name, k)
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.enableFusion(False)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    values = {}
    for blob in blobs:
        net.setInput(x)
        layer, k = writer[blob]
        values[blob] = np.array(net.forwardAndRetrieve([layer])[0][k])
    return values


class TorchTwin(nn.Module):
    """SLASH_NET written in torch. Its input is normalised with mean 0 and std 1 (values v/255 in R, G,
    B); it undoes that exactly (×255), reorders to B, G, R and subtracts the Caffe mean, so it sees the
    same numbers as the converted net."""

    def __init__(self, mean=(109.5388, 118.6897, 124.6901)):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, 8, 5, stride=4)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv = nn.Conv2d(8, 12, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = (x * 255).flip(1) - self.mean
        return self.relu(self.conv(self.pool1(self.relu1(self.conv1(x)))))


def torch_twin() -> nn.Module:
    return TorchTwin()


def twin_state(blobs: dict[str, list[np.ndarray]]) -> dict[str, torch.Tensor]:
    """The TorchTwin state_dict holding SLASH_NET's blobs."""
    return {
        "mean": TorchTwin().mean,
        "conv1.weight": torch.from_numpy(blobs["conv1"][0]),
        "conv1.bias": torch.from_numpy(blobs["conv1"][1]),
        "conv.weight": torch.from_numpy(blobs["block/conv"][0]),
        "conv.bias": torch.from_numpy(blobs["block/conv"][1]),
    }
