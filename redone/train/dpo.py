"""DPO: preference alignment on pairs from user files and from SNS task data, no resident reference model.

The data path (pairs from files and from SNS task data, sampled rejected answers, tokens, mixture over
pairs, packed micro-batches) is ``redone.data.dpo``. This module is the loss and its hooks:

- Loss per pair: sigmoid DPO with ``dpo.beta`` and label smoothing (cDPO,
  ``-(1-e) log s(b d) - e log s(-b d)``), or IPO (``(d/len - 1/(2b))^2`` on length-normalised log
  ratios, as TRL); optional NLL on the chosen completion (``dpo.nll_weight`` x mean NLL per chosen
  token). Gradient accumulation is weighted by pairs. Logits are computed only at completion
  positions (a ``logits_to_keep`` mask): the prompt never reaches the LM head.
- Reference log-probs: one no-grad pass of the starting policy (or of ``dpo.reference_model``, loaded
  for the pass and freed) before step 1, cached on disk (``redone.train.ref_cache``) and reused on
  resume and reruns; under several processes each computes a share and they are summed. No
  reference model is resident during training.
- ``RejectedSampler`` (``data.sample_rejected``): answers sampled from the starting model for task
  prompts, through the shared generator (``redone.eval.generate.HFGenerator``, seeded), handed to the
  data path.
- Metrics per task: ``loss/``, ``reward_accuracy/``, ``reward_chosen/``, ``reward_rejected/``,
  ``reward_margin/``, ``logp_chosen/``, ``logp_rejected/``, ``pairs/``, ``tokens/``; held-out pairs
  (``data.eval_holdout`` per task) give the same metrics with an ``eval_`` prefix, per task and over
  all tasks, every ``train.eval_every`` steps (``DPOStage.evaluate``).

Errors: ``DataError`` from the data path; ``RedoneError`` for a reference model whose vocabulary does
not cover the tokenizer, or ``dpo.share_prompt: true`` where the layout cannot share the prompt.

Under DeepSpeed ZeRO-3 the reference pass runs before the engine exists, on the zero.Init shards
gathered whole on every rank for the pass (``redone.distributed.whole_parameters``).
"""

from __future__ import annotations

import gc
import time

import torch
import torch.nn.functional as F

from redone.config.schema import DPOConfig
from redone.data.cache import tokenizer_digest
from redone.data.dpo import build_dpo_data, pair_batch
from redone.data.packing import IGNORE, BatchSegment, TokenStore
from redone.errors import RedoneError
from redone.train import ref_cache
from redone.train.base import LossOutput, Stage

# Per-tag sums reported by ``loss`` (the loop sums them over micro-batches, steps and processes).
TAG_FIELDS = ("loss", "tokens", "pairs", "correct", "reward_chosen", "reward_rejected", "margin",
              "logp_chosen", "logp_rejected")


