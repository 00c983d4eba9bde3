"""SNS task registry: the one code path that turns benchmark items into chat messages.

SFT training uses it with the gold answer as the assistant turn (``build_example``); evaluation uses
the same prompt without it (``prompt_messages``), so train and eval prompts can never drift apart.

Features
- 14 built-in tasks: the 12 SNS-Bench files (8 families) and SNS-TransBench in both directions
  ("TransBench-zh2en", "TransBench-en2zh"); ``list_tasks()`` names them.
- Two prompt styles. "redone": a short system instruction that states the task and the exact output
  protocol, the item in the user turn with labelled fields, ending in an answer cue (what we train a
  135M model on; training cost is per token). "official": task definitions close to the official
  SNS-Bench ones with 2-3 short worked examples in the system turn (to compare off-the-shelf models).
- Gold answers in exactly the scored output protocol: SNS-Bench golds come from
  ``redone.sns.scoring.gold_text`` so the scorer and the SFT targets share one definition.
- Items whose ``content`` already embeds an instruction (Note-CHLW ends with "... Your output is:") are
  split into their fields for the "redone" style, so the instruction is not said twice.
- User tasks: ``register_task(Task(...))`` with a function that builds the user turn, or
  ``register_yaml_task(path)`` from a YAML template (name, family, system, user, answer_field,
  max_new_tokens; ``user`` is a ``str.format`` template over item fields).
- ``load_items`` reads an SNS-Bench or SNS-TransBench JSON file and validates every record.

Errors raised
- ``RedoneError``: unknown task or style (with a did-you-mean), duplicate registration, a task without
  an "official" prompt, a malformed YAML task file.
- ``DataError``: unreadable file, a record that is not an object, a missing or mistyped field, an
  unknown TransBench direction. Messages name ``file:index`` (index = 0-based
  position of the record in the file) or the task, in one line.
"""

from __future__ import annotations

import difflib
import json
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redone.errors import DataError, RedoneError

STYLES = ("redone", "official")
TRANSBENCH = "TransBench"  # pseudo task name of a TransBench file: the direction is per item
_LANG_NAMES = {"zh": "Chinese", "en": "English"}

Message = dict[str, str]
UserBuilder = Callable[[dict], str]


@dataclass(frozen=True)
class Task:
    """One task: how an item becomes a prompt, and what the gold answer is.

    ``user`` builds the redone-style user turn from an item; ``official_user`` the official-style one
    (None: the task has only the redone style). ``fields`` are the item fields the prompt reads; the
    gold answer is ``item[answer_field]`` unless ``scoring_file`` names an SNS-Bench file, in which case
    ``redone.sns.scoring.gold_text`` renders it in the scored protocol.
    """

    name: str
    family: str
    max_new_tokens: int
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
        system, user = t.official_system, t.official_user(item)
    else:
        system, user = t.system, t.user(item)
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
    p = Path(path)
    task = task if task is not None else task_for_file(p)
    try:
        records = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{p}: cannot read JSON ({e})") from None
    if not isinstance(records, list):
        raise DataError(f"{p}: expected a JSON list of objects, got {type(records).__name__}")
    for i, item in enumerate(records):
        where = f"{p}:{i}"
        if not isinstance(item, dict):
            raise DataError(f"{where}: record is a {type(item).__name__}, not an object")
        t = _resolve(task, item, where)
        _require_fields(t, item, t.fields + (t.answer_field,), where)
        _check_answer_type(t, item, where)
    return records


# ---------------------------------------------------------------- YAML tasks

_YAML_REQUIRED = ("name", "family", "system", "user", "max_new_tokens")
_YAML_OPTIONAL = ("answer_field", "official_system", "official_user", "description")


