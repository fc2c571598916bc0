"""The engine's thresholds, counts and scores equal a plain brute-force reference, exactly."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch import nn

from netdissect import pipeline
from netdissect.broden import BrodenDataset
from netdissect.counts import load_counts
from netdissect.shards import read_imgmax
from tests.test_engine_helpers import CATEGORIES, NAMES, reference, write_tiny_broden

SPEC = "tests.test_engine_reference:make_model"
LAYERS = ["0", "2", "4"]  # 16x16 (downsampled to the 8x8 labels), 8x8, 4x4 after a ReLU (ties at 0)


def make_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(5, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 2, 1),
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_broden(tmp_path_factory.mktemp("tiny") / "broden", n_images=12, seg=8, scale=2, seed=3)


def direct_forward(images: np.ndarray, layer: str) -> np.ndarray:
    """The layer's output computed without the engine (ImageNet normalisation)."""
    model = make_model().eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        return model[: int(layer) + 1](x).numpy()


def reference_scores(ref: dict, primary: np.ndarray, num_categories: int) -> list[dict]:
    """Per unit: best label and IoU per category and overall, plainly (docs/dissection.md §5)."""
    units = []
    for u in range(ref["I"].shape[0]):
        best = []
        for c in range(num_categories):
            top_label, top_iou = 0, 0.0
            for l in range(1, len(primary)):
                if primary[l] != c:
                    continue
                value = ref["I"][u, l] / (ref["C"][u, c] + ref["G"][l] - ref["I"][u, l] + 1e-10)
                if value > top_iou:
                    top_label, top_iou = l, value
            best.append((top_label, top_iou))
        c = max(range(num_categories), key=lambda k: (best[k][1], -k))
        units.append({"best": best, "category": c, "label": best[c][0], "score": best[c][1]})
    return units


