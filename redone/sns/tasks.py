"""SNS task registry: the one code path that turns benchmark items into chat messages.

SFT training uses it with the gold answer as the assistant turn (``build_example``); evaluation uses
the same prompt without it (``prompt_messages``), so train and eval prompts can never drift apart.

Features
- 14 built-in tasks: the 12 SNS-Bench files (8 families) and SNS-TransBench in both directions
  ("TransBench-zh2en", "TransBench-en2zh"); ``list_tasks()`` names them. They are declared as data in
  ``builtin_tasks.yaml`` (next to this module) and read by the same loader as a user's YAML task.
- Two prompt styles. "redone": a short system instruction that states the task and the exact output
  protocol, the item in the user turn with labelled fields, ending in an answer cue (what we train a
  135M model on; training cost is per token). "official": task definitions close to the official
  SNS-Bench ones with 2-3 short worked examples in the system turn (to compare off-the-shelf models).
- Gold answers in exactly the scored output protocol: SNS-Bench golds come from
  ``redone.sns.scoring.gold_text`` so the scorer and the SFT targets share one definition.
- Items whose ``content`` already embeds an instruction (Note-CHLW ends with "... Your output is:") are
  split into their fields for the "redone" style, so the instruction is not said twice.
- Per-task generation budgets (``max_new_tokens``) that fit the longest gold answer of the shipped data.
- User tasks: ``register_task(Task(...))`` with a function that builds the user turn, or
  ``register_yaml_task(path)`` from a YAML file in the format below.
- ``load_items`` reads an SNS-Bench or SNS-TransBench JSON file and validates every record.

YAML task format (one mapping per file; ``builtin_tasks.yaml`` is a list of them)
- Required: ``name``, ``family``, ``max_new_tokens`` (a positive integer), ``system``, ``user``.
- Optional: ``answer_field`` (default "answer"), ``answer_type`` ("str" or "list": a list of strings),
  ``scoring_file`` (an SNS-Bench file whose scorer renders the gold), ``official_system`` and
  ``official_user`` (the "official" style; both or neither), ``redone_answer`` (a named answer transform
  that shortens the redone-style gold), ``description``.
- ``system``/``official_system``: a string, or ``{definition, examples: [{input, answer}, ...], closing}``
  rendered as the definition, "Examples:", each input followed by "Answer: <answer>", then the closing.
- ``user``/``official_user``: a ``str.format`` template over item fields (plain ``{field}`` names only;
  never the answer field), or ``{template, transforms, split, fallback}``:
  ``transforms: {field: name}`` applies a named transform to a value before it is inserted;
  ``split: {field: name}`` splits an item field into named parts the template uses; when an item does not
  have the layout the splitter knows, ``fallback`` (a template) is used instead, or the item is refused.
  The template's own outer whitespace is dropped (YAML block scalars end in a newline); item values are
  inserted unchanged unless a transform says otherwise.
- Named functions (no code in YAML): transforms ``strip`` (outer whitespace) and ``strip_fence`` (outer
  whitespace and ``` fences); split ``chlw`` (a Note-CHLW item -> ``comment``, ``options``); answer
  transform ``result_block`` (the last ``<Result>...</Result>`` block of an MRC-complex gold).

Errors raised
- ``RedoneError``: unknown task or style (with a did-you-mean), duplicate registration, a task without
  an "official" prompt, a malformed YAML task file (``file:line`` of the offending key).
- ``DataError``: unreadable file, a record that is not an object, a missing or mistyped field, an
  unknown TransBench direction, an item a split cannot read and whose template has no fallback.
  Messages name ``file:index`` (index = 0-based position of the record in the file) or the task, in one
  line.
"""

from __future__ import annotations

import difflib
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redone.errors import DataError, RedoneError
from redone.textio import json_list_items

STYLES = ("redone", "official")
TRANSBENCH = "TransBench"  # pseudo task name of a TransBench file: the direction is per item

Message = dict[str, str]
UserBuilder = Callable[[dict], str]


