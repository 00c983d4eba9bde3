"""Batched generation (greedy, or seeded sampling) with the tokenizer's chat template, resumable through a
predictions JSONL.

Features
- ``Request`` (key, chat messages, max new tokens) -> ``Generation`` (text, new-token count, whether
  the budget was hit). Prompts are the messages rendered by the tokenizer's own chat template with
  ``add_generation_prompt=True``, tokenized without extra special tokens (the template has them).
- ``HFGenerator``: ``model.generate(do_sample=False)`` on LEFT-padded batches under
  ``torch.inference_mode``; stops at EOS and at the end-of-turn token (``<|im_end|>`` and friends,
  ``stop_token_ids``). Batches are planned by ``plan_batches``: grouped by token budget, sorted by
  prompt length so a batch pads little. A prompt that leaves less room than its budget in the model's
  context gets the room that is left (counted); one that does not fit at all raises.
- Sampling (``HFGenerator(..., sampling=Sampling(...), rng=torch.Generator)``): temperature / top-p /
  top-k, ``n`` samples per request (keys ``<key>#<j>``, request-major order). The draw is made by a
  logits processor (``SampleWithGenerator``: inverse-CDF sampling with uniforms from the given
  ``torch.Generator``) that leaves only the drawn token unmasked, so ``generate``'s greedy argmax takes
  it: the samples depend on the generator alone (reproducible from its seed or saved state; torch's
  global RNG is never touched), and a draw over a 49k vocabulary costs a softmax, a cumsum and a binary
  search (``torch.multinomial`` took 2.4x as long on CPU: 125 vs 52 ms for 32 rows). ``generate_encoded`` takes
  prompt token ids and per-request budgets directly (RL prompts are tokenized once); every
  ``Generation`` carries its new token ids, up to and including the stop token that ended it.
- ``VLLMGenerator``: the same interface on vLLM, only when ``vllm`` is importable (never required;
  not exercised by the test suite because vllm is not installed on the CPU machines).
- ``PredictionStore``: predictions appended (and flushed) batch by batch to a JSONL file whose first
  line is a header naming the model and the decoding settings. A rerun reuses every stored prediction
  whose key, prompt hash and budget match, so an interrupted eval resumes where it stopped; a file
  written for another model or dtype is refused rather than silently mixed in.
- ``generate_resumable``: store + generator glue, with timing (items/s, new tokens/s).

Errors: ``RedoneError`` for a tokenizer without a chat template, a prompt longer than the model's
context, a predictions file from a different run or with a corrupt line (other than a torn last line,
which an interrupted write leaves and which is dropped), and a vLLM backend without vllm installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from redone.errors import RedoneError

# End-of-turn markers of common chat templates; whichever exist in the vocabulary stop generation.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


@dataclass(frozen=True)
class Request:
    key: str  # unique within one eval, e.g. "sns-bench/Note-NER/3"
    messages: list[dict]
    max_new_tokens: int


@dataclass
class Generation:
    key: str
    text: str
    new_tokens: int
    hit_budget: bool  # stopped by max_new_tokens, not by a stop token (the answer may be cut)
    token_ids: list[int] = field(default_factory=list)  # new ids, through the stop token when one ended it


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of ``HFGenerator`` (no ``Sampling`` = greedy decoding)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    n: int = 1  # samples per request

    def check(self) -> None:
        if not self.temperature > 0:
            raise RedoneError(f"sampling: temperature must be > 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise RedoneError(f"sampling: top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0 or self.n < 1:
            raise RedoneError(f"sampling: top_k must be >= 0 and n >= 1 (got {self.top_k}, {self.n})")


@dataclass
class GenerationStats:
    items: int = 0
    generated: int = 0
    reused: int = 0
    seconds: float = 0.0
    prompt_tokens: int = 0
    new_tokens: int = 0
    budget_shortened: int = 0  # prompts whose budget was cut to fit the model's context

    def as_dict(self) -> dict:
        out = asdict(self)
        out["items_per_s"] = self.generated / self.seconds if self.seconds > 0 else None
        out["new_tokens_per_s"] = self.new_tokens / self.seconds if self.seconds > 0 else None
        return out


# --------------------------------------------------------------------------------------------------
# Prompts and stop tokens
# --------------------------------------------------------------------------------------------------


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The chat-template text that ends where the assistant's answer starts."""
    if not getattr(tokenizer, "chat_template", None):
        raise RedoneError("eval: the tokenizer has no chat template (evaluation prompts are chat turns)")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_sha(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """EOS ids of the tokenizer and the model's generation config, plus any end-of-turn token."""
    ids: list[int] = []

    def add(value):
        for v in value if isinstance(value, list | tuple) else [value]:
            if isinstance(v, int) and v >= 0 and v not in ids:
                ids.append(v)

    add(tokenizer.eos_token_id)
    if model is not None and getattr(model, "generation_config", None) is not None:
        add(model.generation_config.eos_token_id)
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in vocab:
            add(vocab[token])
    if not ids:
        raise RedoneError("eval: the tokenizer defines no EOS or end-of-turn token to stop generation at")
    return ids


def plan_batches(lengths: Sequence[int], budgets: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of one budget each, sorted by prompt length (least padding).

    Longest prompts first, so a prompt that is too slow or too big shows up at the start, and the
    progress bar's rate only improves.
    """
    if batch_size < 1:
        raise RedoneError(f"eval: batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-budgets[i], -lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and budgets[batches[-1][0]] == budgets[i]:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


# --------------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------------


class HFGenerator:
    """Greedy decoding (or seeded sampling) with transformers' ``generate`` on left-padded batches."""

    name = "hf"

    def __init__(self, model, tokenizer, *, batch_size: int = 8, progress: bool = True,
                 sampling: Sampling | None = None, rng=None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        if sampling is not None:
            sampling.check()
            if rng is None:
                raise RedoneError("sampling: pass rng=torch.Generator(...) so the samples are reproducible")
        self.sampling = sampling
        self.rng = rng  # torch.Generator: the only source of randomness when sampling

    def encode(self, requests: Sequence[Request]) -> tuple[list[list[int]], list[int], int]:
        """Prompt ids, per-request budgets fitted into the context, and how many were shortened."""
        ids, budgets, shortened = [], [], 0
        for req in requests:
            prompt = self.tokenizer(render_prompt(self.tokenizer, req.messages), add_special_tokens=False)
            prompt_ids = list(prompt["input_ids"])
            budget = req.max_new_tokens
            if self.max_positions:
                room = self.max_positions - len(prompt_ids)
                if room < 1:
                    raise RedoneError(
                        f"eval: prompt of {req.key} has {len(prompt_ids)} tokens, more than the model's "
                        f"context of {self.max_positions}"
                    )
                if room < budget:
                    budget, shortened = room, shortened + 1
            ids.append(prompt_ids)
            budgets.append(budget)
        return ids, budgets, shortened

    def generate(
        self,
        requests: Sequence[Request],
        on_batch: Callable[[list[Generation]], None] | None = None,
        stats: GenerationStats | None = None,
    ) -> list[Generation]:
        """Generations in the order of ``requests``; ``on_batch`` sees each finished batch.

        With ``sampling.n > 1`` each request gives ``n`` generations keyed ``<key>#<j>``, request-major.
        """
        stats = stats if stats is not None else GenerationStats()
        ids, budgets, shortened = self.encode(requests)
        stats.budget_shortened += shortened
        return self.generate_encoded([r.key for r in requests], ids, budgets, on_batch, stats)

    def generate_encoded(
        self,
        keys: Sequence[str],
        ids: Sequence[list[int]],
        budgets: Sequence[int],
        on_batch: Callable[[list[Generation]], None] | None = None,
        stats: GenerationStats | None = None,
    ) -> list[Generation]:
        """``generate`` on prompts already rendered and tokenized, each with its own new-token budget."""
        from tqdm.auto import tqdm

        stats = stats if stats is not None else GenerationStats()
        n = self.sampling.n if self.sampling is not None else 1
        if n > 1:  # every sample is its own row: the copies of a prompt sort next to each other
            keys = [f"{key}#{j}" for key in keys for j in range(n)]
            ids = [x for x in ids for _ in range(n)]
            budgets = [b for b in budgets for _ in range(n)]
        stats.prompt_tokens += sum(len(x) for x in ids)
        results: list[Generation | None] = [None] * len(keys)
        bar = tqdm(total=len(keys), unit="item", desc="generate", disable=not self.progress)
        for batch in plan_batches([len(x) for x in ids], budgets, self.batch_size):
            outputs = self._generate_batch([ids[i] for i in batch], budgets[batch[0]])
            done = []
            for i, (text, n_new, hit, new_ids) in zip(batch, outputs):
                results[i] = Generation(keys[i], text, n_new, hit, new_ids)
                stats.new_tokens += n_new
                done.append(results[i])
            if on_batch is not None:
                on_batch(done)
            bar.update(len(batch))
        bar.close()
        return results  # type: ignore[return-value]

    def _generate_batch(self, prompts: list[list[int]], max_new_tokens: int) -> list[tuple[str, int, bool, list[int]]]:
        import torch
        from transformers import GenerationConfig

        width = max(len(p) for p in prompts)
        # LEFT padding: every prompt ends at the same position, so the first new token follows the
        # real last prompt token for every row.
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], dtype=torch.long)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
        config = GenerationConfig(
            do_sample=False,  # sampling, when asked for, is the logits processor's draw (greedy takes it)
            max_new_tokens=max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
        )
        device = self.model.device
        extra = {}
        if self.sampling is not None:
            if self.rng.device.type != device.type:
                raise RedoneError(f"sampling: the rng is on {self.rng.device} but the model on {device}")
            extra["logits_processor"] = [SampleWithGenerator(self.sampling, self.rng)]
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config,
                **extra,
            )
        return [self._decode(row[width:].tolist(), max_new_tokens) for row in out]

    def _decode(self, new_ids: list[int], max_new_tokens: int) -> tuple[str, int, bool, list[int]]:
        stop = next((j for j, t in enumerate(new_ids) if t in self.stop_ids), None)
        kept = new_ids if stop is None else new_ids[:stop]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        through_stop = new_ids if stop is None else new_ids[: stop + 1]
        return text, len(kept), stop is None and len(new_ids) >= max_new_tokens, through_stop


