"""``netdissect compare A B``: do two dissections of one layer agree?

Both files are read by :func:`netdissect.report.results.read_result_file` (any of the three layouts), matched
unit by unit (unit numbers are 1-based in all of them) and category by name (their column orders
differ). Reported: how many units have the same label overall (same category and label) and in each
category, the differences of the IoUs (the unit's score and each category's best IoU), the detector
counts of both, and every unit that differs: another label overall or in a category, or an IoU that
differs by more than the tolerance. The two files agree when no unit differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from netdissect.defaults import COMPARE_LIMIT, COMPARE_TOLERANCE
from netdissect.errors import NetDissectError
from netdissect.report.results import LAYOUTS, ResultFile, count_detectors
from netdissect.score import LayerCounts


@dataclass(frozen=True)
class Comparison:
    """The comparison of two result tables of ``units`` units, in unit order (index u = unit u + 1)."""

    units: int
    categories: list[str]
    same_label: np.ndarray  # (U,) bool: same overall category and label
    same_category_label: dict[str, np.ndarray]  # category -> (U,) bool
    score_diff: np.ndarray  # (U,) |score A - score B|
    iou_diff: dict[str, np.ndarray]  # category -> (U,) |iou A - iou B|
    differing: pd.DataFrame  # one row per unit that differs (see compare_results)
    tolerance: float

    @property
    def agree(self) -> bool:
        return self.differing.empty


def check_comparable(a: ResultFile, b: ResultFile) -> None:
    """Refuse two files of different layers: other units or other categories."""
    if a.units != b.units:
        raise NetDissectError(
            f"{a.path} has {a.units} units and {b.path} has {b.units}: they are not results of the same layer. "
            "Compare the result files of one layer of one network."
        )
    if set(a.categories) != set(b.categories):
        only_a = sorted(set(a.categories) - set(b.categories))
        only_b = sorted(set(b.categories) - set(a.categories))
        raise NetDissectError(
            f"{a.path} and {b.path} score different categories (only in the first: {only_a or 'none'}; only in "
            f"the second: {only_b or 'none'}), so their labels cannot be compared. Dissect again with the same "
            "categories, e.g. `netdissect dissect --categories object,part,scene,texture,color` for "
            "NetDissect-Lite's default."
        )


def compare_results(a: ResultFile, b: ResultFile, tolerance: float = COMPARE_TOLERANCE) -> Comparison:
    """Compare two result files unit by unit (module docstring); ``differing`` has the columns unit,
    A category/label/score, B category/label/score, ``same_label`` (overall), ``labels_differ_in`` (categories whose best label
    differs, comma-separated) and ``max_iou_diff`` (over the score and every category)."""
    check_comparable(a, b)
    if not tolerance >= 0:
        raise NetDissectError(f"--tolerance {tolerance}: expected a number >= 0.")
    ta = a.table.sort_values("unit", kind="stable").reset_index(drop=True)
    tb = b.table.sort_values("unit", kind="stable").reset_index(drop=True)
    categories = list(a.categories)
    a_labelled, b_labelled = ta["label"] != "", tb["label"] != ""
    same_label = (
        (ta["label"] == tb["label"]) & ((ta["category"] == tb["category"]) | ~a_labelled) & (a_labelled == b_labelled)
    ).to_numpy()
    same_category_label = {c: (ta[f"{c}-label"] == tb[f"{c}-label"]).to_numpy() for c in categories}
    score_diff = np.abs(ta["score"].to_numpy() - tb["score"].to_numpy())
    iou_diff = {c: np.abs(ta[f"{c}-iou"].to_numpy() - tb[f"{c}-iou"].to_numpy()) for c in categories}
    all_diffs = np.stack([score_diff, *iou_diff.values()], axis=1)
    same_everywhere = np.stack(list(same_category_label.values()), axis=1).all(axis=1)
    differ = ~same_label | ~same_everywhere | (all_diffs.max(axis=1) > tolerance)
    rows = np.flatnonzero(differ)
    differing = pd.DataFrame(
        {
            "unit": ta["unit"].to_numpy()[rows],
            "a_category": ta["category"].to_numpy()[rows],
            "a_label": ta["label"].to_numpy()[rows],
            "a_score": ta["score"].to_numpy()[rows],
            "b_category": tb["category"].to_numpy()[rows],
            "b_label": tb["label"].to_numpy()[rows],
            "b_score": tb["score"].to_numpy()[rows],
            "same_label": same_label[rows],
            "labels_differ_in": [
                ",".join(c for c in categories if not same_category_label[c][r]) for r in rows.tolist()
            ],
            "max_iou_diff": all_diffs.max(axis=1)[rows],
        }
    )
    return Comparison(len(ta), categories, same_label, same_category_label, score_diff, iou_diff, differing, tolerance)


def _share(n: int, total: int) -> str:
    return f"{n} of {total} ({100 * n / total:.1f} %)"


def _label(category: str, label: str, score: float) -> str:
    return f"{label} ({category}, {score:.4f})" if label else f"- ({score:.4f})"


def describe(
    comparison: Comparison,
    a: ResultFile,
    b: ResultFile,
    counts_a: LayerCounts,
    counts_b: LayerCounts,
    limit: int = COMPARE_LIMIT,
) -> str:
    """The text ``netdissect compare`` prints."""
    c, u = comparison, comparison.units
    lines = [
        f"A: {a.path} ({LAYOUTS[a.layout]}, {a.units} units)",
        f"B: {b.path} ({LAYOUTS[b.layout]}, {b.units} units)",
        f"same label: {_share(int(c.same_label.sum()), u)} units; "
        f"unit IoU |A - B|: max {c.score_diff.max():.3g}, mean {c.score_diff.mean():.3g}",
    ]
    width = max(len(cat) for cat in c.categories)
    for cat in c.categories:
        diff = c.iou_diff[cat]
        lines.append(
            f"  {cat:<{width}}  same label {_share(int(c.same_category_label[cat].sum()), u)}; "
            f"IoU |A - B| max {diff.max():.3g}, mean {diff.mean():.3g}"
        )
    lines.append(
        f"detectors (IoU >= {counts_a.iou_threshold:g}): A {counts_a.detectors}, B {counts_b.detectors}; "
        f"unique_by_category A {counts_a.unique_by_category}, B {counts_b.unique_by_category}; "
        f"unique_top A {counts_a.unique_top}, B {counts_b.unique_top}"
    )
    if c.agree:
        lines.append(f"agree: every unit has the same labels and IoUs within {c.tolerance:g}.")
        return "\n".join(lines) + "\n"
    n = len(c.differing)
    lines.append(f"{n} unit{'s differ' if n > 1 else ' differs'} (another label, or an IoU beyond {c.tolerance:g}):")
    shown = c.differing.sort_values(["same_label", "max_iou_diff", "unit"], ascending=[True, False, True])
    for row in shown.head(limit).itertuples(index=False):
        where = f"; labels differ in {row.labels_differ_in}" if row.labels_differ_in else ""
        lines.append(
            f"  unit {row.unit}: A {_label(row.a_category, row.a_label, row.a_score)}, "
            f"B {_label(row.b_category, row.b_label, row.b_score)}; max IoU diff {row.max_iou_diff:.3g}{where}"
        )
    if len(c.differing) > limit:
        lines.append(f"  ... and {len(c.differing) - limit} more (--limit N shows more).")
    return "\n".join(lines) + "\n"


def compare_files(a: ResultFile, b: ResultFile, tolerance: float, iou_threshold: float, limit: int) -> tuple[str, bool]:
    """The printed comparison and whether the files agree."""
    comparison = compare_results(a, b, tolerance)
    counts_a = count_detectors(a.table, a.categories, iou_threshold)
    counts_b = count_detectors(b.table, b.categories, iou_threshold)
    return describe(comparison, a, b, counts_a, counts_b, limit), comparison.agree