def register_yaml_task(path: str | Path, *, replace: bool = False) -> Task:
    """Register a task from YAML: name, family, system, user (str.format template), answer_field,
    max_new_tokens; optionally official_system/official_user (template) and description."""
    import yaml  # a declared dependency, only needed here

    p = Path(path)
    try:
        spec = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise RedoneError(f"{p}: cannot read YAML task ({str(e).splitlines()[0]})") from None
    if not isinstance(spec, dict):
        raise RedoneError(f"{p}: a YAML task must be a mapping")
    known = _YAML_REQUIRED + _YAML_OPTIONAL
    for key in spec:
        if key not in known:
            raise RedoneError(f"{p}: unknown key {key!r}{_did_you_mean(str(key), list(known))}")
    for key in _YAML_REQUIRED:
        if key not in spec:
            raise RedoneError(f"{p}: missing key {key!r}")
    if not isinstance(spec["max_new_tokens"], int):
        raise RedoneError(f"{p}: max_new_tokens must be an integer")
    name = str(spec["name"])
    answer_field = str(spec.get("answer_field", "answer"))
    user_fields = _template_fields(spec["user"], p, "user")
    official_user = spec.get("official_user")
    official_fields = _template_fields(official_user, p, "official_user") if official_user else ()
    if answer_field in user_fields + official_fields:
        # The prompt is also the eval input: a template that shows the answer would leak it.
        raise RedoneError(f"{p}: the prompt template must not use the answer field {{{answer_field}}}")
    task = Task(
        name=name,
        family=str(spec["family"]),
        max_new_tokens=spec["max_new_tokens"],
        system=str(spec["system"]).strip(),
        user=_template_builder(spec["user"], name),
        fields=tuple(dict.fromkeys(user_fields + official_fields)),
        answer_field=answer_field,
        official_system=str(spec["official_system"]).strip() if spec.get("official_system") else None,
        official_user=_template_builder(official_user, name) if official_user else None,
        description=str(spec.get("description", "")),
        source=str(p),
    )
    register_task(task, replace=replace)
    return task


def _template_fields(template: Any, p: Path, key: str) -> tuple[str, ...]:
    if not isinstance(template, str):
        raise RedoneError(f"{p}: {key} must be a string template")
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise RedoneError(f"{p}: {key} is not a valid str.format template ({e})") from None
    for n in names:
        # Only plain {field} placeholders: attribute/index access would read beyond the item's strings.
        if not n.isidentifier():
            raise RedoneError(f"{p}: {key} placeholder {{{n}}} must be a plain field name")
    return tuple(dict.fromkeys(names))


def _template_builder(template: str, task_name: str) -> UserBuilder:
    def build(item: dict) -> str:
        return template.format(**item).strip()

    build.__name__ = f"user_{task_name}"
    return build


# ---------------------------------------------------------------- built-in tasks: helpers


def _content(item: dict) -> str:
    return item["content"].strip()


def _shots(examples: list[tuple[str, str]]) -> str:
    """Worked examples for an official-style system turn: each input followed by its answer."""
    return "\n\n".join(f"{inp}\nAnswer: {out}" for inp, out in examples)


def _official(definition: str, examples: list[tuple[str, str]], closing: str = "") -> str:
    text = f"{definition}\n\nExamples:\n\n{_shots(examples)}"
    return f"{text}\n\n{closing}" if closing else text


_ONLY_ANSWER = (
    "Write the answer directly after 'Answer:', in the same format as the examples, with nothing else."
)

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


def _chlw_user(item: dict) -> str:
    parts = chlw_parts(item["content"])
    if parts is None:
        # Unknown layout: show the item as written (it states its own instruction) rather than guess.
        return _content(item)
    comment, options = parts
    return f"Comment: {comment}\nOptions: {options}\nAnswer:"


def _strip_fence(text: str) -> str:
    """QueryCorr-topic wraps each item in ``` fences: tokens that tell the model nothing."""
    text = text.strip()
    if text.startswith("```"):
        text = text[3:]
    if text.endswith("```"):
        text = text[:-3]
    return text.strip()


# ---------------------------------------------------------------- built-in tasks: SNS-Bench

_QUERYCORR_LEVELS = (
    "3 = meets the main need, topic fully matches; 2 = meets the main need, topic partly matches "
    "(or fully meets a secondary need); 1 = barely helps, under 10% relevant; 0 = does not meet the "
    "need but shares keywords; -1 = unrelated."
)

_MRC_COMPLEX_FORMAT = (
    "<rewrite_query>the query restated with the answer type given in Level</rewrite_query>\n"
    "<relevance_analysis>one sentence: is Doc relevant to it?</relevance_analysis>\n"
    '<AnswerList>["answer copied from Doc", ...]</AnswerList>\n'
    '<Result>[{"Option": "answer", "Reason": "supporting text copied from Doc"}, ...]</Result>'
)

