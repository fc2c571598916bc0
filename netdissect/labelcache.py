"""Packed labels for ``netdissect dissect``: the label PNGs of a dataset decoded once, into a cache, and
read by every later dissection of that dataset (:mod:`netdissect.broden.pack`).

``dissect`` reads the labels from a pack by default: ``--labels PACK`` names the folder, and without it
the pack lives in the cache, ``$NETDISSECT_CACHE/labels/<fingerprint>`` (default cache
``$XDG_CACHE_HOME/netdissect``, i.e. ``~/.cache/netdissect``), one per dataset fingerprint (a changed
dataset gets a new pack). A missing or outdated pack is (re)written first: by a thread of the
dissection, decoding in that thread, while the forward pass runs when the machine has a core to spare
and the extraction starts no worker processes (a process must not fork while another thread works: the
child can inherit a lock held by that thread and hang); else before the tally, with worker processes.
``--labels none`` decodes the PNGs in the tally instead and writes nothing.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from netdissect.errors import NetDissectError

log = logging.getLogger(__name__)

NO_PACK = "none"  # --labels none: decode the label PNGs, no pack


def cache_dir() -> Path:
    """``$NETDISSECT_CACHE``, else ``$XDG_CACHE_HOME/netdissect``, else ``~/.cache/netdissect``."""
    if os.environ.get("NETDISSECT_CACHE"):
        return Path(os.environ["NETDISSECT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "netdissect"


def pack_folder(ds: Any, labels: str | Path | None) -> Path | None:
    """Where ``dissect`` reads the packed labels of ``ds``: ``labels`` (None: the cache's pack of this
    dataset; ``none``: no pack)."""
    if labels is not None and str(labels) == NO_PACK:
        return None
    if labels is not None:
        return Path(labels)
    return cache_dir() / "labels" / ds.fingerprint()[:16]


def is_current(pack: Path, ds: Any) -> bool:
    """Whether ``pack`` holds a complete pack of ``ds`` (same fingerprint and rows)."""
    from netdissect.broden.pack import PackedLabels

    try:
        PackedLabels(pack, ds)
    except NetDissectError:
        return False
    return True


def spare_cores() -> int:
    """Cores left over by torch's threads (0 on a machine the forward pass fills)."""
    import torch

    return max(0, len(os.sched_getaffinity(0)) - torch.get_num_threads())


class PackJob:
    """Writes the pack of ``root`` into ``pack`` unless it is current: in a background thread that
    decodes in itself (no worker process) when ``background``, so the forward pass goes on meanwhile,
    else when :meth:`wait` is called (with the default worker processes). :meth:`wait` returns once the
    pack is there (raising what packing raised)."""

    def __init__(self, root: str | Path, pack: Path, ds: Any, *, background: bool, progress: bool):
        self.root, self.pack, self.progress = Path(root), pack, progress
        self.needed = not is_current(pack, ds)
        self.error: BaseException | None = None
        self.thread = None
        if self.needed:
            log.warning("packing the labels of %s into %s (once per dataset; --labels none skips it)", root, pack)
            if background:
                self.thread = threading.Thread(target=self._run, name="pack-labels", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        from netdissect.broden.pack import pack_labels

        try:
            pack_labels(self.root, self.pack, workers=0, progress=False)
        except BaseException as err:  # re-raised by wait()
            self.error = err

    def wait(self) -> Path:
        if self.needed and self.thread is None:
            from netdissect.broden.pack import pack_labels

            pack_labels(self.root, self.pack, progress=self.progress)
        elif self.thread is not None:
            self.thread.join()
            if self.error is not None:
                raise self.error
        return self.pack
