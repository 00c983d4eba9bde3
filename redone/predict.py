"""`redone predict`: run a model on your own records for any registered task, parsed answers out.

    redone predict --model DIR --task Note-Hashtag-multiple --input notes.jsonl --out preds.jsonl
        [--task-file task.yaml] [--field content=text ...] [--id-field ID] [--limit N] [--strict]
        [--prompt-style redone|official] [--max-prompt-chars N] [--max-new-tokens N]
        [--dtype float32|bfloat16] [--batch-size B] [--backend hf|vllm] [--device auto|cpu|cuda]
        [--scoring-mode fixed|official] [--no-progress]

Features
- Any registered task: the 12 SNS-Bench files, ``TransBench-zh2en`` / ``TransBench-en2zh`` (or
  ``TransBench``: each record's direction from its ``src_lang`` / ``dst_lang``), a user YAML task
  (``--task-file``, ``redone.sns.tasks.register_yaml_task``).
- Records from JSONL, JSON (a list of objects, e.g. an SNS-Bench file), CSV / TSV (header row) or
  parquet; a UTF-8 byte-order mark is tolerated. Each record's item fields are the task's declared
  inputs (``Task.fields``) read from the columns of the same name, or from other columns with
  ``--field item_field=column``.
- The prompt is built exactly as training and evaluation build it: ``redone.sns.tasks.prompt_messages``
  after ``clip_item`` with the same ``max_prompt_chars``. Unset flags default to what the model was
  trained with (``prompt_style`` and ``max_prompt_chars`` from its ``redone.json``), said on the console.
- Output: one JSON line per record with the record's ``line`` (1-based; parquet ``row N``) and ``id``
  (``--id-field``, or an ``id`` column when there is one), the ``task``, the **parsed** answer
  (``redone.sns.scoring.parse_answer``: label, list of hashtags / entities / highlight words, spans,
  MRC-complex options, level, query; a translation or a user task without a scorer: the stripped
  text), ``parse_ok``, the ``raw`` output, ``new_tokens`` and ``hit_budget`` (cut by the token budget).
  Line 1 is a header naming the model, task, prompt settings and input digest.
- Greedy batched decoding with the KV cache through ``redone.eval.generate.HFGenerator`` (CPU or CUDA)
  with each task's token budget (``Task.max_new_tokens``, capped by ``--max-new-tokens``);
  ``--backend vllm`` runs ``VLLMGenerator`` on CUDA. Records are taken in input order, a window of
  ``8 x batch_size`` at a time (batched by length inside the window, each batch written in input
  order), with a progress bar in items/s.
- Resumable: every finished batch is appended and fsynced; a rerun with the same settings skips the
  records already written, drops a torn last line an interrupted write left, and never writes a record
  twice. An ``--out`` written by another model, task or setting is refused, not mixed.
- Bad records (a missing or non-text field the task needs) are skipped and counted with their line
  numbers in the summary, or refused with ``--strict`` before anything is generated.
- ``next_steps(final_dir)``: the three commands to run on a freshly trained model (predict, chat,
  export), for the pipeline's closing log.

Errors (``RedoneError`` / ``DataError``, one line): an unknown task or input format, a malformed
``--field`` or one naming no field of the task, an unreadable input (file:line), a record without a
field the task needs under ``--strict`` (file:line and the field), an ``--out`` holding another run's
predictions or a corrupt line, ``--backend vllm`` without vllm or without CUDA, and the model loader's.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import hashlib
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redone.errors import DataError, RedoneError, report_errors

FORMAT = "redone-predict/1"
INPUT_FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv"}
DTYPES = ("float32", "bfloat16")
WINDOW_BATCHES = 8  # records in flight per window = this x batch_size (input order across windows)
EXAMPLE_NOTES = "docs/examples/hashtag_notes.jsonl"  # three shipped test notes (see docs/PREDICT.md)


@dataclass
class PredictOptions:
    """Every setting of one ``redone predict`` run (the CLI flags)."""

    model: str
    task: str
    input: str
    out: str
    task_file: str | None = None
    fields: Sequence[str] = ()  # "item_field=column"
    id_field: str | None = None
    limit: int | None = None
    strict: bool = False
    prompt_style: str | None = None  # None: the model's training style (redone when unknown or mixed)
    max_prompt_chars: int | None = None  # None: the model's training value; 0: no clipping
    max_new_tokens: int | None = None  # cap on the task's budget
    dtype: str = "float32"
    batch_size: int = 8
    backend: str = "hf"
    device: str = "auto"
    scoring_mode: str = "fixed"
    progress: bool = True
    stop_after: int | None = None  # test hook: stop as if killed once this many new records are written


@dataclass
class PredictSummary:
    out: Path
    records: int = 0  # records read (after --limit)
    written: int = 0  # new predictions this run
    reused: int = 0  # already in --out from an earlier run
    skipped: list[tuple[Any, str]] = field(default_factory=list)  # (line, why)
    parse_ok: int = 0  # among the new predictions
    seconds: float = 0.0
    new_tokens: int = 0
    stopped: bool = False  # stop_after reached

    def lines(self) -> list[str]:
        rate = f"{self.written / self.seconds:.3g} items/s, {self.new_tokens / self.seconds:.3g} new tokens/s" \
            if self.seconds > 0 and self.written else "nothing generated"
        out = [f"[redone] predict: {self.written} new prediction(s) written to {self.out} "
               f"({self.reused} already there from an earlier run); parse_ok {self.parse_ok}/{self.written}; {rate}"]
        if self.skipped:
            shown = "; ".join(f"line {line}: {why}" for line, why in self.skipped[:10])
            more = f"; ... {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
            out.append(f"[redone] predict: {len(self.skipped)} record(s) skipped: {shown}{more} "
                       "(--strict refuses them instead)")
        if self.stopped:
            out.append("[redone] predict: stopped early (--stop-after); rerun to continue")
        return out


@dataclass
class Row:
    """One record ready to predict: where it came from, its task and its item fields."""

    line: Any
    id: Any
    task: Any  # redone.sns.tasks.Task
    item: dict

    @property
    def key(self) -> str:
        return str(self.line)


# ---------------------------------------------------------------- reading records


def read_input(path: str | Path) -> list[dict]:
    """Records of a JSONL / JSON / CSV / TSV / parquet file, each with its 1-based ``_line``."""
    p = Path(path)
    fmt = INPUT_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise DataError(f"{p}: unknown input format {p.suffix or '(no suffix)'}; use one of "
                        f"{', '.join(INPUT_FORMATS)}")
    if fmt in ("csv", "tsv"):
        return read_delimited(p, "\t" if fmt == "tsv" else ",")
    return _read_records(p, fmt)


def _read_records(path: Path, fmt: str) -> list[dict]:
    """Adapter: the data package's reader (file:line errors, BOM and CRLF tolerated)."""
    from redone.config.schema import SourceSection
    from redone.data.sources import read_records

    return read_records(SourceSection(path=str(path), format=fmt))


