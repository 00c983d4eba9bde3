"""Exact and near-duplicate removal across all CPT sources (``data.quality.dedup``; ``QualityDedup``).

- exact: a hash of the exact-normalised text (text.py); two texts that differ only in case,
  whitespace or punctuation are duplicates.
- near: MinHash (num_perm permutations, datasketch's affine32 scheme, computed for all texts at once in
  numpy) over shingles ("word3": 3 consecutive tokens; "char5": 5 characters of the exact-normalised
  text) + LSH at ``threshold``; LSH candidates are confirmed by estimated Jaccard.
The first occurrence is kept, so results are deterministic and depend only on input order.
Values are checked by ``redone.config.validate.check_quality_dedup``.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from redone.config.schema import QualityDedup
from redone.config.validate import SHINGLE
from redone.data.text import TokenBatch, doc_batches, normalise_exact, stable_hash64, token_ids

_SIGNATURE_CHUNK = 32_768  # shingles per (chunk x num_perm) uint32 matrix: 16 MB at num_perm=128


@dataclass
class DedupResult:
    kept: list[int]
    dropped_exact: int
    dropped_near: int
    # Each cluster lists the kept representative first, then its duplicates in input order.
    clusters: list[list[int]]
    dropped: dict[int, str] = field(default_factory=dict)  # index -> "exact" | "near"


def shingle_spec(cfg: QualityDedup) -> tuple[str, int]:
    """("word" | "char", size) of ``dedup.shingle`` (e.g. "word3")."""
    kind, size = SHINGLE.fullmatch(cfg.shingle).groups()
    return kind, int(size)


def _char_ids(text: str) -> np.ndarray:
    # Characters of the normalised text; code points are spread by an odd multiplier so that
    # the rolling hash mixes them as well as it mixes token ids.
    chars = np.frombuffer(normalise_exact(text).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    return chars * np.uint64(0xD6E8FEB86659FD93)


def _shingle_hashes(texts: list[str], ids: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every shingle of every text, and the text index of each.

    A text with fewer than k units gets one shingle for all of it (or, with no units at all, the
    hash of its normalised text), so every text has a signature and tiny texts are compared as wholes.
    """
    batch = TokenBatch(ids)
    hashes, docs = batch.windows(k)
    short = np.flatnonzero((batch.lengths < k) & (batch.lengths > 0))
    empty = np.flatnonzero(batch.lengths == 0)
    empty_hashes = np.array([stable_hash64(normalise_exact(texts[i])) for i in empty], dtype=np.uint64)
    hashes = np.concatenate([hashes, batch.whole_docs(short), empty_hashes])
    docs = np.concatenate([docs, short, empty])
    order = np.argsort(docs, kind="stable")
    return hashes[order], docs[order]


