"""Tests for redone.data.quality: filters, exact/near dedup, decontamination, curate() report.

Every count is asserted exactly on crafted inputs; the real SNS-Bench / TransBench data checks that
the defaults keep real emoji- and hashtag-heavy SNS text and catch real benchmark items.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from redone.data import quality as q
from redone.errors import ConfigError, DataError, RedoneError
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
    texts = q.eval_texts_from_sns_bench(DATA / "sns_bench" / "test")
    texts.update(q.eval_texts_from_transbench(DATA / "sns_transbench" / "test.json"))
    return texts


@pytest.fixture(scope="module")
def eval_index(eval_texts) -> q.EvalIndex:
    return q.build_eval_index(eval_texts, 13)


# ------------------------------------------------------------------------------------------------
# Filters
# ------------------------------------------------------------------------------------------------

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
    kept, reasons = q.apply_filters(texts, q.FilterConfig())
    assert kept == list(range(len(KEPT_SNS)))
    assert reasons == Counter(reason for _, reason in crafted)


def test_first_failing_filter_is_the_reason():
    # Too short AND url-only: too_short comes first in the fixed order.
    assert q.filter_reasons(["http://a.b", "http://example.com/a/long/path/x"], q.FilterConfig()) == [
        "too_short",
        "url_only",
    ]


def test_enabled_and_switches_select_filters():
    texts = ["ok", "https://example.com/a/long/path/x", "#Travel[Topic]# #Xiamen[Topic]#"]
    assert q.apply_filters(texts, q.FilterConfig(enabled=["too_short"]))[1] == Counter(too_short=1)
    assert q.apply_filters(texts, q.FilterConfig(drop_url_only=False, drop_hashtag_only=False)) == (
        [1, 2],
        Counter(too_short=1),
    )


def test_script_filter():
    texts = [
        "Going to the beach this weekend 🏖️ with friends",
        "这个周末和朋友们一起去海边玩，太开心了",
        "Weekend trip 周末去海边",
    ]
    latin = q.FilterConfig(script="latin", min_script_share=0.5)
    cjk = q.FilterConfig(script="cjk", min_script_share=0.5)
    mixed = q.FilterConfig(script="mixed", min_script_share=0.9)
    assert q.apply_filters(texts, latin) == ([0, 2], Counter(script=1))  # "Weekend trip" is 11 of 16 letters
    assert q.apply_filters(texts, cjk) == ([1], Counter(script=2))
    assert q.apply_filters(texts + ["Выходные на море с друзьями, было здорово"], mixed) == (
        [0, 1, 2],
        Counter(script=1),
    )


def test_filter_measures():
    assert q.symbol_ratio("🌟🔥💰 Best deals 👉 here ✅✅ #sale [Topic] ~ (50% off)!") == pytest.approx(
        1 / 41
    )  # "~"
    assert q.symbol_ratio("┌──┐ ab") == pytest.approx(4 / 6)
    assert q.repeated_line_ratio("a b\n———\n———\na b\nc d") == pytest.approx(1 / 3)  # separators ignored
    assert q.ngram_repetition("the title here\nthe title here and more words") == 0.0  # seen twice: normal
    assert q.ngram_repetition("ha ha ha ha ha ha") == 1.0
    assert q.ngram_repetition("好好好好好好") == 1.0  # CJK characters are tokens
    assert q.weighted_length("  好的 ok ") == 7
    assert q.script_share("abc 中文", "cjk") == pytest.approx(2 / 5)


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
            q.FilterConfig(**kwargs)


def test_real_sns_notes_survive_default_filters(sns_notes):
    kept, reasons = q.apply_filters(sns_notes, q.FilterConfig())
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
        kept, reasons = q.apply_filters(notes, q.FilterConfig())
        print(
            f"TransBench train note-content ({lang}) kept: {len(kept) / len(notes):.2%}; dropped {dict(reasons)}"
        )
        assert len(kept) / len(notes) >= floor


# ------------------------------------------------------------------------------------------------
# Dedup
# ------------------------------------------------------------------------------------------------


def test_normalise_exact():
    assert q.normalise_exact("  Hello,   WORLD!!\n😀 don't… ") == "hello world 😀 don t"
    assert q.normalise_exact("ＦＵＬＬ　width") == "full width"  # NFKC


def test_exact_dedup_catches_case_whitespace_punctuation_variants(sns_notes):
    base = sns_notes[100:110]
    planted = [
        base[2].upper(),
        "  " + base[5].replace(" ", "   \n ") + " ",
        base[5].replace(",", "").replace("!", "?") + "...",
        base[7].lower() + "!!!",
    ]
    texts = base + planted
    result = q.dedup(texts, q.DedupConfig(near=False))
    assert (result.dropped_exact, result.dropped_near) == (4, 0)
    assert result.kept == list(range(10))
    assert result.clusters == [[2, 10], [5, 11, 12], [7, 13]]
    assert result.dropped == {10: "exact", 11: "exact", 12: "exact", 13: "exact"}


def _word3(text: str) -> set[tuple[str, ...]]:
    toks = q.tokens(text)
    return set(zip(toks, toks[1:], toks[2:]))


def _distinct_notes(notes: list[str], count: int) -> list[str]:
    """Notes of 30+ tokens whose true word-3 Jaccard with every other pick is below 0.5."""
    picked, shingles = [], []
    for note in notes:
        s = _word3(note)
        if len(s) >= 30 and all(len(s & t) / len(s | t) < 0.5 for t in shingles):
            picked.append(note)
            shingles.append(s)
            if len(picked) == count:
                break
    return picked


def test_near_dedup_catches_edited_note_and_keeps_distinct_notes(sns_notes):
    distinct = _distinct_notes(sns_notes[::3], 200)
    assert len(distinct) == 200
    note = next(n for n in distinct if 120 <= len(q.tokens(n)) <= 300)
    words = note.split(" ")
    for i in (10, 40, 70):  # three words changed in a long real note
        words[i] = "zebra"
    edited = " ".join(words)
    assert 0.8 < len(_word3(note) & _word3(edited)) / len(_word3(note) | _word3(edited)) < 1.0
    texts = distinct + [edited]
    for shingle in ("word3", "char5"):
        result = q.dedup(texts, q.DedupConfig(shingle=shingle))
        assert (result.dropped_exact, result.dropped_near) == (0, 1), shingle
        assert result.clusters == [[distinct.index(note), 200]]
        assert result.kept == list(range(200))


def test_near_dedup_keeps_first_occurrence_and_is_deterministic(sns_notes):
    note = next(n for n in sns_notes if len(q.tokens(n)) > 150)
    copy = note.replace("the ", "a ", 2)
    texts = [copy, "a b c d e f g h", note]
    first = q.dedup(texts, q.DedupConfig(exact=False))
    assert first.kept == [0, 1]
    assert first.clusters == [[0, 2]]
    assert q.dedup(texts, q.DedupConfig(exact=False)) == first


def test_signatures_match_datasketch():
    from datasketch import MinHash

    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**32, size=300, dtype=np.uint64).astype(np.uint32)
    docs = np.repeat(np.arange(3), [100, 150, 50])
    ours = q.minhash_signatures(hashes, docs, 3, num_perm=64, seed=7)
    for d in range(3):
        reference = MinHash(num_perm=64, seed=7, hashfunc=lambda x: x)
        reference.update_batch([int(h) for h in hashes[docs == d]])
        assert np.array_equal(ours[d], reference.hashvalues)


def test_dedup_config_errors():
    with pytest.raises(ConfigError, match=r"data\.quality\.dedup\.shingle"):
        q.DedupConfig(shingle="chars")
    with pytest.raises(ConfigError, match=r"data\.quality\.dedup\.threshold"):
        q.DedupConfig(threshold=0)


# ------------------------------------------------------------------------------------------------
# Decontamination
# ------------------------------------------------------------------------------------------------


def test_ngram_window_is_exactly_n_words_and_n_cjk_chars():
    words = "the quick brown fox jumps over the lazy dog while seven small birds sing in the old tree".split()
    zh = "我作为一个间谍很糟糕请别告诉我的上司"
    index = q.build_eval_index({"en": [" ".join(words)], "zh": [zh]}, 13)
    cfg = q.DecontamConfig()
    docs = [
        "Intro text. " + " ".join(words[2:14]) + " and more.",  # 12 consecutive words: clean
        "Intro text. " + " ".join(words[2:15]).upper() + "!",  # 13 words, case/punct differ: hit
        "开头" + zh[:12] + "结尾",  # 12 characters: clean
        "开头，" + zh[3:16] + "。结尾",  # 13 characters: hit
    ]
    assert q.contamination(docs, index, cfg) == [None, "en", None, "zh"]


def test_short_items_are_matched_whole_and_tiny_items_skipped():
    index = q.build_eval_index({"s": ["Is Louis the only normal person in this family", "Yes"]}, 13)
    assert index.skipped_short == {"s": 1} and index.short_lengths == (9,)
    docs = [
        "lol. is louis the only normal person in this family?? asking for a friend",
        "is louis the only normal person in this house",  # 8 of the 9 tokens
        "yes, of course",
    ]
    assert q.decontaminate(docs, index, q.DecontamConfig()) == ([1, 2], Counter(s=1))


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
    index = q.build_eval_index({"bench": items}, 13)
    assert index.boilerplate["bench"] > 0
    assert q.contamination([uses_template, leaks_item], index, q.DecontamConfig()) == [None, "bench"]
    raw = q.build_eval_index({"bench": items}, 13, boilerplate_min_items=0)
    assert q.contamination([uses_template], raw, q.DecontamConfig(boilerplate_min_items=0)) == ["bench"]


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
    kept, dropped = q.decontaminate(docs, eval_index, q.DecontamConfig())
    assert kept == list(range(40)) + [46]
    assert dropped == Counter({**{name: 1 for name in planted}, "sns_transbench/test": 1})


def test_shared_prompt_templates_do_not_flag_train_items(eval_texts):
    """SNS-Bench CHLW train items share the test items' prompt template, in variants."""
    train = json.loads((DATA / "sns_bench" / "train" / "Note-CHLW.json").read_text(encoding="utf-8"))
    texts = [rec["content"] for rec in train]
    sets = {"chlw": eval_texts["sns_bench/Note-CHLW"]}
    with_rule = q.contamination(texts, q.build_eval_index(sets, 13), q.DecontamConfig())
    raw_index = q.build_eval_index(sets, 13, boilerplate_min_items=0)
    without = q.contamination(texts, raw_index, q.DecontamConfig(boilerplate_min_items=0))
    flagged, flagged_raw = sum(h is not None for h in with_rule), sum(h is not None for h in without)
    print(f"CHLW train items flagged: {flagged} with the template rule, {flagged_raw} without")
    assert flagged <= 3 and flagged_raw >= 150


