"""Batched greedy generation: left padding changes nothing, stop tokens stop, the store resumes safely."""

from __future__ import annotations

import json

import pytest
import torch

from redone.errors import RedoneError
from redone.eval.generate import (
    HFGenerator,
    Job,
    PredictionStore,
    Request,
    generate_resumable,
    plan_batches,
    prompt_sha,
    render_prompt,
    stop_token_ids,
)

PROMPTS = [
    "Hi",
    "Classify this note about hiking in the mountains near Chengdu: Food, Travel, Sports?",
    "Translate into English: 今天的晚霞太美了",
    "What is the capital of France? Answer in one word, please, and nothing else at all.",
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The tiny model with large random weights: its greedy output depends on the prompt.

    (At the default init it answers "\n" to everything, and padding bugs could not show.)
    """
    from redone.model import load_model

    model = load_model(str(tiny_model_dir), attn_implementation="sdpa").eval()
    rng = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.copy_(torch.randn(param.shape, generator=rng) * 0.5)
    return model


def _messages(text: str) -> list[dict]:
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}]


def _requests(n_new: int = 6) -> list[Request]:
    return [Request(f"k{i}", _messages(p), n_new) for i, p in enumerate(PROMPTS)]


def _reference_ids(model, tokenizer, text: str, n_new: int) -> list[int]:
    """Greedy continuation of one unpadded prompt, with no stop token at all."""
    ids = tokenizer(render_prompt(tokenizer, _messages(text)), add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, do_sample=False, max_new_tokens=n_new, eos_token_id=None,
                             pad_token_id=tokenizer.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def test_left_padded_batch_equals_one_by_one(tiny, tokenizer):
    lengths = {len(tokenizer(render_prompt(tokenizer, _messages(p)), add_special_tokens=False)["input_ids"])
               for p in PROMPTS}
    assert len(lengths) == len(PROMPTS)  # the batch really is padded
    batched = HFGenerator(tiny, tokenizer, batch_size=4, progress=False).generate(_requests())
    single = HFGenerator(tiny, tokenizer, batch_size=1, progress=False).generate(_requests())
    assert [g.key for g in batched] == ["k0", "k1", "k2", "k3"]  # results come back in request order
    assert [(g.text, g.new_tokens) for g in batched] == [(g.text, g.new_tokens) for g in single]
    assert len({g.text for g in batched}) == len(PROMPTS)  # the model does read its prompt


def test_stops_at_a_stop_token_mid_batch(tiny, tokenizer):
    gen = HFGenerator(tiny, tokenizer, batch_size=4, progress=False)
    ref = _reference_ids(tiny, tokenizer, PROMPTS[1], 8)
    stop_at = next(j for j in range(1, 8) if ref[j] not in ref[:j])
    gen.stop_ids = [ref[stop_at]]
    out = gen.generate(_requests(8))[1]
    assert out.new_tokens == stop_at and not out.hit_budget
    assert out.text == tokenizer.decode(ref[:stop_at], skip_special_tokens=True)
    gen.stop_ids = [next(t for t in range(3, 100) if t not in ref)]
    unstopped = gen.generate(_requests(8))[1]
    assert unstopped.new_tokens == 8 and unstopped.hit_budget


def test_stops_at_eos(tiny_model_dir, tokenizer):
    from redone.model import load_model

    model = load_model(str(tiny_model_dir)).eval()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():  # every logit 0 except EOS: greedy picks EOS at once
        model.lm_head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
        model.lm_head.bias[eos] = 1.0
    outs = HFGenerator(model, tokenizer, batch_size=2, progress=False).generate(_requests(5))
    assert all(g.text == "" and g.new_tokens == 0 and not g.hit_budget for g in outs)


def test_stop_tokens_include_end_of_turn(tokenizer):
    ids = stop_token_ids(tokenizer)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in ids
    assert tokenizer.eos_token_id in ids


def test_plan_batches_groups_by_budget_and_length():
    lengths = [5, 50, 7, 40, 6, 60]
    budgets = [4, 4, 4, 256, 4, 256]
    batches = plan_batches(lengths, budgets, batch_size=2)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len({budgets[i] for i in b}) == 1 and len(b) <= 2 for b in batches)
    assert batches == [[5, 3], [1, 2], [4, 0]]
    with pytest.raises(RedoneError, match="batch_size"):
        plan_batches(lengths, budgets, 0)


def test_prompt_longer_than_context_raises(tiny, tokenizer):
    gen = HFGenerator(tiny, tokenizer, progress=False)
    gen.max_positions = 20
    with pytest.raises(RedoneError, match="k1.*context of 20"):
        gen.generate(_requests())


class CountingGenerator:
    """Stands in for a model: echoes keys, counts what it was asked, can 'crash' after some batches."""

    def __init__(self, crash_after: int | None = None, batch_size: int = 2):
        self.asked: list[str] = []
        self.crash_after = crash_after
        self.batch_size = batch_size

    def generate(self, requests, on_batch=None, stats=None):
        from redone.eval.generate import Generation

        for n, start in enumerate(range(0, len(requests), self.batch_size)):
            if self.crash_after is not None and n == self.crash_after:
                raise KeyboardInterrupt
            batch = [Generation(r.key, f"answer to {r.key}", 3, False) for r in requests[start:start + self.batch_size]]
            self.asked += [g.key for g in batch]
            if on_batch:
                on_batch(batch)


def _jobs(n: int = 6, sha: str = "s") -> list[Job]:
    return [Job(Request(f"k{i}", _messages(str(i)), 8), sha, {"index": i}) for i in range(n)]


def test_interrupted_generation_resumes_without_regenerating(tmp_path):
    path = tmp_path / "p.predictions.jsonl"
    header = {"model_path": "m", "dtype": "float32"}
    with pytest.raises(KeyboardInterrupt):
        generate_resumable(CountingGenerator(crash_after=2), _jobs(), PredictionStore(path, header))
    assert len(path.read_text().splitlines()) == 1 + 4  # header + the two finished batches

    again = CountingGenerator()
    preds, stats = generate_resumable(again, _jobs(), PredictionStore(path, header))
    assert again.asked == ["k4", "k5"]
    assert stats["reused"] == 4 and stats["generated"] == 2
    assert [preds[f"k{i}"].prediction for i in range(6)] == [f"answer to k{i}" for i in range(6)]

    # A changed prompt (or budget) is regenerated; unchanged ones are not.
    changed = _jobs()
    changed[0] = Job(Request("k0", _messages("0"), 8), "other", {})
    third = CountingGenerator()
    generate_resumable(third, changed, PredictionStore(path, header))
    assert third.asked == ["k0"]


def test_store_refuses_another_run_and_survives_a_torn_line(tmp_path):
    path = tmp_path / "p.jsonl"
    header = {"model_path": "m", "dtype": "float32"}
    generate_resumable(CountingGenerator(), _jobs(2), PredictionStore(path, header))
    with pytest.raises(RedoneError, match="different run.*dtype"):
        PredictionStore(path, {"model_path": "m", "dtype": "bfloat16"}).load()

    with path.open("a") as handle:
        handle.write('{"key": "k2", "predic')  # killed mid-write
    store = PredictionStore(path, header)
    assert set(store.load()) == {"k0", "k1"}
    counting = CountingGenerator()
    preds, _ = generate_resumable(counting, _jobs(3), store)
    assert counting.asked == ["k2"] and preds["k2"].prediction == "answer to k2"
    assert [json.loads(line).get("key") for line in path.read_text().splitlines()] == [None, "k0", "k1", "k2"]

    path.write_text(path.read_text().replace('"key": "k0"', '"key": k0', 1))
    with pytest.raises(RedoneError, match="not valid JSON"):
        PredictionStore(path, header).load()


def test_prompt_sha_is_stable():
    assert prompt_sha("abc") == prompt_sha("abc") != prompt_sha("abd")
