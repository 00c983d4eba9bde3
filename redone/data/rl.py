"""RL's data path: task sources -> prompts (chat template, token ids, answer budget) -> train/held-out split
-> mixture -> a resumable prompt drawer.

The rl stage trains on prompts, not answers: each prompt keeps its item (the gold answer the reward
reads) and its task (which reward and which answer budget apply). Completions are sampled during
training (``redone.train.rl``).

Components (one per task file / direction / user file; each is a mixture component and a metric tag)
- ``sns_bench`` folder (optionally ``tasks: [...]``): one component per ``Note-*.json`` file, task = file stem.
- ``transbench`` JSON: one component per direction (TransBench-zh2en, TransBench-en2zh).
- ``json`` / ``jsonl`` file of task records with ``task:`` (a registered task name, or a YAML task file
  that is registered on the spot): one component named after the source. A JSON file named after a
  task (``Note-Gender.json``, a TransBench file) needs no ``task:``.
Prompts come from the same builder as SFT and evaluation (``redone.sns.tasks.prompt_messages``, with
``data.prompt_style`` -- redone, official or mixed per item as in SFT -- and ``data.max_prompt_chars``), rendered with the tokenizer's chat template
(``add_generation_prompt``) and tokenized exactly as ``redone.eval.generate`` does, so the policy is
trained on the prompts it is evaluated on. A prompt's answer budget is its task's ``max_new_tokens``,
capped by ``rl.max_new_tokens``; a prompt whose tokens plus budget exceed ``data.seq_len`` is dropped
(counted) or refused (``data.overlong: error``).

Decontamination (``data.decontam``, on by default against the SNS-Bench and TransBench test sets, the
rules of SFT's): an item sharing an n-gram with an eval set is dropped before its prompt is built,
counted per component (``dropped_decontaminated``, ``decontaminated_by``) with the eval items affected.

``data.eval_holdout`` prompts per component are held out by a seeded permutation (never sampled for
training) for the greedy held-out reward. Mixing: ratio (a source's weight split over its components by
prompt count^(1/T)) or temperature (p ~ n^(1/T) over components), by prompt counts. ``PromptDrawer`` hands
out prompts in mixture order; its state is the mixture sampler's few integers (exact O(1) resume).

Errors: ``DataError`` for unreadable or malformed records (file:line or file:index), a json/jsonl source
without a ``task:``, a source format that has no verifiable answers (chat, hh_rlhf, preference, text),
an over-long prompt under ``data.overlong: error``, a component left empty; ``RedoneError`` for an
unknown task name (did-you-mean).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from redone.config.schema import RLConfig, RLSource
from redone.data.chat import render
from redone.data.decontam import screen_counted
from redone.data.mixture import MixtureSampler, mixture_probs, split_source_weights
from redone.data.sft import item_styles, item_text
from redone.data.sources import detect_format, read_records, source_digest, source_name
from redone.data.stage_data import StageData
from redone.errors import DataError
from redone.sns import tasks as sns_tasks

# Formats whose records carry no gold answer a reward could check.
NO_ANSWER_FORMATS = ("text", "chat", "hh_rlhf", "preference")


@dataclass
class Prompt:
    """One training prompt: what is sampled from, and what the reward needs."""

    task: str  # registered task name (reward, budget, format rules)
    component: int  # mixture component (metric tag) index
    index: int  # the item's index in its source file: errors name (task, index)
    item: dict  # the record, with its gold answer
    ids: list[int]  # chat-template prompt, tokenized, ending where the answer starts
    budget: int  # max new tokens of the answer


@dataclass
class RawComponent:
    name: str
    task: str | None  # None: per item (TransBench directions are split before this)
    source: int
    items: list[tuple[int, dict, str]] = field(default_factory=list)  # (index in file, record, file:line|index)
    where: str = ""  # file path for error messages


class PromptDrawer:
    """Prompts in mixture order; the state is the sampler's (O(1) exact resume)."""

    def __init__(self, prompts: list[list[Prompt]], sampler: MixtureSampler):
        self.prompts = prompts
        self.sampler = sampler

    def next(self) -> Prompt:
        component, index = self.sampler.next()
        return self.prompts[component][index]

    def draw_counts(self, n: int) -> list[int]:
        """Prompts per component over the next ``n`` draws (moves the drawer: use a fresh one)."""
        counts = [0] * len(self.prompts)
        for _ in range(n):
            counts[self.next().component] += 1
        return counts

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])


