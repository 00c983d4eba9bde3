"""SFT's data path: sources -> chat examples per mixture component -> tokens + loss masks (cached) ->
train/held-out split -> mixture -> padding-free packed rows.

Components (one per task file, TransBench direction, or general source):
- ``sns_bench`` (a folder of Note-*.json, optionally filtered by ``tasks``): one component per task file,
  examples from the shared prompt builder (``redone.sns.tasks``) with the gold answer.
- ``transbench`` (a JSON file): one component per direction (TransBench-zh2en, TransBench-en2zh).
- general chat (``chat``/``jsonl``/``json``: ``messages`` lists, instruction/input/output records,
  self-instruct seed tasks) and ``hh_rlhf`` dialogues: one component named after the source.

HH-RLHF dialogues whose reply is empty are skipped and counted (nothing to learn); every other malformed
record raises ``DataError`` naming file:index.

Decontamination (``data.decontam``, on by default against the SNS-Bench and TransBench test sets): an
example whose item text shares a 13-gram with an eval item is dropped, counted per component and eval
set, with the number of eval items those drops overlapped.

Tokens: the tokenizer's chat template, loss on assistant tokens (``data.loss_on: all`` for every token),
over-long examples truncated in the middle of the last user turn, dropped, or refused
(``data.overlong``), all counted; one cache entry per component keyed by the source digest, the data
settings that shape the tokens and the tokenizer digest. ``data.eval_holdout`` examples per component
are held out for ``eval_loss/<task>``. Mixing: ratio (a source's weight split over its components by
size^(1/T)) or temperature (p ~ n^(1/T) over components), exact token shares. Packing: first-fit
lookahead into rows of ``data.seq_len`` (``data.packing: false`` = one example per row, padded).

Errors: ``DataError`` for malformed records (file:index), unknown task files, an over-long example
under ``data.overlong: error`` or a component with nothing left.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from redone.config.schema import QualityDecontam, SFTConfig, SourceSection
from redone.data import records
from redone.data.cache import cached_store, tokenizer_digest
from redone.data.chat import encode_chat
from redone.data.decontam import eval_set_digests, screen_counted
from redone.data.mixture import MixtureSampler, mixture_probs, split_source_weights
from redone.data.packing import ItemPacker, TokenStore, split_holdout
from redone.data.sources import detect_format, read_records, source_digest, source_name
from redone.data.stage_data import StageData
from redone.errors import DataError
from redone.sns import tasks as sns_tasks


@dataclass
class Component:
    name: str  # the tag used in metrics: a task name or the source name
    source: int  # index of the config source it came from
    examples: list[dict] = field(default_factory=list)  # {"messages": [...], "item": original item}
    skipped: int = 0
    decontaminated: dict = field(default_factory=dict)  # eval set -> examples dropped
    eval_items_affected: dict = field(default_factory=dict)  # eval set -> its items the drops overlapped


def sns_bench_files(folder: Path, tasks: list[str]) -> list[Path]:
    files = sorted(folder.glob("Note-*.json"))
    if tasks:
        unknown = set(tasks) - {f.stem for f in files}
        if unknown:
            raise DataError(f"{folder}: no task file(s) {sorted(unknown)} (known: {[f.stem for f in files]})")
        files = [f for f in files if f.stem in set(tasks)]
    if not files:
        raise DataError(f"{folder}: no SNS-Bench Note-*.json files")
    return files


def item_styles(style: str, official_share: float, component: str, n: int, seed: int) -> list[str]:
    """The prompt style of each of ``n`` items: ``style`` itself, or for "mixed" "official" with
    probability ``official_share`` by a hash of (seed, component, item) -- the same item always gets the
    same style, whatever else the mixture holds."""
    if style != "mixed":
        return [style] * n
    draws = [int.from_bytes(hashlib.blake2b(f"{seed}:{component}:{i}".encode(), digest_size=8).digest(), "big")
             / 2.0 ** 64 for i in range(n)]
    return ["official" if u < official_share else "redone" for u in draws]


def task_components(source: SourceSection, index: int, style: str,
                    max_prompt_chars: int | None = None, official_share: float = 0.5,
                    seed: int = 0) -> list[Component]:
    fmt = detect_format(source)
    path = Path(source.path)
    if fmt == "sns_bench":
        components = []
        for file in sns_bench_files(path, list(source.tasks)):
            lined = sns_tasks.item_lines(file)[: source.limit or None]
            styles = item_styles(style, official_share, file.stem, len(lined), seed)
            examples = [{"messages": sns_tasks.build_example(
                file.stem, sns_tasks.clip_item(file.stem, item, max_prompt_chars), styles[i],
                where=f"{file}:{line}")["messages"], "item": item, "where": f"{file}:{line}"}
                for i, (line, item) in enumerate(lined)]
            components.append(Component(file.stem, index, examples))
        return components
    if fmt == "transbench":
        lined = sns_tasks.item_lines(path, sns_tasks.TRANSBENCH)[: source.limit or None]
        styles = item_styles(style, official_share, "TransBench", len(lined), seed)
        by_task: dict[str, Component] = {}
        for i, (line, item) in enumerate(lined):
            task = sns_tasks.transbench_task(item, where=f"{path}:{line}")
            example = sns_tasks.build_example(task, item, styles[i], where=f"{path}:{line}")
            by_task.setdefault(task, Component(task, index)).examples.append(
                {"messages": example["messages"], "item": item, "where": f"{path}:{line}"})
        return [by_task[name] for name in sorted(by_task)]
    return [chat_component(source, index, fmt)]


def chat_component(source: SourceSection, index: int, fmt: str) -> Component:
    component = Component(source_name(source), index)
    for i, record in enumerate(read_records(source)):
        where = f"{source.path}:{record.get('_line', i + 1)}"  # the record's 1-based line in its file
        if fmt == "hh_rlhf":
            messages = records.parse_hh_dialogue(record.get("chosen", ""), where)
            if any(not m["content"].strip() for m in messages):
                component.skipped += 1
                continue
        else:
            messages = records.messages_from_record(
                {k: v for k, v in record.items() if k != "_line"}, source.path, record.get("_line", i + 1))
        component.examples.append({"messages": messages, "item": record, "where": where})
    if not component.examples:
        raise DataError(f"{source.path}: source '{component.name}' has no usable examples")
    return component


def all_components(sources: list[SourceSection], style: str, max_prompt_chars: int | None = None,
                   official_share: float = 0.5, seed: int = 0) -> list[Component]:
    components = []
    for index, source in enumerate(sources):
        components.extend(task_components(source, index, style, max_prompt_chars, official_share, seed))
    names = [c.name for c in components]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"data.sources: component name(s) {duplicates} appear twice; give the sources distinct names")
    return components


# ---------------------------------------------------------------- tokens, split, mixture, packer


def build_sft_data(config: SFTConfig, tokenizer) -> StageData:
    """Every component tokenized (cached), split into train and held-out items, mixed and packed."""
    data = config.data
    components = all_components(list(data.sources), data.prompt_style, data.max_prompt_chars,
                                data.official_share, config.seed)
    for component in components:
        decontaminate_component(component, data.decontam)
    train_stores, held_out, infos = [], {}, []
    for component in components:
        store, manifest, hit = tokenized_component(component, tokenizer, config)
        train_idx, held_idx = split_holdout(store, data.eval_holdout, config.seed, component.name)
        train_stores.append(store.subset(train_idx))
        if len(held_idx):
            held_out[component.name] = store.subset(held_idx)
        infos.append({
            "name": component.name, "source": data.sources[component.source].path,
            "digest": manifest["parts"]["digest"], "examples": len(train_idx), "held_out": len(held_idx),
            "tokens": int(train_stores[-1].tokens.size), "truncated": manifest.get("truncated", 0),
            "dropped_overlong": manifest.get("dropped_overlong", 0), "skipped": component.skipped,
            "decontaminated": sum(component.decontaminated.values()),
            "decontaminated_by": component.decontaminated, "eval_items_affected": component.eval_items_affected,
            "cache_hit": hit})
    probs = component_probs(components, train_stores, data)
    for info, p in zip(infos, probs):
        info["planned_share"] = p
    sampler = MixtureSampler([s.lengths() for s in train_stores], probs, config.seed)
    packer = ItemPacker(train_stores, sampler, data.seq_len, tokenizer.pad_token_id, data.packing)
    return StageData(infos, packer, held_out=held_out, stores=train_stores)


def tokenized_component(component: Component, tokenizer, config: SFTConfig):
    """(TokenStore, manifest, cache hit) of one component."""
    data = config.data
    source = data.sources[component.source]
    parts = {"kind": "sft-examples", "component": component.name, "digest": source_digest(source),
             "format": source.format, "limit": source.limit, "style": data.prompt_style,
             "mixed": [data.official_share, config.seed] if data.prompt_style == "mixed" else None,
             "seq_len": data.seq_len, "max_prompt_chars": data.max_prompt_chars, "loss_on": data.loss_on,
             "overlong": data.overlong, "examples": len(component.examples),
             "decontam": decontam_parts(data.decontam), "tokenizer": tokenizer_digest(tokenizer)}
    return cached_store(data.cache_dir, parts, lambda: tokenize_component(component, tokenizer, data))


def decontaminate_component(component: Component, cfg: QualityDecontam) -> None:
    """Drop the component's examples that share an n-gram with an eval set (redone.data.decontam)."""
    texts = [example_text(example) for example in component.examples]
    kept, dropped, affected = screen_counted(texts, cfg)
    if dropped:
        component.eval_items_affected = affected
        component.examples = [component.examples[i] for i in kept]
        component.decontaminated = dict(sorted(dropped.items()))
    if not component.examples:
        raise DataError(f"component '{component.name}': every example overlaps an eval set (data.decontam)")


