"""The report of one layer: a self-contained folder (``index.html``, CSS, JS, SVG, JPEG strips).

The folder works offline: no CDN, no request outside it. It is built in a temporary sibling folder and
moved into place at the end, so an interrupted run never leaves a report that looks finished.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from netdissect.defaults import JPEG_QUALITY, REPORT_THREADS, TOPK
from netdissect.errors import NetDissectError
from netdissect.io import atomic_dir
from netdissect.masks import BILINEAR
from netdissect.report.charts import category_colors, label_bar_chart
from netdissect.report.results import count_detectors, detector_mask, iou_threshold_of, label_bars
from netdissect.report.strips import LoadImage, MapsForRows, gather_maps, render_strips, top_rows
from netdissect.report.templating import environment, static_file

STATIC_FILES = ("report.css", "report.js")


def headline(counts, significant: int | None = None, alpha: float | None = None) -> str:
    """'D of U units are detectors, covering K concepts with IoU ≥ t' (docs/dissection.md §7); with a
    significance test, 'D of U units are detectors (S significant, p ≤ α), ...' (docs/experiments.md §3)."""
    tested = f" ({significant} significant, p ≤ {alpha:g})" if significant is not None else ""
    return (
        f"{counts.detectors} of {counts.units} units are detectors{tested}, covering {counts.unique_top} "
        f"concept{'' if counts.unique_top == 1 else 's'} with IoU ≥ {counts.iou_threshold:g}"
    )


def settings_line(summary: Mapping[str, Any], masks: str | None = None) -> list[tuple[str, str]]:
    """The run settings worth showing under the headline, from summary.json's ``settings`` (if any);
    ``masks``: the upsampling of the masks shown, named when it is not the one the counts used."""
    settings = summary.get("settings") if isinstance(summary.get("settings"), Mapping) else {}
    shown = []
    for key, name in (
        ("model", "model"),
        ("weights", "weights"),
        ("input", "input"),
        ("dataset_images", "images"),
        ("preset", "preset"),
        ("quantile", "top fraction q"),
        ("union", "union"),
        ("upsample", "upsample"),
    ):
        value = input_convention(settings) if key == "input" else settings.get(key)
        if value not in (None, ""):
            shown.append((name, str(value)))
    if masks is not None and settings.get("upsample") not in (None, masks):
        shown.append(("masks shown upsampled by", masks))
    return shown


def input_convention(settings: Mapping[str, Any]) -> str | None:
    """How images were fed to the model: 'BGR 0–255 − mean 109.539,118.69,124.69, std 1,1,1' (Caffe) or
    'RGB 0–1 − mean ..., std ...' (torch); the mean file when the mean came from one."""
    mean, std = settings.get("mean"), settings.get("std")
    if not mean or not std:
        return None
    scale = "0–255" if float(settings.get("divisor", 255.0)) == 1.0 else "0–1"
    source = f" (from {settings['mean_file']})" if settings.get("mean_file") else ""
    numbers = lambda values: ",".join(f"{float(v):g}" for v in values)
    order = "BGR" if settings.get("bgr") else "RGB"
    return f"{order} {scale} − mean {numbers(mean)}{source}, std {numbers(std)}"


def unit_order(result: pd.DataFrame, categories: list[str], iou_threshold: float) -> np.ndarray:
    """Row positions in display order: detectors grouped by category (category order), each group by
    score descending; then the other units by score descending; ties by unit number."""
    detector = detector_mask(result, iou_threshold)
    group = result["category"].map({c: i for i, c in enumerate(categories)}).fillna(len(categories)).to_numpy()
    group = np.where(detector, group, len(categories) + 1)
    return np.lexsort((result["unit"].to_numpy(), -result["score"].to_numpy(), group))


# The first cards' images load at once (they are on the first screen, and a lazy image waits until the
# page is laid out, which for 2,048 cards is after the whole page is parsed); the others load lazily.
EAGER_CARDS = 8


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, from its header only."""
    with Image.open(path) as image:
        return image.size


def _cards(
    result: pd.DataFrame,
    categories: list[str],
    iou_threshold: float,
    strips: dict[int, tuple[str, tuple[int, int]]],
    topk: int,
    p_values: Mapping[int, float],
    alpha: float | None,
) -> list[dict[str, Any]]:
    detector = detector_mask(result, iou_threshold)
    records = result.to_dict("records")
    cards = []
    for rank, pos in enumerate(unit_order(result, categories, iou_threshold)):
        row = records[pos]
        unit = int(row["unit"])
        per_category = [
            {
                "category": c,
                "label": row[f"{c}-label"],
                "iou": float(row[f"{c}-iou"]),
                "truth": int(row[f"{c}-truth"]),
                "activation": int(row[f"{c}-activation"]),
                "intersect": int(row[f"{c}-intersect"]),
                "best": c == row["category"] and row["label"] != "",
            }
            for c in categories
        ]
        cards.append(
            {
                "unit": unit,
                "label": row["label"],
                "category": row["category"] if row["label"] else "",
                "score": float(row["score"]),
                "detector": bool(detector[pos]),
                "rank": rank,
                "strip": strips[unit][0] if unit in strips else None,
                "strip_size": strips[unit][1] if unit in strips else None,
                "per_category": per_category,
                "topk": topk,
                "p": p_values.get(unit),
                "significant": alpha is not None and unit in p_values and p_values[unit] <= alpha,
            }
        )
    return cards


