"""Benchmark: the report of a 512-unit layer with its top 10 images per unit.

Builds its own fixture once (cached in --cache): a Broden-format dataset of --images JPEGs of
224x224 (written with netdissect.broden.writer), random 7x7 maps for 512 units stored as a .npy read
through a memory map (as the shards are), their thresholds (top 0.5%) and imgmax, and a random
result.csv. Then times `render_layer_report` end to end (reading result.csv, opening the dataset,
choosing top images, reading maps, decoding each needed image once, blending, writing 512 JPEG strips
and the HTML), --repeat times, and prints the seconds and a breakdown by phase.

    python benchmarks/bench_report.py [--images 1000] [--units 512] [--topk 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from netdissect.broden import BrodenDataset
from netdissect.broden.writer import compute_tables, write_image, write_index, write_tables
from netdissect.report import read_result_csv, read_summary, render_layer_report
from netdissect.report.strips import gather_maps, load_images, render_strips, top_rows

CATEGORIES = {
    "color": ["red-c", "green-c", "blue-c", "grey-c"],
    "object": [f"object{i}" for i in range(60)],
    "part": [f"part{i}" for i in range(30)],
    "material": [f"material{i}" for i in range(10)],
    "scene": [f"scene{i}-s" for i in range(50)],
    "texture": [f"texture{i}" for i in range(20)],
}


def make_dataset(root: Path, images: int, size: int, seed: int) -> None:
    """A Broden folder whose only labels are one constant colour layer per image."""
    rng = np.random.default_rng(seed)
    colors = CATEGORIES["color"]
    tables = compute_tables({(name, "color"): (images // len(colors), images / len(colors)) for name in colors})
    write_tables(root, tables)
    rows = []
    for i in range(images):
        coarse = torch.from_numpy(rng.random((1, 3, 4, 4)).astype(np.float32) * 255)
        rgb = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        rgb = rgb[0].clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        label = np.full((size // 2, size // 2), tables.number(colors[i % len(colors)]), dtype=np.int32)
        rows.append(write_image(root, f"bench/img{i:05d}.jpg", rgb, {"color": label}))
    write_index(root, rows, tables.categories)


def make_layer(folder: Path, images: int, units: int, seed: int) -> None:
    """result.csv, summary.json, thresholds.npy, imgmax.npy and activations (images, units, 7, 7)."""
    rng = np.random.default_rng(seed)
    acts = rng.gamma(2.0, 1.0, size=(images, units, 7, 7)).astype(np.float32)
    np.save(folder / "acts.npy", acts)
    np.save(folder / "imgmax.npy", acts.max(axis=(2, 3)))
    np.save(folder / "thresholds.npy", np.quantile(acts.transpose(1, 0, 2, 3).reshape(units, -1), 0.995, axis=1))
    header = ["unit", "category", "label", "score"] + [
        f"{c}-{f}" for c in CATEGORIES for f in ("label", "truth", "activation", "intersect", "iou")
    ]
    rows = []
    for unit in range(1, units + 1):
        ious = {c: float(rng.random() * 0.15) for c in CATEGORIES}
        labels = {c: str(rng.choice(names)) for c, names in CATEGORIES.items()}
        best = max(CATEGORIES, key=lambda c: ious[c])
        row = [unit, best, labels[best], repr(ious[best])]
        for c in CATEGORIES:
            row += [labels[c], 1000, 500, 50, repr(ious[c])]
        rows.append(row)
    rows.sort(key=lambda r: -float(r[3]))
    with open(folder / "result.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\r\n").writerows([header, *rows])
    (folder / "summary.json").write_text('{"layer": "bench", "iou_threshold": 0.04}\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (0: only build the fixture)")
    parser.add_argument("--threads", type=int, default=2, help="threads (torch and JPEG; default 2)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "netdissect-bench-report")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    fixture = args.cache / f"n{args.images}-u{args.units}-s{args.size}"
    if not (fixture / "layer" / "result.csv").exists():
        t0 = time.perf_counter()
        shutil.rmtree(fixture, ignore_errors=True)
        (fixture / "layer").mkdir(parents=True)
        make_dataset(fixture / "dataset", args.images, args.size, seed=0)
        make_layer(fixture / "layer", args.images, args.units, seed=1)
        print(f"fixture built in {time.perf_counter() - t0:.1f} s: {fixture}")
    if args.repeat < 1:
        return
    layer = fixture / "layer"
    print(
        f"load average before: {os.getloadavg()[0]:.2f}; {args.images} images of {args.size}px, "
        f"{args.units} units, top {args.topk}, {args.threads} threads"
    )

    times, cpu = [], []
    for run in range(args.repeat):
        out = Path(tempfile.mkdtemp(prefix="bench-report-"))
        t0, c0 = time.perf_counter(), time.process_time()
        result, categories = read_result_csv(layer / "result.csv")
        summary = read_summary(layer / "summary.json")
        acts = np.load(layer / "acts.npy", mmap_mode="r")
        dataset = BrodenDataset(fixture / "dataset", load_labels=False)
        render_layer_report(
            out / "report",
            result,
            categories,
            summary,
            np.load(layer / "thresholds.npy"),
            np.load(layer / "imgmax.npy"),
            lambda rows, acts=acts: acts[rows],
            lambda row, dataset=dataset: dataset[row]["image"],
            topk=args.topk,
            threads=args.threads,
        )
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        print(f"run {run + 1}: {times[-1]:.2f} s wall, {cpu[-1]:.2f} s CPU (all threads)")
        shutil.rmtree(out)
    print(
        f"report: best {min(times):.2f} s, median {np.median(times):.2f} s wall over {args.repeat} runs; "
        f"CPU median {np.median(cpu):.2f} s"
    )

    # where the time goes (one more pass, phase by phase)
    acts = np.load(layer / "acts.npy", mmap_mode="r")
    dataset = BrodenDataset(fixture / "dataset", load_labels=False)
    imgmax, thresholds = np.load(layer / "imgmax.npy"), np.load(layer / "thresholds.npy")
    t = [time.perf_counter()]
    top = top_rows(imgmax, args.topk)
    t.append(time.perf_counter())
    maps = gather_maps(top, lambda rows: acts[rows])
    t.append(time.perf_counter())
    load_images(np.unique(top), lambda row: dataset[row]["image"], args.threads)
    t.append(time.perf_counter())
    out = Path(tempfile.mkdtemp(prefix="bench-report-"))
    render_strips(out, top, maps, thresholds, lambda row: dataset[row]["image"], threads=args.threads)
    t.append(time.perf_counter())
    shutil.rmtree(out)
    print(
        f"phases: top rows {t[1] - t[0]:.2f} s, read maps {t[2] - t[1]:.2f} s, "
        f"decode {len(np.unique(top))} distinct images {t[3] - t[2]:.2f} s, "
        f"strips (decode again + masks + compose + JPEG) {t[4] - t[3]:.2f} s"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
