"""Small pieces checked by hand or against numpy: quantile candidates, the union rules, score rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from netdissect.counts import pad_labels, tally_batch
from netdissect.errors import NetDissectError
from netdissect.quantile import TopK, candidate_count, load_thresholds, merge_candidates, thresholds_from_candidates
from netdissect.score import score_units, unit_counts


@pytest.mark.parametrize("q", [0.005, 5 / 999, 0.05, 0.3, 0.5, 0.0])
@pytest.mark.parametrize("n", [1, 2, 7, 199, 1000, 4321])
def test_thresholds_from_streamed_candidates_equal_numpy(n, q):
    rng = np.random.default_rng(n)
    values = rng.standard_normal((3, n)).astype(np.float32)
    values[1, : n // 2] = values[1, 0]  # many ties
    values[2] = np.round(values[2])  # few distinct values
    k = candidate_count(n, q)
    # stream in uneven blocks, split over two "shards", merge
    shards = []
    for part in np.array_split(values, 2, axis=1):
        acc = TopK(k)
        for block in np.array_split(part, 5, axis=1):
            acc.add(torch.from_numpy(block))
        shards.append(acc.result() if part.shape[1] else np.empty((3, 0), np.float32))
    merged = merge_candidates(shards, k)
    assert merged.shape == (3, min(k, n))
    expected = np.quantile(values.astype(np.float64), 1 - q, axis=1)
    assert np.array_equal(thresholds_from_candidates(merged, n, q), expected)


def test_too_few_candidates_is_an_error():
    with pytest.raises(NetDissectError, match="re-run extract with --quantile 0.5"):
        thresholds_from_candidates(np.zeros((2, 3), np.float32), 100, 0.5)


def test_thresholds_file_length_is_checked(tmp_path):
    np.save(tmp_path / "t.npy", np.zeros(3))
    with pytest.raises(NetDissectError, match="expected 4 numbers .* layer conv"):
        load_thresholds(tmp_path / "t.npy", 4, "conv")
    assert load_thresholds(tmp_path / "t.npy", 3, "conv").dtype == np.float64


def test_paper_and_lite_differ_by_hand():
    """One unit, 2x2 maps = 2x2 labels. Categories: object (label 1 = car), part (label 2 = wheel).

    image 0: object [[1,1],[0,0]], part [[0,0],[2,2]]; mask [[x,.],[.,.]]  (|M| = 1, on car)
    image 1: object [[1,0],[0,0]], part none;          mask [[x,x],[.,.]]  (|M| = 2, one pixel on car)
    image 2: object [[0,0],[1,1]], part none;          mask [[x,.],[.,.]]  (|M| = 1, on nothing)
    G[car] = 2 + 1 + 2 = 5, I[car] = 1 + 1 + 0 = 2, G[wheel] = 2, I[wheel] = 0.
    paper: C[object] = 1 + 2 + 1 = 4 (every image has an object), C[part] = 1 (only image 0 has a part)
    lite:  C[object] = 1 + 2 + 0 = 3 (image 2's mask touches no object), C[part] = 0
    IoU(car) = 2 / (4 + 5 - 2) = 2/7 under paper, 2 / (3 + 5 - 2) = 1/3 under lite.
    """
    acts = torch.tensor([[[5.0, 0], [0, 0]], [[5.0, 5], [0, 0]], [[5.0, 0], [0, 0]]])[:, None]
    pixel_labels = [
        torch.tensor([[[1, 1], [0, 0]], [[0, 0], [2, 2]]], dtype=torch.int32),
        torch.tensor([[[1, 0], [0, 0]]], dtype=torch.int32),
        torch.tensor([[[0, 0], [1, 1]]], dtype=torch.int32),
    ]
    layers, image_labels = pad_labels(pixel_labels, [torch.zeros(0, dtype=torch.int64)] * 3)
    primary = torch.tensor([-1, 0, 1])
    threshold = torch.tensor([1.0], dtype=torch.float64)
    results = {}
    for union in ("paper", "lite"):
        G, I, C = tally_batch(acts, acts.amax(dim=(2, 3)), threshold, layers, image_labels, primary, 2, union)
        assert G.tolist() == [0, 5, 2] and I.tolist() == [[0, 2, 0]]
        results[union] = (C.tolist(), score_units(G.numpy(), I.numpy(), C.numpy(), primary.numpy()))
    assert results["paper"][0] == [[4, 1]] and results["lite"][0] == [[3, 0]]
    assert results["paper"][1].score[0] == pytest.approx(2 / 7, abs=1e-9)
    assert results["lite"][1].score[0] == pytest.approx(1 / 3, abs=1e-9)


def test_image_level_labels_count_the_whole_mask():
    acts = torch.tensor([[[2.0, 0], [0, 0]], [[2.0, 2], [2, 0]]])[:, None]
    layers, image_labels = pad_labels(
        [torch.zeros((0, 2, 2), dtype=torch.int32)] * 2, [torch.tensor([3, 3]), torch.tensor([3, 0, 4])]
    )
    primary = torch.tensor([-1, -1, -1, 0, 0])
    G, I, C = tally_batch(acts, acts.amax(dim=(2, 3)), torch.tensor([1.0]), layers, image_labels, primary, 1)
    assert G.tolist() == [0, 0, 0, 8, 4]  # duplicates count once, label 0 never
    assert I.tolist() == [[0, 0, 0, 1 + 3, 3]] and C.tolist() == [[4]]


def test_score_rules_ties_and_unique_counts():
    # 3 units, labels 1..4: 1,2 in category 0, 3,4 in category 1
    primary = np.array([-1, 0, 0, 1, 1])
    G = np.array([0, 10, 10, 10, 10])
    C = np.array([[10, 10], [10, 10], [10, 10]])
    I = np.array(
        [
            [0, 5, 5, 0, 0],  # tie in category 0 -> label 1 (lowest number)
            [0, 0, 0, 5, 2],  # category 1 wins, label 3
            [0, 0, 0, 0, 0],
        ]
    )  # nothing: empty label, not a detector
    s = score_units(G, I, C, primary, iou_threshold=0.04)
    assert s.label.tolist() == [1, 3, 0] and s.category.tolist() == [0, 1, 0]
    assert s.detector.tolist() == [True, True, False]
    assert s.best_label.tolist() == [[1, 0], [0, 3], [0, 0]]
    counts = unit_counts(s, ["a", "b"])
    assert counts.unique_top == 2 and [c["unique_by_category"] for c in counts.per_category.values()] == [1, 1]
    assert s.score[0] == 5 / (10 + 10 - 5 + 1e-10)
    # at iou_threshold 0 a unit without a label is still no detector (one rule: netdissect.score.detector_mask)
    assert score_units(G, I, C, primary, iou_threshold=0.0).detector.tolist() == [True, True, False]


@pytest.mark.parametrize(
    "h,w,sh,sw", [(7, 7, 112, 112), (7, 7, 113, 113), (3, 5, 12, 7), (16, 16, 8, 8), (1, 1, 4, 4), (4, 4, 4, 4)]
)
def test_masked_pixels_equal_bilinear_everywhere(h, w, sh, sw):
    """Cell-by-cell masks equal the masks of the fully upsampled maps, thresholds at corner values too."""
    from netdissect.masks import BILINEAR, grid_cells, masked_pixels
    from tests.test_engine_helpers import bilinear

    rng = np.random.default_rng(h * 100 + sh)
    maps = rng.standard_normal((12, h, w)).astype(np.float32)
    maps[:3] = np.round(maps[:3])  # plateaus: equal corners
    thresholds = np.quantile(maps.reshape(12, -1).astype(np.float64), 0.8, axis=1)
    thresholds[3:6] = maps[3:6, 0, 0]  # a threshold equal to a corner value
    thresholds[6] = -10.0  # everything inside
    thresholds[7] = 10.0  # nothing inside
    ys, xs = grid_cells(BILINEAR, h, w, sh, sw)
    pair, pix = masked_pixels(torch.from_numpy(maps), torch.from_numpy(thresholds), ys, xs)
    got = np.zeros((12, sh * sw), bool)
    got[pair.numpy(), pix.numpy()] = True
    assert pair.numel() == got.sum()  # no pixel listed twice
    expected = np.stack([(bilinear(m.astype(np.float64), sh, sw) > t).ravel() for m, t in zip(maps, thresholds)])
    assert np.array_equal(got, expected)
    # and they agree with torch's float32 F.interpolate except where a value ties the threshold
    up = (
        torch.nn.functional.interpolate(
            torch.from_numpy(maps)[:, None], size=(sh, sw), mode="bilinear", align_corners=False
        )
        .reshape(12, -1)
        .double()
        .numpy()
    )
    close = np.abs(up - thresholds[:, None]) <= 1e-6 * np.maximum(1, np.abs(up))
    assert np.array_equal((up > thresholds[:, None])[~close], expected[~close])
