"""The workflow's configuration check: config/schema.yaml, then the names the config refers to.

The Snakefile calls :func:`check_config` on the merged configuration before Snakemake's own
``validate`` (which then fills in the defaults). A problem is one NetDissectError naming the key as a
path (``dissect.shards``, ``runs[0].models``, ``models.r18.weights.seed``), what was found and what
the schema expects, instead of a jsonschema dump. jsonschema comes with Snakemake; pyyaml too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from netdissect.errors import NetDissectError

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_+-]+")


def load_schema(path: str | Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def key_path(parts: Sequence[Any]) -> str:
    """``["runs", 0, "models"]`` -> ``runs[0].models``; keys that are not plain names are quoted."""
    out = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            text = str(part) if isinstance(part, str) and _PLAIN_KEY.fullmatch(part) else repr(part)
            out += f".{text}" if out else text
    return out or "(the whole config)"


def _offending_path(error) -> list[Any]:
    """Where the problem is: the instance's path, plus the key a 'required', 'additionalProperties'
    or 'propertyNames' error is about (jsonschema reports those at the parent)."""
    path = list(error.absolute_path)
    if error.validator == "required":
        missing = re.match(r"'(.*)' is a required property", error.message)
        if missing:
            path.append(missing.group(1))
    elif error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        allowed = set(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        if len(extra) == 1:
            path.append(extra[0])
    elif error.validator == "propertyNames":
        path.append(error.instance)  # the name itself was refused
    return path


def check_config(config: Mapping[str, Any], schema: Mapping[str, Any] | str | Path) -> None:
    """Raise NetDissectError naming the key of the first problem of ``config`` (schema, then names)."""
    import jsonschema

    if not isinstance(schema, Mapping):
        schema = load_schema(schema)
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        where = key_path(_offending_path(error))
        message = error.message if len(error.message) <= 300 else error.message[:300] + " ..."
        about = error.schema.get("description") if isinstance(error.schema, Mapping) else None
        hint = f" ({' '.join(str(about).split())[:200]})" if about else ""
        raise NetDissectError(f"config key {where}: {message}{hint}; see config/schema.yaml")
    check_names(config)


def check_names(config: Mapping[str, Any]) -> None:
    """Every dataset and model a run or a training refers to is defined (after the schema check, before
    the defaults are filled in)."""
    datasets, models = config["datasets"], config["models"]
    for i, run in enumerate(config["runs"]):
        if run["dataset"] not in datasets:
            raise NetDissectError(
                f"config runs[{i}].dataset: {run['dataset']!r} is not a key of `datasets` "
                f"(defined: {', '.join(map(str, datasets))})"
            )
        for j, model in enumerate(run["models"]):
            if model not in models:
                raise NetDissectError(
                    f"config runs[{i}].models[{j}]: {model!r} is not a key of `models` "
                    f"(defined: {', '.join(map(str, models))})"
                )
    for name, model in models.items():
        weights = model.get("weights", {})  # defaults are filled later, by Snakemake's validate
        caffe = str(model.get("spec", "")).lower().endswith(".prototxt")
        if caffe and weights.get("source") not in ("download", "path"):
            raise NetDissectError(
                f"config models.{name}.weights.source: {weights.get('source')!r}; a Caffe deploy.prototxt "
                f"needs its .caffemodel: `source: download` (with `url`) or `source: path` (with `path`)"
            )
        if model.get("mean_file") and not caffe:
            raise NetDissectError(f"config models.{name}.mean_file: only for Caffe models (spec: .../deploy.prototxt)")
        if weights.get("source") == "train" and weights["dataset"] not in datasets:
            raise NetDissectError(
                f"config models.{name}.weights.dataset: {weights['dataset']!r} is not a key of "
                f"`datasets` (defined: {', '.join(map(str, datasets))})"
            )
