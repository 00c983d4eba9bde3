"""DPO's data path: preference pairs (read from files or built from SNS task data) -> tokens (cached) ->
train/held-out split -> mixture over pairs -> packed micro-batches.

Sources (one mixture component per pair file, per SNS-Bench task file, per TransBench direction)
- Pair files (``jsonl``/``json``/``parquet``/hub; ``format: preference``, ``hh_rlhf`` or auto):
  ``{"prompt", "chosen", "rejected"}`` where each is a string or a list of chat messages (a string
  prompt is one user turn, a string completion one assistant turn); ``{"chosen", "rejected"}`` as
  full conversations (message lists) whose shared leading turns are the prompt (TRL's implicit
  prompt); and HH-RLHF records, ``"\\n\\nHuman: ... \\n\\nAssistant: ..."`` strings parsed into turns,
  where the shared prefix of chosen and rejected is the prompt and the last assistant turns differ.
- SNS-Bench folders (``sns_bench``) and SNS-TransBench files (``transbench``), with
  ``data.build_from_tasks``: the prompt comes from the same builder SFT and evaluation use, chosen is
  the gold answer in the scored output protocol, rejected a plausible wrong answer (``wrong_answers``:
  another candidate label, a wrong level, a partial list, an extra wrong item, a wrong relevance
  level, the flipped Yes/No, "no answer", a malformed protocol, another item's query, an untranslated
  or truncated translation). Each built pair is scored with the benchmark metric (``score_file`` /
  ``score_transbench``); a rejected answer that does not score strictly below the gold is discarded
  (counted as ``not_worse``). ``data.pairs_per_item`` distinct rejected answers per item at most.
- Sampled rejected answers (``data.sample_rejected: N``): N answers per task item sampled from the
  starting model (the ``sample`` callable the DPO stage passes in: ``redone.train.dpo.RejectedSampler``);
  each distinct one that the benchmark metric
  scores below the gold becomes a pair of kind ``sampled``.

Bad pairs in files: a missing or mistyped field (``malformed``), identical chosen and rejected
(``identical``), an empty completion (``empty_completion``). ``data.bad_pairs: drop`` counts them per
reason; ``error`` raises a one-line ``DataError`` naming file:line.

Encoding (``encode_pair``): the prompt rendered with the generation prompt, and prompt+completion
rendered whole, are tokenized; the completion is what follows their common token prefix (exactly
TRL's rule, so both tokenize identically). A pair is stored as one two-part item,
``prompt+chosen | prompt+rejected``, with the loss mask on completion tokens only. ``data.seq_len``
bounds each of the two sequences (as TRL's ``max_length``); a longer pair is cut in the middle of its
last user turn (``truncate_prompt``, the same cut in both sequences), dropped, or refused
(``data.overlong``), all counted. Items and pairs that share an n-gram with an eval set are dropped
first (``data.decontam``, counted as ``dropped_decontaminated``). One cache entry per component, keyed by the source digest, every
setting that shapes its pairs or tokens, the tokenizer digest and (sampled rejected answers) the
sampling model's fingerprint.

Batches (``pair_batch``): a micro-batch is ``train.micro_batch_size`` pairs whose chosen and rejected
sequences go through one forward, padding-free packed (each sequence a segment whose position_ids
restart, first-fit decreasing into rows as wide as the longest sequence, so packing never adds
attention cost), or, with a shared prompt, ``prompt | chosen | rejected`` items whose 4D mask keeps
the two completions apart (the prompt is computed once per pair). ``data.packing: false`` pads every
sequence to its own row (the comparison path). Mixing is by pair counts (ratio of source weights, or
temperature); ``PairDrawer`` is the resumable sampler over pairs.
"""

from __future__ import annotations

