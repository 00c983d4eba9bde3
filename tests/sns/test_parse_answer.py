"""``parse_answer``: the answer ``redone predict`` writes is the one the scorer reads.

Two checks on the shipped SNS-Bench test items: every gold output parses back to the gold answer in its
parsed form (label, level list, tag list, spans, options, query), and on varied outputs (cues, trailing
explanations, another item's answer, truncation, junk) each item's score follows from the parsed value
exactly as the file's metric defines it, in both scoring modes.
"""

from __future__ import annotations

import json
import math
import re

import pytest

from redone.errors import RedoneError
from redone.sns import scoring
from redone.sns.scoring import SNS_FILES, candidate_labels, gold_text, item_scores, parse_answer, parsed_ok
from redone.sns.tasks import load_items
from tests.conftest import DATA

LIMIT = 30  # items per file: enough for every layout, fast enough for the suite


def items_of(file: str) -> list[dict]:
    return load_items(DATA / "sns_bench" / "test" / f"{file}.json")[:LIMIT]


def expected_from_gold(file: str, item: dict):
    """The gold answer in the form parse_answer returns, built from the record (not from the parser)."""
    answer = item["answer"]
    if file in ("Note-Taxonomy-single", "Note-Hashtag-single", "Note-QueryCorr-explain", "Note-Gender",
                "Note-QueryCorr-topic"):
        return answer.strip()
    if file == "Note-Taxonomy-multiple":
        return [level.strip() for level in answer.split("|")]
    if file in ("Note-Hashtag-multiple", "Note-NER"):
        return list(dict.fromkeys(t.strip() for t in answer.strip().split(",") if t.strip()))
    if file == "Note-MRC-simple":
        return answer
    if file == "Note-CHLW":
        import ast

        return ast.literal_eval(answer.strip())
    if file == "Note-MRC-complex":
        body = re.findall(r"<Result>(.*?)</Result>", answer, flags=re.DOTALL)[-1].strip()
        options = {}
        for entry in json.loads(body):
            options[entry["Option"]] = entry["Reason"]
        return [{"Option": k, "Reason": v} for k, v in options.items()]
    return answer.strip().split("\n")[0].strip()  # QueryGen


@pytest.mark.parametrize("file", SNS_FILES)
def test_gold_outputs_parse_back_to_the_gold_answer(file):
    for i, item in enumerate(items_of(file)):
        value, ok = parse_answer(file, gold_text(file, item), labels=candidate_labels(item))
        assert ok, (file, i)
        assert value == expected_from_gold(file, item), (file, i)


