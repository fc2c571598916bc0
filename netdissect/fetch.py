"""Safe downloads: resumable, verified, atomic; safe archive extraction.

``fetch(url, out, sha256=...)`` downloads ``url`` to ``out``:

- bytes go to ``out + ".part"``; an interrupted transfer (cut connection, stalled server, crash) is
  resumed from the ``.part`` file with an HTTP ``Range`` request, retried with exponential back-off;
- a connection that delivers nothing for ``timeout`` seconds counts as stalled and is retried;
- the finished file is checked against ``sha256`` (when given; otherwise its sha256 is printed so the
  user can pin it) and only then renamed to ``out``: ``out`` exists only when complete and verified.

``netdissect fetch`` (:func:`register`) is the command for datasets, source archives and weights.

``extract(archive, dest)`` unpacks a zip, tar, tar.gz (any compression tarfile reads) into a temporary
folder beside ``dest`` and renames it to ``dest`` when every member is out. Hostile archives are
refused with nothing written outside the temporary folder (see :func:`extract` for the list: paths
and links leading out, devices, duplicate names, decompression bombs); docs/reliability.md lists the
attacks the tests build.

A full disk, while downloading or unpacking, is an error naming the file (the ``.part`` file is kept
for resuming).
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import stat
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from netdissect.defaults import ARCHIVE_MAX_RATIO, ARCHIVE_RATIO_FLOOR
from netdissect.errors import NetDissectError
from netdissect.io import NO_SPACE, atomic_dir, disk_full_names, no_space_error, sha256_file

CHUNK = 1 << 20
# HTTP statuses worth retrying: timeouts, rate limiting, server-side trouble.
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}


class _Retryable(Exception):
    """A transfer problem that a later attempt may not have (network, stall, 5xx)."""


def fetch(
    url: str,
    out: str | os.PathLike,
    sha256: str | None = None,
    *,
    timeout: float = 60.0,
    retries: int = 5,
    backoff: float = 2.0,
    progress: bool = True,
) -> str:
    """Download ``url`` to ``out`` (resumable, retried, verified, atomic); return the file's sha256.

    ``timeout``: seconds without any byte before a connection counts as stalled.
    ``retries``: further attempts after a failed one, waiting ``backoff * 2**k`` seconds before the k-th.
    An ``out`` that already exists is kept when it matches ``sha256`` (or when no checksum is given).
    """
    out = Path(out)
    expected = _check_hex(sha256) if sha256 else None
    if out.exists():
        digest = sha256_file(out)
        if expected is None:
            print(f"fetch: {out} exists (sha256 {digest}); not downloading again", file=sys.stderr)
        if expected is None or digest == expected:
            return digest
        raise NetDissectError(
            f"{out} exists but its sha256 is {digest}, not the expected {expected}: delete {out} and fetch {url} again"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    for attempt in range(retries + 1):
        try:
            _download(url, part, timeout, progress)
            break
        except _Retryable as err:
            if attempt == retries:
                raise NetDissectError(
                    f"downloading {url} failed after {retries + 1} attempts ({err}); "
                    f"the {part.stat().st_size if part.exists() else 0} bytes received are "
                    f"kept in {part}; run the same command again to resume"
                ) from None
            wait = backoff * 2**attempt
            print(f"fetch: {url}: {err}; retrying in {wait:g} s", file=sys.stderr)
            time.sleep(wait)
    digest = sha256_file(part)
    if expected is not None and digest != expected:
        part.unlink()
        raise NetDissectError(
            f"{url}: sha256 of the download is {digest}, expected {expected}; the file was "
            f"deleted. Check the URL and the checksum (in the config or --sha256), then retry"
        )
    if expected is None:
        print(f"fetch: sha256 of {url} is {digest} (pin it with --sha256 or in the config)", file=sys.stderr)
    os.replace(part, out)
    return digest


def _check_hex(sha256: str) -> str:
    value = sha256.strip().lower()
    if len(value) != 64 or any(ch not in "0123456789abcdef" for ch in value):
        raise NetDissectError(f"--sha256 {sha256!r}: expected 64 hexadecimal digits")
    return value


def _download(url: str, part: Path, timeout: float, progress: bool) -> None:
    """One attempt: append the missing bytes to ``part``; raise _Retryable on transient trouble."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "netdissect-fetch"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except ValueError as err:
        raise NetDissectError(
            f"{url!r}: not a URL that can be downloaded ({err}); expected http:// or https://"
        ) from None
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the .part file is complete
            return
        if err.code in RETRY_STATUSES:
            raise _Retryable(f"HTTP {err.code} {err.reason}") from None
        raise NetDissectError(
            f"{url}: HTTP {err.code} {err.reason}; check the URL (in the config or on the "
            f"command line) or download the file by hand to the --out path"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, str):  # urllib's own verdict (e.g. an unsupported scheme): final
            raise NetDissectError(f"{url}: {reason}") from None
        raise _Retryable(f"cannot connect: {reason}") from None  # socket trouble: try again
    with response:
        if have and response.status != 206:  # server ignored Range: start over
            have = 0
        elif have and not response.headers.get("Content-Range", f"bytes {have}-").startswith(f"bytes {have}-"):
            part.unlink()
            raise _Retryable(f"server resumed at another offset ({response.headers['Content-Range']}); starting over")
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        bar = _progress_bar(url, total, have, progress)
        received = have
        try:
            with open(part, "ab" if have else "wb") as f:
                while True:
                    try:
                        block = response.read1(CHUNK)
                    except TimeoutError as err:
                        raise _Retryable(f"no data for {timeout:g} s (stalled connection)") from err
                    except (OSError, http.client.HTTPException) as err:
                        raise _Retryable(f"connection lost: {err!r}") from err
                    if not block:
                        break
                    with disk_full_names(part, "the bytes received so far are kept there, to resume from"):
                        f.write(block)
                    received += len(block)
                    if bar is not None:
                        bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
    if total is not None and received < total:
        raise _Retryable(f"connection closed after {received} of {total} bytes")


