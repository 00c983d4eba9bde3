"""`redone pipeline`: CPT -> SFT -> DPO -> eval in one command, each stage feeding the next.

Features
- One YAML: shared settings (``model``, ``seed``, ``tracking``, ``output_root``), a section per stage
  (any stage config key) and ``eval``. ``key=value`` overrides address any of it (``sft.optim.lr=1e-4``).
- Chaining: a stage's ``final/`` becomes the next stage's ``model.name_or_path``; each stage prints
  which shared settings it inherited and which it overrode.
- Skipping: a stage whose ``final/`` is complete, whose resolved config hash is unchanged and which
  started from the current parent weights (fingerprints) is skipped; a changed stage re-runs, and so
  does everything after it. An interrupted stage resumes from its newest checkpoint (same config) or
  restarts (changed config: the stale stage dir is removed, and the message says so).
- ``--from STAGE`` / ``--only STAGE``; ``state.json`` in the output root records what ran or was skipped.
- Eval of base and every stage's final model (results cached per model fingerprint), the skill-free
  baseline row, ``report.md`` + PNG plots, and a model card in each final dir.

Errors: ``ConfigError`` for unknown keys (top level or inside a stage section, with did-you-mean),
an unknown stage name in ``--from``/``--only``; stage errors propagate unchanged.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from redone.config.load import (
    check_unknown_keys,
    config_to_dict,
    parse_overrides,
    read_yaml_with_defaults,
    result_hash,
)
from redone.config.schema import ModelSection, TrackingSection
from redone.errors import ConfigError
from redone.stages import STAGE_NAMES, build_config, run_stage
from redone.train import checkpoint as ckpt

SHARED_KEYS = ("seed", "model", "tracking")


@dataclass
class EvalSection:
    enabled: bool = True
    benches: list[str] = field(default_factory=lambda: ["sns-bench", "sns-transbench", "general-ppl"])
    models: list[str] = field(default_factory=lambda: ["base", "cpt", "sft", "dpo"])
    limit: Optional[int] = None  # items per benchmark file (None = the whole test split)
    subset: str = "first"  # first | spread: which `limit` items (redone.eval.runner.subset_indices)
    prompt_style: str = "redone"
    max_prompt_chars: Optional[int] = None  # None: the SFT stage's data.max_prompt_chars
    batch_size: int = 8
    max_new_tokens_cap: Optional[int] = 256
    data_dir: str = "data"
    skill_free: bool = True
    bug_compatible: bool = False
    dtype: str = "float32"  # every column of the table must use the same one (bf16 changes answers)
    ppl_max_tokens: int = 16384


@dataclass
class PipelineConfig:
    output_root: str = "runs/pipeline"
    seed: int = 0
    stages: list[str] = field(default_factory=lambda: ["cpt", "sft", "dpo"])
    # Delete a stage's step checkpoints once its final/ is written: resume only needs them while the
    # stage is unfinished, and each one holds the weights plus two Adam moments (3x the model).
    prune_checkpoints: bool = False
    model: ModelSection = field(default_factory=ModelSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    cpt: Any = None
    sft: Any = None
    dpo: Any = None
    eval: EvalSection = field(default_factory=EvalSection)


def load_pipeline(path: str | Path | None, overrides=()) -> tuple[dict, PipelineConfig]:
    raw = read_yaml_with_defaults(Path(path)) if path else OmegaConf.create({})
    raw = OmegaConf.merge(raw, parse_overrides(overrides))
    plain = OmegaConf.to_container(raw, resolve=True)
    check_unknown_keys(plain, PipelineConfig, prefix="")
    try:
        top = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PipelineConfig), raw))
    except Exception as err:  # OmegaConf type errors name the key in their message
        raise ConfigError(f"{getattr(err, 'full_key', '?')}: {str(err).splitlines()[0]} ({path})") from None
    for stage in top.stages:
        if stage not in STAGE_NAMES:
            raise ConfigError(f"stages: '{stage}' is not one of {', '.join(STAGE_NAMES)}")
    if top.eval.enabled:
        check_eval_section(top, plain, path)
    return plain, top


def check_eval_section(top: PipelineConfig, plain: dict, path) -> None:
    """Refuse a bad eval value now, not after the stages have trained."""
    from redone.errors import RedoneError
    from redone.eval.runner import EvalOptions
    from redone.report import eval_options

    try:
        EvalOptions.from_mapping(eval_options(top, plain)).validate()
    except RedoneError as err:
        raise ConfigError(f"{err} ({path})") from None


def stage_raw(plain: dict, top: PipelineConfig, stage: str, parent_model: str | None) -> tuple[dict, list[str]]:
    """The stage's raw config (shared settings + its section) and the inherited/override lines."""
    section = dict(plain.get(stage) or {})
    shared = {key: plain.get(key) for key in SHARED_KEYS if plain.get(key) is not None}
    shared["seed"] = top.seed
    if parent_model is not None:
        shared.setdefault("model", {})
        shared["model"] = dict(shared["model"], name_or_path=parent_model)
    notes = []
    for key, value in flatten(shared).items():
        mine = flatten(section).get(key, value)
        notes.append(f"{'override' if mine != value else 'inherited'} {key}={mine}")
    merged = OmegaConf.merge(OmegaConf.create(shared), OmegaConf.create(section))
    merged.output_dir = str(Path(top.output_root) / stage)
    return OmegaConf.to_container(merged), notes


