"""Decontamination: n-gram windows, short items, template n-grams, real SNS-Bench/TransBench items, loaders.

Every count is asserted exactly on crafted inputs; real data checks the defaults.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from redone.config.schema import QualityDecontam
from redone.data import decontam
from redone.errors import ConfigError, DataError
from tests.conftest import DATA


def test_ngram_window_is_exactly_n_words_and_n_cjk_chars():
    words = "the quick brown fox jumps over the lazy dog while seven small birds sing in the old tree".split()
    zh = "我作为一个间谍很糟糕请别告诉我的上司"
    index = decontam.build_eval_index({"en": [" ".join(words)], "zh": [zh]}, 13)
    cfg = QualityDecontam(eval_sets=[])
    docs = [
        "Intro text. " + " ".join(words[2:14]) + " and more.",  # 12 consecutive words: clean
        "Intro text. " + " ".join(words[2:15]).upper() + "!",  # 13 words, case/punct differ: hit
        "开头" + zh[:12] + "结尾",  # 12 characters: clean
        "开头，" + zh[3:16] + "。结尾",  # 13 characters: hit
    ]
    assert decontam.contamination(docs, index, cfg) == [None, "en", None, "zh"]


def test_short_items_are_matched_whole_and_tiny_items_skipped():
    index = decontam.build_eval_index({"s": ["Is Louis the only normal person in this family", "Yes"]}, 13)
    assert index.skipped_short == {"s": 1} and index.short_lengths == (9,)
    docs = [
        "lol. is louis the only normal person in this family?? asking for a friend",
        "is louis the only normal person in this house",  # 8 of the 9 tokens
        "yes, of course",
    ]
    assert decontam.decontaminate(docs, index, QualityDecontam(eval_sets=[])) == ([1, 2], Counter(s=1))


def test_template_ngrams_shared_by_distinct_items_are_not_indexed():
    template = "please answer with one word from the list below and nothing else at all thanks"
    items = [
        f"Note: {topic} {template}"
        for topic in (
            "my cat learned to open the fridge door and ate all the cheese last night",
            "the new subway line finally opened and my commute is twenty minutes shorter now",
            "tried the viral tomato pasta recipe and honestly it tastes like ketchup soup",
        )
    ]
    uses_template = f"Q: what did you eat? {template}"
    leaks_item = "Random chat. " + items[1] + " More chat."
    index = decontam.build_eval_index({"bench": items}, 13)
    assert index.boilerplate["bench"] > 0
    assert decontam.contamination([uses_template, leaks_item], index, QualityDecontam(eval_sets=[])) == [None, "bench"]
    raw = decontam.build_eval_index({"bench": items}, 13, boilerplate_min_items=0)
    assert decontam.contamination([uses_template], raw, QualityDecontam(eval_sets=[], boilerplate_min_items=0)) == ["bench"]


def test_decontaminates_real_sns_bench_and_transbench_items(eval_texts, eval_index, shakespeare):
    zh_item = eval_texts["sns_transbench/test"][1]
    assert zh_item == "我作为一个间谍很糟糕，请别告诉我的上司🥹"
    planted = {
        "sns_bench/Note-MRC-simple": eval_texts["sns_bench/Note-MRC-simple"][0],
        "sns_bench/Note-Gender": eval_texts["sns_bench/Note-Gender"][0],
        "sns_bench/Note-Taxonomy-single": eval_texts["sns_bench/Note-Taxonomy-single"][5],
        "sns_bench/Note-QueryCorr-explain": eval_texts["sns_bench/Note-QueryCorr-explain"][2],
        # This note is in three test items (13, 14, 114) that differ in their answer: near-duplicate
        # items count as one, so its n-grams are item content, not template, and stay indexed.
        "sns_bench/Note-Hashtag-single": eval_texts["sns_bench/Note-Hashtag-single"][13],
    }
    docs = list(shakespeare[:40])  # unrelated: all kept
    for i, item in enumerate(planted.values()):
        # The item's note part only, embedded inside longer unrelated text.
        note = item.split("\n", 1)[1][:600]
        docs.append(shakespeare[100 + i] + "\n" + note + "\n" + shakespeare[200 + i])
    docs.append("今天我们去公园散步，天气非常好。" + zh_item + "晚上回家做了一顿丰盛的晚餐，大家都很开心。")
    docs.append("今天我们去公园散步，天气非常好。晚上回家做了一顿丰盛的晚餐，大家都很开心。")
    kept, dropped = decontam.decontaminate(docs, eval_index, QualityDecontam(eval_sets=[]))
    assert kept == list(range(40)) + [46]
    assert dropped == Counter({**{name: 1 for name in planted}, "sns_transbench/test": 1})


def test_shared_prompt_templates_do_not_flag_train_items(eval_texts):
    """SNS-Bench CHLW train items share the test items' prompt template, in variants."""
    train = json.loads((DATA / "sns_bench" / "train" / "Note-CHLW.json").read_text(encoding="utf-8"))
    texts = [rec["content"] for rec in train]
    sets = {"chlw": eval_texts["sns_bench/Note-CHLW"]}
    with_rule = decontam.contamination(texts, decontam.build_eval_index(sets, 13), QualityDecontam(eval_sets=[]))
    raw_index = decontam.build_eval_index(sets, 13, boilerplate_min_items=0)
    without = decontam.contamination(texts, raw_index, QualityDecontam(eval_sets=[], boilerplate_min_items=0))
    flagged, flagged_raw = sum(h is not None for h in with_rule), sum(h is not None for h in without)
    print(f"CHLW train items flagged: {flagged} with the template rule, {flagged_raw} without")
    assert flagged <= 3 and flagged_raw >= 150


def test_decontam_errors(eval_index, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.quality\.decontam\.ngram is 8 but .* built with 13"):
        decontam.decontaminate(["x"], eval_index, QualityDecontam(eval_sets=[], ngram=8))
    with pytest.raises(ConfigError, match=r"data\.quality\.decontam\.boilerplate_min_items is 0"):
        decontam.decontaminate(["x"], eval_index, QualityDecontam(eval_sets=[], boilerplate_min_items=0))
    with pytest.raises(ConfigError, match=r"data\.quality\.decontam\.eval_sets is empty"):
        decontam.load_eval_index(QualityDecontam(eval_sets=[]))
    with pytest.raises(ConfigError, match=r"data\.quality\.decontam\.eval_sets"):
        decontam.eval_texts_from_path(tmp_path / "notes.parquet")
    with pytest.raises(DataError, match="not a folder of SNS-Bench"):
        decontam.eval_texts_from_sns_bench(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"en": "a",\n "zh": }]', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.json:2: not valid JSON"):
        decontam.eval_texts_from_path(bad)


def test_eval_set_loaders(eval_texts, tmp_path):
    assert len(eval_texts) == 13
    assert len(eval_texts["sns_bench/Note-CHLW"]) == 54
    assert len(eval_texts["sns_transbench/test"]) == 1040
    first_mrc = eval_texts["sns_bench/Note-MRC-simple"][0]
    assert first_mrc.startswith("K4 Building Business Hours\n🌟") and first_mrc.endswith(
        "20:00\\n4th Floor 12:00-22:00']"
    )
    user = tmp_path / "held_out.jsonl"
    user.write_text('{"text": "a held out document"}\n\n{"text": "another one"}\n', encoding="utf-8")
    assert decontam.eval_texts_from_path(user) == {"held_out": ["a held out document", "another one"]}
