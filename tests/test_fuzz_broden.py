"""Fuzzing the Broden readers: malformed CSV tables, index.csv rows, label PNGs and JPEGs.

Every case starts from the worked example (docs/broden-format.md §11) and breaks one file: random
bytes, random edits, one cell replaced by a tricky value, rows dropped, repeated or cut. Then
``BrodenDataset`` (and, when it accepts the tables, every item) must either work or raise
NetDissectError whose message names a file and a line; ``netdissect broden check`` must list the
problems without raising. Nothing else may escape (another exception, a hang, a crash).
"""

from __future__ import annotations

import io
import re
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from netdissect.broden import BrodenDataset, check_broden
from netdissect.errors import NetDissectError
from tests.conftest import WORKED_CODES, write_worked_example
from tests.fuzzing import TRICKY, count, fuzz, no_hang

TABLES = ["index.csv", "label.csv", "category.csv", *(f"c_{c}.csv" for c in WORKED_CODES)]
PNGS = ["dtd/banded_0002_color.png", "ade20k/ADE_train_00000001_part_1.png", "opensurfaces/100_material.png"]
JPEGS = ["dtd/banded_0002.jpg", "pascal/2008_000002.jpg"]
# a problem's place: "<file>, row N" (the tables) or "<image file> (index.csv row N" (images)
PLACE = re.compile(r"(\.csv, row \d+|\S \(index\.csv row \d+)")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return write_worked_example(tmp_path_factory.mktemp("fuzz") / "worked")


@pytest.fixture(scope="module")
def scratch(base: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "case"
    shutil.copytree(base, root)
    return root


def restore(base: Path, root: Path, *names: str) -> None:
    for name in names:
        shutil.copyfile(base / name, root / name)


def check_message(message: str) -> None:
    """Every problem the message lists names its file and line."""
    lines = [line.strip() for line in message.splitlines()]
    problems = [line for line in lines[1:] if line and not line.startswith(("...", "Run `"))] or lines[:1]
    for line in problems:
        assert PLACE.search(line), f"no file and line named in: {line!r}"


def read_everything(root: Path) -> None:
    """The reader's verdict: NetDissectError with file and line, or every item read; and the checker's."""
    try:
        with no_hang():
            ds = BrodenDataset(root)
            for i in range(len(ds)):
                ds[i]
    except NetDissectError as err:
        check_message(str(err))
    with no_hang():
        problems = check_broden(root, workers=1)
    assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)


# -- the tables ---------------------------------------------------------------------------------------

tricky = st.sampled_from(TRICKY) | st.text(max_size=12)


@st.composite
def broken_table(draw, text: str) -> bytes:
    """A damaged version of a table's CRLF text."""
    lines = text.split("\r\n")
    kind = draw(st.sampled_from(["bytes", "edit", "cell", "rows", "cut"]))
    if kind == "bytes":
        return draw(st.binary(max_size=400))
    if kind == "edit":
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(text)))
            cut = draw(st.integers(0, 5))
            text = text[:at] + draw(tricky) + text[at + cut :]
        return text.encode("utf-8", "surrogatepass")
    if kind == "cell":
        row = draw(st.integers(0, len(lines) - 2))
        cells = lines[row].split(",")
        cells[draw(st.integers(0, len(cells) - 1))] = draw(tricky)
        lines[row] = ",".join(cells)
        return "\r\n".join(lines).encode("utf-8", "surrogatepass")
    if kind == "rows":
        body = lines[1:-1]
        picked = draw(st.lists(st.integers(0, max(len(body) - 1, 0)), max_size=len(body) + 3)) if body else []
        return "\r\n".join([lines[0], *(body[i] for i in picked), ""]).encode()
    data = text.encode()
    return data[: draw(st.integers(0, len(data)))]


