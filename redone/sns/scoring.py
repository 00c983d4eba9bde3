"""SNS-Bench scorers: all 12 files of the 8 tasks, pure Python, no model needed.

What is scored (rules from docs/SNS_BENCH.md, checked against the official SNS-Bench code):

| file | rule |
|---|---|
| Note-Taxonomy-single, Note-Hashtag-single | cut the prediction at the first delimiter, exact-match accuracy |
| Note-Taxonomy-multiple | same cut, then normalise both sides ("A \\| B \\| C"), exact match |
| Note-Hashtag-multiple, Note-NER | comma list, corpus micro-F1 over sets |
| Note-QueryCorr-topic | first ``-1|0|1|2|3`` in the output, macro-F1 x success ratio |
| Note-QueryCorr-explain, Note-Gender | Yes/No after the cut, accuracy |
| Note-MRC-simple | first list literal; existence F1, BLEU-4, ROUGE-1/2/L, each x success ratio |
| Note-MRC-complex | last ``<Result>[...]</Result>`` JSON; existence F1, option LCS-F1, option EM |
| Note-CHLW | first list literal; corpus micro-F1 x success ratio |
| Note-QueryGen | first line; ANLS (and embedding cosine when an embedder is given) |

"Success ratio" = parsed / total: where a rule needs a parse, the metric is computed over the parsed
items only and then multiplied by it, so format compliance counts in the score.

Two modes. ``bug_compatible=True`` reproduces the official scorer's quirks; the default (fixed) mode
repairs them. The differences:

* Taxonomy / Hashtag-single cut: the official pattern has a bare ``end`` alternative ("Trending" -> "Tr")
  and golds are never cut, so labels containing "end", "." or "," can never be matched. Fixed mode cuts
  only at newline, '.', ',', '<', '>' and the whole markers "endofresponse" / "im_end", and first checks
  whether the prediction *starts with* a known label (the gold or one of the item's candidates, longest
  first) followed by nothing or by a delimiter; if so that label is the parsed answer. So "Mr. Zhang's Old
  Amber" is matched whole, while "U.S." is never mistaken for the shorter candidate "U".
* Taxonomy-multiple normalisation: official = opencompass ``general_postprocess`` (cut at the first
  newline/'.'/',', delete non-word characters, drop articles, collapse spaces). Fixed mode does not cut
  again (the protected cut above already did) and turns non-word characters into spaces, so
  "A|B|C" == "A | B | C".
* List literals (MRC-simple, CHLW): official = first bracketed span with no nested brackets, so a gold span
  that itself contains "[" (emoji codes like "[Cry R]") can never be parsed. Fixed mode scans each
  balanced ``[...]`` span (brackets inside quoted strings ignored) in order and takes the first that is a
  list of str, falling back to the official span. Both parse with ``ast.literal_eval`` (never eval).
* MRC-complex: official success ratio divides by a hard-coded 1000 instead of the item count, tokenises a
  Latin option as one token (spaces included) and removes only a fixed list of punctuation; fixed mode
  uses parsed/total, CJK characters + whitespace-separated words, and deletes every Unicode punctuation
  character (as SNS_BENCH.md describes). Both use the official longest common *contiguous* token run as
  "LCS". ```json fences: official ``lstrip('```json')`` (a character set); fixed strips a real fence.
* Existence F1 when every item is a true negative: official 0, fixed 100 (nothing to find, nothing
  hallucinated). MRC-simple BLEU/ROUGE with no TP pair: 0, except fixed mode gives 100 when there are no
  gold spans and no predicted spans at all.
* QueryCorr-topic macro-F1: official averages all 5 levels (a level absent from gold and prediction counts
  as F1 0); fixed mode averages the levels present in gold or prediction.
* QueryGen: official ANLS uses the full raw prediction; fixed mode uses the same first line that is
  embedded.

Further choices: BLEU is sacrebleu 4-gram, unsmoothed (as the official nltk call), on jieba tokens;
ROUGE is rouge-score with a jieba tokenizer (the official used the ``rouge`` package). Emoji are stripped
by Unicode category (symbols "So", skin tones, ZWJ, variation selectors, keycap), as ``demoji`` is not a
dependency. Epsilons the official code adds to denominators are left out in both modes.
Every score and sub-metric is reported in points (0-100); ``success_ratio`` is a fraction.
"""

