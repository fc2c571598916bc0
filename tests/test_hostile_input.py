"""Hostile input is refused with a NetDissectError, and nothing is written outside the target.

- archives for ``fetch --extract`` (built here): paths and links leading out (also through other
  links), devices and pipes, names given twice, encrypted and unknown-method members, lying sizes,
  decompression bombs;
- weights: pickles that would run code when unpickled (torch.load(weights_only=True) refuses them);
- index.csv: image and label paths that leave the dataset folder (reader and checker).

``ATTACKS`` below is the list docs/reliability.md counts ("attacks refused").
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from netdissect.errors import NetDissectError
from netdissect.fetch import extract

OUTSIDE = "evil.txt"  # what a successful attack would create beside the target folder


# -- building archives ------------------------------------------------------------------------------


def _member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "", data: bytes = b"E") -> tuple:
    return name, kind, target, data


def _tar(path: Path, members: list[tuple], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, kind, target, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            payload = data if kind == tarfile.REGTYPE else None
            info.size = len(payload) if payload is not None else 0
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def _zip(path: Path, members: list[tuple[str, bytes, bool]]) -> Path:
    """Members (name, data, is_symlink); a symlink's data is its target."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, symlink in members:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if symlink:
                info.external_attr = 0o120777 << 16
            zf.writestr(info, data)
    return path


def _patch_zip(path: Path, **fields: int) -> Path:
    """Overwrite header fields of every member in both its local and central header: ``flags``,
    ``method`` (compression), ``size`` (uncompressed size)."""
    data = bytearray(path.read_bytes())
    offsets = {
        "PK\x03\x04": {"flags": 6, "method": 8, "size": 22},
        "PK\x01\x02": {"flags": 8, "method": 10, "size": 24},
    }
    for signature, where in offsets.items():
        start = 0
        while (start := data.find(signature.encode("latin-1"), start)) >= 0:
            for field, value in fields.items():
                fmt = "<I" if field == "size" else "<H"
                struct.pack_into(fmt, data, start + where[field], value)
            start += 4
    path.write_bytes(bytes(data))
    return path


GOOD = _member("ok/good.txt", data=b"G")
ZEROS = 65 << 20  # more than ARCHIVE_RATIO_FLOOR, compresses ~1000:1


def _tar_bomb(path: Path) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("ok/zeros.bin")
        info.size = ZEROS
        tar.addfile(info, io.BytesIO(bytes(ZEROS)))
    return path