import ast
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from redone.config.schema import SourceSection
from redone.data import records
from redone.data.cache import cached_store, tokenizer_digest
from redone.data.chat import MIN_KEPT_USER_TOKENS, last_user_span, render
from redone.data.decontam import screen
from redone.data.mixture import MixtureSampler, mixture_probs, split_source_weights
from redone.data.packing import (
    BatchSegment,
    Row,
    RowBuilder,
    TokenStore,
    collate,
    first_fit_decreasing,
    split_holdout,
)
from redone.data.sft import decontam_parts, item_styles, item_text, sns_bench_files
from redone.data.sources import detect_format, read_records, source_digest, source_name
from redone.data.stage_data import StageData
from redone.errors import DataError
from redone.sns import tasks as sns_tasks

Message = dict[str, str]
ROLES = ("system", "user", "assistant")
BAD_REASONS = ("malformed", "identical", "empty_completion")
# Bump when the rules that build pairs from task data change: cached pair stores are then rebuilt.
PAIR_BUILDER_VERSION = 2


@dataclass
class Pair:
    prompt: list[Message]
    chosen: list[Message]  # completion turns (usually one assistant message)
    rejected: list[Message]
    kind: str = "given"  # given, or how a built rejected answer was made (other_label, partial_list, ...)
    where: str = field(default="", compare=False)  # file:line of its record or task item (errors name it)