@dataclass(frozen=True)
class Task:
    """One task: how an item becomes a prompt, and what the gold answer is.

    ``user`` builds the redone-style user turn from an item (a ``PromptTemplate`` for a task declared in
    YAML); ``official_user`` the official-style one (None: the task has only the redone style). ``fields`` are the item fields the prompt reads; the
    gold answer is ``item[answer_field]`` unless ``scoring_file`` names an SNS-Bench file, in which case
    ``redone.sns.scoring.gold_text`` renders it in the scored protocol.
    """

    name: str
    family: str
    max_new_tokens: int  # generation budget: the built-ins' fit their longest gold answer
    system: str
    user: UserBuilder
    fields: tuple[str, ...] = ()
    answer_field: str = "answer"
    answer_type: type = str  # str, or list (a list of strings, as in Note-MRC-simple)
    scoring_file: str | None = None
    official_system: str | None = None
    official_user: UserBuilder | None = None
    # The redone-style target made from the scored gold (None: the gold itself). Only for a shorter
    # answer in the same scored protocol, e.g. MRC-complex's <Result> part without the unscored tags.
    redone_answer: Callable[[str], str] | None = None
    description: str = ""
    source: str = "builtin"  # or the YAML file a task came from


_REGISTRY: dict[str, Task] = {}


# ---------------------------------------------------------------- registry


def register_task(task: Task, *, replace: bool = False) -> None:
    """Add a task; a name already taken is refused unless ``replace`` (so typos cannot shadow)."""
    if not isinstance(task, Task):
        raise RedoneError(f"register_task expects a Task, got {type(task).__name__}")
    if not task.name or task.name == TRANSBENCH:
        raise RedoneError(f"task name {task.name!r} is reserved or empty")
    if task.max_new_tokens <= 0:
        raise RedoneError(f"task {task.name}: max_new_tokens must be positive, got {task.max_new_tokens}")
    if task.answer_type not in (str, list):
        raise RedoneError(f"task {task.name}: answer_type must be str or list")
    if task.name in _REGISTRY and not replace:
        raise RedoneError(f"task {task.name!r} is already registered (pass replace=True to override it)")
    _REGISTRY[task.name] = task


def unregister_task(name: str) -> None:
    """Remove a task (tests and notebooks that register throwaway tasks)."""
    get_task(name)
    del _REGISTRY[name]


def get_task(name: str) -> Task:
    """The registered task called ``name``; unknown names raise with the closest matches."""
    if isinstance(name, Task):
        return name
    if name == TRANSBENCH:
        raise RedoneError(
            "'TransBench' names both translation directions; pick one per item with transbench_task(item)"
        )
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise RedoneError(f"unknown task {name!r}{_did_you_mean(str(name), list(_REGISTRY))}") from None


def list_tasks() -> list[str]:
    return sorted(_REGISTRY)


def _did_you_mean(word: str, choices: list[str]) -> str:
    # Compare case-folded names: a case slip ("note-ner") should rank its own name first.
    folded = {c.lower(): c for c in choices}
    close = [folded[c] for c in difflib.get_close_matches(word.lower(), list(folded), n=3, cutoff=0.5)]
    if close:
        return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    return f" (known: {', '.join(sorted(choices))})"


# ---------------------------------------------------------------- prompts and answers


def prompt_messages(task: str | Task, item: dict, style: str = "redone", *, where: str = "") -> list[Message]:
    """System + user messages for ``item``. Never reads the answer field (eval uses it unchanged)."""
    t = _resolve(task, item, where)
    _check_style(style)
    _require_fields(t, item, t.fields, where)
    if style == "official":
        if t.official_user is None or t.official_system is None:
            raise RedoneError(f"task {t.name} has no 'official' prompt style; use style='redone'")
        system, build = t.official_system, t.official_user
    else:
        system, build = t.system, t.user
    try:
        user = build(item)
    except DataError as e:  # a template's split could not read the item: say which item
        raise DataError(f"{where or 'task ' + t.name}: {e}") from None
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# Long free-text fields that may be clipped to bound prompt length (never candidates, questions or
# translation sources, and never CHLW, whose content embeds the option list the answer is drawn from).
CLIPPABLE_FIELDS = ("content", "sentence2")
CLIP_MARK = " [...] "


