"""SNS-Bench scorers: all 12 files of the 8 tasks, file scores and per-item scores, pure Python, no model.

What is scored (rules from docs/SNS_BENCH.md):

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
| Note-QueryGen | per item (embedding cosine + ANLS) / 2, or ANLS alone without an embedder |

"Success ratio" = parsed / total: where a rule needs a parse, the metric is computed over the parsed
items only and then multiplied by it, so format compliance counts in the score.

Public API: ``score_file`` (one file's score, sub-metrics and success ratio), ``item_scores`` (one score
in [0, 1] per item, the RL reward), ``parsed_ok`` (does an output follow the file's protocol: the format
reward), ``parse_answer`` (the answer the scorer reads from an output: label, tag list, spans, options,
level, query; ``redone predict`` writes it), ``candidate_labels`` (an item's labels for that parse),
``gold_text`` (the perfect output), ``aggregate`` (8 task scores + average), and the tables
``SNS_FILES``, ``TASKS``, ``TASK_OF_FILE``.

Modes
-----
``mode="official"`` equals the SNS-Bench evaluators of the OpenCompass integration that the SNS-Bench
README runs (github.com/HC-Guo/SNS-Bench, opencompass/opencompass/datasets/sns_bench/*.py with the
eval_cfg of opencompass/opencompass/configs/datasets/sns_bench/, OpenCompass 0.4.2, commit fbe9840) on
every item, quirks included; the reported number per file is the one the README names (success-f1 for
CHLW, success-macro-f1 for QueryCorr-topic, the mean of the success-scaled sub-metrics for MRC). It is
tested against per-item and per-file scores recorded by running that code (tests/sns/fixtures/). It uses
the official libraries: nltk ``sentence_bleu`` (4-gram, uniform weights, no smoothing) on
``jieba.cut`` tokens (whitespace tokens included), the ``rouge`` package (sentences split at '.', n-grams
as sets) on space-joined jieba tokens, ``demoji`` 1.1.0 emoji removal; epsilons and ``round(., 4)``
exactly where the official code has them. Where it differs, and why:

* QueryGen embeddings: the official model is bge-large-en-v1.5, unavailable offline. The cosine comes
  from the ``embedder`` passed in (the bundled MiniLM, see ``redone.eval.embedding``) or, without one,
  the score is ANLS alone. Everything else about QueryGen is official (ANLS on the whole raw output, the
  embedded text = first line of the stripped output).
* The official code ``eval``s model output (CHLW, MRC-simple). We parse with ``ast.literal_eval`` and
  then apply the same steps (MRC-simple: ``'\\n'.join(value)``; CHLW: must be a list of str). On every
  literal (lists, tuples, strings, sets, dicts, numbers) the result is the same, including the official
  oddities (a bare quoted string without brackets parses, char by char; a tuple or dict joins its items
  or keys). Two differences: (1) an operator, call, name, comprehension or f-string inside the first
  bracket span (``['a' + 'b']``, ``[str(x)]``): eval may compute and parse it, we count a parse error;
  (2) a set literal of several strings: eval's set joins in an order that depends on the per-process
  string hash seed (not reproducible run to run), we join in written order. Checked on 14,000 variants
  of the shipped MRC-simple and CHLW golds (answer cues, explanations, code fences, stripped brackets,
  swapped quotes, truncation, tuples, sets, dicts): eval and the safe parse agree on all of them but
  the set order. tests/sns/fixtures records two expression cases with both results.
* Where the official evaluator raises instead of scoring, official mode scores and says so in
  ``result["notes"]``: a TP pair whose hypothesis is empty after emoji removal (``rouge`` raises "Hypothesis
  is empty", the official re-raises "Rouge Error") gets ROUGE 0; MRC-complex with no TP but both FP and
  FN (total F1 = 0/0, ZeroDivisionError) gets existence F1 0. Taxonomy-multiple: OpenCompass 0.4.2's
  ``BaseEvaluator.evaluate`` raises KeyError('subdivision') on EMEvaluator's details for these rows; the
  number is ``EMEvaluator.score``'s, which is what the file reports once that is fixed.

``mode="fixed"`` (the default) repairs the official quirks. Every correction:

* Taxonomy / Hashtag-single cut: the official pattern has a bare ``end`` alternative ("Trending" -> "Tr")
  and golds are never cut, so labels containing "end", "." or "," can never be matched. Fixed mode cuts
  only at newline, '.', ',', '<', '>' and the whole markers "endofresponse" / "im_end", and first checks
  whether the prediction *starts with* a known label (the gold or one of the item's candidates, longest
  first) followed by nothing or by a delimiter; if so that label is the parsed answer. So "Mr. Zhang's Old
  Amber" is matched whole, while "U.S." is never mistaken for the shorter candidate "U".
* Answer cues: official removes only "Answer:"; fixed also removes "答案：". Golds are compared stripped
  (official compares the raw gold string).
* Taxonomy-multiple normalisation: official = opencompass ``general_postprocess`` (cut at the first
  newline/'.'/',', delete non-word characters, drop articles, collapse spaces). Fixed mode does not cut
  again (the protected cut above already did) and turns non-word characters into spaces, so
  "A|B|C" == "A | B | C".
* Comma lists (Hashtag-multiple, NER): official keeps a whitespace-only segment ("A, , B") as an empty
  tag "" that counts in the F1 denominators; fixed drops it. Official rounds the F1 to 4 decimals and
  adds 1e-4 to denominators; fixed does not.
* List literals (MRC-simple, CHLW): official = first bracketed span with no nested brackets, so a gold span
  that itself contains "[" (emoji codes like "[Cry R]") can never be parsed; without such a span the
  whole output is eval'ed. Fixed mode scans each balanced ``[...]`` span (brackets inside quoted strings
  ignored) in order and takes the first that is a list of str, falling back to the official span; a
  bare string, tuple, set or dict is not a list and is a parse error.
* MRC-simple text metrics: official = nltk BLEU on jieba tokens *including whitespace tokens* (so every
  space is a matching "word": +0.1 to +3 points on English answers) and the ``rouge`` package (sentences
  split at '.', each n-gram counted once, 1e-8 in the F denominators); fixed = sacrebleu BLEU-4,
  unsmoothed, on jieba tokens without whitespace, and rouge-score ROUGE-1/2/L with a jieba tokenizer
  (n-gram counts with multiplicity, one LCS over the whole answer). Emoji: official ``demoji`` 1.1.0;
  fixed strips Unicode "So" symbols, skin tones, ZWJ, variation selectors and the keycap. Official
  compares the prediction joined by newlines and stripped against the gold spans joined by "" (not
  stripped); fixed joins both by newlines and strips both. Official existence F1 adds 1e-4 epsilons.
* Existence F1 when every item is a true negative: official 0, fixed 100 (nothing to find, nothing
  hallucinated). MRC-simple BLEU/ROUGE with no TP pair: 0, except fixed mode gives 100 when there are no
  gold spans and no predicted spans at all.
* MRC-complex: official tokenises a Latin option as one token (spaces included), removes only a fixed list
  of punctuation (in which "……" is one two-character entry, so "…" is kept), and strips a fence with
  ``lstrip('```json')`` (a character set: "json[...]" parses, "```JSON" does not); fixed uses CJK
  characters + whitespace-separated words, deletes every Unicode punctuation character and strips a real
  ```` ```lang ```` fence. Both use the official longest common *contiguous* token run as "LCS".
* Yes/No files: official also cuts at "endofresponse"; fixed matches a leading Yes/No as a protected label.
* QueryCorr-topic macro-F1: official averages all 5 levels (a level absent from gold and prediction counts
  as F1 0) with 1e-5 epsilons; fixed mode averages the levels present in gold or prediction.
* QueryGen: official ANLS uses the full raw prediction; fixed mode uses the first line (the text that is
  embedded), stripped.
* Fixed mode has no epsilons or rounding. In both modes every score and sub-metric is in points (0-100)
  and ``success_ratio`` a fraction.

``bug_compatible=True`` (the former flag, still accepted) now means ``mode="official"``. It used to be a
hybrid: the official parsing quirks, but our own BLEU/ROUGE, no epsilons or rounding, and the MRC-complex
success ratio of the old standalone ``code/`` scorer (errors divided by a hard-coded 1000, not by the
item count as the OpenCompass integration does; issue 17 saw 46.83 vs 55.97 on one file). That ``code/``
scorer was removed from the SNS-Bench repository; nothing reproduces it any more.

Measured effect: the same predictions scored three ways, fixed / official / the former hybrid, on the
demo's sample size (24 evenly spaced test items per file, QueryGen by ANLS, 8-task average):

* gold answers: 100.00 / 97.45 / 97.45 (official: Taxonomy-single 95.83 and Hashtag-single 91.67 by the
  cut, QueryCorr-topic 80.00 as level 0, absent from the sample, counts as F1 0, MRC-simple 91.67 by
  the bracket rule);
* the skill-free baseline (redone.eval.baseline): 32.74 / 32.39 / 32.39;
* model-like outputs (35% right, 15% right inside chat formatting, 15% partly right, 25% another item's
  answer, 10% cut off mid-answer): 64.92 / 62.79 / 63.32, the official-vs-hybrid gap from MRC-complex
  (64.72 / 64.72 / 73.75: three cut-off answers are 3/24 errors officially, 3/1000 in the hybrid) and
  MRC-simple (47.28 / 42.75 / 42.22: nltk/rouge vs sacrebleu/rouge-score); fixed-vs-official gaps from
  QueryCorr-topic (81.68 / 65.34), QueryGen (65.25 / 62.81) and the label cuts.

Per-item scores (``item_scores``, for RL rewards): the natural per-item form of each file metric, in
[0, 1]: accuracy files and Taxonomy-multiple 0/1; Hashtag-multiple, NER and CHLW per-item F1
(2|P∩G| / (|P|+|G|); CHLW reads [] as [""], so [] for [] is 1); QueryCorr-topic 0/1 on the exact level
(macro-F1 has no per-item form); MRC-simple the mean of (existence hit, BLEU, ROUGE-1, ROUGE-2, ROUGE-L) on
a TP pair, 1 on a TN, 0 on FP/FN; MRC-complex the mean of (existence hit, option F1, option EM), 1 on a TN,
0 on FP/FN; QueryGen (cosine + ANLS) / 2 or ANLS, the cosine clipped to [0, 1]. A parse failure is 0 in
every file. The file score is the plain mean of item scores (x100) for the accuracy files and QueryGen
(while no cosine is negative); for the F1 files and MRC it is not (corpus F1, success scaling, official
epsilons). In fixed mode an item's score is exactly the file score of that item scored alone, / 100.

Errors: ``RedoneError`` for an unknown file or mode, mismatched lengths, no items, a non-string
prediction, or a malformed gold answer (one line naming the file and item index).
"""

