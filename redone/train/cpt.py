"""CPT: continued pretraining on domain text mixed with general text.

The data path (sources, curation, tokens, mixture, packed rows, held-out documents) is
``redone.data.cpt``; this module is the loss: next-token cross-entropy over every token of the packed
documents (the first token of each document is not predicted from the previous one), with per-source
sums logged as ``loss/<source>`` and, with ``data.eval_holdout``, ``eval_loss/<source>`` on held-out
documents every ``train.eval_every`` steps.

Errors: those of the data path (``DataError``, ``ConfigError``).
"""

from __future__ import annotations

from redone.config.schema import CPTConfig
from redone.data.cpt import build_cpt_data
from redone.train.base import LossOutput, Stage, token_ce_loss


class CPTStage(Stage):
    name = "cpt"

    def __init__(self, config: CPTConfig, tokenizer):
        super().__init__(config, tokenizer, build_cpt_data(config, tokenizer))

    @property
    def data_report(self) -> dict:
        return self.data.report

    def loss(self, model, batch: dict) -> LossOutput:
        return token_ce_loss(model, batch, self.source_names)