def _progress_bar(url: str, total: int | None, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=url.rsplit("/", 1)[-1] or url,
        file=sys.stderr,
    )


# --------------------------------------------------------------------------------------------------
# Archives


def extract(
    archive: str | os.PathLike, dest: str | os.PathLike, strip: int = 0, max_ratio: float = ARCHIVE_MAX_RATIO
) -> Path:
    """Unpack a zip or tar archive into the new folder ``dest``; return ``dest``.

    ``strip`` drops that many leading path components of every member (like ``tar --strip-components``);
    members with fewer components are skipped. Members are written into a temporary folder beside
    ``dest``, renamed to ``dest`` once all are out. Refused (NetDissectError, nothing left behind, nothing
    written outside the temporary folder): absolute member paths, ``..`` components, links whose target
    leaves the archive's folder (also through other links), device files and pipes, a name given twice
    (or a file where the archive also has a folder), encrypted or unknown-method zip members, a zip
    member whose data is longer than it declares, more unpacked bytes than ``max_ratio`` times the
    archive's size (past ``ARCHIVE_RATIO_FLOOR``; a "zip bomb") or than the free space, truncated or
    corrupt archives, and an existing non-empty ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise NetDissectError(
            f"archive {archive} does not exist; fetch it first (netdissect fetch URL --out {archive})"
        )
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise NetDissectError(f"--extract {dest} already exists and is not empty; remove it to extract again")
    with atomic_dir(dest) as tmp:
        budget = _Budget(archive, tmp, max_ratio)
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, tmp, strip, budget)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, tmp, strip, budget)
        else:
            raise NetDissectError(
                f"{archive} is neither a zip nor a tar archive (truncated or not an archive?); "
                f"delete it and fetch it again"
            )
        _check_links_stay_inside(archive, tmp)
    return dest


class _Budget:
    """How many unpacked bytes an archive may produce: ``max_ratio`` times its size (at least
    ARCHIVE_RATIO_FLOOR), and no more than the free space of the target's file system."""

    def __init__(self, archive: Path, tmp: Path, max_ratio: float) -> None:
        self.archive, self.max_ratio = archive, max_ratio
        self.size = archive.stat().st_size
        self.ratio_limit = max(max_ratio * self.size, ARCHIVE_RATIO_FLOOR)
        self.free = shutil.disk_usage(tmp).free
        self.total = 0

    def add(self, name: str, size: int) -> None:
        """Count a member's declared size; refuse once the total passes a limit."""
        self.total += max(size, 0)
        if self.total > self.ratio_limit:
            raise NetDissectError(
                f"{self.archive}: unpacks to more than {self.total:,} bytes (member {name!r} reached it) from "
                f"{self.size:,} bytes, a ratio above the limit of {self.max_ratio:g}: a decompression bomb or "
                f"not the archive you meant; refusing to extract. If you trust it, raise the limit with "
                f"--max-ratio"
            )
        if self.total > self.free:
            raise NetDissectError(
                f"{self.archive}: unpacking needs more than {self.total:,} bytes (member {name!r} reached it), "
                f"but only {self.free:,} bytes are free where it goes; free some space or extract elsewhere"
            )