def _zip_bomb(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ok/zeros.bin", bytes(ZEROS))
    return path


def _zip_store(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("ok/good.txt", b"G" * 1000)
    return path


# (id, builder(path) -> archive, what the message says)
ARCHIVES = [
    ("tar-dotdot", lambda p: _tar(p / "a.tar", [GOOD, _member("../evil.txt")]), r"'\.\.'"),
    ("tar-dotdot-inner", lambda p: _tar(p / "a.tar", [GOOD, _member("ok/../../evil.txt")]), r"'\.\.'"),
    ("tar-absolute", lambda p: _tar(p / "a.tar", [GOOD, _member("/tmp/netdissect_evil_abs.txt")]), "absolute"),
    ("tar-symlink-out", lambda p: _tar(p / "a.tar", [GOOD, _member("ok/l", tarfile.SYMTYPE, "../../x")]), "outside"),
    ("tar-symlink-abs", lambda p: _tar(p / "a.tar", [GOOD, _member("ok/l", tarfile.SYMTYPE, "/etc")]), "absolute"),
    ("tar-hardlink-out", lambda p: _tar(p / "a.tar", [GOOD, _member("ok/h", tarfile.LNKTYPE, "../x")]), "outside"),
    (
        "tar-hardlink-abs",
        lambda p: _tar(p / "a.tar", [GOOD, _member("ok/h", tarfile.LNKTYPE, "/etc/passwd")]),
        "absolute",
    ),
    (
        "tar-symlink-chain",  # b/c -> .. stays inside; a -> b/c/.. leaves through it
        lambda p: _tar(
            p / "a.tar", [GOOD, _member("b/c", tarfile.SYMTYPE, ".."), _member("a", tarfile.SYMTYPE, "b/c/..")]
        ),
        "outside",
    ),
    (
        "tar-write-through-link",
        lambda p: _tar(p / "a.tar", [GOOD, _member("ok/l", tarfile.SYMTYPE, "."), _member("ok/l/x.txt")]),
        "link",
    ),
    ("tar-char-device", lambda p: _tar(p / "a.tar", [GOOD, _member("ok/tty", tarfile.CHRTYPE)]), "device or pipe"),
    ("tar-block-device", lambda p: _tar(p / "a.tar", [GOOD, _member("ok/sda", tarfile.BLKTYPE)]), "device or pipe"),
    ("tar-fifo", lambda p: _tar(p / "a.tar", [GOOD, _member("ok/pipe", tarfile.FIFOTYPE)]), "device or pipe"),
    ("tar-duplicate", lambda p: _tar(p / "a.tar", [GOOD, _member("ok/good.txt", data=b"X")]), "twice"),
    (
        "tar-file-then-folder",
        lambda p: _tar(p / "a.tar", [GOOD, _member("ok/good.txt/inner.txt")]),
        "also holds as a file",
    ),
    ("tar-gz-bomb", lambda p: _tar_bomb(p / "a.tar.gz"), "ratio above the limit"),
    (
        "zip-dotdot",
        lambda p: _zip(p / "a.zip", [("ok/good.txt", b"G", False), ("../evil.txt", b"E", False)]),
        r"'\.\.'",
    ),
    ("zip-backslash-dotdot", lambda p: _zip(p / "a.zip", [("..\\evil.txt", b"E", False)]), r"'\.\.'"),
    ("zip-absolute", lambda p: _zip(p / "a.zip", [("/tmp/netdissect_evil_abs.txt", b"E", False)]), "absolute"),
    ("zip-drive", lambda p: _zip(p / "a.zip", [("C:/evil.txt", b"E", False)]), "absolute"),
    ("zip-symlink-out", lambda p: _zip(p / "a.zip", [("ok/l", b"../../outside", True)]), "outside"),
    ("zip-symlink-abs", lambda p: _zip(p / "a.zip", [("ok/l", b"/etc", True)]), "absolute"),
    (
        "zip-symlink-chain",  # resolved only once both links exist
        lambda p: _zip(p / "a.zip", [("a", b"b/c/..", True), ("b/c", b"..", True)]),
        "resolves outside",
    ),
    (
        "zip-write-through-link",
        lambda p: _zip(p / "a.zip", [("b/c", b"..", True), ("a", b"b/c/..", True), ("a/evil.txt", b"E", False)]),
        "link",
    ),
    ("zip-duplicate", lambda p: _zip(p / "a.zip", [("ok/x.txt", b"1", False), ("ok/x.txt", b"2", False)]), "twice"),
    (
        "zip-file-then-folder",
        lambda p: _zip(p / "a.zip", [("ok/x", b"1", False), ("ok/x/y.txt", b"2", False)]),
        "also holds as a file",
    ),
    ("zip-bomb", lambda p: _zip_bomb(p / "a.zip"), "ratio above the limit"),
    (
        "zip-declares-huge",  # a small member claiming 4 GB: refused before anything is written
        lambda p: _patch_zip(_zip(p / "a.zip", [("ok/x.bin", b"1" * 100, False)]), size=0xFFFFFFF0),
        "ratio above the limit",
    ),
    (
        "zip-declares-less",  # data longer than declared
        lambda p: _patch_zip(_zip_store(p / "a.zip"), size=10),
        "truncated or corrupt|more data",
    ),
    ("zip-encrypted", lambda p: _patch_zip(_zip(p / "a.zip", [("ok/x.txt", b"1", False)]), flags=1), "encrypted"),
    (
        "zip-unknown-method",
        lambda p: _patch_zip(_zip(p / "a.zip", [("ok/x.txt", b"1", False)]), method=99),
        "compression method",
    ),
]


def _tree(root: Path) -> list[tuple[str, bytes | str | None]]:
    out = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out.append((str(path), os.readlink(path)))
        elif path.is_file():
            out.append((str(path), path.read_bytes()))
        else:
            out.append((str(path), None))
    return out


@pytest.mark.parametrize("build, match", [a[1:] for a in ARCHIVES], ids=[a[0] for a in ARCHIVES])
def test_hostile_archive_is_refused(tmp_path: Path, build, match):
    work = tmp_path / "work"
    work.mkdir()
    archive = build(work)
    before = _tree(tmp_path)
    with pytest.raises(NetDissectError, match=match):
        extract(archive, work / "out")
    assert _tree(tmp_path) == before  # nothing written anywhere: not in the target, not beside it
    assert not Path("/tmp/netdissect_evil_abs.txt").exists()


def test_folders_listed_before_their_members_are_accepted(tmp_path: Path):
    """Archives made by tar and zip tools list each folder, then what is inside (and may list a folder
    twice): none of that is a conflict."""
    tar = _tar(
        tmp_path / "a.tar",
        [_member("top", tarfile.DIRTYPE), _member("top/images", tarfile.DIRTYPE), _member("top/images/x.txt"),
         _member("top/images", tarfile.DIRTYPE), _member("top/l", tarfile.SYMTYPE, "images/x.txt")],
    )  # fmt: skip
    out = extract(tar, tmp_path / "out")
    assert (out / "top" / "l").read_bytes() == b"E"
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("top/", b"")
        zf.writestr("top/images/", b"")
        zf.writestr("top/images/x.txt", b"X")
    assert (extract(tmp_path / "a.zip", tmp_path / "out2", strip=1) / "images" / "x.txt").read_bytes() == b"X"


def test_archive_on_the_limit_is_accepted(tmp_path: Path):
    """The limits leave real archives alone: a zip of 65 MiB of random bytes (ratio 1) and a small,
    very compressible text member (ratio far above 100, but below ARCHIVE_RATIO_FLOOR)."""
    with zipfile.ZipFile(tmp_path / "a.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("top/random.bin", os.urandom(ZEROS))
        zf.writestr("top/index.csv", b"image,split\n" * 100_000)
    out = extract(tmp_path / "a.zip", tmp_path / "out", strip=1)
    assert (out / "random.bin").stat().st_size == ZEROS
    assert (out / "index.csv").read_bytes() == b"image,split\n" * 100_000


def test_max_ratio_can_be_raised(tmp_path: Path):
    archive = _zip_bomb(tmp_path / "a.zip")
    out = extract(archive, tmp_path / "out", max_ratio=2000)
    assert (out / "ok" / "zeros.bin").stat().st_size == ZEROS


# -- hostile weights --------------------------------------------------------------------------------


class _RunsCode:
    """Unpickling this calls os.system: a checkpoint that is a program."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _pickle_payloads(tmp_path: Path, marker: Path) -> dict[str, Path]:
    payload = {"state_dict": {"weight": torch.zeros(2)}, "extra": _RunsCode(marker)}
    files = {"zip": tmp_path / "zip.pt", "legacy": tmp_path / "legacy.pt", "pickle": tmp_path / "plain.pkl"}
    torch.save(payload, files["zip"])
    torch.save(payload, files["legacy"], _use_new_zipfile_serialization=False)
    files["pickle"].write_bytes(pickle.dumps({"extra": _RunsCode(marker)}, protocol=2))  # torch.load reads protocol 2
    return files


@pytest.mark.parametrize("kind", ["zip", "legacy", "pickle"])
def test_pickle_with_code_is_refused(tmp_path: Path, kind: str):
    from netdissect.models.loading import load_weights

    marker = tmp_path / "pwned"
    path = _pickle_payloads(tmp_path, marker)[kind]
    with pytest.raises(NetDissectError) as err:
        load_weights(torch.nn.Linear(2, 1), path)
    assert not marker.exists(), "the payload ran"
    message = str(err.value)
    assert str(path) in message and "system" in message  # names the file and what it would have run
    assert "weights_only" in message and "state_dict" in message  # says what to do


def test_pickle_with_code_is_refused_by_the_cli(tmp_path: Path, broden_example: Path):
    marker = tmp_path / "pwned"
    path = _pickle_payloads(tmp_path, marker)["zip"]
    proc = subprocess.run(
        ["netdissect", "layers", "--model", "resnet18", "--weights", str(path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert "refused" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


# -- paths in index.csv that leave the dataset folder ---------------------------------------------

INDEX_PATHS = [
    ("image-dotdot", "dtd/banded_0002.jpg,", "../../outside.jpg,", "image"),
    ("image-absolute", "dtd/banded_0002.jpg,", "/etc/passwd,", "image"),
    ("image-inner-dotdot", "dtd/banded_0002.jpg,", "dtd/../../../outside.jpg,", "image"),
    ("image-backslash", "dtd/banded_0002.jpg,", "..\\..\\outside.jpg,", "image"),
    ("png-dotdot", "dtd/banded_0002_color.png", "../../outside.png", "color"),
    ("png-absolute", "dtd/banded_0002_color.png", "/etc/outside.png", "color"),
]


@pytest.mark.parametrize("old, new, column", [p[1:] for p in INDEX_PATHS], ids=[p[0] for p in INDEX_PATHS])
def test_index_paths_leaving_the_dataset_are_refused(broden_example: Path, old: str, new: str, column: str):
    from netdissect.broden import BrodenDataset, check_broden

    index = broden_example / "index.csv"
    text = index.read_bytes().decode()
    assert old in text
    index.write_bytes(text.replace(old, new, 1).encode())
    with pytest.raises(NetDissectError, match=rf"index\.csv, row 2, column '{column}'"):
        BrodenDataset(broden_example)
    problems = check_broden(broden_example, workers=1)
    assert any("index.csv, row 2" in p and f"column '{column}'" in p for p in problems), problems


ATTACKS = (
    len(ARCHIVES) + 3 + len(INDEX_PATHS)
)  # + the three pickle files; the caffemodel hook: tests/test_fuzz_caffe.py


def test_attack_count_is_what_the_docs_say():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    assert f"{ATTACKS} attacks" in docs


@pytest.fixture(autouse=True)
def _nothing_escaped():
    yield
    for leftover in (Path("/tmp/netdissect_evil_abs.txt"),):
        if leftover.exists():
            leftover.unlink()
            pytest.fail(f"an attack wrote {leftover}")
