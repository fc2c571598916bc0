"""Regenerating Broden from its constituent datasets (docs/broden-sources.md).

- :mod:`.base`: the adapter contract (:class:`Source`, :class:`SourceImage`).
- :mod:`.ade20k`, :mod:`.pascal`, :mod:`.opensurfaces`, :mod:`.dtd`: one adapter per source, reading
  the source's shipped layout.
- :mod:`.naming`: synonym rewrite and the claiming/merging of names across sources and categories.
- :mod:`.merge`: statistics, naming, filtering, translation and writing (``netdissect broden regenerate``).
- :mod:`.fixtures`: tiny datasets in each source's real format (tests, benchmark).
"""

from __future__ import annotations

SOURCE_NAMES = ("ade20k", "dtd", "opensurfaces", "pascal")


def adapter_class(name: str):
    """The adapter class of a source name (imports lazily)."""
    from netdissect.broden.sources.ade20k import ADE20K
    from netdissect.broden.sources.dtd import DTD
    from netdissect.broden.sources.opensurfaces import OpenSurfaces
    from netdissect.broden.sources.pascal import Pascal

    return {"ade20k": ADE20K, "dtd": DTD, "opensurfaces": OpenSurfaces, "pascal": Pascal}[name]
