"""Synthetic inputs for the report tests (imported by the other ``test_report_*`` files).

A layer here is everything ``render_layer_report`` needs, made from a seeded RNG: a result.csv
written in docs/dissection.md §6 format, activations (N, U, H, W), their imgmax and thresholds, and RGB images.
The one test in this file checks that the builder's result.csv reads back unchanged.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from netdissect.report.results import CATEGORY_FIELDS, read_result_csv

CATEGORIES = ["color", "object", "part", "material", "scene", "texture"]
XSS_LABEL = "<script>alert(1)</script>"
LABELS = {
    "color": ["red-c", "blue-c", "grey-c"],
    "object": ["dog", "car", "carpet", "person", XSS_LABEL],
    "part": ["wheel", "head", 'a "quoted" & <b>bold</b> part'],
    "material": ["wood"],
    "scene": ["street-s", "kitchen-s"],
    "texture": ["striped", "banded"],
}


@dataclass
class SyntheticLayer:
    result_csv: Path
    acts: np.ndarray  # (N, U, H, W) float32
    imgmax: np.ndarray  # (N, U) float32
    thresholds: np.ndarray  # (U,) float64
    images: list[torch.Tensor]  # N x uint8 (3, size, size)

    def maps_for_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.acts[np.asarray(rows)]

    def load_image(self, row: int) -> torch.Tensor:
        return self.images[row]


def result_rows(rng: np.random.Generator, units: int, categories=CATEGORIES, labels=LABELS) -> list[dict]:
    """Random result.csv rows (docs/dissection.md §6): per category a label with IoU in [0, 0.12) or none; the unit's
    label is its best category's; unit 1 is an object detector labelled with a script tag."""
    rows = []
    for unit in range(1, units + 1):
        row: dict = {"unit": unit}
        best = (categories[0], "", 0.0)
        for cat in categories:
            has = rng.random() < 0.7
            label = str(rng.choice(labels[cat])) if has else ""
            iou = float(rng.random() * 0.12) if has else 0.0
            if unit == 1:
                label, iou = (XSS_LABEL, 0.5) if cat == "object" else ("", 0.0)
            activation = int(rng.integers(10, 500))
            row.update(
                {
                    f"{cat}-label": label,
                    f"{cat}-truth": int(rng.integers(100, 900)) if label else 0,
                    f"{cat}-activation": activation,
                    f"{cat}-intersect": int(rng.integers(1, 50)) if label else 0,
                    f"{cat}-iou": iou,
                }
            )
            if iou > best[2]:
                best = (cat, label, iou)
        row.update(category=best[0], label=best[1], score=best[2])
        rows.append(row)
    return sorted(rows, key=lambda r: (-r["score"], r["unit"]))


def write_result_csv(path: Path, rows: list[dict], categories=CATEGORIES) -> Path:
    header = ["unit", "category", "label", "score"] + [f"{c}-{f}" for c in categories for f in CATEGORY_FIELDS]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def smooth_image(rng: np.random.Generator, size: int) -> torch.Tensor:
    """A uint8 (3, size, size) picture of soft colour blobs: 3x3 random colours upsampled."""
    coarse = torch.from_numpy(rng.random((1, 3, 3, 3)).astype(np.float32) * 255)
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return fine[0].clamp(0, 255).round().to(torch.uint8)


def make_layer(
    folder: Path, units: int = 24, images: int = 30, size: int = 32, map_size: int = 4, seed: int = 0
) -> SyntheticLayer:
    """A synthetic layer in ``folder`` (result.csv written there); thresholds at the top 10%."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    result_csv = write_result_csv(folder / "result.csv", result_rows(rng, units))
    acts = rng.random((images, units, map_size, map_size)).astype(np.float32)
    imgmax = acts.max(axis=(2, 3))
    thresholds = np.quantile(acts.transpose(1, 0, 2, 3).reshape(units, -1), 0.9, axis=1)
    pictures = [smooth_image(rng, size) for _ in range(images)]
    return SyntheticLayer(result_csv, acts, imgmax, thresholds, pictures)


def test_written_result_reads_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rows = result_rows(rng, 12)
    table, categories = read_result_csv(write_result_csv(tmp_path / "result.csv", rows))
    assert categories == CATEGORIES
    assert table["unit"].tolist() == [r["unit"] for r in rows]
    assert table["label"].tolist() == [r["label"] for r in rows]
    assert np.array_equal(table["score"].to_numpy(), np.array([r["score"] for r in rows]))  # full precision
    assert table["part-label"].tolist() == [r["part-label"] for r in rows]
    assert pd.api.types.is_integer_dtype(table["object-truth"])