@pytest.mark.parametrize(
    "name, edit",
    [
        ("category.csv", lambda text: text.replace("\r\ncolor,", "\r\n\x1e,", 1)),  # a line separator as a name
        ("index.csv", lambda text: re.sub(r"\r\n[^,]*,", "\r\n ,", text, count=1)),  # an image named " "
    ],
)
def test_names_found_by_the_long_fuzz_run_are_refused_with_their_row(base: Path, scratch: Path, name, edit):
    """Two cases the random (long) run found: a category named by a control character, and an image
    path of spaces, gave messages without their file and row (the name broke the message's line)."""
    text = (base / name).read_bytes().decode()
    assert edit(text) != text
    (scratch / name).write_bytes(edit(text).encode())
    try:
        with pytest.raises(NetDissectError) as err:
            BrodenDataset(scratch)
        assert f"{name}, row 2" in str(err.value)
        check_message(str(err.value))
    finally:
        restore(base, scratch, name)


@fuzz(700)
@given(data=st.data())
def test_fuzz_tables(base: Path, scratch: Path, data):
    count("broden tables")
    name = data.draw(st.sampled_from(TABLES))
    (scratch / name).write_bytes(data.draw(broken_table((base / name).read_bytes().decode())))
    try:
        read_everything(scratch)
    finally:
        restore(base, scratch, name)


# -- label PNGs and JPEGs -------------------------------------------------------------------------


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def declared_png(width: int, height: int, color_type: int = 2) -> bytes:
    """A PNG header declaring any size (with a valid CRC) and a tiny, too short image stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + _png_chunk(b"IEND", b"")
    )


# (mode, format) pairs Pillow writes: label maps of every kind a tool might produce instead of 8-bit RGB
SAVED = [
    ("1", "PNG"),
    ("L", "PNG"),
    ("P", "PNG"),
    ("RGB", "PNG"),
    ("RGBA", "PNG"),
    ("LA", "PNG"),
    ("I;16", "PNG"),
    ("L", "JPEG"),
    ("RGB", "JPEG"),
    ("RGB", "GIF"),
    ("RGB", "BMP"),
    ("I", "TIFF"),
    ("F", "TIFF"),
    ("CMYK", "TIFF"),
    ("RGB", "TIFF"),
]


@st.composite
def broken_image(draw, valid: bytes) -> bytes:
    kind = draw(st.sampled_from(["bytes", "flip", "cut", "mode", "declared"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "flip":
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "cut":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if kind == "mode":
        mode, fmt = draw(st.sampled_from(SAVED))
        h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
        values = np.frombuffer(draw(st.binary(min_size=h * w * 3, max_size=h * w * 3)), np.uint8)
        out = io.BytesIO()
        Image.fromarray(values.reshape(h, w, 3)).convert(mode).save(out, format=fmt)
        return out.getvalue()
    side = st.sampled_from([0, 1, 4, 8, 65535, 100_000, 2**31 - 1])
    return declared_png(draw(side), draw(side), draw(st.sampled_from([0, 2, 3, 4, 6])))


@fuzz(400)
@given(data=st.data())
def test_fuzz_images(base: Path, scratch: Path, data):
    count("broden images")
    name = "images/" + data.draw(st.sampled_from(PNGS + JPEGS))
    (scratch / name).write_bytes(data.draw(broken_image((base / name).read_bytes())))
    try:
        read_everything(scratch)
    finally:
        restore(base, scratch, name)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's warning at open: expected
@pytest.mark.parametrize("side, says", [(12_000, "label map is 12000x12000"), (100_000, "decompression bomb")])
def test_a_declared_huge_png_is_refused_before_decoding(broden_example: Path, side: int, says: str):
    """A label PNG declaring a huge size is refused from its header, before any pixel is decoded (the
    file holds 16 bytes of image data; decoding 12000 x 12000 x 3 would take seconds and 400 MB)."""
    (broden_example / "images" / PNGS[0]).write_bytes(declared_png(side, side))
    ds = BrodenDataset(broden_example)
    started = time.perf_counter()
    with pytest.raises(NetDissectError, match=rf"banded_0002_color\.png \(index\.csv row 2\).*{says}"):
        ds[0]
    assert time.perf_counter() - started < 0.5