from __future__ import annotations

import ast
import difflib
import json
import logging
import re
import unicodedata
import warnings
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
MODES = ("fixed", "official")

Embedder = Callable[[list[str]], "np.ndarray"]


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _check_file(file: str) -> str:
    stem = file[:-5] if file.endswith(".json") else file
    if stem not in TASK_OF_FILE:
        raise RedoneError(f"unknown SNS-Bench file {file!r}; expected one of {', '.join(SNS_FILES)}")
    return stem


def _resolve_mode(mode: str | None, bug_compatible: bool = False) -> str:
    """``mode`` wins; the former ``bug_compatible=True`` flag means "official"; a contradiction raises."""
    if mode is None:
        return "official" if bug_compatible else "fixed"
    if mode not in MODES:
        raise RedoneError(f"unknown SNS-Bench scoring mode {mode!r}; expected one of {', '.join(MODES)}")
    if bug_compatible and mode != "official":
        raise RedoneError(f"bug_compatible=True means mode='official', but mode={mode!r} was given")
    return mode


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


def _gold_raw(file: str, item: dict, index: int | None = None) -> str:
    gold = _answer(file, item, index)
    if not isinstance(gold, str):
        raise RedoneError(f"{file} item {index}: 'answer' must be a string, got {type(gold).__name__}")
    return gold