def render_layer_report(
    out: str | Path,
    result: pd.DataFrame,
    categories: list[str],
    summary: Mapping[str, Any],
    thresholds: np.ndarray,
    imgmax: np.ndarray,
    maps_for_rows: MapsForRows,
    load_image: LoadImage,
    *,
    topk: int = TOPK,
    quality: int = JPEG_QUALITY,
    threads: int = REPORT_THREADS,
    title: str | None = None,
    upsample=BILINEAR,
    p_values: Mapping[int, float] | None = None,
    alpha: float | None = None,
) -> Path:
    """Write the report of one layer into the folder ``out``; return the path of its ``index.html``.

    ``result``/``categories`` come from :func:`netdissect.report.results.read_result_csv`; ``summary``
    (summary.json) supplies model, layer, dataset and iou_threshold; ``thresholds`` (U,) and ``imgmax``
    (N, U) are the layer's files; ``maps_for_rows(rows)`` returns activations (len(rows), U, H, W);
    ``load_image(row)`` returns the dataset image uint8 (3, h, w); ``upsample`` is the mode of the
    masks (:mod:`netdissect.masks`), the one the counts used. ``p_values`` (unit number -> p, from
    significance.csv) and ``alpha``: each card shows its p, the headline counts the detectors with p ≤ α.
    """
    out = Path(out)
    units = len(result)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    imgmax = np.asarray(imgmax)
    if thresholds.shape != (units,):
        raise NetDissectError(
            f"thresholds.npy: expected shape ({units},), one threshold per unit of result.csv, "
            f"got {thresholds.shape}. Check that both files come from the same layer."
        )
    if imgmax.ndim != 2 or imgmax.shape[1] != units or imgmax.shape[0] == 0:
        raise NetDissectError(
            f"imgmax.npy: expected shape (images, {units}), one column per unit of result.csv, "
            f"got {imgmax.shape}. Check that both files come from the same layer."
        )
    if topk < 1:
        raise NetDissectError(f"--topk: expected a whole number ≥ 1, got {topk}.")
    iou_threshold = iou_threshold_of(summary)
    counts = count_detectors(result, categories, iou_threshold)
    p_values = dict(p_values or {})
    tested = bool(p_values) and alpha is not None
    model = str(summary.get("model") or "")
    layer = str(summary.get("layer") or "")
    dataset = str(summary.get("dataset") or "")
    if isinstance(summary.get("dataset"), Mapping):
        dataset = str(summary["dataset"].get("name") or summary["dataset"].get("root") or "")

    with atomic_dir(out, replace=True) as built:
        top = top_rows(imgmax, topk)
        maps = gather_maps(top, maps_for_rows)
        names = render_strips(
            built / "strips", top, maps, thresholds, load_image, quality=quality, threads=threads, upsample=upsample
        )
        # each strip with its pixel size, so the page reserves its box before the (lazy) image loads
        strips = {u + 1: (f"strips/{name}", _image_size(built / "strips" / name)) for u, name in enumerate(names)}
        chart = label_bar_chart(label_bars(result, categories, iou_threshold), categories)
        (built / "detectors.svg").write_text(chart, encoding="utf-8")
        for name in STATIC_FILES:
            (built / name).write_bytes(static_file(name))
        cards = _cards(result, categories, iou_threshold, strips, top.shape[1], p_values, alpha if tested else None)
        page = (
            environment()
            .get_template("layer.html")
            .render(
                title=title or " ".join(p for p in (model, layer) if p) or "Network dissection",
                model=model,
                layer=layer,
                dataset=dataset,
                headline=headline(
                    counts, sum(c["detector"] and c["significant"] for c in cards) if tested else None, alpha
                ),
                counts=counts,
                categories=categories,
                colors=category_colors(categories),
                chart=chart,
                cards=cards,
                eager=EAGER_CARDS,
                tested=tested,
                alpha=alpha,
                iou_threshold=iou_threshold,
                settings=settings_line(summary, upsample.name),
            )
        )
        (built / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"
