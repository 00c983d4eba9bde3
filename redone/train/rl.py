"""RL: GRPO / DAPO on verifiable rewards -- the SNS-Bench metrics themselves -- sampled from the policy.

One step, top to bottom (the loop in ``redone.train.loop`` is unchanged; this stage fills its hooks):
1. ``next_batch``: at the start of a generation batch, draw prompts from the mixture
   (``redone.data.rl``), sample ``rl.group_size`` completions of each with the current policy
   (``redone.eval.generate.HFGenerator`` with seeded sampling and the KV cache; vLLM on CUDA when
   installed), score them (``redone.sns.rewards``), shape over-long answers, drop groups whose
   rewards are all equal and refill (dynamic sampling), compute group-normalised advantages, then
   hand the batch out as packed micro-batches (prompt + completion per segment, loss on completion
   tokens only). The batch serves ``rl.updates_per_batch`` optimizer steps.
2. ``loss``: per-token log-probs of the completions under the policy (logits / ``rl.temperature``, as
   the sampler drew them), importance ratio to the sampling policy, decoupled clip, optional KL to the
   starting policy, aggregated per ``rl.loss_type``.

Features
- Loss types (the same numbers as TRL 1.16 ``GRPOTrainer._compute_loss``, tested to 1e-5 with gradients):
  ``grpo`` (per-sequence token mean, then mean over sequences), ``dapo`` (token-level: sum over every
  completion token of the step / their count), ``dr_grpo`` (token sum / (sequences x max answer length)).
  Per-token term: ``-min(r A, clip(r, 1 - epsilon_low, 1 + epsilon_high) A)`` (+ ``kl_beta`` x r x k3 KL).
- Advantages: ``(R - mean_group) / (std_group + 1e-4)`` (``rl.scale_rewards: group``; ``batch`` uses
  the batch std, ``none`` no division, the Dr. GRPO choice and its ``auto`` default). Unbiased std.
- Importance ratio: old log-probs are the sampling policy's. At the first update of a batch the policy
  *is* the sampling policy (no optimizer step happens between sampling and the step's micro-batches),
  so the ratio is exactly 1 and the old log-probs are taken from that forward pass (detached) and
  kept for updates 2..``rl.updates_per_batch``, where the clip acts. No extra forward pass.
- DAPO: decoupled clip (0.2 / 0.28), dynamic sampling (``rl.dynamic_sampling``; bounded by
  ``rl.max_refill_rounds`` extra generation rounds, after which the batch is completed with dropped
  groups, whose advantage is 0), token-level aggregation (``dapo``), over-long shaping
  (``rl.overlong: soft``: reward += penalty x ((L - buffer) - len) / buffer over the last
  ``overlong_buffer`` share of the task's answer budget L, -penalty at the budget; ``mask``: no loss
  on answers cut by the budget).
- Per-task answer budgets (the task registry's ``max_new_tokens``, capped by ``rl.max_new_tokens``) and
  the chat template's end-of-turn stop tokens: a Yes/No answer samples at most 4 tokens.
- KL (``rl.kl_beta > 0``, off by default as in DAPO): k3 estimator to the starting policy, weighted by
  the importance ratio (the unbiased reverse-KL gradient; TRL's default). The DPO
  on-disk reference cache cannot serve it: completions are sampled from the moving policy, so their
  reference log-probs do not exist before the step that samples them (a cache keyed by prompt +
  completion would only hit on a rerun with the same seed). So the reference log-probs are computed
  once per generation batch, no-grad, right after sampling: with LoRA by the same model with its
  adapters switched off (no second copy); otherwise by a frozen copy of the starting weights kept
  resident (one extra model in memory, only when KL is on).
- Resume: the stage state is the prompt drawer's position plus the count of generation rounds. Each
  round's sampling RNG is a ``torch.Generator`` seeded from (seed, process rank, round), so a
  resumed run samples exactly what an uninterrupted one would: bitwise equal on CPU (tested).
  Checkpoints fall on generation-batch boundaries (``train.save_every`` is a multiple of
  ``rl.updates_per_batch``), so no half-used batch has to be saved.
- Several processes: every process draws the same prompts and keeps its share of the groups, samples
  with its own seed, and the refill rounds run in lockstep (one max-reduction per round).
- Metrics per task in ``train_log.jsonl`` (see ``tag_metrics``): ``reward/``, ``reward_std/``,
  ``reward_<fn>/`` per reward function, ``kept/`` (share of groups kept by dynamic sampling),
  ``groups/``, ``length/`` (mean answer tokens), ``truncated/``, ``clip_frac/``, ``kl/`` (KL on),
  ``loss/``, ``tokens/`` (answer tokens sampled). Every ``train.eval_every`` steps, greedy answers to
  the held-out prompts: ``eval_reward/<task>``, ``eval_reward_<fn>/<task>``, ``eval_length/<task>`` and
  ``eval_reward/mean`` (mean over tasks).
- Generation backends (``rl.backend``): ``hf`` (transformers ``generate``, KV cache, left padding);
  ``vllm`` (colocated ``vllm.LLM``, weights loaded from the policy before every generation round;
  CUDA only, written against vLLM's ``LLM`` API and NOT exercised by the test suite: vllm is not
  installed on the CPU machines); ``auto`` = vllm on CUDA when importable, else hf.

Errors (``RedoneError`` / ``ConfigError``, one line): ``rl.group_size`` < 2 (advantages would all be 0),
unknown reward names and failing reward functions (``redone.sns.rewards``), ``rl.backend: vllm``
without vllm or without CUDA, vLLM with LoRA, generation under ZeRO-3 / FSDP sharded parameters,
resuming from a checkpoint taken in the middle of a generation batch.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from redone.config.schema import RLConfig
from redone.data.packing import IGNORE, RowBuilder, collate, first_fit_decreasing
from redone.data.rl import Prompt, build_rl_data
from redone.errors import RedoneError
from redone.sns.rewards import resolve_rewards, score
from redone.train.base import LossOutput, Stage, model_inputs

ADV_EPS = 1e-4  # added to the std before dividing (TRL's value)
SEGMENT_AWARE = ("sdpa_segments", "flash_attention_2")  # attention implementations that cost sum(l_i^2) per row
# Per-task sums reported by ``loss`` (generation statistics ride on the first micro-batch of a batch);
# one "reward_<fn>" sum per reward function follows these.
TAG_FIELDS = ("loss", "tokens", "units", "trained_tokens", "clipped", "kl", "completions", "reward",
              "reward_sq", "groups", "kept", "truncated")
F_ = {name: i for i, name in enumerate(TAG_FIELDS)}


@dataclass
class Rollout:
    """One sampled completion of one prompt, with everything the loss needs."""

    prompt: Prompt
    completion: list[int]  # new token ids, through the stop token when one ended the answer
    text: str  # decoded answer (what the rewards read)
    hit_budget: bool
    rewards: list[float]  # each reward function's value, unweighted
    reward: float = 0.0  # weighted sum + over-long shaping: what the advantages are computed from
    advantage: float = 0.0
    old_logps: torch.Tensor | None = None  # sampling policy's per-token log-probs (set at update 0)
    ref_logps: torch.Tensor | None = None  # reference per-token log-probs (KL on)


@dataclass
class GenerationBatch:
    rollouts: list[Rollout]  # this process's share, whole groups of group_size, in order
    stats: dict[int, list[float]] = field(default_factory=dict)  # component -> TAG_FIELDS sums


class RLStage(Stage):
    name = "rl"

    def __init__(self, config: RLConfig, tokenizer):
        super().__init__(config, tokenizer, build_rl_data(config, tokenizer))
        rl = config.rl
        self.rl = rl
        self.rewards = resolve_rewards(list(rl.rewards), list(rl.reward_weights))
        self.reward_fields = tuple(f"reward_{r.name}" for r in self.rewards)
        self.width = len(TAG_FIELDS) + len(self.rewards)
        self.scale_rewards = resolve_scale_rewards(rl.scale_rewards, rl.loss_type)
        # Dr. GRPO divides by a constant: the longest answer any prompt may get.
        self.max_answer = max(p.budget for prompts in self.data.prompts for p in prompts)
        self.policy = None  # the unwrapped model (set in prepare_model); generation runs on it
        self.reference = None
        self.backend = None
        self.batch: GenerationBatch | None = None
        self.served = 0  # micro-batches handed out from the current batch
        self.rounds = 0  # generation rounds so far (seeds each round's sampling RNG)
        self.rank, self.world = 0, 1
        self.row_width: int | None = None  # packed row width (None: the micro-batch's longest sequence)

    # ------------------------------------------------------------ model hooks

    def prepare_model(self, model) -> None:
        """Keep the policy for sampling, switch dropout off, build the reference (KL) and the sampler."""
        from redone.distributed import is_partitioned

        if is_partitioned(model):
            raise RedoneError("rl: sampling needs whole parameters on every process; ZeRO-3 shards them "
                              "(use DDP or ZeRO-2 for the rl stage)")
        disable_dropout(model)  # the importance ratio assumes one deterministic policy (TRL does the same)
        self.policy = model
        if getattr(model.config, "_attn_implementation", None) in SEGMENT_AWARE:
            # Attention cost is per sequence: rows as wide as data.seq_len pack a whole group with no padding.
            self.row_width = self.config.data.seq_len
        if self.rl.kl_beta > 0:
            self.reference = reference_policy(model)
        self.backend = make_backend(self.config, self.tokenizer, model)

    def sampling_rng(self) -> torch.Generator:
        """This round's RNG: seeded from (seed, rank, round), so a resumed run draws the same samples."""
        seed = int(np.random.SeedSequence([self.config.seed, self.rank, self.rounds]).generate_state(1)[0])
        return torch.Generator(device=self.backend.rng_device(self.policy)).manual_seed(seed)

    # ------------------------------------------------------------ batches

    def micro_batches_per_batch(self) -> int:
        return self.config.train.grad_accum * self.rl.updates_per_batch

    def next_batch(self, rank: int, world: int) -> dict:
        self.rank, self.world = rank, world
        if self.batch is None or self.served == self.micro_batches_per_batch():
            self.batch = self.generate_batch()
            self.served = 0
        accum, size = self.config.train.grad_accum, self.config.train.micro_batch_size
        k, update = self.served % accum, self.served // accum
        self.served += 1
        batch = self.collate(self.batch, list(range(k * size, (k + 1) * size)))
        batch["update"] = update
        # Generation statistics are counted once per batch, on its first micro-batch.
        batch["gen_stats"] = self.batch.stats if self.served == 1 else {}
        return batch

    def collate(self, generation: GenerationBatch, indices: list[int]) -> dict:
        """Rollouts -> packed rows: prompt + completion per segment, labels on completion tokens only.

        Rows are filled first-fit decreasing, ``data.seq_len`` wide under attention whose cost is per
        sequence (sdpa_segments, flash-attention), else as wide as the longest sequence (so packing never
        adds attention cost under a dense mask); ``data.packing: false`` gives one padded row per sequence.
        """
        sequences = []
        for i in indices:
            rollout = generation.rollouts[i]
            ids = np.asarray(rollout.prompt.ids + rollout.completion, dtype=np.int64)
            mask = np.zeros(len(ids), dtype=bool)
            if not (self.rl.overlong == "mask" and rollout.hit_budget):
                mask[len(rollout.prompt.ids):] = True
            sequences.append((ids, mask, rollout.prompt.component, i))
        width = max(max(len(s[0]) for s in sequences), self.row_width or 0)
        pack = self.config.data.packing and self.layout != "padded"
        bins = first_fit_decreasing([len(s[0]) for s in sequences], width) if pack else [[k] for k in range(len(sequences))]
        rows = []
        for members in bins:
            row = RowBuilder(width, restart_positions=True)
            for k in sorted(members):
                row.add(*sequences[k])
            rows.append(row.finish(self.tokenizer.pad_token_id, fill=pack))
        return collate(rows, self.tokenizer.pad_token_id, self.layout if pack else "padded")

    def batch_units(self, batch: dict) -> int:
        """dapo: completion tokens; grpo and dr_grpo: sequences (known before the forward pass)."""
        if self.rl.loss_type == "dapo":
            return int((batch["labels"][:, 1:] != IGNORE).sum())
        return len(batch["segments"])

    # ------------------------------------------------------------ generation

    def generate_batch(self) -> GenerationBatch:
        """This process's groups for one batch: sample, score, drop no-signal groups and refill (bounded),
        complete with dropped groups if still short, then compute advantages (and reference log-probs)."""
        group = self.rl.group_size
        need = self.config.train.micro_batch_size * self.config.train.grad_accum // group
        kept: list[list[Rollout]] = []
        spare: list[list[Rollout]] = []
        stats: dict[int, list[float]] = defaultdict(lambda: [0.0] * self.width)
        for _ in range(1 + (self.rl.max_refill_rounds if self.rl.dynamic_sampling else 0)):
            missing = need - len(kept)
            missing_all = global_max(missing, self.world)
            if missing_all == 0:
                break
            # Every process draws the same prompts (the drawer stays identical everywhere) and keeps its share.
            drawn = [self.data.drawer.next() for _ in range(self.world * missing_all)]
            prompts = drawn[self.rank::self.world][:missing]
            groups = self.sample_groups(prompts) if prompts else []
            self.rounds += 1
            for rollouts in groups:
                row = stats[rollouts[0].prompt.component]
                add_generation_stats(row, rollouts)
                signal = has_signal(rollouts)
                if len(kept) < need and (signal or not self.rl.dynamic_sampling):
                    kept.append(rollouts)
                    row[F_["kept"]] += signal  # kept/<task>: share of sampled groups that train with signal
                else:
                    spare.append(rollouts)
        while len(kept) < need:  # refill rounds exhausted: no-signal groups (advantage 0) complete the batch
            kept.append(spare.pop(0))
        rollouts = [r for g in kept for r in g]
        set_advantages(rollouts, group, self.scale_rewards)
        batch = GenerationBatch(rollouts, dict(stats))
        if self.reference is not None:
            self.reference_logps(batch)
        return batch

    def sample_groups(self, prompts: list[Prompt]) -> list[list[Rollout]]:
        """``group_size`` completions per prompt from the current policy, scored and shaped."""
        group = self.rl.group_size
        generations = self.backend.sample(self.policy, prompts, group, self.sampling_rng())
        groups = []
        for p, prompt in enumerate(prompts):
            rollouts = []
            for gen in generations[p * group:(p + 1) * group]:
                values = score(self.rewards, gen.text, prompt.item, prompt.task, prompt.index)
                total = sum(r.weight * v for r, v in zip(self.rewards, values))
                if self.rl.overlong == "soft":
                    total += overlong_penalty(len(gen.token_ids), prompt.budget, self.rl)
                rollouts.append(Rollout(prompt, list(gen.token_ids), gen.text, gen.hit_budget, values, total))
            groups.append(rollouts)
        return groups

    @torch.no_grad()
    def reference_logps(self, batch: GenerationBatch) -> None:
        """Per-token log-probs of every completion under the reference (KL), once per batch."""
        size = self.config.train.micro_batch_size
        adapters_off = getattr(self.reference, "disable_adapter", None)
        device = next(self.policy.parameters()).device
        if next(self.reference.parameters()).device != device:  # the copy was made before accelerate moved the policy
            self.reference.to(device)
        with (adapters_off() if self.reference is self.policy and adapters_off else nullcontext()):
            was_training = self.reference.training
            self.reference.eval()
            for start in range(0, len(batch.rollouts), size):
                indices = list(range(start, min(start + size, len(batch.rollouts))))
                micro = self.collate(batch, indices)
                logp, _ = completion_logps(self.reference, micro, self.rl.temperature)
                for rollout, values in zip(segment_rollouts(batch, micro), split_by_segment(logp, micro)):
                    rollout.ref_logps = values.detach()
            self.reference.train(was_training)

    # ------------------------------------------------------------ loss and metrics

    def loss(self, model, batch: dict) -> LossOutput:
        logp, counts = completion_logps(model, batch, self.rl.temperature)
        rollouts = segment_rollouts(self.batch, batch)
        owner = torch.repeat_interleave(torch.arange(len(rollouts), device=logp.device), counts)
        if batch["update"] == 0:
            # The policy has not stepped since sampling: these are the sampling policy's log-probs.
            for rollout, values in zip(rollouts, split_by_segment(logp.detach(), batch)):
                rollout.old_logps = values
        old = cat_or_empty([r.old_logps for r in rollouts], logp)
        advantages = torch.tensor([r.advantage for r in rollouts], dtype=logp.dtype, device=logp.device)[owner]
        ref = cat_or_empty([r.ref_logps for r in rollouts], logp) if self.rl.kl_beta > 0 else None
        terms = policy_loss_terms(logp, old, advantages, ref, self.rl)
        per_seq, units = aggregate(terms["loss"], owner, counts, self.rl.loss_type, self.max_answer)
        tags = self.loss_tags(rollouts, per_seq, units, counts, terms, owner, batch["gen_stats"])
        real = sum(s.length for s in batch["segments"])
        return LossOutput(per_seq.sum(), int(units.sum()), real, tags)

    def loss_tags(self, rollouts, per_seq, units, counts, terms, owner, gen_stats) -> dict[str, list[float]]:
        tags: dict[str, list[float]] = {}
        for component, values in gen_stats.items():
            tags[self.source_names[component]] = list(values)
        n = len(rollouts)
        with torch.no_grad():
            clipped = torch.zeros(n, dtype=torch.float64).index_add(0, owner.cpu(), terms["clipped"].double().cpu())
            kl = (torch.zeros(n, dtype=torch.float64).index_add(0, owner.cpu(), terms["kl"].double().cpu())
                  if terms["kl"] is not None else torch.zeros(n, dtype=torch.float64))
            seq_loss = per_seq.detach().double().cpu()
        for k, rollout in enumerate(rollouts):
            row = tags.setdefault(self.source_names[rollout.prompt.component], [0.0] * self.width)
            row[F_["loss"]] += float(seq_loss[k])
            row[F_["units"]] += float(units[k])
            row[F_["trained_tokens"]] += int(counts[k])
            row[F_["clipped"]] += float(clipped[k])
            row[F_["kl"]] += float(kl[k])
        return tags

    def tag_metrics(self, tag: str, totals: list[float]) -> dict[str, float]:
        t = dict(zip(TAG_FIELDS + self.reward_fields, totals))
        n = max(t["completions"], 1)
        mean = t["reward"] / n
        metrics = {
            f"loss/{tag}": t["loss"] / max(t["units"], 1), f"tokens/{tag}": t["tokens"],
            f"reward/{tag}": mean, f"reward_std/{tag}": math.sqrt(max(t["reward_sq"] / n - mean * mean, 0.0)),
            f"kept/{tag}": t["kept"] / max(t["groups"], 1), f"groups/{tag}": t["groups"],
            f"length/{tag}": t["tokens"] / n, f"truncated/{tag}": t["truncated"] / n,
            f"clip_frac/{tag}": t["clipped"] / max(t["trained_tokens"], 1),
        }
        if self.rl.kl_beta > 0:
            metrics[f"kl/{tag}"] = t["kl"] / max(t["trained_tokens"], 1)
        for name in self.reward_fields:
            metrics[f"{name}/{tag}"] = t[name] / n
        return metrics

    # ------------------------------------------------------------ held-out reward

    def held_out_metrics(self, model) -> dict[str, float]:
        """Greedy answers to the held-out prompts of every task: ``eval_reward/<task>`` and friends."""
        prompts = self.data.held_out_prompts
        if not prompts:
            return {}
        return held_out_rewards(self.policy, self.tokenizer, prompts, self.rewards,
                                self.rl.generation_batch_size)

    # ------------------------------------------------------------ resume state

    def state_dict(self) -> dict:
        open_batch = self.batch is not None and self.served < self.micro_batches_per_batch()
        return {"drawer": self.data.drawer.state_dict(), "rounds": self.rounds, "open_batch": open_batch}

    def load_state_dict(self, state: dict) -> None:
        if state.get("open_batch"):
            raise RedoneError("train.resume: this checkpoint was taken in the middle of a generation batch "
                              "(rl.updates_per_batch > 1); resume from one taken at a batch boundary")
        self.data.drawer.load_state_dict(state["drawer"])
        self.rounds = int(state["rounds"])
        self.batch, self.served = None, 0