@dataclass
class RLPrompts(StageData):
    """``StageData`` of the rl stage: ``drawer`` is a ``PromptDrawer``; ``held_out`` stays empty (there is
    no held-out loss) and the held-out prompts per component are in ``held_out_prompts``."""

    prompts: list[list[Prompt]] = field(default_factory=list)  # training prompts per component
    held_out_prompts: dict[str, list[Prompt]] = field(default_factory=dict)


def build_rl_data(config: RLConfig, tokenizer) -> RLPrompts:
    """Prompts of every component, their held-out split, and the drawer that mixes them."""
    data = config.data
    raw = [c for i, source in enumerate(data.sources) for c in source_components(source, i)]
    check_unique_names(raw)
    components, train, held_out = [], [], {}
    for k, component in enumerate(raw):
        decontaminated = decontaminate_items(component, data.decontam)
        prompts, counts = encode_component(component, k, tokenizer, config)
        counts.update(decontaminated)
        train_part, held_part = split_prompts(prompts, data.eval_holdout, config.seed, component.name)
        train.append(train_part)
        if held_part:
            held_out[component.name] = held_part
        source = data.sources[component.source]
        components.append({
            "name": component.name, "task": prompts[0].task, "source": source.path,
            "digest": source_digest(source), "items": len(train_part), "held_out": len(held_part),
            "prompt_tokens": sum(len(p.ids) for p in train_part),
            "budget": max(p.budget for p in prompts), **counts})
    probs = component_probs(raw, [len(p) for p in train], data)
    for info, p in zip(components, probs):
        info["planned_share"] = p
    sampler = MixtureSampler([np.ones(len(p), dtype=np.int64) for p in train], probs, config.seed)
    return RLPrompts(components, PromptDrawer(train, sampler), prompts=train, held_out_prompts=held_out)


# ---------------------------------------------------------------- sources -> components


def source_components(source: RLSource, index: int) -> list[RawComponent]:
    fmt = detect_format(source)
    path = Path(source.path)
    if fmt in NO_ANSWER_FORMATS:
        raise DataError(f"{source.path}: format '{fmt}' has no gold answers to reward; rl reads SNS-Bench "
                        "folders, TransBench files, or json/jsonl task records with task:")
    if fmt == "sns_bench":
        return [RawComponent(file.stem, file.stem, index, indexed(file, load_task_items(file, file.stem, source)),
                             str(file))
                for file in sns_bench_files(path, list(source.tasks))]
    task = resolve_source_task(source, fmt)
    if task == sns_tasks.TRANSBENCH:
        by_direction: dict[str, RawComponent] = {}
        for i, item, where in indexed(path, load_task_items(path, task, source)):
            name = sns_tasks.transbench_task(item, where=where)
            by_direction.setdefault(name, RawComponent(name, name, index, where=str(path))).items.append((i, item, where))
        return [by_direction[name] for name in sorted(by_direction)]
    if fmt in ("json", "jsonl") and source.task:
        # User records: checked item by item when their prompts are built (errors name file:line).
        items = [(i, {k: v for k, v in r.items() if k != "_line"}, f"{path}:{r.get('_line', i + 1)}")
                 for i, r in enumerate(read_records(source))]
        return [RawComponent(source_name(source), task, index, items, str(path))]
    return [RawComponent(source.name or Path(path).stem, task, index,
                         indexed(path, load_task_items(path, task, source)), str(path))]


def indexed(path: Path, items: list[dict]) -> list[tuple[int, dict, str]]:
    """(index, item, "file:index") for the items of a task JSON file (0-based, as redone.sns.tasks names them)."""
    return [(i, item, f"{path}:{i}") for i, item in enumerate(items)]


def resolve_source_task(source: RLSource, fmt: str) -> str:
    """The task a file's records belong to: ``task:`` (a name or a YAML task file), else the file name."""
    if source.task == sns_tasks.TRANSBENCH:
        return source.task
    if source.task:
        if source.task.endswith((".yaml", ".yml")):
            return sns_tasks.register_yaml_task(source.task, replace=True).name
        sns_tasks.get_task(source.task)  # unknown names raise with a did-you-mean
        return source.task
    if fmt == "transbench":
        return sns_tasks.TRANSBENCH
    if fmt not in ("json", "jsonl"):
        raise DataError(f"{source.path}: format '{fmt}' is not a task file; rl reads SNS-Bench folders, "
                        "TransBench files, or json/jsonl task records with task:")
    try:
        return sns_tasks.task_for_file(source.path)
    except Exception:  # not named after a task: say what to add
        raise DataError(f"{source.path}: set task: in this source (the registered task its records "
                        f"belong to; known: {', '.join(sns_tasks.list_tasks())})") from None