def read_delimited(path: Path, delimiter: str) -> list[dict]:
    """CSV/TSV with a header row; ``_line`` is the line a record starts on (quoted fields may span lines)."""
    from redone.data.sources import read_lines  # UTF-8 checked per line, BOM dropped, CRLF -> LF

    lines = (text for _, text in read_lines(path))
    reader = csv.reader(lines, delimiter=delimiter)
    records, header, end = [], None, 0
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [name.strip() for name in row]
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{start}: {len(row)} columns, the header has {len(header)}")
            records.append({**dict(zip(header, row)), "_line": start})
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({err})") from None
    if not records:
        raise DataError(f"{path}: no records (a header row and at least one row are needed)")
    return records


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- tasks, fields, rows


def resolve_task(name: str, task_file: str | None = None):
    """The registered task (``"TransBench"`` allowed: direction per record); a YAML file registers first."""
    from redone.sns.tasks import TRANSBENCH, get_task, register_yaml_task

    if task_file:
        task = register_yaml_task(task_file, replace=True)
        if name and name != task.name:
            raise RedoneError(f"--task {name!r} but {task_file} declares task {task.name!r}")
        return task
    if name == TRANSBENCH:
        return TRANSBENCH
    return get_task(name)


def task_fields(task) -> tuple[str, ...]:
    """The item fields a task's prompts read (TransBench: the language pair and both texts)."""
    from redone.sns.tasks import TRANSBENCH

    if task == TRANSBENCH:
        return ("src_lang", "dst_lang", "zh", "en")
    return task.fields