def clip_item(task: str | Task, item: dict, max_chars: int | None) -> dict:
    """A copy of ``item`` whose long note fields keep their first 2/3 and last 1/3 of ``max_chars``.

    The head holds the title and opening, the tail the hashtags and closing: both carry the signal the
    SNS tasks need. Training (``data.max_prompt_chars``) and evaluation (``max_prompt_chars``) call this
    with the same limit, so a model is evaluated on prompts shaped like the ones it was trained on.
    """
    t = _resolve(task, item, "")
    if not max_chars or t.family in ("CHLW", "Translation") or t.source != "builtin":
        return item
    clipped = dict(item)
    for name in CLIPPABLE_FIELDS:
        value = item.get(name)
        if isinstance(value, str) and len(value) > max_chars:
            head = (max_chars * 2) // 3
            clipped[name] = value[:head] + CLIP_MARK + value[len(value) - (max_chars - head):]
    return clipped


def answer_text(task: str | Task, item: dict, style: str = "redone", *, where: str = "") -> str:
    """The gold answer exactly as the scorer wants a prediction to look (outer whitespace removed).

    The "redone" style may shorten it (``Task.redone_answer``) to the part the scorer reads.
    """
    t = _resolve(task, item, where)
    _check_style(style)
    gold = _scored_gold(t, item, where)
    return t.redone_answer(gold) if style == "redone" and t.redone_answer else gold


def _scored_gold(t: Task, item: dict, where: str) -> str:
    _require_fields(t, item, (t.answer_field,), where)
    _check_answer_type(t, item, where)
    if t.scoring_file is not None:
        # Imported here: scoring pulls in metric libraries that prompt building never needs.
        from redone.sns.scoring import gold_text

        return gold_text(t.scoring_file, item)
    # Surrounding whitespace is noise (some TransBench targets end in blank lines): never a target.
    return item[t.answer_field].strip()


def build_example(task: str | Task, item: dict, style: str = "redone", *, where: str = "") -> dict:
    """One SFT example: the prompt plus the gold answer as the assistant turn."""
    t = _resolve(task, item, where)
    messages = prompt_messages(t, item, style, where=where)
    messages.append({"role": "assistant", "content": answer_text(t, item, style, where=where)})
    return {"messages": messages, "task": t.name}


def _resolve(task: str | Task, item: dict, where: str) -> Task:
    if isinstance(task, Task):
        return task
    if task == TRANSBENCH:
        return get_task(transbench_task(item, where=where))
    return get_task(task)


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise RedoneError(f"unknown prompt style {style!r}{_did_you_mean(str(style), list(STYLES))}")


def _require_fields(t: Task, item: dict, names: tuple[str, ...], where: str) -> None:
    if not isinstance(item, dict):
        raise DataError(f"{where or 'task ' + t.name}: item is a {type(item).__name__}, not an object")
    for name in names:
        if name not in item:
            raise DataError(f"{where or 'task ' + t.name}: missing field {name!r}")
        if name != t.answer_field and not isinstance(item[name], str):
            raise DataError(
                f"{where or 'task ' + t.name}: field {name!r} must be a string, got {type(item[name]).__name__}"
            )


def _check_answer_type(t: Task, item: dict, where: str) -> None:
    value = item[t.answer_field]
    ok = (
        isinstance(value, str)
        if t.answer_type is str
        else (isinstance(value, list) and all(isinstance(v, str) for v in value))
    )
    if not ok:
        expected = "a string" if t.answer_type is str else "a list of strings"
        raise DataError(
            f"{where or 'task ' + t.name}: field {t.answer_field!r} must be {expected}, got {type(value).__name__}"
        )


# ---------------------------------------------------------------- files and items


