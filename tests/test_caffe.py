"""Caffe models without Caffe (docs/caffe-models.md): converted blobs agree with OpenCV's Caffe importer,
in both file generations; semantics OpenCV lacks are checked against brute force; names with "/" work
end to end; a Caffe pair dissects exactly like its torch twin; bad input gives clear errors."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netdissect.cli import main
from netdissect.errors import NetDissectError
from netdissect.models import capture, layer_shapes, load_model
from netdissect.models.caffe import proto
from netdissect.models.fieldmap import FieldMap
from netdissect.names import layer_file_name, layer_from_file_name
from tests.caffe_nets import (
    CAFFENET,
    CURRENT_NET,
    SHARED_NET,
    SLASH_NET,
    opencv_blobs,
    random_blobs,
    to_v1,
    twin_state,
    write,
    write_caffemodel,
)


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / max(float(np.abs(theirs).max()), 1e-30))


def converted(model, x: np.ndarray, blobs) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        return {k: v.numpy() for k, v in model.module(torch.from_numpy(x), blobs=blobs).items()}


def random_input(model, n: int = 2, seed: int = 1) -> np.ndarray:
    shape = model.module.input_shape
    return (np.random.default_rng(seed).standard_normal((n, *shape[1:])) * 60).astype(np.float32)


# -- agreement with OpenCV --------------------------------------------------------------------------------
def test_every_layer_type_agrees_with_opencv(tmp_path):
    prototxt = write(tmp_path / "net.prototxt", CURRENT_NET)
    caffemodel = write_caffemodel(tmp_path / "net.caffemodel", prototxt, random_blobs(prototxt))
    model = load_model(str(prototxt), str(caffemodel))
    types = set(model.module.layer_types)
    assert types >= {"Convolution", "Pooling", "LRN", "BatchNorm", "Scale", "Eltwise", "Concat", "Split"}
    assert types >= {"Flatten", "Reshape", "InnerProduct", "Power", "Sigmoid", "TanH", "AbsVal", "Dropout"}
    assert types >= {"Softmax", "Slice", "ReLU"}
    x = random_input(model)
    blobs = model.module.blob_names[1:]
    ours, theirs = converted(model, x, blobs), opencv_blobs(prototxt, caffemodel, x, blobs)
    for blob in blobs:
        assert ours[blob].shape == theirs[blob].shape and ours[blob].shape[1:] == model.module.blob_shapes[blob], blob
        assert relative_error(ours[blob], theirs[blob]) < 1e-4, blob
    assert ours["conv2"].min() >= 0  # bn2 -> scale2 -> relu2 in place: conv2 is after the ReLU
    assert not np.array_equal(ours["conv1"], np.maximum(ours["conv1"], 0))  # leaky: negative values kept


@pytest.mark.parametrize("prototxt_kind", ["input layer", "v1 input_dim", "v1 input_shape"])
@pytest.mark.parametrize("legacy_model", [False, True])
def test_both_generations_and_input_declarations(tmp_path, prototxt_kind, legacy_model):
    """Each prototxt (current with an Input layer, V1 with input_dim or input_shape) with each caffemodel
    (current with `shape`, V1 with the 4-D fields): the same blobs, agreeing with OpenCV."""
    current = write(tmp_path / "current.prototxt", SHARED_NET)
    blobs = random_blobs(current, seed=5)
    text = {
        "input layer": SHARED_NET,
        "v1 input_dim": to_v1(SHARED_NET),
        "v1 input_shape": to_v1(SHARED_NET, input_dims=False),
    }[prototxt_kind]
    prototxt = write(tmp_path / "net.prototxt", text)
    assert ("layers {" in text) == (prototxt_kind != "input layer")
    caffemodel = write_caffemodel(tmp_path / "net.caffemodel", current, blobs, v1=legacy_model)
    assert proto.read_caffemodel(caffemodel).v1 == legacy_model
    model = load_model(str(prototxt), str(caffemodel))
    reference = load_model(str(current), str(write_caffemodel(tmp_path / "ref.caffemodel", current, blobs)))
    x = random_input(model)
    names = model.module.blob_names[1:]
    ours, theirs = converted(model, x, names), opencv_blobs(prototxt, caffemodel, x, names)
    same = converted(reference, x, names)
    for blob in names:
        assert relative_error(ours[blob], theirs[blob]) < 1e-4, blob
        assert np.array_equal(ours[blob], same[blob]), blob


@pytest.mark.slow
def test_full_size_caffenet_agrees_with_opencv_at_conv5(tmp_path):
    """A 61 M-weight CaffeNet (groups, LRN, ceil pooling) written with the converter's writer; conv5 (after
    relu5, in place) agrees with OpenCV, and its field map is the hand-checked (-64, 163, 16)."""
    prototxt = write(tmp_path / "caffenet.prototxt", CAFFENET)
    shapes = load_model(str(prototxt)).module
    rng = np.random.default_rng(0)
    layers = []
    for name, module in zip(shapes.layer_names, shapes.layers):
        arrays = [rng.standard_normal(s, dtype=np.float32) * 0.01 for s in module.blob_shapes()]
        if arrays:
            layers.append((proto.LayerParameter(name=name, type="Convolution"), arrays))
    caffemodel = tmp_path / "caffenet.caffemodel"
    with open(caffemodel, "wb") as f:
        for piece in proto.encode_caffemodel(layers):
            f.write(piece)
    assert caffemodel.stat().st_size > 240e6
    del layers
    model = load_model(str(prototxt), str(caffemodel))
    assert model.field_maps["conv5"] == FieldMap((-64, -64), (163, 163), (16, 16))
    x = random_input(model, n=1) * 2
    ours = converted(model, x, ["conv5"])["conv5"]
    theirs = opencv_blobs(prototxt, caffemodel, x, ["conv5"])["conv5"]
    assert ours.shape == (1, 256, 13, 13) and ours.min() == 0 and ours.max() > 0
    assert relative_error(ours, theirs) < 1e-4


# -- semantics OpenCV does not have (or gets wrong), against brute force ------------------------------------
def caffe_pool(x: np.ndarray, method: str, k: int, s: int, p: int, ceil: bool = True) -> np.ndarray:
    """Caffe's pooling_layer.cpp (and the GPU's test-time STOCHASTIC), loop by loop, in float64."""
    n, c, h, w = x.shape

    def size(n_in):
        out = (math.ceil if ceil else math.floor)((n_in + 2 * p - k) / s) + 1
        return out - 1 if p and (out - 1) * s >= n_in + p else out

    oh, ow = size(h), size(w)
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            if method == "STOCHASTIC":
                win = x[:, :, i * s : min(i * s + k, h), j * s : min(j * s + k, w)].astype(np.float64)
                total = win.sum(axis=(2, 3))
                out[:, :, i, j] = np.where(total > 0, (win * win).sum(axis=(2, 3)) / np.where(total > 0, total, 1), 0)
                continue
            h0, w0 = i * s - p, j * s - p
            h1, w1 = min(h0 + k, h + p), min(w0 + k, w + p)
            area = (h1 - h0) * (w1 - w0)
            win = x[:, :, max(h0, 0) : min(h1, h), max(w0, 0) : min(w1, w)].astype(np.float64)
            out[:, :, i, j] = win.max(axis=(2, 3)) if method == "MAX" else win.sum(axis=(2, 3)) / area
    return out


@pytest.mark.parametrize(
    "method,k,s,p,ceil,size",
    [
        ("MAX", 3, 2, 0, True, 8),  # ceil adds a window
        ("AVE", 3, 2, 0, True, 8),  # ... whose divisor is clipped to the input
        ("AVE", 3, 2, 1, True, 7),  # padding counts inside [-pad, in + pad)
        ("MAX", 2, 2, 1, True, 6),  # pad > 0 and the last window would start past in + pad: one less
        ("AVE", 3, 3, 2, True, 10),  # pad > kernel / 2 (torch refuses it): explicit padding
        ("MAX", 3, 3, 2, True, 10),
        ("AVE", 3, 2, 1, False, 8),  # round_mode FLOOR
        ("STOCHASTIC", 3, 2, 0, True, 8),  # Σx²/Σx, OpenCV has none
        ("STOCHASTIC", 2, 2, 1, True, 7),
    ],
)
def test_pooling_against_caffe_loops(tmp_path, method, k, s, p, ceil, size):
    rounding = "" if ceil else "round_mode: FLOOR"
    text = f"""input: "data" input_dim: 2 input_dim: 3 input_dim: {size} input_dim: {size}
layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"
  pooling_param {{ pool: {method} kernel_size: {k} stride: {s} pad: {p} {rounding} }} }}"""
    model = load_model(str(write(tmp_path / "pool.prototxt", text)))
    x = np.random.default_rng(3).standard_normal((2, 3, size, size)).astype(np.float32)
    if method == "STOCHASTIC":
        x = np.abs(x)
    ours = converted(model, x, ["pool"])["pool"]
    expected = caffe_pool(x, method, k, s, p, ceil)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    assert model.module.blob_shapes["pool"] == expected.shape[1:]


def test_lrn_k_transpose_and_even_slice_against_brute_force(tmp_path):
    """OpenCV ignores LRN's k and InnerProduct's transpose, and a Slice without slice_point: checked here."""
    text = """input: "data" input_shape { dim: 1 dim: 3 dim: 4 dim: 5 }
layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" lrn_param { local_size: 5 alpha: 0.7 beta: 0.6 k: 3 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 transpose: true } }
layer { name: "slice" type: "Slice" bottom: "data" top: "a" top: "b" top: "c" }"""
    prototxt = write(tmp_path / "net.prototxt", text)
    blobs = random_blobs(prototxt)
    model = load_model(str(prototxt), str(write_caffemodel(tmp_path / "net.caffemodel", prototxt, blobs)))
    x = np.random.default_rng(4).standard_normal((2, 3, 4, 5)).astype(np.float32) * 3
    ours = converted(model, x, ["lrn", "ip", "a", "b", "c"])
    x64 = x.astype(np.float64)
    squares = np.pad(x64**2, ((0, 0), (2, 2), (0, 0), (0, 0)))
    window = sum(squares[:, i : i + 3] for i in range(5))
    np.testing.assert_allclose(ours["lrn"], x64 / (3 + 0.7 / 5 * window) ** 0.6, rtol=1e-5)
    weight, bias = blobs["ip"]
    assert weight.shape == (3 * 4 * 5, 3)  # transpose: (K, N)
    np.testing.assert_allclose(ours["ip"], x64.reshape(2, -1) @ weight + bias, rtol=1e-4, atol=1e-4)
    for name, part in zip("abc", np.split(x, 3, axis=1)):
        assert np.array_equal(ours[name], part)


def test_batchnorm_scale_factor_zero_and_scale_with_second_bottom(tmp_path):
    text = """input: "data" input_shape { dim: 1 dim: 3 dim: 3 dim: 3 }
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }
layer { name: "gp" type: "Pooling" bottom: "data" top: "gp" pooling_param { pool: AVE global_pooling: true } }
layer { name: "flat" type: "Flatten" bottom: "gp" top: "flat" }
layer { name: "scale" type: "Scale" bottom: "bn" bottom: "flat" top: "scaled" scale_param { axis: 0 } }
layer { name: "bias" type: "Bias" bottom: "scaled" top: "biased" }"""
    prototxt = write(tmp_path / "net.prototxt", text)
    mean, var, bias = (
        np.array([1.0, -2.0, 0.5], np.float32),
        np.array([4.0, 9.0, 0.25], np.float32),
        np.array([0.5, 1.5, -1.0], np.float32),
    )
    blobs = {"bn": [mean, var, np.zeros(1, np.float32)], "bias": [bias]}
    model = load_model(str(prototxt), str(write_caffemodel(tmp_path / "net.caffemodel", prototxt, blobs)))
    x = np.random.default_rng(5).standard_normal((2, 3, 3, 3)).astype(np.float32)
    out = converted(model, x, ["bn", "biased"])
    np.testing.assert_allclose(out["bn"], x / np.sqrt(1e-5), rtol=1e-5)  # factor 0: statistics 0
    gp = x.mean(axis=(2, 3))[:, :, None, None]
    np.testing.assert_allclose(out["biased"], out["bn"] * gp + bias[None, :, None, None], rtol=1e-5, atol=1e-5)
    blobs["bn"][2] = np.array([2.0], np.float32)  # statistics are mean/s and var/s
    model = load_model(str(prototxt), str(write_caffemodel(tmp_path / "net.caffemodel", prototxt, blobs)))
    expected = (x - (mean / 2)[None, :, None, None]) / np.sqrt((var / 2)[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(converted(model, x, ["bn"])["bn"], expected, rtol=1e-5, atol=1e-6)


# -- names, capture, shapes, field maps ------------------------------------------------------------------------
def test_blob_names_in_place_meaning_and_early_stop(tmp_path):
    """A blob holds its LAST writer's value; capture returns it; the pass stops after the last layer that
    writes a requested blob (here before an InnerProduct that cannot run at this input size)."""
    prototxt = write(tmp_path / "caffenet.prototxt", CAFFENET)
    model = load_model(str(prototxt))
    names = model.module.blob_names
    assert names[:3] == ["data", "conv1", "pool1"] and "relu1" not in names and names[-1] == "prob"
    small = write(tmp_path / "small.prototxt", SLASH_NET)
    blobs = random_blobs(small)
    model = load_model(str(small), str(write_caffemodel(tmp_path / "s.caffemodel", small, blobs)))
    x = torch.from_numpy(random_input(model, n=1))
    with capture(model, ["conv1", "block/out"]) as run:
        out = run(x)
    raw = torch.nn.functional.conv2d(x, torch.from_numpy(blobs["conv1"][0]), torch.from_numpy(blobs["conv1"][1]), 4)
    assert torch.equal(out["conv1"], raw.relu()) and out["block/out"].min() == 0
    caffenet = load_model(str(prototxt))
    assert layer_shapes(caffenet)["pool5"] == (256, 6, 6)
    with pytest.raises(NetDissectError, match=r"layer 'fc6' \(InnerProduct\) cannot run"):
        layer_shapes(caffenet, size=300)
    assert layer_shapes(caffenet, ["conv5"], size=300) == {"conv5": (256, 18, 18)}  # stops before fc6


def test_field_maps_of_the_converted_graph(tmp_path):
    model = load_model(str(write(tmp_path / "caffenet.prototxt", CAFFENET)))
    maps = model.field_maps
    assert maps["conv5"] == FieldMap((-64, -64), (163, 163), (16, 16))  # docs/dissection.md §3, by hand
    assert maps["conv1"] == FieldMap((0, 0), (11, 11), (4, 4)) and maps["norm1"] == maps["pool1"]
    assert maps["pool5"] == FieldMap((-64, -64), (195, 195), (32, 32))
    assert "fc6" not in maps and "prob" not in maps
    every = load_model(str(write(tmp_path / "every.prototxt", CURRENT_NET))).field_maps
    assert "gpool" not in every and "flat" not in every
    # conv2: kernel 3 x 2 dilated by 2 (5 x 3 input positions of pool1, 4 pixels apart), pad 2 x 1
    assert every["pool1"] == FieldMap((-1, -1), (9, 9), (4, 4))
    assert every["conv2"] == FieldMap((-1 - 2 * 4, -1 - 1 * 4), (9 + 4 * 4, 9 + 2 * 4), (4, 4))
    assert every["cat"] == every["pow"] and every["lrn2"].size[0] == every["cat"].size[0] + 2 * every["cat"].step[0]


def test_layers_command_lists_every_blob_without_weights(tmp_path, capsys):
    prototxt = write(tmp_path / "every.prototxt", CURRENT_NET)
    assert main(["layers", "--model", str(prototxt)]) == 0
    lines = capsys.readouterr().out.splitlines()
    model = load_model(str(prototxt))
    assert [line.split("\t")[0] for line in lines] == model.module.blob_names
    shapes = {"\t".join(line.split("\t")[:2]) for line in lines}  # name, shape (then reading, field map)
    assert {"data\t3x29x27", "conv1\t8x14x13", "pool1\t8x7x6", "flat\t96", "prob\t3x5", "gpool\t10x1x1"} <= shapes
    assert main(["layers", "--model", str(prototxt), "--check", "conv2,sm1", "--size", "41"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert ["\t".join(line.split("\t")[:2]) for line in lines] == ["conv2\t8x10x10", "sm1\t16x10x10"]
    assert main(["layers", "--model", str(prototxt), "--check", "prob", "--size", "41"]) == 2
    assert (
        "layer 'fc' (InnerProduct) cannot run on bottoms of shape (216,) per image (input 41x41; the prototxt declares 29x27)"
        in capsys.readouterr().err
    )
    assert main(["layers", "--model", str(prototxt), "--check", "conv22"]) == 2
    err = capsys.readouterr().err
    assert "no blob 'conv22'" in err and "Closest: conv2" in err


def test_layer_file_names_are_reversible_and_distinct():
    names = ["conv5", "features.28", "inception_5b/output", "a%2Fb", "a/b", "..", ".", "x\\y", "100%"]
    files = [layer_file_name(n) for n in names]
    assert files[:2] == ["conv5", "features.28"] and files[2] == "inception_5b%2Foutput"
    assert len(set(files)) == len(names) and all("/" not in f and "\\" not in f and f not in (".", "..") for f in files)
    assert [layer_from_file_name(f) for f in files] == names


# -- the prototxt and caffemodel readers -----------------------------------------------------------------------
def test_fast_writer_gives_protobufs_bytes_and_reader_reads_every_encoding(tmp_path):
    rng = np.random.default_rng(6)
    arrays = [rng.standard_normal((4, 3, 2, 2)).astype(np.float32), rng.standard_normal(4).astype(np.float32)]
    for v1 in (False, True):
        cls = proto.V1LayerParameter if v1 else proto.LayerParameter
        layer = cls(name="conv")
        layer.type = proto.V1LayerParameter.CONVOLUTION if v1 else "Convolution"
        fast = b"".join(proto.encode_caffemodel([(layer, arrays)], legacy_shapes=v1))
        net = proto.NetParameter()
        full = (net.layers if v1 else net.layer).add()
        full.CopyFrom(layer)
        for a in arrays:
            blob = full.blobs.add()
            if v1:
                blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - a.ndim) + a.shape
            else:
                blob.shape.dim.extend(a.shape)
            blob.data.extend(a.ravel().tolist())
        assert fast == net.SerializeToString()
    # double_data, values split over two packed chunks and unpacked floats, and a diff to skip
    blob = proto.BlobProto()
    blob.shape.dim.extend([2, 3])
    blob.double_data.extend(np.arange(6.0).tolist())
    blob.diff.extend([9.0] * 6)
    packed = proto.BlobProto(num=1, channels=1, height=2, width=2)
    chunk = np.arange(2, dtype="<f4").tobytes()
    raw = packed.SerializeToString() + b"\x2a\x08" + chunk + b"\x2a\x08" + chunk  # field 5, length 8, twice
    unpacked = packed.SerializeToString() + b"".join(b"\x2d" + np.float32(v).tobytes() for v in (5, 6, 7, 8))
    layer = proto.LayerParameter(name="l", type="Scale").SerializeToString()
    body = layer + b"".join(b"\x3a" + bytes([len(b)]) + b for b in (blob.SerializeToString(), raw, unpacked))
    path = tmp_path / "mixed.caffemodel"
    path.write_bytes(b"\xa2\x06" + proto._encode_varint(len(body)) + body)
    read = proto.read_caffemodel(path).blobs["l"]
    assert np.array_equal(read[0].values, np.arange(6.0).reshape(2, 3)) and not read[0].legacy
    assert np.array_equal(read[1].values, np.array([0, 1, 0, 1.0]).reshape(1, 1, 2, 2)) and read[1].legacy
    assert np.array_equal(read[2].values.ravel(), [5, 6, 7, 8])


def test_unknown_fields_skipped_for_layers_refused_inside_parameters(tmp_path):
    """train_val-style fields (data_param, transform_param, loss_weight ...) are skipped; an unknown field
    inside a layer's parameters is refused with file:line:column; train-only layers are left out."""
    text = """name: "trainval"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mirror: true crop_size: 227 } data_param { source: "lmdb" batch_size: 256 } }
input: "data" input_dim: 1 input_dim: 3 input_dim: 9 input_dim: 9
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "only_train" type: "ReLU" bottom: "conv" top: "conv" include { phase: TRAIN } }
layer { name: "not_test" type: "ReLU" bottom: "conv" top: "conv" exclude { phase: TEST } }
layer { name: "test" type: "Sigmoid" bottom: "conv" top: "sig" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" top: "loss" loss_weight: 1 }
layer { name: "acc" type: "Accuracy" bottom: "conv" bottom: "label" top: "acc" accuracy_param { top_k: 5 } }
"""
    model = load_model(str(write(tmp_path / "trainval.prototxt", text)))
    assert model.module.layer_names == ["conv", "test"] and model.module.blob_names == ["data", "conv", "sig"]
    bad = text.replace("kernel_size: 3 }", "kernel_size: 3\n  hole: 2 }")
    with pytest.raises(NetDissectError, match=r"bad\.prototxt:6:3: .*no field named \"hole\".*Caffe fork"):
        load_model(str(write(tmp_path / "bad.prototxt", bad)))


