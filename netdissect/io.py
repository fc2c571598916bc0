"""File output that survives faults: atomic writes, a full disk, killed writers, concurrent runs; and
file checksums.

- Atomic writes (:func:`atomic_path`, :func:`atomic_dir` and the ``save_*`` helpers): the data goes to
  a temporary name in the same folder and is renamed onto the target only when complete, so an
  interrupted run never leaves a file that looks finished. A temporary's name starts with ``.`` and
  holds ``.netdissect-tmp``; its writer holds an ``flock`` on it while writing. A writer killed with
  SIGKILL leaves its temporary behind, unlocked: the first atomic write of any later process into that
  folder removes it (:func:`remove_stale_temporaries`), never the temporary of a live writer.
- A full disk (``ENOSPC``, ``EDQUOT``) while writing becomes a :class:`NetDissectError` naming the file
  (:func:`no_space_error`); the unfinished temporary is removed.
- :func:`exclusive_lock`: one process at a time per output (``flock``; the kernel releases the lock
  when its holder dies, so a lock is never stale).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from netdissect.errors import NetDissectError

if TYPE_CHECKING:
    import numpy as np


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once, at import (os.umask can only be read by setting it)

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})  # "disk full" and "quota exceeded"
TEMP_MARK = ".netdissect-tmp"  # in the name of every temporary of an atomic write
_SWEPT: set[str] = set()  # folders this process has already cleared of stale temporaries


# --------------------------------------------------------------------------------------------------
# A full disk


def no_space_error(
    path: str | os.PathLike, err: OSError, left: str = "the unfinished file was removed"
) -> NetDissectError:
    """The error for a write to ``path`` that failed for lack of space (``err``: ENOSPC or EDQUOT);
    ``left`` says what became of the unfinished output."""
    folder = Path(path).parent
    try:
        free = f"{shutil.disk_usage(folder).free:,} bytes were free"
    except OSError:
        free = "free space unknown"
    return NetDissectError(
        f"{path}: no space left on the device holding {folder} ({err.strerror}; {free}) while writing; "
        f"{left}. Free some space (or write elsewhere) and run the same command again."
    )


@contextlib.contextmanager
def disk_full_names(path: str | os.PathLike, left: str = "the unfinished file was removed") -> Iterator[None]:
    """Turn a full disk inside the block into :func:`no_space_error` for ``path`` (streaming writers)."""
    try:
        yield
    except OSError as err:
        if err.errno in NO_SPACE:
            raise no_space_error(path, err, left) from None
        raise


# --------------------------------------------------------------------------------------------------
# Atomic writes


def _locked_temporary(path: Path, ext: str, folder: bool) -> tuple[Path, int]:
    """A new temporary file (or folder) beside ``path``, flocked by the returned descriptor.

    It is created under a plain name, locked, and only then renamed to its marked name, so that every
    name :func:`remove_stale_temporaries` considers belongs to a writer that held (or holds) its lock."""
    if folder:
        plain = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent))
        fd = os.open(plain, os.O_RDONLY | os.O_DIRECTORY)
        mode = 0o777
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)
        plain = Path(name)
        mode = 0o666
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.chmod(plain, mode & ~_UMASK)  # mkstemp/mkdtemp make it private; give it a normal mode
        marked = plain.with_name(plain.name[: -len(".new")] + TEMP_MARK + ext)
        os.rename(plain, marked)
    except BaseException:
        os.close(fd)
        shutil.rmtree(plain, ignore_errors=True) if folder else plain.unlink(missing_ok=True)
        raise
    return marked, fd


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of atomic writes in ``folder`` whose writer is gone (killed before it
    could clean up): those nobody holds the lock of. Returns the removed paths."""
    removed = []
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(".") and TEMP_MARK in e.name]
    except OSError:
        return removed
    for entry in entries:
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
            fd = os.open(path, (os.O_RDONLY | os.O_DIRECTORY) if is_dir else os.O_RDONLY)
        except OSError:
            continue  # gone meanwhile, or not ours to open
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live writer holds it
        else:
            shutil.rmtree(path, ignore_errors=True) if is_dir else path.unlink(missing_ok=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def _prepare_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key not in _SWEPT:
        _SWEPT.add(key)
        remove_stale_temporaries(folder)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    ``suffix`` defaults to the target's own suffix, so libraries that add an extension
    (``np.save``) or pick a format from it (Pillow) see the right one. On error the temporary is
    removed; a full disk becomes a NetDissectError naming ``path``.
    """
    path = Path(path)
    with disk_full_names(path):
        _prepare_folder(path.parent)
        tmp, fd = _locked_temporary(path, suffix if suffix is not None else "".join(path.suffixes[-1:]), False)
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
            os.close(fd)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a new empty folder beside ``path``; if the block succeeds it becomes ``path``.

    An existing empty ``path`` is replaced; a non-empty one only with ``replace=True`` (the old folder
    is moved aside first and removed after the swap). On error the new folder is removed; a full disk
    becomes a NetDissectError naming ``path``.
    """
    path = Path(path)
    with disk_full_names(path):
        _prepare_folder(path.parent)
        tmp, fd = _locked_temporary(path, "", True)
        try:
            yield tmp
            if path.exists() and replace:
                _swap(tmp, path)
            else:
                if path.exists():
                    path.rmdir()  # an empty folder; a non-empty one refuses (OSError)
                os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            os.close(fd)


def _swap(new: Path, path: Path) -> None:
    """Put the folder ``new`` in the place of the existing ``path`` (moved aside first, then removed)."""
    aside, fd = _locked_temporary(path, ".old", True)
    try:
        os.replace(path, aside / path.name)
        try:
            os.replace(new, path)
        except OSError:
            os.replace(aside / path.name, path)  # put the old one back
            raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)
        os.close(fd)


