"""Decontamination: drop training texts that share n-grams with evaluation sets (``data.quality.decontam``).

A text is contaminated by an eval set when it contains at least ``min_overlap`` distinct indexed
n-grams of ``ngram`` (13) tokens of that set (word n-grams for Latin text, character n-grams for CJK:
text.py's tokens); the drop is attributed to the set sharing the most n-grams (ties: first set). Items
of ``min_item_tokens``..ngram-1 tokens are indexed whole (one n-gram of their own length); shorter ones
("Yes") are skipped. n-grams found in 2+ distinct items of a set (prompt templates) are not indexed.
Loaders read SNS-Bench test folders, SNS-TransBench files and JSONL files with a "text" field.

Errors: ``ConfigError`` (names the ``data.quality.decontam`` key) for empty or duplicate eval sets, an
unknown eval-set path kind, or an index built with other settings; ``DataError`` for an unreadable
eval set (names the file).
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from redone.config.schema import QualityDecontam, QualityDedup
from redone.data.dedup import dedup
from redone.data.text import TokenBatch, doc_batches, ids_of_tokens, token_ids, tokens, unique_pairs
from redone.errors import ConfigError, DataError

DECONTAM_KEY = "data.quality.decontam"

@dataclass
class EvalIndex:
    """Hashed n-grams of each eval set (name -> sorted unique uint64 array)."""

    n: int
    grams: dict[str, np.ndarray]
    # Token lengths (< n) of the short items indexed whole; decontamination also hashes windows of
    # these lengths.
    short_lengths: tuple[int, ...] = ()
    items: dict[str, int] = field(default_factory=dict)  # items per set
    skipped_short: dict[str, int] = field(default_factory=dict)  # items under min_item_tokens
    boilerplate: dict[str, int] = field(default_factory=dict)  # template n-grams left out
    # The build settings, checked against the QualityDecontam the index is used with.
    min_item_tokens: int = 8
    boilerplate_min_items: int = 2

    @property
    def names(self) -> list[str]:
        return list(self.grams)

    @functools.cached_property
    def _union(self) -> tuple[np.ndarray, np.ndarray]:
        """All sets' n-grams (sorted) and a bitmap over their low bits, at ~32 bits per n-gram."""
        union = np.unique(np.concatenate([np.zeros(0, np.uint64), *self.grams.values()]))
        bits = int(min(max(32 * len(union), 1 << 16), 1 << 28)).bit_length()
        bitmap = np.zeros(1 << bits, dtype=bool)
        bitmap[union & np.uint64((1 << bits) - 1)] = True
        return union, bitmap

    def screen(self, hashes: np.ndarray) -> np.ndarray:
        """Mask of the hashes that are in any set. The bitmap rejects almost every miss with one
        array lookup (~3% false positives), so only the rest pay for a binary search."""
        union, bitmap = self._union
        maybe = np.flatnonzero(bitmap[hashes & np.uint64(len(bitmap) - 1)])
        hit = np.zeros(len(hashes), dtype=bool)
        hit[maybe] = _member(hashes[maybe], union)
        return hit


def build_eval_index(
    eval_texts: dict[str, list[str]],
    n: int,
    *,
    min_item_tokens: int = 8,
    boilerplate_min_items: int = 2,
) -> EvalIndex:
    """Index every item of every eval set: all its n-grams, or the whole item if it is shorter
    than n tokens (and at least ``min_item_tokens`` long). See QualityDecontam for the knobs."""
    grams, items, skipped, boilerplate = {}, {}, {}, {}
    short_lengths: set[int] = set()
    for name, texts in eval_texts.items():
        batch = TokenBatch([ids_of_tokens(tokens(t)) for t in texts])
        hashes, docs = batch.windows(n)
        short = np.flatnonzero((batch.lengths < n) & (batch.lengths >= min_item_tokens))
        short_lengths.update(int(k) for k in batch.lengths[short])
        hashes, docs = np.concatenate([hashes, batch.whole_docs(short)]), np.concatenate([docs, short])
        template = np.zeros(0, dtype=np.uint64)
        if boilerplate_min_items:
            template = _shared_grams(texts, hashes, docs, boilerplate_min_items)
        unique = np.unique(hashes)
        grams[name] = unique[~np.isin(unique, template, assume_unique=True)]
        items[name] = len(texts)
        skipped[name] = int((batch.lengths < min_item_tokens).sum())
        boilerplate[name] = len(template)
    return EvalIndex(
        n,
        grams,
        tuple(sorted(short_lengths)),
        items,
        skipped,
        boilerplate,
        min_item_tokens,
        boilerplate_min_items,
    )


