"""Skill-free baseline predictions: perfect output format, no understanding of the note.

These give the floor a model reaches by format compliance alone, so a trained model's gain can be read
against it. Every prediction parses under the scorer (success ratio 1). Per file:

* Taxonomy-single, Hashtag-single, Hashtag-multiple: the first candidate listed.
* Taxonomy-multiple: the first candidate of each level, joined " | ".
* QueryCorr-topic, QueryCorr-explain, Gender: the majority label of the training items (ties: the label
  that sorts first, so the choice is deterministic).
* NER: the most frequent entity over the training golds (the label-prior choice, as for the label tasks;
  an empty answer is equally format-valid but can never score).
* MRC-simple, CHLW: the empty list "[]".
* MRC-complex: an empty result, "<Result>[]</Result>".
* QueryGen: the note title when the content has a non-empty one, else the first line of the main
  content, else the first line of the content.

SNS-TransBench: the source text copied unchanged.
"""

from __future__ import annotations

import re
from collections import Counter

from redone.errors import RedoneError
from redone.sns import transbench
from redone.sns.scoring import _check_file, _split_candidates

_EMPTY_TITLES = {"", "empty", "nan", "none", "null"}
# The QueryGen content is a "field: value, \n" listing whose wording varies ("Note Title:",
# "The note title is:", "The title of the note is:"); some records carry a literal backslash-n.
_FIELD_END = r"(?:,?\s*(?:\\n|\n)|$)"
_TITLE = re.compile(r"title(?: of the note)?(?: is)?\s*:\s*(.*?)" + _FIELD_END, re.IGNORECASE)
_MAIN = re.compile(r"(?:main|body)[\w ]*?content\s*:\s*(.*?)" + _FIELD_END, re.IGNORECASE)


def _first_candidate(file: str, item: dict, key: str = "candidates") -> str:
    candidates = _split_candidates(item.get(key))
    if not candidates:
        raise RedoneError(f"{file}: record has no '{key}' to pick a baseline answer from")
    return candidates[0]


def _majority_label(file: str, train_items: list[dict]) -> str:
    labels = Counter(str(item.get("answer", "")).strip() for item in train_items)
    labels.pop("", None)
    if not labels:
        raise RedoneError(f"{file}: the majority-label baseline needs training items with answers")
    top = max(labels.values())
    return sorted(label for label, count in labels.items() if count == top)[0]


def _top_entity(file: str, train_items: list[dict]) -> str:
    entities = Counter(
        part.strip()
        for item in train_items
        for part in str(item.get("answer", "")).split(",")
        if part.strip()
    )
    if not entities:
        raise RedoneError(f"{file}: the most-frequent-entity baseline needs training items with answers")
    top = max(entities.values())
    return sorted(entity for entity, count in entities.items() if count == top)[0]


def _first_line(text: str) -> str:
    for line in text.replace("\\n", "\n").splitlines():
        line = line.strip().strip('"').strip()
        if line:
            return line
    return ""


def _query_from_note(content: str) -> str:
    title = _TITLE.search(content)
    if title and title.group(1).strip().lower() not in _EMPTY_TITLES:
        return title.group(1).strip()
    main = _MAIN.search(content)
    if main and main.group(1).strip().lower() not in _EMPTY_TITLES:
        return _first_line(main.group(1))
    return _first_line(content)


def skill_free_predictions(file: str, items: list[dict], train_items: list[dict]) -> list[str]:
    """Format-perfect, skill-free predictions for one SNS-Bench file (see the module docstring)."""
    file = _check_file(file)
    if file in ("Note-Taxonomy-single", "Note-Hashtag-single", "Note-Hashtag-multiple"):
        return [_first_candidate(file, item) for item in items]
    if file == "Note-Taxonomy-multiple":
        levels = ("candidates_primary", "candidates_secondary", "candidates_tertiary")
        return [" | ".join(_first_candidate(file, item, key) for key in levels) for item in items]
    if file in ("Note-QueryCorr-topic", "Note-QueryCorr-explain", "Note-Gender"):
        return [_majority_label(file, train_items)] * len(items)
    if file == "Note-NER":
        return [_top_entity(file, train_items)] * len(items)
    if file in ("Note-MRC-simple", "Note-CHLW"):
        return ["[]"] * len(items)
    if file == "Note-MRC-complex":
        return ["<Result>[]</Result>"] * len(items)
    return [_query_from_note(str(item.get("content", ""))) for item in items]  # Note-QueryGen


def skill_free_transbench(items: list[dict]) -> list[str]:
    """The untranslated source text as the 'translation' (the copy baseline)."""
    out = []
    for i, item in enumerate(items):
        src = transbench.direction(item)[:2]
        if not isinstance(item.get(src), str):
            raise RedoneError(f"SNS-TransBench item {i}: no source text in field {src!r}")
        out.append(item[src])
    return out
