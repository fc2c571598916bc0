"""The widest layers at full N: resnet152 ``layer4`` (2048 units, 7x7), vgg16 ``features.29`` (512, 14x14)
and resnet18 ``layer1`` (64, 56x56) through quantile, tally, score and report, one process per stage
(time, CPU, peak memory, disk; target: every stage within 2 GB), and the size of each report folder.

    python benchmarks/bench_wide.py --root DIR [--images 63305] [--source model|synthetic]
                                    [--cases resnet152:layer4,vgg16:features.29,resnet18:layer1]
                                    [--threads 2] [--doc docs/benchmarks.md] [--keep]

The dataset is ROOT/broden (written by ``netdissect synth`` when missing; bench_scale.py uses the same
folder), cut to its first ``--images`` rows, with its labels packed once.

``--source model`` extracts the activations with the real architecture and seeded random weights
(``netdissect random-weights``, then ``extract --dtype float16``, itself a timed stage). On a CPU this
costs hours at full N (resnet152 and vgg16 take several times resnet18's forward pass), so
``--source synthetic`` (the default) writes the shard straight from a seeded generator instead: smooth
non-negative float16 maps of the layer's shape (noise, 3x3 box filter, ReLU), with their maxima and
quantile candidates computed by netdissect's own code (netdissect.quantile.TopK) and a meta.json
like extract's, so that every later stage runs exactly as on extracted activations.

Each shard is deleted after its stages (``--keep`` keeps them). Disk needed: the float16 activations
of the largest case, N·U·H·W·2 bytes (resnet18 layer1 at 63,305 images: 25 GB), plus the dataset and
its pack (~6.6 GB at 63,305 images).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from pathlib import Path

from stages import (
    NETDISSECT,
    folder_bytes,
    head_dataset,
    log_line,
    machine_line,
    markdown_table,
    replace_section,
    run_stage,
)

CASES = "resnet152:layer4,vgg16:features.29,resnet18:layer1"
SHAPES = {"resnet152:layer4": (2048, 7, 7), "vgg16:features.29": (512, 14, 14), "resnet18:layer1": (64, 56, 56)}


def synthetic_shard(dataset: Path, case: str, shape: tuple[int, int, int], out: Path, seed: int = 0) -> None:
    """A finished shard folder (all rows of ``dataset``) of smooth synthetic float16 activations."""
    import numpy as np
    import torch

    from netdissect.broden import BrodenDataset
    from netdissect.defaults import QUANTILE
    from netdissect.io import atomic_path, save_json, save_npy
    from netdissect.quantile import TopK, candidate_count
    from netdissect.shards import SHARD_FORMAT, SHARD_VERSION, NpyRowWriter, shard_file

    ds = BrodenDataset(dataset, load_images=False, load_labels=False)
    n, (units, h, w), layer = len(ds), shape, case.split(":")[1]
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    scale = torch.rand(1, units, 1, 1, generator=generator) + 0.5
    topk = TopK(candidate_count(n * h * w, QUANTILE))
    imgmax = np.empty((n, units), np.float32)
    batch = max(1, 2**24 // (units * h * w))  # ~64 MB of float32 per block
    with atomic_path(shard_file(out, layer, "act")) as tmp, open(tmp, "wb") as f:
        writer = NpyRowWriter(f, (n, units, h, w), np.float16)
        for start in range(0, n, batch):
            b = min(batch, n - start)
            noise = torch.randn(b, units, h, w, generator=generator)
            maps = torch.relu(torch.nn.functional.avg_pool2d(noise, 3, 1, 1, count_include_pad=False) * scale)
            maps = maps.to(torch.float16).to(torch.float32)  # as extract stores float16
            writer.write(maps.numpy().astype(np.float16))
            imgmax[start : start + b] = maps.amax(dim=(2, 3)).numpy()
            topk.add(maps.permute(1, 0, 2, 3).reshape(units, -1))
        writer.close()
    save_npy(shard_file(out, layer, "imgmax"), imgmax)
    save_npy(shard_file(out, layer, "topk"), topk.result())
    values = n * h * w
    save_json(
        out / "meta.json",
        {
            "format": SHARD_FORMAT,
            "version": SHARD_VERSION,
            "shard": 0,
            "shards": 1,
            "start": 0,
            "stop": n,
            "num_images": n,
            "image_size": [int(v) for v in ds.index[["ih", "iw"]].iloc[0]],
            "dataset": str(dataset),
            "dataset_fingerprint": ds.fingerprint(),
            "model": f"synthetic {case}",
            "weights": None,
            "weights_sha256": None,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "quantile": QUANTILE,
            "dtype": "float16",
            "batch_size": batch,
            "memory_format": "contiguous",
            "device": "cpu",
            "activations": "store",
            "layers": {
                layer: {
                    "units": units,
                    "height": h,
                    "width": w,
                    "flat": False,
                    "num_values": values,
                    "candidates": candidate_count(values, QUANTILE),
                }
            },
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--images", type=int, default=63305)
    parser.add_argument("--source", default="synthetic", choices=["synthetic", "model"])
    parser.add_argument("--cases", default=CASES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="decoding processes of extract (--source model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--doc", type=Path)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--synthetic-shard", nargs=3, metavar=("CASE", "DATASET", "SHARD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.synthetic_shard:  # the child process: netdissect from this checkout, installed or not
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        case, data, shard = args.synthetic_shard
        synthetic_shard(Path(data), case, SHAPES[case], Path(shard))
        return
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    log = root / "wide.jsonl"
    env = {**os.environ, "NETDISSECT_CACHE": str(root / "cache")}
    cases = args.cases.split(",")
    need = max(args.images * 2 * math.prod(SHAPES.get(c, (0,))) for c in cases)
    print(
        f"# float16 activations of the largest case: {need / 1e9:.1f} GB; free {shutil.disk_usage(root).free / 1e9:.1f} GB"
    )
    print(f"# {machine_line()}", flush=True)

    full = root / "broden"
    if not (full / "index.csv").is_file():
        log_line(log, run_stage("synth", NETDISSECT + ["synth", str(full), "--images", str(args.images)], [full], env))
    data = head_dataset(full, args.images, root / f"view{args.images}")
    work = root / f"wide{args.images}"
    pack = work / "labels"
    if not (pack / "index.npz").is_file():
        cmd = NETDISSECT + ["broden", "pack-labels", str(data), "--out", str(pack), "--no-progress"]
        log_line(log, run_stage("pack", cmd, [pack], env, images=args.images))

    records = []
    for case in cases:
        arch, layer = case.split(":")
        shard, layer_dir = work / arch / "shards" / "0", work / arch / layer
        stage = dict(images=args.images, case=case, env=env)
        if args.source == "synthetic":  # in a child process: this one stays small (benchmarks/stages.py)
            cmd = [sys.executable, __file__, "--root", str(root), "--synthetic-shard", case, str(data), str(shard)]
            record = run_stage("synthetic activations", cmd, [shard], **stage)
            log_line(log, {k: v for k, v in record.items() if k != "env"})
        else:
            weights = root / f"{arch}_random.pt"
            if not weights.is_file():
                cmd = NETDISSECT + ["random-weights", "--model", arch, "--seed", "0", "--out", str(weights)]
                run_stage("random-weights", cmd, [weights], env)
            cmd = NETDISSECT + ["extract", "--dataset", str(data), "--model", arch, "--weights", str(weights)]
            cmd += ["--layers", layer, "--out", str(shard), "--dtype", "float16", "--no-progress"]
            cmd += ["--workers", str(args.workers), "--device", args.device]
            records.append(run_stage("extract", cmd, [shard], **stage))
            log_line(log, {k: v for k, v in records[-1].items() if k != "env"})
        cmd = NETDISSECT + ["quantile", "--shards", str(shard), "--layer", layer, "--out", str(layer_dir)]
        records.append(run_stage("quantile", cmd, [layer_dir], **stage))
        cmd = NETDISSECT + ["tally", "--dataset", str(data), "--shard", str(shard), "--layer", layer]
        cmd += ["--thresholds", str(layer_dir / "thresholds.npy"), "--out", str(layer_dir / "counts.npz")]
        cmd += ["--labels", str(pack), "--threads", str(args.threads), "--device", args.device, "--no-progress"]
        records.append(run_stage("tally", cmd, [layer_dir], **stage))
        cmd = NETDISSECT + ["score", "--counts", str(layer_dir / "counts.npz"), "--dataset", str(data)]
        records.append(run_stage("score", cmd + ["--out", str(layer_dir)], [layer_dir], **stage))
        cmd = NETDISSECT + ["report", "--dataset", str(data), "--layer-dir", str(layer_dir), "--layer", layer]
        cmd += ["--shards", str(shard), "--out", str(layer_dir / "report"), "--threads", str(args.threads)]
        records.append(run_stage("report", cmd, [layer_dir / "report"], **stage))
        records[-1]["report_mb"] = round(folder_bytes(layer_dir / "report") / 2**20, 1)
        for r in records[-4:]:
            log_line(log, {k: v for k, v in r.items() if k != "env"})
        if not args.keep:
            shutil.rmtree(work / arch / "shards", ignore_errors=True)

    for r in records:
        r.pop("env", None)
    text = [
        f"Measured with `python benchmarks/bench_wide.py --root DIR --images {args.images} --source {args.source} "
        f"--threads {args.threads}` ({machine_line()}); target: every stage's peak within 2 GB.",
        "",
        markdown_table(records, ["images", "case", "stage"]),
        "",
        "Report folders: "
        + ", ".join(f"{r['case']} {r['report_mb']:.0f} MB" for r in records if r["stage"] == "report")
        + ".",
    ]
    print("\n".join(text))
    (root / "wide.md").write_text("\n".join(text) + "\n")
    if args.doc:
        replace_section(args.doc, "wide", "\n".join(text))


if __name__ == "__main__":
    main()
