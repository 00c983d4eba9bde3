"""Read data sources into plain records, with errors that name the file and line.

Formats: ``text`` (.txt: split into paragraphs, lines or one document), ``jsonl``, ``json`` (a list of
objects), ``parquet`` and ``hub`` (both through ``datasets``), plus the record-level formats the SFT
and DPO stages interpret (sns_bench, transbench, chat, hh_rlhf, preference), which are json/jsonl
underneath. ``auto`` picks from the file suffix.

Input tolerance: a UTF-8 byte-order mark at the start of a file is dropped and CRLF / CR line endings
read as LF, in every format, so a file saved by a Windows editor reads exactly like its LF twin.

Errors (``DataError``, one line): missing file, a directory where a file is needed, non-UTF-8 bytes
(file:line), malformed JSON (file:line), a record that is not an object (file:line), a missing or
non-text field (file:line), an unreadable parquet/hub source, an empty source. Line numbers are
1-based; a JSON list's records carry the line their object starts on, parquet/hub rows a 1-based
``row N``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from redone.config.schema import SourceSection
from redone.errors import DataError
from redone.textio import check_file, json_list_items, read_lines  # noqa: F401 (re-exported)

SUFFIX_FORMATS = {".txt": "text", ".md": "text", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


def source_name(source: SourceSection) -> str:
    return source.name or Path(source.path).stem


def detect_format(source: SourceSection) -> str:
    if source.format != "auto":
        return source.format
    path = Path(source.path)
    if path.is_dir():
        if any(path.glob("Note-*.json")):
            return "sns_bench"
        raise DataError(f"{path}: is a directory without SNS-Bench Note-*.json files; name a data file, "
                        "or set format: in the source")
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        if not path.exists():
            return "hub"  # not a local file: let `datasets` resolve it as a hub id
        raise DataError(f"{path}: cannot tell the format from the suffix; set format: in the source")
    return fmt


def read_jsonl(path: Path) -> list[dict]:
    records = []
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: malformed JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        record["_line"] = number
        records.append(record)
    return records


def read_json(path: Path) -> list[dict]:
    records = []
    for line, record in json_list_items(path):
        if not isinstance(record, dict):
            raise DataError(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
        record["_line"] = line
        records.append(record)
    return records


def read_text_units(path: Path, unit: str) -> list[str]:
    text = "".join(line for _, line in read_lines(path))  # LF endings: paragraphs split alike everywhere
    if unit == "file":
        pieces = [text]
    elif unit == "line":
        pieces = text.split("\n")
    else:  # paragraphs: blank-line separated blocks keep a speech or a note together
        pieces = text.split("\n\n")
    return [p.strip() for p in pieces if p.strip()]


def read_datasets(source: SourceSection, fmt: str) -> list[dict]:
    import datasets

    # A failed load is reported below in one line; datasets would log the same failure at ERROR first.
    library_log = logging.getLogger("datasets")
    level = library_log.level
    library_log.setLevel(logging.CRITICAL)
    try:
        if fmt == "parquet":
            ds = datasets.load_dataset("parquet", data_files=source.path, split="train")
        else:
            ds = datasets.load_dataset(source.path, split=source.split)
    except Exception as err:  # datasets raises many types; the user needs the path and the reason
        reason = (str(err).strip().splitlines() or [""])[0]
        raise DataError(f"{source.path}: cannot load with datasets ({type(err).__name__}: {reason})") from None
    finally:
        library_log.setLevel(level)
    return [dict(row, _line=f"row {i + 1}") for i, row in enumerate(ds)]


def read_records(source: SourceSection) -> list[dict]:
    """Records of a json/jsonl/parquet/hub source (each carries `_line` for error messages)."""
    fmt = detect_format(source)
    path = Path(source.path)
    if fmt not in ("hub",) and path.is_dir():
        raise DataError(f"{path}: is a directory; format '{fmt}' reads one file")
    if fmt == "parquet":
        check_file(path)
    suffix_jsonl = path.suffix.lower() == ".jsonl"
    if fmt == "jsonl" or (fmt in ("chat", "hh_rlhf", "preference") and suffix_jsonl):
        records = read_jsonl(path)
    elif fmt in ("json", "transbench", "chat", "hh_rlhf", "preference"):
        records = read_json(path)
    elif fmt in ("parquet", "hub"):
        records = read_datasets(source, fmt)
    else:
        raise DataError(f"{source.path}: format '{fmt}' has no records")
    return _limit(records, source)


def _limit(items: list, source: SourceSection) -> list:
    items = items[: source.limit] if source.limit else items
    if not items:
        raise DataError(f"{source.path}: source '{source_name(source)}' is empty")
    return items


def field_text(record: dict, fields: list[str], path: str) -> str:
    parts = []
    for name in fields:
        if name not in record:
            raise DataError(f"{path}:{record.get('_line', '?')}: missing field '{name}'")
        value = record[name]
        if not isinstance(value, str):
            raise DataError(f"{path}:{record.get('_line', '?')}: field '{name}' is {type(value).__name__}, not text")
        parts.append(value.strip())
    return "\n\n".join(p for p in parts if p)


def read_documents(source: SourceSection) -> list[str]:
    """Plain-text documents of a CPT source."""
    fmt = detect_format(source)
    if fmt == "text":
        return _limit(read_text_units(Path(source.path), source.text_unit), source)
    if fmt == "sns_bench":
        return _limit(sns_bench_documents(Path(source.path), source.tasks), source)
    fields = list(source.text_fields) or [source.text_field]
    docs = [field_text(r, fields, source.path) for r in read_records(source)]
    return _limit([d for d in docs if d], source)


def sns_bench_documents(folder: Path, tasks: list[str]) -> list[str]:
    """Note text (titles and bodies) from SNS-Bench task files, exact duplicates removed.

    Only the note material is taken, never answers, so CPT teaches the domain's language and not the
    benchmark's labels.
    """
    files = sorted(folder.glob("Note-*.json"))
    if tasks:
        files = [f for f in files if f.stem in set(tasks)]
    if not files:
        raise DataError(f"{folder}: no SNS-Bench Note-*.json files (tasks={list(tasks)})")
    seen: set[str] = set()
    docs = []
    for file in files:
        for record in read_json(file):
            for key in ("content", "sentence2"):
                text = record.get(key)
                if isinstance(text, str) and len(text.strip()) > 20 and text.strip() not in seen:
                    seen.add(text.strip())
                    docs.append(text.strip())
    return docs


def file_digest(path: str | Path) -> str:
    """sha256 of a file or of every file under a folder (names + bytes), for cache keys and lineage."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def source_digest(source: SourceSection) -> str:
    if Path(source.path).exists():
        return file_digest(source.path)
    return f"hub:{source.path}:{source.split}"
