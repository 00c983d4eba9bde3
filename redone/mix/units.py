"""What a mixture search weighs: its units, their token counts, and which metric tags belong to whom.

A *unit* is one share of the mixture. With ``over="sources"`` every config source is a unit (its
weight is the unit's share; inside a source the stage splits the weight over its task files as the
config says, e.g. by size^(1/T) under ``data.temperature``). With ``over="tasks"`` (SFT) every
SNS-Bench source is split into one source per task file (``tasks: [Note-X]``), so each task file gets
its own weight; other sources (TransBench, chat) stay whole units.

The stage's own data path is run once (``stage_data_info``, the ONE adapter onto the data modules that
are being reorganised) to get every mixture component's training token count, content digest and the
share the config itself plans for it.

Metric tags are the stage's component names (``eval_loss/<tag>``): SFT task files, TransBench
directions and chat sources; CPT sources. ``resolve_names`` maps user-given names (source, unit or
component names) to tags.

Errors: ``ConfigError`` for an unknown name (listing the known ones), ``over=tasks`` in CPT, or sources
whose components cannot be told apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from redone.config import config_to_dict
from redone.errors import ConfigError

OVER_CHOICES = ("sources", "tasks")


@dataclass
class Unit:
    name: str
    source: dict  # the config source this unit renders to (its weight is set per candidate)
    components: list[str]  # metric tags trained from this unit
    tokens: int  # training tokens (after the held-out split)
    config_share: float  # the share the config's own weights give it


@dataclass
class MixData:
    stage: str
    units: list[Unit]
    source_names: list[str]
    source_components: dict[str, list[str]]  # config source name -> its component tags
    component_tokens: dict[str, int]
    digests: list[str]  # content digests of every component's data (cache keys)
    info: list[dict] = field(default_factory=list)  # the stage's source_info, for the report

    @property
    def names(self) -> list[str]:
        return [u.name for u in self.units]

    @property
    def natural(self) -> np.ndarray:
        tokens = np.array([u.tokens for u in self.units], dtype=np.float64)
        return tokens / tokens.sum()

    @property
    def config_shares(self) -> np.ndarray:
        shares = np.array([u.config_share for u in self.units], dtype=np.float64)
        return shares / shares.sum()

    @property
    def components(self) -> list[str]:
        return [c for u in self.units for c in u.components]


def stage_data_info(config, tokenizer) -> list[dict]:
    """Adapter onto the stage data path: one dict per mixture component, in the stage's order, with
    ``name``, ``tokens``, ``digest``, ``planned_share`` and ``source_index`` (the config source it
    came from). Today the stage object builds the data and exposes ``source_info``."""
    from redone.stages import stage_class

    stage = stage_class(config.stage)(config, tokenizer)
    info = [dict(item) for item in stage.source_info]
    if config.stage == "cpt":
        for i, item in enumerate(info):
            item.setdefault("source_index", i)
    elif any("source_index" not in item for item in info):
        assign_source_index(info, [s.path for s in config.data.sources])
    return info


def assign_source_index(info: list[dict], paths: list[str]) -> None:
    """Components come grouped by source, in source order; their ``source`` is the source's path."""
    for i in range(len(paths) - 1):
        if paths[i] == paths[i + 1]:
            raise ConfigError(f"data.sources[{i}] and [{i + 1}] read the same path {paths[i]}; the mixture "
                              "search cannot tell their components apart (put another source between them)")
    j = 0
    for item in info:
        while j < len(paths) and item["source"] != paths[j]:
            j += 1
        if j == len(paths):
            raise ConfigError(f"mix: component {item['name']} does not belong to any data.sources path")
        item["source_index"] = j


def source_dicts(config) -> list[dict]:
    return [dict(s) for s in config_to_dict(config)["data"]["sources"]]


def source_label(source: dict) -> str:
    return source["name"] or Path(source["path"]).stem


def is_task_folder(source: dict) -> bool:
    return source["format"] == "sns_bench" or (source["format"] == "auto" and Path(source["path"]).is_dir())


def build_units(config, info: list[dict], over: str) -> MixData:
    if over not in OVER_CHOICES:
        raise ConfigError(f"--over: '{over}' is not one of {', '.join(OVER_CHOICES)}")
    if over == "tasks" and config.stage != "sft":
        raise ConfigError("--over tasks: only SFT sources have task files; use --over sources")
    sources = source_dicts(config)
    names = [source_label(s) for s in sources]
    by_source: dict[int, list[dict]] = {}
    for item in info:
        by_source.setdefault(item["source_index"], []).append(item)
    units = []
    for index, source in enumerate(sources):
        items = by_source.get(index, [])
        if over == "tasks" and is_task_folder(source) and len(items) > 1:
            for item in items:
                task_source = dict(source, name=item["name"], tasks=[item["name"]])
                units.append(Unit(item["name"], task_source, [item["name"]], int(item["tokens"]),
                                  float(item["planned_share"])))
        else:
            units.append(Unit(names[index], source, [i["name"] for i in items],
                              sum(int(i["tokens"]) for i in items), sum(float(i["planned_share"]) for i in items)))
    return MixData(
        stage=config.stage, units=units, source_names=names,
        source_components={names[i]: [x["name"] for x in by_source.get(i, [])] for i in range(len(sources))},
        component_tokens={i["name"]: int(i["tokens"]) for i in info},
        # Content digests plus token counts: a changed prompt builder or tokenizer changes the tokens
        # even when the files did not change, and must not reuse proxies trained on the old tokens.
        digests=[f"{i['name']}:{i.get('digest')}:{int(i['tokens'])}" for i in info], info=info)


def known_names(data: MixData) -> list[str]:
    seen: list[str] = []
    for name in data.source_names + data.names + list(data.component_tokens):
        if name not in seen:
            seen.append(name)
    return seen


def resolve_names(data: MixData, names: list[str], flag: str) -> dict[str, list[str]]:
    """Each name (a source, unit or component) -> its metric tags."""
    groups = {}
    units = {u.name: u.components for u in data.units}
    for name in names:
        if name in data.source_components:
            groups[name] = data.source_components[name]
        elif name in units:
            groups[name] = units[name]
        elif name in data.component_tokens:
            groups[name] = [name]
        else:
            raise ConfigError(f"{flag}: '{name}' is not a source, unit or task of this config "
                              f"(known: {', '.join(known_names(data))})")
    return groups


def default_targets(config, keyword: str = "sns") -> list[str]:
    """Sources whose name or path mentions ``keyword`` (the SNS data by default)."""
    found = [source_label(s) for s in source_dicts(config)
             if keyword in source_label(s).lower() or keyword in str(s["path"]).lower()]
    if not found:
        raise ConfigError(f"--target: no data source has '{keyword}' in its name or path; name the target "
                          "sources with --target")
    return found
