"""SFT: multi-task supervised fine-tuning over the SNS task families plus general chat data.

Features
- Sources: SNS-Bench task folders (one mixture component per task file), SNS-TransBench (one per
  direction), general chat (``messages``, instruction/output, self-instruct, HH-RLHF "chosen"
  dialogues). Prompts come from the same builder evaluation uses (``redone.sns.tasks``).
- The tokenizer's chat template; loss on assistant tokens only (``data.loss_on: all`` for every token);
  multi-turn conversations; over-long examples truncated in the middle of the last user turn, dropped,
  or refused (``data.overlong``), all counted.
- Mixing across tasks and general data by ratio (a source's weight is split over its components by
  size) or temperature (p ~ n^(1/T) over components), exact token shares, resumable.
- Padding-free packing (position_ids restart per example; no cross-example attention), loss weighted
  per token across packed rows; ``data.packing: false`` gives the padded path for comparison.
- Per-task train loss (``loss/<task>``) every log step and per-task held-out loss
  (``eval_loss/<task>``) every ``train.eval_every`` steps on ``data.eval_holdout`` items per task.

Errors: ``DataError`` for malformed records (file:index), unknown task files, an over-long example under
``data.overlong: error``; ``ConfigError`` from the schema.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from redone.config.schema import SFTConfig
from redone.data.cache import cached_store, tokenizer_digest
from redone.data.chat import encode_chat
from redone.data.examples import Component, all_components
from redone.data.mixture import MixtureSampler, mixture_probs, split_source_weights
from redone.data.packing import ItemPacker, TokenStore, collate, pack_in_order
from redone.data.sources import source_digest
from redone.errors import DataError
from redone.train.base import LossOutput, Stage, token_ce_loss


def tokenize_component(component: Component, tokenizer, data) -> tuple[TokenStore, dict]:
    ids, masks, counts = [], [], Counter()
    for i, example in enumerate(component.examples):
        encoded = encode_chat(tokenizer, example["messages"], loss_on=data.loss_on, max_len=data.seq_len,
                              overlong=data.overlong, where=f"{component.name}:{i}")
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


def split_holdout(store: TokenStore, holdout: int, seed: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out item indices (empty, i.e. dropped, items are in neither)."""
    usable = np.flatnonzero(store.lengths() > 0)
    if len(usable) == 0:
        raise DataError(f"{name}: every example was dropped as over-long (raise data.seq_len)")
    order = np.random.default_rng([seed, 7]).permutation(usable)
    held = np.sort(order[:holdout]) if holdout else np.array([], dtype=np.int64)
    train = np.sort(order[holdout:])
    if len(train) == 0:
        raise DataError(f"{name}: data.eval_holdout={holdout} leaves no training examples")
    return train, held


class SFTStage(Stage):
    name = "sft"

    def __init__(self, config: SFTConfig, tokenizer):
        super().__init__(config, tokenizer)
        data = config.data
        components = all_components(list(data.sources), data.prompt_style, data.max_prompt_chars)
        train_stores, self.eval_stores = [], {}
        for component in components:
            store, manifest, hit = self._tokenized(component)
            train_idx, held_idx = split_holdout(store, data.eval_holdout, config.seed, component.name)
            train_stores.append(store.subset(train_idx))
            if len(held_idx):
                self.eval_stores[component.name] = store.subset(held_idx)
            self.source_names.append(component.name)
            self.source_info.append({
                "name": component.name, "source": data.sources[component.source].path,
                "digest": manifest["parts"]["digest"], "examples": len(train_idx), "held_out": len(held_idx),
                "tokens": int(train_stores[-1].tokens.size), "truncated": manifest.get("truncated", 0),
                "dropped_overlong": manifest.get("dropped_overlong", 0), "skipped": component.skipped,
                "cache_hit": hit})
        self.probs = component_probs(components, train_stores, data)
        for info, p in zip(self.source_info, self.probs):
            info["planned_share"] = p
        sampler = MixtureSampler([s.lengths() for s in train_stores], self.probs, config.seed)
        self.packer = ItemPacker(train_stores, sampler, data.seq_len, tokenizer.pad_token_id, data.packing)

    def _tokenized(self, component: Component):
        data = self.config.data
        source = data.sources[component.source]
        parts = {"kind": "sft-examples", "component": component.name, "digest": source_digest(source),
                 "format": source.format, "limit": source.limit, "style": data.prompt_style,
                 "seq_len": data.seq_len, "max_prompt_chars": data.max_prompt_chars, "loss_on": data.loss_on, "overlong": data.overlong,
                 "examples": len(component.examples), "tokenizer": tokenizer_digest(self.tokenizer)}
        return cached_store(data.cache_dir, parts, lambda: tokenize_component(component, self.tokenizer, data))

    def loss(self, model, batch: dict) -> LossOutput:
        return token_ce_loss(model, batch, self.source_names)

    def eval_batches(self) -> dict[str, list[dict]]:
        data, size = self.config.data, self.config.train.micro_batch_size
        batches = {}
        for name, store in self.eval_stores.items():
            rows = pack_in_order(store, self.source_names.index(name), data.seq_len,
                                 self.tokenizer.pad_token_id, data.packing)
            batches[name] = [collate(rows[i:i + size], self.tokenizer.pad_token_id, self.layout)
                             for i in range(0, len(rows), size)]
        return batches


def component_probs(components: list[Component], stores: list[TokenStore], data) -> list[float]:
    tokens = [int(s.tokens.size) for s in stores]
    if data.mixing == "temperature":
        return mixture_probs([], tokens, "temperature", data.temperature)
    # Ratio mode: a source's weight is shared by its components by size^(1/T) (T = 1: by size).
    weights = split_source_weights([c.source for c in components], [s.weight for s in data.sources], tokens,
                                   data.temperature)
    return mixture_probs(weights, tokens, "ratio", 1.0)
