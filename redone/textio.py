"""Reading a user's text and JSON files with errors that point at the file's real, 1-based line.

Shared by the data sources and the SNS task loader (this module imports only the project's errors).
A leading UTF-8 byte-order mark is dropped and CRLF / lone-CR line endings become LF everywhere.

Errors: ``DataError`` naming ``file:line`` for invalid UTF-8 or malformed JSON, and the file for a
missing path or a directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from redone.errors import DataError


def check_file(path: Path) -> None:
    """A data file must exist and be a regular, readable file (not a directory)."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")


def read_lines(path: Path):
    """Yield (line_number, text) with UTF-8 checked per line so errors point at the line.

    A leading byte-order mark is dropped and CRLF/CR endings become LF.
    """
    check_file(path)
    try:
        handle = path.open("rb")
    except OSError as err:  # permissions, a FIFO that cannot open, ...
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{number}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
            # A lone CR (old Mac files) is not a line break to the byte iterator: keep it inside the line.
            yield number, text.replace("\r\n", "\n").replace("\r", "\n")


def json_list_items(path: str | Path) -> list[tuple[int, object]]:
    """``(line, item)`` for each item of a JSON file holding a list (a single object counts as a list of one).

    ``line`` is the 1-based line on which the item starts, so every error about an item can point at
    the file's real line (not an item index). BOM and CRLF are handled by ``read_lines``.
    """
    path = Path(path)
    text = "".join(line for _, line in read_lines(path))
    decoder = json.JSONDecoder()
    line_of = _LineCounter(text)
    try:
        start = _skip_space(text, 0)
        if start < len(text) and text[start] == "{":
            item, end = decoder.raw_decode(text, start)
            _expect_end(path, text, end)
            return [(line_of(start), item)]
        if start >= len(text) or text[start] != "[":
            json.loads(text)  # raises with the position of the first problem
            raise DataError(f"{path}: expected a JSON list of objects")
        items, index = [], _skip_space(text, start + 1)
        if index < len(text) and text[index] == "]":
            _expect_end(path, text, index + 1)
            return []
        while True:
            item, end = decoder.raw_decode(text, index)
            items.append((line_of(index), item))
            index = _skip_space(text, end)
            if index < len(text) and text[index] == ",":
                index = _skip_space(text, index + 1)
                continue
            if index < len(text) and text[index] == "]":
                _expect_end(path, text, index + 1)
                return items
            raise json.JSONDecodeError("Expecting ',' delimiter", text, index)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from None


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\n":
        index += 1
    return index


def _expect_end(path: Path, text: str, index: int) -> None:
    index = _skip_space(text, index)
    if index < len(text):
        raise json.JSONDecodeError("Extra data", text, index)


class _LineCounter:
    """1-based line of a position in ``text``; positions are asked in increasing order, so counting
    continues from the previous one (linear in the file, not quadratic)."""

    def __init__(self, text: str):
        self.text, self.position, self.line = text, 0, 1

    def __call__(self, index: int) -> int:
        self.line += self.text.count("\n", self.position, index)
        self.position = index
        return self.line
