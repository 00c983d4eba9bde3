"""Preference accuracy: per-completion log-probs by hand, the held-out pair sets, the counting, the bench."""

from __future__ import annotations

import pytest
import torch

from redone.data.dpo import Pair
from redone.eval.perplexity import per_sequence_nll, sequence_nll
from redone.eval.preference import completion_logprobs, hh_pairs, sns_pairs, summarise
from redone.eval.runner import evaluate
from redone.sns.scoring import SNS_FILES
from tests.conftest import DATA


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from redone.model import load_model

    return load_model(str(tiny_model_dir)).eval()


def _logprob(model, ids: list[int], start: int) -> float:
    """log p(ids[start:] | ids[:start]) from one plain forward pass of the whole sequence."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    return sum(logp[t - 1, ids[t]].item() for t in range(start, len(ids)))


def test_per_sequence_nll_is_each_sequence_alone_and_sums_to_sequence_nll(model, tokenizer):
    texts = ["a short one", "a somewhat longer sequence of words to pad the others against", "mid length text"]
    sequences = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        sequences.append((ids, [False] + [True] * (len(ids) - 1)))
    batched = per_sequence_nll(model, sequences, batch_size=3)
    for (ids, _), (nll, count) in zip(sequences, batched):
        assert count == len(ids) - 1
        assert nll == pytest.approx(-_logprob(model, ids, 1), rel=1e-4)
    total, count = sequence_nll(model, sequences, batch_size=2)
    assert total == pytest.approx(sum(n for n, _ in batched), rel=1e-5)
    assert count == sum(c for _, c in batched)


def test_completion_logprobs_score_only_the_reply_given_the_prompt(model, tokenizer):
    from redone.data.dpo import encode_pair

    pair = Pair([{"role": "user", "content": "Which colour is the sky?"}],
                [{"role": "assistant", "content": "Blue."}],
                [{"role": "assistant", "content": "The sky is green, obviously, on most days."}])
    (chosen, n_chosen, rejected, n_rejected), = completion_logprobs(model, tokenizer, [pair])
    encoded = encode_pair(tokenizer, pair, max_len=None)
    p = len(encoded.prompt)
    assert (n_chosen, n_rejected) == (len(encoded.chosen), len(encoded.rejected))
    assert chosen == pytest.approx(_logprob(model, encoded.prompt + encoded.chosen, p), rel=1e-4)
    assert rejected == pytest.approx(_logprob(model, encoded.prompt + encoded.rejected, p), rel=1e-4)


def test_summarise_counts_mean_and_sum_rankings_separately():
    pairs = [Pair([], [], [], kind=k) for k in ("given", "given", "other_label", "other_label")]
    # (chosen sum, tokens, rejected sum, tokens): the first is right both ways; the second is right per
    # token only (a long chosen reply); the third wrong both ways; the fourth a tie (wrong).
    scores = [(-2.0, 2, -6.0, 2), (-10.0, 10, -3.0, 1), (-5.0, 1, -1.0, 1), (-4.0, 2, -4.0, 2)]
    out = summarise(scores, pairs, "test")
    assert out["accuracy"] == 50.0 and out["accuracy_sum"] == 25.0 and out["n"] == 4
    assert out["margin"] == pytest.approx((2.0 + 2.0 - 4.0 + 0.0) / 4)
    assert out["by_kind"] == {"given": {"accuracy": 100.0, "n": 2}, "other_label": {"accuracy": 0.0, "n": 2}}


def test_held_out_pairs_come_from_the_test_splits():
    hh = hh_pairs(DATA, 5)
    assert len(hh) == 5 and all(p.where.startswith(str(DATA / "preference/hh_rlhf_harmless_test.jsonl")) for p in hh)
    assert all(p.prompt[-1]["role"] == "user" and p.chosen != p.rejected for p in hh)
    sns = sns_pairs(DATA, 24, "redone", 500)
    files = {p.where.split(".json:")[0].rsplit("/", 1)[-1] for p in sns}
    assert "/sns_bench/test/" in sns[0].where and len(files) >= 10 and set(files) <= set(SNS_FILES)
    assert all(p.chosen != p.rejected for p in sns)


def test_the_preference_bench_ranks_the_asked_number_of_pairs(tiny_model_dir):
    result = evaluate(str(tiny_model_dir), ["preference"], pref_pairs=6, batch_size=4, progress=False)
    section = result["preference"]
    assert section["hh"]["n"] == 6 and section["sns"]["n"] == 6
    assert section["accuracy"] == pytest.approx((section["hh"]["accuracy"] + section["sns"]["accuracy"]) / 2)
    for key in ("hh", "sns"):
        assert section[key]["accuracy"] in {100 * k / 6 for k in range(7)}
