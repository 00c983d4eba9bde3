"""DPO: preference alignment on pairs from user files and from SNS task data, no resident reference model.

Features
- Pair sources (``redone.data.preference``): prompt/chosen/rejected files (strings or chat messages),
  HH-RLHF dialogues, and pairs built from SNS-Bench / SNS-TransBench items (gold vs a plausible wrong
  answer, verified with the benchmark metric); optionally rejected answers sampled from the starting
  model (``data.sample_rejected: N`` samples per item, ``RejectedSampler``), kept where the metric
  scores them below the gold. One mixture component (and metric tag) per file / task; mixed by
  pair counts (ratio of source weights, or temperature). Counts per component (pairs, dropped per
  reason, rejected kinds, truncated) are printed at start and kept in ``source_info`` (lineage).
- Loss per pair: sigmoid DPO with ``dpo.beta`` and label smoothing (cDPO,
  ``-(1-e) log s(b d) - e log s(-b d)``), or IPO (``(d/len - 1/(2b))^2`` on length-normalised log
  ratios, as TRL); optional NLL on the chosen completion (``dpo.nll_weight`` x mean NLL per chosen
  token). Gradient accumulation is weighted by pairs.
- Reference log-probs: one no-grad pass of the starting policy (or of ``dpo.reference_model``, loaded
  for the pass and freed) before step 1, cached on disk (``redone.train.ref_cache``) and reused on
  resume and reruns; under several processes each computes a share and they are summed. No
  reference model is resident during training.
- A micro-batch is ``train.micro_batch_size`` pairs: their chosen and rejected sequences go through
  one forward, padding-free packed (each sequence a segment whose position_ids restart, first-fit
  decreasing into rows as wide as the longest sequence, so packing never adds attention cost).
  Logits are computed only at completion positions (a ``logits_to_keep`` mask): the prompt never
  reaches the LM head. ``data.packing: false`` pads every sequence to its own row (the comparison
  path). ``data.seq_len`` bounds each sequence (prompt + completion), as TRL's ``max_length``.
- Metrics per task: ``loss/``, ``reward_accuracy/``, ``reward_chosen/``, ``reward_rejected/``,
  ``reward_margin/``, ``logp_chosen/``, ``logp_rejected/``, ``pairs/``, ``tokens/``; held-out pairs
  (``data.eval_holdout`` per task) give the same metrics with an ``eval_`` prefix, per task and over
  all tasks, every ``train.eval_every`` steps (``DPOStage.evaluate``).

Errors: ``DataError`` for malformed pairs under ``data.bad_pairs: error``, an over-long pair under
``data.overlong: error``, a source with no usable pairs, task data with ``build_from_tasks: false``;
``RedoneError`` for a reference model whose vocabulary does not cover the tokenizer.

Under DeepSpeed ZeRO-3 the reference pass runs before the engine exists, on the zero.Init shards
gathered whole on every rank for the pass (``redone.distributed.whole_parameters``).
"""

from __future__ import annotations

import gc
import time

import numpy as np
import torch
import torch.nn.functional as F

from redone.config.schema import DPOConfig
from redone.data.cache import cached_store, tokenizer_digest
from redone.data.mixture import MixtureSampler, mixture_probs, split_source_weights
from redone.data.packing import IGNORE, Row, TokenStore, _RowBuilder, collate
from redone.data.preference import PairPlan, pair_plans, tokenize_pairs
from redone.data.sources import source_digest
from redone.errors import RedoneError
from redone.train import ref_cache
from redone.train.base import LossOutput, Stage
from redone.train.sft import split_holdout

# Bump when the rules that build pairs from task data change: cached pair stores are then rebuilt.
PAIR_BUILDER_VERSION = 2
# Per-tag sums reported by ``loss`` (the loop sums them over micro-batches, steps and processes).
TAG_FIELDS = ("loss", "tokens", "pairs", "correct", "reward_chosen", "reward_rejected", "margin",
              "logp_chosen", "logp_rejected")


class PairDrawer:
    """The mixture sampler over pairs; its state is the sampler's (O(1) exact resume)."""

    def __init__(self, sampler: MixtureSampler):
        self.sampler = sampler

    def next(self) -> tuple[int, int]:
        return self.sampler.next()

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])