class BadPair(DataError):
    """A pair that ``data.bad_pairs`` may drop (counted under ``reason``) instead of raising."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class PairPlan:
    """One mixture component: its tag name and how to build its pairs (run only on a cache miss)."""

    name: str
    source: int
    kind: str  # file | sns_bench | transbench
    build: object = field(repr=False)  # () -> (list[Pair], Counter)


# ---------------------------------------------------------------- pairs from records


def _message_list(value, key: str, where: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise BadPair("malformed", f"{where}: field {key!r} must be a string or a non-empty list of messages")
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise BadPair("malformed", f"{where}: {key}[{j}] must be an object with a role in {ROLES} and a "
                                       "string 'content'")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _is_hh(text) -> bool:
    return isinstance(text, str) and text.lstrip().startswith("Human:")


def _split_shared_prefix(chosen: list[Message], rejected: list[Message], where: str):
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if chosen == rejected:
        raise BadPair("identical", f"{where}: chosen and rejected are identical")
    if n in (len(chosen), len(rejected)):
        raise BadPair("malformed", f"{where}: one of chosen/rejected is a prefix of the other (no completion)")
    return chosen[:n], chosen[n:], rejected[n:]


def pair_from_record(record: dict, where: str) -> Pair:
    """A Pair from one record of a pair file; raises BadPair (with its reason) for a bad record."""
    for key in ("chosen", "rejected"):
        if key not in record:
            raise BadPair("malformed", f"{where}: missing field {key!r}")
    chosen, rejected, prompt = record["chosen"], record["rejected"], record.get("prompt")
    if prompt is None:
        if _is_hh(chosen) and _is_hh(rejected):
            chosen = records.parse_hh_dialogue(chosen, f"{where}: field 'chosen'")
            rejected = records.parse_hh_dialogue(rejected, f"{where}: field 'rejected'")
        elif isinstance(chosen, str) or isinstance(rejected, str):
            raise BadPair("malformed", f"{where}: missing field 'prompt' (chosen/rejected are plain strings, "
                                       "not HH-RLHF dialogues or message lists)")
        else:
            chosen = _message_list(chosen, "chosen", where)
            rejected = _message_list(rejected, "rejected", where)
        prompt, chosen, rejected = _split_shared_prefix(chosen, rejected, where)
    else:
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else \
            _message_list(prompt, "prompt", where)
        chosen = [{"role": "assistant", "content": chosen}] if isinstance(chosen, str) else \
            _message_list(chosen, "chosen", where)
        rejected = [{"role": "assistant", "content": rejected}] if isinstance(rejected, str) else \
            _message_list(rejected, "rejected", where)
    return checked_pair(Pair(prompt, chosen, rejected, where=where), where)


def checked_pair(pair: Pair, where: str) -> Pair:
    if not pair.prompt or pair.prompt[-1]["role"] == "assistant":
        raise BadPair("malformed", f"{where}: the prompt must end with a user (or system) turn")
    for key in ("chosen", "rejected"):
        completion = getattr(pair, key)
        if completion[0]["role"] != "assistant":
            raise BadPair("malformed", f"{where}: {key} must start with an assistant turn")
        if not any(m["content"].strip() for m in completion):
            raise BadPair("empty_completion", f"{where}: empty {key} completion")
    if pair.chosen == pair.rejected:
        raise BadPair("identical", f"{where}: chosen and rejected are identical")
    return pair


def file_pairs(source: SourceSection, policy: str) -> tuple[list[Pair], Counter]:
    pairs, counts = [], Counter()
    for i, record in enumerate(read_records(source)):
        where = f"{source.path}:{record.get('_line', i)}"
        try:
            pairs.append(pair_from_record({k: v for k, v in record.items() if k != "_line"}, where))
        except BadPair as bad:
            if policy == "error":
                raise DataError(f"{bad} (data.bad_pairs: error)") from None
            counts[f"dropped_{bad.reason}"] += 1
        except DataError:  # an HH string that is not a dialogue: malformed too
            if policy == "error":
                raise
            counts["dropped_malformed"] += 1
        counts["records"] += 1
    if not pairs:
        raise DataError(f"{source.path}: source '{source_name(source)}' has no usable pairs ({dict(counts)})")
    return pairs, counts


# ---------------------------------------------------------------- pairs built from task data


def _split_list(text: str, sep: str = ",") -> list[str]:
    return [p.strip() for p in text.split(sep) if p.strip()]


def _literal_list(text: str) -> list[str] | None:
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def _drop_one(values: list[str], rng: random.Random) -> list[str]:
    k = rng.randrange(len(values))
    return values[:k] + values[k + 1:]


def _content_words(text: str, exclude: list[str]) -> list[str]:
    banned = {e.lower() for e in exclude}
    words = {w for w in re.findall(r"[A-Za-z][A-Za-z'-]{3,}", text) if w.lower() not in banned}
    return sorted(words)


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?。！？\n])", text) if len(s.strip()) > 12]


def wrong_answers(task: str, item: dict, gold: str, rng: random.Random, other_golds: list[str]) -> list[tuple[str, str]]:
    """Plausible wrong answers (kind, text) for one item, in a random (seeded) order; not yet verified."""
    out: list[tuple[str, str]] = []
    if task in ("Note-Taxonomy-single", "Note-Hashtag-single"):
        labels = [c for c in _split_list(item["candidates"]) if c != gold]
        out += [("other_label", c) for c in rng.sample(labels, min(3, len(labels)))]
        out.append(("malformed_protocol", f"The best answer is {gold}."))
    elif task == "Note-Taxonomy-multiple":
        parts = [p.strip() for p in gold.split("|")]
        levels = [_literal_list(item.get(f"candidates_{k}", "")) or [] for k in ("primary", "secondary", "tertiary")]
        if len(parts) == 3:
            for k in range(3):
                others = [c for c in levels[k] if c != parts[k]]
                if others:
                    wrong = list(parts)
                    wrong[k] = rng.choice(others)
                    out.append(("wrong_level", " | ".join(wrong)))
            out.append(("partial_list", " | ".join(parts[:2])))
    elif task in ("Note-Hashtag-multiple", "Note-NER"):
        golds = _split_list(gold)
        if task == "Note-Hashtag-multiple":
            wrong = [c for c in _split_list(item["candidates"]) if c not in golds]
        else:
            wrong = _content_words(item.get("content", ""), golds)
        if len(golds) >= 2:
            out.append(("partial_list", ", ".join(_drop_one(golds, rng))))
        if wrong:
            extra = rng.choice(wrong)
            out.append(("extra_item", ", ".join(golds + [extra])))
            out.append(("other_label", rng.choice(wrong)))
    elif task == "Note-QueryCorr-topic":
        levels = [lv for lv in ("-1", "0", "1", "2", "3") if lv != gold]
        if gold in ("-1", "0", "1", "2", "3"):
            levels.sort(key=lambda lv: (abs(int(lv) - int(gold)), rng.random()))  # adjacent levels first
        out += [("wrong_relevance", lv) for lv in levels]
        return out  # adjacent first on purpose: the most plausible mistakes
    elif task in ("Note-QueryCorr-explain", "Note-Gender"):
        out.append(("flipped", "No" if gold.strip().lower() == "yes" else "Yes"))
    elif task in ("Note-MRC-simple", "Note-CHLW"):
        values = _literal_list(gold) or []
        if task == "Note-CHLW":
            parts = sns_tasks.chlw_parts(item.get("content", ""))
            options = [o for o in (_literal_list(parts[1]) or []) if o not in values] if parts else []
            if options:
                out.append(("other_label", repr(values + [rng.choice(options)])))
        if values:
            out.append(("no_answer", "[]"))
            out.append(("malformed_protocol", "\n".join(values)))
            if len(values) >= 2:
                out.append(("partial_list", repr(_drop_one(values, rng))))
        elif task == "Note-MRC-simple":
            sentences = _sentences(item.get("content", ""))
            if sentences:
                out.append(("hallucinated", repr([rng.choice(sentences)])))
    elif task == "Note-MRC-complex":
        emptied = re.sub(r"<AnswerList>.*?</AnswerList>", "<AnswerList>[]</AnswerList>", gold, flags=re.DOTALL)
        emptied = re.sub(r"<Result>.*?</Result>", "<Result>[]</Result>", emptied, flags=re.DOTALL)
        out.append(("no_answer", emptied))
        out.append(("malformed_protocol", re.sub(r"</?Result>", "", gold)))
        match = re.search(r"<Result>(.*?)</Result>", gold, flags=re.DOTALL)
        try:
            options = json.loads(match.group(1)) if match else None
        except ValueError:
            options = None
        if isinstance(options, list) and len(options) >= 2:
            fewer = json.dumps(_drop_one(options, rng), ensure_ascii=False)
            out.append(("partial_list", gold[: match.start(1)] + fewer + gold[match.end(1):]))
    elif task == "Note-QueryGen":
        others = [g for g in other_golds if g != gold]
        if others:
            out.append(("other_query", rng.choice(others)))
        words = gold.split()
        if len(words) >= 4:
            out.append(("partial", " ".join(words[: len(words) // 2])))
    elif task.startswith("TransBench-"):
        source_text = str(item.get(item.get("src_lang", ""), "")).strip()
        if source_text:
            out.append(("untranslated", source_text))
        if len(gold) >= 8:
            out.append(("truncated", gold[: len(gold) // 2].strip()))
    else:
        raise DataError(f"task {task}: no rule for building rejected answers (built-in SNS tasks only)")
    rng.shuffle(out)
    return out


def task_score(task: str, item: dict, prediction: str) -> float:
    """The benchmark metric of one prediction on one item (the file metric with n = 1)."""
    if task.startswith("TransBench-"):
        from redone.sns.transbench import score_transbench

        return float(score_transbench([prediction], [item])["average"])
    from redone.sns.scoring import score_file

    return float(score_file(sns_tasks.get_task(task).scoring_file, [prediction], [item])["score"])


def task_pairs(task: str, items: list[dict], *, style: str | list[str], max_prompt_chars: int | None,
               pairs_per_item: int, seed: int, where: str, sample=None,
               lines: list[int] | None = None) -> tuple[list[Pair], Counter]:
    """Gold-vs-wrong pairs for the items of one task, each verified with the benchmark metric.

    ``style``: the prompt style of every item, or one per item (``data.prompt_style: mixed``).

    ``sample`` (optional): ``sample(prompts) -> list of answers per prompt`` from a model; every
    distinct sampled answer that scores below the gold becomes a further pair (kind ``sampled``,
    at most ``pairs_per_item`` per item), in addition to the rule-built ones.
    """
    pairs, counts = [], Counter(items=len(items))
    styles = [style] * len(items) if isinstance(style, str) else style
    # Errors name the item's 1-based line in its file when the caller knows it (else its position).
    at = [f"{where}:{line}" for line in lines] if lines else [f"{where}:item {i}" for i in range(len(items))]
    golds = [sns_tasks.answer_text(task, item, styles[i], where=at[i]) for i, item in enumerate(items)]
    prompts = [sns_tasks.prompt_messages(task, sns_tasks.clip_item(task, item, max_prompt_chars), styles[i],
                                         where=at[i]) for i, item in enumerate(items)]
    usable = [i for i, gold in enumerate(golds) if gold.strip()]
    if len(usable) < len(items):
        counts["dropped_empty_completion"] = len(items) - len(usable)
    sampled = dict(zip(usable, sample([prompts[i] for i in usable]))) if sample else {}
    for i in usable:
        item, gold, prompt = items[i], golds[i], prompts[i]
        rng = random.Random(f"{seed}:{task}:{i}")
        gold_score, seen = None, {gold.strip()}
        candidates = [("rules", wrong_answers(task, item, gold, rng, golds)),
                      ("sampled", [("sampled", text) for text in sampled.get(i, [])])]
        for origin, answers in candidates:
            kept = 0
            for kind, text in answers:
                if kept >= pairs_per_item:
                    break
                if not text.strip() or text.strip() in seen:
                    continue
                seen.add(text.strip())
                gold_score = task_score(task, item, gold) if gold_score is None else gold_score
                if not task_score(task, item, text) < gold_score:
                    counts["not_worse" if origin == "rules" else "sampled_not_worse"] += 1
                    continue
                pairs.append(Pair(prompt, [{"role": "assistant", "content": gold}],
                                  [{"role": "assistant", "content": text}], kind, where=at[i]))
                counts[f"kind_{kind}"] += 1
                kept += 1
            if not kept and origin == "rules":
                counts["no_rejected"] += 1
    return pairs, counts


# ---------------------------------------------------------------- plans (one per component)


def pair_plans(sources: list[SourceSection], data, seed: int, sample=None) -> list[PairPlan]:
    """The components of the DPO mixture, in config order; building their pairs is deferred.

    ``sample``: the model sampler for ``data.sample_rejected`` (task sources only), see ``task_pairs``.
    """
    plans = []
    for index, source in enumerate(sources):
        fmt = detect_format(source)
        path = Path(source.path)
        if fmt in ("sns_bench", "transbench") and not data.build_from_tasks:
            raise DataError(f"{source.path}: task data holds no preference pairs; set data.build_from_tasks: true "
                            "to build (gold, wrong answer) pairs from it")
        if fmt == "sns_bench":
            for file in sns_bench_files(path, list(source.tasks)):
                plans.append(PairPlan(file.stem, index, fmt, _task_builder(file.stem, file, None, source, data, seed,
                                                                          sample)))
        elif fmt == "transbench":
            lined = sns_tasks.item_lines(path, sns_tasks.TRANSBENCH)[: source.limit or None]
            tasks = sorted({sns_tasks.transbench_task(it, where=f"{path}:{line}") for line, it in lined})
            for task in tasks:
                plans.append(PairPlan(task, index, fmt, _task_builder(task, path, task, source, data, seed, sample)))
        elif fmt == "text":
            raise DataError(f"{source.path}: plain text holds no preference pairs")
        else:
            plans.append(PairPlan(source_name(source), index, "file",
                                  lambda source=source: screened_file_pairs(source, data)))
    names = [p.name for p in plans]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"data.sources: component name(s) {duplicates} appear twice; give the sources distinct names")
    return plans


def _task_builder(task: str, path: Path, direction: str | None, source: SourceSection, data, seed: int,
                  sample=None):
    def build() -> tuple[list[Pair], Counter]:
        if direction is None:
            lined = sns_tasks.item_lines(path)[: source.limit or None]
        else:
            lined = [(line, it) for line, it in sns_tasks.item_lines(path, sns_tasks.TRANSBENCH)[: source.limit or None]
                     if sns_tasks.transbench_task(it) == direction]
        kept, dropped = screen([item_text(it) for _, it in lined], data.decontam)
        lines, items = [lined[i][0] for i in kept], [lined[i][1] for i in kept]
        styles = item_styles(data.prompt_style, data.official_share, task, len(items), seed)
        pairs, counts = task_pairs(task, items, style=styles, lines=lines,
                                   max_prompt_chars=data.max_prompt_chars, pairs_per_item=data.pairs_per_item,
                                   seed=seed, where=str(path), sample=sample)
        return pairs, counts + Counter(dropped_decontaminated=sum(dropped.values()))

    return build


def screened_file_pairs(source: SourceSection, data) -> tuple[list[Pair], Counter]:
    """A pair file's pairs without those sharing an n-gram with an eval set (data.decontam)."""
    pairs, counts = file_pairs(source, data.bad_pairs)
    texts = ["\n".join(m["content"] for m in p.prompt + p.chosen + p.rejected) for p in pairs]
    kept, dropped = screen(texts, data.decontam)
    if not kept:
        raise DataError(f"{source.path}: every pair of source '{source_name(source)}' overlaps an eval set "
                        "(data.decontam)")
    return [pairs[i] for i in kept], counts + Counter(dropped_decontaminated=sum(dropped.values()))


