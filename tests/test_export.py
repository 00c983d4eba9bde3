"""GGUF export: the written file loads back through transformers' GGUF loader with the same weights,
logits and tokenizer as the source model dir."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from redone.errors import RedoneError
from redone.export import add_export_parser, export_gguf, rope_interleave

TORCH_DTYPE = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
# Logits vs the fp32 source, as a fraction of the largest |logit|: f32 is exact, f16 keeps ~11 bits of
# mantissa and bf16 8, so the weight rounding moves logits by about that much (measured on the tiny model:
# f16 3.6e-4, bf16 3.2e-3 absolute; SmolLM2 f16 0.041, bf16 0.28).
RELATIVE_TOLERANCE = {"f32": 0.0, "f16": 5e-3, "bf16": 4e-2}
DATA = Path(__file__).resolve().parent.parent / "data"
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                 "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
TEXTS = ["Hello 2024 world!  你好 #tag 😀\n\n  x", "Note Title: 夏日 Trip\nCandidates: A, B, C\nAnswer:"]


def load_gguf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)


def reference(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Tag this note: 2024 summer trip 杭州 😀"}],
                                           add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    return model, ids


def rounded(model, dtype: str) -> dict[str, torch.Tensor]:
    """The source weights as the file stores them: 2-D tensors in ``dtype``, 1-D ones in f32."""
    return {k: v.to(TORCH_DTYPE[dtype]).float() if v.dim() > 1 else v for k, v in model.state_dict().items()}


def assert_round_trip(model_dir, gguf_path, dtype: str) -> float:
    model, ids = reference(model_dir)
    loaded = load_gguf(gguf_path)
    assert type(loaded).__name__ == type(model).__name__
    expected = rounded(model, dtype)
    got = loaded.state_dict()
    assert set(got) == set(expected)
    unequal = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert unequal == []  # every tensor, Q/K rotary reordering included, comes back bit for bit
    with torch.no_grad():
        source_logits = model(ids).logits
        gguf_logits = loaded(ids).logits
        model.load_state_dict(expected)
        rounded_logits = model(ids).logits
    assert torch.allclose(gguf_logits, rounded_logits, atol=1e-5, rtol=0)
    diff = (gguf_logits - source_logits).abs().max().item()
    assert diff <= RELATIVE_TOLERANCE[dtype] * source_logits.abs().max().item() + 1e-6
    assert gguf_logits[0, -1].argmax() == source_logits[0, -1].argmax()
    return diff


def small_vocab_model(out, model_type: str, seed: int = 0):
    """A random 2-layer model with a 400-token byte-level BPE (trained here in about a second) and
    a ChatML chat template: the GGUF loader parses every token in Python, so a small vocabulary keeps
    the dtype sweep fast. SmolLM2's own 49k vocabulary is tested on ``tiny_model_dir``."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([(DATA / "general" / "tinyshakespeare.txt").read_text()[:50_000]], vocab_size=400,
                            min_frequency=2, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    shape = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                 bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    if model_type == "llama":
        model = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=True))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**shape, tie_word_embeddings=False))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory):
    return small_vocab_model(tmp_path_factory.mktemp("small") / "llama", "llama")


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_llama_round_trip_per_dtype(small_llama, tmp_path, dtype):
    out = export_gguf(small_llama, tmp_path / f"m-{dtype}.gguf", dtype)
    diff = assert_round_trip(small_llama, out, dtype)
    if dtype == "f32":
        assert diff == 0.0
    weights = small_llama.joinpath("model.safetensors").stat().st_size
    # 2-D weights halve in f16/bf16; norms stay f32 and the metadata (vocab, merges, template) is extra.
    assert out.stat().st_size < (weights if dtype == "f32" else weights / 2) + 64 * 1024