from __future__ import annotations

import ast
import difflib
import json
import logging
import re
import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np

from redone.errors import RedoneError

SNS_FILES: list[str] = [
    "Note-Taxonomy-single",
    "Note-Taxonomy-multiple",
    "Note-Hashtag-single",
    "Note-Hashtag-multiple",
    "Note-QueryCorr-topic",
    "Note-QueryCorr-explain",
    "Note-MRC-simple",
    "Note-MRC-complex",
    "Note-NER",
    "Note-Gender",
    "Note-CHLW",
    "Note-QueryGen",
]
TASKS: list[str] = ["Taxonomy", "Hashtag", "QueryCorr", "MRC", "NER", "Gender", "CHLW", "QueryGen"]
TASK_OF_FILE: dict[str, str] = {
    "Note-Taxonomy-single": "Taxonomy",
    "Note-Taxonomy-multiple": "Taxonomy",
    "Note-Hashtag-single": "Hashtag",
    "Note-Hashtag-multiple": "Hashtag",
    "Note-QueryCorr-topic": "QueryCorr",
    "Note-QueryCorr-explain": "QueryCorr",
    "Note-MRC-simple": "MRC",
    "Note-MRC-complex": "MRC",
    "Note-NER": "NER",
    "Note-Gender": "Gender",
    "Note-CHLW": "CHLW",
    "Note-QueryGen": "QueryGen",
}
FILES_OF_TASK: dict[str, list[str]] = {t: [f for f in SNS_FILES if TASK_OF_FILE[f] == t] for t in TASKS}

TOPIC_LEVELS = ["-1", "0", "1", "2", "3"]

Embedder = Callable[[list[str]], "np.ndarray"]


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _check_file(file: str) -> str:
    stem = file[:-5] if file.endswith(".json") else file
    if stem not in TASK_OF_FILE:
        raise RedoneError(f"unknown SNS-Bench file {file!r}; expected one of {', '.join(SNS_FILES)}")
    return stem


def _answer(file: str, item: dict, index: int | None = None):
    if not isinstance(item, dict) or "answer" not in item:
        where = f" item {index}" if index is not None else ""
        raise RedoneError(f"{file}{where}: record has no 'answer' field")
    return item["answer"]


def _as_text(file: str, index: int, prediction) -> str:
    # A generation that failed upstream may come back as None: score it as an empty (wrong) output.
    if prediction is None:
        return ""
    if not isinstance(prediction, str):
        raise RedoneError(f"{file} prediction {index}: expected a string, got {type(prediction).__name__}")
    return prediction


def _gold_str(file: str, item: dict, index: int | None = None) -> str:
    gold = _answer(file, item, index)
    if not isinstance(gold, str):
        raise RedoneError(f"{file} item {index}: 'answer' must be a string, got {type(gold).__name__}")
    return gold.strip()


def _gold_span_list(file: str, item: dict, index: int | None = None) -> list[str]:
    gold = _answer(file, item, index)
    if not isinstance(gold, list) or not all(isinstance(s, str) for s in gold):
        raise RedoneError(f"{file} item {index}: 'answer' must be a list of strings")
    return gold


def _gold_literal_list(file: str, item: dict, index: int | None = None) -> list[str]:
    gold = _gold_str(file, item, index)
    value = _literal_str_list(gold)
    if value is None:
        raise RedoneError(f"{file} item {index}: 'answer' {gold[:60]!r} is not a Python list of strings")
    return value


# --------------------------------------------------------------------------------------------------
# Cutting free text down to one label
# --------------------------------------------------------------------------------------------------

_ANSWER_CUES = ("答案：", "Answer:")
# The official Taxonomy/Hashtag-single split. Read as regex alternatives it cuts at '<', '>', a bare
# "end" (the quirk), "im_end", "endofresponse", and any of newline, '.', ','.
_OFFICIAL_LABEL_CUT = re.compile(r"[\n.,]|<|endofresponse|>|<|end|>|<|im_end|>")
# Yes/No files: newline, '.', ',', '<', '>' (no "end" alternative).
_YESNO_CUT = re.compile(r"[\n.,<>]")
# Fixed mode: the same delimiters, with the end-of-turn markers only as whole words.
_FIXED_LABEL_CUT = re.compile(r"[\n.,<>]|endofresponse|im_end")
# Comma-list files and QueryGen: newline, '<', '>', "endofresponse".
_LIST_CUT = re.compile(r"\n|<|endofresponse|>")


