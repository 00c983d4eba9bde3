"""``mode="official"`` against scores recorded from the official SNS-Bench code, item by item.

fixtures/official_cases.json holds constructed (file, items, predictions) cases, one or more per file,
covering each official quirk; fixtures/official_expected.json holds what the OpenCompass integration of
github.com/HC-Guo/SNS-Bench (commit in its "source") returned for them, produced by
fixtures/record_official.py: each file result, each item scored alone, and per-item values captured from
the official helpers (BLEU, ROUGE, option F1/EM, ANLS, cosine). Our official mode must reproduce every one
of those numbers to 1e-9. Two more sections record where we differ on purpose (a safe literal parse
instead of eval) and where the official code raises instead of scoring.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from redone.sns import scoring
from redone.sns.scoring import item_scores, parsed_ok, score_file

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOL = 1e-9


@cache
def fixture(section: str) -> list[tuple[dict, dict]]:
    """(case, recorded) pairs of one section."""
    cases = json.loads((FIXTURES / "official_cases.json").read_text(encoding="utf-8"))
    recorded = json.loads((FIXTURES / "official_expected.json").read_text(encoding="utf-8"))
    pairs = list(zip(cases[section], recorded[section]))
    assert [c["id"] for c, _ in pairs] == [r["id"] for r in recorded[section]]
    return pairs


def get(section: str, case_id: str) -> tuple[dict, dict]:
    return next((c, r) for c, r in fixture(section) if c["id"] == case_id)


def case_ids(section: str) -> list[str]:
    return [c["id"] for c, _ in fixture(section)]


def toy_embedder(texts):
    """The recording's stand-in for bge-large-en-v1.5: one-hot of len(text) % 8."""
    return np.eye(8)[[len(t) % 8 for t in texts]]


def ours(case: dict, predictions=None, items=None) -> dict:
    embedder = toy_embedder if case["file"] == "Note-QueryGen" else None
    return score_file(
        case["file"],
        predictions or case["predictions"],
        items or case["items"],
        mode="official",
        embedder=embedder,
    )


def official_metrics(file: str, official: dict, n: int) -> dict[str, float]:
    """Our metric names -> the official result's numbers, per file."""
    if file in ("Note-Taxonomy-single", "Note-Hashtag-single", "Note-QueryCorr-explain", "Note-Gender"):
        return {"accuracy": official["accuracy"]}
    if file == "Note-Taxonomy-multiple":
        return {"accuracy": official["score"]}
    if file in ("Note-Hashtag-multiple", "Note-NER"):
        return {"micro_f1": official["f1"]}
    if file == "Note-QueryCorr-topic":
        return {f"f1_level_{level}": official[f"level({level})-f1"] for level in scoring.TOPIC_LEVELS}
    if file == "Note-CHLW":
        return {"micro_f1": official["f1"]}
    if file == "Note-MRC-simple":
        names = {
            "existence_f1": "f1",
            "bleu": "blue",
            "rouge1": "rouge-1",
            "rouge2": "rouge-2",
            "rougeL": "rouge-L",
        }
        out = {
            ours_name: official[f"total-{name}" if name == "f1" else name]
            for ours_name, name in names.items()
        }
        out.update({f"success_{k}": official[f"success-{v}"] for k, v in names.items()})
        out.update({k: official[f"total-{k}"] * n / 100 for k in ("tp", "tn", "fp", "fn")})
        return out
    if file == "Note-MRC-complex":
        names = {"existence_f1": "total-f1", "option_f1": "option-f1", "option_em": "option-em"}
        return {
            **{k: official[v] for k, v in names.items()},
            **{f"success_{k}": official[f"success-{v}"] for k, v in names.items()},
        }
    return {}


def test_fixture_names_the_official_source():
    recorded = json.loads((FIXTURES / "official_expected.json").read_text(encoding="utf-8"))
    source = recorded["source"]
    assert source["repository"] == "github.com/HC-Guo/SNS-Bench"
    assert source["commit"] == "fbe9840231412881aba2aa09515fa2317cfd21c0"
    assert "nltk 3.8" in source["packages"] and "demoji 1.1.0" in source["packages"]
    covered = {c["file"] for c, _ in fixture("cases")}
    assert covered == set(scoring.SNS_FILES)


@pytest.mark.parametrize("case_id", case_ids("cases"))
def test_file_score_equals_official(case_id):
    case, recorded = get("cases", case_id)
    result = ours(case)
    assert result["score"] == pytest.approx(recorded["score"], abs=TOL)
    official = recorded["result"]
    if "success-ratio" in official:
        assert 100 * result["success_ratio"] == pytest.approx(official["success-ratio"], abs=TOL)
    for name, value in official_metrics(case["file"], official, len(case["items"])).items():
        assert result["metrics"][name] == pytest.approx(value, abs=TOL), name
    assert "notes" not in result


