"""Fuzzing the packed-labels reader (netdissect.broden.pack.PackedLabels): a damaged index.npz or
pixels.npy.

Cases start from the pack of the worked example and break one file: random bytes, flipped bytes, a
cut, or (index.npz) one entry deleted, replaced by an array of another type or shape, or with one
value changed. ``PackedLabels`` must refuse with NetDissectError naming the pack's file (and, for
index.npz, the entry), or accept a pack whose every item has the dataset's layer sizes and only
label numbers of the dataset.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netdissect.broden import BrodenDataset
from netdissect.broden.pack import INDEX, INDEX_KEYS, PIXELS, PackedLabels, pack_labels
from netdissect.errors import NetDissectError
from tests.conftest import write_worked_example
from tests.fuzzing import count, fuzz, no_hang


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = write_worked_example(tmp_path_factory.mktemp("fuzzpack") / "worked")
    base = root.parent / "base"
    pack_labels(root, base, workers=0, progress=False)
    case = root.parent / "case"
    shutil.copytree(base, case)
    with np.load(base / INDEX) as z:
        arrays = {k: z[k] for k in z.files}
    return root, base, case, arrays, BrodenDataset(root, load_images=False, load_labels=False)


values = st.sampled_from([0, 1, -1, 2, 3, 4, 16, 22, 23, 65535, 2**31, -(2**63), 2**62])
dtypes = st.sampled_from([np.int64, np.int32, np.uint16, np.float64, np.bool_, "U8"])


@st.composite
def damaged_index(draw, arrays: dict[str, np.ndarray]) -> bytes:
    kind = draw(st.sampled_from(["delete", "replace", "value", "bytes"]))
    arrays = dict(arrays)
    key = draw(st.sampled_from(INDEX_KEYS))
    if kind == "delete":
        del arrays[key]
    elif kind == "replace":
        shape = draw(st.lists(st.integers(0, 5), max_size=2))
        data = np.array(draw(st.lists(values, min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))))
        arrays[key] = data.reshape(shape).astype(draw(dtypes))
    elif kind == "value" and arrays[key].size and arrays[key].dtype.kind in "iu":
        changed = arrays[key].copy().reshape(-1)
        changed[draw(st.integers(0, changed.size - 1))] = (
            draw(values) % (2**63) if changed.dtype.kind == "u" else draw(values)
        )
        arrays[key] = changed.reshape(arrays[key].shape)
    out = io.BytesIO()
    np.savez(out, **arrays)
    data = out.getvalue()
    if kind == "bytes":
        data = bytearray(data)
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        data = bytes(data[: draw(st.integers(0, len(data)))])
    return data


@st.composite
def damaged_pixels(draw, valid: bytes) -> bytes:
    kind = draw(st.sampled_from(["bytes", "flip", "cut", "grow"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "cut":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if kind == "grow":
        return valid + draw(st.binary(min_size=1, max_size=8))
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 6))):
        data[draw(st.integers(0, 127))] = draw(st.integers(0, 255))  # the .npy header
    return bytes(data)


def read_pack(case: Path, ds: BrodenDataset) -> None:
    try:
        with no_hang():
            labels = PackedLabels(case, ds)
            items = [labels[i] for i in range(len(labels))]
    except NetDissectError as err:
        assert str(case) in str(err) and (INDEX in str(err) or PIXELS in str(err)), str(err)
        return
    sizes = ds.index[["sh", "sw"]].to_numpy()
    for item, (sh, sw) in zip(items, sizes):
        assert tuple(item["pixel_labels"].shape[1:]) == (sh, sw)
        assert int(item["image_labels"].numpy().max(initial=0)) < ds.num_labels
        assert int(item["label_pixels"][0].numpy().max(initial=0)) < ds.num_labels


@fuzz(250)
@given(data=st.data())
def test_fuzz_pack_index(setup, data):
    count("packed labels index")
    root, base, case, arrays, ds = setup
    (case / INDEX).write_bytes(data.draw(damaged_index(arrays)))
    try:
        read_pack(case, ds)
    finally:
        shutil.copyfile(base / INDEX, case / INDEX)


@fuzz(100)
@given(data=st.data())
def test_fuzz_pack_pixels(setup, data):
    count("packed labels pixels")
    root, base, case, arrays, ds = setup
    (case / PIXELS).write_bytes(data.draw(damaged_pixels((base / PIXELS).read_bytes())))
    try:
        read_pack(case, ds)
    finally:
        shutil.copyfile(base / PIXELS, case / PIXELS)


def test_an_entry_that_does_not_fit_is_named(setup, tmp_path):
    root, base, case, arrays, ds = setup
    shutil.copytree(base, tmp_path / "pack")
    broken = dict(arrays, layer_start=arrays["layer_start"][::-1].copy())
    np.savez(tmp_path / "pack" / INDEX, **broken)
    with pytest.raises(NetDissectError, match=r"index\.npz, entry 'layer_start'.*pack-labels"):
        PackedLabels(tmp_path / "pack", ds)
