"""Benchmark: a full-size CaffeNet (61 M weights, a 244 MB caffemodel) read and converted, and its forward
pass against the same network written in torch.

1. Writes deploy.prototxt and a caffemodel of random weights once (cached in --cache), with
   netdissect.models.caffe.proto.encode_caffemodel.
2. In a fresh child process per repetition: ``load_model(prototxt, caffemodel)`` (read, check, build
   the module, sha256 of the file), its seconds and the growth of peak RSS over the process before
   loading (targets: <= 5 s and <= 2x the file).
3. Forward passes of --batch-size 227-pixel images up to conv5 (what a dissection of conv5 runs) and
   through prob, converted vs torch (nn.Sequential with the same weights; target: within 1.2x), the
   best of --repeat, the two taking turns, after one warm-up, with --threads torch threads; the outputs
   are checked equal first.

    python benchmarks/bench_caffe.py [--cache DIR] [--repeat 5] [--batch-size 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netdissect.models import load_model  # noqa: E402
from netdissect.models.caffe import proto  # noqa: E402
from tests.caffe_nets import CAFFENET  # noqa: E402  (the CaffeNet deploy.prototxt the tests use)


def write_pair(folder: Path) -> tuple[Path, Path]:
    prototxt, caffemodel = folder / "caffenet.prototxt", folder / "caffenet.caffemodel"
    if not caffemodel.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        prototxt.write_text(CAFFENET)
        net = load_model(str(prototxt)).module
        rng = np.random.default_rng(0)
        layers = [
            (
                proto.LayerParameter(name=name, type=kind),
                [rng.standard_normal(s, dtype=np.float32) * 0.01 for s in m.blob_shapes()],
            )  # fmt: skip
            for name, kind, m in zip(net.layer_names, net.layer_types, net.layers)
            if m.blob_names
        ]
        tmp = caffemodel.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for piece in proto.encode_caffemodel(layers):
                f.write(piece)
        tmp.rename(caffemodel)
    return prototxt, caffemodel


def _status(key: str) -> int:
    """A /proc/self/status memory figure in bytes (VmRSS: now, VmHWM: peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def child_load(prototxt: str, caffemodel: str) -> None:
    """One load in this process: seconds (and of its parts) and peak-RSS growth, as one JSON line."""
    from netdissect.io import sha256_file
    from netdissect.models.caffe.graph import build_net

    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS (Linux)
    before = _status("VmRSS")
    tic = time.perf_counter()
    model = load_model(prototxt, caffemodel)
    seconds = time.perf_counter() - tic
    growth = _status("VmHWM") - before
    del model
    parts = {}
    tic = time.perf_counter()
    weights = proto.read_caffemodel(caffemodel)
    parts["read_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    build_net(proto.read_prototxt(prototxt), weights)
    parts["build_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    sha256_file(caffemodel)
    parts["sha256_s"] = time.perf_counter() - tic
    print(json.dumps({"load_s": seconds, "peak_growth_bytes": growth, **parts}))


def torch_caffenet() -> nn.Sequential:
    """CaffeNet written directly in torch (conv5 = index 13, after relu5)."""
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, 4), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), nn.LocalResponseNorm(5, 1e-4, 0.75),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.LocalResponseNorm(5, 1e-4, 0.75),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(),
        nn.MaxPool2d(3, 2, ceil_mode=True), nn.Flatten(),
        nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
        nn.Linear(4096, 1000), nn.Softmax(dim=1),
    ).eval()  # fmt: skip


def best_times(fns, repeat: int) -> list[float]:
    """The best of ``repeat`` timings of each function, the functions taking turns (so that a busy
    moment of the machine hits them alike); one warm-up call each first."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, kept in zip(fns, times):
            tic = time.perf_counter()
            fn()
            kept.append(time.perf_counter() - tic)
    return [min(kept) for kept in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "netdissect-bench-caffe")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child-load", nargs=2, metavar=("PROTOTXT", "CAFFEMODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_load:
        child_load(*args.child_load)
        return
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    prototxt, caffemodel = write_pair(args.cache)
    size = caffemodel.stat().st_size
    loads = []
    for _ in range(args.repeat):
        out = subprocess.run(
            [sys.executable, __file__, "--child-load", str(prototxt), str(caffemodel)],
            capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
        )  # fmt: skip
        loads.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = min(loads, key=lambda r: r["load_s"])
    print(f"caffemodel: {size / 1e6:.1f} MB")
    print(
        f"load_model (read, check, build, sha256): best {best['load_s']:.2f} s of {[round(r['load_s'], 2) for r in loads]}"
    )
    print("  its parts, timed again in the same process: " + ", ".join(f"{k} {best[k]:.2f} s" for k in ("read_s", "build_s", "sha256_s")))  # fmt: skip
    growth = max(r["peak_growth_bytes"] for r in loads)
    print(
        f"peak RSS growth while loading: {growth / 1e6:.1f} MB = {growth / size:.2f}x the file (max of {args.repeat})"
    )

    torch.set_num_threads(args.threads)
    model = load_model(str(prototxt), str(caffemodel))
    twin = torch_caffenet()
    params = [(m.weight, m.bias) for m in twin if isinstance(m, (nn.Conv2d, nn.Linear))]
    blobs = [layer for layer in model.module.layers if layer.blob_names]
    with torch.no_grad():
        for (weight, bias), layer in zip(params, blobs):
            weight.copy_(layer.weight)
            bias.copy_(layer.bias)
    images = torch.randint(0, 256, (args.batch_size, 3, 227, 227), dtype=torch.uint8)
    x = model.normalise(images)
    with torch.inference_mode():
        assert torch.allclose(model.module(x, blobs=["conv5"])["conv5"], twin[:14](x), rtol=1e-4, atol=1e-5)
        assert torch.allclose(model.module(x, blobs=["prob"])["prob"], twin(x), rtol=1e-4, atol=1e-7)
        for name, stop in (("conv5", 14), ("prob", len(twin))):
            ours, theirs = best_times(
                [lambda name=name: model.module(x, blobs=[name]), lambda stop=stop: twin[:stop](x)], args.repeat
            )
            print(
                f"forward to {name}, batch {args.batch_size}, {args.threads} threads: converted {ours * 1000:.0f} ms, "
                f"torch {theirs * 1000:.0f} ms, ratio {ours / theirs:.3f}"
            )
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