def _strip_cues(text: str) -> str:
    for cue in _ANSWER_CUES:
        text = text.replace(cue, "")
    return text.strip()


def _cut(text: str, pattern: re.Pattern) -> str:
    return pattern.split(text, maxsplit=1)[0].strip()


def _parse_label_fixed(text: str, protected: Sequence[str]) -> str:
    """Fixed-mode label parse: a known label the output starts with wins over the delimiter cut.

    The label must be followed by nothing or by a delimiter, so "Travel. It is about..." -> "Travel",
    but "Sports & Fitness" is not read as "Sports". Longest label first, so "U.S." beats "U".
    """
    text = _strip_cues(text)
    best = ""
    for label in protected:
        if len(label) <= len(best) or not text.startswith(label):
            continue
        rest = text[len(label) :]
        if not rest.strip() or _FIXED_LABEL_CUT.match(rest.lstrip(" \t")):
            best = label
    return best or _cut(text, _FIXED_LABEL_CUT)


def _split_candidates(candidates) -> list[str]:
    """Candidates come as "a, b, c" (single-label files) or a list literal string (Taxonomy-multiple)."""
    if isinstance(candidates, list):
        return [str(c).strip() for c in candidates]
    if not isinstance(candidates, str):
        return []
    text = candidates.strip()
    if text.startswith("["):
        value = _literal_str_list(text)
        if value is not None:
            return [c.strip() for c in value]
    return [c.strip() for c in text.split(",") if c.strip()]


def _label_accuracy(file, predictions, items, bug_compatible) -> dict:
    yes_no = file in ("Note-QueryCorr-explain", "Note-Gender")
    correct = 0
    for i, (pred, item) in enumerate(zip(predictions, items)):
        gold = _gold_str(file, item, i)
        if bug_compatible:
            parsed = _cut(_strip_cues(pred), _YESNO_CUT if yes_no else _OFFICIAL_LABEL_CUT)
        else:
            parsed = _parse_label_fixed(pred, [gold, *_split_candidates(item.get("candidates"))])
        correct += parsed == gold
    accuracy = 100.0 * correct / len(items)
    return _result(accuracy, None, {"accuracy": accuracy}, parsed=len(items))


# --------------------------------------------------------------------------------------------------
# Taxonomy-multiple
# --------------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)


def _general_postprocess(text: str) -> str:
    """opencompass ``general_postprocess``: cut at newline/'.'/',', delete non-word chars, drop articles."""
    text = re.split(r"[\n.,]", text, maxsplit=1)[0]
    text = re.sub(r"[^\w\s]", "", text)
    text = _ARTICLES.sub("", text)
    return re.sub(r"\s+", " ", text).strip()


def _normalise_levels(text: str) -> str:
    """Fixed-mode normalisation: non-word chars become spaces (so '|' spacing is irrelevant), no cut."""
    text = re.sub(r"[^\w\s]", " ", text)
    text = _ARTICLES.sub("", text)
    return re.sub(r"\s+", " ", text).strip()


def _taxonomy_multiple(file, predictions, items, bug_compatible) -> dict:
    correct = 0
    for i, (pred, item) in enumerate(zip(predictions, items)):
        gold = _gold_str(file, item, i)
        if bug_compatible:
            parsed = _general_postprocess(_cut(_strip_cues(pred), _OFFICIAL_LABEL_CUT))
            # opencompass EMEvaluator accepts the normalised or the raw reference.
            correct += parsed in (_general_postprocess(gold), gold)
        else:
            parsed = _normalise_levels(_parse_label_fixed(pred, [gold]))
            correct += parsed == _normalise_levels(gold)
    accuracy = 100.0 * correct / len(items)
    return _result(accuracy, None, {"accuracy": accuracy}, parsed=len(items))


