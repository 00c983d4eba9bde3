"""Data preparation: the CPT corpus path (read -> curate -> tokenize -> cache) and `redone data prepare`.

CPT (``prepare_cpt``)
- Every source's documents are read, then curated *together* by ``redone.data.quality.curate``
  (quality filters, then exact + near dedup across all sources, first occurrence kept, then
  decontamination against ``data.quality.decontam.eval_sets``), then the kept documents are tokenized
  per source (``datasets.map``, batched, ``data.num_proc`` processes, a progress bar).
- One corpus-level cache entry holds every source's tokens plus the curation report. Its key covers
  each source's content digest and reading options, ``data.append_eos``, the whole ``data.quality``
  section with the eval sets' content digests, and the tokenizer digest (tokenizer files, special
  tokens and chat template): a change to any of them misses, so a new tokenizer or template never
  reuses stale tokens. Mixing settings (weights, temperature, seq_len) are not in the key: they act
  after the cache. A full hit skips reading, curation and tokenization; the stored report is returned.
- The entry is built in a temp dir and renamed into place (no half-written entry after a crash).

``redone data prepare`` (``prepare_stage`` + ``format_stage_report`` + ``write_report``)
- Builds the stage exactly as ``redone train`` would (so the cache it fills is the one training
  uses), then packs the planned rows (train.max_steps x micro_batch_size x grad_accum, at most
  ``MAX_REPORT_ROWS``) from a fresh sampler to measure the realised token share of each source.
- CPT report: per source documents in / dropped per filter, dedup kind and eval set / kept, chars,
  tokens, planned and realised shares, top duplicate clusters. SFT/DPO: per component examples,
  held out, truncated, dropped, tokens, planned and realised shares.

Errors: ``ConfigError`` (names the ``data.quality...`` key) for a bad quality value or a missing eval
set; ``DataError`` when curation leaves a source empty; ``NotImplementedError`` from ``stage_class``
for a stage whose module does not exist yet.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import tempfile
import time
from pathlib import Path

from redone.data.quality import (
    CurationReport,
    DecontamConfig,
    DedupConfig,
    EvalIndex,
    FilterConfig,
    curate,
    format_report,
    load_eval_index,
)
from redone.data.sources import file_digest, read_documents, source_digest, source_name
from redone.errors import ConfigError, DataError

QUALITY_KEY = "data.quality"
MAX_REPORT_ROWS = 20_000  # cap on rows packed to measure realised shares
CORPUS_FORMAT = 1  # bump when the entry layout changes

STAGE_CLASSES = {
    "cpt": ("redone.train.cpt", "CPTStage"),
    "sft": ("redone.train.sft", "SFTStage"),
    "dpo": ("redone.train.dpo", "DPOStage"),
}


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------


def quality_configs(section, *, check_files: bool = True
                    ) -> tuple[FilterConfig | None, DedupConfig | None, DecontamConfig | None]:
    """``data.quality`` -> quality.py's configs; None for a stage that does not run.

    The dataclasses check the values (ConfigError naming ``data.quality.<group>.<key>``). Dedup with
    exact and near both off, and decontamination with no eval sets, are None. ``check_files``: an eval
    set path that does not exist (relative to the working dir) is a ConfigError naming its index.
    """
    if not section.enabled:
        return None, None, None
    filters = FilterConfig(**dataclasses.asdict(section.filters))
    dedup_cfg = DedupConfig(**dataclasses.asdict(section.dedup))
    decontam = DecontamConfig(**dataclasses.asdict(section.decontam))
    if check_files:
        for i, path in enumerate(decontam.eval_sets):
            if not Path(path).exists():
                raise ConfigError(f"{QUALITY_KEY}.decontam.eval_sets[{i}]: {path} does not exist "
                                  f"(relative paths start at the working dir, {os.getcwd()})")
    return (filters, dedup_cfg if dedup_cfg.exact or dedup_cfg.near else None,
            decontam if decontam.eval_sets else None)


_INDEX_CACHE: dict[tuple, EvalIndex] = {}


def eval_index(cfg: DecontamConfig, digests: list[str]) -> EvalIndex:
    """The eval index, memoised per process on the eval sets' content and the build settings."""
    key = (tuple(digests), tuple(Path(p).name for p in cfg.eval_sets), cfg.ngram, cfg.min_item_tokens,
           cfg.boilerplate_min_items)
    if key not in _INDEX_CACHE:
        _INDEX_CACHE.clear()  # one index at a time: they can be large
        _INDEX_CACHE[key] = load_eval_index(cfg)
    return _INDEX_CACHE[key]


