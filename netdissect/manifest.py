"""The record of a one-shot dissection (``netdissect dissect --out OUT``): ``OUT/dissect.json``.

A dissection killed half-way and run again must either resume or start over, never mix the outputs
of two runs. ``OUT/dissect.json`` holds the run's settings (everything that decides the numbers: the
dataset's and the weights' checksums, the model, layers and scoring options; not batch sizes, threads
or the device, which change no count) and the stages done so far. It is rewritten atomically after each
stage, and ``"complete": true`` is set last:

    {"format": "netdissect-dissect", "version": 1, "settings": {...},
     "done": ["extract", "<layer>", ...], "complete": false | true}

When a dissection starts (:meth:`DissectManifest.open`):

- the same settings and an unfinished run: resume; the stages in ``done`` are kept, the rest redone
  (a layer folder that is not done is removed first);
- otherwise (other settings, a complete run, no record): start over; the record of the new run is
  written first, then every output the old run or the new one may have left (``OUT/shards/0`` and the
  layer folders of both) is removed.

So a layer folder named in ``done`` always comes from the settings in the record, and ``complete``
says that every layer of it is there.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from netdissect.io import save_json
from netdissect.names import layer_file_name

MANIFEST = "dissect.json"
LOCK = ".dissect.lock"
FORMAT = "netdissect-dissect"
VERSION = 1
EXTRACT = "extract"  # the stage that writes OUT/shards/0


class DissectManifest:
    """The stages of the dissection in ``out`` done so far, under ``settings`` (see module docstring)."""

    def __init__(self, out: Path, settings: dict[str, Any], done: list[str]) -> None:
        self.out, self.settings, self.done = out, settings, done

    @classmethod
    def open(cls, out: str | Path, settings: dict[str, Any], layers: list[str]) -> DissectManifest:
        """Resume the unfinished run in ``out`` with these settings, or start over (module docstring)."""
        out = Path(out)
        settings = json.loads(json.dumps(settings))  # as it reads back (tuples become lists)
        old = _read(out / MANIFEST)
        if old is not None and old.get("settings") == settings and not old.get("complete"):
            done = [stage for stage in old.get("done", []) if _present(out, stage)]
            if done:
                print(f"dissect: resuming {out}: done already: {', '.join(done)}", file=sys.stderr)
            manifest = cls(out, settings, done)
            manifest._save(False)
            return manifest
        if old is not None and old.get("settings") != settings:
            print(f"dissect: {out} holds a dissection with other settings; starting over", file=sys.stderr)
        manifest = cls(out, settings, [])
        manifest._save(False)  # first: from now on a kill leaves a record of this run, not of the old one
        old_layers = (old or {}).get("settings", {}).get("layers", []) if isinstance(old, dict) else []
        for stage in [EXTRACT, *dict.fromkeys([*layers, *old_layers])]:
            manifest.clear(stage)
        return manifest

    def is_done(self, stage: str) -> bool:
        return stage in self.done

    def clear(self, stage: str) -> None:
        """Remove what ``stage`` writes (before it runs again)."""
        shutil.rmtree(stage_dir(self.out, stage), ignore_errors=True)

    def finish(self, stage: str) -> None:
        self.done.append(stage)
        self._save(False)

    def complete(self) -> None:
        self._save(True)

    def _save(self, complete: bool) -> None:
        save_json(
            self.out / MANIFEST,
            {"format": FORMAT, "version": VERSION, "settings": self.settings, "done": self.done, "complete": complete},
        )


def stage_dir(out: Path, stage: str) -> Path:
    """The folder a stage writes: ``OUT/shards/0`` for the extraction, ``OUT/<layer>`` for a layer
    (its file name, :func:`netdissect.names.layer_file_name`)."""
    return out / "shards" / "0" if stage == EXTRACT else out / layer_file_name(stage)


def _present(out: Path, stage: str) -> bool:
    """The last file of the stage is there (meta.json of the shard, summary.json of a layer)."""
    return (stage_dir(out, stage) / ("meta.json" if stage == EXTRACT else "summary.json")).is_file()


def _read(path: Path) -> dict[str, Any] | None:
    """The record in ``path``; None when there is none or it is not one (then the run starts over)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("version") != VERSION:
        return None
    return record