class DPOStage(Stage):
    name = "dpo"

    def __init__(self, config: DPOConfig, tokenizer):
        self.rejected_sampler = RejectedSampler(config, tokenizer) if config.data.sample_rejected else None
        super().__init__(config, tokenizer, build_dpo_data(config, tokenizer, self.rejected_sampler))
        if self.rejected_sampler is not None:
            self.rejected_sampler.close()
        self.ref: dict[str, torch.Tensor] | None = None
        self.reference_info: dict = {}
        self.shared_prompt = False  # decided in prepare_model, once the attention implementation is known
        print_summary(self.source_info)

    # ------------------------------------------------------------ batches

    def make_batch(self, picks: list[tuple[int, int]], split: str = "train") -> dict:
        """A micro-batch of the given (component, pair) picks, packed as configured."""
        return pair_batch(self._stores(split), picks, self.tokenizer.pad_token_id, layout=self.layout,
                          packing=self.config.data.packing, shared_prompt=self.shared_prompt, split=split)

    def _stores(self, split: str) -> list[TokenStore | None]:
        if split == "train":
            return self.data.stores
        return [self.data.held_out.get(name) for name in self.source_names]

    def next_batch(self, rank: int, world: int) -> dict:
        picks = [self.drawer.next() for _ in range(world * self.config.train.micro_batch_size)]
        return self.make_batch(picks[rank::world], "train")

    def batch_units(self, batch: dict) -> int:
        return len(batch["segments"]) // 2

    def eval_batches(self) -> dict[str, list[dict]]:
        size = self.config.train.micro_batch_size
        batches = {}
        for source, store in enumerate(self._stores("eval")):
            if store is None:
                continue
            picks = [(source, i) for i in range(len(store))]
            batches[self.source_names[source]] = [self.make_batch(picks[i:i + size], "eval")
                                                  for i in range(0, len(picks), size)]
        return batches

    # ------------------------------------------------------------ reference log-probs

    def prepare_model(self, model) -> None:
        """Choose the batch layout, then load or compute the reference log-probs of every pair."""
        self.shared_prompt = resolve_shared_prompt(self.config.dpo.share_prompt, self.layout,
                                                   getattr(model.config, "_attn_implementation", None))
        from redone.distributed import whole_parameters

        # ZeRO-3: the model is zero.Init shards and not yet an engine; every rank gathers the whole
        # weights for this one no-grad pass (and the fingerprint), then they are sharded again.
        with whole_parameters(model):
            self._prepare_reference(model)

    def _prepare_reference(self, model) -> None:
        from accelerate import PartialState

        from redone.distributed import resolve_precision, zero3_init_disabled
        from redone.model import (
            fingerprint_model_dir,
            fingerprint_state_dict,
            load_model,
            resolve_model,
            training_attention,
        )

        config, started = self.config, time.perf_counter()
        ref_name = config.dpo.reference_model
        if ref_name:
            fingerprint = fingerprint_model_dir(resolve_model(ref_name))
        else:
            fingerprint = fingerprint_state_dict(model.state_dict())
        precision = resolve_precision(config.train.precision)
        names = self.store_names()
        parts = {"reference": fingerprint, "reference_model": ref_name or None,
                 "stores": {name: ref_cache.store_digest(store) for name, store in names.items()},
                 "tokenizer": tokenizer_digest(self.tokenizer), "seq_len": config.data.seq_len,
                 "precision": precision, "attn": getattr(model.config, "_attn_implementation", None)}
        key = ref_cache.cache_key(parts)
        path = ref_cache.cache_path(config.data.cache_dir, key)
        tensors = ref_cache.load(path, list(names))
        state = PartialState()
        if tensors is not None:
            hit = True
        else:
            hit = False
            reference = model
            if ref_name:
                with zero3_init_disabled():  # a whole copy on each rank, like the gathered policy
                    attn = training_attention(config.model.attn_implementation, config.data.packing)
                    reference = load_model(ref_name, attn_implementation=attn,
                                           trust_remote_code=config.model.trust_remote_code)
                check_vocab(reference, self.tokenizer, ref_name)
            tensors = compute_reference(self, reference, names, precision, state)
            ref_cache.count_pass()
            if reference is not model:
                del reference
                gc.collect()
            if state.is_main_process:
                ref_cache.save(path, tensors, parts)
        self.ref = tensors
        pairs = sum(len(s) for s in names.values())
        self.reference_info = {"cache_hit": hit, "key": key, "path": str(path), "pairs": pairs,
                               "reference": ref_name or "starting policy", "fingerprint": fingerprint,
                               "seconds": round(time.perf_counter() - started, 2)}
        for info in self.source_info:
            info["reference_cache"] = {"key": key, "hit": hit}
        if state.is_main_process:
            what = "cache hit, no reference pass" if hit else "computed by one no-grad pass, saved"
            print(f"[redone] dpo reference log-probs ({ref_name or 'starting policy'}, {pairs} pairs): "
                  f"{what} ({self.reference_info['seconds']} s) -> {path}", flush=True)

    def store_names(self) -> dict[str, TokenStore]:
        names = {f"train/{s}": store for s, store in enumerate(self._stores("train"))}
        names.update({f"eval/{s}": store for s, store in enumerate(self._stores("eval")) if store is not None})
        return names

    def reference_for(self, batch: dict, device) -> torch.Tensor:
        """[pairs, 2] reference log-probs of the batch's pairs, in segment order."""
        if self.ref is None:
            raise RedoneError("dpo: reference log-probs are missing (prepare_model was not called)")
        split = batch.get("split", "train")
        chosen, _ = pair_segments(batch["segments"])
        segments = batch["segments"]
        rows = [self.ref[f"{split}/{segments[k].source}"][segments[k].item] for k in chosen]
        return torch.stack(rows).to(device)

    # ------------------------------------------------------------ loss and metrics

    def loss(self, model, batch: dict) -> LossOutput:
        logps, counts = segment_logps(model, batch)
        segments = batch["segments"]
        chosen_idx, rejected_idx = pair_segments(segments)
        order = torch.tensor([chosen_idx, rejected_idx], device=logps.device).T  # [pairs, 2]
        policy, n_tokens = logps[order], counts[order]
        reference = self.reference_for(batch, policy.device)
        losses, chosen_rewards, rejected_rewards = dpo_loss(policy, reference, n_tokens, self.config.dpo)
        pair_tokens = batch.get("pair_tokens") or [segments[c].length + segments[r].length
                                                   for c, r in zip(chosen_idx, rejected_idx)]
        tags: dict[str, list[float]] = {}
        with torch.no_grad():
            values = torch.stack([losses.detach(), chosen_rewards, rejected_rewards,
                                  policy[:, 0].detach(), policy[:, 1].detach()], dim=1).double().cpu().tolist()
            for k, (loss, chosen, rejected, logp_c, logp_r) in enumerate(values):
                row = tags.setdefault(self.source_names[segments[chosen_idx[k]].source], [0.0] * len(TAG_FIELDS))
                for i, v in enumerate((loss, pair_tokens[k], 1, float(chosen > rejected), chosen, rejected,
                                       chosen - rejected, logp_c, logp_r)):
                    row[i] += v
        return LossOutput(losses.sum(), len(losses), sum(pair_tokens), tags)

    def tag_metrics(self, tag: str, totals: list[float]) -> dict[str, float]:
        n = max(totals[2], 1)
        sums = dict(zip(TAG_FIELDS, totals))
        return {f"loss/{tag}": sums["loss"] / n, f"reward_accuracy/{tag}": sums["correct"] / n,
                f"reward_chosen/{tag}": sums["reward_chosen"] / n,
                f"reward_rejected/{tag}": sums["reward_rejected"] / n, f"reward_margin/{tag}": sums["margin"] / n,
                f"logp_chosen/{tag}": sums["logp_chosen"] / n, f"logp_rejected/{tag}": sums["logp_rejected"] / n,
                f"pairs/{tag}": totals[2], f"tokens/{tag}": totals[1]}

    def held_out_metrics(self, model) -> dict[str, float]:
        return self.evaluate(model)

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """Every metric on the held-out pairs, per task (``eval_`` prefix) and over all tasks."""
        was_training = model.training
        model.eval()
        totals: dict[str, list[float]] = {}
        for batches in self.eval_batches().values():
            for batch in batches:
                for tag, values in self.loss(model, batch).tags.items():
                    row = totals.setdefault(tag, [0.0] * len(TAG_FIELDS))
                    for i, v in enumerate(values):
                        row[i] += v
        model.train(was_training)
        metrics = {}
        if totals:
            overall = [sum(col) for col in zip(*totals.values())]
            for tag, values in list(totals.items()) + [("all", overall)]:
                metrics.update({f"eval_{k}": v for k, v in self.tag_metrics(tag, values).items()})
        return metrics