@contextlib.contextmanager
def open_for_writing(tmp: str | os.PathLike, name: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open the temporary ``tmp`` of an atomic write to ``name`` for streaming binary writes.

    A full disk while writing or closing is an error naming ``name``; when the block fails, the file
    is closed without raising again (the first error is the one the user sees)."""
    with disk_full_names(name):
        f = open(tmp, "wb")
        try:
            yield f
        except BaseException:
            with contextlib.suppress(OSError):
                f.close()
            raise
        f.close()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, newline: str | None = None) -> None:
    """Write text; ``newline="\\r\\n"`` turns every "\\n" into CRLF (Broden CSVs)."""
    if newline is not None:
        text = text.replace("\n", newline)
    atomic_write_bytes(path, text.encode("utf-8"))


def save_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    import numpy as np

    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write arrays to an uncompressed .npz, atomically. (Counts and float maxima barely compress, and
    zlib took longer than the counting of a shard.)"""
    import numpy as np

    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


# --------------------------------------------------------------------------------------------------
# One writer at a time


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on the file ``path`` for the block, or refuse at once.

    ``what`` names the output being protected, for the message. The lock file records its holder
    (pid, host, command) for the message a second process gets; it is kept afterwards (removing a
    lock file while another process waits on it would let two processes in). The kernel releases the
    lock when the holder exits or is killed, so no lock outlives its process."""
    path = Path(path)
    with disk_full_names(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 1000, 0).decode("utf-8", "replace").strip() or "a process"
            raise NetDissectError(
                f"{what} is being written by another process right now ({holder}), which holds the lock "
                f"{path}. Wait for it to finish (or stop it), then run again; the lock goes away by itself "
                f"when that process ends, so never delete it by hand."
            ) from None
        with contextlib.suppress(OSError):  # the record is for messages only; a full disk must not stop us
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv)}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)


def lock_beside(path: str | os.PathLike) -> Path:
    """The lock file of an output that is replaced whole (a folder swapped in by :func:`atomic_dir`):
    ``.<name>.lock`` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


# --------------------------------------------------------------------------------------------------
# Checksums


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
