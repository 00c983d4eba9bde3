"""CPT: continued pretraining on domain text mixed with general text.

Features
- Sources: .txt (paragraph/line/file units), JSONL/JSON/parquet/hub records (``text_field`` or several
  ``text_fields``), SNS-Bench note text (titles/bodies, exact duplicates removed); each with a weight.
- Mixing by ratio or temperature (p ~ n^(1/T) over source token counts), exact token shares.
- Documents tokenized once (``datasets.map``, batched, ``num_proc``), EOS appended, cached by content.
- Packed into full ``seq_len`` rows; by default attention is masked at document boundaries
  (position_ids restart), ``data.cross_document_attention: true`` allows it.
- Loss: next-token cross-entropy over every token, per-source sums logged.

Errors: ``DataError`` for unreadable/malformed/empty sources (file:line), ``ConfigError`` via the schema.
"""

from __future__ import annotations

import numpy as np

from redone.config.schema import CPTConfig
from redone.data.cache import cached_store, tokenizer_digest
from redone.data.mixture import MixtureSampler, mixture_probs
from redone.data.packing import DocumentPacker, TokenStore
from redone.data.sources import read_documents, source_digest, source_name
from redone.train.base import LossOutput, Stage, token_ce_loss


def tokenize_documents(docs: list[str], tokenizer, append_eos: bool, num_proc: int) -> TokenStore:
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


class CPTStage(Stage):
    name = "cpt"

    def __init__(self, config: CPTConfig, tokenizer):
        super().__init__(config, tokenizer)
        data = config.data
        stores = []
        for source in data.sources:
            store, manifest, hit = self._load_source(source)
            stores.append(store)
            self.source_names.append(source_name(source))
            self.source_info.append({"name": source_name(source), "path": source.path,
                                     "digest": manifest["parts"]["digest"], "documents": len(store),
                                     "tokens": int(store.tokens.size), "cache_hit": hit})
        token_counts = [int(s.tokens.size) for s in stores]
        self.probs = mixture_probs([s.weight for s in data.sources], token_counts, data.mixing, data.temperature)
        for info, p in zip(self.source_info, self.probs):
            info["planned_share"] = p
        sampler = MixtureSampler([s.lengths() for s in stores], self.probs, config.seed)
        self.packer = DocumentPacker(stores, sampler, data.seq_len, data.cross_document_attention)

    def _load_source(self, source):
        data = self.config.data
        parts = {"kind": "cpt-documents", "digest": source_digest(source), "format": source.format,
                 "text_field": source.text_field, "text_fields": list(source.text_fields),
                 "text_unit": source.text_unit, "limit": source.limit, "tasks": list(source.tasks),
                 "append_eos": data.append_eos, "tokenizer": tokenizer_digest(self.tokenizer)}

        def build():
            docs = read_documents(source)
            store = tokenize_documents(docs, self.tokenizer, data.append_eos, data.num_proc)
            return store, {"documents": len(docs)}

        return cached_store(data.cache_dir, parts, build)

    def loss(self, model, batch: dict) -> LossOutput:
        return token_ce_loss(model, batch, self.source_names)


def realised_shares(stage: CPTStage) -> list[float]:
    return list(np.round(stage.packer.sampler.shares(), 4))
