"""Held-out preference accuracy: does the model rank the preferred answer above the rejected one?

The ``preference`` bench of ``redone eval``; the number issue 17 asks DPO to raise over SFT.

Pairs (none of them trained on)
- ``hh``: the HH-RLHF harmless *test* split (``preference/hh_rlhf_harmless_test.jsonl``; DPO reads the
  train split), split into shared prompt + chosen/rejected reply as DPO splits it, the first N pairs.
- ``sns``: pairs built from the SNS-Bench *test* split by the rules DPO builds its task pairs with
  (``redone.data.dpo.task_pairs``: the gold answer against a wrong one that the task metric scores
  lower, e.g. another label or a partial list), N pairs in all, items evenly spaced through each of the
  12 files, prompts in the eval's prompt style.

Score
- Each completion's log-probability under the model given the prompt, with the chat template DPO trains
  with. A pair is ranked right when the chosen reply's is higher.
- ``accuracy`` compares the mean log-probability per token (length-fair: HH rejected replies are often
  shorter, which a summed score would favour); ``accuracy_sum`` compares the sums (what DPO's implicit
  reward compares, against its reference). No reference model is involved, so the same number is defined
  for base, SFT and DPO models and columns compare directly. Ties (equal scores) count as wrong.
- ``margin``: mean of (chosen − rejected) mean per-token log-probability, in nats.

Errors: ``RedoneError`` for a missing pair file or a set with no usable pair.
"""

from __future__ import annotations

import math
from pathlib import Path

from redone.errors import RedoneError

HH_TEST = "preference/hh_rlhf_harmless_test.jsonl"
SNS_TEST = "sns_bench/test"
MAX_LEN = 1024  # pairs longer than this lose the head of their prompt, as DPO's truncate_prompt does


def hh_pairs(data_dir: Path, n: int) -> list:
    """The first ``n`` usable pairs of the HH-RLHF harmless test file."""
    from redone.data.dpo import pair_from_record
    from redone.data.sources import read_jsonl
    from redone.errors import DataError

    path = data_dir / HH_TEST
    if not path.is_file():
        raise RedoneError(f"preference: {path} not found (the HH-RLHF harmless test pairs)")
    pairs = []
    for record in read_jsonl(path):
        line = record.pop("_line")
        try:
            pairs.append(pair_from_record(record, f"{path}:{line}"))
        except DataError:  # BadPair included: a record with no two distinct replies is no pair to rank
            continue
        if len(pairs) == n:
            break
    return pairs


def sns_pairs(data_dir: Path, n: int, style: str, max_prompt_chars: int | None) -> list:
    """About ``n`` gold-vs-wrong pairs from the SNS-Bench test split, spread over its 12 files."""
    from redone.data.dpo import task_pairs
    from redone.sns import tasks as sns_tasks
    from redone.sns.scoring import SNS_FILES

    folder = data_dir / SNS_TEST
    per_file = math.ceil(n / len(SNS_FILES))
    pairs = []
    for file in SNS_FILES:
        path = folder / f"{file}.json"
        if not path.is_file():
            raise RedoneError(f"preference: {path} not found (SNS-Bench test split)")
        lined = sns_tasks.item_lines(path)
        chosen = [lined[i * len(lined) // per_file] for i in range(min(per_file, len(lined)))]  # evenly spaced
        built, _ = task_pairs(file, [item for _, item in chosen], style=style, max_prompt_chars=max_prompt_chars,
                              pairs_per_item=1, seed=0, where=str(path), lines=[line for line, _ in chosen])
        pairs += built
    return pairs


def completion_logprobs(model, tokenizer, pairs: list, *, batch_size: int = 4) -> list[tuple[float, int, float, int]]:
    """Per pair: (chosen log-prob sum, chosen tokens, rejected log-prob sum, rejected tokens)."""
    from redone.data.dpo import encode_pair
    from redone.eval.perplexity import per_sequence_nll

    sequences = []
    for pair in pairs:
        encoded = encode_pair(tokenizer, pair, max_len=MAX_LEN, where=pair.where or "pair")
        for completion in (encoded.chosen, encoded.rejected):
            ids = encoded.prompt + completion
            sequences.append((ids, [False] * len(encoded.prompt) + [True] * len(completion)))
    scored = per_sequence_nll(model, sequences, batch_size=batch_size)
    return [(-scored[2 * i][0], scored[2 * i][1], -scored[2 * i + 1][0], scored[2 * i + 1][1])
            for i in range(len(pairs))]


def summarise(scores: list[tuple[float, int, float, int]], pairs: list, name: str) -> dict:
    if not scores:
        raise RedoneError(f"preference: no usable {name} pair to rank")
    mean_right = [c / nc > r / nr for c, nc, r, nr in scores]
    sum_right = [c > r for c, _, r, _ in scores]
    margins = [c / nc - r / nr for c, nc, r, nr in scores]
    by_kind: dict[str, list[bool]] = {}
    for pair, right in zip(pairs, mean_right):
        by_kind.setdefault(pair.kind, []).append(right)
    return {"accuracy": 100 * sum(mean_right) / len(scores), "accuracy_sum": 100 * sum(sum_right) / len(scores),
            "margin": sum(margins) / len(margins), "n": len(scores),
            "by_kind": {k: {"accuracy": 100 * sum(v) / len(v), "n": len(v)} for k, v in sorted(by_kind.items())}}


def preference_accuracy(model, tokenizer, data_dir: str | Path, *, pairs: int = 256, style: str = "redone",
                        max_prompt_chars: int | None = None, batch_size: int = 4) -> dict:
    """The ``preference`` bench: accuracy on ``pairs`` HH-RLHF test pairs and ``pairs`` SNS test pairs."""
    data_dir = Path(data_dir)
    section = {}
    for name, built in (("hh", hh_pairs(data_dir, pairs)),
                        ("sns", sns_pairs(data_dir, pairs, style, max_prompt_chars)[:pairs])):
        section[name] = summarise(completion_logprobs(model, tokenizer, built, batch_size=batch_size), built, name)
    section["accuracy"] = (section["hh"]["accuracy"] + section["sns"]["accuracy"]) / 2
    return section
