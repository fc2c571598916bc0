"""The demo network and its training (netdissect.demo): shapes, targets against brute force,
determinism, learning, and the train-demo / random-weights commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from netdissect.cli import main
from netdissect.demo import DEMO_SPEC, DemoNet
from netdissect.demo.train import coverage_targets, target_labels, train_demo
from netdissect.models import layer_shapes, load_model


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def test_demonet_layers_halve_the_resolution():
    model = load_model(DEMO_SPEC)
    shapes = layer_shapes(model, ["conv1", "conv2", "conv3", "conv4"], size=224)
    assert shapes == {"conv1": (32, 112, 112), "conv2": (64, 56, 56), "conv3": (128, 28, 28), "conv4": (256, 14, 14)}


def test_target_labels_leave_out_color():
    categories = ["color", "object", "scene"]
    primary = np.array([-1, 0, 0, 1, 2, -1, 1])
    assert target_labels(primary, categories).tolist() == [3, 4, 6]
    # a dataset of colors only still has something to learn
    assert target_labels(np.array([-1, 0, 0]), ["color"]).tolist() == [1, 2]


def test_coverage_targets_match_brute_force():
    rng = np.random.default_rng(0)
    pixel = rng.integers(0, 6, size=(2, 8, 12)).astype(np.int32)  # two layers, labels 0..5
    lookup = torch.tensor([-1, -1, 0, 1, -1, 2, 3])  # 2->0, 3->1, 5->2, 6->3
    image_labels = torch.tensor([6, 1])  # 6 is a target, 1 is not
    empty = torch.zeros(0, 8, 12, dtype=torch.int32)  # a second image without pixel layers
    got = coverage_targets([torch.from_numpy(pixel), empty], [image_labels, torch.tensor([3])], lookup, (2, 3))
    assert got.shape == (2, 4, 2, 3)
    assert got[1].tolist() == [[[0.0] * 3] * 2, [[1.0] * 3] * 2, [[0.0] * 3] * 2, [[0.0] * 3] * 2]
    got = got[0].numpy()
    want = np.zeros((4, 2, 3))
    for t, label in ((0, 2), (1, 3), (2, 5)):
        for y in range(2):
            for x in range(3):
                cell = pixel[:, y * 4 : (y + 1) * 4, x * 4 : (x + 1) * 4]
                want[t, y, x] = min(1.0, (cell == label).sum() / 16)
    want[3] = 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_coverage_targets_without_pixel_layers():
    got = coverage_targets(
        [torch.zeros(0, 4, 4, dtype=torch.int32)], [torch.tensor([2])], torch.tensor([-1, 0, 1]), (1, 1)
    )
    assert got.tolist() == [[[[0.0]], [[1.0]]]]


def _toy_problem(n: int = 48, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with a red square in one of four quadrants; the target marks the square's cells."""
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 60, (n, 3, size, size), dtype=torch.uint8, generator=g)
    targets = torch.zeros(n, 1, size // 16, size // 16)
    half, cells = size // 2, size // 32
    for i in range(n):
        qy, qx = divmod(i % 4, 2)
        images[i, 0, qy * half : (qy + 1) * half, qx * half : (qx + 1) * half] = 250
        targets[i, 0, qy * cells : (qy + 1) * cells, qx * cells : (qx + 1) * cells] = 1.0
    return images, targets


def test_training_is_deterministic_and_learns():
    images, targets = _toy_problem()
    net_a, history_a = train_demo(images, targets, epochs=4, seed=3, batch_size=16, crop=64, log=lambda m: None)
    net_b, history_b = train_demo(images, targets, epochs=4, seed=3, batch_size=16, crop=64, log=lambda m: None)
    assert history_a == history_b
    for (name, a), b in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        assert torch.equal(a, b), name
    assert history_a[-1] < 0.7 * history_a[0]
    net_c, _ = train_demo(images, targets, epochs=1, seed=4, batch_size=16, crop=64, log=lambda m: None)
    assert not torch.equal(net_c.state_dict()["conv1.0.weight"], net_a.state_dict()["conv1.0.weight"])


def test_train_demo_command_writes_weights_the_engine_loads(broden_example: Path, tmp_path: Path):
    out = tmp_path / "models" / "demo.pt"
    assert main(["train-demo", "--dataset", str(broden_example), "--out", str(out), "--epochs", "2"]) == 0
    checkpoint = torch.load(out, weights_only=True)
    assert checkpoint["spec"] == DEMO_SPEC and checkpoint["epochs"] == 2
    # worked example: every label except the six colors has a non-color primary category
    assert checkpoint["target_labels"] == [6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 22]
    model = load_model(DEMO_SPEC, weights=out)
    for name, value in model.module.state_dict().items():
        assert torch.equal(value, checkpoint["state_dict"][name]), name
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind


def test_train_demo_rejects_a_folder_without_index(tmp_path: Path, capsys):
    assert main(["train-demo", "--dataset", str(tmp_path), "--out", str(tmp_path / "m.pt")]) == 2
    assert "index.csv" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("spec, first", [(DEMO_SPEC, "conv1.0.weight"), ("resnet18", "conv1.weight")])
def test_random_weights_are_seeded(tmp_path: Path, spec: str, first: str):
    paths = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        paths[name] = tmp_path / f"{name}.pt"
        assert main(["random-weights", "--model", spec, "--seed", str(seed), "--out", str(paths[name])]) == 0
    a, b, c = (torch.load(paths[n], weights_only=True)["state_dict"] for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert paths["a"].read_bytes() == paths["b"].read_bytes()  # same weights, same file (same sha256 in results)
    assert not torch.equal(a[first], c[first])
    if spec != DEMO_SPEC:
        return
    fresh = DemoNet()
    fresh.load_state_dict(a)  # fits the architecture exactly