# ---------------------------------------------------------------- log-probs and the loss (pure functions)


def completion_logps(model, batch: dict, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of every labelled (completion) token, flat in segment order, and the count per segment.

    Only labelled positions go through the LM head (a boolean ``logits_to_keep``). Logits are divided
    by the sampling temperature, so the ratio compares the distribution the sampler drew from.
    """
    device = next(model.parameters()).device
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    keep = torch.zeros_like(batch["labels"], dtype=torch.bool)
    keep[:, :-1] = mask
    inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
    logits = model(**inputs, use_cache=False, logits_to_keep=keep.to(device)).logits
    if logits.dim() == 3:  # a model that ignores logits_to_keep masks returns every position
        logits = logits[:, :-1][mask.to(logits.device)]
    logp = -F.cross_entropy(logits.float() / temperature, labels[mask].to(logits.device), reduction="none")
    return logp, segment_counts(batch, mask).to(logp.device)


def segment_counts(batch: dict, mask: torch.Tensor) -> torch.Tensor:
    """Labelled tokens per segment, in ``batch["segments"]`` order (= row-major order of the positions)."""
    counts = [int(mask[s.row, max(s.start - 1, 0): s.start + s.length - 1].sum()) for s in batch["segments"]]
    return torch.tensor(counts, dtype=torch.long)


def split_by_segment(flat: torch.Tensor, batch: dict) -> list[torch.Tensor]:
    mask = batch["labels"][:, 1:] != IGNORE
    return list(torch.split(flat, segment_counts(batch, mask).tolist()))


def segment_rollouts(generation: GenerationBatch, batch: dict) -> list[Rollout]:
    return [generation.rollouts[s.item] for s in batch["segments"]]


def cat_or_empty(parts: list[torch.Tensor | None], like: torch.Tensor) -> torch.Tensor:
    if any(p is None for p in parts):
        raise RedoneError("rl: log-probs of the sampling policy are missing for this batch (internal order error)")
    return torch.cat(parts).to(like.device, like.dtype) if parts else like.new_zeros(0)


def policy_loss_terms(logp: torch.Tensor, old: torch.Tensor, advantages: torch.Tensor, ref: torch.Tensor | None,
                      rl) -> dict[str, torch.Tensor | None]:
    """Per-token clipped surrogate (+ KL), the clipped-token indicator and the per-token KL."""
    ratio = torch.exp(logp - old)
    clipped_ratio = torch.clamp(ratio, 1.0 - rl.epsilon_low, 1.0 + rl.epsilon_high)
    loss = -torch.min(ratio * advantages, clipped_ratio * advantages)
    kl = None
    if ref is not None:
        # k3 estimator of KL(policy || reference), exp(ref - logp) - (ref - logp) - 1 >= 0, times the
        # importance ratio: the samples come from the sampling policy, and the ratio makes the KL gradient
        # the unbiased reverse-KL one (DeepSeek-V3.2; TRL's default use_bias_correction_kl).
        kl = (torch.exp(ref - logp) - (ref - logp) - 1.0) * ratio
        loss = loss + rl.kl_beta * kl
    with torch.no_grad():
        clipped = (((ratio < 1.0 - rl.epsilon_low) & (advantages < 0))
                   | ((ratio > 1.0 + rl.epsilon_high) & (advantages > 0))).float()
    return {"loss": loss, "clipped": clipped, "kl": kl.detach() if kl is not None else None}


def aggregate(per_token: torch.Tensor, owner: torch.Tensor, counts: torch.Tensor, loss_type: str,
              max_answer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence contributions to the loss sum and the units each sequence counts for.

    The loop divides the summed contributions by the summed units of the whole step, so:
    dapo: token sum / tokens; grpo: mean over sequences of the token mean; dr_grpo: token sum /
    (sequences x max_answer).
    """
    n = len(counts)
    sums = torch.zeros(n, dtype=per_token.dtype, device=per_token.device).index_add(0, owner, per_token)
    if loss_type == "dapo":
        return sums, counts.to(torch.float64).cpu()
    if loss_type == "grpo":
        return sums / counts.clamp(min=1).to(sums.dtype), torch.ones(n, dtype=torch.float64)
    if loss_type == "dr_grpo":
        return sums / float(max_answer), torch.ones(n, dtype=torch.float64)
    raise RedoneError(f"rl.loss_type: unknown loss type {loss_type!r}")


# ---------------------------------------------------------------- rewards -> advantages


def overlong_penalty(length: int, budget: int, rl) -> float:
    """DAPO soft over-long punishment: 0 up to budget - buffer, then linear down to -penalty at the budget."""
    buffer = max(1, round(rl.overlong_buffer * budget))
    start = budget - buffer
    if length <= start:
        return 0.0
    return rl.overlong_penalty * max((start - length) / buffer, -1.0)


def has_signal(rollouts: list[Rollout]) -> bool:
    """A group whose rewards are all equal has zero advantages everywhere: nothing to learn from."""
    rewards = [r.reward for r in rollouts]
    return max(rewards) - min(rewards) > 1e-9


def resolve_scale_rewards(value: str, loss_type: str) -> str:
    if value == "auto":
        return "none" if loss_type == "dr_grpo" else "group"
    return value


def set_advantages(rollouts: list[Rollout], group: int, scale: str) -> None:
    """(R - group mean) / (std + 1e-4): std of the group (``group``), of the batch (``batch``), or none."""
    rewards = torch.tensor([r.reward for r in rollouts], dtype=torch.float32).view(-1, group)
    mean = rewards.mean(dim=1, keepdim=True)
    advantages = rewards - mean
    if scale == "group":
        advantages = advantages / (rewards.std(dim=1, keepdim=True) + ADV_EPS)
    elif scale == "batch":
        advantages = advantages / (rewards.std() + ADV_EPS)
    for rollout, value in zip(rollouts, advantages.flatten().tolist()):
        rollout.advantage = value


def add_generation_stats(row: list[float], rollouts: list[Rollout]) -> None:
    row[F_["groups"]] += 1
    for rollout in rollouts:
        row[F_["tokens"]] += len(rollout.completion)
        row[F_["completions"]] += 1
        row[F_["reward"]] += rollout.reward
        row[F_["reward_sq"]] += rollout.reward ** 2
        row[F_["truncated"]] += rollout.hit_budget
        for j, value in enumerate(rollout.rewards):
            row[len(TAG_FIELDS) + j] += value


def global_max(value: int, world: int) -> int:
    if world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.long)
    if torch.distributed.get_backend() == "nccl":
        tensor = tensor.cuda()
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return int(tensor.item())