# ---------------------------------------------------------------- tokenization


@dataclass
class EncodedPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    truncated: bool = False

    def item(self) -> tuple[list[int], list[bool], int]:
        """ids, loss mask and part offset of the two-part item ``prompt+chosen | prompt+rejected``."""
        p, c, r = len(self.prompt), len(self.chosen), len(self.rejected)
        ids = self.prompt + self.chosen + self.prompt + self.rejected
        mask = [False] * p + [True] * c + [False] * p + [True] * r
        return ids, mask, p + c


def _ids(tokenizer, text: str, offsets: bool = False):
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)
    return (enc["input_ids"], enc["offset_mapping"]) if offsets else enc["input_ids"]


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def encode_pair(tokenizer, pair: Pair, *, max_len: int | None, overlong: str = "truncate_prompt",
                where: str = "pair") -> EncodedPair | None:
    """Token ids of prompt, chosen and rejected; None when an over-long pair is dropped."""
    prompt_text = render(tokenizer, pair.prompt, add_generation_prompt=True)
    prompt_ids = _ids(tokenizer, prompt_text)
    chosen_full = _ids(tokenizer, render(tokenizer, pair.prompt + pair.chosen))
    rejected_full = _ids(tokenizer, render(tokenizer, pair.prompt + pair.rejected))
    # The completion starts where prompt and prompt+completion tokens diverge (TRL's rule).
    p = min(common_prefix(prompt_ids, chosen_full), common_prefix(prompt_ids, rejected_full))
    encoded = EncodedPair(prompt_ids[:p], chosen_full[p:], rejected_full[p:])
    if not encoded.chosen or not encoded.rejected:
        raise BadPair("empty_completion", f"{where}: a completion has no tokens")
    length = p + max(len(encoded.chosen), len(encoded.rejected))
    if max_len is None or length <= max_len:
        return encoded
    if overlong == "error":
        raise DataError(f"{where}: {p} prompt + {max(len(encoded.chosen), len(encoded.rejected))} completion "
                        f"tokens exceed data.seq_len={max_len} (data.overlong: error)")
    if overlong == "drop":
        return None
    return _truncate_prompt(tokenizer, pair, prompt_text, encoded, length - max_len)