@pytest.mark.parametrize("case_id", case_ids("cases"))
def test_each_item_alone_equals_official(case_id):
    case, recorded = get("cases", case_id)
    for i, (prediction, item) in enumerate(zip(case["predictions"], case["items"])):
        expected = recorded["per_item"][i]
        assert "error" not in expected
        assert ours(case, [prediction], [item])["score"] == pytest.approx(expected["score"], abs=TOL), i


def _captured(recorded: dict, name: str) -> list:
    return [value for key, value in recorded["captured"] if key == name]


@pytest.mark.parametrize("case_id", [c for c in case_ids("cases") if "mrc_simple" in c])
def test_mrc_simple_bleu_and_rouge_per_pair_equal_official(case_id):
    """nltk BLEU and rouge-package ROUGE of every TP pair, in order, as the official helpers returned them."""
    case, recorded = get("cases", case_id)
    records = scoring._judge_mrc_simple(case["file"], case["predictions"], case["items"], "official")
    pairs = [r["consistency"] for r in records if r["status"] == "tp"]
    expected = [[b, *r] for b, r in zip(_captured(recorded, "sentence_bleu"), _captured(recorded, "rouge"))]
    assert len(pairs) == len(expected)
    for got, want in zip(pairs, expected):
        assert list(got) == pytest.approx(want, abs=TOL)
    # The RL item score of a TP pair is the mean of the existence hit and those four official values.
    scores = item_scores(case["file"], case["predictions"], case["items"], mode="official")
    tp_scores = [s for s, r in zip(scores, records) if r["status"] == "tp"]
    assert tp_scores == pytest.approx([float(np.mean([1.0, *w])) for w in expected], abs=TOL)


@pytest.mark.parametrize("case_id", [c for c in case_ids("cases") if "mrc_complex" in c])
def test_mrc_complex_option_scores_per_item_equal_official(case_id):
    case, recorded = get("cases", case_id)
    records = scoring._judge_mrc_complex(case["file"], case["predictions"], case["items"], "official")
    parsed = [[r["option_f1"], r["option_em"]] for r in records if r["status"] is not None]
    expected = [v[:2] for v in _captured(recorded, "eval_option")]
    assert len(parsed) == len(expected)
    for got, want in zip(parsed, expected):
        assert got == pytest.approx(want, abs=TOL)


def test_query_gen_anls_and_cosine_per_item_equal_official():
    case, recorded = get("cases", "querygen")
    records = scoring._judge_query_gen(
        case["file"], case["predictions"], case["items"], "official", toy_embedder
    )
    assert [100 * r["anls"] for r in records] == pytest.approx(
        _captured(recorded, "calculate_anls_score"), abs=TOL
    )
    assert [r["cos"] for r in records] == pytest.approx(_captured(recorded, "cos"), abs=TOL)
    # Fixed mode embeds and ANLS-scores the stripped first line instead: the toy cosine sees the difference.
    fixed = scoring._judge_query_gen(case["file"], case["predictions"], case["items"], "fixed", toy_embedder)
    assert [r["cos"] for r in fixed] != [r["cos"] for r in records]


@pytest.mark.parametrize("case_id", case_ids("divergences"))
def test_safe_parse_differs_from_eval_only_on_expressions(case_id):
    """eval() computes an expression inside the list ('+', a call) and parses; we refuse to run it."""
    case, recorded = get("divergences", case_id)
    assert recorded["score"] > 99  # the official code parsed and scored it
    result = ours(case)
    assert (result["score"], result["parsed"]) == (0.0, 0)
    assert not parsed_ok(case["file"], case["predictions"][0], mode="official")


@pytest.mark.parametrize("case_id", case_ids("crashes"))
def test_where_official_raises_we_score_and_note_it(case_id):
    case, recorded = get("crashes", case_id)
    assert recorded["error"].split(":")[0] in ("Exception", "ZeroDivisionError")
    result = ours(case)
    assert np.isfinite(result["score"]) and len(result["notes"]) == 1
    # Items scored alone that the official code could score still agree.
    for i, expected in enumerate(recorded["per_item"]):
        if "score" in expected:
            alone = ours(case, [case["predictions"][i]], [case["items"][i]])
            assert alone["score"] == pytest.approx(expected["score"], abs=TOL)
