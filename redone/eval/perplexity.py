"""General-ability retention: perplexity of held-out general text, and an optional lm-eval hook.

Features
- ``shakespeare_holdout``: the tail of tinyshakespeare, i.e. the last 10% of its paragraphs (blank-line
  blocks, split exactly as ``redone.data.sources.read_text_units`` splits them for CPT). A CPT source
  reading the file as paragraphs keeps the tail unseen with ``limit: <head paragraphs>`` (6,499 of the
  shipped file's 7,222); the function returns that count so configs and reports can state it.
- ``text_perplexity``: the first ``max_tokens`` tokens of a text in non-overlapping windows of
  ``context`` tokens; every token but the first of each window is scored (it has no context).
- ``chat_perplexity``: HH-RLHF "chosen" dialogues rendered with the tokenizer's chat template and scored
  on assistant tokens only, with the same mask SFT trains on (``redone.data.chat.encode_chat``); dialogues
  in file order until ``max_tokens`` assistant tokens are scored (the last one cut there), each cut at
  ``context`` tokens. A fixed token budget keeps the number comparable across stages and fast on CPU.
- ``sns_heldout_documents`` + ``documents_perplexity``: SNS-domain perplexity on note texts no stage
  trains on: the notes of the SNS-Bench *test* split (all files but CHLW, whose content is mostly the
  benchmark's instruction template; CPT is decontaminated against it, SFT/DPO/RL read
  the train split only) that share no 13-gram with any training text the project ships (SNS-Bench train
  items, SNS-TransBench train pairs): the shipped train split overlaps the test split, so those notes
  are dropped. Each note is its own sequence (its first token unscored), in file order, until
  ``max_tokens`` tokens are scored. This is the number a CPT stage must move.
- ``general_ppl``: all three, as the ``general-ppl`` bench of ``redone eval`` (Shakespeare tail and
  HH-RLHF replies measure general ability kept; SNS held-out notes measure domain gain).
- ``run_lm_eval``: lm-evaluation-harness tasks through ``lm_eval.simple_evaluate`` when ``lm_eval`` is
  importable.

perplexity = exp(total NLL / scored tokens), natural log, computed in float32 whatever the model dtype.

Errors: ``RedoneError`` for a missing data file, a text or dialogue set with nothing to score, a
non-positive budget, and lm-eval tasks requested without lm-eval installed.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

from redone.errors import RedoneError

HOLDOUT_FRACTION = 0.1
SHAKESPEARE = "general/tinyshakespeare.txt"
HH_TEST = "preference/hh_rlhf_harmless_test.jsonl"
SNS_TEST, SNS_TRAIN, TRANS_TRAIN = "sns_bench/test", "sns_bench/train", "sns_transbench/train.json"


def shakespeare_holdout(path: str | Path, fraction: float = HOLDOUT_FRACTION) -> tuple[str, int]:
    """(held-out tail text, number of head paragraphs a CPT source may read)."""
    from redone.data.sources import read_text_units

    paragraphs = read_text_units(Path(path), "paragraph")
    if not paragraphs:
        raise RedoneError(f"{path}: no text to hold out")
    head = len(paragraphs) - max(1, math.ceil(len(paragraphs) * fraction))
    return "\n\n".join(paragraphs[head:]), head


def sequence_nll(model, sequences: list[tuple[list[int], list[bool]]], *, batch_size: int = 4) -> tuple[float, int]:
    """Sum of next-token NLL over the positions whose mask is True, and how many there were.

    ``mask[t]`` says token t is scored (predicted from tokens < t); ``mask[0]`` is ignored.
    """
    scored = per_sequence_nll(model, sequences, batch_size=batch_size)
    return sum(nll for nll, _ in scored), sum(count for _, count in scored)


def per_sequence_nll(model, sequences: list[tuple[list[int], list[bool]]], *,
                     batch_size: int = 4) -> list[tuple[float, int]]:
    """(NLL sum, scored positions) of each sequence, in input order; masks as in ``sequence_nll``."""
    import torch
    import torch.nn.functional as F

    out: list[tuple[float, int]] = [(0.0, 0)] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))  # little padding
    device = model.device
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = [sequences[i] for i in rows]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention = torch.zeros(len(batch), width, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for row, (ids, mask) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            scored = torch.tensor(mask, dtype=torch.bool)
            scored[0] = False
            labels[row, : len(ids)] = torch.where(scored, torch.tensor(ids), torch.tensor(-100))
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        logits = logits[:, :-1].float()
        targets = labels[:, 1:].to(device)
        nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")  # (B, T-1)
        for row, index in enumerate(rows):
            out[index] = (nll[row].sum().item(), int((targets[row] != -100).sum()))
    return out


def _summary(nll: float, count: int, empty: str, **extra) -> dict:
    if count == 0:
        raise RedoneError(f"perplexity: nothing to score ({empty})")
    return {"ppl": math.exp(nll / count), "mean_nll": nll / count, "scored_tokens": count, **extra}


def text_perplexity(model, tokenizer, text: str, *, max_tokens: int = 16384, context: int = 1024,
                    batch_size: int = 4) -> dict:
    """Perplexity of the first ``max_tokens`` tokens of ``text`` in windows of ``context`` tokens."""
    if max_tokens < 2 or context < 2:
        raise RedoneError(f"perplexity: max_tokens and context must be >= 2, got {max_tokens}, {context}")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    windows = [ids[i : i + context] for i in range(0, len(ids), context)]
    sequences = [(w, [False] + [True] * (len(w) - 1)) for w in windows if len(w) > 1]
    nll, count = sequence_nll(model, sequences, batch_size=batch_size)
    return _summary(nll, count, "the text has fewer than 2 tokens", tokens=len(ids), windows=len(sequences),
                    context=context)


def chat_perplexity(model, tokenizer, dialogues: list[list[dict]], *, max_tokens: int = 16384,
                    context: int = 1024, batch_size: int = 4) -> dict:
    """Perplexity of assistant tokens of chat dialogues, up to ``max_tokens`` scored tokens."""
    from redone.data.chat import encode_chat

    if max_tokens < 1 or context < 2:
        raise RedoneError(f"perplexity: max_tokens must be >= 1 and context >= 2, got {max_tokens}, {context}")
    sequences, budget = [], max_tokens
    for number, messages in enumerate(dialogues):
        encoded = encode_chat(tokenizer, messages, loss_on="assistant", where=f"dialogue {number}")
        ids, mask = encoded.ids[:context], encoded.mask[:context]
        mask[0] = False
        positions = [t for t, m in enumerate(mask) if m]
        if not positions:
            continue
        if len(positions) > budget:  # the budget ends inside this dialogue: score up to there
            last = positions[budget - 1]
            ids, mask = ids[: last + 1], mask[: last + 1]
        sequences.append((ids, mask))
        budget -= min(budget, len(positions))
        if budget == 0:
            break
    nll, count = sequence_nll(model, sequences, batch_size=batch_size)
    return _summary(nll, count, f"no assistant token within the first {context} tokens of any dialogue; "
                    "raise the context", dialogues=len(sequences), context=context)


def documents_perplexity(model, tokenizer, docs: list[str], *, max_tokens: int = 16384, context: int = 1024,
                         batch_size: int = 4) -> dict:
    """Perplexity of documents, each its own sequence (cut at ``context`` tokens, first token unscored),
    in order until ``max_tokens`` tokens are scored."""
    if max_tokens < 1 or context < 2:
        raise RedoneError(f"perplexity: max_tokens must be >= 1 and context >= 2, got {max_tokens}, {context}")
    sequences, budget = [], max_tokens
    for doc in docs:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"][:context][: budget + 1]
        if len(ids) > 1:
            sequences.append((ids, [False] + [True] * (len(ids) - 1)))
            budget -= len(ids) - 1
        if budget == 0:
            break
    nll, count = sequence_nll(model, sequences, batch_size=batch_size)
    return _summary(nll, count, "no document has 2 tokens", documents=len(sequences), context=context)


@functools.cache
def sns_heldout_documents(data_dir: str | Path) -> tuple[tuple[str, ...], int]:
    """(SNS-Bench test notes sharing no 13-gram with a shipped training text, how many were dropped)."""
    from redone.config.schema import QualityDecontam
    from redone.data.decontam import (
        build_eval_index,
        contamination,
        eval_texts_from_sns_bench,
        eval_texts_from_transbench,
    )
    from redone.data.sources import sns_bench_documents

    data_dir = Path(data_dir)
    for part in (SNS_TEST, SNS_TRAIN, TRANS_TRAIN):
        if not (data_dir / part).exists():
            raise RedoneError(f"perplexity: {data_dir / part} not found")
    # CHLW's content is mostly the benchmark's instruction template around a short comment: not note text.
    files = sorted(p.stem for p in (data_dir / SNS_TEST).glob("Note-*.json") if p.stem != "Note-CHLW")
    notes = sns_bench_documents(data_dir / SNS_TEST, files)
    train = [t for texts in eval_texts_from_sns_bench(data_dir / SNS_TRAIN).values() for t in texts]
    train += [t for texts in eval_texts_from_transbench(data_dir / TRANS_TRAIN).values() for t in texts]
    index = build_eval_index({"train": train}, 13)
    hits = contamination(notes, index, QualityDecontam(eval_sets=[]))
    kept = tuple(note for note, hit in zip(notes, hits) if hit is None)
    return kept, len(notes) - len(kept)


def hh_dialogues(path: str | Path) -> list[list[dict]]:
    """The "chosen" dialogues of an HH-RLHF JSONL file as chat messages."""
    from redone.data.records import parse_hh_dialogue

    path = Path(path)
    if not path.is_file():
        raise RedoneError(f"perplexity: {path} not found")
    dialogues = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise RedoneError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            dialogues.append(parse_hh_dialogue(record.get("chosen"), f"{path}:{number}"))
    return dialogues


def general_ppl(model, tokenizer, data_dir: str | Path, *, max_tokens: int = 16384, context: int = 1024,
                batch_size: int = 4) -> dict:
    """The ``general-ppl`` bench: held-out Shakespeare tail and HH-RLHF chosen replies."""
    data_dir = Path(data_dir)
    shakespeare = data_dir / SHAKESPEARE
    if not shakespeare.is_file():
        raise RedoneError(f"perplexity: {shakespeare} not found")
    tail, head = shakespeare_holdout(shakespeare)
    text = text_perplexity(model, tokenizer, tail, max_tokens=max_tokens, context=context, batch_size=batch_size)
    text["source"] = (f"{SHAKESPEARE}: last {HOLDOUT_FRACTION:.0%} of paragraphs (from paragraph {head}), "
                      f"first {max_tokens} tokens")
    chat = chat_perplexity(model, tokenizer, hh_dialogues(data_dir / HH_TEST), max_tokens=max_tokens,
                           context=context, batch_size=batch_size)
    chat["source"] = f"{HH_TEST}: 'chosen' dialogues, assistant tokens only, first {max_tokens} of them"
    notes, dropped = sns_heldout_documents(str(data_dir))
    sns = documents_perplexity(model, tokenizer, list(notes), max_tokens=max_tokens, context=context,
                               batch_size=batch_size)
    sns["source"] = (f"{SNS_TEST}: note texts ({len(notes)} kept, {dropped} dropped for sharing a 13-gram with "
                     f"{SNS_TRAIN} or {TRANS_TRAIN}), first {max_tokens} tokens")
    return {"shakespeare_tail": text, "hh_rlhf_chosen": chat, "sns_heldout_notes": sns, "max_tokens": max_tokens,
            "context": context, "shakespeare_head_paragraphs": head}


def run_lm_eval(model_path: str, tasks: list[str], *, limit: int | None = None, batch_size: int = 8,
                dtype: str = "float32") -> dict:
    """lm-evaluation-harness tasks on a model dir; raises when lm-eval is not installed."""
    if not tasks:
        raise RedoneError("eval: the lm-eval bench needs tasks (--lm-eval-task hellaswag ...)")
    try:
        import lm_eval
    except ImportError:
        raise RedoneError(
            "eval: lm-eval tasks need lm-evaluation-harness, which is not installed "
            "(pip install lm-eval); the general-ppl bench needs nothing extra"
        ) from None
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_path},dtype={dtype}",
                                  tasks=list(tasks), limit=limit, batch_size=batch_size)
    # Keep only the metric table: the full output holds configs and samples that are not JSON-safe.
    return {"tasks": list(tasks), "limit": limit, "results": json.loads(json.dumps(out["results"], default=str))}