def task_for_file(path: str | Path) -> str:
    """Task name for a data file: the SNS-Bench file stem, or ``"TransBench"`` for a TransBench file.

    A TransBench file mixes both directions; pass ``"TransBench"`` as the task to the item-level
    functions (they pick the direction with ``transbench_task``) or call that helper yourself.
    """
    p = Path(path)
    if _is_transbench_path(p):
        return TRANSBENCH
    if p.stem not in _REGISTRY:
        raise RedoneError(f"{p}: no task named after this file{_did_you_mean(p.stem, list(_REGISTRY))}")
    return p.stem


def _is_transbench_path(p: Path) -> bool:
    names = (p.stem.lower(), p.parent.name.lower())
    return any("transbench" in n or "redtrans" in n for n in names)


def transbench_task(item: dict, *, where: str = "") -> str:
    """``"TransBench-zh2en"`` or ``"TransBench-en2zh"`` from the item's src_lang/dst_lang."""
    where = where or "TransBench item"
    if not isinstance(item, dict):
        raise DataError(f"{where}: item is a {type(item).__name__}, not an object")
    for key in ("src_lang", "dst_lang"):
        if key not in item:
            raise DataError(f"{where}: missing field {key!r}")
    name = f"TransBench-{item['src_lang']}2{item['dst_lang']}"
    if name not in _REGISTRY:
        raise DataError(f"{where}: unsupported direction {item['src_lang']!r} -> {item['dst_lang']!r}")
    return name


def load_items(path: str | Path, task: str | Task | None = None) -> list[dict]:
    """Read a JSON list of items and check every record has what its task needs (prompt + answer)."""
    return [item for _, item in item_lines(path, task)]


def item_lines(path: str | Path, task: str | Task | None = None) -> list[tuple[int, dict]]:
    """``(1-based line where the item starts, item)`` for every item of a JSON task file, each checked
    like ``load_items``; every error names ``file:line``. A BOM and CRLF line endings are accepted."""
    p = Path(path)
    task = task if task is not None else task_for_file(p)
    if _starts_with_object(p):  # json_list_items reads a lone object as a list of one; a task file is a list
        raise DataError(f"{p}: expected a JSON list of objects, got a single object")
    records = json_list_items(p)
    for line, item in records:
        where = f"{p}:{line}"
        if not isinstance(item, dict):
            raise DataError(f"{where}: record is a {type(item).__name__}, not an object")
        t = _resolve(task, item, where)
        _require_fields(t, item, t.fields + (t.answer_field,), where)
        _check_answer_type(t, item, where)
    return records


def _starts_with_object(p: Path) -> bool:
    if not p.is_file():
        return False
    with p.open("rb") as handle:
        head = handle.read(256).removeprefix(b"\xef\xbb\xbf").lstrip()
    return head[:1] == b"{"


# ---------------------------------------------------------------- YAML tasks: the one loader

BUILTIN_TASKS_FILE = Path(__file__).with_name("builtin_tasks.yaml")

_REQUIRED_KEYS = ("name", "family", "max_new_tokens", "system", "user")
_OPTIONAL_KEYS = ("answer_field", "answer_type", "scoring_file", "official_system", "official_user",
                  "redone_answer", "description")
_ANSWER_TYPES = {"str": str, "list": list}


def register_yaml_task(path: str | Path, *, replace: bool = False) -> Task:
    """Register the task a YAML file declares (format: module docstring) and return it."""
    p = Path(path)
    spec = _read_yaml(p)
    if not isinstance(spec, dict):
        raise RedoneError(f"{p}: a YAML task must be a mapping")
    task = _task_from_spec(spec, str(p), source=str(p))
    register_task(task, replace=replace)
    return task


def _load_builtin_tasks() -> list[Task]:
    specs = _read_yaml(BUILTIN_TASKS_FILE)
    if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
        raise RedoneError(f"{BUILTIN_TASKS_FILE}: expected a list of task mappings")
    return [_task_from_spec(s, str(BUILTIN_TASKS_FILE), source="builtin") for s in specs]


class _Spec(dict):
    """A YAML mapping that remembers the 1-based line of itself and of each key (for error messages)."""

    line = 0
    key_lines: dict

    def at(self, origin: str, key: str | None = None) -> str:
        return f"{origin}:{self.key_lines.get(key, self.line)}"