class DPOStage(Stage):
    name = "dpo"

    def __init__(self, config: DPOConfig, tokenizer):
        super().__init__(config, tokenizer)
        data = config.data
        self.rejected_sampler = RejectedSampler(config, tokenizer) if data.sample_rejected else None
        plans = pair_plans(list(data.sources), data, config.seed, self.rejected_sampler)
        self.train_stores: list[TokenStore] = []
        self.eval_stores: list[TokenStore | None] = []
        for plan in plans:
            store, manifest, hit = self._tokenized(plan)
            train_idx, held_idx = split_holdout(store, data.eval_holdout, config.seed, plan.name)
            self.train_stores.append(store.subset(train_idx))
            self.eval_stores.append(store.subset(held_idx) if len(held_idx) else None)
            self.source_names.append(plan.name)
            counts = {k: v for k, v in manifest.items() if k not in ("key", "parts")}
            self.source_info.append({
                "name": plan.name, "source": data.sources[plan.source].path, "digest": manifest["parts"]["digest"],
                "pairs": len(train_idx), "held_out": len(held_idx),
                "tokens": int(self.train_stores[-1].tokens.size), "cache_hit": hit, **counts})
        if self.rejected_sampler is not None:
            self.rejected_sampler.close()
        self.probs = pair_probs(plans, self.train_stores, data)
        for info, p in zip(self.source_info, self.probs):
            info["planned_share"] = p
        sampler = MixtureSampler([np.ones(len(s), dtype=np.int64) for s in self.train_stores], self.probs, config.seed)
        self.packer = PairDrawer(sampler)
        self.ref: dict[str, torch.Tensor] | None = None
        self.reference_info: dict = {}
        self.shared_prompt = False  # decided in prepare_model, once the attention implementation is known
        print_summary(self.source_info)

    # ------------------------------------------------------------ data

    def _tokenized(self, plan: PairPlan):
        data = self.config.data
        source = data.sources[plan.source]
        parts = {"kind": "dpo-pairs", "builder": PAIR_BUILDER_VERSION, "component": plan.name,
                 "digest": source_digest(source), "format": source.format, "limit": source.limit,
                 "style": data.prompt_style, "seq_len": data.seq_len, "max_prompt_chars": data.max_prompt_chars,
                 "overlong": data.overlong, "bad_pairs": data.bad_pairs, "pairs_per_item": data.pairs_per_item,
                 "seed": self.config.seed if plan.kind != "file" else None,
                 "tokenizer": tokenizer_digest(self.tokenizer)}
        if self.rejected_sampler is not None and plan.kind != "file":
            parts["sampled"] = self.rejected_sampler.key_parts()

        def build():
            pairs, counts = plan.build()
            store, token_counts = tokenize_pairs(pairs, self.tokenizer, data, plan.name, data.bad_pairs)
            return store, dict(counts + token_counts, built_pairs=len(pairs))

        return cached_store(data.cache_dir, parts, build)

    def make_batch(self, picks: list[tuple[int, int]], split: str = "train") -> dict:
        """A micro-batch of the given (source, item) pairs, packed as configured."""
        stores = self.train_stores if split == "train" else self.eval_stores
        if self.shared_prompt:
            batch = shared_prompt_batch(stores, picks, self.tokenizer.pad_token_id)
        else:
            rows = pack_pairs(stores, picks, self.tokenizer.pad_token_id, packing=self.config.data.packing,
                              fill=self.layout == "rows")
            batch = collate(rows, self.tokenizer.pad_token_id, self.layout)
        batch["split"] = split
        # A pair counts as its two sequences' tokens (prompt+chosen, prompt+rejected), as TRL counts
        # it, whether or not the prompt is computed once: tokens/s compare across layouts and trainers.
        batch["pair_tokens"] = [int(stores[s].offsets[i + 1] - stores[s].offsets[i]) for s, i in picks]
        return batch

    def next_batch(self, rank: int, world: int) -> dict:
        picks = [self.packer.next() for _ in range(world * self.config.train.micro_batch_size)]
        return self.make_batch(picks[rank::world], "train")

    def batch_units(self, batch: dict) -> int:
        return len(batch["segments"]) // 2

    def eval_batches(self) -> dict[str, list[dict]]:
        size = self.config.train.micro_batch_size
        batches = {}
        for source, store in enumerate(self.eval_stores):
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
        names = {f"train/{s}": store for s, store in enumerate(self.train_stores)}
        names.update({f"eval/{s}": store for s, store in enumerate(self.eval_stores) if store is not None})
        return names

    def reference_for(self, batch: dict, device) -> torch.Tensor:
        """[pairs, 2] reference log-probs of the batch's pairs, in segment order."""
        if self.ref is None:
            raise RedoneError("dpo: reference log-probs are missing (prepare_model was not called)")
        split = batch.get("split", "train")
        chosen, _ = pair_segments(batch["segments"])
        rows = [self.ref[f"{split}/{batch['segments'][k][3]}"][batch["segments"][k][4]] for k in chosen]
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
        pair_tokens = batch.get("pair_tokens") or [segments[c][2] + segments[r][2]
                                                   for c, r in zip(chosen_idx, rejected_idx)]
        tags: dict[str, list[float]] = {}
        with torch.no_grad():
            values = torch.stack([losses.detach(), chosen_rewards, rejected_rewards,
                                  policy[:, 0].detach(), policy[:, 1].detach()], dim=1).double().cpu().tolist()
            for k, (loss, chosen, rejected, logp_c, logp_r) in enumerate(values):
                row = tags.setdefault(self.source_names[segments[chosen_idx[k]][3]], [0.0] * len(TAG_FIELDS))
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

    def key_parts(self) -> dict:
        from redone.model import fingerprint_model_dir, resolve_model

        if self._fingerprint is None:
            self._fingerprint = fingerprint_model_dir(resolve_model(self.config.model.name_or_path))
        data = self.config.data
        return {"model": self._fingerprint, "n": data.sample_rejected, "max_new_tokens": data.sample_max_new_tokens,
                "seed": self.config.seed}

    @torch.no_grad()
    def __call__(self, prompts: list[list[dict]]) -> list[list[str]]:
        from redone.data.chat import render
        from redone.model import load_model

        if self.model is None:
            from redone.distributed import zero3_init_disabled

            with zero3_init_disabled():  # ZeRO-3: a whole copy to sample from, not zero.Init shards
                self.model = load_model(self.config.model.name_or_path, attn_implementation="sdpa",
                                        trust_remote_code=self.config.model.trust_remote_code).eval()
            torch.manual_seed(self.config.seed)
        data, tokenizer = self.config.data, self.tokenizer
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        answers: list[list[str]] = []
        try:
            for start in range(0, len(prompts), self.batch_size):
                texts = [render(tokenizer, p, add_generation_prompt=True) for p in prompts[start:start + self.batch_size]]
                enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
                out = self.model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                          max_new_tokens=data.sample_max_new_tokens,
                                          num_return_sequences=data.sample_rejected,
                                          pad_token_id=tokenizer.pad_token_id)
                decoded = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                n = data.sample_rejected
                answers += [[d.strip() for d in decoded[k * n:(k + 1) * n]] for k in range(len(texts))]
        finally:
            tokenizer.padding_side = side
        return answers

    def close(self) -> None:
        self.model = None
        gc.collect()


