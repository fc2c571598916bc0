"""``netdissect train-demo``: registration (light) and handler."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from netdissect.defaults import BATCH_SIZE, DEMO_EPOCHS


def register(sub, *groups) -> None:
    """Add ``train-demo``."""
    p = sub.add_parser(
        "train-demo",
        help="train the demo CNN (netdissect.demo:DemoNet) on a Broden dataset",
        description="Train DemoNet to predict which non-color labels cover each cell of its conv4 "
        "map; save its weights with spec and training settings. The same weights, to the bit, on every "
        "x86-64 machine with AVX2 and any thread count: it trains in a child process with one thread and "
        "fixed numerical code paths (netdissect/demo/train.py).",
    )
    p.add_argument("--dataset", required=True, metavar="DIR", help="Broden folder to train on")
    p.add_argument("--out", required=True, metavar="MODEL.pt", help="weights file to write")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help=f"passes over the dataset (default {DEMO_EPOCHS})")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, order and crops (default 0)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"images per step (default {BATCH_SIZE})")
    p.add_argument(
        "--workers", type=int, default=0, help="data loader worker processes reading the dataset (default 0: none)"
    )
    p.set_defaults(func=_train_demo)


def _train_demo(args: argparse.Namespace) -> int:
    from netdissect.demo.train import REPRODUCIBLE_ENV, reproducible_process

    if not reproducible_process():
        # MKL and PyTorch read these when they load: start a fresh process that has them.
        argv = [
            sys.executable,
            "-m",
            "netdissect",
            "train-demo",
            "--dataset",
            str(args.dataset),
            "--out",
            str(args.out),
        ]
        argv += ["--epochs", str(args.epochs), "--seed", str(args.seed), "--batch-size", str(args.batch_size)]
        argv += ["--workers", str(args.workers)]
        sys.stdout.flush()
        child = subprocess.run(argv, env={**os.environ, **REPRODUCIBLE_ENV}, stderr=subprocess.PIPE, text=True)
        sys.stderr.write(child.stderr)  # its error message, where the caller reads this command's
        return child.returncode
    return _train_here(args)


def _train_here(args: argparse.Namespace) -> int:
    import torch

    from netdissect.demo.net import DEMO_SPEC
    from netdissect.demo.train import load_training_data, train_demo
    from netdissect.models import save_checkpoint

    threads = torch.get_num_threads()
    start = time.monotonic()
    data = load_training_data(args.dataset, workers=args.workers)
    print(
        f"{len(data['images'])} images, {len(data['labels'])} target labels, "
        f"targets {tuple(data['targets'].shape[1:])}, {threads} threads to load ({time.monotonic() - start:.1f} s), "
        "1 to train",
        flush=True,
    )
    net, history = train_demo(
        data["images"],
        data["targets"],
        epochs=args.epochs,
        seed=args.seed,
        batch_size=args.batch_size,
        log=lambda m: print(m, flush=True),
    )
    save_checkpoint(
        args.out,
        net.state_dict(),
        spec=DEMO_SPEC,
        seed=args.seed,
        epochs=args.epochs,
        dataset_fingerprint=data["fingerprint"],
        target_labels=data["labels"].tolist(),
        history=history,
    )
    print(f"wrote {args.out} ({time.monotonic() - start:.1f} s)")
    return 0