def _read_yaml(p: Path) -> Any:
    import yaml  # a declared dependency

    class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        pass

    def mapping(loader, node):
        spec = _Spec(loader.construct_mapping(node, deep=True))
        spec.line = node.start_mark.line + 1
        spec.key_lines = {}
        for key, _ in node.value:
            if key.value in spec.key_lines:  # YAML keeps the last silently; a second budget is a slip
                raise RedoneError(f"{p}:{key.start_mark.line + 1}: duplicate key {key.value!r}")
            spec.key_lines[key.value] = key.start_mark.line + 1
        return spec

    Loader.add_constructor("tag:yaml.org,2002:map", mapping)
    try:
        return yaml.load(p.read_text(encoding="utf-8"), Loader=Loader)  # a SafeLoader subclass
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise RedoneError(f"{p}: cannot read YAML task ({str(e).splitlines()[0]})") from None


def _task_from_spec(spec: _Spec, origin: str, source: str) -> Task:
    _check_keys(spec, _REQUIRED_KEYS, _OPTIONAL_KEYS, origin)
    name = _text(spec, "name", origin)
    budget = spec["max_new_tokens"]
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise RedoneError(f"{spec.at(origin, 'max_new_tokens')}: max_new_tokens must be a positive integer")
    answer_field = _text(spec, "answer_field", origin, default="answer")
    answer_type = _choice(spec, "answer_type", _ANSWER_TYPES, origin, default="str")
    redone_answer = _choice(spec, "redone_answer", _ANSWER_TRANSFORMS, origin, default=None)
    if ("official_system" in spec) != ("official_user" in spec):
        raise RedoneError(f"{spec.at(origin)}: task {name}: give official_system and official_user together")
    user = _prompt_template(spec, "user", origin)
    official_user = _prompt_template(spec, "official_user", origin) if "official_user" in spec else None
    fields = tuple(dict.fromkeys(user.fields + (official_user.fields if official_user else ())))
    if answer_field in fields:
        # The prompt is also the eval input: a template that shows the answer would leak it.
        key = "user" if answer_field in user.fields else "official_user"
        raise RedoneError(f"{spec.at(origin, key)}: the prompt template must not use the answer field "
                          f"{{{answer_field}}}")
    return Task(
        name=name,
        family=_text(spec, "family", origin),
        max_new_tokens=budget,
        system=_system_text(spec, "system", origin),
        user=user,
        fields=fields,
        answer_field=answer_field,
        answer_type=answer_type,
        scoring_file=_text(spec, "scoring_file", origin, default=None),
        official_system=_system_text(spec, "official_system", origin) if official_user else None,
        official_user=official_user,
        redone_answer=redone_answer,
        description=_text(spec, "description", origin, default=""),
        source=source,
    )


def _check_keys(spec: _Spec, required: tuple[str, ...], optional: tuple[str, ...], origin: str) -> None:
    known = required + optional
    for key in spec:
        if key not in known:
            raise RedoneError(f"{spec.at(origin, key)}: unknown key {key!r}{_did_you_mean(str(key), list(known))}")
    for key in required:
        if key not in spec:
            raise RedoneError(f"{spec.at(origin)}: missing key {key!r}")


def _text(spec: _Spec, key: str, origin: str, default: Any = ...) -> Any:
    if key not in spec and default is not ...:
        return default
    if not isinstance(spec[key], str):
        raise RedoneError(f"{spec.at(origin, key)}: {key} must be a string")
    return spec[key]


def _choice(spec: _Spec, key: str, choices: dict, origin: str, default: str | None) -> Any:
    name = spec.get(key, default)
    if name is None:
        return None
    if not isinstance(name, str) or name not in choices:
        raise RedoneError(f"{spec.at(origin, key)}: unknown {key} {name!r}{_did_you_mean(str(name), list(choices))}")
    return choices[name]