def _gold_str(file: str, item: dict, index: int | None = None) -> str:
    return _gold_raw(file, item, index).strip()


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
# Cutting free text down to one label: Taxonomy-single, Hashtag-single, QueryCorr-explain, Gender
# --------------------------------------------------------------------------------------------------

_ANSWER_CUES = ("答案：", "Answer:")
_OFFICIAL_CUE = "Answer:"  # the OpenCompass postprocessors remove only this cue
# The official Taxonomy/Hashtag-single split. Read as regex alternatives it cuts at '<', '>', a bare
# "end" (the quirk), "im_end", "endofresponse", and any of newline, '.', ','.
_OFFICIAL_LABEL_CUT = re.compile(r"[\n.,]|<|endofresponse|>|<|end|>|<|im_end|>")
# The official Yes/No split (QueryCorr-explain, Gender): no bare "end", but "endofresponse".
_OFFICIAL_YESNO_CUT = re.compile(r"[\n.,]|<|endofresponse|>")
# Fixed mode: the same delimiters, with the end-of-turn markers only as whole words.
_FIXED_LABEL_CUT = re.compile(r"[\n.,<>]|endofresponse|im_end")
# Comma-list files and QueryGen: newline, '<', '>', "endofresponse".
_LIST_CUT = re.compile(r"\n|<|endofresponse|>")
# parsed_ok for Taxonomy-multiple: the first line, up to an end-of-turn marker.
_LINE_CUT = re.compile(r"[\n<>]|endofresponse|im_end")
_YES_NO_FILES = ("Note-QueryCorr-explain", "Note-Gender")


def _strip_cues(text: str) -> str:
    for cue in _ANSWER_CUES:
        text = text.replace(cue, "")
    return text.strip()


def _cut(text: str, pattern: re.Pattern) -> str:
    return pattern.split(text, maxsplit=1)[0].strip()


def _official_label(file: str, text: str) -> str:
    """The OpenCompass pred_postprocessor of the single-label files."""
    pattern = _OFFICIAL_YESNO_CUT if file in _YES_NO_FILES else _OFFICIAL_LABEL_CUT
    return _cut(text.replace(_OFFICIAL_CUE, "").strip(), pattern)


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


def _judge_label(file, predictions, items, mode, embedder=None) -> list[dict]:
    records = []
    for i, (pred, item) in enumerate(zip(predictions, items)):
        if mode == "official":
            # AccEvaluator compares str(prediction) with the raw reference string.
            correct = _official_label(file, pred) == _gold_raw(file, item, i)
        else:
            gold = _gold_str(file, item, i)
            correct = _parse_label_fixed(pred, [gold, *_split_candidates(item.get("candidates"))]) == gold
        records.append({"correct": bool(correct)})
    return records


def _file_accuracy(file, records, mode) -> dict:
    correct = sum(r["correct"] for r in records)
    accuracy = correct / len(records) * 100.0
    return _result(accuracy, None, {"accuracy": accuracy}, parsed=len(records))


def _item_correct(record) -> float:
    return 1.0 if record["correct"] else 0.0


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


def _judge_taxonomy_multiple(file, predictions, items, mode, embedder=None) -> list[dict]:
    records = []
    for i, (pred, item) in enumerate(zip(predictions, items)):
        if mode == "official":
            gold = _gold_raw(file, item, i)
            parsed = _general_postprocess(_official_label(file, pred))
            # EMEvaluator accepts the normalised or the raw reference.
            correct = parsed in (_general_postprocess(gold), gold)
        else:
            gold = _gold_str(file, item, i)
            correct = _normalise_levels(_parse_label_fixed(pred, [gold])) == _normalise_levels(gold)
        records.append({"correct": bool(correct)})
    return records


# --------------------------------------------------------------------------------------------------
# Comma lists: Hashtag-multiple, NER
# --------------------------------------------------------------------------------------------------


def _comma_list(text: str) -> list[str]:
    """Fixed mode: both cues removed, cut, split on ',', blank segments dropped (written order, no repeats)."""
    text = _cut(_strip_cues(text), _LIST_CUT)
    return list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def _comma_set(text: str) -> set[str]:
    return set(_comma_list(text))


def _official_comma_list(text: str) -> list[str]:
    """The official postprocessor (applied to prediction and gold): a segment of spaces becomes ""."""
    text = _LIST_CUT.split(text.replace(_OFFICIAL_CUE, "").strip(), maxsplit=1)[0]
    return list(dict.fromkeys(part.strip() for part in text.split(",") if part))


def _official_comma_set(text: str) -> set[str]:
    return set(_official_comma_list(text))


def _micro_f1(tp: int, n_pred: int, n_gold: int) -> float:
    """Corpus micro-F1 = 2TP / (|P| + |G|); nothing predicted and nothing to find is a perfect 1."""
    if n_pred + n_gold == 0:
        return 1.0
    return 2.0 * tp / (n_pred + n_gold)


def _judge_comma_list(file, predictions, items, mode, embedder=None) -> list[dict]:
    to_set = _official_comma_set if mode == "official" else _comma_set
    gold_of = _gold_raw if mode == "official" else _gold_str
    return [
        {"pred": to_set(pred), "gold": to_set(gold_of(file, item, i))}
        for i, (pred, item) in enumerate(zip(predictions, items))
    ]


def _set_counts(records) -> tuple[int, int, int]:
    tp = sum(len(r["pred"] & r["gold"]) for r in records if r["pred"] is not None)
    n_pred = sum(len(r["pred"]) for r in records if r["pred"] is not None)
    n_gold = sum(len(r["gold"]) for r in records if r["pred"] is not None)
    return tp, n_pred, n_gold