class RejectedSampler:
    """``data.sample_rejected``: answers sampled from the starting model for task prompts.

    The model is loaded on first use (only when a task component's pairs are not cached) and freed
    by ``close``; the cache key of those components includes the model's fingerprint and the
    sampling settings, so other weights never reuse them.
    """

    batch_size = 8

    def __init__(self, config: DPOConfig, tokenizer):
        self.config, self.tokenizer, self.model = config, tokenizer, None
        self._fingerprint: str | None = None
        self.rng: torch.Generator | None = None

    def key_parts(self) -> dict:
        from redone.model import fingerprint_model_dir, resolve_model

        if self._fingerprint is None:
            self._fingerprint = fingerprint_model_dir(resolve_model(self.config.model.name_or_path))
        data = self.config.data
        return {"model": self._fingerprint, "sampler": "eval.generate", "n": data.sample_rejected, "max_new_tokens": data.sample_max_new_tokens,
                "seed": self.config.seed}

    @torch.no_grad()
    def __call__(self, prompts: list[list[dict]]) -> list[list[str]]:
        from redone.eval.generate import HFGenerator, Request, Sampling
        from redone.model import load_model

        data = self.config.data
        if self.model is None:
            from redone.distributed import zero3_init_disabled

            with zero3_init_disabled():  # ZeRO-3: a whole copy to sample from, not zero.Init shards
                self.model = load_model(self.config.model.name_or_path, attn_implementation="sdpa",
                                        trust_remote_code=self.config.model.trust_remote_code).eval()
            # One seeded generator for the whole sampling pass: the same pairs on every rerun.
            self.rng = torch.Generator().manual_seed(self.config.seed)
        # The eval/RL generator: KV cache, left padding, the model's own stop tokens, n samples a prompt.
        generator = HFGenerator(self.model, self.tokenizer, batch_size=self.batch_size, progress=False,
                                sampling=Sampling(temperature=1.0, top_p=1.0, top_k=0, n=data.sample_rejected),
                                rng=self.rng)
        requests = [Request(str(i), messages, data.sample_max_new_tokens) for i, messages in enumerate(prompts)]
        out = generator.generate(requests)
        n = data.sample_rejected
        return [[g.text.strip() for g in out[k * n:(k + 1) * n]] for k in range(len(prompts))]

    def close(self) -> None:
        self.model = None
        gc.collect()