def _system_text(spec: _Spec, key: str, origin: str) -> str:
    """A system turn: plain text, or a definition followed by worked examples and a closing line."""
    value = spec[key]
    if isinstance(value, str):
        return value.strip()
    if not isinstance(value, dict):
        raise RedoneError(f"{spec.at(origin, key)}: {key} must be a string or a mapping with a definition")
    _check_keys(value, ("definition", "examples"), ("closing",), origin)
    examples = value["examples"]
    if not isinstance(examples, list) or not examples:
        raise RedoneError(f"{value.at(origin, 'examples')}: examples must be a non-empty list")
    shots = []
    for example in examples:
        if not isinstance(example, dict):
            raise RedoneError(f"{value.at(origin, 'examples')}: each example must be a mapping (input, answer)")
        _check_keys(example, ("input", "answer"), (), origin)
        shots.append(f"{_text(example, 'input', origin)}\nAnswer: {_text(example, 'answer', origin)}")
    text = f"{_text(value, 'definition', origin).strip()}\n\nExamples:\n\n" + "\n\n".join(shots)
    closing = _text(value, "closing", origin, default="").strip()
    return f"{text}\n\n{closing}" if closing else text


def _prompt_template(spec: _Spec, key: str, origin: str) -> PromptTemplate:
    value = spec[key]
    if isinstance(value, str):
        value = _Spec(template=value)
        value.line, value.key_lines = spec.key_lines.get(key, spec.line), {}
    if not isinstance(value, dict):
        raise RedoneError(f"{spec.at(origin, key)}: {key} must be a template string or a mapping with one")
    _check_keys(value, ("template",), ("transforms", "split", "fallback"), origin)
    template = _text(value, "template", origin).strip()
    fallback = _text(value, "fallback", origin, default=None)
    fallback = fallback.strip() if fallback is not None else None
    split = _named(value, "split", _SPLITS, origin)
    transforms = _named(value, "transforms", _FIELD_TRANSFORMS, origin)
    produced = {part for name in dict(split).values() for part in _SPLITS[name][0]}
    used = set(_placeholders(template, value.at(origin, "template")))
    if fallback is not None:
        used |= set(_placeholders(fallback, value.at(origin, "fallback")))
    for field, _ in transforms:
        if field not in used:
            raise RedoneError(f"{value.at(origin, 'transforms')}: transform of {{{field}}}, which {key} does not use")
    if fallback is not None and not split:
        raise RedoneError(f"{value.at(origin, 'fallback')}: a fallback needs a split")
    if fallback is not None and produced & set(_placeholders(fallback, "")):
        raise RedoneError(f"{value.at(origin, 'fallback')}: the fallback must not use the split's parts")
    return PromptTemplate(template, transforms, split, fallback)


def _named(value: _Spec, key: str, registry: dict, origin: str) -> tuple[tuple[str, str], ...]:
    """A ``{field: function name}`` mapping checked against one registry of named functions."""
    mapping = value.get(key, {})
    if not isinstance(mapping, dict):
        raise RedoneError(f"{value.at(origin, key)}: {key} must be a mapping {{field: name}}")
    for field, name in mapping.items():
        if not isinstance(field, str) or not field.isidentifier():
            raise RedoneError(f"{value.at(origin, key)}: {key} field {field!r} must be a plain field name")
        if not isinstance(name, str) or name not in registry:
            raise RedoneError(f"{mapping.at(origin, field)}: unknown {key[:-1] if key.endswith('s') else key} "
                              f"{name!r}{_did_you_mean(str(name), list(registry))}")
    return tuple(mapping.items())