def test_decontam_errors(eval_index, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.quality\.decontam\.ngram is 8 but .* built with 13"):
        q.decontaminate(["x"], eval_index, q.DecontamConfig(ngram=8))
    with pytest.raises(ConfigError, match=r"data\.quality\.decontam\.boilerplate_min_items is 0"):
        q.decontaminate(["x"], eval_index, q.DecontamConfig(boilerplate_min_items=0))
    with pytest.raises(ConfigError, match=r"data\.quality\.decontam\.eval_sets is empty"):
        q.load_eval_index(q.DecontamConfig())
    with pytest.raises(ConfigError, match=r"data\.quality\.decontam\.eval_sets"):
        q.eval_texts_from_path(tmp_path / "notes.parquet")
    with pytest.raises(DataError, match="not a folder of SNS-Bench"):
        q.eval_texts_from_sns_bench(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"en": "a",\n "zh": }]', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.json:2: not valid JSON"):
        q.eval_texts_from_path(bad)


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
    assert q.eval_texts_from_path(user) == {"held_out": ["a held out document", "another one"]}


# ------------------------------------------------------------------------------------------------
# curate() and its report
# ------------------------------------------------------------------------------------------------


def test_curate_report_adds_up(sns_notes, shakespeare, eval_texts, eval_index):
    notes = _distinct_notes(sns_notes[1::2], 150)
    leak = eval_texts["sns_bench/Note-Gender"][0].split("\n", 1)[1]
    speech = next(p for p in shakespeare[30:] if len(q.tokens(p)) > 150)
    web = [
        "ok",  # filter:too_short
        "https://example.com/a/long/path/to/something",  # filter:url_only
        "#Travel[Topic]# #Xiamen[Topic]#",  # filter:hashtag_only
        notes[3].upper(),  # dedup:exact (of an sns note; the sns source comes first)
        notes[4].replace(" ", "  ") + " !!",  # dedup:exact
        shakespeare[0] + "\n" + leak,  # decontam:sns_bench/Note-Gender
        "今天我们去公园散步，天气非常好。"
        + eval_texts["sns_transbench/test"][1],  # decontam:sns_transbench/test
        speech,  # kept
        speech.replace(" the ", " a ", 2),  # dedup:near (of the speech above)
    ]
    texts = notes + web + shakespeare[2:30]
    sources = ["sns"] * len(notes) + ["web"] * len(web) + ["books"] * 28
    report = q.curate(texts, sources, q.FilterConfig(), q.DedupConfig(), q.DecontamConfig(), eval_index)
    print(q.format_report(report))

    assert report.sources["web"]["dropped"] == {
        "filter:too_short": 1,
        "filter:url_only": 1,
        "filter:hashtag_only": 1,
        "dedup:exact": 2,
        "dedup:near": 1,
        "decontam:sns_bench/Note-Gender": 1,
        "decontam:sns_transbench/test": 1,
    }
    assert report.sources["web"]["kept"] == 1
    assert report.sources["books"] == {
        "docs_in": 28,
        "kept": 28,
        "chars_in": sum(map(len, shakespeare[2:30])),
        "chars_out": sum(map(len, shakespeare[2:30])),
        "dropped": {},
    }
    for stats in [*report.sources.values(), report.total]:
        assert stats["docs_in"] == stats["kept"] + sum(stats["dropped"].values())
    assert report.total["docs_in"] == len(texts)
    assert report.total["kept"] == len(report.kept)
    assert report.total["chars_out"] == sum(len(texts[i]) for i in report.kept)
    assert report.sources["sns"]["kept"] >= 145

    clusters = report.top_clusters
    assert [c["size"] for c in clusters[:3]] == [2, 2, 2]
    assert {c["kept"] for c in clusters} >= {3, 4, len(notes) + 7}
    assert all(len(s) <= 80 for c in clusters for s in c["samples"])

    table = q.format_report(report)
    assert "decontam:sns_bench/Note-Gender" in table and "top duplicate clusters" in table
    assert json.dumps(report.to_dict())  # serialisable for the run's report file


def test_curate_errors():
    with pytest.raises(RedoneError, match="2 texts but 1 source"):
        q.curate(["a", "b"], ["x"], None, None, None)
    with pytest.raises(ConfigError, match=r"eval_sets is empty"):
        q.curate(["a"], ["x"], None, None, q.DecontamConfig())
