"""The one exception type users see.

Raise :class:`NetDissectError` for every problem caused by input (a file, a row, a layer, an option):
the CLI prints its message without a traceback and exits with status 2. The message says what was
found, where (file, row, column, layer, option), what was expected, and what to do.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class NetDissectError(Exception):
    """A problem with the user's input, explained in the message."""


def unwrap_worker_errors(batches: Iterable[T]) -> Iterator[T]:
    """Iterate a DataLoader; a NetDissectError raised in a worker process comes back with the user's
    message only (the DataLoader glues the worker's traceback onto it)."""
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except NetDissectError as err:
            text = str(err)
            marker = "NetDissectError: "
            if "Original Traceback" not in text or marker not in text:
                raise
            raise NetDissectError(text.rsplit(marker, 1)[1].strip()) from None
        yield batch