def test_tiny_model_round_trip_and_tokenizer(tiny_model_dir, tmp_path):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    path = export_gguf(tiny_model_dir, tmp_path / "tiny.gguf")  # default f16
    assert_round_trip(tiny_model_dir, path, "f16")
    source = AutoTokenizer.from_pretrained(tiny_model_dir)
    loaded = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    chat = source.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    for text in [*TEXTS, chat]:
        assert loaded(text)["input_ids"] == source(text)["input_ids"]
    assert loaded.chat_template == source.chat_template
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (1, 2, 2)

    reader = GGUFReader(path)
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "gpt2"  # this tokenizer.json splits with GPT-2's rule
    assert len(fields["tokenizer.ggml.tokens"].data) == 49152
    merges = json.loads((tiny_model_dir / "tokenizer.json").read_text())["model"]["merges"]
    assert len(fields["tokenizer.ggml.merges"].data) == len(merges)
    types = fields["tokenizer.ggml.token_type"].contents()
    assert types[:17] == [3] * 17 and set(types[17:]) == {1}  # <|endoftext|>, <|im_start|>, ... are control
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False
    assert fields["tokenizer.chat_template"].contents() == source.chat_template
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied embeddings: llama.cpp reuses token_embd


def test_qwen2_round_trip(tmp_path):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    model_dir = small_vocab_model(tmp_path / "qwen2", "qwen2", seed=1)
    out = export_gguf(model_dir, tmp_path / "qwen2.gguf", "bf16")
    assert_round_trip(model_dir, out, "bf16")
    reader = GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == "qwen2"
    # transformers gives a qwen2 dir Qwen2's split rule; the file must say so for llama.cpp.
    assert reader.fields["tokenizer.ggml.pre"].contents() == "qwen2"
    assert {"output.weight", "blk.0.attn_q.bias"} <= {t.name for t in reader.tensors}
    loaded = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    source = AutoTokenizer.from_pretrained(model_dir)
    for text in TEXTS:
        assert loaded(text)["input_ids"] == source(text)["input_ids"]


def test_rope_interleave_pairs_the_halves():
    # 2 heads of 4 rows: within a head rows (0, 2) and (1, 3) are rotated together by HF -> adjacent pairs.
    weight = torch.arange(8.0).reshape(8, 1)
    assert rope_interleave(weight, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    bias = torch.arange(8.0)
    assert rope_interleave(bias, 2).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_existing_output_refused_unless_force(small_llama, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(RedoneError, match="exists; pass --force"):
        export_gguf(small_llama, out, "f16")
    assert out.read_bytes() == b"keep me"
    export_gguf(small_llama, out, "f16", force=True)
    assert out.read_bytes()[:4] == b"GGUF"
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]  # no temp file left behind


def test_unsupported_architecture_is_named(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(RedoneError, match=r"^export: architecture 'gpt2' .* not supported .*llama, qwen2$"):
        export_gguf(tmp_path / "gpt2", tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_rope_scaling_refused(small_llama, tmp_path):
    import shutil

    model_dir = tmp_path / "scaled"
    shutil.copytree(small_llama, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(RedoneError, match="rope_type 'linear'"):
        export_gguf(model_dir, tmp_path / "out.gguf")


def test_cli_parser_runs_export(small_llama, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "gguf", "--model", str(small_llama), "--out", str(tmp_path / "a.gguf"),
                              "--dtype", "bf16"])
    assert args.func(args) == 0
    assert "a.gguf" in capsys.readouterr().out and (tmp_path / "a.gguf").exists()


@pytest.mark.slow
def test_smollm2_round_trip(tmp_path):
    from redone.model import resolve_model

    model_dir = resolve_model("smollm2-135m-instruct")
    out = export_gguf(model_dir, tmp_path / "smollm2-f16.gguf", "f16")
    assert 250 * 2**20 < out.stat().st_size < 270 * 2**20  # 134.5 M params in f16 (measured 258.3 MiB)
    assert_round_trip(model_dir, out, "f16")