# --------------------------------------------------------------------------------------------------
# Comma lists: Hashtag-multiple, NER
# --------------------------------------------------------------------------------------------------


def _comma_set(text: str) -> set[str]:
    text = _cut(_strip_cues(text), _LIST_CUT)
    return {part.strip() for part in text.split(",") if part.strip()}


def _micro_f1(tp: int, n_pred: int, n_gold: int) -> float:
    """Corpus micro-F1 = 2TP / (|P| + |G|); nothing predicted and nothing to find is a perfect 1."""
    if n_pred + n_gold == 0:
        return 1.0
    return 2.0 * tp / (n_pred + n_gold)


def _comma_list_f1(file, predictions, items, bug_compatible) -> dict:
    # Golds in this release contain no '<', '>', newline or marker, so both modes agree here.
    tp = n_pred = n_gold = 0
    for i, (pred, item) in enumerate(zip(predictions, items)):
        p, g = _comma_set(pred), _comma_set(_gold_str(file, item, i))
        tp, n_pred, n_gold = tp + len(p & g), n_pred + len(p), n_gold + len(g)
    f1 = 100.0 * _micro_f1(tp, n_pred, n_gold)
    precision = 100.0 * tp / n_pred if n_pred else 0.0
    recall = 100.0 * tp / n_gold if n_gold else 0.0
    return _result(f1, None, {"micro_f1": f1, "precision": precision, "recall": recall}, parsed=len(items))


# --------------------------------------------------------------------------------------------------
# QueryCorr-topic
# --------------------------------------------------------------------------------------------------

_TOPIC = re.compile(r"-1|0|1|2|3")


def _query_corr_topic(file, predictions, items, bug_compatible) -> dict:
    counts = {level: {"tp": 0, "fp": 0, "fn": 0} for level in TOPIC_LEVELS}
    parsed = 0
    for i, (pred, item) in enumerate(zip(predictions, items)):
        gold = _gold_str(file, item, i)
        if gold not in counts:
            raise RedoneError(f"{file} item {i}: answer {gold!r} is not one of {TOPIC_LEVELS}")
        match = _TOPIC.search(pred)
        if match is None:
            continue
        parsed += 1
        label = match.group(0)
        if label == gold:
            counts[gold]["tp"] += 1
        else:
            counts[gold]["fn"] += 1
            counts[label]["fp"] += 1
    per_level = {}
    for level, c in counts.items():
        seen = c["tp"] + c["fp"] + c["fn"]
        if seen or bug_compatible:
            per_level[level] = 2.0 * c["tp"] / (2 * c["tp"] + c["fp"] + c["fn"]) if seen else 0.0
    success = parsed / len(items)
    macro = 100.0 * float(np.mean(list(per_level.values()))) if per_level else 0.0
    metrics = {"macro_f1": macro, **{f"f1_level_{k}": 100.0 * v for k, v in per_level.items()}}
    return _result(macro * success, success, metrics, parsed=parsed)


# --------------------------------------------------------------------------------------------------
# List literals: MRC-simple, CHLW
# --------------------------------------------------------------------------------------------------

_FLAT_LIST = re.compile(r"\[[^\[\]]*\]", re.DOTALL)
_MAX_LIST_STARTS = 64  # bound the scan on pathological outputs full of '['


