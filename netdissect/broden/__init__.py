"""The Broden dataset on disk: reader, writer, checker, color naming and a synthetic generator.

Format: docs/broden-format.md. Public API (docs/interfaces.md):

- :class:`BrodenDataset` reads a folder (a torch ``Dataset``; ``loader()`` gives a ``DataLoader``).
- :func:`write_broden` and :func:`compute_tables` write one (same byte conventions as the original).
- :func:`check_broden` lists every defect of a folder (``netdissect broden check DIR``).
- :mod:`netdissect.broden.colors` names the colour of RGB pixels; :mod:`netdissect.broden.synth`
  renders a procedural dataset (``netdissect synth``).
"""

from typing import TYPE_CHECKING, Any

from netdissect.broden.writer import (
    BrodenImage,
    BrodenTables,
    IndexRow,
    compute_tables,
    image_statistics,
    write_broden,
    write_image,
    write_index,
    write_tables,
)

if TYPE_CHECKING:
    from netdissect.broden.check import check_broden
    from netdissect.broden.dataset import BrodenDataset


def __getattr__(name: str) -> Any:
    # The reader and the checker import torch (seconds): load them on first use, so that
    # writer-only users (regeneration workers) start fast.
    if name == "BrodenDataset":
        from netdissect.broden.dataset import BrodenDataset

        return BrodenDataset
    if name == "check_broden":
        from netdissect.broden.check import check_broden

        return check_broden
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BrodenDataset",
    "check_broden",
    "BrodenImage",
    "BrodenTables",
    "IndexRow",
    "compute_tables",
    "image_statistics",
    "write_broden",
    "write_image",
    "write_index",
    "write_tables",
]