# ---------------------------------------------------------------- held-out reward (greedy)


@torch.no_grad()
def held_out_rewards(model, tokenizer, prompts: dict[str, list[Prompt]], rewards, batch_size: int) -> dict[str, float]:
    """Greedy answers to held-out prompts, scored per task; works on any model (before/after comparisons)."""
    from redone.eval.generate import HFGenerator

    was_training = model.training
    generator = HFGenerator(model, tokenizer, batch_size=batch_size, progress=False)
    metrics, means = {}, []
    for name, items in prompts.items():
        gens = generator.generate_encoded([f"{name}/{p.index}" for p in items], [p.ids for p in items],
                                          [p.budget for p in items])
        values = np.array([score(rewards, g.text, p.item, p.task, p.index) for g, p in zip(gens, items)])
        total = values @ np.array([r.weight for r in rewards])
        metrics[f"eval_reward/{name}"] = float(total.mean())
        for j, reward in enumerate(rewards):
            metrics[f"eval_reward_{reward.name}/{name}"] = float(values[:, j].mean())
        metrics[f"eval_length/{name}"] = float(np.mean([g.new_tokens for g in gens]))
        means.append(metrics[f"eval_reward/{name}"])
    metrics["eval_reward/mean"] = float(np.mean(means))
    model.train(was_training)
    return metrics