def _fmix32(x: np.ndarray) -> np.ndarray:
    """MurmurHash3 finaliser, as datasketch applies it before its affine32 permutations."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> np.uint32(13))
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> np.uint32(16))


@functools.cache
def _permutations(num_perm: int, seed: int) -> np.ndarray:
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations


def minhash_signatures(
    hashes32: np.ndarray, docs: np.ndarray, n_docs: int, num_perm: int, seed: int
) -> np.ndarray:
    """MinHash signatures (n_docs x num_perm, uint32) for many documents at once.

    Bit-identical to ``datasketch.MinHash(num_perm, seed, hashfunc=identity).update_batch(hashes32)``
    per document (the tests check this), but one numpy pass per chunk of shingles instead of a
    Python call per document. ``docs`` must be sorted.
    """
    a, b = _permutations(num_perm, seed)
    signatures = np.full((n_docs, num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    mixed = _fmix32(hashes32.astype(np.uint32))
    for lo in range(0, len(mixed), _SIGNATURE_CHUNK):
        chunk_docs = docs[lo : lo + _SIGNATURE_CHUNK]
        permuted = mixed[lo : lo + _SIGNATURE_CHUNK, None] * a[None, :] + b[None, :]  # wraps mod 2**32
        seg_starts = np.flatnonzero(np.r_[True, chunk_docs[1:] != chunk_docs[:-1]])
        seg_docs = chunk_docs[seg_starts]
        signatures[seg_docs] = np.minimum(
            signatures[seg_docs], np.minimum.reduceat(permuted, seg_starts, axis=0)
        )
    return signatures


def _near_duplicates(texts: list[str], cfg: QualityDedup, ids: list[np.ndarray] | None) -> dict[int, int]:
    """Greedy near dedup: {index of a dropped text: index of the kept text it duplicates}.

    Texts are visited in order; each is queried against the LSH of the texts kept so far, LSH
    candidates are confirmed by the signatures' estimated Jaccard (LSH alone has false positives),
    and the most similar confirmed candidate (ties: the earliest) becomes its representative.
    Only kept texts are indexed, so a chain a~b~c with b dropped compares c against a only.
    """
    from datasketch import MinHash, MinHashLSH

    if not texts:
        return {}
    perms = _permutations(cfg.num_perm, cfg.seed)
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    signatures = np.zeros((len(texts), cfg.num_perm), dtype=np.uint32)
    sizes = [len(t) for t in texts]
    kind, size = shingle_spec(cfg)
    for rows in doc_batches(len(texts), sizes):
        chunk = [texts[i] for i in rows]
        if kind == "char":
            chunk_ids = [_char_ids(text) for text in chunk]
        else:
            chunk_ids = token_ids(chunk) if ids is None else ids[rows.start : rows.stop]
        hashes, docs = _shingle_hashes(chunk, chunk_ids, size)
        signatures[rows.start : rows.stop] = minhash_signatures(
            (hashes >> np.uint64(32)).astype(np.uint32), docs, len(rows), cfg.num_perm, cfg.seed
        )
    duplicate_of: dict[int, int] = {}
    for i in range(len(texts)):
        sketch = MinHash(seed=cfg.seed, hashvalues=signatures[i], permutations=perms, scheme="affine32")
        candidates = sorted(lsh.query(sketch))
        if candidates:
            similarity = (signatures[candidates] == signatures[i]).mean(axis=1)
            best = int(np.argmax(similarity))  # argmax returns the first maximum: the earliest text
            if similarity[best] >= cfg.threshold:
                duplicate_of[i] = candidates[best]
                continue
        lsh.insert(i, sketch, check_duplication=False)
    return duplicate_of


def dedup(texts: list[str], cfg: QualityDedup, *, ids: list[np.ndarray] | None = None) -> DedupResult:
    """Exact then near dedup; the first occurrence of each group is kept.

    ``ids``: optional ``token_ids(texts)``, computed here when not given."""
    representative: dict[int, int] = {}  # dropped index -> kept index
    dropped: dict[int, str] = {}
    survivors = list(range(len(texts)))
    if cfg.exact:
        first_seen: dict[bytes, int] = {}
        survivors = []
        for i, text in enumerate(texts):
            key = hashlib.blake2b(normalise_exact(text).encode(), digest_size=16).digest()
            if key in first_seen:
                representative[i], dropped[i] = first_seen[key], "exact"
            else:
                first_seen[key] = i
                survivors.append(i)
    if cfg.near:
        near = _near_duplicates(
            [texts[i] for i in survivors], cfg, None if ids is None else [ids[i] for i in survivors]
        )
        for sub, rep in near.items():
            representative[survivors[sub]], dropped[survivors[sub]] = survivors[rep], "near"
    clusters: dict[int, list[int]] = {}
    for i in sorted(representative):
        clusters.setdefault(representative[i], [representative[i]]).append(i)
    kinds = Counter(dropped.values())
    return DedupResult(
        kept=[i for i in range(len(texts)) if i not in dropped],
        dropped_exact=kinds["exact"],
        dropped_near=kinds["near"],
        clusters=[clusters[rep] for rep in sorted(clusters)],
        dropped=dropped,
    )
