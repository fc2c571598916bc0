"""``netdissect layers`` and ``netdissect random-weights``: registration (light) and handlers."""

from __future__ import annotations

import argparse

from netdissect.defaults import RANDOM_INIT_SEED
from netdissect.errors import NetDissectError
from netdissect.options import model_options, names, setup, tokens_option, upsample_option


def register(sub, *groups) -> None:
    p = sub.add_parser(
        "layers",
        help="list a model's layers: output shapes, how each is read as unit maps, and field maps",
        description="One line per layer: name, output shape without the batch for one --size image, how "
        "the output is read (conv, channels_last, tokens, cls or flat; docs/models.md), and its field map "
        "(offset, size, step of its units' receptive fields in input pixels, y,x; docs/dissection.md §3) "
        "or why it has none.",
    )
    model_options(p)
    tokens_option(p)
    p.add_argument(
        "--size",
        type=int,
        help="image side of the dummy input (default 224; a Caffe model: the input size its prototxt declares)",
    )
    p.add_argument(
        "--check",
        type=names,
        metavar="L1,L2",
        help="only these layers: fail (exit 2) naming any the model lacks, else list them",
    )
    upsample_option(p, "bilinear")
    p.epilog = "With --check and --upsample fieldmap, a layer without a field map also fails (exit 2)."
    p.set_defaults(func=_layers)

    r = sub.add_parser(
        "random-weights",
        help="write a seeded random initialisation of a model",
        description="Build the model SPEC with torch seeded by --seed and save its state_dict, so "
        "that every job dissecting an untrained network sees the same weights.",
    )
    r.add_argument(
        "--model", required=True, metavar="SPEC", help="torchvision name, timm:NAME or package.module:factory"
    )
    r.add_argument("--seed", type=int, default=RANDOM_INIT_SEED, help=f"torch seed (default {RANDOM_INIT_SEED})")
    r.add_argument("--out", required=True, metavar="FILE.pt", help="weights file to write")
    r.set_defaults(func=_random_weights)


def _layers(args: argparse.Namespace) -> int:
    from netdissect.masks import upsampling
    from netdissect.models import layer_shapes, load_model
    from netdissect.models.fieldmap import FieldMap
    from netdissect.models.fieldmaps import field_map_text, trace_field_maps
    from netdissect.models.readout import plan_readout, token_layout

    setup(args)
    model = load_model(args.model, args.weights, args.mean, args.std, mean_file=args.mean_file)
    layout = token_layout(model.module)
    shapes = layer_shapes(model, args.check, size=args.size)
    hw = tuple(model.module.input_size) if args.size is None and hasattr(model.module, "input_size") else None
    size = hw or (args.size or 224, args.size or 224)
    fields = trace_field_maps(model, list(shapes), size)
    if args.upsample:
        for name in shapes:
            field = fields[name]
            upsampling(args.upsample, field if isinstance(field, FieldMap) else None, size[1], name, field)
    for name, shape in shapes.items():
        if isinstance(shape, tuple):
            shape_text = "x".join(str(s) for s in shape)
            try:
                reading = plan_readout(shape, name, size, layout, args.tokens).describe(shape)
            except NetDissectError as err:
                reading = f"not read: {err}"
        else:
            shape_text, reading = shape, f"not read: the output is a {shape}, not a tensor"
        print(f"{name}	{shape_text}	{reading}	{field_map_text(fields[name])}")
    return 0


def _random_weights(args: argparse.Namespace) -> int:
    from netdissect.models import load_model, save_checkpoint
    from netdissect.models.loading import is_caffe_spec

    if is_caffe_spec(args.model):
        raise NetDissectError(
            f"--model {args.model}: a Caffe model's weights come from its .caffemodel (--weights, or weights "
            f"source download/path in the workflow)"
        )
    model = load_model(args.model, seed=args.seed)
    if model.weights_sha256 is not None:
        raise NetDissectError(
            f"--model {args.model}: a TorchScript or ONNX file carries its own weights; use it as SPEC "
            f"with weights source `none` instead"
        )
    save_checkpoint(args.out, model.module.state_dict(), spec=args.model, seed=args.seed)
    print(f"wrote {args.out}: random {args.model}, seed {args.seed}")
    return 0
