"""CPT: continued pretraining on domain text mixed with general text.

Features
- Sources: .txt (paragraph/line/file units), JSONL/JSON/parquet/hub records (``text_field`` or several
  ``text_fields``), SNS-Bench note text (titles/bodies, exact duplicates removed); each with a weight.
- Mixing by ratio or temperature (p ~ n^(1/T) over source token counts), exact token shares.
- Curation before tokenization (``data.quality``, redone/data/prepare.py): quality filters, exact + near
  dedup across all sources, decontamination against the eval sets; every drop counted per source.
- Kept documents tokenized once (``datasets.map``, batched, ``num_proc``), EOS appended; one cache entry
  per corpus, keyed by content, data config and tokenizer/template (a full hit skips curation too).
- Packed into full ``seq_len`` rows; by default attention is masked at document boundaries
  (position_ids restart), ``data.cross_document_attention: true`` allows it.
- Loss: next-token cross-entropy over every token, per-source sums logged.

Errors: ``DataError`` for unreadable/malformed/empty sources (file:line), ``ConfigError`` via the schema.
"""

from __future__ import annotations

from redone.config.schema import CPTConfig
from redone.data.mixture import MixtureSampler, mixture_probs
from redone.data.packing import DocumentPacker
from redone.data.prepare import prepare_cpt, tokenize_documents  # noqa: F401  (re-exported)
from redone.train.base import LossOutput, Stage, token_ce_loss


class CPTStage(Stage):
    name = "cpt"

    def __init__(self, config: CPTConfig, tokenizer):
        super().__init__(config, tokenizer)
        data = config.data
        stores, self.data_report, hit = prepare_cpt(config, tokenizer)
        for info in self.data_report["sources"]:
            self.source_names.append(info["name"])
            self.source_info.append({**info, "cache_hit": hit})
        token_counts = [int(s.tokens.size) for s in stores]
        self.probs = mixture_probs([s.weight for s in data.sources], token_counts, data.mixing, data.temperature)
        for info, p in zip(self.source_info, self.probs):
            info["planned_share"] = p
        sampler = MixtureSampler([s.lengths() for s in stores], self.probs, config.seed)
        self.packer = DocumentPacker(stores, sampler, data.seq_len, data.cross_document_attention)

    def loss(self, model, batch: dict) -> LossOutput:
        return token_ce_loss(model, batch, self.source_names)
