"""Cost and reproducibility of the demo's training: the reproducible settings vs the CPU's fastest kernels.

python benchmarks/bench_train.py --dataset DIR [--images 500] [--epochs 1] [--repeat 2]

Each run trains in a fresh process (the settings are read when the libraries load) and prints the
training time (without loading the data), the last loss and a hash of the weights:
- ``reproducible``: what `netdissect train-demo` does (netdissect.demo.train.REPRODUCIBLE_ENV, one
  thread, no oneDNN), once as is and once with MKL and oneDNN told to use AVX2 only (as on a CPU
  without AVX-512); the two hashes must be equal;
- ``fastest``: oneDNN and each library's best code path for this CPU, one thread (the training before
  it was made reproducible), for the cost; its weights change with AVX2 only on a CPU with AVX-512.
DIR is a Broden folder of images of one size, e.g. from `netdissect synth DIR --images 2000`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = """
import hashlib, json, sys, time, torch
from netdissect.demo.train import _train, load_training_data, train_demo
dataset, images, epochs, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
data = load_training_data(dataset)
x, t = data["images"][:images], data["targets"][:images]
start = time.perf_counter()
if mode == "fastest":
    torch.set_num_threads(1)
    net, history = _train(x, t, epochs, 0, 32, 112, 3e-3, lambda m: None)
else:
    net, history = train_demo(x, t, epochs=epochs, seed=0, log=lambda m: None)
seconds = time.perf_counter() - start
digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in net.state_dict().values())).hexdigest()[:16]
print(json.dumps({"seconds": seconds, "loss": history[-1], "weights": digest}))
"""
ELSEWHERE = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def run(args: argparse.Namespace, mode: str, env: dict[str, str]) -> dict:
    argv = [sys.executable, "-c", CHILD, args.dataset, str(args.images), str(args.epochs), mode]
    out = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    from netdissect.demo.train import REPRODUCIBLE_ENV

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    variants = {
        "reproducible": ("reproducible", REPRODUCIBLE_ENV),
        "reproducible, AVX2 only": ("reproducible", {**ELSEWHERE, **REPRODUCIBLE_ENV}),
        "fastest (oneDNN, this CPU's code paths)": ("fastest", {"OMP_NUM_THREADS": "1"}),
        "fastest, AVX2 only": ("fastest", {"OMP_NUM_THREADS": "1", **ELSEWHERE}),
    }
    for k in range(args.repeat):
        hashes = {}
        for name, (mode, env) in variants.items():
            started = time.perf_counter()
            result = run(args, mode, env)
            hashes[name] = result["weights"]
            print(
                f"run {k + 1} {name}: {args.images} images x {args.epochs} epochs, train {result['seconds']:.1f} s "
                f"(process {time.perf_counter() - started:.1f} s), loss {result['loss']:.6f}, weights "
                f"{result['weights']} (load average {os.getloadavg()[0]:.2f})",
                flush=True,
            )
        same = hashes["reproducible"] == hashes["reproducible, AVX2 only"]
        fastest = hashes["fastest (oneDNN, this CPU's code paths)"] == hashes["fastest, AVX2 only"]
        print(f"run {k + 1}: weights identical with AVX2 only: reproducible {same}, fastest {fastest}")


if __name__ == "__main__":
    main()
