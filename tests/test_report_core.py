"""Report numbers and pixels against brute force: top images, masks and strips, detector counts,
bar heights, the summary CSV, input validation and atomic output."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from netdissect.errors import NetDissectError
from netdissect.report import (
    count_detectors,
    headline,
    label_bars,
    parse_result,
    read_result_csv,
    render_layer_report,
    render_summary_report,
    top_rows,
)
from netdissect.report.layer import unit_order
from netdissect.report.strips import (
    TILE_GAP,
    compose_strip,
    gather_maps,
    load_images,
    render_strips,
    strip_image,
    unit_masks,
)
from netdissect.report.summary import LayerEntry, summary_csv
from tests.test_report_data import CATEGORIES, XSS_LABEL, make_layer

torch.set_num_threads(1)


# ---------------------------------------------------------------- brute force references


def bilinear_reference(m: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear upsampling with half-pixel centres and clamped edges, one output pixel at a time."""
    h, w = m.shape
    out = np.empty((out_h, out_w))
    for y in range(out_h):
        sy = max((y + 0.5) * h / out_h - 0.5, 0.0)
        y0 = min(int(np.floor(sy)), h - 1)
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for x in range(out_w):
            sx = max((x + 0.5) * w / out_w - 0.5, 0.0)
            x0 = min(int(np.floor(sx)), w - 1)
            x1, fx = min(x0 + 1, w - 1), sx - x0
            out[y, x] = (1 - fy) * ((1 - fx) * m[y0, x0] + fx * m[y0, x1]) + fy * (
                (1 - fx) * m[y1, x0] + fx * m[y1, x1]
            )
    return out


def top_rows_reference(imgmax: np.ndarray, k: int) -> np.ndarray:
    return np.array([sorted(range(len(col)), key=lambda i: (-col[i], i))[:k] for col in imgmax.T])


def unit_strip(layer, top: np.ndarray, maps: np.ndarray, unit: int) -> np.ndarray:
    """The (3, h, w) strip of one unit, made by the library's functions before JPEG encoding."""
    images = load_images(np.unique(top), layer.load_image)
    sizes = np.array([[images[r][0].shape[1:] for r in row] for row in top])
    masks = unit_masks(top, maps, layer.thresholds, sizes)[unit]
    return compose_strip([images[r][0] for r in top[unit]], [images[r][1] for r in top[unit]], masks)


# ---------------------------------------------------------------- top images


def test_top_rows_order_and_ties() -> None:
    rng = np.random.default_rng(1)
    imgmax = rng.integers(0, 6, size=(40, 9)).astype(np.float32)  # many ties, also at the k-th place
    imgmax[:, 3] = 1.0  # a dead unit: all equal
    for k in (1, 5, 10, 40, 50):
        assert np.array_equal(top_rows(imgmax, k), top_rows_reference(imgmax, min(k, 40)))
        assert np.array_equal(top_rows(imgmax, k, units_per_chunk=4), top_rows_reference(imgmax, min(k, 40)))
    distinct = rng.random((200, 7)).astype(np.float32)
    assert np.array_equal(top_rows(distinct, 10), top_rows_reference(distinct, 10))


def test_gather_maps_reads_each_row_once_in_chunks() -> None:
    rng = np.random.default_rng(2)
    acts = rng.random((25, 6, 3, 3)).astype(np.float32)
    top = top_rows(acts.max(axis=(2, 3)), 4)
    calls: list[np.ndarray] = []

    def maps_for_rows(rows):
        calls.append(np.asarray(rows))
        return acts[rows]

    maps = gather_maps(top, maps_for_rows, read_bytes=3 * 6 * 9 * 4)  # three rows per call
    expected = np.stack([[acts[top[u, j], u] for j in range(4)] for u in range(6)])
    assert np.array_equal(maps, expected)
    read = np.concatenate(calls[1:])  # calls[0] probes the shape
    assert np.array_equal(np.sort(read), np.unique(top)) and all(len(c) <= 3 for c in calls)


def test_gather_maps_rejects_wrong_unit_count() -> None:
    acts = np.zeros((5, 3, 2, 2), np.float32)
    with pytest.raises(NetDissectError, match=r"\(rows, 4, H, W\)"):
        gather_maps(np.zeros((4, 2), np.int64), lambda rows: acts[rows])


# ---------------------------------------------------------------- strips


