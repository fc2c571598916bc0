"""Every default has one home: netdissect/defaults.py for the package and CLI, config/schema.yaml for
the workflow, and the shipped config/config.yaml says the same as the schema."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from netdissect import defaults
from netdissect.cli import build_parser
from netdissect.presets import resolve

REPO = Path(__file__).resolve().parents[1]


def _schema_defaults(section: str) -> dict:
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    return {key: spec.get("default") for key, spec in schema["properties"][section]["properties"].items()}


def test_shipped_config_equals_the_schema_defaults():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for section in ("dissect", "resources"):
        schema = _schema_defaults(section)
        assert set(config[section]) == set(schema), section
        for key, value in config[section].items():
            assert schema[key] == value, (
                f"config/config.yaml {section}.{key} = {value!r}, schema default {schema[key]!r}"
            )


def test_workflow_and_package_defaults_agree():
    schema = _schema_defaults("dissect")
    same = {"quantile": "QUANTILE", "iou_threshold": "IOU_THRESHOLD", "union": "UNION", "batch_size": "BATCH_SIZE"}
    same |= {"topk": "TOPK", "device": "DEVICE", "upsample": "UPSAMPLE", "preset": "PRESET"}
    same |= {"alpha": "ALPHA", "permutation_seed": "PERMUTATION_SEED"}
    same |= {"activations": "ACTIVATIONS"}
    for key, name in same.items():
        assert schema[key] == getattr(defaults, name), key
    # the documented differences: a workflow keeps every shard on disk, so it stores float16; it tests
    # significance only where the config asks (a model's `permutations`), the command tests with K = 100
    assert schema["dtype"] == "float16" and defaults.DTYPE == "float32"
    assert schema["permutations"] == 0 and defaults.PERMUTATIONS == 100
    model = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())["properties"]["models"]
    rotation = model["additionalProperties"]["properties"]["rotation"]["properties"]
    assert rotation["seed"]["default"] == defaults.ROTATION_SEED


def test_command_defaults_come_from_defaults_py():
    parser = build_parser()
    args = parser.parse_args(["dissect", "--dataset", "D", "--model", "M", "--layers", "a", "--out", "O"])
    assert (args.iou_threshold, args.batch_size, args.dtype, args.device) == (
        defaults.IOU_THRESHOLD,
        defaults.BATCH_SIZE,
        defaults.DTYPE,
        defaults.DEVICE,
    )
    assert (args.activations, args.memory_format) == (defaults.ACTIVATIONS, defaults.MEMORY_FORMAT)
    # the conventions a preset sets are None until resolved: then defaults.py's, without a preset
    assert (args.preset, args.quantile, args.union, args.upsample) == (None, None, None, None)
    assert resolve(args.preset, quantile=args.quantile, union=args.union, upsample=args.upsample) == {
        "quantile": defaults.QUANTILE,
        "union": defaults.UNION,
        "upsample": defaults.UPSAMPLE,
    }
    args = parser.parse_args(
        ["tally", "--dataset", "D", "--shard", "S", "--layer", "a", "--thresholds", "T"] + ["--out", "O"]
    )
    assert args.batch_size == defaults.BATCH_SIZE and args.threads == 1 and args.workers == 0
    args = parser.parse_args(["report", "--dataset", "D", "--layer-dir", "L", "--shards", "S", "--out", "O"])
    assert (args.topk, args.quality, args.threads) == (defaults.TOPK, defaults.JPEG_QUALITY, defaults.REPORT_THREADS)


def test_no_default_is_written_twice_in_the_package():
    """No function default or ``default=`` option of netdissect/ spells out a value of defaults.py."""
    values = {0.04, 0.005, "paper", "bilinear"}
    for path in sorted((REPO / "netdissect").rglob("*.py")):
        if path.name == "defaults.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            found = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found = node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
            elif isinstance(node, ast.Call):
                found = [k.value for k in node.keywords if k.arg == "default"]
            for value in found:
                if isinstance(value, ast.Constant) and value.value in values and not isinstance(value.value, bool):
                    raise AssertionError(f"{path.relative_to(REPO)}:{value.lineno}: default {value.value!r}")
