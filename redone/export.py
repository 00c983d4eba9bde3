"""GGUF export: a Hugging Face model dir (a redone ``final/``) -> one GGUF file for llama.cpp and Ollama.

    redone export gguf --model DIR --out model.gguf [--dtype f16|bf16|f32] [--force]

Features
- Llama-family (``model_type: llama``, e.g. SmolLM2) and Qwen2-family (``model_type: qwen2``) models,
  written with the ``gguf`` package: llama.cpp's tensor names (from ``gguf.get_tensor_name_map``), the
  architecture's hyper-parameters under its GGUF keys, and llama.cpp's rotary layout: for ``llama`` the
  rows of Q and K are reordered so each head's two rotary halves become interleaved pairs (llama.cpp
  rotates adjacent pairs; Hugging Face rotates the first half against the second). ``qwen2`` needs no
  reordering (llama.cpp rotates it the Hugging Face way).
- The tokenizer is embedded, so the file runs standalone: byte-level BPE tokens, merges, token types
  (control / user-defined / unused padding), the pre-tokenizer name llama.cpp knows for the tokenizer's
  split rule, bos/eos/unk/pad ids, whether BOS/EOS are added, and the chat template.
- ``--dtype``: f16 (default, half the size), bf16, or f32 (exact). Norms and biases (1-D tensors) stay
  f32 as llama.cpp expects. Tensors stream one at a time from the safetensors files (low memory).
- Atomic: written to a temp file beside ``--out`` and renamed; an existing ``--out`` is refused unless
  ``--force``. The card's license (README.md front matter) goes into ``general.license``.

The result loads back with ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)``: tests compare its
weights and logits with the source model's (tests/test_export.py).

Errors (``RedoneError``, one line): a model dir that is missing or has no safetensors weights, an
architecture other than llama/qwen2 (named), a setting llama.cpp would run differently (rope scaling,
sliding window, a non-SiLU activation, MLP biases, a head size the file cannot state), a tokenizer that is
not byte-level BPE or whose pre-tokenizer has no llama.cpp equivalent, more tokens than embedding rows,
f16 overflow, an existing output without ``--force``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from redone.errors import RedoneError

if TYPE_CHECKING:
    import torch

# Hugging Face model_type -> GGUF architecture name.
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}
DTYPES = ("f16", "bf16", "f32")
# torch is imported where tensors are converted, so `redone --help` and other commands never pay for it.
_TORCH_DTYPES = {"f16": "float16", "bf16": "bfloat16", "f32": "float32"}

# llama.cpp's names for the split rules of byte-level BPE tokenizers (`tokenizer.ggml.pre`).
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_NAMES = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}

# Non-persistent buffers some older checkpoints saved; llama.cpp recomputes them.
_SKIPPED_TENSORS = ("rotary_emb.inv_freq",)


@dataclass
class Vocab:
    """The tokenizer as GGUF metadata."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int] = field(default_factory=dict)  # bos/eos/unk/pad -> id
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None


# ---------------------------------------------------------------- entry point