def _literal_str_list(span: str) -> list[str] | None:
    try:
        value = ast.literal_eval(span.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _official_list(text: str) -> list[str] | None:
    """Official: the first [...] span without nested brackets; no such span (or a bad one) = error."""
    match = _FLAT_LIST.search(text)
    return _literal_str_list(match.group(0)) if match else None


def _balanced_spans(text: str):
    """Yield balanced ``[...]`` spans in order of their '[', ignoring brackets inside quoted strings."""
    starts = [i for i, ch in enumerate(text) if ch == "["][:_MAX_LIST_STARTS]
    for start in starts:
        depth, quote, escaped = 0, None, False
        for j in range(start, len(text)):
            ch = text[j]
            if quote:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == quote:
                    quote = None
            elif ch in "'\"":
                quote = ch
            elif ch == "[":
                depth += 1
            elif ch == "]":
                depth -= 1
                if depth == 0:
                    yield text[start : j + 1]
                    break


def _fixed_list(text: str) -> list[str] | None:
    """Fixed: the first balanced span that is a list of str (so "['sad [Cry R]']" parses), else official."""
    for span in _balanced_spans(text):
        value = _literal_str_list(span)
        if value is not None:
            return value
    return _official_list(text)


def _parse_list(text: str, bug_compatible: bool) -> list[str] | None:
    return _official_list(text) if bug_compatible else _fixed_list(text)


def _chlw(file, predictions, items, bug_compatible) -> dict:
    tp = n_pred = n_gold = parsed = 0
    for i, (pred, item) in enumerate(zip(predictions, items)):
        gold = _gold_literal_list(file, item, i)
        words = _parse_list(pred, bug_compatible)
        if words is None:
            continue
        parsed += 1
        # An empty list stands for [""], so "nothing to highlight" answered with [] is a hit.
        p, g = set(words or [""]), set(gold or [""])
        tp, n_pred, n_gold = tp + len(p & g), n_pred + len(p), n_gold + len(g)
    success = parsed / len(items)
    f1 = 100.0 * _micro_f1(tp, n_pred, n_gold) if parsed else 0.0
    return _result(f1 * success, success, {"micro_f1": f1}, parsed=parsed)


# --------------------------------------------------------------------------------------------------
# MRC-simple
# --------------------------------------------------------------------------------------------------

_EMOJI_EXTRA = {0x200D, 0xFE0E, 0xFE0F, 0x20E3, 0xFFFD}


def _strip_emoji(text: str) -> str:
    """Drop emoji-like characters: Unicode "So" symbols, skin tones, ZWJ, variation selectors, keycap."""

    def is_emoji(ch: str) -> bool:
        cp = ord(ch)
        return unicodedata.category(ch) == "So" or cp in _EMOJI_EXTRA or 0x1F3FB <= cp <= 0x1F3FF

    return "".join(ch for ch in text if not is_emoji(ch))


def _jieba_tokens(text: str) -> list[str]:
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [tok for tok in jieba.lcut(text) if tok.strip()]


class _JiebaTokenizer:
    """The ``tokenize`` interface rouge-score expects, backed by jieba."""

    def tokenize(self, text: str) -> list[str]:
        return _jieba_tokens(text)


@lru_cache(maxsize=1)
def _bleu_metric():
    from sacrebleu.metrics import BLEU

    # Tokens are pre-split by jieba; 4-gram, no smoothing, no effective order = nltk sentence_bleu default.
    return BLEU(tokenize="none", smooth_method="none", effective_order=False)


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_JiebaTokenizer())


def _span_consistency(pred: str, gold: str) -> tuple[float, float, float, float]:
    """BLEU, ROUGE-1, ROUGE-2, ROUGE-L (fractions) of one TP pair after newline/emoji stripping."""
    hyp = _strip_emoji(pred.replace("\n", ""))
    ref = _strip_emoji(gold.replace("\n", ""))
    # corpus_score on one segment equals sentence BLEU and avoids sacrebleu's per-call warning.
    bleu = _bleu_metric().corpus_score([" ".join(_jieba_tokens(hyp))], [[" ".join(_jieba_tokens(ref))]])
    rouge = _rouge_scorer().score(ref, hyp)
    return bleu.score / 100.0, rouge["rouge1"].fmeasure, rouge["rouge2"].fmeasure, rouge["rougeL"].fmeasure


def _existence_f1(tp: int, fp: int, fn: int, tn: int, bug_compatible: bool) -> float:
    """F1 of "has an answer" decisions; all-true-negative is 1 in fixed mode, 0 officially."""
    if tp + fp + fn == 0:
        return 1.0 if (tn and not bug_compatible) else 0.0
    return 2.0 * tp / (2 * tp + fp + fn)


