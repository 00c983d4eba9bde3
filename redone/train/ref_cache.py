"""On-disk DPO reference log-probs: computed once by a no-grad pass, then reused on resume and reruns.

At step 0 the policy *is* the reference, so no second model is kept during training: before step 1,
one no-grad pass computes, for every pair, the summed log-prob of its chosen and of its rejected
completion tokens, and stores them in ``<cache>/ref_logps/<key>.safetensors`` (one float32 tensor
``[n_pairs, 2]`` per pair store, train and held-out).

The key hashes everything that changes these numbers: the reference weights' fingerprint, the pair
token ids of every store (tokens, offsets, loss mask, part boundaries: so a changed pair file, prompt
builder, tokenizer or chat template gives new ids), the tokenizer digest (vocab, special tokens, chat
template), the max length, and the precision and attention implementation of the pass. The file is
written to a temp name and renamed (by the main process only), so a crash never leaves a half entry.

``PASSES`` counts the reference passes this process computed (a rerun that hits the cache adds none).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from redone.data.cache import cache_root
from redone.data.packing import TokenStore
from redone.faults import kill_point

PASSES = 0
FORMAT = "redone-dpo-ref-logps-v1"


def store_digest(store: TokenStore) -> str:
    digest = hashlib.sha256()
    for name in ("tokens", "offsets", "loss_mask", "part_offsets"):
        value = getattr(store, name)
        digest.update(name.encode())
        digest.update(b"-" if value is None else np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()[:20]


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(dict(parts, format=FORMAT), sort_keys=True, default=str).encode()).hexdigest()[:24]


def cache_path(cache_dir: str | None, key: str) -> Path:
    return cache_root(cache_dir) / "ref_logps" / f"{key}.safetensors"


def load(path: Path, names: list[str]) -> dict[str, torch.Tensor] | None:
    """The cached tensors, or None when the entry is missing or does not hold every expected store."""
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            if set(handle.keys()) != set(names):
                return None
            return {name: handle.get_tensor(name) for name in names}
    except (OSError, ValueError, RuntimeError):  # a damaged file is recomputed, never trusted
        return None


def save(path: Path, tensors: dict[str, torch.Tensor], parts: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        metadata = {"format": FORMAT, "parts": json.dumps(parts, sort_keys=True, default=str)}
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        kill_point("ref-cache-write")  # the kill/resume harness: a crash between writing and renaming
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    return {"format": meta.get("format"), "parts": json.loads(meta.get("parts", "{}"))}


def count_pass() -> None:
    global PASSES
    PASSES += 1
