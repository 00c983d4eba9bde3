"""SFT: multi-task supervised fine-tuning over the SNS task families plus general chat data.

The data path (components per task file / direction / chat source, chat-template tokens with assistant
loss masks, held-out examples, mixture, padding-free packing) is ``redone.data.sft``; prompts come from
the builder evaluation uses (``redone.sns.tasks``). This module is the loss: cross-entropy on the
assistant tokens (``data.loss_on: all``: every token), weighted per token across packed rows, with
per-task sums logged as ``loss/<task>`` and held-out ``eval_loss/<task>`` every ``train.eval_every``
steps (``data.eval_holdout`` examples per task).

Errors: those of the data path (``DataError``, ``ConfigError``).
"""

from __future__ import annotations

from redone.config.schema import SFTConfig
from redone.data.sft import build_sft_data
from redone.train.base import LossOutput, Stage, token_ce_loss


class SFTStage(Stage):
    name = "sft"

    def __init__(self, config: SFTConfig, tokenizer):
        super().__init__(config, tokenizer, build_sft_data(config, tokenizer))

    def loss(self, model, batch: dict) -> LossOutput:
        return token_ce_loss(model, batch, self.source_names)