def _truncate_prompt(tokenizer, pair: Pair, prompt_text: str, encoded: EncodedPair, excess: int):
    """Cut ``excess`` tokens from the middle of the last user turn (same cut in chosen and rejected)."""
    span = last_user_span(tokenizer, pair.prompt)
    if span is None:
        return None
    _, offsets = _ids(tokenizer, prompt_text, offsets=True)
    p = len(encoded.prompt)
    inside = [j for j, (a, b) in enumerate(offsets[:p]) if a >= span[0] and b <= span[1] and b > a]
    if len(inside) - excess < MIN_KEPT_USER_TOKENS:
        return None  # the completions alone leave no room for a useful prompt: dropped, counted
    keep_head = (len(inside) - excess) // 2
    cut = set(inside[keep_head: keep_head + excess])
    prompt = [t for j, t in enumerate(encoded.prompt) if j not in cut]
    return EncodedPair(prompt, encoded.chosen, encoded.rejected, truncated=True)


def tokenize_pairs(pairs: list[Pair], tokenizer, data, name: str, policy: str) -> tuple[TokenStore, Counter]:
    """Two-part TokenStore of the pairs (a dropped pair stays as an empty item) and counts."""
    ids, masks, parts, counts = [], [], [], Counter()
    for i, pair in enumerate(pairs):
        where = pair.where or f"{name}: pair {i}"
        try:
            encoded = encode_pair(tokenizer, pair, max_len=data.seq_len, overlong=data.overlong, where=where)
            if encoded is None:
                counts["dropped_overlong"] += 1
        except BadPair as bad:
            if policy == "error":
                raise DataError(f"{bad} (data.bad_pairs: error)") from None
            counts[f"dropped_{bad.reason}"] += 1
            encoded = None
        if encoded is None:  # kept as an empty item so item indices keep matching the pairs list
            ids.append([])
            masks.append([])
            parts.append(0)
            continue
        counts["truncated"] += encoded.truncated
        item_ids, mask, cut = encoded.item()
        ids.append(item_ids)
        masks.append(mask)
        parts.append(cut)
    return TokenStore.from_lists(ids, masks, parts), counts