def _mrc_simple(file, predictions, items, bug_compatible) -> dict:
    status = {"tp": 0, "tn": 0, "fp": 0, "fn": 0}
    consistency = []
    parsed = 0
    for i, (pred, item) in enumerate(zip(predictions, items)):
        gold = "\n".join(_gold_span_list(file, item, i)).strip()
        spans = _parse_list(pred, bug_compatible)
        if spans is None:
            continue
        parsed += 1
        answer = "\n".join(spans).strip()
        key = ("t" if bool(answer) == bool(gold) else "f") + ("p" if answer else "n")
        status[key] += 1
        if key == "tp":
            consistency.append(_span_consistency(answer, gold))
    success = parsed / len(items)
    f1 = _existence_f1(status["tp"], status["fp"], status["fn"], status["tn"], bug_compatible)
    if consistency:
        bleu, r1, r2, rl = (100.0 * float(v) for v in np.mean(consistency, axis=0))
    else:
        # No TP pair: nothing agreed. Fixed mode: no gold span and no predicted span at all is perfect.
        nothing = not bug_compatible and status["tp"] + status["fp"] + status["fn"] == 0 and parsed
        bleu = r1 = r2 = rl = 100.0 if nothing else 0.0
    raw = {"existence_f1": 100.0 * f1, "bleu": bleu, "rouge1": r1, "rouge2": r2, "rougeL": rl}
    metrics = {**raw, **{f"success_{k}": v * success for k, v in raw.items()}, **status}
    score = float(np.mean([v * success for v in raw.values()]))
    return _result(score, success, metrics, parsed=parsed)


# --------------------------------------------------------------------------------------------------
# MRC-complex
# --------------------------------------------------------------------------------------------------

_RESULT = re.compile(r"(?<=<Result>).+?(?=</Result>)", re.DOTALL)
_OFFICIAL_PUNCT = set(":_`，。：？！()“”；’《》……·、,「」（）－～『』|")
# Official MRC-complex success ratio divides the error count by this constant, not by the item count.
_OFFICIAL_NUM_SAMPLES = 1000
# Official ``lstrip('```json')``: strips any run of these characters (a set, not a prefix).
_OFFICIAL_FENCE_CHARS = "`json"


def _parse_result(text: str, bug_compatible: bool) -> list[dict] | None:
    """Last <Result>...</Result> as a JSON list of {Option, Reason}, deduplicated by Option."""
    matches = list(_RESULT.finditer(text))
    if not matches:
        return None
    body = matches[-1].group(0).strip()
    if bug_compatible:
        body = body.lstrip(_OFFICIAL_FENCE_CHARS).rstrip("`")
    else:
        body = re.sub(r"\s*```$", "", re.sub(r"^```[A-Za-z]*\s*", "", body))
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, list):
        return None
    options: dict[str, str] = {}
    for entry in value:
        if not (isinstance(entry, dict) and isinstance(entry.get("Option"), str)):
            return None
        if not isinstance(entry.get("Reason"), str):
            return None
        options[entry["Option"]] = entry["Reason"]  # a repeated Option keeps its first place, last Reason
    return [{"Option": k, "Reason": v} for k, v in options.items()]


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _option_tokens(text: str, bug_compatible: bool) -> list[str]:
    """Lowercase, drop punctuation, one token per CJK char; Latin: one per word (official: per run)."""
    text = text.lower()
    if bug_compatible:
        text = "".join(ch for ch in text if ch not in _OFFICIAL_PUNCT)
    else:
        text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    tokens, buffer = [], ""
    for ch in text:
        boundary = not bug_compatible and ch.isspace()
        if _is_cjk(ch) or (bug_compatible and ch == "=") or boundary:
            if buffer:
                tokens.append(buffer)
            buffer = ""
            if not boundary:
                tokens.append(ch)
        else:
            buffer += ch
    if buffer:
        tokens.append(buffer)
    return tokens


def _lcs_f1(pred: list[str], gold: list[str]) -> float:
    """F1 of the longest common contiguous token run (the official "LCS")."""
    if not pred or not gold:
        return 0.0
    run = difflib.SequenceMatcher(None, pred, gold, autojunk=False).find_longest_match(
        0, len(pred), 0, len(gold)
    )
    if run.size == 0:
        return 0.0
    precision, recall = run.size / len(pred), run.size / len(gold)
    return 2 * precision * recall / (precision + recall)


