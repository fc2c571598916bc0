"""Caffe models without Caffe: a ``deploy.prototxt`` and its ``.caffemodel`` become a torch module
(docs/caffe-models.md).

:mod:`~netdissect.models.caffe.proto` reads both files (both generations), :mod:`~.layers` holds each
layer type as a torch module, :mod:`~.graph` connects them into a :class:`~.graph.CaffeNet` whose
forward computes blobs by name. :func:`load_caffe` is what ``load_model`` calls for a SPEC ending in
``.prototxt``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from netdissect.defaults import CAFFE_MEAN, CAFFE_STD
from netdissect.errors import NetDissectError


def load_caffe(
    prototxt: str | Path,
    caffemodel: str | Path | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    mean_file: str | Path | None = None,
):
    """A :class:`~netdissect.models.loading.LoadedModel` of a Caffe net. Without ``caffemodel`` the
    module knows its blobs, shapes and field maps but holds no weights (``netdissect layers``).
    ``mean``/``std`` are B, G, R in 0–255; ``mean_file`` gives the mean instead (per-channel means of
    the mean image)."""
    from netdissect.io import sha256_file
    from netdissect.models.caffe.graph import build_net
    from netdissect.models.caffe.proto import read_caffemodel, read_mean_file, read_prototxt
    from netdissect.models.loading import LoadedModel, triple

    if mean_file is not None and mean is not None:
        raise NetDissectError(f"--mean-file {mean_file} and --mean: give one of them")
    proto = read_prototxt(prototxt)
    weights = read_caffemodel(caffemodel) if caffemodel is not None else None
    net = build_net(proto, weights)
    net.eval()
    means = read_mean_file(mean_file) if mean_file is not None else triple(mean, CAFFE_MEAN, "--mean", "B,G,R")
    return LoadedModel(
        module=net,
        spec=str(prototxt),
        mean=means,
        std=triple(std, CAFFE_STD, "--std", "B,G,R"),
        weights=str(caffemodel) if caffemodel is not None else None,
        weights_sha256=sha256_file(caffemodel) if caffemodel is not None else None,
        field_maps=dict(net.field_maps),
        divisor=1.0,
        bgr=True,
        mean_file=str(mean_file) if mean_file is not None else None,
    )
