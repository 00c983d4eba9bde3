"""One exception type for every user-facing error, and the one place that reports it.

The CLI prints ``RedoneError`` as a single line (no traceback) and exits non-zero, so
messages must name what is wrong and where: the config key, or the file and line.
"""


class RedoneError(Exception):
    """A problem with the user's input (config, data, paths): reported in one line."""


class ConfigError(RedoneError):
    """A config key is unknown, mistyped or inconsistent with another key."""


class DataError(RedoneError):
    """A data file is unreadable or a record is malformed (message names file:line)."""


def report_errors(func, args) -> int:
    """Run a command; user errors print ONE line (``redone: error: ...``) to stderr and return 1.

    Shared by ``redone`` and the modules runnable alone (``python -m redone.predict``, ``redone.chat``).
    """
    import sys

    try:
        return func(args)
    except RedoneError as err:
        print(f"redone: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        # Last resort: a file-system error on a path no check covered (an --out under a file, a disk
        # that filled while writing a log). It names the file; a traceback would add nothing.
        where = f"{err.filename}: " if err.filename else ""
        print(f"redone: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("redone: interrupted", file=sys.stderr)
        return 130
