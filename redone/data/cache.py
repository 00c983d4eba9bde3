"""A tokenized-data cache keyed by content hashes.

The key covers everything that changes the tokens: each source file's content hash, the data config,
the tokenizer files and the chat template. A changed tokenizer or template therefore never reuses a
stale cache. Entries are numpy arrays (``np.load(allow_pickle=False)``) plus a JSON manifest, written
to a temp dir and renamed, so a crash never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from redone.data.packing import TokenStore
from redone.faults import kill_point
from redone.model import redone_home

ARRAYS = ("tokens", "offsets", "loss_mask", "part_offsets")


def tokenizer_digest(tokenizer) -> str:
    """Hash of what decides token ids: vocab/merges (the backend JSON), special tokens, chat template."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(backend.to_str().encode() if backend is not None else repr(tokenizer.get_vocab()).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    digest.update((getattr(tokenizer, "chat_template", None) or "").encode())
    return digest.hexdigest()[:16]


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir) if cache_dir else redone_home() / "data_cache"


def load_store(root: Path, key: str) -> tuple[TokenStore, dict] | None:
    entry = root / key
    if not (entry / "manifest.json").exists():
        return None
    manifest = json.loads((entry / "manifest.json").read_text())
    arrays = {name: (np.load(entry / f"{name}.npy", allow_pickle=False) if (entry / f"{name}.npy").exists()
                     else None) for name in ARRAYS}
    return TokenStore(**arrays), manifest


def write_atomically(root: Path, key: str, fill) -> None:
    """Create ``root/key`` as a whole or not at all: ``fill(tmp_dir)`` writes into a hidden temp dir that
    is then renamed into place, so a killed run never leaves a half-written cache entry."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        fill(tmp)
        kill_point("data-cache-write")  # the kill/resume harness: a crash between writing and renaming
        try:
            os.rename(tmp, root / key)
        except OSError:  # another process stored the same key first: identical content, keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_store(root: Path, key: str, store: TokenStore, manifest: dict) -> None:
    def fill(tmp: Path) -> None:
        for name in ARRAYS:
            value = getattr(store, name)
            if value is not None:
                np.save(tmp / f"{name}.npy", value, allow_pickle=False)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))

    write_atomically(root, key, fill)


def cached_store(cache_dir: str | None, parts: dict, build) -> tuple[TokenStore, dict, bool]:
    """Return (store, manifest, hit). ``build()`` -> (store, manifest) runs only on a miss."""
    root = cache_root(cache_dir)
    key = cache_key(parts)
    found = load_store(root, key)
    if found is not None:
        return found[0], found[1], True
    store, manifest = build()
    manifest = dict(manifest, key=key, parts=parts)
    save_store(root, key, store, manifest)
    return store, manifest, False