def parse_field_map(pairs: Sequence[str], task) -> dict[str, str]:
    """``["content=text", ...]`` -> {item field: input column}; fields the task does not read are refused."""
    known = task_fields(task)
    mapping: dict[str, str] = {}
    for pair in pairs:
        name, sep, column = pair.partition("=")
        name, column = name.strip(), column.strip()
        if not sep or not name or not column:
            raise RedoneError(f"--field {pair!r}: expected item_field=input_column, e.g. content=text")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (it reads {', '.join(known)})"
            raise RedoneError(f"--field {pair!r}: the task does not read a field {name!r}{hint}")
        if name in mapping:
            raise RedoneError(f"--field: {name!r} is mapped twice")
        mapping[name] = column
    return mapping


def build_rows(records: list[dict], task, mapping: dict[str, str],
               id_field: str | None) -> tuple[list[Row], list[tuple[Any, str]]]:
    """Rows for the records that carry every field the task needs; (line, why) for the others."""
    rows, bad = [], []
    for record in records:
        line = record.get("_line", "?")
        row_or_problem = _row(record, task, mapping, id_field)
        if isinstance(row_or_problem, Row):
            rows.append(row_or_problem)
        else:
            bad.append((line, row_or_problem))
    return rows, bad


def _row(record: dict, task, mapping: dict[str, str], id_field: str | None) -> Row | str:
    from redone.sns.tasks import TRANSBENCH, get_task, transbench_task

    line = record.get("_line", "?")

    def value(name: str) -> str | None:
        column = mapping.get(name, name)
        return record.get(column)

    if task == TRANSBENCH:
        pair = {"src_lang": value("src_lang"), "dst_lang": value("dst_lang")}
        problem = _field_problem(pair, ("src_lang", "dst_lang"), mapping)
        if problem:
            return problem
        try:
            task = get_task(transbench_task(pair))
        except DataError as err:
            return str(err).split(": ", 1)[-1]
    item = {}
    for name in task.fields:
        item[name] = value(name)
    problem = _field_problem(item, task.fields, mapping)
    if problem:
        return problem
    if id_field is not None and id_field not in record:
        return f"missing id field {id_field!r}"
    row_id = record.get(id_field or "id")
    return Row(line, row_id, task, item)


def _field_problem(item: dict, names: Sequence[str], mapping: dict[str, str]) -> str | None:
    for name in names:
        column = mapping.get(name, name)
        shown = f"{column!r}" if column == name else f"{column!r} (item field {name!r})"
        if item.get(name) is None:
            return f"missing field {shown}"
        if not isinstance(item[name], str):
            return f"field {shown} is {type(item[name]).__name__}, not text"
    return None


# ---------------------------------------------------------------- parsing answers


def parse_output(task, text: str, item: dict, mode: str = "fixed") -> tuple[Any, bool]:
    """(parsed answer, parse_ok): the scorer's parse for SNS-Bench tasks (``parse_answer``, with the
    item's candidates as known labels); a translation or a task without a scorer: the stripped text."""
    if getattr(task, "scoring_file", None):
        from redone.sns.scoring import candidate_labels, parse_answer

        return parse_answer(task.scoring_file, text, mode, labels=candidate_labels(item))
    answer = (text or "").strip()
    return answer, bool(answer)


