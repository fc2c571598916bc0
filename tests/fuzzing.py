"""Shared settings of the fuzz tests (hypothesis) and the count of cases they ran.

``NETDISSECT_FUZZ`` picks the run:

- unset or ``ci``: a fixed, derandomized set of cases (the same every run), sized so that all fuzz
  tests together run a few thousand cases in well under a minute;
- ``long``: ``NETDISSECT_FUZZ_SCALE`` (default 100) times as many cases, random each run (by hand:
  ``NETDISSECT_FUZZ=long python -m pytest -q tests/test_fuzz_*.py``).

Every fuzz test calls :func:`count` once per case; the session's terminal summary prints the totals
(tests/conftest.py), the "fuzz cases run" figure of docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections import Counter

from hypothesis import HealthCheck, Phase, settings

MODE = os.environ.get("NETDISSECT_FUZZ", "ci")
if MODE not in ("ci", "long"):
    raise ValueError(f"NETDISSECT_FUZZ={MODE!r}: expected ci or long")
SCALE = int(os.environ.get("NETDISSECT_FUZZ_SCALE", "100")) if MODE == "long" else 1
CASES: Counter[str] = Counter()


def fuzz(examples: int) -> settings:
    """Hypothesis settings for a fuzz test running ``examples`` cases in CI (times SCALE by hand)."""
    return settings(
        max_examples=examples * SCALE,
        derandomize=MODE == "ci",
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
        print_blob=True,
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],  # no 'explain': slow
    )


def count(target: str) -> None:
    CASES[target] += 1


def names_file_and_line(message: str, file: str) -> bool:
    """The message names ``file`` and a line (``row N`` or ``line N``) of it."""
    return re.search(rf"{re.escape(file)}\S*,? (row|line) \d+", message) is not None


@contextlib.contextmanager
def no_hang(seconds: float = 10.0):
    """Fail the case (raise Hang) if its block runs longer than ``seconds`` (a reader looping forever)."""

    def alarm(signum, frame):
        raise Hang(f"a case ran longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Hang(BaseException):
    """A case that did not finish in time (BaseException: no reader's `except Exception` swallows it)."""


# Cell values that have broken CSV readers: numbers at and past every limit, Unicode digits, CSV
# syntax, path tricks, NUL, BOM, a field longer than the csv module's default limit.
TRICKY = [
    "",
    "0",
    "-1",
    "1",
    "2",
    "3",
    "4",
    "8",
    "65535",
    "65536",
    "4294967296",
    "99999999999999999999",
    "1e400",
    "-1e400",
    "nan",
    "inf",
    "-0",
    "1.5",
    "0x10",
    " 1",
    "1 ",
    "+1",
    "1_000",
    "²",
    "١٢",
    "٣",
    "x",
    ";",
    ";;",
    "1;2",
    "1;;2",
    "(",
    ")",
    "a(1)",
    "a(-1)",
    "color(1)",
    "object(99999999999999999999)",
    '"',
    '""',
    '"a,b"',
    ",",
    "\r",
    "\n",
    "\r\n",
    "\x00",
    "\ufeff",
    "é",
    "../x.png",
    "/x.png",
    "a.png",
    "x/../../y.png",
    "dtd/banded_0002_color.png",
    "dtd/banded_0002.jpg",
    "train",
    "val",
    "x" * 140_000,
]
