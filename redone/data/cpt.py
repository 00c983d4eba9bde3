"""CPT's data path: sources -> documents -> curation -> tokens (cached) -> mixture -> packed rows.

Features
- Sources: .txt (paragraph/line/file units), JSONL/JSON/parquet/hub records (``text_field`` or several
  ``text_fields``), SNS-Bench note text (titles/bodies, exact duplicates removed); each with a weight.
- Curation over all sources together (``redone.data.curate``): quality filters, then exact + near
  dedup across sources (first occurrence kept), then decontamination against
  ``data.quality.decontam.eval_sets``; every drop counted per source and reason.
- Kept documents tokenized per source (``datasets.map``, batched, ``data.num_proc`` processes), EOS
  appended. One corpus-level cache entry holds every source's tokens plus the curation report. Its key
  covers each source's content digest and reading options, ``data.append_eos``, the whole
  ``data.quality`` section with the eval sets' content digests, and the tokenizer digest (files,
  special tokens, chat template): a change to any of them misses. Mixing settings (weights,
  temperature, seq_len, held-out count) act after the cache. A full hit skips reading, curation and
  tokenization. The entry is built in a temp dir and renamed into place.
- ``data.eval_holdout`` documents per source are set aside by a seeded permutation (never trained on)
  for the periodic held-out loss ``eval_loss/<source>``.
- Mixing by ratio or temperature (p ~ n^(1/T) over source token counts), exact token shares; packed
  into full ``seq_len`` rows, attention masked at document boundaries unless
  ``data.cross_document_attention``.

Errors: ``DataError`` for unreadable/malformed/empty sources (file:line) or a source curation empties;
``ConfigError`` for duplicate source names or a missing eval set (names the ``data.quality`` key).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from redone.config.schema import CPTConfig, QualityDecontam, QualityDedup, QualityFilters, QualitySection
from redone.data.cache import (
    cache_key,
    cache_root,
    load_store,
    save_store,
    tokenizer_digest,
    write_atomically,
)
from redone.data.curate import curate
from redone.data.decontam import EvalIndex, cached_eval_index
from redone.data.mixture import MixtureSampler, mixture_probs
from redone.data.packing import DocumentPacker, TokenStore, split_holdout
from redone.data.sources import file_digest, read_documents, source_digest, source_name
from redone.data.stage_data import StageData
from redone.errors import ConfigError, DataError

QUALITY_KEY = "data.quality"
CORPUS_FORMAT = 1  # bump when the entry layout changes


def build_cpt_data(config: CPTConfig, tokenizer) -> StageData:
    """The CPT corpus (cached), its held-out documents and the packer that mixes it into rows."""
    data = config.data
    stores, report, hit = prepare_cpt(config, tokenizer)
    train_stores, held_out, components = [], {}, []
    for info, store in zip(report["sources"], stores):
        train_idx, held_idx = split_holdout(store, data.eval_holdout, config.seed, info["name"])
        train_stores.append(store.subset(train_idx) if data.eval_holdout else store)
        if len(held_idx):
            held_out[info["name"]] = store.subset(held_idx)
        components.append({**info, "held_out": len(held_idx), "tokens": int(train_stores[-1].tokens.size),
                           "cache_hit": hit})
    probs = mixture_probs([s.weight for s in data.sources], [int(s.tokens.size) for s in train_stores],
                          data.mixing, data.temperature)
    for info, p in zip(components, probs):
        info["planned_share"] = p
    sampler = MixtureSampler([s.lengths() for s in train_stores], probs, config.seed)
    packer = DocumentPacker(train_stores, sampler, data.seq_len, data.cross_document_attention)
    return StageData(components, packer, held_out=held_out, stores=train_stores, report=report)


# ---------------------------------------------------------------- quality settings


def quality_configs(section: QualitySection, *, check_files: bool = True
                    ) -> tuple[QualityFilters | None, QualityDedup | None, QualityDecontam | None]:
    """The curation steps that run (None for a step that is off; values are checked by the schema's
    validators). ``check_files``: an eval set path that does not exist (relative to the working dir)
    is a ConfigError naming its index."""
    if not section.enabled:
        return None, None, None
    dedup_cfg, decontam = section.dedup, section.decontam
    if check_files:
        for i, path in enumerate(decontam.eval_sets):
            if not Path(path).exists():
                raise ConfigError(f"{QUALITY_KEY}.decontam.eval_sets[{i}]: {path} does not exist "
                                  f"(relative paths start at the working dir, {os.getcwd()})")
    return (section.filters, dedup_cfg if dedup_cfg.exact or dedup_cfg.near else None,
            decontam if decontam.eval_sets else None)


# ---------------------------------------------------------------- corpus


def tokenize_documents(docs: list[str], tokenizer, append_eos: bool, num_proc: int):
    """TokenStore of the documents: ``datasets.map`` (batched, ``num_proc`` processes above 1000
    documents, a progress bar), EOS appended; documents that tokenize to nothing are left out."""
    import datasets

    eos = [tokenizer.eos_token_id] if append_eos else []

    def encode(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [x + eos for x in ids]}

    ds = datasets.Dataset.from_dict({"text": docs})
    ds = ds.map(encode, batched=True, batch_size=256, remove_columns=["text"],
                num_proc=num_proc if num_proc > 1 and len(docs) > 1000 else None,
                desc="tokenizing", load_from_cache_file=False)
    ids = [x for x in ds["input_ids"] if x]
    return TokenStore.from_lists(ids)


def _source_parts(source) -> dict:
    return {"name": source_name(source), "digest": source_digest(source), "format": source.format,
            "text_field": source.text_field, "text_fields": list(source.text_fields),
            "text_unit": source.text_unit, "limit": source.limit, "tasks": list(source.tasks),
            "split": source.split}


def corpus_parts(config, tokenizer) -> dict:
    """Everything the corpus entry depends on (hashed into its key)."""
    data = config.data
    filters, dedup_cfg, decontam = quality_configs(data.quality)
    quality: dict = {"enabled": bool(data.quality.enabled)}
    if data.quality.enabled:
        quality["filters"] = _asdict(filters)
        quality["dedup"] = _asdict(dedup_cfg) if dedup_cfg else None
        quality["decontam"] = None
        if decontam:
            settings = {k: v for k, v in _asdict(decontam).items() if k != "eval_sets"}
            eval_sets = [{"name": Path(p).name, "digest": file_digest(p)} for p in decontam.eval_sets]
            quality["decontam"] = dict(settings, eval_sets=eval_sets)
    return {"kind": "cpt-corpus", "format": CORPUS_FORMAT,
            "sources": [_source_parts(s) for s in data.sources], "append_eos": data.append_eos,
            "quality": quality, "tokenizer": tokenizer_digest(tokenizer)}


def _check_names(sources) -> list[str]:
    names = [source_name(s) for s in sources]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise ConfigError(f"data.sources[{i}]: another source is also named '{name}' (file stem); "
                              "set a distinct name:")
    return names


def prepare_cpt(config, tokenizer) -> tuple[list, dict, bool]:
    """(one TokenStore per source, the data report, cache hit) for a CPT config."""
    data = config.data
    names = _check_names(data.sources)
    parts = corpus_parts(config, tokenizer)
    root = cache_root(data.cache_dir)
    key = cache_key(parts)
    found = _load_corpus(root / key, len(names))
    if found is not None:
        return found[0], found[1], True
    stores, report = _build_corpus(config, tokenizer, names)
    report["cache"] = {"dir": str(root), "key": key}
    report = json.loads(json.dumps(report))  # the same plain types a hit returns
    _save_corpus(root, key, stores, {"key": key, "parts": parts, "report": report})
    return stores, report, False


def _build_corpus(config, tokenizer, names: list[str]) -> tuple[list, dict]:
    data = config.data
    filters, dedup_cfg, decontam = quality_configs(data.quality)
    clock = time.perf_counter()
    texts: list[str] = []
    owners: list[str] = []
    for source, name in zip(data.sources, names):
        docs = read_documents(source)
        texts += docs
        owners += [name] * len(docs)
    timing = {"read_s": time.perf_counter() - clock}

    clock = time.perf_counter()
    digests = [file_digest(p) for p in decontam.eval_sets] if decontam else []
    index = cached_eval_index(decontam, digests) if decontam else None
    curation = curate(texts, owners, filters, dedup_cfg, decontam, index)
    timing["curate_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    kept: dict[str, list[str]] = {name: [] for name in names}
    for i in curation.kept:
        kept[owners[i]].append(texts[i])
    stores, sources = [], []
    for source, name in zip(data.sources, names):
        stats = curation.sources[name]
        if not kept[name]:
            dropped = ", ".join(f"{r} {n}" for r, n in stats["dropped"].items())
            raise DataError(f"{source.path}: data.quality dropped every document of source '{name}' "
                            f"({stats['docs_in']} in: {dropped})")
        store = tokenize_documents(kept[name], tokenizer, data.append_eos, data.num_proc)
        stores.append(store)
        sources.append({"name": name, "path": source.path, "digest": source_digest(source),
                        "documents_in": stats["docs_in"], "documents": len(store),
                        "dropped": stats["dropped"], "tokens": int(store.tokens.size)})
    timing["tokenize_s"] = time.perf_counter() - clock
    report = {"stage": "cpt", "sources": sources, "curation": curation.to_dict(),
              "quality": _quality_summary(data.quality, decontam, index, digests), "build_timing": timing}
    return stores, report


def _quality_summary(section, decontam: QualityDecontam | None, index: EvalIndex | None,
                     digests: list[str]) -> dict:
    summary: dict = {"enabled": bool(section.enabled), "eval_sets": []}
    if decontam and index:
        summary["eval_sets"] = [{"path": str(p), "digest": d} for p, d in zip(decontam.eval_sets, digests)]
        summary["eval_index"] = {name: {"items": index.items[name], "ngrams": len(index.grams[name]),
                                        "skipped_short": index.skipped_short[name],
                                        "boilerplate_ngrams": index.boilerplate[name]}
                                 for name in index.names}
    return summary


def _load_corpus(entry: Path, n_sources: int) -> tuple[list, dict] | None:
    manifest_path = entry / "manifest.json"
    if not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text())
    stores = []
    for i in range(n_sources):
        found = load_store(entry, str(i))
        if found is None:
            return None
        stores.append(found[0])
    return stores, manifest["report"]


def _save_corpus(root: Path, key: str, stores: list, manifest: dict) -> None:
    def fill(tmp: Path) -> None:
        for i, (store, info) in enumerate(zip(stores, manifest["report"]["sources"])):
            save_store(tmp, str(i), store, {"name": info["name"], "documents": len(store)})
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False, default=str))

    write_atomically(root, key, fill)




def _asdict(cfg) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)
