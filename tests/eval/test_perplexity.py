"""Perplexity: exp(mean NLL) by hand, window and assistant-only masks, token budgets, the held-out tail."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from redone.errors import RedoneError
from redone.eval.perplexity import (
    chat_perplexity,
    hh_dialogues,
    run_lm_eval,
    shakespeare_holdout,
    text_perplexity,
)
from tests.conftest import DATA

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer."


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from redone.model import load_model

    return load_model(str(tiny_model_dir)).eval()


def _token_nlls(model, ids: list[int]) -> list[float]:
    """-log p(ids[t] | ids[:t]) for t >= 1, from one plain forward pass."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    return [-logp[t - 1, ids[t]].item() for t in range(1, len(ids))]


def test_text_perplexity_is_exp_of_the_mean_nll(model, tokenizer):
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    nlls = _token_nlls(model, ids)
    result = text_perplexity(model, tokenizer, TEXT, context=1024)
    assert result["scored_tokens"] == len(ids) - 1
    assert result["ppl"] == pytest.approx(math.exp(sum(nlls) / len(nlls)), rel=1e-5)


def test_windows_and_token_budget(model, tokenizer):
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"][:15]
    windows = [ids[0:6], ids[6:12], ids[12:15]]  # context 6: each window's first token is not scored
    nlls = [x for w in windows for x in _token_nlls(model, w)]
    result = text_perplexity(model, tokenizer, TEXT, max_tokens=15, context=6, batch_size=2)
    assert (result["tokens"], result["windows"], result["scored_tokens"]) == (15, 3, 12)
    assert result["ppl"] == pytest.approx(math.exp(sum(nlls) / len(nlls)), rel=1e-5)


def test_chat_perplexity_scores_assistant_tokens_only(model, tokenizer):
    from redone.data.chat import encode_chat

    dialogues = [
        [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}],
        [{"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "Blue."},
         {"role": "user", "content": "Another"}, {"role": "assistant", "content": "Green, like grass."}],
    ]
    expected = []
    for messages in dialogues:
        encoded = encode_chat(tokenizer, messages)
        nlls = _token_nlls(model, encoded.ids)
        expected += [nll for t, nll in zip(range(1, len(encoded.ids)), nlls) if encoded.mask[t]]
    result = chat_perplexity(model, tokenizer, dialogues)
    assert result["scored_tokens"] == len(expected) and result["dialogues"] == 2
    assert result["ppl"] == pytest.approx(math.exp(sum(expected) / len(expected)), rel=1e-5)

    budget = len(expected) - 3  # the budget ends inside the second dialogue
    cut = chat_perplexity(model, tokenizer, dialogues, max_tokens=budget)
    assert cut["scored_tokens"] == budget
    assert cut["ppl"] == pytest.approx(math.exp(sum(expected[:budget]) / budget), rel=1e-5)


def test_hh_dialogues_and_empty_inputs(model, tokenizer):
    dialogues = hh_dialogues(DATA / "preference" / "hh_rlhf_harmless_test.jsonl")
    assert len(dialogues) == 441 and dialogues[0][0]["role"] == "user" and dialogues[0][-1]["role"] == "assistant"
    with pytest.raises(RedoneError, match="raise the context"):
        chat_perplexity(model, tokenizer, dialogues[:2], context=4)
    with pytest.raises(RedoneError, match="fewer than 2 tokens"):
        text_perplexity(model, tokenizer, "a")


def test_shakespeare_tail_is_held_out():
    from pathlib import Path

    from redone.data.sources import read_text_units

    path = DATA / "general" / "tinyshakespeare.txt"
    tail, head = shakespeare_holdout(path)
    paragraphs = read_text_units(Path(path), "paragraph")
    assert head == 6499 and len(paragraphs) == 7222  # a CPT source with `limit: 6499` never sees the tail
    assert tail == "\n\n".join(paragraphs[head:])
    assert paragraphs[head - 1] not in tail


@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is not None, reason="lm-eval is installed")
def test_lm_eval_hook_says_it_is_not_installed():
    with pytest.raises(RedoneError, match="pip install lm-eval"):
        run_lm_eval("model", ["hellaswag"])
    with pytest.raises(RedoneError, match="needs tasks"):
        run_lm_eval("model", [])


def test_sns_heldout_notes_are_test_notes_unseen_in_training(tiny_model_dir):
    from redone.data.decontam import build_eval_index, contamination, eval_texts_from_sns_bench
    from redone.data.sources import sns_bench_documents
    from redone.eval.perplexity import documents_perplexity, sns_heldout_documents
    from redone.model import load_model, load_tokenizer
    from tests.conftest import DATA

    notes, dropped = sns_heldout_documents(str(DATA))
    test_notes = sns_bench_documents(DATA / "sns_bench" / "test", [])
    train_notes = set(sns_bench_documents(DATA / "sns_bench" / "train", []))
    assert set(notes) <= set(test_notes) and not set(notes) & train_notes
    assert dropped > 0 and len(notes) > 1000  # the shipped train split overlaps the test split
    assert not any(n.lstrip().startswith("Comment:") for n in notes)  # CHLW templates left out
    # Re-check the guarantee independently: no kept note shares a 13-gram with a train item.
    from redone.config.schema import QualityDecontam

    train = [t for texts in eval_texts_from_sns_bench(DATA / "sns_bench" / "train").values() for t in texts]
    hits = contamination(list(notes[:200]), build_eval_index({"train": train}, 13), QualityDecontam(eval_sets=[]))
    assert hits == [None] * 200
    model, tokenizer = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    out = documents_perplexity(model, tokenizer, list(notes), max_tokens=300, context=64)
    assert out["scored_tokens"] == 300 and out["documents"] >= 5 and out["ppl"] > 1
