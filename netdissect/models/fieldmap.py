"""Receptive-field maps ("field maps") of layers, for the ``fieldmap`` upsampling (docs/dissection.md §3).

A layer's field map per axis is (offset, size, step) in input pixels: unit k of the map sees input
pixels ``[offset + k·step, offset + k·step + size)``. A convolution or pooling with kernel k, stride
s, padding p and dilation d is ``(−p, d·(k−1)+1, s)``; elementwise layers are the identity
``(0, 1, 1)``. :meth:`FieldMap.then` composes a layer after the map so far; :func:`largest` chooses
among the maps of paths that merge (a residual add, a concat), as the original system did.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldMap:
    """Per axis (y, x): offset, size and step of the units' receptive fields in input pixels."""

    offset: tuple[int, int] = (0, 0)
    size: tuple[int, int] = (1, 1)
    step: tuple[int, int] = (1, 1)

    @classmethod
    def of_window(
        cls,
        kernel: tuple[int, int],
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        dilation: tuple[int, int] = (1, 1),
    ) -> FieldMap:
        """The field map of one convolution or pooling window."""
        return cls(
            offset=(-padding[0], -padding[1]),
            size=(dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1),
            step=(stride[0], stride[1]),
        )

    def then(self, layer: FieldMap) -> FieldMap:
        """The map of ``layer`` applied after this one: offset = o2·t1 + o1, size = (s2−1)·t1 + s1,
        step = t1·t2 on each axis."""
        return FieldMap(
            offset=tuple(o2 * t1 + o1 for o1, t1, o2 in zip(self.offset, self.step, layer.offset)),
            size=tuple((s2 - 1) * t1 + s1 for s1, t1, s2 in zip(self.size, self.step, layer.size)),
            step=tuple(t1 * t2 for t1, t2 in zip(self.step, layer.step)),
        )


IDENTITY = FieldMap()


def largest(*maps: FieldMap) -> FieldMap:
    """Where paths merge, the path whose receptive field is largest (the first of equals)."""
    return max(maps, key=lambda m: m.size[0] * m.size[1])
