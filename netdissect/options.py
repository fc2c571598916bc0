"""Argument types and option groups shared by the commands (argparse only: this module stays light).

Two words for two things: ``--workers N`` is always N *processes* (DataLoader workers or a process
pool) and ``--threads N`` is always N *threads* of the command's own process.
"""

from __future__ import annotations

import argparse

from netdissect.defaults import BATCH_SIZE, CAFFE_MEAN, DEVICE, PRESETS, TOKEN_MODES, UPSAMPLE, UPSAMPLES
from netdissect.errors import NetDissectError


def floats(text: str) -> list[float]:
    """``1,2,3`` -> [1.0, 2.0, 3.0]."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def names(text: str) -> list[str]:
    """``a,b,a`` -> ["a", "b"] (no duplicates, order kept)."""
    found = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not found:
        raise argparse.ArgumentTypeError("expected comma-separated names")
    return found


def model_options(p: argparse.ArgumentParser) -> None:
    """``--model SPEC --weights FILE --mean --std --mean-file``."""
    p.add_argument(
        "--model",
        required=True,
        metavar="SPEC",
        help="torchvision architecture (resnet18), timm:NAME, TorchScript or ONNX file, package.module:factory, "
        "or a Caffe deploy.prototxt",
    )
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="state_dict, checkpoint holding one, or .safetensors file; the .caffemodel of a Caffe model",
    )
    p.add_argument(
        "--mean",
        type=floats,
        help="input mean per channel in the model's units: R,G,B in [0, 1] (default ImageNet's); for a Caffe "
        f"model B,G,R in 0-255 (default {','.join(map(str, CAFFE_MEAN))})",
    )
    p.add_argument("--std", type=floats, help="input std per channel, in the same units (default ImageNet's; Caffe: 1)")
    p.add_argument(
        "--mean-file",
        metavar="MEAN.binaryproto",
        help="Caffe models: subtract the per-channel means of this mean image instead of --mean",
    )


def tokens_option(p: argparse.ArgumentParser) -> None:
    """``--tokens spatial|cls``: how token layers (batch × tokens × channels) are read."""
    p.add_argument(
        "--tokens",
        choices=TOKEN_MODES,
        help="token layers (ViT blocks): 'spatial' = one map per channel over the patch grid (the default), "
        "'cls' = the class token, a 1x1 map (docs/models.md)",
    )


def preset_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        choices=PRESETS,
        help="set every convention of one system: original (paper union, fieldmap, q = 5/999, the "
        "original's input) or lite (NetDissect-Lite's union, bilinear, q = 5/999, Lite's input); explicit "
        "options override it (logged). See netdissect/presets.py",
    )


def upsample_option(p: argparse.ArgumentParser, default: str = f"{UPSAMPLE}, or the preset's") -> None:
    p.add_argument(
        "--upsample",
        choices=UPSAMPLES,
        help=f"how maps are upsampled to masks: bilinear, or fieldmap (linear between the centres of the "
        f"units' receptive fields, as the original system did) (default {default})",
    )


def batch_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"images per batch (default {BATCH_SIZE})")


def workers_option(p: argparse.ArgumentParser, what: str = "DataLoader worker processes decoding the images") -> None:
    p.add_argument("--workers", type=int, default=0, help=f"{what} (default 0: none, the main process reads)")


def threads_option(p: argparse.ArgumentParser, what: str, default: int = 1) -> None:
    p.add_argument("--threads", type=int, default=default, help=f"{what} (default {default})")


def device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=DEVICE, help=f"cpu or cuda (default {DEVICE})")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def labels_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--labels",
        metavar="PACK",
        help="packed labels of the dataset (`netdissect broden pack-labels`): read them instead of "
        "decoding the label PNGs",
    )


def setup(args: argparse.Namespace) -> None:
    """Logging for a command, and a clear refusal of ``--device cuda`` where there is none."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="netdissect: %(message)s")
    if getattr(args, "device", "cpu") != "cpu":
        import torch

        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise NetDissectError(f"--device {args.device}: no CUDA device is available; use --device cpu")