class _Names:
    """The members' paths so far: a path given twice, or a file where another member makes a folder
    (or the other way round), is refused, so no member silently replaces or redirects another."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.kinds: dict[PurePosixPath, str] = {}

    def add(self, rel: PurePosixPath, kind: str) -> None:
        for parent in rel.parents:
            if parent != PurePosixPath() and self.kinds.setdefault(parent, "folder") != "folder":
                raise NetDissectError(
                    f"{self.archive}: member {str(rel)!r} lies inside {str(parent)!r}, which the archive also "
                    f"holds as a {self.kinds[parent]}; refusing to extract"
                )
        previous = self.kinds.get(rel)
        if previous is not None and not (previous == "folder" and kind == "folder"):
            raise NetDissectError(
                f"{self.archive}: member {str(rel)!r} appears twice (as a {previous}, then as a {kind}); "
                f"refusing to extract an archive whose members would overwrite each other"
            )
        self.kinds[rel] = kind


def _safe_relative(archive: Path, name: str, strip: int) -> PurePosixPath | None:
    """The member's path inside the target folder, or None when ``strip`` removes it entirely."""
    name = name.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise NetDissectError(f"{archive}: member {name!r} has an absolute path; refusing to extract this archive")
    if ".." in path.parts:
        raise NetDissectError(
            f"{archive}: member {name!r} contains '..' (would write outside the target folder); "
            f"refusing to extract this archive"
        )
    parts = [p for p in path.parts if p not in ("", ".")]
    if len(parts) <= strip:
        return None
    return PurePosixPath(*parts[strip:])


def _check_link(archive: Path, name: str, target: str, hard: bool) -> None:
    """Refuse a link whose target, resolved inside the archive, leaves the archive's folder."""
    target = target.replace("\\", "/")
    if PurePosixPath(target).is_absolute():
        raise NetDissectError(f"{archive}: link {name!r} points to the absolute path {target!r}; refusing to extract")
    base = PurePosixPath() if hard else PurePosixPath(name).parent
    depth = 0
    for part in (base / target).parts:
        if part == "..":
            depth -= 1
        elif part not in ("", "."):
            depth += 1
        if depth < 0:
            raise NetDissectError(
                f"{archive}: link {name!r} points outside the archive ({target!r}); refusing to extract"
            )


