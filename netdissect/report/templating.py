"""The jinja2 environment of the reports: templates are package data, autoescaping is always on."""

from __future__ import annotations

import functools
from importlib import resources

import jinja2


@functools.cache
def environment() -> jinja2.Environment:
    """Templates from ``netdissect/report/templates``; every ``{{ value }}`` is HTML-escaped."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("netdissect.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = lambda value, spec: format(value, spec)
    return env


def static_file(name: str) -> bytes:
    """A file of ``netdissect/report/static`` (CSS, JS copied beside each report)."""
    return resources.files("netdissect.report").joinpath("static", name).read_bytes()