def _result_part(gold: str) -> str:
    """MRC-complex's scored part: the last <Result>...</Result> block (the scorer ignores the other tags)."""
    blocks = re.findall(r"<Result>.*?</Result>", gold, flags=re.DOTALL)
    return blocks[-1] if blocks else gold


_GENDER_TOPICS = (
    "gender stereotypes or bias, fertility and parenting, marriage and in-laws, dating and "
    "relationships, sex, or related social events"
)


def _sns_tasks() -> list[Task]:
    return [
        Task(
            name="Note-Taxonomy-single",
            family="Taxonomy",
            max_new_tokens=16,
            fields=("content", "candidates"),
            scoring_file="Note-Taxonomy-single",
            system="Classify the note. Answer with exactly one category from the candidates, copied verbatim.",
            user=lambda it: f"{_content(it)}\nCandidates: {it['candidates'].strip()}\nAnswer:",
            official_system=_official(
                "Given the title and content of a social-network note and a list of candidate categories, "
                "choose the single most suitable category from the list.",
                [
                    (
                        "Input: Note Title: My first sourdough loaf\n Note Content: Three days feeding the "
                        "starter, finally a crispy crust! #Baking\nCandidate categories: Baking, Main "
                        "Meals, Food Reviews, Drinks",
                        "Baking",
                    ),
                    (
                        "Input: Note Title: Weekend in Hangzhou\n Note Content: West Lake at sunrise, then "
                        "the tea fields of Longjing village\nCandidate categories: Travel Guide, Hotels, "
                        "Travel Records, Food Exploration",
                        "Travel Records",
                    ),
                ],
                _ONLY_ANSWER,
            ),
            official_user=lambda it: (
                f"Input: {it['content']}\nCandidate categories: {it['candidates']}\nAnswer:"
            ),
        ),
        Task(
            name="Note-Taxonomy-multiple",
            family="Taxonomy",
            max_new_tokens=32,
            fields=("content", "candidates_primary", "candidates_secondary", "candidates_tertiary"),
            scoring_file="Note-Taxonomy-multiple",
            system=(
                "Classify the note at three levels, one candidate per level copied verbatim. "
                "Answer as: primary | secondary | tertiary"
            ),
            user=lambda it: (
                f"{_content(it)}\nPrimary: {it['candidates_primary'].strip()}\n"
                f"Secondary: {it['candidates_secondary'].strip()}\n"
                f"Tertiary: {it['candidates_tertiary'].strip()}\nAnswer:"
            ),
            official_system=_official(
                "Given the title and content of a social-network note and lists of candidate primary, "
                "secondary and tertiary categories, choose the most suitable category at each level. "
                "Answer in the format: Primary category | Secondary category | Tertiary category.",
                [
                    (
                        "Input: Note Title: Sunscreen that doesn't pill\n Note Content: Tried four "
                        "sunscreens under makeup this summer, only one stayed smooth.\n"
                        "Candidate primary categories: ['Beauty', 'Food', 'Sports']\n"
                        "Candidate secondary categories: ['Skincare', 'Meals', 'Running']\n"
                        "Candidate tertiary categories: ['Sunscreen', 'Fruit', 'Marathon']",
                        "Beauty | Skincare | Sunscreen",
                    ),
                    (
                        "Input: Note Title: Week 3 of learning guitar\n Note Content: Finally played a "
                        "clean F chord #Guitar\nCandidate primary categories: ['Music', 'Gaming', "
                        "'Career']\nCandidate secondary categories: ['Instrument Playing', 'Mobile Games', "
                        "'Job Hunting']\nCandidate tertiary categories: ['Guitar', 'Piano', 'Resume']",
                        "Music | Instrument Playing | Guitar",
                    ),
                ],
                _ONLY_ANSWER,
            ),
            official_user=lambda it: (
                f"Input: {it['content']}\nCandidate primary categories: {it['candidates_primary']}\n"
                f"Candidate secondary categories: {it['candidates_secondary']}\n"
                f"Candidate tertiary categories: {it['candidates_tertiary']}\nAnswer:"
            ),
        ),
        Task(
            name="Note-Hashtag-single",
            family="Hashtag",
            max_new_tokens=24,
            fields=("content", "candidates"),
            scoring_file="Note-Hashtag-single",
            system="Pick the hashtag that best fits the note. Answer with exactly one candidate, copied verbatim.",
            user=lambda it: f"{_content(it)}\nCandidates: {it['candidates'].strip()}\nAnswer:",
            official_system=_official(
                "Given the title and content of a social-network note and a list of candidate topic tags, "
                "choose the one tag from the list that is most relevant to the note.",
                [
                    (
                        "Input:\nNote Title: Cheap eats near campus\n Note Content: Five noodle shops "
                        "under 15 yuan by the university gate\nCandidate Topic Tags:\nStudent Budget Food, "
                        "Wedding Dress, Car Wash, Yoga Mat",
                        "Student Budget Food",
                    ),
                    (
                        "Input:\nNote Title: My cat hates baths\n Note Content: The tips that finally "
                        "worked for bathing a grumpy cat\nCandidate Topic Tags:\nKnitting Patterns, Cat "
                        "Care Tips, Stock Market, Exam Notes",
                        "Cat Care Tips",
                    ),
                ],
                _ONLY_ANSWER,
            ),
            official_user=lambda it: (
                f"Input:\n{it['content']}\nCandidate Topic Tags:\n{it['candidates']}\nAnswer:"
            ),
        ),
        Task(
            name="Note-Hashtag-multiple",
            family="Hashtag",
            max_new_tokens=96,
            fields=("content", "candidates"),
            scoring_file="Note-Hashtag-multiple",
            system=(
                "Select every candidate hashtag that fits the note. "
                "Answer with the chosen candidates copied verbatim, separated by ', '."
            ),
            user=lambda it: f"{_content(it)}\nCandidates: {it['candidates'].strip()}\nAnswer:",
            official_system=_official(
                "Given the title and content of a social-network note and a list of candidate topic tags, "
                "choose all the tags from the list that match the note, separated by commas.",
                [
                    (
                        "Input:\nNote Title: Marathon prep, week 10\n Note Content: 32 km long run done "
                        "along the Shanghai riverside, knees OK!\nCandidate Topic Tags:\nMarathon "
                        "Training, Shanghai, Nail Art, Running Diary, Piano Lessons",
                        "Marathon Training, Running Diary, Shanghai",
                    ),
                    (
                        "Input:\nNote Title: Balcony herb garden\n Note Content: Basil and mint from seed "
                        "in six weeks\nCandidate Topic Tags:\nHome Gardening, Car Review, Balcony Garden, "
                        "Herbs, Crypto",
                        "Home Gardening, Balcony Garden, Herbs",
                    ),
                ],
                _ONLY_ANSWER,
            ),
            official_user=lambda it: (
                f"Input:\n{it['content']}\nCandidate Topic Tags:\n{it['candidates']}\nAnswer:"
            ),
        ),
        Task(
            name="Note-QueryCorr-topic",
            family="QueryCorr",
            max_new_tokens=4,
            fields=("content",),
            scoring_file="Note-QueryCorr-topic",
            system=f"Rate how well the note serves the search query. {_QUERYCORR_LEVELS} Answer with the level only.",
            user=lambda it: f"{_strip_fence(it['content'])}\nLevel:",
            official_system=_official(
                "You score the relevance of a RedNote note to a search query on five levels. A query has "
                "a primary need (what most users want) and may have secondary needs; a note's topic can "
                "match the query's topic completely, partly or not at all.\n"
                "3: meets the primary need and the topic matches completely (80% or more relevant).\n"
                "2: meets the primary need with a partial topic match (10-80% relevant), or meets a "
                "secondary need.\n"
                "1: low satisfaction, under 10% relevant (only mentioned, or an overly specific need).\n"
                "0: does not meet the need but has some connection, e.g. shared keywords.\n"
                "-1: does not meet the need and has no connection.",
                [
                    (
                        "Query: keep succulents alive in winter\nNote: 5 tips to keep succulents alive in winter",
                        "3",
                    ),
                    ("Query: succulent tattoo ideas\nNote: 5 tips to keep succulents alive in winter", "0"),
                    ("Query: best hiking boots\nNote: 5 tips to keep succulents alive in winter", "-1"),
                ],
                "Output only the level: -1, 0, 1, 2 or 3, with nothing else.",
            ),
            official_user=lambda it: (
                f"The query and note you received are:\n{it['content']}\n"
                "Output the level (-1, 0, 1, 2 or 3) only.\nAnswer:"
            ),
        ),
        Task(
            name="Note-QueryCorr-explain",
            family="QueryCorr",
            max_new_tokens=4,
            fields=("sentence1", "sentence2"),
            scoring_file="Note-QueryCorr-explain",
            system="Can the document answer the question? Answer Yes or No.",
            user=lambda it: (
                f"Question: {it['sentence1'].strip()}\nDocument: {it['sentence2'].strip()}\nAnswer:"
            ),
            official_system=_official(
                "Below are a question and a document. Decide whether the document can answer the question. "
                'Reply "Yes" if it can, otherwise "No", with no explanation.',
                [
                    (
                        "Question:\nHow long do I boil an egg for a runny yolk?\nDocument:\nPerfect "
                        "soft-boiled eggs: six and a half minutes in boiling water, then ice water",
                        "Yes",
                    ),
                    (
                        "Question:\nHow much is a Japan tourist visa?\nDocument:\nMy 5-day Tokyo food "
                        "list: ramen, sushi and the best convenience-store snacks",
                        "No",
                    ),
                ],
            ),
            official_user=lambda it: f"Question:\n{it['sentence1']}\nDocument:\n{it['sentence2']}\nAnswer:",
        ),
        Task(
            name="Note-MRC-simple",
            family="MRC",
            max_new_tokens=768,  # gold lists reach 637 tokens in test, 732 in train
            fields=("content", "query"),
            answer_type=list,
            scoring_file="Note-MRC-simple",
            system=(
                "Copy the sentences of the note that answer the question. Answer with a Python list of "
                "strings copied verbatim from the note, [] if it does not answer."
            ),
            user=lambda it: f"Question: {it['query'].strip()}\nNote:\n{_content(it)}\nAnswer:",
            official_system=(
                "You are a reading-comprehension expert. You get a user's note (title and content; the "
                "title may be empty) and a question.\n"
                "Step 1: decide whether the note can answer the question; specific entities or "
                "qualifiers in the question must be satisfied.\n"
                "Step 2: if it can, extract the answer from the note as original text: complete sentences "
                "or paragraphs, consecutive sentences kept together, irrelevant middle parts skipped, long "
                "answers split by points. Never summarise or add unrelated content.\n"
                "Output a list where each value is a sentence or paragraph that answers the question; if "
                "nothing can be extracted, output an empty list []. Output nothing but the list.\n\n"
                "Examples:\n\n"
                "Note: Opening hours: 10:00-22:00 daily. Parking at the back.\nQuestion: When does it "
                "open?\nOutput: ['Opening hours: 10:00-22:00 daily.']\n\n"
                "Note: Loved the cake, very moist!\nQuestion: Where is the shop?\nOutput: []"
            ),
            official_user=lambda it: (
                f"Here is the note title and content:\n\n{it['content']}\n\n\n"
                f"User's question:\n{it['query']}\nOutput:"
            ),
        ),
        Task(
            name="Note-MRC-complex",
            family="MRC",
            max_new_tokens=1024,  # four tagged parts; golds reach 373 tokens in test, 853 in train
            fields=("content",),
            scoring_file="Note-MRC-complex",
            # Only the scored <Result> block: the three unscored tags would triple the answer length (and
            # the tokens a CPU trains and decodes) for no points. The official style keeps all four.
            system=(
                "Answer the Query from the Doc as a JSON list of options copied from Doc, each with a "
                'supporting reason copied from Doc: <Result>[{"Option": "answer", "Reason": "text from '
                'Doc"}, ...]</Result>. If Doc is irrelevant or has no answer: <Result>[]</Result>'
            ),
            redone_answer=_result_part,
            user=lambda it: f"{_content(it)}\nAnswer:",
            official_system=(
                "Task: rewrite the Query, then do reading comprehension on the Doc.\n"
                "Input: Query is the user's search with a question intent; Level is the type of answer "
                "wanted; Doc is the note text between <Doc> and </Doc>.\n"
                "Step 1: using Query and Level, rewrite the query as a precise answer requirement "
                "(e.g. Query 'Chengdu hotpot', Level 'restaurant names' -> 'Names of good hotpot restaurants in "
                "Chengdu').\n"
                "Step 2: judge in 1-2 sentences whether Doc is relevant to the rewritten query; a Doc that "
                "misses an important qualifier (time, place) is irrelevant.\n"
                "Step 3: if relevant, extract every answer Option of the required type from Doc into "
                "AnswerList (e.g. 'brand model' needs both brand and model); otherwise AnswerList is [].\n"
                "Step 4: for each Option, copy a supporting Reason from Doc (at most 100 characters).\n"
                "Options follow the original text, are specific searchable names, and carry no leading "
                "words such as 'Shop 1'. Reasons are copied unchanged.\n\n"
                f"Output format:\n{_MRC_COMPLEX_FORMAT}\n\n"
                "Example output for an irrelevant Doc:\n<rewrite_query>Names of ski resorts in Hokkaido</rewrite_query>\n"
                "<relevance_analysis>Doc describes a beach holiday in Okinawa and names no ski resort, so it "
                "is not relevant."
                "</relevance_analysis>\n<AnswerList>[]</AnswerList>\n<Result>[]</Result>"
            ),
            official_user=lambda it: f"{_content(it)}\nOutput:",
        ),
        Task(
            name="Note-NER",
            family="NER",
            max_new_tokens=48,
            fields=("content", "question"),
            scoring_file="Note-NER",
            system="Extract the requested entities, spelled exactly as in the text. Answer with them separated by ', '.",
            user=lambda it: f"Text: {_content(it)}\n{it['question'].strip()}\nAnswer:",
            official_system=_official(
                "Extract entities from the Passage as the Question asks. Keep the same case as in the "
                "passage; separate several entities with commas.",
                [
                    (
                        "Passage:Spring new linen wide-leg trousers women high waist casual\n"
                        "Question:Please identify all 'Material' entities",
                        "linen",
                    ),
                    (
                        "Passage:Matte lipstick 3 pack red nude long-lasting gift set\n"
                        "Question:Please identify all 'Color' entities",
                        "red, nude",
                    ),
                ],
                _ONLY_ANSWER,
            ),
            official_user=lambda it: f"Passage:{it['content']}\nQuestion:{it['question']}\nAnswer:",
        ),
        Task(
            name="Note-Gender",
            family="Gender",
            max_new_tokens=4,
            fields=("content",),
            scoring_file="Note-Gender",
            system=f"Is the note likely to spark discussion between men and women ({_GENDER_TOPICS})? Answer Yes or No.",
            user=lambda it: f"{_content(it)}\nAnswer:",
            official_system=_official(
                "From the note fields below, decide whether the content is likely to trigger discussion "
                "that interests both men and women. Reply 'Yes' if it does, otherwise 'No', with no "
                "explanation. Such content includes: stereotypes about men and women; gender bias and "
                "inequality in jobs, sports or hobbies; fertility and parenting; marriage (matchmaking, "
                "weddings, in-laws, divorce, prenuptial property); romance (arguments, cheating); sex "
                "(harassment, violence, sex education); and related social events.",
                [
                    (
                        "Note Content:\nTitle: Should the bride's family pay for the wedding?\nCategory: "
                        "Marriage - Wedding\nBody: My in-laws say it is tradition #Wedding[Topic]#",
                        "Yes",
                    ),
                    (
                        "Note Content:\nTitle: Autumn reading list\nCategory: Humanities - Reading\n"
                        "Body: Five novels for rainy weekends #Books[Topic]#",
                        "No",
                    ),
                ],
            ),
            official_user=lambda it: (
                f"Please give your judgment on the following content:\nNote Content:\n{it['content']}\nAnswer:"
            ),
        ),
        Task(
            name="Note-CHLW",
            family="CHLW",
            max_new_tokens=48,
            fields=("content",),
            scoring_file="Note-CHLW",
            system=(
                "Choose the options worth highlighting in the comment: specific things a reader might "
                "search for. Answer with a Python list of chosen options, [] if none."
            ),
            user=_chlw_user,
            official_system=(
                "Select the words worth highlighting in a comment: meaningful, specific entities, "
                "issues or descriptions that make users want to search. Be careful with trivial daily "
                "chatter and content containing numbers. Examples:\n\n"
                "1) Input: Where can I buy this linen tablecloth?; Return: ['linen tablecloth']\n"
                "2) Input: Is the Kindle Paperwhite good for reading manga; Return: ['Kindle Paperwhite']\n"
                "3) Input: haha same here; Return: []"
            ),
            # The item already ends with its own instruction and "Your output is:".
            official_user=lambda it: it["content"],
        ),
        Task(
            name="Note-QueryGen",
            family="QueryGen",
            max_new_tokens=32,
            fields=("content",),
            scoring_file="Note-QueryGen",
            system="Write one search query a reader of this note would type next, about its core topic. Answer with the query only.",
            user=lambda it: f"{_content(it)}\nQuery:",
            official_system=_official(
                "Act as an internet user. From the input note (image/text or video), generate one novel "
                "search term about the note's core entities: complete, fluent, interesting, and bringing "
                "information beyond the note. It can be a question (how to ..., what is ...) or a compound "
                "term (... tips, ... tutorial, ... outfits, ... recommendations). Output the search term "
                "on a single line, with no analysis.",
                [
                    (
                        "Input:\nNote type: image, Note Title: Two weeks with a standing desk, Main "
                        "content: my back pain is gone, but now my feet hurt",
                        "How long to stand at a standing desk each day",
                    ),
                    (
                        "Input:\nNote type: image, Note Title: 3 days in Xiamen, Main content: Gulangyu, "
                        "Nanputuo Temple and seafood street",
                        "Xiamen 3-day itinerary",
                    ),
                ],
            ),
            official_user=lambda it: (
                f"Please generate a search term for the following note based on the instructions above:\n"
                f"Input:\n{it['content']}\nSearch term:"
            ),
        ),
    ]