class SampleWithGenerator:
    """A ``generate`` logits processor that draws the next token itself and masks every other one.

    Temperature, then top-k, then top-p (nucleus, keeping at least one token), then inverse-CDF
    sampling with one uniform per row from ``rng``. Returns 0 at the drawn token and -inf elsewhere,
    so greedy decoding's argmax emits exactly the draw.
    """

    def __init__(self, sampling: Sampling, rng):
        self.sampling = sampling
        self.rng = rng

    def __call__(self, input_ids, scores):
        import torch

        logits = scores.float() / self.sampling.temperature
        if self.sampling.top_k and self.sampling.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.sampling.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if self.sampling.top_p < 1.0:
            ordered, order = torch.sort(probs, dim=-1, descending=True)
            before = ordered.cumsum(-1) - ordered  # mass of the tokens ranked above each one
            ordered = ordered.masked_fill(before > self.sampling.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, ordered)
        cdf = probs.cumsum(-1)
        draw = torch.rand((len(cdf), 1), generator=self.rng, device=cdf.device) * cdf[:, -1:]
        token = torch.searchsorted(cdf, draw, right=True).clamp(max=cdf.shape[-1] - 1)
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)


class VLLMGenerator:
    """The same interface on vLLM (greedy: temperature 0). Only when ``vllm`` is installed."""

    name = "vllm"

    def __init__(self, model_path: str, tokenizer, *, dtype: str = "auto", chunk: int = 512,
                 progress: bool = True):
        try:
            from vllm import LLM
        except ImportError:
            raise RedoneError("eval: backend 'vllm' needs the vllm package (pip install vllm); "
                              "use backend 'hf'") from None
        self.tokenizer = tokenizer
        self.stop_ids = stop_token_ids(tokenizer)
        self.chunk = chunk  # predictions are stored after each chunk, so a crash loses at most one
        self.progress = progress
        self.llm = LLM(model=model_path, dtype=dtype, seed=0)

    def generate(self, requests, on_batch=None, stats: GenerationStats | None = None) -> list[Generation]:
        from vllm import SamplingParams

        stats = stats if stats is not None else GenerationStats()
        prompts = [render_prompt(self.tokenizer, r.messages) for r in requests]
        results: list[Generation | None] = [None] * len(requests)
        budgets = [r.max_new_tokens for r in requests]
        for batch in plan_batches([len(p) for p in prompts], budgets, self.chunk):
            params = SamplingParams(temperature=0.0, max_tokens=budgets[batch[0]],
                                    stop_token_ids=self.stop_ids, skip_special_tokens=True)
            outputs = self.llm.generate([prompts[i] for i in batch], params, use_tqdm=self.progress)
            done = []
            for i, out in zip(batch, outputs):
                completion = out.outputs[0]
                stats.prompt_tokens += len(out.prompt_token_ids or [])
                stats.new_tokens += len(completion.token_ids)
                results[i] = Generation(requests[i].key, completion.text, len(completion.token_ids),
                                        completion.finish_reason == "length")
                done.append(results[i])
            if on_batch is not None:
                on_batch(done)
        return results  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Resumable store
