"""netdissect.fetch against a real HTTP server on 127.0.0.1 (Range, cut-offs, stalls, 404) and archives."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from netdissect.cli import main
from netdissect.errors import NetDissectError
from netdissect.fetch import extract, fetch

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB, not a multiple of the chunk size
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Server:
    """A threaded HTTP server serving PAYLOAD at /<mode>/file.bin; records every request's headers.

    Modes: ``ok``; ``cut`` (the first request sends half the bytes then closes; later requests are
    served normally); ``stall`` (sends a few bytes then goes silent for a long time); ``missing`` (404);
    ``flaky`` (the first request gets 503); ``norange`` (ignores Range headers).
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.stop_stalling = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                server.requests.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
                mode = self.path.strip("/").split("/")[0]
                if mode == "missing":
                    self.send_error(404, "Not Found")
                    return
                if mode == "flaky" and len(server.requests) == 1:
                    self.send_error(503, "Service Unavailable")
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and mode != "norange":
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                body = PAYLOAD[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                first = len(server.requests) == 1
                if mode == "cut" and first:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if mode == "stall":
                    self.wfile.write(body[:1000])
                    self.wfile.flush()
                    server.stop_stalling.wait(10)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{mode}/file.bin"

    def close(self) -> None:
        self.stop_stalling.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_full_download_verified(server, tmp_path):
    out = tmp_path / "d" / "file.bin"
    digest = fetch(server.url("ok"), out, PAYLOAD_SHA, progress=False)
    assert digest == PAYLOAD_SHA
    assert out.read_bytes() == PAYLOAD
    assert not (tmp_path / "d" / "file.bin.part").exists()
    assert "range" not in server.requests[0]


def test_missing_checksum_is_printed(server, tmp_path, capsys):
    assert main(["fetch", server.url("ok"), "--out", str(tmp_path / "f.bin"), "--no-progress"]) == 0
    assert PAYLOAD_SHA in capsys.readouterr().err


def test_cut_transfer_is_resumed_with_range(server, tmp_path):
    out = tmp_path / "file.bin"
    digest = fetch(server.url("cut"), out, PAYLOAD_SHA, progress=False, backoff=0.01)
    assert digest == PAYLOAD_SHA and out.read_bytes() == PAYLOAD
    assert len(server.requests) == 2
    assert "range" not in server.requests[0]
    half = len(PAYLOAD) // 2
    assert server.requests[1]["range"] == f"bytes={half}-"


def test_resume_from_existing_part_file(server, tmp_path):
    out = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:12345])
    fetch(server.url("ok"), out, PAYLOAD_SHA, progress=False)
    assert server.requests[0]["range"] == "bytes=12345-"
    assert out.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts(server, tmp_path):
    out = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"garbage" * 10)
    fetch(server.url("norange"), out, PAYLOAD_SHA, progress=False)
    assert out.read_bytes() == PAYLOAD