# ---------------------------------------------------------------- the predictions file


class PredictionsFile:
    """``--out``: a header line, then one JSON line per record; appended batch by batch, fsynced.

    ``open`` checks the header against this run's (refusing another run's file), cuts a torn last
    line (a kill mid-write leaves a line without its newline), and returns the keys already written.
    """

    def __init__(self, path: str | Path, header: dict):
        self.path = Path(path)
        self.header = header
        self.torn = False

    def open(self) -> set[str]:
        if self.path.is_dir():
            raise RedoneError(f"--out {self.path} is a directory")
        if not self.path.exists() or self.path.stat().st_size == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write([{"header": self.header}])
            return set()
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1  # everything up to the last complete line
            os.truncate(self.path, keep)
            data, self.torn = data[:keep], True
            if not data:
                self._write([{"header": self.header}])
                return set()
        return self._read(data)

    def _read(self, data: bytes) -> set[str]:
        done: set[str] = set()
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise RedoneError(f"{self.path}:{number}: not valid JSON (delete the file to start over)") from None
            if number == 1:
                self._check_header(record)
                continue
            if not isinstance(record, dict) or "line" not in record:
                raise RedoneError(f"{self.path}:{number}: not a prediction record (delete the file to start over)")
            key = str(record["line"])
            if key in done:
                raise RedoneError(f"{self.path}:{number}: input line {key} is written twice")
            done.add(key)
        return done

    def _check_header(self, first) -> None:
        found = first.get("header") if isinstance(first, dict) else None
        if not isinstance(found, dict) or found.get("format") != FORMAT:
            raise RedoneError(f"{self.path}: not a redone predict output (line 1 is no {FORMAT} header); "
                              "choose another --out")
        diffs = [f"{k}: {found.get(k)!r} there, {v!r} now" for k, v in self.header.items() if found.get(k) != v]
        if diffs:
            raise RedoneError(f"{self.path} holds predictions of a different run ({'; '.join(diffs)}); "
                              "delete it or choose another --out")

    def append(self, records: list[dict]) -> None:
        self._write(records)

    def _write(self, records: list[dict]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(text)  # one write per batch: a kill leaves whole lines plus at most one torn one
            handle.flush()
            os.fsync(handle.fileno())


# ---------------------------------------------------------------- the run


class _Stop(Exception):
    """Raised from the batch callback when ``stop_after`` is reached (the test hook's "kill")."""


def trained_prompt_settings(model_path: str) -> tuple[str | None, int | None]:
    """(prompt style, max_prompt_chars) the model was trained with, from its redone.json (None: unknown)."""
    lineage = Path(model_path) / "redone.json"
    if not lineage.is_file():
        return None, None
    try:
        data = (json.loads(lineage.read_text(encoding="utf-8")).get("config") or {}).get("data") or {}
    except (OSError, ValueError, AttributeError):
        return None, None
    return data.get("prompt_style"), data.get("max_prompt_chars")


def prompt_settings(model_path: str, prompt_style: str | None = None,
                    max_prompt_chars: int | None = None) -> tuple[str, int | None, list[str]]:
    """The prompt style and clipping to use (the flags, else the model's training values), and notes on
    where each came from."""
    from redone.sns.tasks import STYLES

    style, chars = trained_prompt_settings(model_path)
    notes = []
    if prompt_style is not None:
        chosen_style = prompt_style
    elif style in STYLES:
        chosen_style = style
        notes.append(f"prompt style {style} (the model's training style; --prompt-style to change)")
    else:
        chosen_style = "redone"
        if style:
            notes.append(f"prompt style redone (the model was trained with {style!r} prompts)")
    if max_prompt_chars is not None:
        chosen_chars = max_prompt_chars or None
    else:
        chosen_chars = chars if isinstance(chars, int) and chars > 0 else None
        if chosen_chars:
            notes.append(f"long note fields clipped to {chosen_chars} chars, as in training "
                         "(--max-prompt-chars 0 turns it off)")
    return chosen_style, chosen_chars, notes


def model_fingerprint(model_path: str) -> str | None:
    """The weights fingerprint: the lineage's when the dir has one, else computed; None for a hub id."""
    lineage = Path(model_path) / "redone.json"
    if lineage.is_file():
        try:
            found = json.loads(lineage.read_text(encoding="utf-8")).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            found = None
        if isinstance(found, str):
            return found
    if Path(model_path).is_dir() and any(Path(model_path).glob("*.safetensors")):
        from redone.model import fingerprint_model_dir

        return fingerprint_model_dir(model_path)
    return None


def check_options(options: PredictOptions) -> None:
    from redone.sns.scoring import MODES

    if options.dtype not in DTYPES:
        raise RedoneError(f"--dtype {options.dtype!r}: expected one of {', '.join(DTYPES)}")
    if options.backend not in ("hf", "vllm"):
        raise RedoneError(f"--backend {options.backend!r}: expected hf or vllm")
    if options.batch_size < 1:
        raise RedoneError(f"--batch-size must be >= 1, got {options.batch_size}")
    if options.limit is not None and options.limit < 1:
        raise RedoneError(f"--limit must be >= 1, got {options.limit}")
    if options.max_new_tokens is not None and options.max_new_tokens < 1:
        raise RedoneError(f"--max-new-tokens must be >= 1, got {options.max_new_tokens}")
    if options.max_prompt_chars is not None and options.max_prompt_chars < 0:
        raise RedoneError(f"--max-prompt-chars must be >= 0, got {options.max_prompt_chars}")
    if options.scoring_mode not in MODES:
        raise RedoneError(f"--scoring-mode {options.scoring_mode!r}: expected one of {', '.join(MODES)}")
    if options.prompt_style is not None:
        from redone.sns.tasks import STYLES

        if options.prompt_style not in STYLES:
            raise RedoneError(f"--prompt-style {options.prompt_style!r}: expected one of {', '.join(STYLES)}")
    if Path(options.out).resolve() == Path(options.input).resolve():
        raise RedoneError(f"--out {options.out} is the input file")
    if options.backend == "vllm":  # before anything is read or written
        check_vllm(options.device)


def check_vllm(device: str) -> None:
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None:
        raise RedoneError("predict: --backend vllm needs the vllm package (pip install vllm; CUDA only); "
                          "use --backend hf")
    if device == "cpu" or not torch.cuda.is_available():
        raise RedoneError("predict: --backend vllm runs on a CUDA GPU and none is available; use --backend hf")


def make_generator(options: PredictOptions, model_path: str, tokenizer):
    """HFGenerator (greedy, KV cache, left-padded batches) or VLLMGenerator."""
    import torch

    from redone.eval.generate import HFGenerator, VLLMGenerator
    from redone.model import load_model

    if options.backend == "vllm":
        return VLLMGenerator(model_path, tokenizer, dtype=options.dtype, progress=False)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[options.dtype]
    device = options.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(model_path, dtype=dtype).to(device).eval()
    return HFGenerator(model, tokenizer, batch_size=options.batch_size, progress=False)


def predict(options: PredictOptions, log: Callable[[str], None] = print) -> PredictSummary:
    """Run one ``redone predict``; returns the summary (also logged)."""
    from redone.model import load_tokenizer, resolve_model

    check_options(options)
    task = resolve_task(options.task, options.task_file)
    mapping = parse_field_map(options.fields, task)
    records = read_input(options.input)
    if options.limit:
        records = records[: options.limit]
    model_path = resolve_model(options.model)
    style, chars, notes = prompt_settings(model_path, options.prompt_style, options.max_prompt_chars)
    rows, bad = build_rows(records, task, mapping, options.id_field)
    requests, rows, unbuilt = build_requests(rows, style, chars, options.max_new_tokens)
    bad = sorted(bad + unbuilt, key=lambda b: _line_order(b[0]))
    if options.strict and bad:  # refused before anything is written
        line, why = bad[0]
        raise DataError(f"{options.input}:{line}: {why} (task {_task_name(task)} reads "
                        f"{', '.join(task_fields(task))}; map another column with --field FIELD=COLUMN)")
    header = {"format": FORMAT, "model": str(model_path), "fingerprint": model_fingerprint(model_path),
              "task": _task_name(task), "task_source": _task_source(task), "prompt_style": style,
              "max_prompt_chars": chars, "max_new_tokens": options.max_new_tokens, "fields": mapping,
              "input_sha256": file_sha256(options.input), "dtype": options.dtype, "backend": options.backend,
              "scoring_mode": options.scoring_mode}
    store = PredictionsFile(options.out, header)
    done = store.open()  # before the model loads: another run's --out fails fast
    if store.torn:
        log(f"[redone] predict: dropped a torn last line of {options.out} (an interrupted write)")
    for note in notes:
        log(f"[redone] predict: {note}")
    summary = PredictSummary(Path(options.out), records=len(records), skipped=bad)
    todo = [i for i, row in enumerate(rows) if row.key not in done]
    summary.reused = len(rows) - len(todo)
    if todo:
        tokenizer = load_tokenizer(model_path)
        generator = make_generator(options, model_path, tokenizer)
        _generate(generator, [rows[i] for i in todo], [requests[i] for i in todo], store, options, summary)
    for line in summary.lines():
        log(line)
    return summary


def build_requests(rows: list[Row], style: str, chars: int | None, cap: int | None):
    """(generation requests, their rows, (line, why) of rows whose prompt cannot be built).

    The prompt is the training/eval one: ``clip_item`` with the training limit, then ``prompt_messages``.
    """
    from redone.eval.generate import Request
    from redone.sns.tasks import clip_item, prompt_messages

    requests, kept, bad = [], [], []
    for row in rows:
        try:
            messages = prompt_messages(row.task, clip_item(row.task, row.item, chars), style)
        except DataError as err:  # e.g. a split that cannot read this item and no fallback
            bad.append((row.line, str(err).split(": ", 1)[-1]))
            continue
        budget = row.task.max_new_tokens
        requests.append(Request(row.key, messages, min(budget, cap or budget)))
        kept.append(row)
    return requests, kept, bad


def _line_order(line) -> tuple:
    return (0, line, "") if isinstance(line, int) else (1, 0, str(line))


def _generate(generator, rows: list[Row], requests, store: PredictionsFile, options: PredictOptions,
              summary: PredictSummary) -> None:
    from tqdm.auto import tqdm

    by_key = {row.key: row for row in rows}
    bar = tqdm(total=len(rows), unit="item", desc="predict", disable=not options.progress, dynamic_ncols=True)

    def write(batch) -> None:
        records = []
        for gen in sorted(batch, key=lambda g: _line_order(by_key[g.key].line)):  # input order within a batch
            row = by_key[gen.key]
            parsed, ok = parse_output(row.task, gen.text, row.item, options.scoring_mode)
            record = {"line": row.line, **({"id": row.id} if row.id is not None else {}), "task": row.task.name,
                      "parsed": parsed, "parse_ok": ok, "raw": gen.text, "new_tokens": gen.new_tokens,
                      "hit_budget": gen.hit_budget}
            records.append(record)
            summary.parse_ok += ok
            summary.new_tokens += gen.new_tokens
        store.append(records)
        summary.written += len(records)
        bar.update(len(records))
        if options.stop_after is not None and summary.written >= options.stop_after:
            raise _Stop

    window = options.batch_size * WINDOW_BATCHES if options.backend == "hf" else max(512, options.batch_size)
    start = time.perf_counter()
    try:
        for begin in range(0, len(requests), window):
            generator.generate(requests[begin:begin + window], on_batch=write)
    except _Stop:
        summary.stopped = True
    finally:
        summary.seconds = time.perf_counter() - start
        bar.close()


def _task_name(task) -> str:
    return task if isinstance(task, str) else task.name


def _task_source(task) -> str:
    """builtin, or the YAML file's digest (a changed task definition is another run)."""
    source = getattr(task, "source", "builtin")
    if source == "builtin":
        return source
    return f"yaml sha256:{file_sha256(source)[:16]}"


# ---------------------------------------------------------------- what to run after `make demo`


def next_steps(final_dir: str | Path) -> str:
    """The three commands to use a freshly trained model: predict on shipped notes, chat, GGUF export."""
    final = Path(final_dir)
    # Beside the stage dirs, not inside one: a stage that is retrained replaces its whole output_dir.
    root = final.parent.parent
    model = shlex.quote(str(final))
    preds = shlex.quote(str(root / "hashtag_predictions.jsonl"))
    gguf = shlex.quote(str(root / f"{final.parent.name}.gguf"))
    return "\n".join([
        f"Use the model you just trained ({final}):",
        f"  redone predict --model {model} --task Note-Hashtag-multiple --input {EXAMPLE_NOTES} --out {preds}",
        f"  redone chat --model {model}",
        f"  redone export gguf --model {model} --out {gguf}",
    ])


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model dir (e.g. runs/demo/dpo/final), hub id or built-in name")
    parser.add_argument("--task", default="", help="task name: an SNS-Bench file (Note-NER, ...), "
                        "TransBench-zh2en, TransBench-en2zh, TransBench (direction per record) or a --task-file's")
    parser.add_argument("--task-file", default=None, help="a YAML task definition to register (see redone.sns.tasks)")
    parser.add_argument("--input", required=True, help="records: .jsonl, .json, .csv, .tsv or .parquet")
    parser.add_argument("--out", required=True, help="predictions JSONL (resumed when it exists)")
    parser.add_argument("--field", dest="fields", action="append", default=[], metavar="FIELD=COLUMN",
                        help="read item field FIELD from input column COLUMN (repeatable)")
    parser.add_argument("--id-field", default=None, help="input column copied to each output line as 'id'")
    parser.add_argument("--limit", type=int, default=None, help="only the first N records")
    parser.add_argument("--strict", action="store_true", help="refuse a record missing a field (default: skip it)")
    parser.add_argument("--prompt-style", default=None, choices=("redone", "official"),
                        help="default: the style the model was trained with (redone when unknown)")
    parser.add_argument("--max-prompt-chars", type=int, default=None,
                        help="clip long note fields like training did (default: the model's data.max_prompt_chars; 0: off)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="cap on the task's token budget")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--backend", default="hf", choices=("hf", "vllm"))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (hf backend)")
    parser.add_argument("--scoring-mode", default="fixed", choices=("fixed", "official"),
                        help="which scorer's parse fills 'parsed' (default fixed)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # test hook


def add_predict_parser(subparsers) -> None:
    """``redone predict ...`` on the CLI's subparsers."""
    parser = subparsers.add_parser("predict", help="run a model on your own records for an SNS task, parsed answers out")
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    keys = PredictOptions.__dataclass_fields__
    options = PredictOptions(**{k: v for k, v in vars(args).items() if k in keys})
    if not options.task and not options.task_file:
        raise RedoneError("predict: give --task (e.g. Note-Hashtag-multiple) or --task-file")
    predict(options)
    return 0


def standalone(argv: list[str] | None, prog: str, add: Callable, func: Callable) -> int:
    """``python -m redone.<module>``: the same command and error handling as ``redone <command>``."""
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    parser = argparse.ArgumentParser(prog=prog)
    add(parser)
    return report_errors(func, parser.parse_args(argv))

if __name__ == "__main__":
    sys.exit(standalone(None, "redone predict", add_arguments, run))