# ---------------------------------------------------------------------------------------------------
# CPT corpus
# ---------------------------------------------------------------------------------------------------


def tokenize_documents(docs: list[str], tokenizer, append_eos: bool, num_proc: int):
    """TokenStore of the documents: ``datasets.map`` (batched, ``num_proc`` processes above 1000
    documents, a progress bar), EOS appended; documents that tokenize to nothing are left out."""
    import datasets

    from redone.data.packing import TokenStore

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
    from redone.data.cache import tokenizer_digest

    data = config.data
    filters, dedup_cfg, decontam = quality_configs(data.quality)
    quality: dict = {"enabled": bool(data.quality.enabled)}
    if data.quality.enabled:
        quality["filters"] = dataclasses.asdict(filters)
        quality["dedup"] = dataclasses.asdict(dedup_cfg) if dedup_cfg else None
        quality["decontam"] = None
        if decontam:
            settings = {k: v for k, v in dataclasses.asdict(decontam).items() if k != "eval_sets"}
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
    from redone.data.cache import cache_key, cache_root

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
    index = eval_index(decontam, digests) if decontam else None
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


def _quality_summary(section, decontam: DecontamConfig | None, index: EvalIndex | None,
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
    from redone.data.cache import load_store

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
    from redone.data.cache import save_store, write_atomically

    def fill(tmp: Path) -> None:
        for i, (store, info) in enumerate(zip(stores, manifest["report"]["sources"])):
            save_store(tmp, str(i), store, {"name": info["name"], "documents": len(store)})
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False, default=str))

    write_atomically(root, key, fill)


# ---------------------------------------------------------------------------------------------------
# `redone data prepare`
# ---------------------------------------------------------------------------------------------------


def stage_class(stage: str):
    """The Stage class of a stage name; NotImplementedError when its module does not exist yet."""
    if stage not in STAGE_CLASSES:
        raise NotImplementedError(stage)
    module_name, class_name = STAGE_CLASSES[stage]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise NotImplementedError(stage) from None
        raise
    if not hasattr(module, class_name):
        raise NotImplementedError(stage)
    return getattr(module, class_name)


def planned_rows(config) -> int:
    train = config.train
    return train.max_steps * train.micro_batch_size * train.grad_accum


def realised_shares(packer, n_sources: int, rows: int) -> list[float] | None:
    """Share of each source over the first ``rows`` units the packer emits: tokens of the packed rows
    (cpt, sft), or, for a packer that hands out picks (dpo pairs), the sampler's own unit (a pair).
    None for an unknown packer. The packer's state moves: call it on a stage built for the report."""
    counts = [0] * n_sources
    if hasattr(packer, "next_row"):
        for _ in range(rows):
            for segment in packer.next_row().segments:
                counts[segment.source] += segment.length
    elif hasattr(packer, "next") and hasattr(packer, "sampler"):
        for _ in range(rows):
            source, item = packer.next()
            counts[source] += int(packer.sampler.lengths[source][item])
    else:
        return None
    total = sum(counts) or 1
    return [c / total for c in counts]