# ---------------------------------------------------------------- pieces (tests and the benchmark use them)


def pair_probs(plans: list[PairPlan], stores: list[TokenStore], data) -> list[float]:
    """Mixture shares over components, by pair counts (a pair is the unit of the DPO loss)."""
    sizes = [len(s) for s in stores]
    if data.mixing == "temperature":
        return mixture_probs([], sizes, "temperature", data.temperature)
    weights = split_source_weights([p.source for p in plans], [s.weight for s in data.sources], sizes,
                                   data.temperature)
    return mixture_probs(weights, sizes, "ratio", 1.0)


def pack_pairs(stores, picks: list[tuple[int, int]], pad_id: int, *, packing: bool, fill: bool) -> list[Row]:
    """The chosen and rejected sequences of the picked pairs as rows (segments with their own positions).

    Packed: first-fit decreasing into rows as wide as the longest sequence of the micro-batch, so a row
    never costs more attention (quadratic in its width) than that sequence alone would, and the few
    pad tokens are a row's tail. Unpacked: one sequence per row (``collate`` pads them).
    """
    sequences = []
    for source, item in picks:
        ids, mask = stores[source].item(item)
        cut = int(stores[source].part_offsets[item])
        sequences += [(ids[:cut], mask[:cut], source, item, 0), (ids[cut:], mask[cut:], source, item, 1)]
    width = max(len(seq[0]) for seq in sequences)
    if not packing:
        bins = [[k] for k in range(len(sequences))]
    else:
        bins, used = [], []
        for k in sorted(range(len(sequences)), key=lambda k: -len(sequences[k][0])):
            size = len(sequences[k][0])
            for j, u in enumerate(used):
                if u + size <= width:
                    bins[j].append(k)
                    used[j] += size
                    break
            else:
                bins.append([k])
                used.append(size)
    rows = []
    for members in bins:
        row = _RowBuilder(width, restart_positions=True)
        for k in sorted(members):
            row.add(*sequences[k])
        rows.append(row.finish(pad_id, fill=fill and packing))
    return rows


