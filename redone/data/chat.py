"""Chat examples -> token ids and a loss mask, with the tokenizer's own chat template.

The mask is found from character spans, not by re-tokenising pieces: the conversation is rendered once
and tokenized once with offsets; an assistant turn's span runs from the end of the prompt rendered with
``add_generation_prompt=True`` to the end of the conversation rendered through that turn. Tokens inside
those spans carry loss (so the end-of-turn token is learnt, as in TRL's completion-only loss).

Over-long examples: ``truncate_prompt`` removes a middle slice of the last user turn (keeping its
beginning and its end, where candidates and the answer cue sit), ``drop`` skips them (counted), and
``error`` raises naming the example.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from redone.errors import DataError

MIN_KEPT_USER_TOKENS = 16


@dataclass
class Encoded:
    ids: list[int]
    mask: list[bool]
    truncated: bool = False


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of every assistant turn."""
    text = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(render(tokenizer, messages[:i], add_generation_prompt=True))
        end = len(render(tokenizer, messages[: i + 1]))
        if text[:start] != render(tokenizer, messages[:i], add_generation_prompt=True):
            raise DataError("chat template is not prefix-stable: cannot locate assistant turns")
        spans.append((start, end))
    return text, spans


def last_user_span(tokenizer, messages: list[dict]) -> tuple[int, int] | None:
    """Character span of the last user turn's content in the rendered text."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        return None
    i = users[-1]
    before = render(tokenizer, messages[:i]) if i else ""  # a template cannot render zero messages
    through = render(tokenizer, messages[: i + 1])
    content = messages[i]["content"]
    start = through.find(content, len(before))
    return (start, start + len(content)) if start >= 0 else None


def encode_chat(tokenizer, messages: list[dict], *, loss_on: str = "assistant", max_len: int | None = None,
                overlong: str = "truncate_prompt", where: str = "example") -> Encoded | None:
    """Token ids and loss mask of a conversation; None when an over-long example is dropped."""
    text, spans = assistant_spans(tokenizer, messages)
    if not spans:
        raise DataError(f"{where}: no assistant turn to learn from")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    if loss_on == "all":
        mask = np.ones(len(ids), dtype=bool)
    else:
        mask = np.zeros(len(ids), dtype=bool)
        for start, end in spans:
            mask |= (offsets[:, 0] >= start) & (offsets[:, 1] <= end) & (offsets[:, 1] > offsets[:, 0])
    if max_len is None or len(ids) <= max_len:
        return Encoded(list(ids), mask.tolist())
    if overlong == "error":
        raise DataError(f"{where}: {len(ids)} tokens exceed data.seq_len={max_len} (data.overlong: error)")
    if overlong == "drop":
        return None
    return _truncate_user_middle(tokenizer, messages, text, ids, offsets, mask, max_len)


def _truncate_user_middle(tokenizer, messages, text, ids, offsets, mask, max_len) -> Encoded | None:
    span = last_user_span(tokenizer, messages)
    excess = len(ids) - max_len
    if span is None:
        return None
    inside = np.flatnonzero((offsets[:, 0] >= span[0]) & (offsets[:, 1] <= span[1]) & ~mask)
    if len(inside) - excess < MIN_KEPT_USER_TOKENS:
        return None  # the answer alone is too long to keep any useful prompt: dropped, counted
    # Keep the beginning (what the item is about) and the end (candidates, question, answer cue).
    keep_head = (len(inside) - excess) // 2
    cut = inside[keep_head: keep_head + excess]
    keep = np.ones(len(ids), dtype=bool)
    keep[cut] = False
    ids = [t for t, k in zip(ids, keep) if k]
    return Encoded(ids, mask[keep].tolist(), truncated=True)