def flatten(node: Any, prefix: str = "") -> dict:
    if not isinstance(node, dict):
        return {prefix.rstrip("."): node}
    flat = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}{key}."))
    return flat


def stage_status(config, parent_fingerprint: str | None) -> str:
    """done (skip), resume, restart (stale dir), or fresh."""
    out = Path(config.output_dir)
    lineage_file = out / "final" / "redone.json"
    if lineage_file.exists():
        lineage = json.loads(lineage_file.read_text())
        same_config = lineage.get("config_hash") == result_hash(config)
        same_parent = parent_fingerprint is None or lineage.get("start_fingerprint") in (None, parent_fingerprint)
        return "done" if same_config and same_parent else "restart"
    if ckpt.latest_checkpoint(out) is not None:
        saved = ckpt.read_loop_state(ckpt.latest_checkpoint(out))
        same_start = parent_fingerprint is None or saved.get("start_fingerprint") in (None, parent_fingerprint)
        hash_file = out / "config_hash.txt"
        previous = hash_file.read_text().strip() if hash_file.exists() else None
        return "resume" if same_start and previous == result_hash(config) else "restart"
    return "restart" if out.exists() and any(out.iterdir()) else "fresh"


def selected_stages(top: PipelineConfig, start: str | None, only: str | None) -> list[str]:
    for flag, value in (("--from", start), ("--only", only)):
        if value is not None and value not in top.stages:
            raise ConfigError(f"{flag}: '{value}' is not one of this pipeline's stages {top.stages}")
    if only:
        return [only]
    if start:
        return top.stages[top.stages.index(start):]
    return list(top.stages)


def dry_run(path: str | Path | None, overrides=(), log=print) -> list:
    """Resolve and validate every stage's config without touching models or data."""
    from redone.config.load import config_to_yaml

    plain, top = load_pipeline(path, overrides)
    configs, parent = [], None
    for stage in top.stages:
        raw, notes = stage_raw(plain, top, stage, parent)
        config = build_config(stage, OmegaConf.create(raw), origin=f"{path} [{stage}]")
        log(f"# ---- {stage}\n# " + "\n# ".join(notes) + "\n" + config_to_yaml(config))
        configs.append(config)
        parent = str(Path(config.output_dir) / "final")
    return configs


def run_pipeline(path: str | Path | None, overrides=(), start: str | None = None, only: str | None = None,
                 log=print) -> dict:
    from redone.model import fingerprint_model_dir, resolve_model

    plain, top = load_pipeline(path, overrides)
    root = Path(top.output_root)
    root.mkdir(parents=True, exist_ok=True)
    chosen = selected_stages(top, start, only)
    record = {"stages": {}, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    parent = None  # the first stage starts from the pipeline's model
    parent_fp = None
    finals: dict[str, str] = {}
    for stage in top.stages:
        raw, notes = stage_raw(plain, top, stage, parent)
        config = build_config(stage, OmegaConf.create(raw), origin=f"{path} [{stage}]")
        if parent_fp is None:
            base_dir = resolve_model(config.model.name_or_path)
            parent_fp = fingerprint_model_dir(base_dir) if Path(base_dir).exists() else None
            record["base_fingerprint"] = parent_fp
        status = stage_status(config, parent_fp)
        if stage not in chosen:
            if status != "done":
                raise ConfigError(f"{stage}: not selected (--from/--only) and has no up-to-date final/ "
                                  f"to feed the next stage; run it first")
            log(f"[pipeline] {stage}: not selected, using its existing final/")
        elif status == "done":
            log(f"[pipeline] {stage}: up to date, skipped")
        else:
            log(f"[pipeline] {stage}: {status}")
            for note in notes:
                log(f"[pipeline]   {note}")
            if status == "restart":
                log(f"[pipeline]   removing stale {config.output_dir} (config or parent weights changed)")
                shutil.rmtree(config.output_dir)
            t0 = time.perf_counter()
            final = run_stage(config)
            record["stages"][stage] = {"status": status, "seconds": round(time.perf_counter() - t0, 1)}
            if final is None:  # train.stop_after_steps: the next stages need this one's final/
                log(f"[pipeline] {stage}: stopped early at train.stop_after_steps; rerun to resume it")
                record["stages"][stage]["status"] = "stopped"
                (root / "state.json").write_text(json.dumps(record, indent=1, default=str))
                return record
            if top.prune_checkpoints:
                shutil.rmtree(ckpt.checkpoints_dir(config.output_dir), ignore_errors=True)
                log(f"[pipeline] {stage}: removed its step checkpoints (prune_checkpoints)")
        record["stages"].setdefault(stage, {"status": "skipped"})
        final = Path(config.output_dir) / "final"
        lineage = json.loads((final / "redone.json").read_text())
        record["stages"][stage].update({"final": str(final), "fingerprint": lineage["fingerprint"],
                                        "config": config_to_dict(config)})
        finals[stage] = str(final)
        parent, parent_fp = str(final), lineage["fingerprint"]
    (root / "state.json").write_text(json.dumps(record, indent=1, default=str))
    if top.eval.enabled and not only:
        from redone.report import evaluate_and_report

        record["eval"] = evaluate_and_report(top, plain, finals, record, log=log)
        (root / "state.json").write_text(json.dumps(record, indent=1, default=str))
    return record
