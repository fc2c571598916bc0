"""``netdissect layers`` and ``netdissect random-weights``: registration (light) and handlers."""

from __future__ import annotations

import argparse

from netdissect.defaults import RANDOM_INIT_SEED
from netdissect.errors import NetDissectError
from netdissect.options import model_options, names, setup


def register(sub, *groups) -> None:
    p = sub.add_parser("layers", help="list a model's layers and their output shapes")
    model_options(p)
    p.add_argument("--size", type=int, default=224, help="image side of the dummy input (default 224)")
    p.add_argument(
        "--check",
        type=names,
        metavar="L1,L2",
        help="only these layers: fail (exit 2) naming any the model lacks, else list them",
    )
    p.add_argument("--out", metavar="FILE", help="write the list to FILE (atomically) instead of printing it")
    p.set_defaults(func=_layers)

    r = sub.add_parser(
        "random-weights",
        help="write a seeded random initialisation of a model",
        description="Build the model SPEC with torch seeded by --seed and save its state_dict, so "
        "that every job dissecting an untrained network sees the same weights.",
    )
    r.add_argument("--model", required=True, metavar="SPEC", help="torchvision name or package.module:factory")
    r.add_argument("--seed", type=int, default=RANDOM_INIT_SEED, help=f"torch seed (default {RANDOM_INIT_SEED})")
    r.add_argument("--out", required=True, metavar="FILE.pt", help="weights file to write")
    r.set_defaults(func=_random_weights)


def _layers(args: argparse.Namespace) -> int:
    from netdissect.models import layer_shapes, load_model

    setup(args)
    model = load_model(args.model, args.weights, args.mean, args.std)
    lines = []
    for name, shape in layer_shapes(model, args.check, size=args.size).items():
        shape_text = "x".join(str(s) for s in shape) if isinstance(shape, tuple) else shape
        lines.append(f"{name}\t{shape_text}\n")
    if args.out:
        from netdissect.io import atomic_write_text

        atomic_write_text(args.out, "".join(lines))  # a killed check leaves no file that looks finished
    else:
        print("".join(lines), end="")
    return 0


def _random_weights(args: argparse.Namespace) -> int:
    from netdissect.models import load_model, save_checkpoint

    model = load_model(args.model, seed=args.seed)
    if model.scripted:
        raise NetDissectError(
            f"--model {args.model}: a TorchScript file carries its own weights; use it as SPEC "
            f"with weights source `none` instead"
        )
    save_checkpoint(args.out, model.module.state_dict(), spec=args.model, seed=args.seed)
    print(f"wrote {args.out}: random {args.model}, seed {args.seed}")
    return 0
