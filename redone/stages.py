"""The one stage registry: a stage name -> its config type, its Stage class and its data builder.

The CLI (``redone train``, ``redone config show``, ``redone data prepare``), the pipeline and the
benchmark scripts look stages up here and nowhere else. Adding a stage means one ``StageSpec`` line
below, its config type in ``redone/config/schema.py``, its data path in ``redone/data/<stage>.py`` and
its loss in ``redone/train/<stage>.py``.

The Stage class and the data builder are named by module path and imported on first use, so that
``redone config show`` or ``--dry-run`` never pays for importing torch and transformers.

Errors: ``ConfigError`` for an unknown stage name (with the known ones listed).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from redone.config import load as config_load
from redone.config.schema import CPTConfig, DPOConfig, RLConfig, RunConfig, SFTConfig
from redone.errors import ConfigError


@dataclass(frozen=True)
class StageSpec:
    name: str
    config: type[RunConfig]
    stage: str  # "module:Class" of the training Stage (loss, metrics, hooks)
    data: str  # "module:function" (config, tokenizer) -> StageData: sources to packed rows
    summary: str


SPECS: dict[str, StageSpec] = {spec.name: spec for spec in (
    StageSpec("cpt", CPTConfig, "redone.train.cpt:CPTStage", "redone.data.cpt:build_cpt_data",
              "continued pretraining on domain + general text"),
    StageSpec("sft", SFTConfig, "redone.train.sft:SFTStage", "redone.data.sft:build_sft_data",
              "multi-task supervised fine-tuning (assistant-token loss)"),
    StageSpec("dpo", DPOConfig, "redone.train.dpo:DPOStage", "redone.data.dpo:build_dpo_data",
              "direct preference optimisation against cached reference log-probs"),
    StageSpec("rl", RLConfig, "redone.train.rl:RLStage", "redone.data.rl:build_rl_data",
              "GRPO/DAPO on verifiable rewards: the SNS-Bench metrics of sampled answers"),
)}
STAGE_NAMES: tuple[str, ...] = tuple(SPECS)


def spec(name: str) -> StageSpec:
    if name not in SPECS:
        raise ConfigError(f"stage: '{name}' is not one of {', '.join(STAGE_NAMES)}")
    return SPECS[name]


def _load(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def stage_class(name: str):
    """The training Stage class of a stage."""
    return _load(spec(name).stage)


def data_builder(name: str):
    """The stage's data path: ``builder(config, tokenizer) -> StageData``."""
    return _load(spec(name).data)


def build_config(name: str, raw: DictConfig, overrides=(), origin: str = "<config>") -> RunConfig:
    """A raw (already merged) DictConfig -> the stage's validated config dataclass."""
    return config_load.build_config(spec(name).config, raw, overrides, origin=origin)


def load_config(name: str, path: str | Path | None, overrides=()) -> RunConfig:
    """``--config FILE`` plus ``key=value`` overrides -> the stage's validated config."""
    config_cls = spec(name).config
    raw = config_load.read_yaml_with_defaults(Path(path)) if path else OmegaConf.create({})
    return config_load.build_config(config_cls, raw, overrides, origin=str(path or "<overrides>"))


def prepare_data(name: str, config: RunConfig) -> dict:
    """Run the stage's data path as ``redone train`` would (filling its caches) and return the report."""
    import time

    from redone.data.report import stage_report
    from redone.model import load_tokenizer

    clock = time.perf_counter()
    tokenizer = load_tokenizer(config.model.name_or_path, config.model.trust_remote_code)
    if name == "dpo" and config.data.sample_rejected:
        # Sampled rejected answers come from the starting model: build the stage as training does.
        data = stage_class(name)(config, tokenizer).data
    else:
        data = data_builder(name)(config, tokenizer)
    return stage_report(name, config, data, time.perf_counter() - clock)


def run_stage(config: RunConfig):
    """Train one stage (its config says which); the final model dir, or None when stopped early."""
    from redone.train.loop import run_training

    return run_training(config, stage_class(config.stage))