def load_task_items(path: Path, task: str, source: RLSource) -> list[dict]:
    items = sns_tasks.load_items(path, task)
    items = items[: source.limit] if source.limit else items
    if not items:
        raise DataError(f"{path}: no items")
    return items


def sns_bench_files(folder: Path, tasks: list[str]) -> list[Path]:
    files = sorted(folder.glob("Note-*.json"))
    if tasks:
        unknown = set(tasks) - {f.stem for f in files}
        if unknown:
            raise DataError(f"{folder}: no task file(s) {sorted(unknown)} (known: {[f.stem for f in files]})")
        files = [f for f in files if f.stem in set(tasks)]
    if not files:
        raise DataError(f"{folder}: no SNS-Bench Note-*.json files")
    return files


def check_unique_names(components: list[RawComponent]) -> None:
    names = [c.name for c in components]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"data.sources: component name(s) {duplicates} appear twice; give the sources distinct names")


# ---------------------------------------------------------------- prompts


def answer_budget(task: str, cap: int | None) -> int:
    budget = sns_tasks.get_task(task).max_new_tokens
    return min(budget, cap) if cap else budget


def decontaminate_items(component: RawComponent, cfg) -> dict:
    """Drop the component's items that share an n-gram with an eval set; the counts for its report."""
    texts = [item_text(item) for _, item, _ in component.items]
    kept, dropped, affected = screen_counted(texts, cfg)
    if not dropped:
        return {"dropped_decontaminated": 0}
    component.items = [component.items[i] for i in kept]
    if not component.items:
        raise DataError(f"{component.where}: every item of '{component.name}' overlaps an eval set (data.decontam)")
    return {"dropped_decontaminated": sum(dropped.values()), "decontaminated_by": dict(sorted(dropped.items())),
            "eval_items_affected": affected}


def encode_component(component: RawComponent, k: int, tokenizer, config: RLConfig) -> tuple[list[Prompt], dict]:
    """Every item of a component as a ``Prompt``; over-long prompts dropped (counted) or refused."""
    data, counts = config.data, Counter()
    prompts = []
    # The item's index in its file keys its style, so dropping other items never changes it.
    styles = item_styles(data.prompt_style, data.official_share, component.name,
                         1 + max((index for index, _, _ in component.items), default=0), config.seed)
    for index, item, where in component.items:
        task, style = component.task, styles[index]
        clipped = sns_tasks.clip_item(task, item, data.max_prompt_chars)
        messages = sns_tasks.prompt_messages(task, clipped, style, where=where)
        sns_tasks.answer_text(task, item, style, where=where)  # the reward needs a valid gold
        ids = list(tokenizer(render(tokenizer, messages, add_generation_prompt=True),
                             add_special_tokens=False)["input_ids"])
        budget = answer_budget(task, config.rl.max_new_tokens)
        if len(ids) + budget > data.seq_len:
            if data.overlong == "error":
                raise DataError(f"{where}: prompt of {len(ids)} tokens + answer budget {budget} exceeds "
                                f"data.seq_len={data.seq_len} (data.overlong: error)")
            counts["dropped_overlong"] += 1
            continue
        prompts.append(Prompt(task, k, index, item, ids, budget))
    if not prompts:
        raise DataError(f"{component.where}: every prompt of '{component.name}' exceeds data.seq_len="
                        f"{data.seq_len} with its answer budget (raise data.seq_len or lower rl.max_new_tokens)")
    return prompts, dict(counts, dropped_overlong=counts["dropped_overlong"])


def split_prompts(prompts: list[Prompt], holdout: int, seed: int, name: str) -> tuple[list[Prompt], list[Prompt]]:
    """Train and held-out prompts; the held-out ones by a permutation seeded with ``seed`` only."""
    order = np.random.default_rng([seed, 7]).permutation(len(prompts))
    held = sorted(order[:holdout].tolist()) if holdout else []
    train = sorted(order[holdout:].tolist())
    if not train:
        raise DataError(f"{name}: data.eval_holdout={holdout} leaves no training prompts")
    return [prompts[i] for i in train], [prompts[i] for i in held]


def component_probs(components: list[RawComponent], sizes: list[int], data) -> list[float]:
    """Mixture shares by prompt counts: temperature over components, or source weights split by size^(1/T)."""
    if data.mixing == "temperature":
        return mixture_probs([], sizes, "temperature", data.temperature)
    weights = split_source_weights([c.source for c in components], [s.weight for s in data.sources], sizes,
                                   data.temperature)
    return mixture_probs(weights, sizes, "ratio", 1.0)