def test_mean_file_gives_the_per_channel_means_and_is_recorded(tmp_path, synth_dataset):
    rng = np.random.default_rng(7)
    image = rng.uniform(0, 255, (1, 3, 16, 16)).astype(np.float32)
    blob = proto.BlobProto(num=1, channels=3, height=16, width=16)
    blob.data.extend(image.ravel().tolist())
    mean_file = tmp_path / "mean.binaryproto"
    mean_file.write_bytes(blob.SerializeToString())
    prototxt = write(tmp_path / "slash.prototxt", SLASH_NET)
    caffemodel = write_caffemodel(tmp_path / "slash.caffemodel", prototxt, random_blobs(prototxt))
    model = load_model(str(prototxt), str(caffemodel), mean_file=str(mean_file))
    np.testing.assert_allclose(model.mean, image[0].astype(np.float64).mean(axis=(1, 2)), rtol=1e-6)
    assert (model.bgr, model.divisor, model.std) == (True, 1.0, (1.0, 1.0, 1.0))
    images = torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)
    expected = images.flip(1).float() - torch.tensor(model.mean, dtype=torch.float32).view(1, 3, 1, 1)
    assert torch.equal(model.normalise(images), expected)
    out = tmp_path / "shard"
    args = ["extract", "--dataset", str(synth_dataset), "--model", str(prototxt), "--weights", str(caffemodel)]
    assert main([*args, "--layers", "conv1", "--out", str(out), "--mean-file", str(mean_file), "--no-progress"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["mean_file"] == str(mean_file) and meta["bgr"] is True and meta["divisor"] == 1
    assert meta["mean"] == list(model.mean)


# -- dissection end to end: a Caffe pair = its torch twin; "/" in a layer name --------------------------------
def test_dissecting_a_caffe_pair_equals_its_torch_twin_and_slash_names_work(tmp_path, synth_dataset, capsys):
    prototxt = write(tmp_path / "slash.prototxt", SLASH_NET)
    blobs = random_blobs(prototxt, seed=11)
    caffemodel = write_caffemodel(tmp_path / "slash.caffemodel", prototxt, blobs)
    torch.save(twin_state(blobs), tmp_path / "twin.pt")
    data = ["--dataset", str(synth_dataset), "--no-progress", "--batch-size", "16"]
    caffe_out, torch_out = tmp_path / "caffe", tmp_path / "torch"
    assert main(["dissect", *data, "--model", str(prototxt), "--weights", str(caffemodel), "--layers", "block/out", "--out", str(caffe_out)]) == 0  # fmt: skip
    twin = [
        "--model",
        "tests.caffe_nets:torch_twin",
        "--weights",
        str(tmp_path / "twin.pt"),
        "--mean",
        "0",
        "--std",
        "1",
    ]
    assert main(["dissect", *data, *twin, "--layers", "relu", "--out", str(torch_out)]) == 0
    layer_dir = caffe_out / "block%2Fout"
    result = (layer_dir / "result.csv").read_text()
    assert result == (torch_out / "relu" / "result.csv").read_text()
    assert len(result.splitlines()) == 13 and not (caffe_out / "block").exists()
    assert (caffe_out / "shards" / "0" / "block%2Fout.act.npy").is_file()
    summary = json.loads((layer_dir / "summary.json").read_text())
    settings = summary["settings"]
    assert summary["layer"] == "block/out" and settings["bgr"] is True and settings["divisor"] == 1
    assert settings["mean"] == [109.5388, 118.6897, 124.6901] and settings["mean_file"] is None
    assert json.loads((torch_out / "relu" / "summary.json").read_text())["settings"]["bgr"] is False
    shards = str(caffe_out / "shards" / "0")
    report = tmp_path / "report"
    assert main(["report", "--dataset", str(synth_dataset), "--layer-dir", str(layer_dir), "--shards", shards, "--out", str(report), "--topk", "2"]) == 0  # fmt: skip
    html = (report / "index.html").read_text()
    assert "block/out" in html and "BGR 0–255" in html and "109.539" in html
    capsys.readouterr()
    assert main(["report-all", "--layer-dirs", str(layer_dir), "--out", str(tmp_path / "all")]) == 0
    assert "block/out" in (tmp_path / "all" / "summary.csv").read_text().splitlines()[1]


# -- bad input ------------------------------------------------------------------------------------------------
def _layers_error(capsys, *args) -> str:
    assert main(["layers", *map(str, args)]) == 2
    return capsys.readouterr().err


def test_bad_prototxts(tmp_path, capsys):
    unsupported = SLASH_NET.replace('name: "block/conv" type: "Convolution"', 'name: "up" type: "Deconvolution"')
    err = _layers_error(capsys, "--model", write(tmp_path / "a.prototxt", unsupported))
    assert (
        "a.prototxt:8: layer 'up' (Deconvolution)" in err and "not supported" in err and "Convolution, Dropout" in err
    )
    syntax = SLASH_NET.replace("num_output: 12", "num_output 12")
    row = next(i for i, line in enumerate(syntax.splitlines(), 1) if "num_output 12" in line)
    column = syntax.splitlines()[row - 1].index("12") + 1
    err = _layers_error(capsys, "--model", write(tmp_path / "b.prototxt", syntax))
    assert f'b.prototxt:{row}:{column}: Expected ":"' in err, err
    no_input = SLASH_NET.replace('input: "data"\ninput_shape { dim: 1 dim: 3 dim: 224 dim: 224 }', "")
    err = _layers_error(capsys, "--model", write(tmp_path / "c.prototxt", no_input))
    assert "declares no input shape" in err and "input_dim" in err
    dims = SLASH_NET.replace("input_shape { dim: 1 dim: 3 dim: 224 dim: 224 }", "input_dim: 1 input_dim: 3")
    assert "2 input_dim values" in _layers_error(capsys, "--model", write(tmp_path / "d.prototxt", dims))
    unknown_bottom = SLASH_NET.replace('bottom: "pool1"', 'bottom: "pool_1"')
    err = _layers_error(capsys, "--model", write(tmp_path / "e.prototxt", unknown_bottom))
    assert "reads blob 'pool_1', which no earlier layer writes (closest: pool1)" in err
    assert "file not found" in _layers_error(capsys, "--model", tmp_path / "missing.prototxt")


def test_bad_caffemodels_and_no_finished_output(tmp_path, capsys, synth_dataset):
    prototxt = write(tmp_path / "slash.prototxt", SLASH_NET)
    blobs = random_blobs(prototxt)
    good = write_caffemodel(tmp_path / "good.caffemodel", prototxt, blobs).read_bytes()
    cases = {
        "missing": (
            {k: v for k, v in blobs.items() if k != "block/conv"},
            "has no blobs for this layer, which needs weight (12, 8, 3, 3), bias (12,)",
        ),  # fmt: skip
        "count": ({**blobs, "conv1": blobs["conv1"][:1]}, "holds 1 blob(s) for this layer, expected 2"),
        "shape": ({**blobs, "conv1": [blobs["conv1"][0][:4], blobs["conv1"][1]]}, "blob weight in --weights"),
    }
    for name, (content, message) in cases.items():
        path = write_caffemodel(tmp_path / f"{name}.caffemodel", prototxt, content)
        err = _layers_error(capsys, "--model", prototxt, "--weights", path)
        assert message in err, name
    assert "has shape (4, 3, 5, 5), expected (8, 3, 5, 5)" in err and "layer 'conv1' (Convolution)" in err
    for cut in (3, len(good) // 2, len(good) - 5):
        (tmp_path / "cut.caffemodel").write_bytes(good[:cut])
        err = _layers_error(capsys, "--model", prototxt, "--weights", tmp_path / "cut.caffemodel")
        assert "truncated or not a Caffe .caffemodel" in err or "has no blobs for this layer" in err, cut
    torch.save({"w": torch.zeros(3)}, tmp_path / "model.pth")
    assert "zip archive" in _layers_error(capsys, "--model", prototxt, "--weights", tmp_path / "model.pth")
    assert "is text (a prototxt?)" in _layers_error(capsys, "--model", prototxt, "--weights", prototxt)
    commented = write(tmp_path / "commented.prototxt", "# CaffeNet\n" + SLASH_NET)
    assert "is text (a prototxt?)" in _layers_error(capsys, "--model", prototxt, "--weights", commented)
    (tmp_path / "legacy.pth").write_bytes(pickle.dumps({"w": 1}, protocol=2))
    assert "a Python pickle" in _layers_error(capsys, "--model", prototxt, "--weights", tmp_path / "legacy.pth")
    (tmp_path / "noise.caffemodel").write_bytes(np.random.default_rng(8).bytes(5000))
    assert "not a Caffe .caffemodel" in _layers_error(capsys, "--model", prototxt, "--weights", tmp_path / "noise.caffemodel")  # fmt: skip
    # a dissection that fails on its input leaves nothing that looks finished
    out = tmp_path / "out"
    base = [
        "dissect",
        "--dataset",
        str(synth_dataset),
        "--model",
        str(prototxt),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main([*base, "--weights", str(tmp_path / "shape.caffemodel"), "--layers", "block/out"]) == 2
    assert main([*base, "--layers", "block/out"]) == 2
    assert "has no weights (a Caffe deploy.prototxt holds none)" in capsys.readouterr().err
    assert main([*base, "--weights", str(tmp_path / "good.caffemodel"), "--layers", "block/output"]) == 2
    assert "no blob 'block/output'. Closest: block/out" in capsys.readouterr().err
    assert not list(out.rglob("meta.json")) and not list(out.rglob("result.csv"))


def test_bad_options(tmp_path, capsys):
    prototxt = write(tmp_path / "slash.prototxt", SLASH_NET)
    (tmp_path / "m.binaryproto").write_bytes(
        proto.BlobProto(num=1, channels=1, height=1, width=1, data=[1.0]).SerializeToString()
    )
    assert "3-channel mean image" in _layers_error(
        capsys, "--model", prototxt, "--mean-file", tmp_path / "m.binaryproto"
    )
    assert "give one of them" in _layers_error(capsys, "--model", prototxt, "--mean-file", tmp_path / "m.binaryproto", "--mean", "1,2,3")  # fmt: skip
    assert "only for Caffe models" in _layers_error(
        capsys, "--model", "resnet18", "--mean-file", tmp_path / "m.binaryproto"
    )
    assert "one per B,G,R channel" in _layers_error(capsys, "--model", prototxt, "--mean", "1,2")
    bn = """input: "data" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" batch_norm_param { use_global_stats: false } }"""
    assert "use_global_stats is false" in _layers_error(capsys, "--model", write(tmp_path / "bn.prototxt", bn))
    assert main(["random-weights", "--model", str(prototxt), "--out", str(tmp_path / "r.pt")]) == 2
    assert "come from its .caffemodel" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_converted_module_runs_on_a_gpu(tmp_path):
    prototxt = write(tmp_path / "net.prototxt", CURRENT_NET)
    model = load_model(
        str(prototxt), str(write_caffemodel(tmp_path / "net.caffemodel", prototxt, random_blobs(prototxt)))
    )
    x = torch.from_numpy(random_input(model))
    names = model.module.blob_names[1:]
    with torch.inference_mode():
        cpu = model.module(x, blobs=names)
        model.module.to("cuda")
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        gpu = model.module(x.cuda(), blobs=names)
    for name in names:
        assert gpu[name].device.type == "cuda"
        assert relative_error(gpu[name].cpu().numpy(), cpu[name].numpy()) < 1e-4, name


def test_text_format_round_trip_of_v1(tmp_path):
    """The V1 text the tests write is legacy V1 as Caffe reads it: enum types, net-level input."""
    text = to_v1(SHARED_NET)
    net = proto.NetParameter()
    text_format.Parse(text, net)
    assert len(net.layers) == 19 and not len(net.layer) and list(net.input_dim) == [1, 3, 31, 31]
    assert proto.upgrade_v1(net.layers[0]).type == "Convolution"