def _official_prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    """The official F1 / precision / recall fractions: +1e-4 in the denominators, rounded to 4 decimals."""
    f1 = round(tp * 2 / (n_pred + n_gold + 0.0001), 4)
    return f1, round(tp / (n_pred + 0.0001), 4), round(tp / (n_gold + 0.0001), 4)


def _file_comma_list(file, records, mode) -> dict:
    tp, n_pred, n_gold = _set_counts(records)
    if mode == "official":
        f1, precision, recall = (100.0 * v for v in _official_prf(tp, n_pred, n_gold))
    else:
        f1 = 100.0 * _micro_f1(tp, n_pred, n_gold)
        precision = 100.0 * tp / n_pred if n_pred else 0.0
        recall = 100.0 * tp / n_gold if n_gold else 0.0
    return _result(f1, None, {"micro_f1": f1, "precision": precision, "recall": recall}, parsed=len(records))


def _item_set_f1(record) -> float:
    if record["pred"] is None:
        return 0.0
    p, g = record["pred"], record["gold"]
    return _micro_f1(len(p & g), len(p), len(g))


# --------------------------------------------------------------------------------------------------
# QueryCorr-topic
# --------------------------------------------------------------------------------------------------

_TOPIC = re.compile(r"-1|0|1|2|3")


def _judge_topic(file, predictions, items, mode, embedder=None) -> list[dict]:
    records = []
    for i, (pred, item) in enumerate(zip(predictions, items)):
        gold = _gold_raw(file, item, i) if mode == "official" else _gold_str(file, item, i)
        if gold not in TOPIC_LEVELS:
            raise RedoneError(f"{file} item {i}: answer {gold!r} is not one of {TOPIC_LEVELS}")
        match = _TOPIC.search(pred)
        records.append({"gold": gold, "label": match.group(0) if match else None})
    return records


def _file_topic(file, records, mode) -> dict:
    counts = {level: {"tp": 0, "fp": 0, "fn": 0} for level in TOPIC_LEVELS}
    parsed = 0
    for r in records:
        if r["label"] is None:
            continue
        parsed += 1
        if r["label"] == r["gold"]:
            counts[r["gold"]]["tp"] += 1
        else:
            counts[r["gold"]]["fn"] += 1
            counts[r["label"]]["fp"] += 1
    success = parsed / len(records)
    if mode == "official":
        per_level = {}
        for level, c in counts.items():  # the official formula, in points, with its 1e-5 epsilons
            p = c["tp"] / (c["tp"] + c["fp"] + 1e-5) * 100
            r = c["tp"] / (c["tp"] + c["fn"] + 1e-5) * 100
            per_level[level] = 2 * p * r / (p + r + 1e-5)
        macro = float(np.mean(list(per_level.values())))
        score = macro * (1 - (len(records) - parsed) / len(records))
    else:
        per_level = {}
        for level, c in counts.items():
            if c["tp"] + c["fp"] + c["fn"]:
                per_level[level] = 100.0 * 2.0 * c["tp"] / (2 * c["tp"] + c["fp"] + c["fn"])
        macro = float(np.mean(list(per_level.values()))) if per_level else 0.0
        score = macro * success
    metrics = {"macro_f1": macro, **{f"f1_level_{k}": v for k, v in per_level.items()}}
    return _result(score, success, metrics, parsed=parsed)


def _item_topic(record) -> float:
    return 1.0 if record["label"] is not None and record["label"] == record["gold"] else 0.0


# --------------------------------------------------------------------------------------------------
# List literals: MRC-simple, CHLW
# --------------------------------------------------------------------------------------------------

_FLAT_LIST = re.compile(r"\[[^\[\]]*\]", re.DOTALL)
_MAX_LIST_STARTS = 64  # bound the scan on pathological outputs full of '['


def _literal(text: str):
    """``ast.literal_eval`` that reports failure as a sentinel (it never runs code)."""
    try:
        return ast.literal_eval(text)
    except Exception:  # noqa: BLE001 - any failure is a parse error, as the official bare except
        return _FAILED


_FAILED = object()


def _literal_str_list(span: str) -> list[str] | None:
    value = _literal(span.strip())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _official_list(text: str) -> list[str] | None:
    """Official CHLW parse: the first [...] span without nested brackets (the whole output if none) must
    literal-parse to a list of str. Without a flat span no list can parse, so that is an error."""
    match = _FLAT_LIST.search(text)
    return _literal_str_list(match.group(0) if match else text)


def _official_mrc_simple_text(text: str) -> str | None:
    """Official MRC-simple parse: ``'\\n'.join(eval(span or whole output)).strip()``, literals only.

    ``'\\n'.join`` accepts any iterable of str, so a bare string parses char by char, a tuple, set or dict
    joins its items / keys; anything else (numbers, bytes, non-str items) is an error, as officially.
    """
    items = _official_mrc_simple_items(text)
    return None if items is None else "\n".join(items).strip()


def _official_mrc_simple_items(text: str) -> list[str] | None:
    """The strings the official MRC-simple parse joins (a bare string: its characters), or None."""
    match = _FLAT_LIST.search(text)
    source = match.group(0) if match else text
    value = _literal(source)
    if value is _FAILED:
        return None
    if isinstance(value, set):
        value = _set_in_source_order(source, value)
    try:
        items = list(value)  # what '\n'.join iterates; a number or None is not iterable: an error
    except TypeError:
        return None
    return items if all(isinstance(v, str) for v in items) else None


def _set_in_source_order(source: str, value: set) -> list:
    """A set literal's elements in written order (first occurrence). eval's set iterates in an order that
    depends on the per-process string hash seed, so the official join order is not reproducible run to
    run; written order is the deterministic choice (identical for a one-element set)."""
    node = ast.parse(source.lstrip(" \t"), mode="eval").body
    ordered = []
    for element in node.elts:
        item = ast.literal_eval(element)
        if item not in ordered:
            ordered.append(item)
    return ordered if len(ordered) == len(value) else list(value)


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
    match = _FLAT_LIST.search(text)
    return _literal_str_list(match.group(0)) if match else None