def _shared_grams(texts: list[str], hashes: np.ndarray, docs: np.ndarray, min_items: int) -> np.ndarray:
    """The n-grams found in at least ``min_items`` *distinct* items: prompt-template text.

    Benchmarks repeat an item with a different question or answer (the same note in three
    Hashtag items); such near-duplicate items are one item here (near dedup at the default
    threshold), so their shared n-grams, which are the note itself, stay in the index.
    """
    representative = np.arange(len(texts))
    for cluster in dedup(texts, QualityDedup()).clusters:
        representative[cluster[1:]] = cluster[0]
    hashes, _ = unique_pairs(hashes, representative[docs])
    unique, counts = np.unique(hashes, return_counts=True)
    return unique[counts >= min_items]


def contamination(
    texts: list[str], index: EvalIndex, cfg: QualityDecontam, *, ids: list[np.ndarray] | None = None
) -> list[str | None]:
    """Per text, the eval set it is contaminated by (the set sharing the most distinct n-grams,
    ties: the first set in index order, at least ``min_overlap`` of them), or None if clean.

    ``ids``: optional ``token_ids(texts)``, computed here when not given."""
    _check_index_matches(index, cfg)
    names = index.names
    result: list[str | None] = [None] * len(texts)
    if not names:
        return result
    sizes = [len(t) for t in texts]
    for rows in doc_batches(len(texts), sizes):
        batch = TokenBatch(
            token_ids([texts[i] for i in rows]) if ids is None else ids[rows.start : rows.stop]
        )
        parts = [batch.windows(k) for k in (index.n, *index.short_lengths)]
        hashes, docs = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        # Screen against all sets at once: hits are rare, so the per-set work runs on a handful.
        hit = index.screen(hashes)
        hashes, docs = unique_pairs(hashes[hit], docs[hit])
        overlap = np.zeros((len(names), len(rows)), dtype=np.int64)
        for s, name in enumerate(names):
            overlap[s] = np.bincount(docs[_member(hashes, index.grams[name])], minlength=len(rows))
        best = overlap.argmax(axis=0)  # first maximum: the earliest set wins ties
        for j in np.flatnonzero(overlap.max(axis=0) >= cfg.min_overlap):
            result[rows.start + int(j)] = names[best[j]]
    return result


def _check_index_matches(index: EvalIndex, cfg: QualityDecontam) -> None:
    """An index built with other settings would silently ignore the config's: refuse it."""
    for key, built in (
        ("ngram", index.n),
        ("min_item_tokens", index.min_item_tokens),
        ("boilerplate_min_items", index.boilerplate_min_items),
    ):
        if getattr(cfg, key) != built:
            raise ConfigError(
                f"{DECONTAM_KEY}.{key} is {getattr(cfg, key)} but the eval index was built with {built}"
            )


def _member(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """values in table (sorted, unique), as a boolean mask; a binary search per value."""
    if len(table) == 0 or len(values) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(table, values), len(table) - 1)
    return table[pos] == values


def decontaminate(texts: list[str], index: EvalIndex, cfg: QualityDecontam) -> tuple[list[int], Counter]:
    """Kept indices, and the number of texts dropped per eval-set name."""
    hits = contamination(texts, index, cfg)
    return [i for i, hit in enumerate(hits) if hit is None], Counter(hit for hit in hits if hit is not None)


# Fields of an SNS-Bench item that carry text a model could memorise (candidates lists are label
# vocabularies shared across items and are left out). Joined into one text per item.
_SNS_BENCH_FIELDS = ("query", "question", "sentence1", "sentence2", "content", "answer")


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise DataError(f"{path}: cannot read eval set ({err.strerror})") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err


def _records(path: Path) -> list[dict]:
    data = _load_json(path)
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a JSON list of objects")
    return data


def eval_texts_from_sns_bench(folder: str | Path) -> dict[str, list[str]]:
    """{"sns_bench/<task file stem>": one text per test item (its text fields and answer joined)}."""
    folder = Path(folder)
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        raise DataError(f"{folder}: not a folder of SNS-Bench *.json task files")
    out = {}
    for path in files:
        out[f"sns_bench/{path.stem}"] = [
            "\n".join(str(rec[f]) for f in _SNS_BENCH_FIELDS if rec.get(f) not in (None, ""))
            for rec in _records(path)
        ]
    return out


def eval_texts_from_transbench(path: str | Path) -> dict[str, list[str]]:
    """{"sns_transbench/<file stem>": the en and the zh side of every pair, as separate texts}."""
    path = Path(path)
    texts = []
    for line, rec in enumerate(_records(path), start=1):
        if not isinstance(rec.get("en"), str) or not isinstance(rec.get("zh"), str):
            raise DataError(f"{path}: record {line} has no 'en'/'zh' strings")
        texts += [rec["en"], rec["zh"]]
    return {f"sns_transbench/{path.stem}": texts}


