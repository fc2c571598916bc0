"""`netdissect train-demo` gives the same weights file, byte for byte, whatever the thread count and
whatever instruction sets the libraries are told to use (as on another CPU): it trains in a child process
with fixed numerical code paths (netdissect/demo/train.py). The control shows that the environment does
change the weights of a training run without those settings, so the equality is not a coincidence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TRAIN = [sys.executable, "-m", "netdissect", "train-demo", "--epochs", "1", "--seed", "0"]
# What another machine or another user's shell may differ in.
ELSEWHERE = {
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",  # an AVX2-only CPU (this one may have AVX-512)
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AUTO",
}
KEYS = set(ELSEWHERE)


def _train(dataset: Path, out: Path, env: dict[str, str]) -> bytes:
    base = {k: v for k, v in os.environ.items() if k not in KEYS}
    proc = subprocess.run(
        [*TRAIN, "--dataset", str(dataset), "--out", str(out)], env={**base, **env}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 to train" in proc.stdout
    return out.read_bytes()


def test_same_weights_under_any_threads_and_instruction_sets(synth_dataset: Path, tmp_path: Path) -> None:
    here = _train(synth_dataset, tmp_path / "a.pt", {"OMP_NUM_THREADS": "1"})
    assert _train(synth_dataset, tmp_path / "b.pt", ELSEWHERE) == here


def _avx512() -> bool:
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not _avx512(), reason="the control needs a CPU with AVX-512 (to differ from AVX2)")
def test_control_without_the_fixed_code_paths_the_weights_differ(synth_dataset: Path, tmp_path: Path) -> None:
    """The same training in this process's default numerics (no fixed MKL/ATen code path, oneDNN on)."""
    script = (
        "import sys; from netdissect.demo.train import load_training_data, _train;"
        "d = load_training_data(sys.argv[1]);"
        "net, _ = _train(d['images'], d['targets'], 1, 0, 32, 112, 3e-3, lambda m: None);"
        "open(sys.argv[2], 'wb').write(b''.join(v.numpy().tobytes() for v in net.state_dict().values()))"
    )
    outputs = []
    for i, env in enumerate(
        (
            {"OMP_NUM_THREADS": "1"},
            {"OMP_NUM_THREADS": "1", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
        )
    ):
        out = tmp_path / f"{i}.pt"
        base = {k: v for k, v in os.environ.items() if k not in KEYS}
        proc = subprocess.run([sys.executable, "-c", script, str(synth_dataset), str(out)], env={**base, **env})
        assert proc.returncode == 0
        outputs.append(out.read_bytes())
    assert outputs[0] != outputs[1]
