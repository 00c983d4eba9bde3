"""One exception type for every user-facing error.

The CLI prints ``RedoneError`` as a single line (no traceback) and exits non-zero, so
messages must name what is wrong and where: the config key, or the file and line.
"""


class RedoneError(Exception):
    """A problem with the user's input (config, data, paths): reported in one line."""


class ConfigError(RedoneError):
    """A config key is unknown, mistyped or inconsistent with another key."""


class DataError(RedoneError):
    """A data file is unreadable or a record is malformed (message names file:line)."""
