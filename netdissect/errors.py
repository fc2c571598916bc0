"""The one exception type users see.

Raise :class:`NetDissectError` for every problem caused by input (a file, a row, a layer, an option):
the CLI prints its message without a traceback and exits with status 2. The message says what was
found, where (file, row, column, layer, option), what was expected, and what to do.
"""


class NetDissectError(Exception):
    """A problem with the user's input, explained in the message."""