def _parse_list(text: str, bug_compatible: bool = False) -> list[str] | None:
    """A list of str from the output: the official rule when ``bug_compatible`` (= official), else fixed."""
    return _official_list(text) if bug_compatible else _fixed_list(text)


def _judge_chlw(file, predictions, items, mode, embedder=None) -> list[dict]:
    records = []
    for i, (pred, item) in enumerate(zip(predictions, items)):
        gold = _gold_literal_list(file, item, i)
        words = _parse_list(pred, mode == "official")
        # An empty list stands for [""], so "nothing to highlight" answered with [] is a hit.
        records.append({"pred": None if words is None else set(words or [""]), "gold": set(gold or [""])})
    return records


def _file_chlw(file, records, mode) -> dict:
    parsed = sum(r["pred"] is not None for r in records)
    success = parsed / len(records)
    tp, n_pred, n_gold = _set_counts(records)
    if mode == "official":
        f1_fraction = _official_prf(tp, n_pred, n_gold)[0]
        success_pct = (1 - (len(records) - parsed) / len(records)) * 100
        return _result(success_pct * f1_fraction, success, {"micro_f1": f1_fraction * 100}, parsed=parsed)
    f1 = 100.0 * _micro_f1(tp, n_pred, n_gold) if parsed else 0.0
    return _result(f1 * success, success, {"micro_f1": f1}, parsed=parsed)


# --------------------------------------------------------------------------------------------------
# MRC-simple
# --------------------------------------------------------------------------------------------------

_EMOJI_EXTRA = {0x200D, 0xFE0E, 0xFE0F, 0x20E3, 0xFFFD}


def _strip_emoji(text: str) -> str:
    """Fixed mode: drop Unicode "So" symbols, skin tones, ZWJ, variation selectors, keycap, U+FFFD."""

    def is_emoji(ch: str) -> bool:
        cp = ord(ch)
        return unicodedata.category(ch) == "So" or cp in _EMOJI_EXTRA or 0x1F3FB <= cp <= 0x1F3FF

    return "".join(ch for ch in text if not is_emoji(ch))


@lru_cache(maxsize=1)
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def _jieba_tokens(text: str) -> list[str]:
    """Fixed mode: jieba tokens without whitespace tokens."""
    return [tok for tok in _jieba().lcut(text) if tok.strip()]


class _JiebaTokenizer:
    """The ``tokenize`` interface rouge-score expects, backed by jieba."""

    def tokenize(self, text: str) -> list[str]:
        return _jieba_tokens(text)


@lru_cache(maxsize=1)
def _bleu_metric():
    from sacrebleu.metrics import BLEU

    # Tokens are pre-split by jieba; 4-gram, no smoothing, no effective order.
    return BLEU(tokenize="none", smooth_method="none", effective_order=False)


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_JiebaTokenizer())


def _fixed_consistency(pred: str, gold: str) -> tuple[float, float, float, float]:
    """Fixed: BLEU, ROUGE-1, ROUGE-2, ROUGE-L (fractions) of one TP pair after newline/emoji stripping."""
    hyp = _strip_emoji(pred.replace("\n", ""))
    ref = _strip_emoji(gold.replace("\n", ""))
    # corpus_score on one segment equals sentence BLEU and avoids sacrebleu's per-call warning.
    bleu = _bleu_metric().corpus_score([" ".join(_jieba_tokens(hyp))], [[" ".join(_jieba_tokens(ref))]])
    rouge = _rouge_scorer().score(ref, hyp)
    return bleu.score / 100.0, rouge["rouge1"].fmeasure, rouge["rouge2"].fmeasure, rouge["rougeL"].fmeasure


@lru_cache(maxsize=1)
def _official_text_libs():
    """nltk sentence_bleu, a ``rouge.Rouge`` scorer and demoji: the official libraries (imported once)."""
    import demoji
    from nltk.translate.bleu_score import sentence_bleu
    from rouge import Rouge

    return sentence_bleu, Rouge(), demoji