# ---------------------------------------------------------------- the stage's data


def build_dpo_data(config, tokenizer, sample=None) -> StageData:
    """Every component's pairs tokenized (cached), split into train and held-out pairs, and the
    drawer over train pairs. ``sample``: the rejected-answer sampler (``data.sample_rejected``)."""
    data = config.data
    plans = pair_plans(list(data.sources), data, config.seed, sample)
    train_stores, held_out, infos = [], {}, []
    for plan in plans:
        store, manifest, hit = tokenized_plan(plan, tokenizer, config, sample)
        train_idx, held_idx = split_holdout(store, data.eval_holdout, config.seed, plan.name)
        train_stores.append(store.subset(train_idx))
        if len(held_idx):
            held_out[plan.name] = store.subset(held_idx)
        counts = {k: v for k, v in manifest.items() if k not in ("key", "parts")}
        infos.append({
            "name": plan.name, "source": data.sources[plan.source].path, "digest": manifest["parts"]["digest"],
            "pairs": len(train_idx), "held_out": len(held_idx),
            "tokens": int(train_stores[-1].tokens.size), "cache_hit": hit, **counts})
    probs = pair_probs(plans, train_stores, data)
    for info, p in zip(infos, probs):
        info["planned_share"] = p
    sampler = MixtureSampler([np.ones(len(s), dtype=np.int64) for s in train_stores], probs, config.seed)
    return StageData(infos, PairDrawer(sampler), held_out=held_out, stores=train_stores)