def export_gguf(model: str | Path, out: str | Path, dtype: str = "f16", *, force: bool = False) -> Path:
    """Write ``model`` (a local HF dir or built-in name) as a GGUF file at ``out``; returns ``out``."""
    from gguf import GGUFWriter

    if dtype not in DTYPES:
        raise RedoneError(f"export: --dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    model_dir = _local_model_dir(model)
    out = Path(out)
    if out.exists() and not force:
        raise RedoneError(f"export: {out} exists; pass --force to overwrite it")
    if not out.parent.is_dir():
        raise RedoneError(f"export: output folder {out.parent} does not exist")
    config = _read_config(model_dir)
    arch = ARCHITECTURES[config.model_type]
    vocab = read_vocab(model_dir, config.vocab_size)
    weights = _weight_files(model_dir)

    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = GGUFWriter(tmp, arch)
        _add_general(writer, model_dir, dtype)
        _add_hyperparameters(writer, arch, config)
        _add_vocab(writer, vocab)
        plan = _tensor_plan(weights, arch, config)
        for gguf_name, _, shape, _ in plan:
            _add_tensor_info(writer, gguf_name, shape, dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for gguf_name, file_and_key, _, permute_heads in plan:
            writer.write_tensor_data(_converted(file_and_key, gguf_name, permute_heads, dtype))
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


# ---------------------------------------------------------------- model checks


def _local_model_dir(model: str | Path) -> Path:
    from redone.model import resolve_model

    path = Path(resolve_model(str(model)))
    if not path.is_dir():
        raise RedoneError(f"export: --model {model} is not a local model dir (download it first)")
    return path


def _read_config(model_dir: Path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type not in ARCHITECTURES:
        raise RedoneError(f"export: architecture '{config.model_type}' ({model_dir}/config.json) is not supported "
                          f"by the GGUF export; supported: {', '.join(ARCHITECTURES)}")
    _check_runs_the_same(config, model_dir)
    return config


def _check_runs_the_same(config, model_dir: Path) -> None:
    """Refuse settings llama.cpp would silently run differently from transformers."""
    where = f"{model_dir}/config.json"
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise RedoneError(f"export: rope_type '{rope['rope_type']}' ({where}) is not supported by the GGUF export "
                          "(only plain RoPE round-trips through transformers' GGUF loader)")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise RedoneError(f"export: hidden_act '{config.hidden_act}' ({where}): llama.cpp's {config.model_type} "
                          "runs SiLU")
    if getattr(config, "mlp_bias", False):
        raise RedoneError(f"export: mlp_bias: true ({where}) is not supported by the GGUF export")
    if getattr(config, "use_sliding_window", False):
        raise RedoneError(f"export: use_sliding_window: true ({where}) is not supported by the GGUF export")
    head_dim = getattr(config, "head_dim", None)
    if config.model_type == "qwen2" and head_dim and head_dim != config.hidden_size // config.num_attention_heads:
        raise RedoneError(f"export: qwen2 head_dim {head_dim} != hidden_size / num_attention_heads ({where}): "
                          "the GGUF file cannot state it")


def _weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise RedoneError(f"export: no *.safetensors weights in {model_dir} (safetensors only)")
    return files


# ---------------------------------------------------------------- metadata


def _add_general(writer, model_dir: Path, dtype: str) -> None:
    from gguf import LlamaFileType

    name = model_dir.parent.name if model_dir.name == "final" else model_dir.name
    writer.add_type("model")
    writer.add_name(name)
    file_type = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "bf16": LlamaFileType.MOSTLY_BF16}
    writer.add_file_type(int(file_type[dtype]))
    license_id = _card_license(model_dir)
    if license_id:
        writer.add_license(license_id)


def _card_license(model_dir: Path) -> str | None:
    from redone.card import read_card

    card = model_dir / "README.md"
    if not card.exists():
        return None
    try:
        metadata, _ = read_card(card)
    except RedoneError:
        return None  # a card without front matter says nothing about the license
    value = metadata.get("license")
    if value == "other":
        value = metadata.get("license_name") or value
    return str(value) if value else None


def _add_hyperparameters(writer, arch: str, config) -> None:
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_rope_dimension_count(head_dim)
    if head_dim * heads != config.hidden_size:  # llama.cpp derives the head size from these when absent
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _add_vocab(writer, vocab: Vocab) -> None:
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    for kind, token_id in vocab.special_ids.items():
        getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


# ---------------------------------------------------------------- tokenizer


def read_vocab(model_dir: str | Path, n_vocab: int) -> Vocab:
    """The model dir's tokenizer (as training loaded it) as GGUF vocabulary, padded to ``n_vocab`` rows."""
    from gguf import TokenType

    from redone.model import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    where = f"{model_dir}: tokenizer"
    _check_byte_level_bpe(spec, where)
    tokens: dict[int, str] = {index: token for token, index in spec["model"]["vocab"].items()}
    types = {index: TokenType.NORMAL for index in tokens}
    for added in spec.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
    size = max(tokens) + 1
    if size > n_vocab:
        raise RedoneError(f"{where} has {size} tokens but the model has only {n_vocab} embedding rows")
    # Rows without a token (vocab padded for speed) get placeholder names llama.cpp ignores.
    token_list = [tokens.get(i, f"[PAD{i}]") for i in range(n_vocab)]
    type_list = [int(types.get(i, TokenType.UNUSED)) for i in range(n_vocab)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return Vocab(
        tokens=token_list, types=type_list, merges=merges, pre=_pre_tokenizer_name(spec, where),
        special_ids=_special_ids(tokenizer), add_bos=_adds(tokenizer, "bos"), add_eos=_adds(tokenizer, "eos"),
        chat_template=tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
    )


def _check_byte_level_bpe(spec: dict, where: str) -> None:
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel" or model.get("byte_fallback"):
        kind = model.get("type", "unknown")
        raise RedoneError(f"{where} is a {kind} tokenizer without byte-level decoding (sentencepiece style); "
                          "the GGUF export supports byte-level BPE tokenizers only")
    normalizer = spec.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":
        raise RedoneError(f"{where} has a {normalizer.get('type')} normalizer llama.cpp does not apply")


def _pre_tokenizer_name(spec: dict, where: str) -> str:
    """llama.cpp's name for the tokenizer's split rule (what ``tokenizer.ggml.pre`` must say)."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"  # each digit alone, then GPT-2's rule
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        name = _SPLIT_NAMES.get((steps[0].get("pattern") or {}).get("Regex"))
        if name:
            return name
    raise RedoneError(f"{where} splits text with {json.dumps(pre)[:200]}, which has no llama.cpp pre-tokenizer "
                      "known to redone (known: GPT-2, SmolLM, Llama 3, Qwen2)")


def _special_ids(tokenizer) -> dict[str, int]:
    ids = {}
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if isinstance(token_id, int):
            ids[kind] = token_id
    return ids


def _adds(tokenizer, kind: str) -> bool:
    """Whether encoding plain text adds the BOS (or EOS) token: measured, not read from a flag."""
    token_id = getattr(tokenizer, f"{kind}_token_id", None)
    if token_id is None:
        return False
    with_special = tokenizer("a")["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    if len(with_special) == len(without):
        return False
    return (with_special[0] if kind == "bos" else with_special[-1]) == token_id


# ---------------------------------------------------------------- tensors


def _tensor_plan(files: list[Path], arch: str, config) -> list[tuple[str, tuple[Path, str], tuple[int, ...], int]]:
    """(gguf name, (file, key), shape, heads to reorder for rotary or 0) for every tensor, in file order."""
    from gguf import MODEL_ARCH, get_tensor_name_map
    from safetensors import safe_open

    name_map = get_tensor_name_map(MODEL_ARCH.LLAMA if arch == "llama" else MODEL_ARCH.QWEN2,
                                   config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    plan, names = [], set()
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key.endswith(_SKIPPED_TENSORS):
                    continue
                if key == "lm_head.weight" and config.tie_word_embeddings:
                    continue  # tied: llama.cpp reuses token_embd, and the loader re-ties when output is absent
                stem, _, suffix = key.rpartition(".")
                gguf_stem = name_map.get_name(stem)
                if gguf_stem is None:
                    raise RedoneError(f"export: tensor {key} ({file.name}) has no GGUF name for {arch}")
                gguf_name = f"{gguf_stem}.{suffix}"
                permute = 0
                if arch == "llama" and gguf_stem.endswith(".attn_q"):
                    permute = heads
                elif arch == "llama" and gguf_stem.endswith(".attn_k"):
                    permute = kv_heads
                plan.append((gguf_name, (file, key), tuple(f.get_slice(key).get_shape()), permute))
                names.add(gguf_name)
    if not config.tie_word_embeddings and "output.weight" not in names:
        raise RedoneError("export: tie_word_embeddings is false but the weights have no lm_head.weight")
    return plan


def _stored_dtype(shape: tuple[int, ...], dtype: str) -> str:
    return "f32" if len(shape) <= 1 else dtype  # llama.cpp keeps norms and biases in f32


def _add_tensor_info(writer, name: str, shape: tuple[int, ...], dtype: str) -> None:
    from gguf import GGMLQuantizationType

    stored = _stored_dtype(shape, dtype)
    nbytes = int(np.prod(shape)) * (4 if stored == "f32" else 2)
    if stored == "bf16":  # numpy has no bfloat16: the data goes in as raw 16-bit words
        writer.add_tensor_info(name, shape, np.dtype(np.uint16), nbytes, raw_dtype=GGMLQuantizationType.BF16)
    else:
        writer.add_tensor_info(name, shape, np.dtype(np.float32 if stored == "f32" else np.float16), nbytes)


def rope_interleave(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder Q or K rows (or bias) from Hugging Face's rotate-half layout to llama.cpp's adjacent pairs.

    Within each head, HF rotates row i against row i + d/2; llama.cpp rotates rows 2i and 2i+1. So row
    (half h, index i) moves to position 2i + h.
    """
    rows = weight.shape[0]
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _converted(file_and_key: tuple[Path, str], name: str, permute_heads: int, dtype: str) -> np.ndarray:
    import torch
    from safetensors import safe_open

    file, key = file_and_key
    with safe_open(str(file), framework="pt") as f:
        tensor = f.get_tensor(key).to(torch.float32)
    if permute_heads:
        tensor = rope_interleave(tensor, permute_heads)
    stored = _stored_dtype(tuple(tensor.shape), dtype)
    tensor = tensor.to(getattr(torch, _TORCH_DTYPES[stored])).contiguous()
    if not torch.isfinite(tensor).all():
        raise RedoneError(f"export: tensor {key} overflows {stored} (values beyond its range); use --dtype bf16 or f32")
    if stored == "bf16":
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


# ---------------------------------------------------------------- CLI


def add_export_parser(subparsers) -> None:
    """``redone export gguf ...``"""
    export = subparsers.add_parser("export", help="export a model dir to other formats")
    export_sub = export.add_subparsers(dest="export_cmd", required=True)
    gguf = export_sub.add_parser("gguf", help="write a GGUF file for llama.cpp / Ollama (Llama and Qwen2 families)")
    gguf.add_argument("--model", required=True, help="model dir (e.g. runs/demo/dpo/final) or built-in name")
    gguf.add_argument("--out", required=True, help="the .gguf file to write")
    gguf.add_argument("--dtype", default="f16", choices=DTYPES, help="weight type of 2-D tensors (default f16)")
    gguf.add_argument("--force", action="store_true", help="overwrite an existing --out")
    gguf.set_defaults(func=run_export)


def run_export(args) -> int:
    out = export_gguf(args.model, args.out, args.dtype, force=args.force)
    size = out.stat().st_size
    print(f"[redone] wrote {out} ({size / 2**20:.1f} MiB, {args.dtype})")
    return 0