def _inside(root: Path, path: str | os.PathLike) -> bool:
    """Whether ``path``, with every symlink on it resolved as the disk is now, lies in ``root``."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top + os.sep)


def _check_links_stay_inside(archive: Path, tmp: Path) -> None:
    """Once every member is out: each symlink resolves inside the folder (links made in any order can
    point out only through each other, which the per-member checks cannot see)."""
    for folder, dirs, files in os.walk(tmp):
        for name in dirs + files:
            path = Path(folder, name)
            if path.is_symlink() and not _inside(tmp, path):
                raise NetDissectError(
                    f"{archive}: link {str(path.relative_to(tmp))!r} resolves outside the archive's folder "
                    f"(through other links); refusing to extract"
                )


def _unreadable(archive: Path, err: BaseException) -> NetDissectError:
    return NetDissectError(
        f"{archive}: cannot read the archive ({err}); it is probably truncated or corrupt: delete it and fetch it again"
    )


def _extract_tar(archive: Path, tmp: Path, strip: int, budget: _Budget) -> None:
    names = _Names(archive)
    member_name = ""
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                member_name = member.name
                rel = _safe_relative(archive, member.name, strip)
                if member.issym() or member.islnk():
                    _check_link(archive, member.name, member.linkname, member.islnk())
                    if member.islnk():
                        link_rel = _safe_relative(archive, member.linkname, strip)
                        if link_rel is None:
                            raise NetDissectError(f"{archive}: hard link {member.name!r} points into a stripped folder")
                        member.linkname = str(link_rel)
                elif not (member.isfile() or member.isdir()):
                    raise NetDissectError(f"{archive}: member {member.name!r} is a device or pipe; refusing to extract")
                if rel is None:
                    continue
                names.add(rel, "folder" if member.isdir() else "link" if member.issym() or member.islnk() else "file")
                if member.isfile():
                    budget.add(member.name, member.size)
                member.name = str(rel)
                if not _inside(tmp, tmp.joinpath(*rel.parts).parent):
                    raise NetDissectError(
                        f"{archive}: member {member_name!r} would be written through a link outside the "
                        f"archive's folder; refusing to extract"
                    )
                # The "data" filter re-checks paths and links and drops permissions/ownership oddities.
                tar.extract(member, tmp, filter="data")
    except tarfile.FilterError as err:
        raise NetDissectError(f"{archive}: member refused by the safety filter ({err}); refusing to extract") from None
    except OSError as err:
        if err.errno in NO_SPACE:
            raise no_space_error(tmp / member_name, err) from None
        raise _unreadable(archive, err) from None
    except (tarfile.TarError, EOFError, zipfile.BadZipFile) as err:
        raise _unreadable(archive, err) from None


def _extract_zip(archive: Path, tmp: Path, strip: int, budget: _Budget) -> None:
    names = _Names(archive)
    info = None
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:  # every declared size is known before anything is written
                if not info.is_dir():
                    budget.add(info.filename, info.file_size)
            for info in infos:
                rel = _safe_relative(archive, info.filename, strip)
                is_link = stat.S_ISLNK(info.external_attr >> 16)
                if info.flag_bits & 0x1:
                    raise NetDissectError(
                        f"{archive}: member {info.filename!r} is encrypted; netdissect does not unpack "
                        f"encrypted archives"
                    )
                if is_link:
                    target = zf.read(info).decode("utf-8")
                    _check_link(archive, info.filename, target, hard=False)
                if rel is None:
                    continue
                names.add(rel, "folder" if info.is_dir() else "link" if is_link else "file")
                path = tmp.joinpath(*rel.parts)
                if info.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                if not _inside(tmp, path.parent):
                    raise NetDissectError(
                        f"{archive}: member {info.filename!r} would be written through a link outside the "
                        f"archive's folder; refusing to extract"
                    )
                if is_link:
                    os.symlink(target, path)
                    continue
                _copy_member(archive, zf, info, path)
    except OSError as err:
        if err.errno in NO_SPACE:
            raise no_space_error(tmp / (info.filename if info else ""), err) from None
        raise _unreadable(archive, err) from None
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, UnicodeDecodeError) as err:
        raise _unreadable(archive, err) from None
    except NotImplementedError as err:  # a compression method zipfile does not know
        raise NetDissectError(
            f"{archive}: member {info.filename!r} uses a compression method netdissect cannot unpack ({err}); "
            f"repack it as a plain zip (deflate) or tar"
        ) from None


def _copy_member(archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> None:
    """Copy one zip member to the new file ``path`` ("x": never through an existing file or link),
    refusing data longer than the member declares."""
    written = 0
    with zf.open(info) as src, open(path, "xb") as dst:
        while block := src.read(CHUNK):
            written += len(block)
            if written > info.file_size:
                raise NetDissectError(
                    f"{archive}: member {info.filename!r} holds more data than the {info.file_size:,} bytes it "
                    f"declares; refusing to extract"
                )
            dst.write(block)


# --------------------------------------------------------------------------------------------------
# CLI: `netdissect fetch` (datasets, source archives, weights)


def register(sub, *groups) -> None:
    """Add ``fetch`` to the top-level commands."""
    p = sub.add_parser(
        "fetch",
        help="download a file (resumable, verified, atomic), optionally extract it",
        description="Download URL to --out: resumed from OUT.part with HTTP Range, retried with "
        "back-off, checked against --sha256 (printed when not given), renamed to OUT "
        "only when complete. --extract unpacks a zip/tar archive into a new folder, "
        "refusing members that would land outside it.",
    )
    p.add_argument("url")
    p.add_argument("--out", required=True, help="where the downloaded file goes")
    p.add_argument("--sha256", help="expected sha256 (64 hex digits)")
    p.add_argument("--extract", metavar="DIR", help="unpack the archive into this new folder")
    p.add_argument(
        "--strip",
        type=int,
        default=0,
        metavar="N",
        help="drop N leading path components of archive members (like tar --strip-components)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds without data before a connection counts as stalled (default 60)",
    )
    p.add_argument("--retries", type=int, default=5, help="attempts after the first (default 5)")
    p.add_argument(
        "--max-ratio",
        type=float,
        default=ARCHIVE_MAX_RATIO,
        metavar="R",
        help=f"refuse an archive that unpacks to more than R times its size (default {ARCHIVE_MAX_RATIO:g}; "
        f"archives unpacking to less than {ARCHIVE_RATIO_FLOOR >> 20} MiB are never refused for it)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_fetch)


def _fetch(args: argparse.Namespace) -> int:
    fetch(args.url, args.out, args.sha256, timeout=args.timeout, retries=args.retries, progress=not args.no_progress)
    if args.extract:
        extract(args.out, args.extract, strip=args.strip, max_ratio=args.max_ratio)
    return 0
