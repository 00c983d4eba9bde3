"""Skill-free baselines: format-valid on every file, and their test-split score in a sane band."""

from __future__ import annotations

import json

from redone.eval.baseline import skill_free_predictions, skill_free_transbench
from redone.sns import scoring
from redone.sns.scoring import SNS_FILES, aggregate, score_file
from redone.sns.transbench import score_transbench
from tests.conftest import DATA


def load(split: str, file: str) -> list[dict]:
    return json.loads((DATA / "sns_bench" / split / f"{file}.json").read_text(encoding="utf-8"))


def _parses(file: str, prediction: str) -> bool:
    """Whether the output follows the file's protocol (the scorer's parse step, where it has one)."""
    if file in ("Note-MRC-simple", "Note-CHLW"):
        return scoring._parse_list(prediction, bug_compatible=True) is not None
    if file == "Note-MRC-complex":
        return scoring._parse_result(prediction, bug_compatible=True) is not None
    if file == "Note-QueryCorr-topic":
        return prediction in scoring.TOPIC_LEVELS
    if file in ("Note-QueryCorr-explain", "Note-Gender"):
        return prediction in ("Yes", "No")
    return bool(prediction.strip()) and "\n" not in prediction


def test_fixed_choices_on_hand_made_items():
    items = [{"candidates": "Food, Travel", "answer": "Travel"}]
    assert skill_free_predictions("Note-Taxonomy-single", items, []) == ["Food"]
    multi = [
        {
            "candidates_primary": "['A', 'B']",
            "candidates_secondary": "['C']",
            "candidates_tertiary": "['D', 'E']",
        }
    ]
    assert skill_free_predictions("Note-Taxonomy-multiple", multi, []) == ["A | C | D"]
    train = [{"answer": "No"}, {"answer": "Yes"}, {"answer": "Yes"}]
    assert skill_free_predictions("Note-Gender", [{}, {}], train) == ["Yes", "Yes"]
    ner_train = [{"answer": "Summer, Women"}, {"answer": "Women"}]
    assert skill_free_predictions("Note-NER", [{}], ner_train) == ["Women"]
    assert skill_free_predictions("Note-MRC-complex", [{}], []) == ["<Result>[]</Result>"]
    note = {
        "content": "This input note type is: video, \\nNote Title: Empty, \\nMain content: Tea bar machines\\nmore"
    }
    assert skill_free_predictions("Note-QueryGen", [note], []) == ["Tea bar machines"]
    titled = {"content": "The type is: video, \nThe title of the note is: Yue... I can't even eat, \nBody: x"}
    assert skill_free_predictions("Note-QueryGen", [titled], []) == ["Yue... I can't even eat"]


def test_skill_free_baseline_on_the_test_split(capsys):
    results = {}
    for file in SNS_FILES:
        items, train = load("test", file), load("train", file)
        predictions = skill_free_predictions(file, items, train)
        assert len(predictions) == len(items)
        assert all(_parses(file, p) for p in predictions), file
        results[file] = score_file(file, predictions, items)
        if results[file]["success_ratio"] is not None:
            assert results[file]["success_ratio"] == 1.0
    summary = aggregate(results)
    with capsys.disabled():
        print("\nskill-free SNS-Bench baseline (test split, fixed mode):")
        for file, result in results.items():
            print(f"  {file:24s} {result['score']:6.2f}")
        for task, score in summary["tasks"].items():
            print(f"  task {task:19s} {score:6.2f}")
        print(f"  average over 8 tasks     {summary['average']:6.2f}")
    assert summary["complete"]
    assert 20.0 <= summary["average"] <= 35.0


def test_copy_source_transbench_baseline():
    path = DATA / "sns_transbench" / "test.json"
    items = json.loads(path.read_text(encoding="utf-8"))
    predictions = skill_free_transbench(items)
    assert predictions[0] == items[0][items[0]["src_lang"]]
    result = score_transbench(predictions, items)
    assert 0.0 <= result["average"] < 10.0
