"""Verifiable rewards for the rl stage: the SNS-Bench metrics themselves, per item, in [0, 1].

Built-in reward functions (named in ``rl.rewards``)
- ``task``: the metric of the prompt's task, on one item.
  * SNS-Bench files (tasks with a ``scoring_file``): the project's per-item scorer
    (``redone.sns.scoring.item_scores``, fixed mode) on the single item: label tasks (Taxonomy,
    Hashtag-single, QueryCorr, Gender) 0 or 1; the set-valued tasks (Hashtag-multiple, NER, CHLW) the
    item's F1; MRC-simple the mean of (existence hit, BLEU-4, ROUGE-1/2/L); MRC-complex the mean of
    (existence hit, option LCS-F1, option EM); QueryGen ANLS (no embedder during training). The gold
    answer scores 1 on every item of the shipped test split (tested). The fixed mode is used because
    the official quirks would pay nothing for some correct answers (e.g. labels containing "end").
  * SNS-TransBench directions: sentence-level chrF++ (sacrebleu ``CHRF(word_order=2)``) / 100.
  * Any other registered task (a user's YAML task): exact match of the stripped answer with the gold.
- ``format``: 1 when the answer parses in the task's output protocol (``redone.sns.scoring.parsed_ok``:
  a non-empty label, Yes/No, three '|'-joined levels, a level -1..3, a Python list literal, a
  ``<Result>`` JSON list, a non-empty first line for QueryGen), else 0. TransBench: a non-empty answer
  in the target language's script. Other tasks: a non-empty answer.
- User functions ``"module:function"``, imported (never ``eval``-ed) only because the config names
  them. Signature::

      def my_reward(completion: str, item: dict, task: str) -> float   # in [0, 1]

  ``completion`` is the decoded answer (special tokens and the end-of-turn token removed), ``item`` the
  task record (with its gold answer), ``task`` the task name (e.g. "Note-Gender", "TransBench-zh2en").

Model text is only ever parsed (regexes, ``json.loads``, ``ast.literal_eval`` of list literals inside the
scorer), never evaluated.

Errors (``RedoneError``, one line): an unknown built-in name (did-you-mean), a ``module:function`` that
does not import or does not exist (did-you-mean over the module's functions), a reward function that
raises, or returns something that is not a number, NaN, or a value outside [0, 1]; the message names the
function and the item (task, index).
"""

from __future__ import annotations

import difflib
import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from redone.errors import RedoneError
from redone.sns import scoring
from redone.sns import tasks as sns_tasks

RewardFunction = Callable[[str, dict, str], float]
BUILTIN_REWARDS = ("task", "format")


# --------------------------------------------------------------------------------------------------
# The per-item scorer (the one place that reaches into redone.sns.scoring)
# --------------------------------------------------------------------------------------------------


def item_score(file: str, prediction: str, item: dict) -> float:
    """Score in [0, 1] of one prediction on one SNS-Bench item (fixed mode, no embedder)."""
    return float(scoring.item_scores(file, [prediction], [item], mode="fixed")[0])


def parsed_ok(file: str, prediction: str) -> bool:
    """Does the prediction parse in the file's output protocol (fixed mode)?"""
    return bool(scoring.parsed_ok(file, prediction, mode="fixed"))


# --------------------------------------------------------------------------------------------------
# Built-in rewards
# --------------------------------------------------------------------------------------------------


def _is_translation(task: str) -> bool:
    return task.startswith("TransBench-")


@lru_cache(maxsize=1)
def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF(word_order=2)


def chrf_reward(completion: str, item: dict, task: str) -> float:
    """Sentence-level chrF++ of a translation against the item's reference, in [0, 1]."""
    from redone.sns.transbench import gold_text

    return _chrf().sentence_score(completion or "", [gold_text(item)]).score / 100.0


def task_reward(completion: str, item: dict, task: str) -> float:
    """The task's own metric on one item (see the module docstring)."""
    if _is_translation(task):
        return chrf_reward(completion, item, task)
    spec = sns_tasks.get_task(task)
    if spec.scoring_file is not None:
        return item_score(spec.scoring_file, completion, item)
    gold = sns_tasks.answer_text(spec, item)
    return float((completion or "").strip() == gold)


