"""Layer names as file and folder names: one reversible mapping for every place a layer names a path.

Caffe blob names may hold ``/`` (GoogLeNet's ``inception_5b/output``), which a path cannot hold as
one component. :func:`layer_file_name` percent-encodes ``%``, ``/`` and ``\\`` (and a name that is
only dots), so different layers never share a file and :func:`layer_from_file_name` gives the name
back. Names without those characters (every torch module path) are unchanged. Used for shard files,
``netdissect dissect`` layer folders and the workflow's ``results/layers/{dataset}/{model}/{layer}``;
the real name goes into summary.json, result listings and report titles. No imports: the workflow
imports this module.
"""

from __future__ import annotations

from urllib.parse import unquote

_ESCAPES = {"%": "%25", "/": "%2F", "\\": "%5C"}


def layer_file_name(layer: str) -> str:
    """``inception_5b/output`` -> ``inception_5b%2Foutput``; ``conv5`` -> ``conv5``."""
    if layer and set(layer) == {"."}:
        return "%2E" * len(layer)  # "." and ".." are not folders of their own
    return "".join(_ESCAPES.get(c, c) for c in layer)


def layer_from_file_name(name: str) -> str:
    """The inverse of :func:`layer_file_name`."""
    return unquote(name)