def _option_scores(pred: list[dict], gold: list[dict], bug_compatible: bool) -> tuple[float, float]:
    """Per item: mean over predicted options of the best LCS-F1 / exact match against any gold option."""
    if not pred and not gold:
        return 1.0, 1.0
    if not pred or not gold:
        return 0.0, 0.0
    gold_tokens = [_option_tokens(g["Option"], bug_compatible) for g in gold]
    f1s, ems = [], []
    for option in pred:
        tokens = _option_tokens(option["Option"], bug_compatible)
        f1s.append(max(_lcs_f1(tokens, g) for g in gold_tokens))
        ems.append(float(any(tokens == g for g in gold_tokens)))
    return float(np.mean(f1s)), float(np.mean(ems))


def _mrc_complex(file, predictions, items, bug_compatible) -> dict:
    status = {"tp": 0, "tn": 0, "fp": 0, "fn": 0}
    option_f1, option_em = [], []
    parsed = 0
    for i, (pred, item) in enumerate(zip(predictions, items)):
        gold = _parse_result(_gold_str(file, item, i), bug_compatible=False)
        if gold is None:
            raise RedoneError(f"{file} item {i}: gold answer has no parseable <Result>[...]</Result>")
        answer = _parse_result(pred, bug_compatible)
        if answer is None:
            continue
        parsed += 1
        key = ("t" if bool(answer) == bool(gold) else "f") + ("p" if answer else "n")
        status[key] += 1
        f1, em = _option_scores(answer, gold, bug_compatible)
        option_f1.append(f1)
        option_em.append(em)
    if bug_compatible:
        success = 1.0 - (len(items) - parsed) / _OFFICIAL_NUM_SAMPLES
    else:
        success = parsed / len(items)
    raw = {
        "existence_f1": 100.0
        * _existence_f1(status["tp"], status["fp"], status["fn"], status["tn"], bug_compatible),
        "option_f1": 100.0 * float(np.mean(option_f1)) if option_f1 else 0.0,
        "option_em": 100.0 * float(np.mean(option_em)) if option_em else 0.0,
    }
    metrics = {**raw, **{f"success_{k}": v * success for k, v in raw.items()}, **status}
    score = float(np.mean([v * success for v in raw.values()]))
    return _result(score, success, metrics, parsed=parsed)


# --------------------------------------------------------------------------------------------------
# QueryGen
# --------------------------------------------------------------------------------------------------


def _anls(pred: str, gold: str) -> float:
    """1 - Levenshtein / max length (no threshold, as the SNS-Bench scorer); both empty = 1."""
    from rapidfuzz.distance import Levenshtein

    return float(Levenshtein.normalized_similarity(pred, gold))


