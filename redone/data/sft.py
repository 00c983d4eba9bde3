"""Sources -> chat examples, grouped into mixture components (one per task, or one per general source).

- ``sns_bench`` (a folder of Note-*.json, optionally filtered by ``tasks``): one component per task file,
  examples from the shared prompt builder (``redone.sns.tasks``) with the gold answer.
- ``transbench`` (a JSON file): one component per direction (TransBench-zh2en, TransBench-en2zh).
- general chat (``chat``/``jsonl``/``json``: ``messages`` lists, instruction/input/output records,
  self-instruct seed tasks) and ``hh_rlhf`` dialogues: one component named after the source.

HH-RLHF dialogues whose reply is empty are skipped and counted (nothing to learn); every other malformed
record raises ``DataError`` naming file:index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from redone.config.schema import SourceSection
from redone.data import records
from redone.data.sources import detect_format, read_records, source_name
from redone.errors import DataError
from redone.sns import tasks as sns_tasks


@dataclass
class Component:
    name: str  # the tag used in metrics: a task name or the source name
    source: int  # index of the config source it came from
    examples: list[dict] = field(default_factory=list)  # {"messages": [...], "item": original item}
    skipped: int = 0


def sns_bench_files(folder: Path, tasks: list[str]) -> list[Path]:
    files = sorted(folder.glob("Note-*.json"))
    if tasks:
        unknown = set(tasks) - {f.stem for f in files}
        if unknown:
            raise DataError(f"{folder}: no task file(s) {sorted(unknown)} (known: {[f.stem for f in files]})")
        files = [f for f in files if f.stem in set(tasks)]
    if not files:
        raise DataError(f"{folder}: no SNS-Bench Note-*.json files")
    return files


def task_components(source: SourceSection, index: int, style: str,
                    max_prompt_chars: int | None = None) -> list[Component]:
    fmt = detect_format(source)
    path = Path(source.path)
    if fmt == "sns_bench":
        components = []
        for file in sns_bench_files(path, list(source.tasks)):
            items = sns_tasks.load_items(file)[: source.limit or None]
            examples = [{"messages": sns_tasks.build_example(
                file.stem, sns_tasks.clip_item(file.stem, item, max_prompt_chars), style,
                where=f"{file}:{i}")["messages"], "item": item} for i, item in enumerate(items)]
            components.append(Component(file.stem, index, examples))
        return components
    if fmt == "transbench":
        items = sns_tasks.load_items(path, sns_tasks.TRANSBENCH)[: source.limit or None]
        by_task: dict[str, Component] = {}
        for i, item in enumerate(items):
            task = sns_tasks.transbench_task(item, where=f"{path}:{i}")
            example = sns_tasks.build_example(task, item, style, where=f"{path}:{i}")
            by_task.setdefault(task, Component(task, index)).examples.append(
                {"messages": example["messages"], "item": item})
        return [by_task[name] for name in sorted(by_task)]
    return [chat_component(source, index, fmt)]


def chat_component(source: SourceSection, index: int, fmt: str) -> Component:
    component = Component(source_name(source), index)
    for i, record in enumerate(read_records(source)):
        if fmt == "hh_rlhf":
            messages = records.parse_hh_dialogue(record.get("chosen", ""), f"{source.path}:{i}")
            if any(not m["content"].strip() for m in messages):
                component.skipped += 1
                continue
        else:
            messages = records.messages_from_record(
                {k: v for k, v in record.items() if k != "_line"}, source.path, i)
        component.examples.append({"messages": messages, "item": record})
    if not component.examples:
        raise DataError(f"{source.path}: source '{component.name}' has no usable examples")
    return component


def all_components(sources: list[SourceSection], style: str, max_prompt_chars: int | None = None) -> list[Component]:
    components = []
    for index, source in enumerate(sources):
        components.extend(task_components(source, index, style, max_prompt_chars))
    names = [c.name for c in components]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"data.sources: component name(s) {duplicates} appear twice; give the sources distinct names")
    return components
