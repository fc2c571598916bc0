"""Bar charts as SVG, laid out here and drawn by jinja2 templates (every label escaped).

* :func:`label_bar_chart`: one bar per label with at least one detector unit, grouped and coloured by
  category (docs/dissection.md §7).
* :func:`stacked_bar_chart`: one bar per model × layer, stacked by category (the paper's figure of
  unique detectors).

Both return a standalone SVG document as a string; it can be inlined in HTML as is. Axis labels are
rotated and the margins are sized from an upper bound of each label's width (:func:`text_width`), so no
label is cut, however long.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from netdissect.report.templating import environment

# Okabe–Ito-like colours, fixed for Broden's categories so every report uses the same ones.
CATEGORY_COLORS = {
    "object": "#0072b2",
    "scene": "#009e73",
    "part": "#e69f00",
    "material": "#cc79a7",
    "texture": "#d55e00",
    "color": "#56b4e9",
}
_SPARE_COLORS = ("#7f7f7f", "#8c564b", "#bcbd22", "#17becf", "#9467bd", "#393b79")
# Advance widths in em, rounded up over Helvetica/Arial/Liberation Sans and DejaVu Sans (the fallback).
_NARROW, _NARROW_EM = set("fijlrtI.,:;'|!() "), 0.36
_WIDE, _WIDE_EM = set("mwMW@%"), 1.0
_UPPER_EM, _OTHER_EM = 0.8, 0.65


def text_width(text: str, size: float = 11) -> float:
    """An upper bound of the width in pixels of ``text`` set in ``size``-pixel sans-serif."""
    em = sum(
        _NARROW_EM if c in _NARROW else _WIDE_EM if c in _WIDE else _UPPER_EM if c.isupper() else _OTHER_EM
        for c in text
    )
    return em * size


def rotated_extent(width: float, degrees: float, size: float = 11) -> tuple[float, float]:
    """(horizontal, vertical) reach of a label of ``width`` pixels rotated by ``degrees`` below the
    horizontal and anchored at its end, plus the glyphs' height across the line."""
    angle = math.radians(degrees)
    return width * math.cos(angle) + size * math.sin(angle), width * math.sin(angle) + size * math.cos(angle)


def category_colors(categories: Sequence[str]) -> dict[str, str]:
    """A colour per category: Broden's six get fixed colours, others take spare ones in order."""
    colors, spare = {}, 0
    for cat in categories:
        if cat in CATEGORY_COLORS:
            colors[cat] = CATEGORY_COLORS[cat]
        else:
            colors[cat] = _SPARE_COLORS[spare % len(_SPARE_COLORS)]
            spare += 1
    return colors


def nice_ticks(top: float, count: int = 5) -> list[int]:
    """Whole-number axis ticks 0..≥top with a 1/2/5·10^k step."""
    if top <= 0:
        return [0, 1]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return list(range(0, int(math.ceil(top / step)) * step + 1, int(step)))


def label_bar_chart(
    bars: Sequence[tuple[str, str, int]], categories: Sequence[str], *, title: str = "Detector units per label"
) -> str:
    """SVG of ``(category, label, count)`` bars, in the given order (see ``results.label_bars``)."""
    colors = category_colors(categories)
    bar, gap, group_gap, plot_h, angle = 12, 4, 14, 150, 55
    left, top = 44, 58
    reach = [rotated_extent(text_width(label), angle) for _, label, _ in bars]
    bottom = 8 + max((v for _, v in reach), default=0) + 6
    ticks = nice_ticks(max((n for *_, n in bars), default=1))
    scale = plot_h / ticks[-1]
    items, groups, x, previous = [], [], left + 8, None
    for cat, label, n in bars:
        if previous is not None and cat != previous:
            x = max(x + group_gap, groups[-1]["x_next"] + group_gap)
        if cat != previous:
            groups.append({"category": cat, "x0": x, "x1": x, "color": colors.get(cat, "#999")})
        groups[-1]["x1"] = x + bar
        groups[-1]["x_next"] = groups[-1]["x0"] + text_width(cat, 12) + 4  # room for the group name
        items.append(
            {
                "category": cat,
                "label": label,
                "count": n,
                "x": x,
                "y": top + plot_h - n * scale,
                "height": n * scale,
                "color": colors.get(cat, "#999"),
                "center": x + bar / 2,
            }
        )
        x += bar + gap
        previous = cat
    # shift the plot right where the first labels reach past the left edge
    shift = max([0.0] + [h - (item["center"] + 4) + 2 for item, (h, _) in zip(items, reach)])
    width = shift + max(x + 12, groups[-1]["x_next"] + 12 if groups else 0, left + text_width(title, 14) + 8, 320)
    return (
        environment()
        .get_template("label_bars.svg")
        .render(
            title=title,
            items=items,
            groups=groups,
            bar=bar,
            angle=angle,
            shift=shift,
            width=width,
            height=top + plot_h + bottom,
            left=left,
            top=top,
            plot_h=plot_h,
            plot_right=x,
            ticks=[(t, top + plot_h - t * scale) for t in ticks],
            empty=not bars,
        )
    )


def stacked_bar_chart(
    bars: Sequence[tuple[str, Mapping[str, int]]],
    categories: Sequence[str],
    *,
    title: str,
    y_label: str = "unique detectors",
) -> str:
    """SVG of one stacked bar per ``(name, {category: count})``, segments in category order."""
    colors = category_colors(categories)
    bar, gap, plot_h, angle = 30, 14, 220, 45
    left, top = 56, 44
    reach = [rotated_extent(text_width(name), angle) for name, _ in bars]
    bottom = 8 + max((v for _, v in reach), default=0) + 6
    totals = [sum(counts.get(c, 0) for c in categories) for _, counts in bars]
    ticks = nice_ticks(max(totals, default=1))
    scale = plot_h / ticks[-1]
    columns, x = [], left + 10
    for (name, counts), total in zip(bars, totals):
        y, segments = top + plot_h, []
        for cat in categories:
            n = counts.get(cat, 0)
            if n:
                y -= n * scale
                segments.append({"category": cat, "count": n, "y": y, "height": n * scale, "color": colors[cat]})
        columns.append({"name": name, "total": total, "x": x, "center": x + bar / 2, "segments": segments, "top_y": y})
        x += bar + gap
    # legend right of the plot, top to bottom in the order the segments stack (last category on top)
    legend = [
        {"category": c, "color": colors[c], "x": x + 18, "y": top + 12 + 18 * i}
        for i, c in enumerate(reversed(list(categories)))
    ]
    legend_width = 40 + max((text_width(c, 12) for c in categories), default=0)
    shift = max([0.0] + [h - (column["center"] + 4) + 2 for column, (h, _) in zip(columns, reach)])
    width = shift + max(x + 18 + legend_width, left + text_width(title, 14) + 10, 320)
    return (
        environment()
        .get_template("stacked_bars.svg")
        .render(
            title=title,
            y_label=y_label,
            columns=columns,
            legend=legend,
            bar=bar,
            angle=angle,
            shift=shift,
            width=width,
            height=top + plot_h + bottom,
            left=left,
            top=top,
            plot_h=plot_h,
            plot_right=x,
            ticks=[(t, top + plot_h - t * scale) for t in ticks],
            empty=not bars,
        )
    )
