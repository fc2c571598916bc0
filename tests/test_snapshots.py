"""Training snapshots (docs/experiments.md §2): their steps, and train-demo saving them without
changing the training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from netdissect.cli import main
from netdissect.demo.train import train_demo
from netdissect.errors import NetDissectError
from netdissect.experiments.snapshots import check_steps, log_steps
from tests.test_workflow_demo import _toy_problem


def test_log_steps_are_log_spaced_whole_steps_ending_with_the_last():
    assert log_steps(1000, 4) == [1, 10, 100, 1000]
    assert log_steps(378, 6) == [1, 3, 11, 35, 115, 378]
    assert log_steps(3, 6) == [1, 2, 3]  # repeats after rounding are dropped
    steps = log_steps(10**5, 11)
    ratios = np.diff(np.log10(steps))
    assert np.allclose(ratios, 0.5, atol=0.03)  # rounding 10**0.5 to 3 is the largest error


@pytest.mark.parametrize(
    "steps, words",
    [
        ([], "no steps given"),
        ([1, 10, 5], "step 5 follows step 10"),
        ([1, 1], "step 1 follows step 1"),
        ([0, 3], "step 0 is not a whole number >= 1"),
        ([1, 2.5], "step 2.5"),
        ([1, 40], "past the end of training (30 steps)"),
    ],
)
def test_bad_steps_are_refused(steps, words):
    with pytest.raises(NetDissectError, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_steps(steps, total=30)


def test_snapshots_hold_the_weights_of_their_steps_and_do_not_change_training():
    images, targets = _toy_problem(n=32)
    saved = {}
    kwargs = dict(epochs=2, seed=3, batch_size=16, crop=64, log=lambda m: None)
    net, history = train_demo(images, targets, snapshot_steps=[1, 3, 4], on_snapshot=saved.__setitem__, **kwargs)
    plain, plain_history = train_demo(images, targets, **kwargs)
    assert history == plain_history
    for name, value in plain.state_dict().items():
        assert torch.equal(value, net.state_dict()[name]), name
    assert sorted(saved) == [1, 3, 4]
    for name, value in net.state_dict().items():  # step 4 is the last of 2 epochs x 2 batches
        assert torch.equal(saved[4][name], value), name
    assert not torch.equal(saved[1]["conv1.0.weight"], saved[3]["conv1.0.weight"])  # training went on


def test_train_demo_writes_snapshot_files(broden_example: Path, tmp_path: Path, capsys):
    out, snaps = tmp_path / "demo.pt", tmp_path / "snaps"
    base = ["train-demo", "--dataset", str(broden_example), "--epochs", "3", "--batch-size", "2"]
    assert main([*base, "--out", str(tmp_path / "plain.pt")]) == 0
    assert main([*base, "--out", str(out), "--snapshots", str(snaps)]) == 0  # 3 epochs x 2 batches
    assert sorted(p.name for p in snaps.iterdir()) == ["step1.pt", "step2.pt", "step3.pt", "step4.pt", "step6.pt"]
    assert out.read_bytes() == (tmp_path / "plain.pt").read_bytes()  # the model is saved as without snapshots
    last = torch.load(snaps / "step6.pt", weights_only=True)
    assert last["step"] == 6 and last["steps"] == 6
    final = torch.load(out, weights_only=True)["state_dict"]
    assert all(torch.equal(last["state_dict"][k], v) for k, v in final.items())
    capsys.readouterr()
    assert main([*base, "--out", str(out), "--snapshots", str(tmp_path / "s2"), "--snapshot-steps", "2,1"]) == 2
    assert "step 1 follows step 2" in capsys.readouterr().err
    assert main([*base, "--out", str(out), "--snapshots", str(tmp_path / "s3"), "--snapshot-steps", "1,9"]) == 2
    assert "past the end of training (6 steps)" in capsys.readouterr().err
    assert main([*base, "--out", str(out), "--snapshot-steps", "1"]) == 2
    assert "--snapshots DIR" in capsys.readouterr().err
    assert not (tmp_path / "s2").exists() and not (tmp_path / "s3").exists()