def _official_consistency(pred: str, gold: str) -> tuple[tuple[float, float, float, float], bool]:
    """Official: ((BLEU, ROUGE-1, ROUGE-2, ROUGE-L), rouge_failed) of one TP pair.

    rouge_failed: the ``rouge`` package raised (an empty hypothesis after emoji removal, say), where the
    official evaluator stops with "Rouge Error"; we score that pair's ROUGE 0 instead.
    """
    sentence_bleu, rouge, demoji = _official_text_libs()
    cut = _jieba().cut

    def preprocess(text: str) -> str:
        return demoji.replace(text.replace("\n", "").replace("\ufffd", ""), "")

    hyp, ref = preprocess(pred), preprocess(gold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns on every zero n-gram count (unsmoothed BLEU)
        bleu = float(sentence_bleu([list(cut(ref))], list(cut(hyp))))
    try:
        scores = rouge.get_scores(" ".join(cut(hyp)), " ".join(cut(ref)))[0]
    except Exception:  # noqa: BLE001 - the official code turns any failure here into a crash
        return (bleu, 0.0, 0.0, 0.0), True
    return (bleu, scores["rouge-1"]["f"], scores["rouge-2"]["f"], scores["rouge-l"]["f"]), False


def _status(has_answer: bool, has_gold: bool) -> str:
    return ("t" if has_answer == has_gold else "f") + ("p" if has_answer else "n")


def _judge_mrc_simple(file, predictions, items, mode, embedder=None) -> list[dict]:
    records = []
    for i, (pred, item) in enumerate(zip(predictions, items)):
        spans = _gold_span_list(file, item, i)
        record = {"status": None, "consistency": None, "rouge_failed": False}
        if mode == "official":
            gold = "".join(spans)  # the official loader joins the spans with "" and does not strip
            answer = _official_mrc_simple_text(pred)
        else:
            gold = "\n".join(spans).strip()
            parsed = _fixed_list(pred)
            answer = None if parsed is None else "\n".join(parsed).strip()
        if answer is not None:
            record["status"] = _status(answer != "", gold != "")
            if record["status"] == "tp":
                if mode == "official":
                    record["consistency"], record["rouge_failed"] = _official_consistency(answer, gold)
                else:
                    record["consistency"] = _fixed_consistency(answer, gold)
        records.append(record)
    return records


def _status_counts(records) -> dict[str, int]:
    status = {"tp": 0, "tn": 0, "fp": 0, "fn": 0}
    for r in records:
        if r["status"] is not None:
            status[r["status"]] += 1
    return status


def _existence_f1(tp: int, fp: int, fn: int, tn: int) -> float:
    """Fixed: F1 of "has an answer" decisions; all-true-negative (nothing to find, none claimed) is 1."""
    if tp + fp + fn == 0:
        return 1.0 if tn else 0.0
    return 2.0 * tp / (2 * tp + fp + fn)


def _file_mrc_simple(file, records, mode) -> dict:
    n = len(records)
    status = _status_counts(records)
    parsed = sum(status.values())
    consistency = [r["consistency"] for r in records if r["consistency"] is not None]
    notes = []
    if mode == "official":
        success_pct = (1 - (n - parsed) / n) * 100
        tp, fp, fn = status["tp"], status["fp"], status["fn"]
        precision = tp / (tp + fp + 0.0001)
        recall = tp / (tp + fn + 0.0001)
        f1 = 2 * precision * recall / (precision + recall + 0.0001)
        columns = list(zip(*consistency)) if consistency else [[], [], [], []]
        means = [float(np.mean(c)) if len(c) else None for c in columns]
        raw = {"existence_f1": f1 * 100}
        success = {"existence_f1": success_pct * f1}
        for key, mean in zip(("bleu", "rouge1", "rouge2", "rougeL"), means):
            raw[key] = mean * 100 if mean is not None else 0
            success[key] = success_pct * mean if mean is not None else 0
        failed = sum(r["rouge_failed"] for r in records)
        if failed:
            notes.append(
                f"{failed} TP pair(s) where the official code raises 'Rouge Error' (empty hypothesis "
                "after emoji removal, or too deep a recursion): scored ROUGE 0 here"
            )
    else:
        fraction = parsed / n
        f1 = _existence_f1(status["tp"], status["fp"], status["fn"], status["tn"])
        if consistency:
            bleu, r1, r2, rl = (100.0 * float(v) for v in np.mean(consistency, axis=0))
        else:
            # No TP pair: nothing agreed. No gold span and no predicted span at all is perfect.
            nothing = status["tp"] + status["fp"] + status["fn"] == 0 and parsed
            bleu = r1 = r2 = rl = 100.0 if nothing else 0.0
        raw = {"existence_f1": 100.0 * f1, "bleu": bleu, "rouge1": r1, "rouge2": r2, "rougeL": rl}
        success = {k: v * fraction for k, v in raw.items()}
    metrics = {**raw, **{f"success_{k}": v for k, v in success.items()}, **status}
    score = float(np.mean(list(success.values())))
    return _result(score, parsed / n, metrics, parsed=parsed, notes=notes)


def _item_mrc_simple(record) -> float:
    if record["status"] == "tn":
        return 1.0
    if record["status"] != "tp":
        return 0.0  # parse failure, false positive or false negative
    return float(np.mean([1.0, *record["consistency"]]))


# --------------------------------------------------------------------------------------------------
# MRC-complex
# --------------------------------------------------------------------------------------------------

_RESULT = re.compile(r"(?<=<Result>).+?(?=</Result>)", re.DOTALL)
# The official _normalize list. It also holds "……" as one two-character entry, which can never equal a
# single character, so a lone "…" is kept.
_OFFICIAL_PUNCT = set(":_`，。：？！()“”；’《》·、,「」（）－～『』|")
# Official ``lstrip('```json')``: strips any run of these characters (a set, not a prefix).
_OFFICIAL_FENCE_CHARS = "`json"
# The CJK blocks of the official _tokenize_chars (BERT's list).
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _parse_result(text: str, bug_compatible: bool = False) -> list[dict] | None:
    """Last <Result>...</Result> as a JSON list of {Option, Reason}, deduplicated by Option.

    ``bug_compatible`` (= official) strips a fence the official way (a character set).
    """
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
    return any(low <= cp <= high for low, high in _CJK_RANGES)


def _option_tokens(text: str, bug_compatible: bool = False) -> list[str]:
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


def _option_scores(pred: list[dict], gold: list[dict], bug_compatible: bool = False) -> tuple[float, float]:
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


def _judge_mrc_complex(file, predictions, items, mode, embedder=None) -> list[dict]:
    official = mode == "official"
    records = []
    for i, (pred, item) in enumerate(zip(predictions, items)):
        gold = _parse_result(_gold_str(file, item, i), bug_compatible=False)
        if gold is None:
            raise RedoneError(f"{file} item {i}: gold answer has no parseable <Result>[...]</Result>")
        answer = _parse_result(pred, official)
        record = {"status": None, "option_f1": 0.0, "option_em": 0.0}
        if answer is not None:
            record["status"] = _status(bool(answer), bool(gold))
            record["option_f1"], record["option_em"] = _option_scores(answer, gold, official)
        records.append(record)
    return records


def _file_mrc_complex(file, records, mode) -> dict:
    n = len(records)
    status = _status_counts(records)
    parsed = sum(status.values())
    option_f1 = [r["option_f1"] for r in records if r["status"] is not None]
    option_em = [r["option_em"] for r in records if r["status"] is not None]
    notes = []
    if mode == "official":
        success_pct = (1 - (n - parsed) / n) * 100
        tp, fp, fn = status["tp"], status["fp"], status["fn"]
        precision = tp / (tp + fp) if tp + fp else -1
        recall = tp / (tp + fn) if tp + fn else -1
        try:
            f1 = 2 * precision * recall / (precision + recall)
        except ZeroDivisionError:
            f1 = 0.0
            notes.append(
                "no TP but both FP and FN: the official total F1 is 0/0 (ZeroDivisionError); "
                "existence F1 scored 0 here"
            )
        raw = {
            "existence_f1": f1 * 100 if f1 > 0 else 0,
            "option_f1": np.mean(option_f1) * 100 if option_f1 else 0,
            "option_em": np.mean(option_em) * 100 if option_em else 0,
        }
        success = {
            "existence_f1": success_pct * f1 if f1 > 0 else 0,
            "option_f1": success_pct * np.mean(option_f1) if option_f1 else 0,
            "option_em": success_pct * np.mean(option_em) if option_em else 0,
        }
        raw, success = ({k: float(v) for k, v in d.items()} for d in (raw, success))
    else:
        fraction = parsed / n
        raw = {
            "existence_f1": 100.0 * _existence_f1(status["tp"], status["fp"], status["fn"], status["tn"]),
            "option_f1": 100.0 * float(np.mean(option_f1)) if option_f1 else 0.0,
            "option_em": 100.0 * float(np.mean(option_em)) if option_em else 0.0,
        }
        success = {k: v * fraction for k, v in raw.items()}
    metrics = {**raw, **{f"success_{k}": v for k, v in success.items()}, **status}
    score = float(np.mean(list(success.values())))
    return _result(score, parsed / n, metrics, parsed=parsed, notes=notes)


def _item_mrc_complex(record) -> float:
    if record["status"] is None:
        return 0.0
    hit = 1.0 if record["status"] in ("tp", "tn") else 0.0
    return float(np.mean([hit, record["option_f1"], record["option_em"]]))


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


def _judge_query_gen(file, predictions, items, mode, embedder=None) -> list[dict]:
    if mode == "official":
        golds = [_gold_raw(file, item, i) for i, item in enumerate(items)]
        # Embedded: the first line of the stripped output (not stripped again); ANLS: the raw output.
        embedded = [_LIST_CUT.split(pred.strip(), maxsplit=1)[0] for pred in predictions]
        anls_inputs = predictions
    else:
        golds = [_gold_str(file, item, i) for i, item in enumerate(items)]
        embedded = anls_inputs = [_cut(pred, _LIST_CUT) for pred in predictions]
    anls = [_anls(p, g) for p, g in zip(anls_inputs, golds)]
    if embedder is None:
        return [{"anls": a, "cos": None} for a in anls]
    cosine = _cosines(_embed(embedder, embedded), _embed(embedder, golds))
    return [{"anls": a, "cos": float(c)} for a, c in zip(anls, cosine)]


def _file_query_gen(file, records, mode, embedder=None) -> dict:
    anls = np.array([r["anls"] for r in records])
    metrics = {"anls": 100.0 * float(anls.mean())}
    if embedder is None:
        per_item = 100.0 * anls
        extra = {"querygen_mode": "anls-only", "embedder": None}
    else:
        cosine = np.array([r["cos"] for r in records])
        metrics["cosine"] = 100.0 * float(cosine.mean())
        per_item = (100.0 * cosine + 100.0 * anls) / 2.0
        extra = {"querygen_mode": "embedding+anls", "embedder": _embedder_name(embedder)}
    return {**_result(float(per_item.mean()), None, metrics, parsed=len(records)), **extra}


def _item_query_gen(record) -> float:
    if record["cos"] is None:
        return record["anls"]
    # Clipped: a negative cosine (possible with real embedders) would push the reward below 0.
    return (min(max(record["cos"], 0.0), 1.0) + record["anls"]) / 2.0


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def _result(score: float, success_ratio: float | None, metrics: dict, *, parsed: int, notes=()) -> dict:
    out = {"score": float(score), "success_ratio": success_ratio, "metrics": metrics, "parsed": parsed}
    if notes:
        out["notes"] = list(notes)
    return out


# file -> (per-item judge, file metric from the records, per-item score from one record)
_KINDS = {
    "Note-Taxonomy-single": (_judge_label, _file_accuracy, _item_correct),
    "Note-Taxonomy-multiple": (_judge_taxonomy_multiple, _file_accuracy, _item_correct),
    "Note-Hashtag-single": (_judge_label, _file_accuracy, _item_correct),
    "Note-Hashtag-multiple": (_judge_comma_list, _file_comma_list, _item_set_f1),
    "Note-QueryCorr-topic": (_judge_topic, _file_topic, _item_topic),
    "Note-QueryCorr-explain": (_judge_label, _file_accuracy, _item_correct),
    "Note-MRC-simple": (_judge_mrc_simple, _file_mrc_simple, _item_mrc_simple),
    "Note-MRC-complex": (_judge_mrc_complex, _file_mrc_complex, _item_mrc_complex),
    "Note-NER": (_judge_comma_list, _file_comma_list, _item_set_f1),
    "Note-Gender": (_judge_label, _file_accuracy, _item_correct),
    "Note-CHLW": (_judge_chlw, _file_chlw, _item_set_f1),
    "Note-QueryGen": (_judge_query_gen, _file_query_gen, _item_query_gen),
}


def _judge(file: str, predictions, items, mode: str, embedder) -> tuple[str, list[dict]]:
    file = _check_file(file)
    predictions, items = list(predictions), list(items)
    if len(predictions) != len(items):
        raise RedoneError(f"{file}: {len(predictions)} predictions for {len(items)} items")
    if not items:
        raise RedoneError(f"{file}: no items to score")
    texts = [_as_text(file, i, p) for i, p in enumerate(predictions)]
    return file, _KINDS[file][0](file, texts, items, mode, embedder)


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
    mode: str | None = None,
) -> dict:
    """Score one SNS-Bench file; see the module docstring for the rule per file and the modes.

    ``mode``: "fixed" (default) or "official"; ``bug_compatible=True`` is the former spelling of
    "official". Returns {"file", "task", "n", "score" (0-100), "success_ratio" (fraction, or None where the
    rule has no parse step), "metrics" (sub-metrics in points), "parsed", "mode"}; QueryGen adds
    "querygen_mode" ("embedding+anls" or "anls-only") and "embedder" (its name or None); "notes" lists
    the places where the official code would have raised instead of scoring (official mode only).
    """
    mode = _resolve_mode(mode, bug_compatible)
    file, records = _judge(file, predictions, items, mode, embedder)
    if file == "Note-QueryGen":
        result = _file_query_gen(file, records, mode, embedder)
    else:
        result = _KINDS[file][1](file, records, mode)
    head = {"file": file, "task": TASK_OF_FILE[file], "n": len(records)}
    return {**head, **result, "mode": mode}