def test_wrong_checksum_leaves_nothing(server, tmp_path):
    out = tmp_path / "file.bin"
    code = main(["fetch", server.url("ok"), "--out", str(out), "--sha256", "0" * 64, "--no-progress"])
    assert code == 2
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(NetDissectError, match="sha256 of the download is " + PAYLOAD_SHA):
        fetch(server.url("ok"), out, "0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_404_is_a_clear_error(server, tmp_path):
    out = tmp_path / "file.bin"
    with pytest.raises(NetDissectError, match="HTTP 404"):
        fetch(server.url("missing"), out, progress=False)
    assert list(tmp_path.iterdir()) == []
    assert len(server.requests) == 1  # a 404 is not retried


def test_server_error_is_retried(server, tmp_path):
    out = tmp_path / "file.bin"
    assert fetch(server.url("flaky"), out, PAYLOAD_SHA, progress=False, backoff=0.01) == PAYLOAD_SHA
    assert len(server.requests) == 2


def test_not_a_url(tmp_path):
    with pytest.raises(NetDissectError, match="http:// or https://"):
        fetch("datasets/file.zip", tmp_path / "f", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_stalled_server_times_out(server, tmp_path):
    out = tmp_path / "file.bin"
    t0 = time.monotonic()
    with pytest.raises(NetDissectError, match="stalled"):
        fetch(server.url("stall"), out, progress=False, timeout=0.3, retries=1, backoff=0.01)
    assert time.monotonic() - t0 < 5
    assert not out.exists()
    assert len(server.requests) == 2
    assert server.requests[1]["range"] == "bytes=1000-"  # the retry resumed


# --------------------------------------------------------------------------------------------------
# archives


def _tar(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for m in members:
            payload = data.get(m.name)
            if payload is not None:
                m.size = len(payload)
            tar.addfile(m, io.BytesIO(payload) if payload is not None else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def test_tar_gz_extracts_with_strip(tmp_path):
    arc = _tar(
        tmp_path / "a.tar.gz",
        [_file("top/x/a.txt"), _file("top/b.txt"), _link("top/x/l", "../b.txt")],
        {"top/x/a.txt": b"A", "top/b.txt": b"B"},
    )
    dest = extract(arc, tmp_path / "out", strip=1)
    assert (dest / "x" / "a.txt").read_bytes() == b"A"
    assert (dest / "b.txt").read_bytes() == b"B"
    assert (dest / "x" / "l").resolve() == (dest / "b.txt").resolve()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    "bad, match",
    [
        (_file("../evil.txt"), r"'\.\.'"),
        (_file("/tmp/evil_abs.txt"), "absolute"),
        (_link("ok/link", "../../evil"), "outside"),
        (_link("ok/link", "/etc/passwd"), "absolute"),
        (_link("ok/hard", "../evil", tarfile.LNKTYPE), "outside"),
    ],
)
def test_tar_refuses_members_pointing_out(tmp_path, bad, match):
    work = tmp_path / "work"
    work.mkdir()
    data = {"ok/good.txt": b"G", bad.name: b"E"} if bad.isfile() else {"ok/good.txt": b"G"}
    arc = _tar(work / "a.tar", [_file("ok/good.txt"), bad], data, mode="w")
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(NetDissectError, match=match):
        extract(arc, work / "out")
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    assert not Path("/tmp/evil_abs.txt").exists()


def _zip_with(path: Path, name: str, data: bytes, symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok/good.txt", b"G")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = 0o120777 << 16
        zf.writestr(info, data)
    return path


@pytest.mark.parametrize(
    "name, data, symlink, match",
    [
        ("../evil.txt", b"E", False, r"'\.\.'"),
        ("ok/../../evil.txt", b"E", False, r"'\.\.'"),
        ("/abs_evil.txt", b"E", False, "absolute"),
        ("ok/link", b"../../outside", True, "outside"),
    ],
)
def test_zip_refuses_members_pointing_out(tmp_path, name, data, symlink, match):
    work = tmp_path / "work"
    work.mkdir()
    arc = _zip_with(work / "a.zip", name, data, symlink)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(NetDissectError, match=match):
        extract(arc, work / "out")
    assert sorted(tmp_path.rglob("*")) == before


def test_extract_into_existing_folder(tmp_path):
    arc = _zip_with(tmp_path / "a.zip", "ok/sub/c.txt", b"C")
    (tmp_path / "empty").mkdir()  # e.g. made by Snakemake for an output inside it
    assert (extract(arc, tmp_path / "empty", strip=1) / "sub" / "c.txt").read_bytes() == b"C"
    with pytest.raises(NetDissectError, match="not empty"):
        extract(arc, tmp_path / "empty")


def test_zip_extracts(tmp_path):
    arc = _zip_with(tmp_path / "a.zip", "ok/sub/c.txt", b"C")
    dest = extract(arc, tmp_path / "out")
    assert (dest / "ok" / "sub" / "c.txt").read_bytes() == b"C"
    assert (dest / "ok" / "good.txt").read_bytes() == b"G"


@pytest.mark.parametrize("suffix", ["tar.gz", "zip"])
def test_truncated_archive_is_refused(tmp_path, suffix):
    big = os.urandom(200_000)
    if suffix == "zip":
        with zipfile.ZipFile(tmp_path / "full", "w") as zf:
            zf.writestr("a/big.bin", big)
            zf.writestr("a/more.bin", big)
    else:
        _tar(tmp_path / "full", [_file("a/big.bin"), _file("a/more.bin")], {"a/big.bin": big, "a/more.bin": big})
    data = (tmp_path / "full").read_bytes()
    arc = tmp_path / f"cut.{suffix}"
    arc.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(NetDissectError, match="truncated or corrupt|neither a zip"):
        extract(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["full", arc.name])


def test_cli_fetch_and_extract(server, tmp_path):
    # serve a zip through the real server by replacing the payload for this test
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("top/inner.txt", b"hello")
    global PAYLOAD
    saved, PAYLOAD = PAYLOAD, buf.getvalue()
    try:
        out, dest = tmp_path / "a.zip", tmp_path / "x"
        code = main(
            [
                "fetch",
                server.url("ok"),
                "--out",
                str(out),
                "--extract",
                str(dest),
                "--strip",
                "1",
                "--sha256",
                hashlib.sha256(PAYLOAD).hexdigest(),
                "--no-progress",
            ]
        )
        assert code == 0
        assert (dest / "inner.txt").read_bytes() == b"hello"
    finally:
        PAYLOAD = saved