def _cjk_share(text: str) -> float:
    """Share of CJK ideographs among the letters of a text (0 when it has none)."""
    letters = [ch for ch in text if ch.isalpha()]
    return sum(0x3400 <= ord(ch) <= 0x9FFF or 0xF900 <= ord(ch) <= 0xFAFF for ch in letters) / len(letters) \
        if letters else 0.0


def format_reward(completion: str, item: dict, task: str) -> float:
    """1.0 when the answer is well-formed for its task, else 0.0."""
    text = (completion or "").strip()
    if _is_translation(task):
        if not text:
            return 0.0
        wants_chinese = task.endswith("2zh")
        return float(_cjk_share(text) >= 0.5 if wants_chinese else _cjk_share(text) < 0.5)
    spec = sns_tasks.get_task(task)
    if spec.scoring_file is not None:
        return float(parsed_ok(spec.scoring_file, completion or ""))
    return float(bool(text))


_BUILTINS: dict[str, RewardFunction] = {"task": task_reward, "format": format_reward}


# --------------------------------------------------------------------------------------------------
# Resolving names and scoring a batch
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reward:
    name: str  # as written in rl.rewards
    fn: RewardFunction
    weight: float


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    if close:
        return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    return f" (known: {', '.join(choices)})"


def resolve_reward(name: str, key: str = "rl.rewards") -> RewardFunction:
    """A built-in reward by name, or a user function ``module:function`` imported by its module path."""
    if ":" not in name:
        if name not in _BUILTINS:
            raise RedoneError(f"{key}: unknown reward {name!r}{_did_you_mean(name, list(_BUILTINS))} "
                              "(or name a function as module:function)")
        return _BUILTINS[name]
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RedoneError(f"{key}: cannot import module {module_name!r} of reward {name!r} ({err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        functions = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise RedoneError(f"{key}: module {module_name!r} has no function {attr!r}"
                          f"{_did_you_mean(attr, functions) if functions else ''}")
    return fn


def resolve_rewards(names: Sequence[str], weights: Sequence[float] = ()) -> list[Reward]:
    """``rl.rewards`` + ``rl.reward_weights`` (empty = 1 each) -> the reward functions to sum."""
    if not names:
        raise RedoneError("rl.rewards: at least one reward function is required")
    if weights and len(weights) != len(names):
        raise RedoneError(f"rl.reward_weights: {len(weights)} weights for {len(names)} rewards")
    weights = list(weights) or [1.0] * len(names)
    return [Reward(name, resolve_reward(name, f"rl.rewards[{i}]"), float(w))
            for i, (name, w) in enumerate(zip(names, weights))]


def checked_value(reward: Reward, value, task: str, index: int) -> float:
    """A reward's value as a float in [0, 1], or a one-line error naming the function and the item."""
    where = f"reward {reward.name!r} on item ({task}, {index})"
    try:
        if isinstance(value, str | bytes):  # float("1") works, but a string is a bug in the function
            raise TypeError
        value = float(value)
    except (TypeError, ValueError):
        raise RedoneError(f"{where} returned {type(value).__name__}, expected a float in [0, 1]") from None
    if math.isnan(value):
        raise RedoneError(f"{where} returned NaN")
    if not 0.0 <= value <= 1.0:
        raise RedoneError(f"{where} returned {value}, outside [0, 1]")
    return value


def score(rewards: Sequence[Reward], completion: str, item: dict, task: str, index: int) -> list[float]:
    """Each reward's value for one completion (unweighted), checked."""
    values = []
    for reward in rewards:
        try:
            raw = reward.fn(completion, item, task)
        except RedoneError:
            raise
        except Exception as err:  # a user function's bug: name it and the item, in one line
            message = (str(err).splitlines() or [""])[0]
            raise RedoneError(f"reward {reward.name!r} raised {type(err).__name__} on item ({task}, {index}): "
                              f"{message}") from None
        values.append(checked_value(reward, raw, task, index))
    return values