def item_scores(
    file: str,
    predictions: list[str],
    items: list[dict],
    mode: str = "fixed",
    embedder: Embedder | None = None,
) -> list[float]:
    """One score in [0, 1] per item: the per-item form of the file metric (module docstring), for rewards.

    Parse failures score 0. ``mode`` as in ``score_file``; QueryGen uses the embedder's cosine when given.
    """
    mode = _resolve_mode(mode)
    file, records = _judge(file, predictions, items, mode, embedder)
    item_fn = _KINDS[file][2]
    return [min(max(float(item_fn(r)), 0.0), 1.0) for r in records]


def parsed_ok(file: str, prediction: str | None, mode: str = "fixed") -> bool:
    """Whether an output follows the file's output protocol (the format reward), without its gold.

    Labels: a non-empty label after the cut; Taxonomy-multiple: three non-empty levels joined by '|';
    comma lists: at least one non-empty tag; QueryCorr-topic: a level -1..3 appears; Yes/No files: exactly
    "Yes" or "No" after the cut; MRC-simple / CHLW: the mode's list parse succeeds; MRC-complex: a
    parseable <Result> JSON list; QueryGen: a non-empty first line.
    """
    file = _check_file(file)
    mode = _resolve_mode(mode)
    text = _as_text(file, 0, prediction)
    official = mode == "official"
    if file == "Note-Taxonomy-multiple":
        # The first line, not the label cut: a level may itself contain ',' or '.' ("Kitchen, Dining").
        levels = _cut(text.replace(_OFFICIAL_CUE, "") if official else _strip_cues(text), _LINE_CUT).split(
            "|"
        )
        return len(levels) == 3 and all(level.strip() for level in levels)
    if file in ("Note-Taxonomy-single", "Note-Hashtag-single"):
        return bool(_official_label(file, text) if official else _cut(_strip_cues(text), _FIXED_LABEL_CUT))
    if file in _YES_NO_FILES:
        label = _official_label(file, text) if official else _cut(_strip_cues(text), _FIXED_LABEL_CUT)
        return label in ("Yes", "No")
    if file in ("Note-Hashtag-multiple", "Note-NER"):
        return any((_official_comma_set if official else _comma_set)(text) - {""})
    if file == "Note-QueryCorr-topic":
        return _TOPIC.search(text) is not None
    if file == "Note-MRC-simple":
        return (_official_mrc_simple_text(text) if official else _fixed_list(text)) is not None
    if file == "Note-CHLW":
        return _parse_list(text, official) is not None
    if file == "Note-MRC-complex":
        return _parse_result(text, official) is not None
    first = _LIST_CUT.split(text.strip(), maxsplit=1)[0] if official else _cut(text, _LIST_CUT)
    return bool(first.strip())