def eval_texts_from_jsonl(path: str | Path) -> dict[str, list[str]]:
    """{"<file stem>": the "text" field of each line} for user eval sets."""
    path = Path(path)
    texts = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise DataError(f"{path}: cannot read eval set ({err.strerror})") from err
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise DataError(f"{path}:{lineno}: expected an object with a 'text' string")
        texts.append(rec["text"])
    return {path.stem: texts}


def eval_texts_from_path(path: str | Path) -> dict[str, list[str]]:
    """Dispatch on the path: folder -> SNS-Bench, .json -> SNS-TransBench, .jsonl -> {"text": ...}."""
    path = Path(path)
    if path.is_dir():
        return eval_texts_from_sns_bench(path)
    if path.suffix == ".json":
        return eval_texts_from_transbench(path)
    if path.suffix == ".jsonl":
        return eval_texts_from_jsonl(path)
    raise ConfigError(
        f"{DECONTAM_KEY}.eval_sets has {str(path)!r}: expected an SNS-Bench test folder, a TransBench .json or a .jsonl"
    )


def load_eval_index(cfg: QualityDecontam) -> EvalIndex:
    """Read every path in ``cfg.eval_sets`` and index it."""
    if not cfg.eval_sets:
        raise ConfigError(f"{DECONTAM_KEY}.eval_sets is empty: list the eval sets to decontaminate against")
    eval_texts: dict[str, list[str]] = {}
    for path in cfg.eval_sets:
        for name, texts in eval_texts_from_path(path).items():
            if name in eval_texts:
                raise ConfigError(f"{DECONTAM_KEY}.eval_sets has two sets named {name!r}")
            eval_texts[name] = texts
    return build_eval_index(
        eval_texts,
        cfg.ngram,
        min_item_tokens=cfg.min_item_tokens,
        boilerplate_min_items=cfg.boilerplate_min_items,
    )


# ---------------------------------------------------------------- training examples (sft, dpo, rl)

_INDEX_CACHE: dict[tuple, EvalIndex] = {}


def eval_set_digests(cfg: QualityDecontam) -> list[str]:
    """Content digest of every eval set (cache keys of decontaminated data depend on them)."""
    from redone.data.sources import file_digest

    return [file_digest(p) for p in cfg.eval_sets]


def cached_eval_index(cfg: QualityDecontam, digests: list[str] | None = None) -> EvalIndex:
    """The eval index, memoised per process on the eval sets' content and the build settings."""
    digests = eval_set_digests(cfg) if digests is None else digests
    key = (tuple(digests), tuple(Path(p).name for p in cfg.eval_sets), cfg.ngram, cfg.min_item_tokens,
           cfg.boilerplate_min_items)
    if key not in _INDEX_CACHE:
        _INDEX_CACHE.clear()  # one index at a time: they can be large
        _INDEX_CACHE[key] = load_eval_index(cfg)
    return _INDEX_CACHE[key]


def screen(texts: list[str], cfg: QualityDecontam) -> tuple[list[int], Counter]:
    """Training texts against ``cfg.eval_sets``: (kept indices, dropped count per eval set); no eval
    sets keeps everything."""
    if not cfg.eval_sets or not texts:
        return list(range(len(texts))), Counter()
    return decontaminate(texts, cached_eval_index(cfg), cfg)


def screen_counted(texts: list[str], cfg: QualityDecontam) -> tuple[list[int], Counter, dict[str, int]]:
    """``screen`` plus, when anything was dropped, how many eval items the dropped texts touch."""
    kept, dropped = screen(texts, cfg)
    if not dropped:
        return kept, dropped, {}
    keep = set(kept)
    return kept, dropped, affected_eval_items([t for i, t in enumerate(texts) if i not in keep], cfg)


def affected_eval_items(dropped: list[str], cfg: QualityDecontam) -> dict[str, int]:
    """How many items of each eval set share an n-gram with the dropped training texts (the other
    direction of ``screen``): what the decontamination protected."""
    if not dropped or not cfg.eval_sets:
        return {}
    index = build_eval_index({"train": dropped}, cfg.ngram, min_item_tokens=cfg.min_item_tokens,
                             boilerplate_min_items=cfg.boilerplate_min_items)
    counts: dict[str, int] = {}
    for path in cfg.eval_sets:
        for name, texts in eval_texts_from_path(path).items():
            counts[name] = sum(hit is not None for hit in contamination(texts, index, cfg))
    return {name: n for name, n in counts.items() if n}