# ---------------------------------------------------------------- model helpers and backends


def disable_dropout(model) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def reference_policy(model):
    """The KL reference: the model itself with LoRA adapters off, else a frozen copy of the start weights."""
    if hasattr(model, "disable_adapter"):
        return model
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()


class HFBackend:
    """Sampling with transformers' ``generate`` (KV cache, left padding) via ``redone.eval.generate``."""

    def __init__(self, tokenizer, rl, model):
        from redone.eval.generate import HFGenerator, Sampling

        was_training = model.training
        sampling = Sampling(rl.temperature, rl.top_p, rl.top_k, n=rl.group_size)
        self.generator = HFGenerator(model, tokenizer, batch_size=rl.generation_batch_size, progress=False,
                                     sampling=sampling, rng=torch.Generator(device=self.rng_device(model)))
        model.train(was_training)

    def rng_device(self, model) -> torch.device:
        """generate() draws from the RNG of the model's device."""
        device = next(model.parameters()).device
        return device if device.type == "cuda" else torch.device("cpu")

    def sample(self, model, prompts: list[Prompt], group: int, rng: torch.Generator):
        was_training = model.training
        model.eval()
        self.generator.rng = rng
        try:
            return self.generator.generate_encoded([str(i) for i in range(len(prompts))], [p.ids for p in prompts],
                                                   [p.budget for p in prompts])
        finally:
            model.train(was_training)


