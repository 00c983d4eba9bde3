"""SNS-TransBench: BLEU / chrF++ per direction with the right sacrebleu tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from redone.errors import RedoneError
from redone.sns.transbench import direction, gold_text, score_transbench

REPO = Path(__file__).resolve().parents[2]

ZH2EN = {"zh": "今天猫在垫子上", "en": "the cat is on the mat today", "src_lang": "zh", "dst_lang": "en"}
EN2ZH = {"zh": "今天猫在垫子上", "en": "the cat is on the mat today", "src_lang": "en", "dst_lang": "zh"}


def transbench_test_items() -> list[dict]:
    for candidate in (REPO / "data" / "sns_transbench", REPO.parent / "shared" / "data" / "sns_transbench"):
        if (candidate / "test.json").is_file():
            return json.loads((candidate / "test.json").read_text(encoding="utf-8"))
    pytest.skip("SNS-TransBench data not found")


def test_direction_and_reference():
    assert (direction(ZH2EN), gold_text(ZH2EN)) == ("zh2en", "the cat is on the mat today")
    assert (direction(EN2ZH), gold_text(EN2ZH)) == ("en2zh", "今天猫在垫子上")
    with pytest.raises(RedoneError, match="src_lang/dst_lang"):
        direction({"src_lang": "fr", "dst_lang": "en"})


def test_known_small_case_matches_sacrebleu():
    result = score_transbench(["the cat sat on the mat today", "今天猫坐在垫子上"], [ZH2EN, EN2ZH])
    # Values from sacrebleu 2.x: BLEU "13a" / "zh" tokenizer, CHRF(word_order=2).
    assert result["zh2en"]["bleu"] == pytest.approx(48.892302243490086)
    assert result["zh2en"]["chrf++"] == pytest.approx(74.99925631620833)
    assert result["en2zh"]["bleu"] == pytest.approx(50.0)  # 13a would give 0 on unsegmented Chinese
    assert result["en2zh"]["chrf++"] == pytest.approx(37.05761109993968)
    numbers = [48.892302243490086, 74.99925631620833, 50.0, 37.05761109993968]
    assert result["average"] == pytest.approx(sum(numbers) / 4)
    assert result["zh2en"]["bleu_tokenize"] == "13a" and result["en2zh"]["bleu_tokenize"] == "zh"
    assert any("word_order=2" in note for note in result["notes"])


def test_identical_predictions_score_100_on_the_real_test_split():
    items = transbench_test_items()
    result = score_transbench([gold_text(item) for item in items], items)
    for name in ("zh2en", "en2zh"):
        assert result[name]["bleu"] == pytest.approx(100.0)
        assert result[name]["chrf++"] == pytest.approx(100.0)
    assert result["average"] == pytest.approx(100.0)
    assert result["zh2en"]["n"] + result["en2zh"]["n"] == len(items)


def test_one_direction_only_and_bad_input():
    result = score_transbench(["the cat is on the mat today"], [ZH2EN])
    assert result["missing_directions"] == ["en2zh"] and result["average"] == pytest.approx(100.0)
    with pytest.raises(RedoneError, match="2 predictions for 1 items"):
        score_transbench(["a", "b"], [ZH2EN])
    with pytest.raises(RedoneError, match="expected a string"):
        score_transbench([3], [ZH2EN])