def _embed(embedder, texts: list[str]) -> np.ndarray:
    vectors = np.asarray(embedder(texts), dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise RedoneError(f"embedder returned shape {vectors.shape}, expected ({len(texts)}, dim)")
    return vectors


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide((a * b).sum(axis=1), norms, out=np.zeros(len(a)), where=norms > 0)


def _embedder_name(embedder) -> str:
    return str(
        getattr(embedder, "name", None) or getattr(embedder, "__name__", None) or type(embedder).__name__
    )


def _query_gen(file, predictions, items, bug_compatible, embedder) -> dict:
    golds = [_gold_str(file, item, i) for i, item in enumerate(items)]
    first_lines = [_cut(pred, _LIST_CUT) for pred in predictions]
    anls_inputs = predictions if bug_compatible else first_lines
    anls = np.array([_anls(p, g) for p, g in zip(anls_inputs, golds)])
    metrics = {"anls": 100.0 * float(anls.mean())}
    if embedder is None:
        per_item = 100.0 * anls
        extra = {"querygen_mode": "anls-only", "embedder": None}
    else:
        cosine = _cosines(_embed(embedder, first_lines), _embed(embedder, golds))
        metrics["cosine"] = 100.0 * float(cosine.mean())
        per_item = (100.0 * cosine + 100.0 * anls) / 2.0
        extra = {"querygen_mode": "embedding+anls", "embedder": _embedder_name(embedder)}
    return {**_result(float(per_item.mean()), None, metrics, parsed=len(items)), **extra}


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def _result(score: float, success_ratio: float | None, metrics: dict, *, parsed: int) -> dict:
    return {"score": float(score), "success_ratio": success_ratio, "metrics": metrics, "parsed": parsed}


_SCORERS = {
    "Note-Taxonomy-single": _label_accuracy,
    "Note-Taxonomy-multiple": _taxonomy_multiple,
    "Note-Hashtag-single": _label_accuracy,
    "Note-Hashtag-multiple": _comma_list_f1,
    "Note-QueryCorr-topic": _query_corr_topic,
    "Note-QueryCorr-explain": _label_accuracy,
    "Note-MRC-simple": _mrc_simple,
    "Note-MRC-complex": _mrc_complex,
    "Note-NER": _comma_list_f1,
    "Note-Gender": _label_accuracy,
    "Note-CHLW": _chlw,
}


def gold_text(file: str, item: dict) -> str:
    """The gold answer in the exact output protocol the scorer parses: what a perfect model outputs.

    Labels, Yes/No, -1..3, comma lists and queries are the answer string itself; MRC-simple and CHLW are a
    Python list literal (``repr``); MRC-complex is the full tagged text ending in <Result>[...]</Result>.
    """
    file = _check_file(file)
    if file == "Note-MRC-simple":
        return repr(list(_gold_span_list(file, item)))
    if file == "Note-CHLW":
        return repr(_gold_literal_list(file, item))
    return _gold_str(file, item)


def score_file(
    file: str,
    predictions: list[str],
    items: list[dict],
    *,
    bug_compatible: bool = False,
    embedder: Embedder | None = None,
) -> dict:
    """Score one SNS-Bench file; see the module docstring for the rule per file and the two modes.

    Returns {"file", "task", "n", "score" (0-100), "success_ratio" (fraction, or None where the rule has
    no parse step), "metrics" (sub-metrics in points), "parsed", "mode"}; QueryGen adds "querygen_mode"
    ("embedding+anls" or "anls-only") and "embedder" (its name or None).
    """
    file = _check_file(file)
    predictions, items = list(predictions), list(items)
    if len(predictions) != len(items):
        raise RedoneError(f"{file}: {len(predictions)} predictions for {len(items)} items")
    if not items:
        raise RedoneError(f"{file}: no items to score")
    texts = [_as_text(file, i, p) for i, p in enumerate(predictions)]
    if file == "Note-QueryGen":
        result = _query_gen(file, texts, items, bug_compatible, embedder)
    else:
        result = _SCORERS[file](file, texts, items, bug_compatible)
    head = {"file": file, "task": TASK_OF_FILE[file], "n": len(items)}
    return {**head, **result, "mode": "bug_compatible" if bug_compatible else "fixed"}


def aggregate(file_results: dict[str, dict]) -> dict:
    """Per-task and overall SNS-Bench scores from ``score_file`` results keyed by file stem.

    A task with two files scores the mean of the two; the average is the mean over the tasks present.
    """
    scores: dict[str, float] = {}
    for file, result in file_results.items():
        stem = _check_file(file)
        if not isinstance(result, dict) or not isinstance(result.get("score"), int | float):
            raise RedoneError(f"aggregate: result for {file} has no numeric 'score'")
        scores[stem] = float(result["score"])
    tasks = {}
    for task in TASKS:
        present = [scores[f] for f in FILES_OF_TASK[task] if f in scores]
        if present:
            tasks[task] = float(np.mean(present))
    missing_tasks = [t for t in TASKS if t not in tasks]
    missing_files = [f for f in SNS_FILES if f not in scores]
    notes = [
        "A task with two files (single/multiple, topic/explain, simple/complex) scores the mean of its two "
        "file scores (the RedOne papers do not say how they combine them).",
        f"average = mean over the {len(tasks)} task(s) present of {len(TASKS)}.",
    ]
    partial = [t for t in tasks if any(f not in scores for f in FILES_OF_TASK[t])]
    if partial:
        notes.append(f"task(s) scored from one of their two files only: {', '.join(partial)}")
    modes = {r.get("mode") for r in file_results.values()} - {None}
    return {
        "tasks": tasks,
        "average": float(np.mean(list(tasks.values()))) if tasks else None,
        "n_tasks": len(tasks),
        "complete": not missing_files,
        "missing_tasks": missing_tasks,
        "missing_files": missing_files,
        "mode": modes.pop() if len(modes) == 1 else ("mixed" if modes else None),
        "notes": notes,
    }