def pair_segments(segments: list[tuple]) -> tuple[list[int], list[int]]:
    """Indices of each pair's chosen and rejected segment (a pair drawn twice is matched in order)."""
    open_chosen: dict[tuple[int, int], list[int]] = {}
    chosen, rejected = [], []
    for k, seg in enumerate(segments):
        if seg[5] == 0:
            open_chosen.setdefault((seg[3], seg[4]), []).append(k)
    for k, seg in enumerate(segments):
        if seg[5] == 1:
            chosen.append(open_chosen[(seg[3], seg[4])].pop(0))
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
    for k, (b, start, length, *_rest) in enumerate(batch["segments"]):
        owner[b, max(start - 1, 0): start + length - 1] = k
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


def shared_prompt_batch(stores, picks: list[tuple[int, int]], pad_id: int) -> dict:
    """Pairs as ``prompt | chosen | rejected`` items, first-fit decreasing into rows as wide as the
    longest item. Positions restart per item, and the rejected tokens continue the prompt's positions
    (so they sit exactly where they would after the prompt alone). The boolean 4D mask is causal
    inside an item, except that rejected tokens never see chosen ones, and nothing crosses items.
    ``segments`` list each pair's chosen and rejected span; ``targets`` say which hidden state
    predicts which completion token.
    """
    items = []
    for source, item in picks:
        ids, mask = stores[source].item(item)
        cut = int(stores[source].part_offsets[item])
        p = int(np.argmax(mask[:cut]))  # first completion token: the prompt is everything before it
        items.append((source, item, ids[:cut], ids[cut + p:], p))
    lengths = [len(chosen_full) + len(rejected) for _, _, chosen_full, rejected, _ in items]
    width = max(lengths)
    bins: list[list[int]] = []
    used: list[int] = []
    for k in sorted(range(len(items)), key=lambda k: -lengths[k]):
        for j, u in enumerate(used):
            if u + lengths[k] <= width:
                bins[j].append(k)
                used[j] += lengths[k]
                break
        else:
            bins.append([k])
            used.append(lengths[k])
    input_ids = torch.full((len(bins), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(bins), width), dtype=torch.long)
    attention = torch.zeros((len(bins), 1, width, width), dtype=torch.bool)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    segments, targets = [], []
    for b, members in enumerate(bins):
        offset = 0
        for k in sorted(members):
            source, item, chosen_full, rejected, p = items[k]
            c, r = len(chosen_full) - p, len(rejected)
            span = slice(offset, offset + p + c + r)
            input_ids[b, span] = torch.from_numpy(np.concatenate([chosen_full, rejected]).astype(np.int64))
            positions[b, span] = torch.cat([torch.arange(p + c), torch.arange(p, p + r)])
            attention[b, 0, span, span] = causal[: p + c + r, : p + c + r]
            attention[b, 0, offset + p + c: offset + p + c + r, offset + p: offset + p + c] = False
            chosen_seg, rejected_seg = len(segments), len(segments) + 1
            segments += [(b, offset + p, c, source, item, 0), (b, offset + p + c, r, source, item, 1)]
            last_prompt = offset + p - 1
            for j in range(c):  # chosen token j is predicted at the position before it
                targets.append((b, last_prompt + j, int(chosen_full[p + j]), chosen_seg))
            for j in range(r):  # the first rejected token is predicted from the prompt's last position
                targets.append((b, last_prompt if j == 0 else offset + p + c + j - 1, int(rejected[j]), rejected_seg))
            offset += p + c + r
        tail = torch.arange(offset, width)
        attention[b, 0, tail, tail] = True  # padding attends to itself only (no empty softmax rows)
    return {"input_ids": input_ids, "position_ids": positions, "attention_mask": attention,
            "targets": torch.tensor(targets, dtype=torch.long), "segments": segments}


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
            for (_b, _s, _n, _src, item, part), value in zip(batch["segments"], logps.float().cpu().tolist()):
                tensors[name][item, part] = value
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
