"""Scale benchmark: the workflow's stages at N = 1k, 4k, 16k and 63,305 images (the size of the released
Broden), for the demo net (the workflow's layers) and resnet18 ``layer4``, one process per stage.

    python benchmarks/bench_scale.py --root DIR [--sizes 1000,4000,16000,63305] [--models demo,resnet18]
                                     [--activations store|recompute] [--threads 2] [--workers 0]
                                     [--device cpu] [--doc docs/benchmarks.md] [--keep]

1. ``netdissect synth ROOT/broden --images MAX`` (224 px, seed 0), once; later runs reuse it. Each
   smaller N is a view of its first N rows (index.csv cut, files linked: no disk).
2. Per N: ``netdissect broden pack-labels`` (stage ``pack``); per model: seeded random weights
   (``netdissect random-weights``), ``extract`` of all its layers at once (float16, as the workflow),
   then per layer ``quantile``, ``tally`` (packed labels, ``--threads``), ``score`` and ``report``.
   Each stage's wall time, CPU time, peak memory and disk written go to ROOT/scale.jsonl.
3. A model's shards are deleted after its stages, each N's pack after its runs (``--keep`` keeps
   them), so the disk needed is the dataset, one pack and one model's activations: the script prints
   the estimate before it starts, and extract refuses a run that would not fit (``--activations
   recompute`` stores none).
4. The tables (per model and N: time per image and peak memory of every stage) are printed and, with
   ``--doc``, written between the ``<!-- scale:begin -->`` / ``<!-- scale:end -->`` markers of that file.
   ``--merge LOG`` adds the records of earlier runs (their scale.jsonl) to the tables, so that a run at
   63,305 alone can be shown beside the smaller N measured before; this run's records win where both
   have the same N, model, layer, stage and activations; with ``--tables-only`` it runs nothing.

Layers: demo ``conv2,conv3,conv4`` (the workflow's), resnet18 ``layer4``; ``--demo-layers`` and
``--resnet-layers`` change them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

from stages import NETDISSECT, head_dataset, log_line, machine_line, markdown_table, replace_section, run_stage

MODELS = {"demo": "netdissect.demo:DemoNet", "resnet18": "resnet18"}
IMAGE_BYTES, PACK_BYTES = 24_500, 80_500  # per 224-px synthetic image: dataset files, packed labels


def activation_bytes(spec: str, layers: list[str], images: int, dtype_bytes: int = 2) -> int:
    """Bytes of the stored activations of ``layers`` for ``images`` images of 224 px (computed in a child
    process: this one stays small, see benchmarks/stages.py)."""
    code = (
        "import json, sys; from netdissect.models import layer_shapes, load_model; "
        "print(json.dumps(layer_shapes(load_model(sys.argv[1]), sys.argv[2].split(','))))"
    )
    shapes = json.loads(subprocess.check_output([sys.executable, "-c", code, spec, ",".join(layers)], text=True))
    return sum(images * dtype_bytes * math.prod(shapes[layer]) for layer in layers)


def record_key(r: dict) -> tuple:
    return r["images"], r["model"], r["layer"], r["stage"], r.get("activations", "")


def merged(logs: list[Path], records: list[dict], models: list[str]) -> list[dict]:
    """This run's records after those of the earlier ``logs`` (stages of the given models and packs; a
    later record replaces an earlier one of the same key), sorted by N, model, layer and stage."""
    table: dict[tuple, dict] = {}
    for log in logs:
        for line in log.read_text().splitlines():
            r = json.loads(line)
            if "images" in r and r.get("model") in ["", *models]:
                r.setdefault("activations", "store" if r["model"] else "")
                table[record_key(r)] = r
    for r in records:
        table[record_key(r)] = r
    return [table[k] for k in sorted(table)]


def growth_table(records: list[dict], sizes: list[int]) -> str:
    """One row per model, layer, stage and activations: CPU ms per image and peak MB at each N."""
    keys = sorted({record_key(r)[1:] for r in records})
    head = ["model", "layer", "stage", "activations"] + [f"N = {n}" for n in sizes]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        found = {r["images"]: r for r in records if record_key(r)[1:] == key}
        cells = [
            f"{1e3 * found[n]['cpu_s'] / n:.2f} ms, {found[n]['peak_rss_mb']:.0f} MB" if n in found else ""
            for n in sizes
        ]
        rows.append("| " + " | ".join(list(key) + cells) + " |")
    return "\n".join(rows)


def write_tables(args: argparse.Namespace, records: list[dict], root: Path, models: list[str]) -> None:
    """Print the tables of this run's records and the ``--merge`` logs' (ROOT/scale.md; ``--doc``)."""
    for r in records:
        r.pop("env", None)
    run = (
        f"`python benchmarks/bench_scale.py --root DIR --sizes {args.sizes} --models {args.models} "
        f"--activations {args.activations} --threads {args.threads}` ({machine_line()})"
    )
    logs = ", ".join(p.name if p.parent == root else str(p) for p in args.merge)
    if args.tables_only:
        text = [f"The records of {logs} (`bench_scale.py --tables-only --merge LOG...`; each its own run's).", ""]
    else:
        text = [f"Measured with {run}" + (f", with the records of {logs}." if logs else "."), ""]
    records = merged(args.merge, records, models)
    sizes = sorted({r["images"] for r in records})
    text += [f"Every stage at N = {sizes[-1]} (wall and CPU time of its process, peak RSS, what it wrote):", ""]
    text.append(
        markdown_table([r for r in records if r["images"] == sizes[-1]], ["model", "layer", "stage", "activations"])
    )
    text += ["", "Growth: CPU ms per image and peak MB of each stage, by N:", ""]
    text.append(growth_table(records, sizes))
    print("\n".join(text))
    (root / "scale.md").write_text("\n".join(text) + "\n")
    if args.doc:
        replace_section(args.doc, "scale", "\n".join(text))
    print(json.dumps({"log": str(root / "scale.jsonl"), "tables": str(root / "scale.md")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path, help="folder for the dataset and the runs")
    parser.add_argument("--sizes", default="1000,4000,16000,63305")
    parser.add_argument("--models", default="demo,resnet18")
    parser.add_argument("--demo-layers", default="conv2,conv3,conv4")
    parser.add_argument("--resnet-layers", default="layer4")
    parser.add_argument("--activations", default="store", choices=["store", "recompute"])
    parser.add_argument("--threads", type=int, default=2, help="tally counting threads and report threads")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes of extract")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--doc", type=Path, help="markdown file to write the tables into (between markers)")
    parser.add_argument("--keep", action="store_true", help="keep shards and packs")
    parser.add_argument("--merge", nargs="+", default=[], type=Path, metavar="LOG", help="earlier scale.jsonl files")
    parser.add_argument("--tables-only", action="store_true", help="run nothing: the tables of the --merge logs")
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.sizes.split(","))
    models = args.models.split(",")
    layers = {"demo": args.demo_layers.split(","), "resnet18": args.resnet_layers.split(",")}
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    log = root / "scale.jsonl"
    env = {**os.environ, "NETDISSECT_CACHE": str(root / "cache")}
    if args.tables_only:
        write_tables(args, [], root, models)
        return

    largest = max(sizes)
    act = {m: activation_bytes(MODELS[m], layers[m], largest) for m in models}
    need = largest * (IMAGE_BYTES + PACK_BYTES) + (max(act.values()) if args.activations == "store" else 0)
    print(
        f"# disk needed at N = {largest}: about {need / 1e9:.1f} GB (dataset {largest * IMAGE_BYTES / 1e9:.1f}, "
        f"packed labels {largest * PACK_BYTES / 1e9:.1f}, float16 activations "
        + ", ".join(f"{m} {b / 1e9:.1f}" for m, b in act.items())
        + f" GB ({args.activations})); free: {shutil.disk_usage(root).free / 1e9:.1f} GB",
        flush=True,
    )
    print(f"# {machine_line()}", flush=True)

    full = root / "broden"
    if not (full / "index.csv").is_file():
        log_line(log, run_stage("synth", NETDISSECT + ["synth", str(full), "--images", str(largest)], [full], env))
    weights = {}
    for m in models:
        weights[m] = root / f"{m}_random.pt"
        if not weights[m].is_file():
            cmd = NETDISSECT + ["random-weights", "--model", MODELS[m], "--seed", "0", "--out", str(weights[m])]
            run_stage("random-weights", cmd, [weights[m]], env)

    records = []
    for n in sizes:
        data = head_dataset(full, n, root / f"view{n}")
        work = root / f"run{n}"
        pack = work / "labels"
        cmd = NETDISSECT + ["broden", "pack-labels", str(data), "--out", str(pack), "--no-progress"]
        records.append(run_stage("pack", cmd, [pack], env, images=n, model="", layer="", activations=""))
        log_line(log, records[-1])
        for m in models:
            shard = work / m / "shards" / "0"
            common = dict(images=n, model=m, activations=args.activations, env=env)
            cmd = NETDISSECT + ["extract", "--dataset", str(data), "--model", MODELS[m], "--weights", str(weights[m])]
            cmd += ["--layers", ",".join(layers[m]), "--out", str(shard), "--dtype", "float16", "--no-progress"]
            cmd += ["--batch-size", str(args.batch_size), "--workers", str(args.workers), "--device", args.device]
            cmd += ["--recompute"] if args.activations == "recompute" else []
            records.append(run_stage("extract", cmd, [shard], layer=",".join(layers[m]), **common))
            log_line(log, records[-1])
            for layer in layers[m]:
                layer_dir = work / m / layer
                stage = dict(layer=layer, **common)
                cmd = NETDISSECT + ["quantile", "--shards", str(shard), "--layer", layer, "--out", str(layer_dir)]
                records.append(run_stage("quantile", cmd, [layer_dir], **stage))
                cmd = NETDISSECT + ["tally", "--dataset", str(data), "--shard", str(shard), "--layer", layer]
                cmd += ["--thresholds", str(layer_dir / "thresholds.npy"), "--out", str(layer_dir / "counts.npz")]
                cmd += ["--labels", str(pack), "--threads", str(args.threads), "--device", args.device]
                cmd += ["--workers", str(args.workers), "--no-progress"]
                records.append(run_stage("tally", cmd, [layer_dir], **stage))
                cmd = NETDISSECT + ["score", "--counts", str(layer_dir / "counts.npz"), "--dataset", str(data)]
                records.append(run_stage("score", cmd + ["--out", str(layer_dir)], [layer_dir], **stage))
                cmd = NETDISSECT + ["report", "--dataset", str(data), "--layer-dir", str(layer_dir), "--layer", layer]
                cmd += ["--shards", str(shard), "--out", str(layer_dir / "report"), "--threads", str(args.threads)]
                records.append(run_stage("report", cmd, [layer_dir / "report"], **stage))
                for r in records[-4:]:
                    log_line(log, r)
            if not args.keep:
                shutil.rmtree(work / m / "shards", ignore_errors=True)
        if not args.keep:
            shutil.rmtree(pack, ignore_errors=True)

    write_tables(args, records, root, models)


if __name__ == "__main__":
    main()