# ---------------------------------------------------------------- pieces (tests and the benchmark use them)


def pair_segments(segments: list[BatchSegment]) -> tuple[list[int], list[int]]:
    """Indices of each pair's chosen and rejected segment (a pair drawn twice is matched in order)."""
    open_chosen: dict[tuple[int, int], list[int]] = {}
    chosen, rejected = [], []
    for k, seg in enumerate(segments):
        if seg.part == 0:
            open_chosen.setdefault((seg.source, seg.item), []).append(k)
    for k, seg in enumerate(segments):
        if seg.part == 1:
            chosen.append(open_chosen[(seg.source, seg.item)].pop(0))
            rejected.append(k)
    return chosen, rejected


def segment_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of the labelled (completion) tokens of every segment, and their counts.

    Logits are computed only where a label is scored (a boolean ``logits_to_keep`` mask): the prompt
    never reaches the LM head. Returns two [n_segments] tensors in ``batch["segments"]`` order.
    """
    device = next(model.parameters()).device
    if "targets" in batch:
        return _target_logps(model, batch, device)
    labels = batch["labels"].to(device)
    scored = labels[:, 1:] != IGNORE  # position t predicts label t+1
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = scored
    inputs = {k: batch[k].to(device) for k in ("input_ids", "position_ids", "attention_mask") if k in batch}
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # [n_scored, V]
    if logits.dim() == 3:  # a model without mask support returned every position
        logits = logits[keep]
    targets = labels[:, 1:][scored]
    token_logps = -F.cross_entropy(logits.float(), targets, reduction="none")
    owner = torch.full(scored.shape, -1, dtype=torch.long)
    for k, seg in enumerate(batch["segments"]):
        owner[seg.row, max(seg.start - 1, 0): seg.start + seg.length - 1] = k
    owner = owner.to(device)[scored]
    n = len(batch["segments"])
    sums = torch.zeros(n, dtype=token_logps.dtype, device=device).index_add(0, owner, token_logps)
    counts = torch.zeros(n, dtype=torch.long, device=device).index_add(0, owner, torch.ones_like(owner))
    return sums, counts


def _target_logps(model, batch: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``segment_logps`` for a shared-prompt batch: explicit (row, position, token, segment) targets.

    The hidden state at a prompt's last position predicts the first token of both completions, so
    targets are gathered by position instead of by shifting labels.
    """
    targets = batch["targets"].to(device)  # [T, 4]: row, position, token, segment
    width = batch["input_ids"].shape[1]
    keep = torch.zeros(batch["input_ids"].shape, dtype=torch.bool, device=device)
    keep[targets[:, 0], targets[:, 1]] = True
    inputs = {k: batch[k].to(device) for k in ("input_ids", "position_ids", "attention_mask")}
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # [kept positions, V]
    if logits.dim() == 3:
        logits = logits[keep]
    order = keep.flatten().cumsum(0) - 1  # row-major rank of every kept position
    rows = order[targets[:, 0] * width + targets[:, 1]]
    token_logps = -F.cross_entropy(logits.float()[rows], targets[:, 2], reduction="none")
    n = len(batch["segments"])
    owner = targets[:, 3]
    sums = torch.zeros(n, dtype=token_logps.dtype, device=device).index_add(0, owner, token_logps)
    counts = torch.zeros(n, dtype=torch.long, device=device).index_add(0, owner, torch.ones_like(owner))
    return sums, counts


