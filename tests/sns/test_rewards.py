"""RL rewards: the SNS-Bench metric per item (gold = 1, wrong = 0), format, chrF++, user functions, errors."""

from __future__ import annotations

import json

import pytest

from redone.errors import RedoneError
from redone.sns import rewards, scoring
from redone.sns.tasks import answer_text, load_items, transbench_task
from redone.sns.transbench import gold_text as translation_gold
from tests.conftest import DATA

# Parse failures per file (format 0): structured outputs that are not the protocol, or nothing at all.
GARBAGE = {"Note-Taxonomy-multiple": "Beauty Skincare", "Note-QueryCorr-topic": "high",
           "Note-QueryCorr-explain": "Maybe", "Note-Gender": "Perhaps", "Note-MRC-simple": "the answer is x",
           "Note-MRC-complex": "[{'Option': 1}]", "Note-CHLW": "words: a, b"}


def test_item(file: str, limit: int | None = None) -> list[dict]:
    return load_items(DATA / "sns_bench" / "test" / f"{file}.json")[:limit]


test_item.__test__ = False  # a helper, not a test


# User reward functions named in configs as "tests.sns.test_rewards:<name>".
def brevity(completion: str, item: dict, task: str) -> float:
    return 1.0 / (1 + len(completion))


def always_nan(completion: str, item: dict, task: str) -> float:
    return float("nan")


def too_big(completion: str, item: dict, task: str) -> float:
    return 1.5


def crashes(completion: str, item: dict, task: str) -> float:
    return {}["missing"]


def text_valued(completion: str, item: dict, task: str) -> float:
    return "1"


@pytest.mark.parametrize("file", scoring.SNS_FILES)
def test_gold_answers_score_one_and_parse(file):
    items = test_item(file)
    for i, item in enumerate(items):
        gold = answer_text(file, item)  # the redone-style target the policy is trained to produce
        assert rewards.task_reward(gold, item, file) == 1.0, (file, i)
        assert rewards.format_reward(gold, item, file) == 1.0, (file, i)


@pytest.mark.parametrize("file", ["Note-Taxonomy-single", "Note-Hashtag-single", "Note-Taxonomy-multiple",
                                  "Note-QueryCorr-explain", "Note-Gender", "Note-QueryCorr-topic"])
def test_a_wrong_label_scores_zero(file):
    for item in test_item(file, 20):
        gold = answer_text(file, item)
        if file in ("Note-QueryCorr-explain", "Note-Gender"):
            wrong = "No" if gold == "Yes" else "Yes"
        elif file == "Note-QueryCorr-topic":
            wrong = "-1" if gold != "-1" else "3"
        elif file == "Note-Taxonomy-multiple":
            wrong = " | ".join(reversed(gold.split(" | ")))
        else:
            wrong = next(c.strip() for c in item["candidates"].split(",") if c.strip() and c.strip() != gold)
        assert rewards.task_reward(wrong, item, file) == 0.0
        assert rewards.format_reward(wrong, item, file) == 1.0  # well-formed, just wrong


def test_set_valued_tasks_pay_per_item_f1():
    def entities_of(item):
        return sorted({part.strip() for part in item["answer"].split(",") if part.strip()})

    item = next(it for it in test_item("Note-NER") if len(entities_of(it)) >= 2)
    entities = entities_of(item)
    half = entities[: len(entities) // 2]
    expected = 2 * len(half) / (len(half) + len(entities))
    assert rewards.task_reward(", ".join(half), item, "Note-NER") == pytest.approx(expected)
    assert rewards.task_reward("Nobody, Nowhere", item, "Note-NER") == 0.0
    chlw = next(it for it in test_item("Note-CHLW") if it["answer"].strip() not in ("[]", ""))
    assert rewards.task_reward("[]", chlw, "Note-CHLW") == 0.0


@pytest.mark.parametrize("file", sorted(GARBAGE))
def test_format_reward_is_zero_on_garbage(file):
    item = test_item(file, 1)[0]
    assert rewards.format_reward(GARBAGE[file], item, file) == 0.0
    assert rewards.task_reward(GARBAGE[file], item, file) == 0.0


def test_format_reward_is_zero_on_an_empty_answer_everywhere():
    for file in scoring.SNS_FILES:
        assert rewards.format_reward("", test_item(file, 1)[0], file) == 0.0, file


def test_transbench_chrf_sentence_reward():
    items = json.loads((DATA / "sns_transbench" / "test.json").read_text())[:6]
    for item in items:
        task = transbench_task(item)
        reference = translation_gold(item)
        assert rewards.task_reward(reference, item, task) == pytest.approx(1.0)
        partial = rewards.task_reward(reference[: len(reference) // 2], item, task)
        assert 0.0 < partial < 1.0
        assert rewards.task_reward("", item, task) == 0.0
        assert rewards.format_reward(reference, item, task) == 1.0
        assert rewards.format_reward("", item, task) == 0.0
    zh2en = next(it for it in items if transbench_task(it) == "TransBench-zh2en")
    assert rewards.format_reward(zh2en["zh"], zh2en, "TransBench-zh2en") == 0.0  # answered in the source language


def test_user_reward_is_imported_from_its_name_and_weighted():
    found = rewards.resolve_rewards(["task", "tests.sns.test_rewards:brevity"], [1.0, 0.5])
    assert [r.name for r in found] == ["task", "tests.sns.test_rewards:brevity"]
    assert found[1].fn is brevity and found[1].weight == 0.5
    item = test_item("Note-Gender", 1)[0]
    assert rewards.score(found, "Yes", item, "Note-Gender", 0) == [float(item["answer"] == "Yes"), 0.25]


@pytest.mark.parametrize("name,message", [
    ("tests.sns.test_rewards:always_nan", r"reward 'tests.sns.test_rewards:always_nan' on item \(Note-Gender, 7\) returned NaN"),
    ("tests.sns.test_rewards:too_big", r"on item \(Note-Gender, 7\) returned 1.5, outside \[0, 1\]"),
    ("tests.sns.test_rewards:crashes", r"reward 'tests.sns.test_rewards:crashes' raised KeyError on item \(Note-Gender, 7\)"),
    ("tests.sns.test_rewards:text_valued", r"on item \(Note-Gender, 7\) returned str, expected a float"),
])
def test_bad_reward_values_name_the_function_and_item(name, message):
    found = rewards.resolve_rewards([name])
    with pytest.raises(RedoneError, match=message):
        rewards.score(found, "Yes", test_item("Note-Gender", 1)[0], "Note-Gender", 7)


@pytest.mark.parametrize("name,message", [
    ("taks", r"rl.rewards\[0\]: unknown reward 'taks'; did you mean 'task'"),
    ("no_such_module_xyz:f", r"rl.rewards\[0\]: cannot import module 'no_such_module_xyz'"),
    ("tests.sns.test_rewards:brevty", r"has no function 'brevty'; did you mean 'brevity'"),
])
def test_unknown_reward_names(name, message):
    with pytest.raises(RedoneError, match=message):
        rewards.resolve_rewards([name])


def test_weights_must_match_rewards():
    with pytest.raises(RedoneError, match="2 weights for 1 rewards"):
        rewards.resolve_rewards(["task"], [1.0, 2.0])
