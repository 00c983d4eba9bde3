"""sdpa_segments equals stock sdpa: on packed rows (forward and gradients) and in batched generation."""

import pytest
import torch

from redone.attention import segment_starts
from redone.model import load_model, training_attention


def test_segment_starts_follow_position_restarts():
    # A row that starts mid-document (a carried tail), then two documents and a padding tail.
    positions = torch.tensor([5, 6, 7, 0, 1, 0, 1, 2, 0, 1])
    assert segment_starts(positions) == [0, 3, 5, 8, 10]
    assert segment_starts(torch.arange(6)) == [0, 6]


def test_training_attention_auto_picks_segments_for_packed_rows_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("CPU rule")
    assert training_attention("auto", packing=True) == "sdpa_segments"
    assert training_attention("auto", packing=False) == "sdpa"
    assert training_attention("sdpa", packing=True) == "sdpa"


def _packed_batch(vocab: int):
    torch.manual_seed(0)
    lengths = [[7, 20, 5], [32]]
    ids = torch.randint(0, vocab, (2, 32))
    positions = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths])
    return ids, positions


def _loss_and_grads(model, ids, positions):
    model.zero_grad()
    logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_forward_and_grads_equal_stock_sdpa(tiny_model_dir):
    stock = load_model(str(tiny_model_dir), attn_implementation="sdpa")
    segments = load_model(str(tiny_model_dir), attn_implementation="sdpa_segments")
    assert segments.config._attn_implementation == "sdpa_segments"
    ids, positions = _packed_batch(stock.config.vocab_size)
    logits_a, grads_a = _loss_and_grads(stock, ids, positions)
    logits_b, grads_b = _loss_and_grads(segments, ids, positions)
    torch.testing.assert_close(logits_b, logits_a, atol=1e-5, rtol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-5, rtol=1e-4, msg=name)
    # The check can fail: without the restarts the second row's segments would see each other.
    whole = segments(input_ids=ids, position_ids=torch.arange(32).expand(2, -1), use_cache=False).logits
    assert not torch.allclose(whole[0, 7:], logits_a[0, 7:], atol=1e-3)


def test_batched_generation_equals_stock_sdpa(tiny_model_dir, tokenizer):
    prompts = ["a short prompt", "a much longer prompt that needs left padding in the batch"]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    assert (enc["attention_mask"] == 0).any()
    outputs = []
    for attn in ("sdpa", "sdpa_segments"):
        model = load_model(str(tiny_model_dir), attn_implementation=attn)
        outputs.append(model.generate(**enc, max_new_tokens=12, do_sample=False,
                                      pad_token_id=tokenizer.pad_token_id))
    assert torch.equal(outputs[0], outputs[1])