# --------------------------------------------------------------------------------------------------


@dataclass
class StoredPrediction:
    key: str
    prompt_sha: str
    max_new_tokens: int
    prediction: str
    new_tokens: int
    hit_budget: bool
    meta: dict = field(default_factory=dict)  # bench, file, index: for people reading the file


class PredictionStore:
    """Append-only JSONL of predictions; line 1 is a header that must match the current run."""

    def __init__(self, path: str | Path | None, header: dict):
        self.path = Path(path) if path is not None else None
        self.header = header
        self.torn_lines = 0

    def load(self) -> dict[str, StoredPrediction]:
        """Stored predictions by key (a later line wins); empty when there is no file yet."""
        if self.path is None or not self.path.exists():
            return {}
        lines = self.path.read_text(encoding="utf-8").splitlines()
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number != len(lines):
                    raise RedoneError(f"{self.path}:{number}: not valid JSON (delete the file to start over)") from None
                self._drop_torn_last_line(lines[:-1])
        if not records:
            return {}
        self._check_header(records[0])
        stored = {}
        for number, rec in enumerate(records[1:], start=2):
            try:
                item = StoredPrediction(**{k: rec[k] for k in StoredPrediction.__dataclass_fields__ if k in rec})
            except TypeError:
                raise RedoneError(f"{self.path}: record {number} lacks prediction fields") from None
            stored[item.key] = item
        return stored

    def _drop_torn_last_line(self, kept: list[str]) -> None:
        """An interrupted write leaves a partial last line: remove it, so its item is generated again."""
        self.torn_lines += 1
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def _check_header(self, first: dict) -> None:
        found = first.get("header") if isinstance(first, dict) else None
        if not isinstance(found, dict):
            raise RedoneError(f"{self.path}: first line is not a predictions header (delete the file to start over)")
        diffs = [f"{k}: {found.get(k)!r} there, {v!r} now" for k, v in self.header.items() if found.get(k) != v]
        if diffs:
            raise RedoneError(
                f"{self.path} holds predictions of a different run ({'; '.join(diffs)}); "
                "delete it or choose another --out"
            )

    def append(self, items: Sequence[StoredPrediction]) -> None:
        if self.path is None or not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", encoding="utf-8") as handle:
            if new_file:
                handle.write(json.dumps({"header": self.header}, ensure_ascii=False) + "\n")
            for item in items:
                handle.write(json.dumps(asdict(item), ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


@dataclass(frozen=True)
class Job:
    """One item to predict: the request plus what identifies its prompt for reuse."""

    request: Request
    prompt_sha: str
    meta: dict


def generate_resumable(
    generator, jobs: Sequence[Job], store: PredictionStore
) -> tuple[dict[str, StoredPrediction], dict]:
    """Predictions by key for every job, generating only those the store does not hold; and stats."""
    stats = GenerationStats(items=len(jobs))
    stored = store.load()
    fresh: dict[str, StoredPrediction] = {}
    todo = []
    for job in jobs:
        old = stored.get(job.request.key)
        if old and old.prompt_sha == job.prompt_sha and old.max_new_tokens == job.request.max_new_tokens:
            fresh[job.request.key] = old
        else:
            todo.append(job)
    stats.reused = len(fresh)
    by_key = {job.request.key: job for job in todo}

    def keep(batch: list[Generation]) -> None:
        records = []
        for gen in batch:
            job = by_key[gen.key]
            records.append(StoredPrediction(gen.key, job.prompt_sha, job.request.max_new_tokens, gen.text,
                                            gen.new_tokens, gen.hit_budget, job.meta))
        store.append(records)
        fresh.update((r.key, r) for r in records)

    if todo:
        start = time.perf_counter()
        generator.generate([job.request for job in todo], on_batch=keep, stats=stats)
        stats.seconds = time.perf_counter() - start
        stats.generated = len(todo)
    return {job.request.key: fresh[job.request.key] for job in jobs}, stats.as_dict()