class VLLMBackend:
    """Colocated vLLM (CUDA): the policy's weights are loaded into the engine before each generation round.

    Written against vLLM's ``LLM`` API (``generate`` with ``prompt_token_ids``, per-request seeds, and the
    driver worker's ``model.load_weights``); NOT exercised by the test suite (no vllm on CPU machines).
    """

    def __init__(self, config: RLConfig, tokenizer):
        try:
            from vllm import LLM
        except ImportError:
            raise RedoneError("rl.backend: 'vllm' needs the vllm package on a CUDA machine (pip install vllm); "
                              "set rl.backend: hf") from None
        if not torch.cuda.is_available():
            raise RedoneError("rl.backend: 'vllm' needs CUDA; set rl.backend: hf on this machine")
        if config.model.lora.enabled:
            raise RedoneError("rl.backend: 'vllm' with model.lora is not supported; set rl.backend: hf")
        from redone.eval.generate import stop_token_ids
        from redone.model import resolve_model

        self.rl = config.rl
        self.stop_ids = stop_token_ids(tokenizer)
        self.tokenizer = tokenizer
        self.llm = LLM(model=resolve_model(config.model.name_or_path), seed=config.seed,
                       gpu_memory_utilization=config.rl.vllm_gpu_memory_utilization,
                       trust_remote_code=config.model.trust_remote_code)

    def rng_device(self, model) -> torch.device:
        return torch.device("cpu")  # only draws the per-request seeds

    def sync(self, model) -> None:
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        engine_model.load_weights((name, param.data) for name, param in model.named_parameters())
        self.llm.reset_prefix_cache()

    def sample(self, model, prompts: list[Prompt], group: int, rng: torch.Generator):
        from vllm import SamplingParams

        from redone.eval.generate import Generation

        self.sync(model)
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),), generator=rng)
        params = [SamplingParams(n=group, temperature=self.rl.temperature, top_p=self.rl.top_p,
                                 top_k=self.rl.top_k or -1, max_tokens=p.budget, stop_token_ids=self.stop_ids,
                                 seed=int(s), skip_special_tokens=True) for p, s in zip(prompts, seeds)]
        outputs = self.llm.generate([{"prompt_token_ids": p.ids} for p in prompts], params, use_tqdm=False)
        generations = []
        for p, out in enumerate(outputs):
            for j, completion in enumerate(out.outputs):
                ids = list(completion.token_ids)
                generations.append(Generation(f"{p}#{j}", completion.text, len(ids), completion.finish_reason == "length",
                                              ids))
        return generations


def make_backend(config: RLConfig, tokenizer, model):
    backend = config.rl.backend
    if backend == "auto":
        import importlib.util

        backend = "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "hf"
    if backend == "vllm":
        return VLLMBackend(config, tokenizer)
    return HFBackend(tokenizer, config.rl, model)
