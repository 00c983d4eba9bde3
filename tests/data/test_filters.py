"""Quality filters: each drops its own example, order and switches, and real SNS text survives the defaults.

Every count is asserted exactly on crafted inputs; real data checks the defaults.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from redone.config.schema import QualityFilters
from redone.config.validate import check_quality_filters
from redone.data import filters
from redone.errors import ConfigError
from tests.conftest import DATA

KEPT_SNS = [
    "Walking on the Rooftop in Slippers and Took a Lifetime Photo 😎 #Today's Share [Topic]# [Laughing R]",
    "🌟 Bought my supported light stick at COEX K4\n🔆Business Hours: 11.00-20:00\n🔆 4th Floor 12:00-22:00",
    "我作为一个间谍很糟糕，请别告诉我的上司🥹",  # 19 chars, but CJK counts double for min_chars
    "Sisters, which one looks better?? 1️⃣ or 2️⃣ 👀👀 #Daily Outfit[Topic]# @Xiaohuihui",
]


def test_each_filter_drops_its_own_example_and_keeps_sns_text():
    crafted = [
        ("ok 👍", "too_short"),
        ("好的好的", "too_short"),
        ("https://example.com/a/very/long/path?utm=1 https://t.co/xyz", "url_only"),
        ("#Travel[Topic]# #Xiamen[Topic]# [Laughing R] #ootd @someone", "hashtag_only"),
        ("┌────────┐\n│ ▓▓▓▓▓▓ │\n└────────┘ ∑∑∑ ≠ box", "symbol_ratio"),
        (
            "Sale today only\nSale today only\nSale today only\nCome and visit us at the shop",
            "repeated_lines",
        ),
        ("buy now buy now buy now buy now best price in town, buy now", "ngram_repetition"),
        ("x" * 100_001, "too_long"),
    ]
    texts = KEPT_SNS + [text for text, _ in crafted]
    kept, reasons = filters.apply_filters(texts, QualityFilters())
    assert kept == list(range(len(KEPT_SNS)))
    assert reasons == Counter(reason for _, reason in crafted)


def test_first_failing_filter_is_the_reason():
    # Too short AND url-only: too_short comes first in the fixed order.
    assert filters.filter_reasons(["http://a.b", "http://example.com/a/long/path/x"], QualityFilters()) == [
        "too_short",
        "url_only",
    ]


def test_enabled_and_switches_select_filters():
    texts = ["ok", "https://example.com/a/long/path/x", "#Travel[Topic]# #Xiamen[Topic]#"]
    assert filters.apply_filters(texts, QualityFilters(enabled=["too_short"]))[1] == Counter(too_short=1)
    assert filters.apply_filters(texts, QualityFilters(drop_url_only=False, drop_hashtag_only=False)) == (
        [1, 2],
        Counter(too_short=1),
    )


def test_script_filter():
    texts = [
        "Going to the beach this weekend 🏖️ with friends",
        "这个周末和朋友们一起去海边玩，太开心了",
        "Weekend trip 周末去海边",
    ]
    latin = QualityFilters(script="latin", min_script_share=0.5)
    cjk = QualityFilters(script="cjk", min_script_share=0.5)
    mixed = QualityFilters(script="mixed", min_script_share=0.9)
    assert filters.apply_filters(texts, latin) == ([0, 2], Counter(script=1))  # "Weekend trip" is 11 of 16 letters
    assert filters.apply_filters(texts, cjk) == ([1], Counter(script=2))
    assert filters.apply_filters(texts + ["Выходные на море с друзьями, было здорово"], mixed) == (
        [0, 1, 2],
        Counter(script=1),
    )


def test_filter_measures():
    assert filters.symbol_ratio("🌟🔥💰 Best deals 👉 here ✅✅ #sale [Topic] ~ (50% off)!") == pytest.approx(
        1 / 41
    )  # "~"
    assert filters.symbol_ratio("┌──┐ ab") == pytest.approx(4 / 6)
    assert filters.repeated_line_ratio("a b\n———\n———\na b\nc d") == pytest.approx(1 / 3)  # separators ignored
    assert filters.ngram_repetition("the title here\nthe title here and more words") == 0.0  # seen twice: normal
    assert filters.ngram_repetition("ha ha ha ha ha ha") == 1.0
    assert filters.ngram_repetition("好好好好好好") == 1.0  # CJK characters are tokens
    assert filters.weighted_length("  好的 ok ") == 7
    assert filters.script_share("abc 中文", "cjk") == pytest.approx(2 / 5)


def test_filter_config_errors_name_the_key():
    cases = [
        (dict(max_symbol_ratio=1.5), "data.quality.filters.max_symbol_ratio"),
        (dict(min_chars=50, max_chars=10), "data.quality.filters.max_chars"),
        (dict(script="greek"), "data.quality.filters.script"),
        (dict(script="latin"), "data.quality.filters.min_script_share"),
        (dict(enabled=["too_short", "nope"]), "data.quality.filters.enabled"),
        (dict(enabled=["url_only"], drop_url_only=False), "data.quality.filters.drop_url_only"),
    ]
    for kwargs, key in cases:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            check_quality_filters(QualityFilters(**kwargs))


def test_real_sns_notes_survive_default_filters(sns_notes):
    kept, reasons = filters.apply_filters(sns_notes, QualityFilters())
    share = len(kept) / len(sns_notes)
    print(
        f"SNS-Bench train note contents kept by default filters: {share:.2%} of {len(sns_notes)}; dropped {dict(reasons)}"
    )
    assert len(sns_notes) == 3868
    assert share >= 0.98


def test_real_transbench_notes_survive_default_filters():
    records = json.loads((DATA / "sns_transbench" / "train.json").read_text(encoding="utf-8"))
    for lang, floor in (("en", 0.95), ("zh", 0.88)):
        notes = [rec[lang] for rec in records if rec["source"] == "note-content"]
        kept, reasons = filters.apply_filters(notes, QualityFilters())
        print(
            f"TransBench train note-content ({lang}) kept: {len(kept) / len(notes):.2%}; dropped {dict(reasons)}"
        )
        assert len(kept) / len(notes) >= floor
