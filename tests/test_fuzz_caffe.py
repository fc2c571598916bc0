"""Fuzzing the Caffe readers (netdissect.models.caffe.proto): damaged prototxts and caffemodels, and a
caffemodel declaring absurd sizes. The properties are the ones of tests/test_fuzz_broden.py: every damaged
file ends in NetDissectError naming the file, never another exception, a hang or a huge allocation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netdissect.errors import NetDissectError
from netdissect.models.caffe import proto
from tests import caffe_nets
from tests.fuzzing import count, fuzz, no_hang

READ_PROTOTXT = proto.read_prototxt
READ_CAFFEMODEL = proto.read_caffemodel
_PAIR: dict[str, bytes] = {}


def SAMPLE_PAIR(folder: Path) -> tuple[Path, Path]:
    """A small valid pair (tests/caffe_nets.py's net of every layer type), written into ``folder``; built
    once, copied for every case."""
    if not _PAIR:
        text = caffe_nets.write(folder / "deploy.prototxt", caffe_nets.CURRENT_NET)
        model = caffe_nets.write_caffemodel(folder / "net.caffemodel", text, caffe_nets.random_blobs(text))
        _PAIR.update(prototxt=text.read_bytes(), caffemodel=model.read_bytes())
    prototxt, model = folder / "deploy.prototxt", folder / "net.caffemodel"
    prototxt.write_bytes(_PAIR["prototxt"])
    model.write_bytes(_PAIR["caffemodel"])
    return prototxt, model


def _damage(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["bytes", "flip", "cut"]))
    if kind == "bytes":
        return draw(st.binary(max_size=400))
    if kind == "cut":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@fuzz(200)
@given(data=st.data())
def test_fuzz_prototxt(tmp_path_factory, data):
    count("caffe prototxt")
    folder = tmp_path_factory.mktemp("caffe")
    prototxt, _ = SAMPLE_PAIR(folder)
    prototxt.write_bytes(_damage(data.draw, prototxt.read_bytes()))
    try:
        with no_hang():
            READ_PROTOTXT(prototxt)
    except NetDissectError as err:
        assert str(prototxt) in str(err) or prototxt.name in str(err)


@fuzz(200)
@given(data=st.data())
def test_fuzz_caffemodel(tmp_path_factory, data):
    count("caffe caffemodel")
    folder = tmp_path_factory.mktemp("caffe")
    _, model = SAMPLE_PAIR(folder)
    model.write_bytes(_damage(data.draw, model.read_bytes()))
    try:
        with no_hang():
            READ_CAFFEMODEL(model)
    except NetDissectError as err:
        assert str(model) in str(err) or model.name in str(err)


@pytest.mark.parametrize("lie", ["shape", "length"])
def test_caffemodel_declaring_absurd_sizes_is_refused(tmp_path: Path, lie: str):
    """A blob declaring 2**40 values in a file of a few bytes is refused without allocating them: a shape
    that the values do not fill, or a data field whose length runs past the end of the file."""
    net = proto.NetParameter(name="absurd")
    layer = net.layer.add(name="conv1", type="Convolution")
    blob = layer.blobs.add()
    if lie == "shape":
        blob.shape.dim.extend([2**20, 2**20])
        blob.data.extend([1.0, 2.0, 3.0, 4.0])
        data = net.SerializeToString()
    else:
        blob.shape.dim.extend([2])
        layer_bytes = layer.SerializeToString()
        # a hand-made data field (BlobProto field 5, length-delimited) declaring 2**40 bytes
        field = proto._encode_varint(5 << 3 | 2) + proto._encode_varint(2**40) + b"\0" * 8
        blob_bytes = blob.SerializeToString() + field
        body = proto._encode_varint(1 << 3 | 2) + proto._encode_varint(5) + b"conv1"
        body += proto._encode_varint(7 << 3 | 2) + proto._encode_varint(len(blob_bytes)) + blob_bytes
        data = proto._encode_varint(100 << 3 | 2) + proto._encode_varint(len(body)) + body
        assert layer_bytes  # the layer itself is well formed
    path = tmp_path / "absurd.caffemodel"
    path.write_bytes(data)
    with no_hang(), pytest.raises(NetDissectError) as err:
        READ_CAFFEMODEL(path)
    assert str(path) in str(err.value)