def prepare_stage(stage: str, config) -> dict:
    """Run a stage's data path as ``redone train`` would (filling its cache) and return the report."""
    from redone.model import load_tokenizer

    cls = stage_class(stage)
    clock = time.perf_counter()
    tokenizer = load_tokenizer(config.model.name_or_path, config.model.trust_remote_code)
    built = cls(config, tokenizer)
    seconds = time.perf_counter() - clock
    report = dict(getattr(built, "data_report", None) or {"stage": stage})
    report.pop("sources", None)  # cpt: the same entries are in "components", with the shares
    report["stage"] = stage
    report["components"] = [dict(info) for info in built.source_info]
    hits = {bool(info.get("cache_hit")) for info in built.source_info}
    report["cache_hit"] = hits == {True}
    planned = planned_rows(config)
    rows = min(planned, MAX_REPORT_ROWS)
    realised = realised_shares(built.packer, len(built.source_info), rows)
    for i, info in enumerate(report["components"]):
        info["realised_share"] = None if realised is None else realised[i]
    report["mixture"] = {"rows_planned": planned, "rows_packed": rows if realised is not None else 0,
                         "seq_len": config.data.seq_len, "mixing": config.data.mixing}
    report["seconds"] = seconds
    return json.loads(json.dumps(report, default=str))


def report_path(config, override: str | None = None) -> Path:
    """``<output_dir>.data_report.json`` (next to, not inside, output_dir: `redone train` refuses a
    non-empty output_dir without checkpoints)."""
    if override:
        return Path(override)
    out = Path(config.output_dir)
    return out.parent / f"{out.name}.data_report.json"


def write_report(path: Path, report: dict) -> None:
    """Write the JSON report atomically (temp file in the same dir, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [str(r[0]).ljust(widths[0])] + [str(v).rjust(w) for v, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# Count columns of the SFT/DPO component table come in this order; other integer fields a stage
# reports follow, alphabetically.
COMPONENT_COUNTS = ("examples", "pairs", "held_out", "truncated", "dropped_overlong", "dropped", "skipped")


def _count_columns(components: list[dict]) -> list[str]:
    ints = {k for c in components for k, v in c.items()
            if isinstance(v, int) and not isinstance(v, bool) and k != "tokens"}
    return [k for k in COMPONENT_COUNTS if k in ints] + sorted(ints - set(COMPONENT_COUNTS))


def format_stage_report(report: dict) -> str:
    """The report as console tables."""
    components = report["components"]
    mixture = report["mixture"]
    head = (f"data report: {report['stage']} ({'cache hit' if report.get('cache_hit') else 'built'}"
            f", {report['seconds']:.1f}s)")
    parts = [head, ""]
    if report["stage"] == "cpt":
        curation = report["curation"]
        order = [c["name"] for c in components]
        parts.append(format_report(CurationReport(kept=[], sources={n: curation["sources"][n] for n in order},
                                                  total=curation["total"],
                                                  top_clusters=curation["top_clusters"])))
        if not curation["top_clusters"]:
            parts += ["", "top duplicate clusters: none"]
        parts.append("")
        counts = [("documents", "documents"), ("tokens", "tokens")]
    else:
        counts = [(k, k) for k in _count_columns(components)] + [("tokens", "tokens")]
    header = ["source" if report["stage"] == "cpt" else "component", *[label for label, _ in counts],
              "planned", "realised"]
    rows = [[c["name"], *[str(c.get(key, "-")) for _, key in counts], _pct(c.get("planned_share")),
             _pct(c.get("realised_share"))] for c in components]
    parts.append(_table(header, rows))
    unit = "pairs" if report["stage"] == "dpo" else f"rows x {mixture['seq_len']} tokens"
    measure = "pair" if report["stage"] == "dpo" else "token"
    parts.append(f"(realised: {measure} shares of the first {mixture['rows_packed']} of "
                 f"{mixture['rows_planned']} planned {unit}, {mixture['mixing']} mixing)")
    eval_index_info = report.get("quality", {}).get("eval_index")
    if eval_index_info:
        sets = ", ".join(f"{name} ({info['items']})" for name, info in eval_index_info.items())
        parts.append(f"decontaminated against: {sets}")
    return "\n".join(parts)
