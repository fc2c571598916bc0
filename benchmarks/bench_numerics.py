"""How much the input's memory layout changes the results: ``netdissect dissect`` with channels-last
input (the default) and with contiguous input (``--memory-format contiguous``, the layout before), same
model, weights and batches, compared.

    python benchmarks/bench_numerics.py --dataset DIR [--model resnet18] [--weights FILE] [--layers layer4]

Prints, per layer: the largest difference of the stored activations (absolute, and relative to the
layer's largest value), of the thresholds, the units whose label (or category) differs, the largest
IoU difference, and the detector counts of both runs. The convolutions add in another order, so the
last bits of the activations differ; labels and scores move only for units whose top two labels (or
whose threshold) sit within that rounding of each other.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from netdissect.names import layer_file_name


def result(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--weights")
    parser.add_argument("--layers", default="layer4")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    layers = args.layers.split(",")
    with tempfile.TemporaryDirectory(prefix="bench_numerics_", dir=args.work) as tmp:
        runs = {}
        for fmt in ("channels_last", "contiguous"):
            out = Path(tmp) / fmt
            cmd = [sys.executable, "-m", "netdissect", "dissect", "--dataset", str(args.dataset), "--model", args.model]
            cmd += ["--layers", args.layers, "--out", str(out), "--memory-format", fmt, "--no-progress", "--no-report"]
            cmd += ["--labels", "none"] + (["--weights", args.weights] if args.weights else [])
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            runs[fmt] = out
        for layer in layers:
            name = layer_file_name(layer)  # the layer's file and folder name (a / becomes %2F)
            a, b = (np.load(runs[f] / "shards" / "0" / f"{name}.act.npy", mmap_mode="r") for f in runs)
            diff = max(float(np.abs(a[i : i + 256] - b[i : i + 256]).max()) for i in range(0, len(a), 256))
            scale = max(float(np.abs(a[i : i + 256]).max()) for i in range(0, len(a), 256))
            ta, tb = (np.load(runs[f] / name / "thresholds.npy") for f in runs)
            ra, rb = (result(runs[f] / name / "result.csv") for f in runs)
            sa, sb = (json.loads((runs[f] / name / "summary.json").read_text()) for f in runs)
            labels = [
                int(x["unit"]) for x, y in zip(ra, rb) if (x["label"], x["category"]) != (y["label"], y["category"])
            ]
            iou = max(abs(float(x["score"]) - float(y["score"])) for x, y in zip(ra, rb))
            print(
                json.dumps(
                    {
                        "layer": layer,
                        "units": len(ra),
                        "images": int(a.shape[0]),
                        "activation_max_abs_diff": diff,
                        "activation_max_rel_diff": diff / scale if scale else 0.0,
                        "activations_identical": diff == 0.0,
                        "threshold_max_rel_diff": float(np.max(np.abs(ta - tb) / np.maximum(np.abs(ta), 1e-30))),
                        "units_with_other_label": len(labels),
                        "first_units_with_other_label": labels[:10],
                        "score_max_abs_diff": iou,
                        "detectors_channels_last": sa["detectors"],
                        "detectors_contiguous": sb["detectors"],
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
