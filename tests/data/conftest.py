"""Fixtures of the curation tests (filters, dedup, decontam, curate): real SNS-Bench, TransBench, Shakespeare."""

from __future__ import annotations

import json

import pytest

from redone.data import decontam, text
from tests.conftest import DATA


@pytest.fixture(scope="module")
def sns_notes() -> list[str]:
    """The content field of every SNS-Bench train item (notes, often wrapped in a task prompt)."""
    notes = []
    for path in sorted((DATA / "sns_bench" / "train").glob("*.json")):
        notes += [
            rec["content"] for rec in json.loads(path.read_text(encoding="utf-8")) if rec.get("content")
        ]
    return notes


@pytest.fixture(scope="module")
def shakespeare() -> list[str]:
    """Unrelated English paragraphs (speeches of at least 200 chars)."""
    text = (DATA / "general" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    return [p for p in text.split("\n\n") if len(p) >= 200]


@pytest.fixture(scope="module")
def eval_texts() -> dict[str, list[str]]:
    texts = decontam.eval_texts_from_sns_bench(DATA / "sns_bench" / "test")
    texts.update(decontam.eval_texts_from_transbench(DATA / "sns_transbench" / "test.json"))
    return texts


@pytest.fixture(scope="module")
def eval_index(eval_texts) -> decontam.EvalIndex:
    return decontam.build_eval_index(eval_texts, 13)


def word3(note: str) -> set[tuple[str, ...]]:
    toks = text.tokens(note)
    return set(zip(toks, toks[1:], toks[2:]))


def distinct_notes(notes: list[str], count: int) -> list[str]:
    """Notes of 30+ tokens whose true word-3 Jaccard with every other pick is below 0.5."""
    picked, shingles = [], []
    for note in notes:
        s = word3(note)
        if len(s) >= 30 and all(len(s & t) / len(s | t) < 0.5 for t in shingles):
            picked.append(note)
            shingles.append(s)
            if len(picked) == count:
                break
    return picked