def tokenized_plan(plan: PairPlan, tokenizer, config, sample=None):
    """(TokenStore, manifest, cache hit) of one component's pairs."""
    data = config.data
    source = data.sources[plan.source]
    parts = {"kind": "dpo-pairs", "builder": PAIR_BUILDER_VERSION, "component": plan.name,
             "digest": source_digest(source), "format": source.format, "limit": source.limit,
             "style": data.prompt_style, "mixed": data.official_share if data.prompt_style == "mixed" else None,
             "seq_len": data.seq_len, "max_prompt_chars": data.max_prompt_chars,
             "overlong": data.overlong, "bad_pairs": data.bad_pairs, "pairs_per_item": data.pairs_per_item,
             "seed": config.seed if plan.kind != "file" else None, "decontam": decontam_parts(data.decontam),
             "tokenizer": tokenizer_digest(tokenizer)}
    if sample is not None and plan.kind != "file":
        parts["sampled"] = sample.key_parts()

    def build():
        pairs, counts = plan.build()
        store, token_counts = tokenize_pairs(pairs, tokenizer, data, plan.name, data.bad_pairs)
        return store, dict(counts + token_counts, built_pairs=len(pairs))

    return cached_store(data.cache_dir, parts, build)


# ---------------------------------------------------------------- mixture and batches