def variants(file: str, items: list[dict]) -> tuple[list[str], list[dict]]:
    """Outputs a model might give, each paired with the item it answers."""
    preds, paired = [], []
    for i, item in enumerate(items):
        gold = gold_text(file, item)
        other = gold_text(file, items[(i + 7) % len(items)])
        for pred in (gold, f"Answer: {gold}", f"{gold}\nBecause the note says so.", f"{gold}. It fits.",
                     other, gold[: len(gold) // 2], "", "I am not sure, maybe"):
            preds.append(pred)
            paired.append(item)
    return preds, paired


def set_f1(pred: set, gold: set) -> float:
    return 1.0 if not pred and not gold else 2 * len(pred & gold) / (len(pred) + len(gold))


def expected_score(file: str, pred: str, item: dict, mode: str) -> float | None:
    """The item score the file's metric gives, computed from parse_answer's value (None: not checked here)."""
    official = mode == "official"
    gold_raw = item["answer"]
    if file in ("Note-Taxonomy-single", "Note-Hashtag-single", "Note-QueryCorr-explain", "Note-Gender"):
        value, _ = parse_answer(file, pred, mode, labels=[gold_raw.strip(), *candidate_labels(item)])
        return float(value == (gold_raw if official else gold_raw.strip()))
    if file == "Note-Taxonomy-multiple":
        value, _ = parse_answer(file, pred, mode, labels=[gold_raw.strip()])
        read = " | ".join(value)
        if official:
            return float(scoring._general_postprocess(read) in (scoring._general_postprocess(gold_raw), gold_raw))
        return float(scoring._normalise_levels(read) == scoring._normalise_levels(gold_raw))
    if file in ("Note-Hashtag-multiple", "Note-NER"):
        value, _ = parse_answer(file, pred, mode)
        gold, _ = parse_answer(file, gold_raw if official else gold_raw.strip(), mode)
        return set_f1(set(value), set(gold))
    if file == "Note-QueryCorr-topic":
        value, _ = parse_answer(file, pred, mode)
        return float(value == (gold_raw if official else gold_raw.strip()))
    if file == "Note-CHLW":
        value, _ = parse_answer(file, pred, mode)
        if value is None:
            return 0.0
        return set_f1(set(value or [""]), set(json.loads(json.dumps(expected_from_gold(file, item))) or [""]))
    if file == "Note-QueryGen" and not official:
        from rapidfuzz.distance import Levenshtein

        value, _ = parse_answer(file, pred, mode)
        return float(Levenshtein.normalized_similarity(value, gold_raw.strip()))
    return None


@pytest.mark.parametrize("mode", ["fixed", "official"])
@pytest.mark.parametrize("file", SNS_FILES)
def test_item_scores_follow_from_the_parsed_answer(file, mode):
    preds, paired = variants(file, items_of(file))
    scores = item_scores(file, preds, paired, mode=mode)
    for pred, item, score in zip(preds, paired, scores):
        value, ok = parse_answer(file, pred, mode, labels=candidate_labels(item))
        assert ok == parsed_ok(file, pred, mode)
        expected = expected_score(file, pred, item, mode)
        if expected is not None:
            assert math.isclose(score, expected, abs_tol=1e-9), (file, mode, pred[:80], value)
        elif file in ("Note-MRC-simple", "Note-MRC-complex"):
            gold_has_answer = bool(expected_from_gold(file, item))
            if value is None:  # a parse error scores 0
                assert score == 0.0
            elif not value and not gold_has_answer:  # true negative
                assert score == 1.0
            elif bool(value) != gold_has_answer:  # false positive / negative
                assert score == 0.0
            else:  # true positive: the existence hit alone is worth a third or a fifth
                assert score >= (0.2 if file == "Note-MRC-simple" else 1 / 3)
    # Not vacuous: at least the plain gold outputs score (nearly: official epsilons) full marks.
    assert sum(s > 0.999 for s in scores) >= len(items_of(file)) // 2


def test_official_mrc_simple_items_join_to_the_official_text():
    for pred in ("['a', 'b']", "'ab'", "('x', 'y')", "{'k': 1}", "[1, 2]", "no list", "['Cry [R]']", "None"):
        value, _ = parse_answer("Note-MRC-simple", pred, "official")
        text = scoring._official_mrc_simple_text(pred)
        assert (value is None) == (text is None)
        if value is not None:
            assert "\n".join(value).strip() == text
    assert parse_answer("Note-MRC-simple", "'ab'", "official")[0] == ["a", "b"]  # a bare string: its characters


def test_labels_protect_a_candidate_with_a_delimiter():
    text = "Mr. Zhang's Old Amber\nbecause"
    assert parse_answer("Note-Hashtag-single", text)[0] == "Mr"
    assert parse_answer("Note-Hashtag-single", text, labels=["Mr. Zhang's Old Amber", "Mr"])[0] == "Mr. Zhang's Old Amber"
    assert candidate_labels({"candidates": "A, B.C , D"}) == ["A", "B.C", "D"]
    assert parse_answer("Note-Hashtag-multiple", "Answer: b, a, b, , c\nmore")[0] == ["b", "a", "c"]
    assert parse_answer("Note-QueryCorr-topic", "Level: 2 maybe 3") == ("2", True)
    assert parse_answer("Note-QueryCorr-topic", "none") == (None, False)


def test_parse_answer_errors():
    with pytest.raises(RedoneError, match="unknown SNS-Bench file"):
        parse_answer("Note-Nope", "x")
    with pytest.raises(RedoneError, match="unknown SNS-Bench scoring mode"):
        parse_answer("Note-NER", "x", mode="loose")
    assert parse_answer("Note-NER", None) == ([], False)  # a failed generation reads as empty
