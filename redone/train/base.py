"""What a stage gives the loop: data (its data path's resumable drawer) and a loss over one micro-batch.

The loop never looks inside a batch. A stage's ``loss`` returns the *sum* of its per-unit losses and
the number of units (tokens for cpt/sft, pairs for dpo), so the loop can weight gradient accumulation
by real units across micro-batches and processes, plus per-tag sums for per-source/per-task metrics.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from redone.config.schema import RunConfig
from redone.data.packing import IGNORE, collate, pack_in_order
from redone.data.stage_data import StageData


@dataclass
class LossOutput:
    loss_sum: torch.Tensor  # differentiable sum over units
    units: int  # tokens (cpt/sft) or pairs (dpo) the sum is over
    real_tokens: int  # non-pad input tokens (throughput)
    tags: dict[str, list[float]] = field(default_factory=dict)  # tag -> [loss sum, units, ...extras]


class Stage:
    """Base class: a subclass hands its data path's ``StageData`` to ``__init__`` and defines ``loss``."""

    name = "base"

    def __init__(self, config: RunConfig, tokenizer, data: StageData):
        self.config = config
        self.tokenizer = tokenizer
        self.data = data
        self.layout = "rows"  # rows | flat | padded (set by the loop from the attention choice)

    @property
    def source_names(self) -> list[str]:
        return self.data.names

    @property
    def source_info(self) -> list[dict]:
        """Lineage of every mixture component (written into final/redone.json)."""
        return self.data.components

    @property
    def drawer(self):
        return self.data.drawer

    def prepare_model(self, model) -> None:
        """Hook before training starts (dpo computes its reference cache here)."""

    def next_batch(self, rank: int, world: int) -> dict:
        """The next global micro-batch (world * micro_batch_size rows); this rank keeps its share."""
        rows = [self.drawer.next_row() for _ in range(world * self.config.train.micro_batch_size)]
        return collate(rows[rank::world], self.tokenizer.pad_token_id, self.layout)

    def loss(self, model, batch: dict) -> LossOutput:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return self.drawer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.drawer.load_state_dict(state)

    def batch_units(self, batch: dict) -> int:
        """Units the loss of this batch is averaged over, known before the forward pass."""
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def tag_names(self) -> list[str]:
        """Every tag the loss may report (all ranks reduce the same list)."""
        return list(self.source_names)

    def tag_metrics(self, tag: str, totals: list[float]) -> dict[str, float]:
        """Log entries for one tag's summed values ([loss sum, tokens] for token losses)."""
        return {f"loss/{tag}": totals[0] / max(totals[1], 1), f"tokens/{tag}": totals[1]}

    def eval_batches(self) -> dict[str, list[dict]]:
        """Held-out batches per component for the periodic eval loss: each held-out item once, packed
        as in training (``data.eval_holdout`` items per component; none when 0)."""
        data, size = self.config.data, self.config.train.micro_batch_size
        batches = {}
        for name, store in self.data.held_out.items():
            rows = pack_in_order(store, self.source_names.index(name), data.seq_len,
                                 self.tokenizer.pad_token_id, data.packing)
            batches[name] = [collate(rows[i:i + size], self.tokenizer.pad_token_id, self.layout)
                             for i in range(0, len(rows), size)]
        return batches

    def held_out_metrics(self, model) -> dict[str, float]:
        """What the periodic eval logs: ``eval_loss/<tag>`` (dpo adds reward accuracy and margins)."""
        return held_out_losses(self, model)


def model_inputs(batch: dict) -> dict:
    keys = ("input_ids", "position_ids", "attention_mask")
    return {k: batch[k] for k in keys if k in batch}


def token_logprobs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-prob of each label under the model, and the mask of scored tokens.

    Returns tensors of shape [B, L-1] aligned with ``labels[:, 1:]`` (position t predicts t+1). Only the
    scored positions go through the LM head (``logits_to_keep`` as a boolean mask): in SFT and DPO most
    tokens are prompt, and the vocab projection plus its softmax is the largest single cost per token.
    """
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    keep = torch.zeros_like(batch["labels"], dtype=torch.bool)
    keep[:, :-1] = mask
    logits = model(**model_inputs(batch), use_cache=False, logits_to_keep=keep.to(model_device(model))).logits
    if logits.dim() == 3:  # a model that ignores logits_to_keep masks returns every position
        logits = logits[:, :-1][mask.to(logits.device)]
    targets = labels[mask].to(logits.device)
    selected = -F.cross_entropy(logits.float(), targets, reduction="none")
    logp = torch.zeros(mask.shape, dtype=selected.dtype, device=selected.device)
    logp[mask.to(selected.device)] = selected
    return logp, mask.to(selected.device)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def token_tag_ids(batch: dict, shape: tuple[int, int], device) -> torch.Tensor:
    """[B, L-1] source index of each scored position (-1 outside segments), from the segment list."""
    tags = torch.full(shape, -1, dtype=torch.long)
    for seg in batch["segments"]:
        # Position t scores label t+1: a segment [start, start+length) is scored at [start-1, start+length-1).
        tags[seg.row, max(seg.start - 1, 0): seg.start + seg.length - 1] = seg.source
    return tags.to(device)


def token_ce_loss(model, batch: dict, source_names: list[str]) -> LossOutput:
    """Next-token cross-entropy summed over labelled tokens, with per-source sums (cpt and sft)."""
    logp, mask = token_logprobs(model, batch)
    nll = -logp
    tags: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    tag_ids = token_tag_ids(batch, tuple(mask.shape), mask.device)
    with torch.no_grad():
        detached = nll.detach()
        for index, name in enumerate(source_names):
            selected = mask & (tag_ids == index)
            count = int(selected.sum())
            if count:
                tags[name][0] += float(detached[selected].sum())
                tags[name][1] += count
    return LossOutput(nll.sum(), int(mask.sum()), real_tokens(batch), dict(tags))


def real_tokens(batch: dict) -> int:
    """Tokens that belong to a segment (row tails and padding excluded)."""
    return sum(segment.length for segment in batch["segments"])


@torch.no_grad()
def held_out_losses(stage: Stage, model) -> dict[str, float]:
    """Mean loss per tag on the stage's held-out batches (``eval_loss/<tag>``)."""
    results = {}
    for name, batches in stage.eval_batches().items():
        total, units = 0.0, 0
        for batch in batches:
            out = stage.loss(model, batch)
            total += float(out.loss_sum)
            units += out.units
        results[f"eval_loss/{name}"] = total / max(units, 1)
    return results