@pytest.mark.parametrize("union", ["paper", "lite"])
def test_dissect_equals_brute_force(tiny, tmp_path, union):
    out = tmp_path / "out"
    pipeline.dissect(tiny.root, SPEC, LAYERS, out, q=0.05, union=union, batch_size=5, progress=False)
    for layer in LAYERS:
        acts = np.load(out / "shards" / "0" / f"{layer}.act.npy")
        np.testing.assert_allclose(acts, direct_forward(tiny.images, layer), rtol=1e-5, atol=1e-5)
        ref = reference(acts, tiny, q=0.05, union=union)
        counts = load_counts(out / layer / "counts.npz")
        assert np.array_equal(np.load(out / layer / "thresholds.npy"), ref["thresholds"])
        for key in ("G", "I", "C"):
            assert np.array_equal(counts[key], ref[key]), (layer, key)
        if layer != "0":  # (layer 0's isolated peaks average out when shrunk to 8x8)
            assert counts["I"].sum() > 0 and counts["C"].sum() > 0
        assert "imgmax" not in counts  # stored once, in the shard
        assert np.array_equal(read_imgmax(out / "shards" / "0", layer), acts.max(axis=(2, 3)))
        assert counts["settings"]["union"] == union

        # result.csv: rows sorted by score, every category's best label and numbers as in the reference
        with open(out / layer / "result.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        expected = reference_scores(ref, tiny.primary, len(CATEGORIES))
        assert [float(r["score"]) for r in rows] == sorted((e["score"] for e in expected), reverse=True)
        for row in rows:
            e = expected[int(row["unit"]) - 1]
            assert float(row["score"]) == e["score"]
            assert row["label"] == (NAMES[e["label"]] if e["label"] else "")
            for c, cat in enumerate(CATEGORIES):
                label, value = e["best"][c]
                assert row[f"{cat}-label"] == (NAMES[label] if label else "")
                assert float(row[f"{cat}-iou"]) == value
                assert int(row[f"{cat}-activation"]) == ref["C"][int(row["unit"]) - 1, c]
                assert int(row[f"{cat}-truth"]) == (ref["G"][label] if label else 0)


def test_shards_merge_to_the_whole(tiny, tmp_path):
    shard_dirs = []
    for k in range(3):
        d = tmp_path / "shards" / str(k)
        pipeline.extract(tiny.root, SPEC, ["2", "4"], k, 3, d, quantile=0.1, batch_size=3, progress=False)
        shard_dirs.append(d)
    # The whole dataset's activations. (Taken from the shards: a convolution's float32 output may
    # differ in the last bit with the batch composition, so a separate run is not bitwise comparable.)
    acts = np.concatenate([np.load(d / "2.act.npy") for d in shard_dirs])
    whole = reference(acts, tiny, q=0.1)
    # thresholds merged from the shards' candidates equal numpy's over all values
    thresholds = pipeline.quantile(shard_dirs[::-1], "2", tmp_path / "layer")
    assert np.array_equal(thresholds, whole["thresholds"])
    assert np.array_equal(thresholds, np.quantile(acts.astype(np.float64), 0.9, axis=(0, 2, 3)))
    # a smaller q than extracted for is still exact (it needs fewer candidates)
    t2 = pipeline.quantile(shard_dirs, "2", tmp_path / "layer_q", q=0.05)
    assert np.array_equal(t2, np.quantile(acts.astype(np.float64), 0.95, axis=(0, 2, 3)))
    # counts of the shards add up to the counts of the whole
    tallies = []
    for k, d in enumerate(shard_dirs):
        tallies.append(tmp_path / "tally" / f"{k}.npz")
        pipeline.tally(
            tiny.root, d, "2", tmp_path / "layer" / "thresholds.npy", tallies[-1], batch_size=2, progress=False
        )
        part = load_counts(tallies[-1])
        ref = reference(acts, tiny, thresholds=thresholds, rows=range(part["start"], part["stop"]))
        assert np.array_equal(part["I"], ref["I"]) and np.array_equal(part["C"], ref["C"])
        assert part["I"].sum() < whole["I"].sum()
    merged = pipeline.merge(tallies[::-1], tmp_path / "counts.npz")
    for key in ("G", "I", "C"):
        assert np.array_equal(merged[key], whole[key]), key
    assert np.array_equal(read_imgmax(shard_dirs[::-1], "2"), acts.max(axis=(2, 3)))
    assert sorted(p.name for p in (tmp_path / "layer").iterdir()) == ["thresholds.json", "thresholds.npy"]
    # the merged file reads back the same
    again = load_counts(tmp_path / "counts.npz")
    assert np.array_equal(again["I"], whole["I"]) and (again["start"], again["stop"]) == (0, 12)


def test_float16_thresholds_use_stored_values(tiny, tmp_path):
    d = tmp_path / "s"
    pipeline.extract(tiny.root, SPEC, ["2"], 0, 1, d, dtype="float16", quantile=0.05, progress=False)
    acts = np.load(d / "2.act.npy")
    assert acts.dtype == np.float16
    t = pipeline.quantile([d], "2", tmp_path / "l")
    assert np.array_equal(t, np.quantile(acts.astype(np.float64), 0.95, axis=(0, 2, 3)))
    assert np.array_equal(np.load(d / "2.imgmax.npy"), acts.max(axis=(2, 3)).astype(np.float32))


def test_category_subset(tiny, tmp_path):
    out = tmp_path / "out"
    pipeline.dissect(tiny.root, SPEC, ["2"], out, q=0.05, categories=["object", "part"], progress=False)
    header = (out / "2" / "result.csv").read_text().splitlines()[0].split(",")
    assert header[4:] == [
        f"{c}-{k}" for c in ("object", "part") for k in ("label", "truth", "activation", "intersect", "iou")
    ]
    counts = load_counts(out / "2" / "counts.npz")
    ds = BrodenDataset(tiny.root, categories=["object", "part"], load_images=False)
    assert counts["C"].shape == (5, 2) and counts["settings"]["categories"] == ds.categories
    # color labels are not counted when color is not selected
    assert counts["G"][1:5].sum() == 0 and counts["G"][5] > 0


def test_tally_in_worker_processes_equals_reference(tiny, tmp_path):
    """Batches counted in 2 worker threads add up to the reference, from the PNGs and from packed
    labels; batches counted in the main process (the path a GPU takes: workers only read) give the
    same per-batch counts."""
    from netdissect.tally import BatchCounter, ShardBatches

    d = tmp_path / "shard"
    pipeline.extract(tiny.root, SPEC, ["2"], 0, 1, d, quantile=0.1, progress=False)
    thresholds = pipeline.quantile([d], "2", tmp_path / "layer")
    acts = np.load(d / "2.act.npy")
    from netdissect.broden.pack import pack_labels

    pack_labels(tiny.root, tmp_path / "labels", workers=0, progress=False)
    for union in ("paper", "lite"):
        ref = reference(acts, tiny, thresholds=thresholds, union=union)
        for labels in (None, tmp_path / "labels"):  # PNGs, packed labels
            counts = pipeline.tally(
                tiny.root,
                d,
                "2",
                tmp_path / "layer" / "thresholds.npy",
                tmp_path / "t.npz",
                union=union,
                batch_size=5,
                threads=2,
                progress=False,
                labels=labels,
            )
            for key in ("G", "I", "C"):
                assert np.array_equal(counts[key], ref[key]), (union, labels, key)
    ds = BrodenDataset(tiny.root, load_images=False)
    counter = BatchCounter(thresholds, ds.primary, len(ds.categories), "lite")
    imgmax = np.load(d / "2.imgmax.npy")
    counted = ShardBatches(ds, ds.num_labels, d / "2.act.npy", imgmax, 0, len(ds), 5, counter)
    raw = ShardBatches(ds, ds.num_labels, d / "2.act.npy", imgmax, 0, len(ds), 5)
    assert len(counted) == 3 and [counted[j]["rows"] for j in range(3)] == [5, 5, 2]
    for j in range(3):
        here, there = counter(raw[j]), counted[j]
        assert all(np.array_equal(here[key], there[key]) for key in "GIC")