class PairDrawer:
    """The mixture sampler over pairs; its state is the sampler's (O(1) exact resume)."""

    def __init__(self, sampler: MixtureSampler):
        self.sampler = sampler

    def next(self) -> tuple[int, int]:
        return self.sampler.next()

    def draw_counts(self, pairs: int) -> list[int]:
        """Pairs per component over the next ``pairs`` draws (the DPO unit; moves the drawer)."""
        counts = [0] * len(self.sampler.lengths)
        for _ in range(pairs):
            source, item = self.next()
            counts[source] += int(self.sampler.lengths[source][item])
        return counts

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])


def pair_probs(plans: list[PairPlan], stores: list[TokenStore], data) -> list[float]:
    """Mixture shares over components, by pair counts (a pair is the unit of the DPO loss)."""
    sizes = [len(s) for s in stores]
    if data.mixing == "temperature":
        return mixture_probs([], sizes, "temperature", data.temperature)
    weights = split_source_weights([p.source for p in plans], [s.weight for s in data.sources], sizes,
                                   data.temperature)
    return mixture_probs(weights, sizes, "ratio", 1.0)


def pair_batch(stores: list[TokenStore], picks: list[tuple[int, int]], pad_id: int, *, layout: str,
               packing: bool, shared_prompt: bool, split: str = "train") -> dict:
    """A micro-batch of the given (component, pair) picks, packed as configured."""
    if shared_prompt:
        batch = shared_prompt_batch(stores, picks, pad_id)
    else:
        rows = pack_pairs(stores, picks, pad_id, packing=packing, fill=layout == "rows")
        batch = collate(rows, pad_id, layout)
    batch["split"] = split
    # A pair counts as its two sequences' tokens (prompt+chosen, prompt+rejected), as TRL counts
    # it, whether or not the prompt is computed once: tokens/s compare across layouts and trainers.
    batch["pair_tokens"] = [int(stores[s].offsets[i + 1] - stores[s].offsets[i]) for s, i in picks]
    return batch


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
    if packing:
        bins = first_fit_decreasing([len(seq[0]) for seq in sequences], width)
    else:
        bins = [[k] for k in range(len(sequences))]
    rows = []
    for members in bins:
        row = RowBuilder(width, restart_positions=True)
        for k in sorted(members):
            row.add(*sequences[k])
        rows.append(row.finish(pad_id, fill=fill and packing))
    return rows


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
    bins = first_fit_decreasing(lengths, width)
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
            segments += [BatchSegment(b, offset + p, c, source, item, 0), BatchSegment(b, offset + p + c, r, source, item, 1)]
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