# ---------------------------------------------------------------- built-in tasks: SNS-TransBench


def _transbench_task(src: str, dst: str, max_new_tokens: int, examples: list[tuple[str, str]]) -> Task:
    s, d = _LANG_NAMES[src], _LANG_NAMES[dst]
    return Task(
        name=f"TransBench-{src}2{dst}",
        family="Translation",
        max_new_tokens=max_new_tokens,
        fields=(src,),
        answer_field=dst,
        system=f"Translate the {s} social-media text into {d}. Answer with the translation only.",
        user=lambda it: f"{s}: {it[src].strip()}\n{d}:",
        official_system=_official(
            f"Translate the following RedNote (Xiaohongshu) text — a note title, note body or comment — "
            f"from {s} into {d}. Keep emoji, hashtags and the casual tone; output only the translation.",
            [(f"{s}: {a}", b) for a, b in examples],
        ),
        official_user=lambda it: f"{s}: {it[src]}\nAnswer:",
    )


_ZH_EN_SHOTS = [("今天的晚霞太美了🌅", "The sunset today is so beautiful🌅"), ("求链接！", "Link please!")]


def _builtin_tasks() -> list[Task]:
    return _sns_tasks() + [
        # Budgets cover the longest test target in SmolLM2 tokens (652 zh->en, 1,713 en->zh: its
        # English-centric vocabulary spends 1-3 tokens per Chinese character); a cut translation
        # would lose BLEU for the budget, not for the model.
        _transbench_task("zh", "en", 768, _ZH_EN_SHOTS),
        _transbench_task("en", "zh", 1792, [(b, a) for a, b in _ZH_EN_SHOTS]),
    ]


_BUILTIN = _builtin_tasks()
for _task in _BUILTIN:
    register_task(_task)
SNS_BENCH_TASKS = tuple(t.name for t in _BUILTIN if t.scoring_file)  # the 12 SNS-Bench files
TRANSBENCH_TASKS = tuple(t.name for t in _BUILTIN if t.family == "Translation")
