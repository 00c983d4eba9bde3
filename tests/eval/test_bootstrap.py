"""Paired bootstrap of SNS-Bench deltas: exact on a constructed case, zero for identical rows, refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from redone.errors import RedoneError
from redone.eval.bootstrap import MemoEmbedder, paired_bootstrap
from redone.sns.scoring import gold_text
from tests.conftest import DATA


@pytest.fixture(scope="module")
def gender_items() -> list[dict]:
    return json.loads((DATA / "sns_bench" / "test" / "Note-Gender.json").read_text(encoding="utf-8"))[:8]


def flipped(answer: str) -> str:
    return "No" if answer.strip().lower().startswith("yes") else "Yes"


def test_one_better_item_matches_the_binomial_exactly(gender_items):
    # A answers every item wrong, B only item 0 right: on a resample B beats A by 100/8 points per copy
    # of item 0 drawn, and the number of copies is Binomial(8, 1/8). Gender is a one-file task, so the
    # SNS-Bench average over the tasks present is exactly the Gender accuracy.
    golds = [gold_text("Note-Gender", it) for it in gender_items]
    a = {"Note-Gender": [flipped(g) for g in golds]}
    b = {"Note-Gender": [golds[0]] + [flipped(g) for g in golds[1:]]}
    out = paired_bootstrap(a, b, {"Note-Gender": gender_items}, resamples=4000, seed=1)
    assert out["delta"] == pytest.approx(12.5)
    cdf = np.cumsum([math.comb(8, k) * (1 / 8) ** k * (7 / 8) ** (8 - k) for k in range(9)])
    low_k, high_k = int(np.searchsorted(cdf, 0.025)), int(np.searchsorted(cdf, 0.975))
    assert (low_k, high_k) == (0, 3)  # P(K=0)=0.344, P(K<=2)=0.962, P(K<=3)=0.994
    assert (out["low"], out["high"]) == (12.5 * low_k, 12.5 * high_k)
    assert out["p_le_zero"] == pytest.approx(cdf[0], abs=0.02)  # B ties A exactly when item 0 is never drawn
    assert out["items"] == 8 and out["resamples"] == 4000


def test_identical_rows_give_a_zero_interval_and_the_same_draws_for_a_seed(gender_items):
    golds = [gold_text("Note-Gender", it) for it in gender_items]
    preds = {"Note-Gender": golds[:4] + [flipped(g) for g in golds[4:]]}
    out = paired_bootstrap(preds, preds, {"Note-Gender": gender_items}, resamples=200)
    assert (out["delta"], out["low"], out["high"], out["p_le_zero"]) == (0.0, 0.0, 0.0, 1.0)
    b = {"Note-Gender": golds}
    first = paired_bootstrap(preds, b, {"Note-Gender": gender_items}, resamples=300, seed=7)
    assert paired_bootstrap(preds, b, {"Note-Gender": gender_items}, resamples=300, seed=7) == first


def test_rows_scored_on_different_items_are_refused(gender_items):
    with pytest.raises(RedoneError, match="not scored on the same SNS-Bench items"):
        paired_bootstrap({"Note-Gender": ["Yes"] * 8}, {"Note-Gender": ["Yes"] * 7}, {"Note-Gender": gender_items})


def test_memo_embedder_embeds_each_text_once():
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts])

    memo = MemoEmbedder(embed)
    assert memo(["a", "bb", "a"]).tolist() == [[1, 1], [2, 1], [1, 1]]
    assert memo(["bb", "ccc"]).tolist() == [[2, 1], [3, 1]]
    assert calls == [["a", "bb"], ["ccc"]]