def _placeholders(template: str, where: str) -> tuple[str, ...]:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise RedoneError(f"{where}: not a valid str.format template ({e})") from None
    for n in names:
        # Only plain {field} placeholders: attribute/index access would read beyond the item's strings.
        if not n.isidentifier():
            raise RedoneError(f"{where}: placeholder {{{n}}} must be a plain field name")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class PromptTemplate:
    """A user turn built from a ``str.format`` template over item fields (the YAML ``user`` key).

    ``transforms`` and ``split`` are ``(field, function name)`` pairs resolved in the registries below;
    ``fallback`` is the template used when a split does not recognise an item.
    """

    template: str
    transforms: tuple[tuple[str, str], ...] = ()
    split: tuple[tuple[str, str], ...] = ()
    fallback: str | None = None

    @property
    def fields(self) -> tuple[str, ...]:
        """The item fields the turn reads (a split's parts come from its source field)."""
        produced = {part for name in dict(self.split).values() for part in _SPLITS[name][0]}
        names = [n for n in _placeholders(self.template, "") if n not in produced]
        names += [field for field, _ in self.split]
        names += list(_placeholders(self.fallback, "")) if self.fallback is not None else []
        return tuple(dict.fromkeys(names))

    def __call__(self, item: dict) -> str:
        values, template = dict(item), self.template
        for field, name in self.split:
            parts = _SPLITS[name][1](item[field])
            if parts is None:
                if self.fallback is None:
                    raise DataError(f"field {field!r} does not have the layout the {name!r} split reads")
                values, template = dict(item), self.fallback
                break
            values.update(parts)
        transforms = dict(self.transforms)
        return template.format_map({
            n: _FIELD_TRANSFORMS[transforms[n]](values[n]) if n in transforms else values[n]
            for n in _placeholders(template, "")
        })


# ---------------------------------------------------------------- named functions the YAML can use


def _strip_fence(text: str) -> str:
    """QueryCorr-topic wraps each item in ``` fences: tokens that tell the model nothing."""
    text = text.strip()
    if text.startswith("```"):
        text = text[3:]
    if text.endswith("```"):
        text = text[:-3]
    return text.strip()


# Note-CHLW items carry their own instruction after the comment and the options list; the "redone"
# style states the task once in the system turn, so the item is split back into its two fields.
_CHLW_PARTS = re.compile(
    # The released items were machine-translated, so the labels vary: "Comment:", "The comment is:",
    # "Comments are:"; "Possible highlight word options list:", "Possible highlighted words list:",
    # "Potential highlight term options are:"; fields split by blank lines or by single spaces.
    r"^\s*(?:the\s+)?comments?(?:\s+(?:is|are|as))?\s*:\s*(?P<comment>.*?)\s*"
    r"(?:possible|potential)\s+highlight(?:ed)?\s+(?:word|term)s?(?:\s+options?)?(?:\s+list|\s+are)?\s*:\s*"
    r"(?P<options>\[.*\])\s*please\s+(?:provide|give)\b.*$",
    re.S | re.I,
)


def chlw_parts(content: str) -> tuple[str, str] | None:
    """(comment, options list) of a Note-CHLW item, or None if it does not have the known layout."""
    m = _CHLW_PARTS.match(content)
    return (m["comment"], m["options"]) if m else None


def _chlw_split(content: str) -> dict[str, str] | None:
    parts = chlw_parts(content)
    return {"comment": parts[0], "options": parts[1]} if parts else None


def _result_part(gold: str) -> str:
    """MRC-complex's scored part: the last <Result>...</Result> block (the scorer ignores the other tags)."""
    blocks = re.findall(r"<Result>.*?</Result>", gold, flags=re.DOTALL)
    return blocks[-1] if blocks else gold


_FIELD_TRANSFORMS: dict[str, Callable[[str], str]] = {"strip": str.strip, "strip_fence": _strip_fence}
# name -> (the parts it produces, function: field value -> {part: text}, or None for an unknown layout)
_SPLITS: dict[str, tuple[tuple[str, ...], Callable[[str], dict[str, str] | None]]] = {
    "chlw": (("comment", "options"), _chlw_split),
}
_ANSWER_TRANSFORMS: dict[str, Callable[[str], str]] = {"result_block": _result_part}


# ---------------------------------------------------------------- built-in tasks

_BUILTIN = _load_builtin_tasks()
for _task in _BUILTIN:
    register_task(_task)
SNS_BENCH_TASKS = tuple(t.name for t in _BUILTIN if t.scoring_file)  # the 12 SNS-Bench files
TRANSBENCH_TASKS = tuple(t.name for t in _BUILTIN if t.family == "Translation")