def test_strip_pixels_equal_image_times_mask_brute_force(tmp_path: Path) -> None:
    layer = make_layer(tmp_path, units=5, images=12, size=20, map_size=3, seed=4)
    k, unit = 4, 2
    top = top_rows(layer.imgmax, k)
    maps = gather_maps(top, layer.maps_for_rows)
    strip = np.moveaxis(unit_strip(layer, top, maps, unit), 0, -1)  # (h, w, 3)
    assert strip.shape == (20, k * 20 + (k - 1) * TILE_GAP, 3)
    for j, row in enumerate(top[unit]):
        image = layer.images[row].permute(1, 2, 0).numpy().astype(np.float64)
        mask = bilinear_reference(layer.acts[row, unit].astype(np.float64), 20, 20) > layer.thresholds[unit]
        assert 0 < mask.sum() < mask.size  # the test exercises both branches
        expected = np.round(image * (0.2 + 0.8 * mask[..., None])).astype(np.uint8)
        x = j * (20 + TILE_GAP)
        assert np.array_equal(strip[:, x : x + 20], expected), f"tile {j} of unit {unit}"
        if j < k - 1:
            assert (strip[:, x + 20 : x + 20 + TILE_GAP] == 255).all()


def test_tiles_of_mixed_image_sizes() -> None:
    images = [np.full((3, 8, 8), 100, dtype=np.uint8), np.full((3, 6, 10), 50, dtype=np.uint8)]
    maps = np.zeros((1, 2, 2, 2), np.float32)
    maps[0, 0] = 1.0  # image 0 fully above threshold
    masks = unit_masks(np.array([[0, 1]]), maps, np.array([0.5]), np.array([[[8, 8], [6, 10]]]))[0]
    assert [m.shape for m in masks] == [(8, 8), (6, 10)] and masks[0].all() and not masks[1].any()
    strip = compose_strip(images, [i // 5 for i in images], masks)
    assert strip.shape == (3, 8, 8 + TILE_GAP + 10)
    assert (strip[:, :, :8] == 100).all() and (strip[:, :6, 8 + TILE_GAP :] == 10).all()
    assert (strip[:, 6:, 8 + TILE_GAP :] == 255).all() and (strip[:, :, 8 : 8 + TILE_GAP] == 255).all()
    assert np.array_equal(np.asarray(strip_image(strip)), np.moveaxis(strip, 0, -1))


def test_written_strip_jpeg_matches_blend(tmp_path: Path) -> None:
    layer = make_layer(tmp_path / "layer", units=6, images=10, size=24, seed=5)
    result, categories = read_result_csv(layer.result_csv)
    render_layer_report(
        tmp_path / "report",
        result,
        categories,
        {},
        layer.thresholds,
        layer.imgmax,
        layer.maps_for_rows,
        layer.load_image,
        topk=3,
        quality=95,
    )
    top = top_rows(layer.imgmax, 3)
    maps = gather_maps(top, layer.maps_for_rows)
    expected = np.moveaxis(unit_strip(layer, top, maps, 0), 0, -1).astype(np.int16)
    written = np.asarray(Image.open(tmp_path / "report" / "strips" / "unit_0001.jpg").convert("RGB")).astype(np.int16)
    assert written.shape == expected.shape
    assert np.abs(written - expected).mean() < 12  # JPEG of noise at quality 95


def test_strips_decode_each_image_once_across_batches(tmp_path: Path) -> None:
    layer = make_layer(tmp_path / "layer", units=9, images=14, size=16, seed=12)
    top = top_rows(layer.imgmax, 5)
    maps = gather_maps(top, layer.maps_for_rows)
    written = {}
    for per_batch in (2, 100):  # several batches (images dropped between them) vs one
        calls: list[int] = []

        def load_image(row: int, calls: list[int] = calls):
            calls.append(row)
            return layer.images[row]

        folder = tmp_path / f"strips{per_batch}"
        render_strips(folder, top, maps, layer.thresholds, load_image, units_per_batch=per_batch)
        assert sorted(calls) == np.unique(top).tolist()
        written[per_batch] = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert written[2] == written[100] and len(written[2]) == 9


# ---------------------------------------------------------------- counts


def count_reference(rows: list[dict], categories: list[str], threshold: float) -> dict:
    detectors = [r for r in rows if r["score"] >= threshold and r["label"]]
    per = {}
    for c in categories:
        per[c] = {
            "detectors": sum(r["category"] == c for r in detectors),
            "unique_top": len({r["label"] for r in detectors if r["category"] == c}),
            "unique_by_category": len({r[f"{c}-label"] for r in rows if r[f"{c}-iou"] > threshold and r[f"{c}-label"]}),
        }
    return {
        "detectors": len(detectors),
        "unique_top": len({r["label"] for r in detectors}),
        "unique_by_category": sum(p["unique_by_category"] for p in per.values()),
        "per": per,
    }


@pytest.mark.parametrize("threshold", [0.04, 0.08])
def test_counts_match_definitions(tmp_path: Path, threshold: float) -> None:
    layer = make_layer(tmp_path, units=60, seed=6)
    result, categories = read_result_csv(layer.result_csv)
    rows = result.to_dict("records")
    counts = count_detectors(result, categories, threshold)
    ref = count_reference(rows, categories, threshold)
    assert (counts.detectors, counts.unique_top, counts.unique_by_category) == (
        ref["detectors"],
        ref["unique_top"],
        ref["unique_by_category"],
    )
    assert counts.per_category == ref["per"]
    assert counts.units == 60 and counts.unique_top < counts.detectors
    bars = label_bars(result, categories, threshold)
    assert sum(n for *_, n in bars) == ref["detectors"]
    for cat, label, n in bars:
        assert n == sum(
            r["label"] == label and r["category"] == cat for r in rows if r["score"] >= threshold and r["label"]
        )
    assert [categories.index(c) for c, *_ in bars] == sorted(categories.index(c) for c, *_ in bars)


def test_counts_on_a_hand_written_table() -> None:
    # 4 units, categories a, b; threshold 0.04: units 1, 2 detect 'x' (a), unit 3 'y' (b), unit 4 none.
    text = (
        "unit,category,label,score,a-label,a-truth,a-activation,a-intersect,a-iou,"
        "b-label,b-truth,b-activation,b-intersect,b-iou\n"
        "3,b,y,0.2,x,10,5,1,0.05,y,10,5,4,0.2\n"
        "1,a,x,0.1,x,10,5,2,0.1,y,10,5,1,0.04\n"
        "2,a,x,0.04,x,10,5,1,0.04,,0,5,0,0\n"
        "4,a,,0,,0,5,0,0,,0,5,0,0\n"
    )
    result, categories = parse_result(pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False))
    counts = count_detectors(result, categories, 0.04)
    assert (counts.detectors, counts.unique_top) == (3, 2)
    # by category: a-iou > 0.04 only for units 3 (x) and 1 (x) -> 1; b-iou > 0.04 only unit 3 (y) -> 1
    assert counts.unique_by_category == 2
    assert counts.per_category == {
        "a": {"detectors": 2, "unique_top": 1, "unique_by_category": 1},
        "b": {"detectors": 1, "unique_top": 1, "unique_by_category": 1},
    }
    assert headline(counts) == "3 of 4 units are detectors, covering 2 concepts with IoU ≥ 0.04"
    assert label_bars(result, categories, 0.04) == [("a", "x", 2), ("b", "y", 1)]
    order = result["unit"].to_numpy()[unit_order(result, categories, 0.04)]
    assert order.tolist() == [1, 2, 3, 4]  # detectors by category (a: by score), then the rest


# ---------------------------------------------------------------- summary


def test_summary_csv_numbers(tmp_path: Path) -> None:
    entries = []
    for i, name in enumerate(["layer3", "layer4"]):
        layer = make_layer(tmp_path / name, units=30 + 10 * i, seed=10 + i)
        result, categories = read_result_csv(layer.result_csv)
        entries.append(LayerEntry("synth", "resnet18", name, count_detectors(result, categories, 0.04)))
    table = list(csv.DictReader(io.StringIO(summary_csv(entries))))
    assert [r["layer"] for r in table] == ["layer3", "layer4"]
    for entry, row in zip(entries, table):
        c = entry.counts
        assert int(row["units"]) == c.units and int(row["detectors"]) == c.detectors
        assert int(row["unique_top"]) == c.unique_top and int(row["unique_by_category"]) == c.unique_by_category
        assert sum(int(row[f"{cat}-unique_by_category"]) for cat in CATEGORIES) == c.unique_by_category
        assert sum(int(row[f"{cat}-detectors"]) for cat in CATEGORIES) == c.detectors
        for cat in CATEGORIES:
            assert int(row[f"{cat}-unique_top"]) == c.per_category[cat]["unique_top"]
    index = render_summary_report(tmp_path / "all", entries)
    html = index.read_text()
    assert (tmp_path / "all" / "summary.csv").read_text() == summary_csv(entries)
    svg = (tmp_path / "all" / "unique_by_category.svg").read_text()
    for entry in entries:  # one stacked bar per layer, total on top
        assert f'data-name="resnet18 {entry.layer}" data-total="{entry.counts.unique_by_category}"' in svg
        column = re.search(rf'data-name="resnet18 {entry.layer}".*?</g>', svg, re.S).group(0)
        heights = [int(n) for n in re.findall(r'data-count="(\d+)"', column)]
        assert sum(heights) == entry.counts.unique_by_category
    assert html.count("<tr data-model=") == 2


# ---------------------------------------------------------------- the layer report as files


def test_layer_report_escapes_labels_and_lists_every_unit(tmp_path: Path) -> None:
    layer = make_layer(tmp_path / "layer", units=20, seed=7)
    result, categories = read_result_csv(layer.result_csv)
    index = render_layer_report(
        tmp_path / "report",
        result,
        categories,
        {"model": "m", "layer": "l"},
        layer.thresholds,
        layer.imgmax,
        layer.maps_for_rows,
        layer.load_image,
        topk=5,
    )
    html = index.read_text()
    assert XSS_LABEL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>bold</b>" not in html
    assert html.count('<article class="unit') == 20
    assert sorted(p.name for p in (tmp_path / "report" / "strips").iterdir()) == [
        f"unit_{u:04d}.jpg" for u in range(1, 21)
    ]
    assert headline(count_detectors(result, categories, 0.04)) in html
    for name in ("report.css", "report.js", "detectors.svg"):
        assert (tmp_path / "report" / name).stat().st_size > 100
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from elsewhere


def test_failed_report_leaves_no_output(tmp_path: Path) -> None:
    layer = make_layer(tmp_path / "layer", units=8, seed=8)
    result, categories = read_result_csv(layer.result_csv)
    out = tmp_path / "out" / "report"

    def broken(rows):
        raise NetDissectError("shard 3 is missing")

    with pytest.raises(NetDissectError, match="shard 3"):
        render_layer_report(out, result, categories, {}, layer.thresholds, layer.imgmax, broken, layer.load_image)
    assert list((tmp_path / "out").iterdir()) == []
    render_layer_report(
        out, result, categories, {}, layer.thresholds, layer.imgmax, layer.maps_for_rows, layer.load_image, topk=2
    )
    with pytest.raises(NetDissectError):  # an old report survives a failure
        render_layer_report(out, result, categories, {}, layer.thresholds, layer.imgmax, broken, layer.load_image)
    assert (out / "index.html").is_file() and [p.name for p in (tmp_path / "out").iterdir()] == ["report"]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("unit,", "unt,", 1), "missing column"),
        (lambda t: t.replace(",object-iou", ",object-iouX", 1), "object-iou"),
        (lambda t: re.sub(r"\n(\d+),", "\n1,", t, count=2), "exactly once"),
        (lambda t: re.sub(r"\n(\d+),(\w+),([^,]*),[^,]+,", r"\n\1,\2,\3,abc,", t, count=1), r"row 2, column 'score'"),
    ],
)
def test_bad_result_csv_is_explained(tmp_path: Path, edit, message) -> None:
    layer = make_layer(tmp_path, units=5, seed=9)
    layer.result_csv.write_text(edit(layer.result_csv.read_text()))
    with pytest.raises(NetDissectError, match=message):
        read_result_csv(layer.result_csv)


def test_mismatched_arrays_are_explained(tmp_path: Path) -> None:
    layer = make_layer(tmp_path / "layer", units=6, seed=10)
    result, categories = read_result_csv(layer.result_csv)
    with pytest.raises(NetDissectError, match=r"thresholds.npy.*\(6,\)"):
        render_layer_report(
            tmp_path / "r",
            result,
            categories,
            {},
            layer.thresholds[:5],
            layer.imgmax,
            layer.maps_for_rows,
            layer.load_image,
        )
    with pytest.raises(NetDissectError, match=r"imgmax.npy"):
        render_layer_report(
            tmp_path / "r",
            result,
            categories,
            {},
            layer.thresholds,
            layer.imgmax[:, :4],
            layer.maps_for_rows,
            layer.load_image,
        )
    with pytest.raises(NetDissectError, match="iou_threshold"):
        render_layer_report(
            tmp_path / "r",
            result,
            categories,
            {"iou_threshold": "high"},
            layer.thresholds,
            layer.imgmax,
            layer.maps_for_rows,
            layer.load_image,
        )
    assert not (tmp_path / "r").exists()