def example_text(example: dict) -> str:
    """The text an example could leak: an SNS task item's note/query/answer fields, a TransBench pair,
    or a chat record's turns (never the prompt template around them)."""
    return item_text(example.get("item") or {}) or "\n".join(m["content"] for m in example["messages"])


def item_text(item: dict) -> str:
    fields = ("query", "question", "sentence1", "sentence2", "content", "answer", "zh", "en")
    parts = [item[k] if isinstance(item[k], str) else " ".join(map(str, item[k]))
             for k in fields if isinstance(item.get(k), (str, list))]
    return "\n".join(parts)


def decontam_parts(cfg: QualityDecontam) -> dict | None:
    """What decontaminated data depends on (cache keys): the settings and the eval sets' content."""
    if not cfg.eval_sets:
        return None
    return {"ngram": cfg.ngram, "min_overlap": cfg.min_overlap, "min_item_tokens": cfg.min_item_tokens,
            "boilerplate_min_items": cfg.boilerplate_min_items,
            "eval_sets": [{"name": Path(p).name, "digest": d} for p, d in zip(cfg.eval_sets, eval_set_digests(cfg))]}


def tokenize_component(component: Component, tokenizer, data) -> tuple[TokenStore, dict]:
    ids, masks, counts = [], [], Counter()
    for i, example in enumerate(component.examples):
        encoded = encode_chat(tokenizer, example["messages"], loss_on=data.loss_on, max_len=data.seq_len,
                              overlong=data.overlong, where=example.get("where") or f"{component.name}:{i}")
        if encoded is None:
            counts["dropped_overlong"] += 1
            ids.append([])
            masks.append([])
            continue
        counts["truncated"] += encoded.truncated
        ids.append(encoded.ids)
        masks.append(encoded.mask)
    # Dropped examples stay as empty items so item indices keep matching the examples list.
    return TokenStore.from_lists(ids, masks), dict(counts, examples=len(component.examples))


def component_probs(components: list[Component], stores: list[TokenStore], data) -> list[float]:
    tokens = [int(s.tokens.size) for s in stores]
    if data.mixing == "temperature":
        return mixture_probs([], tokens, "temperature", data.temperature)
    # Ratio mode: a source's weight is shared by its components by size^(1/T) (T = 1: by size).
    weights = split_source_weights([c.source for c in components], [s.weight for s in data.sources], tokens,
                                   data.temperature)
    return mixture_probs(weights, tokens, "ratio", 1.0)
