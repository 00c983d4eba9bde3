"""SNS-TransBench scorer: BLEU and chrF++ per direction (zh2en, en2zh), and their 4-number average.

Each item has ``zh``, ``en``, ``src_lang`` and ``dst_lang``; the direction comes from the language pair and
the reference is the ``dst_lang`` field. Metrics are corpus-level sacrebleu: BLEU with tokenizer "zh" for
Chinese targets and "13a" for English targets; chrF++ is ``CHRF(word_order=2)`` (the RedOne team's own
helper used plain chrF, word_order=0; we report chrF++ as the RedOne paper names it).
average = mean of BLEU zh2en, chrF++ zh2en, BLEU en2zh, chrF++ en2zh (over the directions present).
"""

from __future__ import annotations

import numpy as np

from redone.errors import RedoneError

DIRECTIONS = ("zh2en", "en2zh")
_TOKENIZER = {"zh2en": "13a", "en2zh": "zh"}
CHRF_NOTE = "chrF++ = sacrebleu CHRF(word_order=2); the RedOne team's helper used plain chrF (word_order=0)."


def direction(item: dict) -> str:
    """ "zh2en" or "en2zh", from the item's src_lang / dst_lang."""
    pair = (str(item.get("src_lang", "")).lower(), str(item.get("dst_lang", "")).lower())
    if pair == ("zh", "en"):
        return "zh2en"
    if pair == ("en", "zh"):
        return "en2zh"
    raise RedoneError(f"SNS-TransBench item has src_lang/dst_lang {pair}, expected zh/en or en/zh")


def gold_text(item: dict) -> str:
    """The reference translation: the text in the target language."""
    target = direction(item)[-2:]
    text = item.get(target)
    if not isinstance(text, str):
        raise RedoneError(f"SNS-TransBench item has no reference text in field {target!r}")
    return text


def score_transbench(predictions: list[str], items: list[dict]) -> dict:
    """Corpus BLEU and chrF++ per direction; returns {"zh2en": {...}, "en2zh": {...}, "average", ...}."""
    from sacrebleu.metrics import BLEU, CHRF

    predictions, items = list(predictions), list(items)
    if len(predictions) != len(items):
        raise RedoneError(f"SNS-TransBench: {len(predictions)} predictions for {len(items)} items")
    if not items:
        raise RedoneError("SNS-TransBench: no items to score")
    groups: dict[str, tuple[list[str], list[str]]] = {d: ([], []) for d in DIRECTIONS}
    for i, (pred, item) in enumerate(zip(predictions, items)):
        if pred is not None and not isinstance(pred, str):
            raise RedoneError(f"SNS-TransBench prediction {i}: expected a string, got {type(pred).__name__}")
        hyps, refs = groups[direction(item)]
        hyps.append(pred or "")
        refs.append(gold_text(item))
    result: dict = {}
    numbers = []
    for name, (hyps, refs) in groups.items():
        if not hyps:
            continue
        bleu = BLEU(tokenize=_TOKENIZER[name]).corpus_score(hyps, [refs]).score
        chrf = CHRF(word_order=2).corpus_score(hyps, [refs]).score
        result[name] = {"bleu": bleu, "chrf++": chrf, "n": len(hyps), "bleu_tokenize": _TOKENIZER[name]}
        numbers += [bleu, chrf]
    missing = [d for d in DIRECTIONS if d not in result]
    notes = [CHRF_NOTE]
    if missing:
        notes.append(f"direction(s) absent from the items: {', '.join(missing)}; average over the rest")
    result.update(average=float(np.mean(numbers)), n=len(items), missing_directions=missing, notes=notes)
    return result