def resolve_shared_prompt(requested, layout: str, attn: str | None) -> bool:
    """Share the prompt where a custom 4D mask is honoured: packed rows under sdpa (sdpa_segments hands
    a 4D mask to stock sdpa)."""
    possible = layout == "rows" and attn in ("sdpa", "sdpa_segments")
    if requested and not possible:
        raise RedoneError(f"dpo.share_prompt: needs packed rows under sdpa attention (layout '{layout}', "
                          f"attention '{attn}'); set it to null (auto) or false")
    return possible if requested is None else bool(requested)


def dpo_loss(policy: torch.Tensor, reference: torch.Tensor, n_tokens: torch.Tensor, dpo):
    """Per-pair loss and (detached) implicit rewards. policy/reference/n_tokens: [pairs, 2] (chosen, rejected)."""
    chosen_ratio = policy[:, 0] - reference[:, 0]
    rejected_ratio = policy[:, 1] - reference[:, 1]
    beta = dpo.beta
    if dpo.loss_type == "ipo":
        # As TRL: log ratios averaged per completion token, so beta is comparable across lengths.
        delta = chosen_ratio / n_tokens[:, 0].clamp(min=1) - rejected_ratio / n_tokens[:, 1].clamp(min=1)
        losses = (delta - 1.0 / (2.0 * beta)) ** 2
    else:
        logits = beta * (chosen_ratio - rejected_ratio)
        eps = dpo.label_smoothing
        losses = -(1.0 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    if dpo.nll_weight:
        losses = losses + dpo.nll_weight * (-policy[:, 0] / n_tokens[:, 0].clamp(min=1))
    return losses, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()


@torch.no_grad()
def compute_reference(stage: DPOStage, model, names: dict[str, TokenStore], precision: str, state) -> dict[str, torch.Tensor]:
    """One no-grad pass: [n, 2] summed completion log-probs per store; processes split the chunks."""
    device = state.device
    was_training = model.training
    model.to(device)
    model.eval()
    chunk = max(2 * stage.config.train.micro_batch_size, 8)
    tensors = {name: torch.zeros(len(store), 2, dtype=torch.float32) for name, store in names.items()}
    jobs = [(name, start) for name, store in names.items() for start in range(0, len(store), chunk)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with autocast:
        for name, start in jobs[state.process_index::state.num_processes]:
            split, source = name.split("/")
            count = min(chunk, len(names[name]) - start)
            batch = stage.make_batch([(int(source), start + i) for i in range(count)], split)
            logps, _ = segment_logps(model, batch)
            for seg, value in zip(batch["segments"], logps.float().cpu().tolist()):
                tensors[name][seg.item, seg.part] = value
    if state.num_processes > 1:
        # Each process filled its own chunks (zeros elsewhere): a sum gathers the whole table exactly.
        flat = torch.cat([t.flatten() for t in tensors.values()]).to(device)
        torch.distributed.all_reduce(flat)
        flat, offset = flat.cpu(), 0
        for name, t in tensors.items():
            tensors[name] = flat[offset: offset + t.numel()].view_as(t).clone()
            offset += t.numel()
    model.train(was_training)
    return tensors


def check_vocab(reference, tokenizer, name: str) -> None:
    size = reference.get_input_embeddings().weight.shape[0]
    if size < len(tokenizer):
        raise RedoneError(f"dpo.reference_model: {name} has {size} token embeddings but the tokenizer has "
                          f"{len(tokenizer)} tokens; the reference must share the policy's vocabulary")


def print_summary(source_info: list[dict]) -> None:
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    print("[redone] dpo pairs per component:", flush=True)
    for info in source_info:
        extra = {k: v for k, v in info.items() if k.startswith(("dropped_", "kind_")) or
                 k in ("not_worse", "no_rejected", "truncated", "sampled")}
        extra = {k: v for k, v in extra.items() if v}
        print(f"  {info['name']:<24} pairs={info['pairs']:<6} held_out={info['held_out']:<4} "
              f"tokens={info['tokens']:<9} share={info['planned_share']:.3f} cache={'hit' if info['cache_hit'] else 'built'}"
              + (f"  {extra}" if extra else ""), flush=True)