def candidate_labels(item: dict) -> list[str]:
    """The labels an item offers (its ``candidates``; Taxonomy-multiple: none), for ``parse_answer``."""
    return _split_candidates(item.get("candidates")) if isinstance(item, dict) else []


def parse_answer(file: str, text: str | None, mode: str = "fixed", *, labels: Sequence[str] = ()) -> tuple:
    """``(parsed answer, ok)``: what the file's scorer reads from an output, and ``parsed_ok``'s verdict.

    Built on the scorers' own parsing steps, so the value is what ``score_file`` compares with the gold:

    * Taxonomy-single, Hashtag-single, QueryCorr-explain, Gender: the label string after the cut (fixed
      mode: a known label the output starts with wins over the cut; pass the item's candidates as
      ``labels``, see ``candidate_labels``; the scorer adds the gold to them);
    * Taxonomy-multiple: the list of levels of that label string split at '|' (fixed mode compares
      them joined and normalised; official mode normalises with ``general_postprocess``);
    * Hashtag-multiple, NER: the list of tags / entities in written order without repeats (the scorer
      uses them as a set);
    * QueryCorr-topic: the level ``"-1"`` .. ``"3"``, or None;
    * MRC-simple: the list of answer spans (official mode: the strings its ``'\\n'.join`` joins), or None;
    * MRC-complex: the ``[{"Option", "Reason"}, ...]`` list of the last ``<Result>``, or None;
    * CHLW: the list of highlight words, or None (the scorer reads ``[]`` as ``[""]``);
    * QueryGen: the query (the first line, the text that is embedded).

    ``ok`` is ``parsed_ok(file, text, mode)``: the output follows the file's protocol.
    """
    file = _check_file(file)
    mode = _resolve_mode(mode)
    text = _as_text(file, 0, text)
    official = mode == "official"
    ok = parsed_ok(file, text, mode)
    if file in ("Note-Taxonomy-single", "Note-Hashtag-single", *_YES_NO_FILES):
        return (_official_label(file, text) if official else _parse_label_fixed(text, list(labels))), ok
    if file == "Note-Taxonomy-multiple":
        read = _official_label(file, text) if official else _parse_label_fixed(text, list(labels))
        return [level.strip() for level in read.split("|")], ok
    if file in ("Note-Hashtag-multiple", "Note-NER"):
        return (_official_comma_list if official else _comma_list)(text), ok
    if file == "Note-QueryCorr-topic":
        match = _TOPIC.search(text)
        return (match.group(0) if match else None), ok
    if file == "Note-MRC-simple":
        return (_official_mrc_simple_items(text) if official else _fixed_list(text)), ok
    if file == "Note-CHLW":
        return _parse_list(text, official), ok
    if file == "Note-MRC-complex":
        return _parse_result(text, official), ok
    return (_LIST_CUT.split(text.strip(), maxsplit=1)[0] if official else _cut(text, _LIST_CUT)), ok


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
