"""The paper's experiments and the per-unit significance test (docs/experiments.md).

- :mod:`netdissect.experiments.rotation`: dissecting a layer in a randomly rotated basis (§1);
- :mod:`netdissect.experiments.snapshots`: training snapshots and their steps (§2);
- :mod:`netdissect.experiments.significance`: a permutation test of every unit's score (§3);
- :mod:`netdissect.experiments.sweep`: a sweep's table and chart (unique detectors per category
  against the rotation power or the training step).
"""
