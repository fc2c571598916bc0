"""Fuzzing the workflow's config check (netdissect.workflow_config.check_config, config/schema.yaml).

Each case changes the shipped config/config.yaml at one key: a value replaced (by any YAML-like
value), a key removed, or an unknown key added. The check must accept the config or raise a
NetDissectError that names the key changed (or the object holding it, or a key inside it), never
another exception. "Config file" and "line" here are the key: YAML configs are merged from several
files before they are checked, so the key path is what leads the user to the line.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from netdissect.errors import NetDissectError
from netdissect.workflow_config import check_config, key_path, load_schema
from tests.fuzzing import count, fuzz, no_hang

REPO = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(REPO / "config" / "schema.yaml")
CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def paths(value, prefix=()):
    """Every key path of a nested config (dict keys and list indices)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, (*prefix, i))


PATHS = [p for p in paths(CONFIG) if p]
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(
        ["synth", "path", "train", "random", "cpu", "cuda", "paper", "float16", "resnet18", "demo", "", 0, -1, 1, 2**64]
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=3),
    max_leaves=6,
)


def set_at(config, path, value):
    target = config
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value


def delete_at(config, path):
    target = config
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]


def named_key(message: str) -> tuple[str, bool]:
    """The key a message names, and whether it is a schema problem (else: a name that a run or a
    training refers to is not defined)."""
    match = re.match(r"config (key )?(.+?): ", message)
    assert match, f"the message names no key: {message!r}"
    return match.group(2).replace("'", ""), match.group(1) is not None


def related(named: str, schema: bool, changed: str) -> bool:
    """A schema problem names the key changed, one holding it, or one inside it; an undefined name is
    named where it is used, after a change to the definitions or to the uses."""
    if schema:
        return named == "(the whole config)" or changed.startswith(named) or named.startswith(changed)
    return changed.split(".")[0].split("[")[0] in ("datasets", "models", "runs")


@fuzz(500)
@given(data=st.data())
def test_fuzz_config(data):
    count("workflow config")
    config = copy.deepcopy(CONFIG)
    path = data.draw(st.sampled_from(PATHS))
    kind = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if kind == "replace":
        set_at(config, path, data.draw(values))
        changed = key_path(path)
    elif kind == "delete" and not isinstance(path[-1], int):
        delete_at(config, path)
        changed = key_path(path)
    else:
        parent = path
        target = config
        for part in parent:
            target = target[part]
        if not isinstance(target, dict):
            return
        extra = data.draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in target))
        target[extra] = data.draw(values)
        changed = key_path((*parent, extra))
    try:
        with no_hang():
            check_config(config, SCHEMA)
    except NetDissectError as err:
        named, schema = named_key(str(err))
        assert related(named, schema, changed.replace("'", "")), (named, changed, str(err))


def test_the_shipped_config_passes():
    check_config(copy.deepcopy(CONFIG), SCHEMA)


@pytest.mark.parametrize(
    "path, value, expected",
    [
        (("dissect", "shards"), 0, r"config key dissect\.shards: 0 is less than the minimum of 1"),
        (
            ("models", "demo", "weights", "seed"),
            "x",
            r"config key models\.demo\.weights\.seed: 'x' is not of type 'integer'",
        ),
        (("runs", 0, "models", 1), "nosuch", r"config runs\[0\]\.models\[1\]: 'nosuch' is not a key of `models`"),
        (("datasets", "synth", "size"), 100, r"config key datasets\.synth\.size: 100 is not one of \[224, 227, 384\]"),
    ],
)
def test_messages_name_the_key(path, value, expected):
    config = copy.deepcopy(CONFIG)
    set_at(config, path, value)
    with pytest.raises(NetDissectError, match=expected):
        check_config(config, SCHEMA)


def test_an_unknown_or_missing_key_is_named():
    config = copy.deepcopy(CONFIG)
    config["dissect"]["shard"] = 4
    with pytest.raises(NetDissectError, match=r"config key dissect\.shard: .*'shard' was unexpected"):
        check_config(config, SCHEMA)
    config = copy.deepcopy(CONFIG)
    del config["models"]["demo"]["layers"]
    with pytest.raises(NetDissectError, match=r"config key models\.demo\.layers: 'layers' is a required property"):
        check_config(config, SCHEMA)
