"""A tiny random model whose greedy answers differ from prompt to prompt (tests of predict and chat).

``conftest.tiny_model_dir`` (tied embeddings, init std 0.02) answers every SNS prompt with the same run of
newlines: a resume or chat test on it could not tell one record's answer from another's. Untied output
weights with init std 0.1 give prompt-dependent text at the same size and speed.
"""

from __future__ import annotations

from pathlib import Path


def make_varied_model(out_dir: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from redone.model import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
        tie_word_embeddings=False, initializer_range=0.1, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def greedy_texts(model_dir: Path, conversations: list[list[dict]], budget: int) -> list[str]:
    """Reference answers: the eval generator (greedy, KV cache) on the given chat messages."""
    from redone.eval.generate import HFGenerator, Request
    from redone.model import load_model, load_tokenizer

    generator = HFGenerator(load_model(str(model_dir)), load_tokenizer(str(model_dir)), batch_size=4, progress=False)
    requests = [Request(str(i), messages, budget) for i, messages in enumerate(conversations)]
    return [g.text for g in generator.generate(requests)]
