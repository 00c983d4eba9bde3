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
- Each stage trains in a fresh child process (``stage_processes: auto``; redone/isolate.py says why:
  a clean heap per stage, 17% lower peak RSS on CPT->SFT), except under a multi-process launch.
- ``--from STAGE`` / ``--only STAGE``; ``state.json`` in the output root records what ran or was skipped.
- Eval of base and every stage's final model (results cached per model fingerprint), the skill-free
  baseline row, ``report.md`` + PNG plots, and a model card in each final dir.

Errors: ``ConfigError`` for unknown keys (top level or inside a stage section, with did-you-mean),
an unknown stage name in ``--from``/``--only``; stage errors propagate unchanged.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from redone.config.load import (
    check_unknown_keys,
    config_to_dict,
    parse_overrides,
    read_yaml_with_defaults,
    result_hash,
)
from redone.config.schema import EvalConfig, PipelineConfig
from redone.config.validate import check_eval
from redone.errors import ConfigError
from redone.stages import STAGE_NAMES, build_config, run_stage
from redone.train import checkpoint as ckpt

SHARED_KEYS = ("seed", "model", "tracking")
STAGE_PROCESS_MODES = ("auto", "always", "never")


def load_pipeline(path: str | Path | None, overrides=()) -> tuple[dict, PipelineConfig]:
    raw = read_yaml_with_defaults(Path(path)) if path else OmegaConf.create({})
    raw = OmegaConf.merge(raw, parse_overrides(overrides))
    plain = OmegaConf.to_container(raw, resolve=True)
    check_unknown_keys(plain, PipelineConfig, prefix="")
    try:
        top = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PipelineConfig), raw))
    except Exception as err:  # OmegaConf type errors name the key in their message
        raise ConfigError(f"{getattr(err, 'full_key', '?')}: {str(err).splitlines()[0]} ({path})") from None
    if top.stage_processes not in STAGE_PROCESS_MODES:
        raise ConfigError(f"stage_processes: '{top.stage_processes}' is not one of "
                          f"{', '.join(STAGE_PROCESS_MODES)} ({path})")
    if top.stage_processes == "always" and launched_as_ranks():
        raise ConfigError("stage_processes: 'always' cannot be honoured under a multi-process launch "
                          f"(WORLD_SIZE={os.environ['WORLD_SIZE']}); use 'auto' or 'never' ({path})")
    for stage in top.stages:
        if stage not in STAGE_NAMES:
            raise ConfigError(f"stages: '{stage}' is not one of {', '.join(STAGE_NAMES)}")
    for stage in STAGE_NAMES:
        section = plain.get(stage)
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"{stage}: must be a mapping of stage config keys, got {type(section).__name__} "
                              f"{section!r} ({path})")
    if top.eval.max_prompt_chars is None:
        # Eval prompts are clipped like the SFT examples were, unless the eval section says otherwise.
        top.eval.max_prompt_chars = ((plain.get("sft") or {}).get("data") or {}).get("max_prompt_chars")
    top.eval.models = list(top.eval.models) or ["base", *top.stages]
    if top.eval.enabled:
        check_eval_section(top, path)
    return plain, top


def check_eval_section(top: PipelineConfig, path) -> None:
    """Refuse a bad eval value now, not after the stages have trained."""
    columns = ["base", *top.stages]
    for i, label in enumerate(top.eval.models):
        if label not in columns:
            close = difflib.get_close_matches(label, columns, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"eval.models[{i}]: '{label}' is neither 'base' nor one of this pipeline's "
                              f"stages {top.stages}{hint} ({path})")
    try:
        check_eval(top.eval)
    except ConfigError as err:
        raise ConfigError(f"{err} ({path})") from None


def stage_raw(plain: dict, top: PipelineConfig, stage: str, parent_model: str | None,
              output_dir: Path | None = None) -> tuple[dict, list[str]]:
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
    merged.output_dir = str(output_dir or Path(top.output_root) / stage)
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
    hash_file = out / "config_hash.txt"
    same_config = hash_file.exists() and hash_file.read_text().strip() == result_hash(config)
    latest = ckpt.usable_checkpoints(out)  # a damaged newest checkpoint is skipped, saying so
    if latest is not None:
        saved = ckpt.read_loop_state(latest)
        same_start = parent_fingerprint is None or saved.get("start_fingerprint") in (None, parent_fingerprint)
        return "resume" if same_start and same_config else "restart"
    if same_config:
        return "resume"  # killed before its first checkpoint: the same run starts again (train does so cleanly)
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
        config = stage_config(stage, raw, path)
        log(f"# ---- {stage}\n# " + "\n# ".join(notes) + "\n" + config_to_yaml(config))
        configs.append(config)
        parent = str(Path(config.output_dir) / "final")
    return configs


def run_pipeline(path: str | Path | None, overrides=(), start: str | None = None, only: str | None = None,
                 ablations: bool = False, log=print) -> dict:
    plain, top = load_pipeline(path, overrides)
    if ablations:
        top.ablations.enabled = True
    rows = ablation_rows(top) if top.ablations.enabled else []
    root = Path(top.output_root)
    chosen = selected_stages(top, start, only)
    for chain in [top.stages, *[row.split("-") for row in rows]]:
        chain_configs(plain, top, chain, path)  # every stage's config is checked before anything trains
    record = {"stages": {}, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    # Stages after the last selected one are not needed (--only cpt runs cpt alone).
    needed = top.stages[: max(top.stages.index(s) for s in chosen) + 1]
    finals = run_chain(plain, top, needed, chosen, record["stages"], record, path, log)
    if finals is None:  # stopped early at train.stop_after_steps
        write_state(root, record)
        return record
    if rows and not only:
        record["ablations"] = {}
        for row in rows:
            chain = row.split("-")
            if chain == top.stages[:len(chain)]:
                continue  # a prefix of the main chain: already trained above
            log(f"[pipeline] ablation {row}")
            stages: dict = {}
            if run_chain(plain, top, chain, chain, stages, record, path, log) is None:
                write_state(root, record)
                return record
            record["ablations"][row] = stages
    write_state(root, record)
    if top.eval.enabled and not only:
        record["eval"] = evaluate_stages(top, finals, record, log=log)
        if rows:
            record["eval"]["ablations"] = evaluate_ablations(top, rows, record, log=log)
        write_state(root, record)
    return record


def write_state(root: Path, record: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "state.json").write_text(json.dumps(record, indent=1, default=str))


def chain_configs(plain: dict, top: PipelineConfig, chain: list[str], path) -> list:
    """Every stage config of a chain, built and validated; a key error names its stage (``sft.optim.lr``)."""
    configs, parent = [], None
    for i, stage in enumerate(chain):
        raw, _ = stage_raw(plain, top, stage, parent, chain_dir(top, chain[:i + 1]))
        configs.append(stage_config(stage, raw, path))
        parent = str(Path(configs[-1].output_dir) / "final")
    return configs


def stage_config(stage: str, raw: dict, path):
    try:
        return build_config(stage, OmegaConf.create(raw), origin=f"{path} [{stage}]")
    except ConfigError as err:
        raise ConfigError(f"{stage}.{err}") from None


def chain_dir(top: PipelineConfig, prefix: list[str]) -> Path:
    """Output dir of the last stage of a chain prefix: the main chain's stages live in
    ``<output_root>/<stage>``, other chains' in ``<output_root>/ablations/<stage>-<stage>...``."""
    root = Path(top.output_root)
    if prefix == top.stages[:len(prefix)]:
        return root / prefix[-1]
    return root / "ablations" / "-".join(prefix)


def run_chain(plain: dict, top: PipelineConfig, chain: list[str], chosen: list[str], stages: dict,
              record: dict, path, log) -> dict[str, str] | None:
    """Run (or skip, or resume) each stage of ``chain`` from the pipeline's model, each starting from
    the previous one's final/; returns {stage: final dir}, or None when a stage stopped early."""
    from redone.model import fingerprint_model_dir, resolve_model

    parent, parent_fp, finals = None, None, {}
    for i, stage in enumerate(chain):
        raw, notes = stage_raw(plain, top, stage, parent, chain_dir(top, chain[:i + 1]))
        config = stage_config(stage, raw, path)
        if parent_fp is None:
            base_dir = resolve_model(config.model.name_or_path)
            parent_fp = fingerprint_model_dir(base_dir) if Path(base_dir).exists() else None
            record.setdefault("base_fingerprint", parent_fp)
        status = stage_status(config, parent_fp)
        if stage not in chosen:
            if status != "done":
                raise ConfigError(f"{stage}: not selected (--from/--only) and has no up-to-date final/ "
                                  f"to feed the next stage; run it first")
            log(f"[pipeline] {stage}: not selected, using its existing final/")
        elif status == "done":
            log(f"[pipeline] {stage}: up to date, skipped ({config.output_dir})")
        else:
            log(f"[pipeline] {stage}: {status} ({config.output_dir})")
            for note in notes:
                log(f"[pipeline]   {note}")
            if status == "restart":
                log(f"[pipeline]   removing stale {config.output_dir} (config or parent weights changed)")
                shutil.rmtree(config.output_dir)
            t0 = time.perf_counter()
            final = train_stage(config, top, stage)
            stages[stage] = {"status": status, "seconds": round(time.perf_counter() - t0, 1)}
            if final is None:  # train.stop_after_steps: the next stages need this one's final/
                log(f"[pipeline] {stage}: stopped early at train.stop_after_steps; rerun to resume it")
                stages[stage]["status"] = "stopped"
                return None
            if top.prune_checkpoints:
                shutil.rmtree(ckpt.checkpoints_dir(config.output_dir), ignore_errors=True)
                log(f"[pipeline] {stage}: removed its step checkpoints (prune_checkpoints)")
        stages.setdefault(stage, {"status": "skipped"})
        final = Path(config.output_dir) / "final"
        lineage = json.loads((final / "redone.json").read_text())
        stages[stage].update({"final": str(final), "fingerprint": lineage["fingerprint"],
                              "config": config_to_dict(config)})
        finals[stage] = str(final)
        parent, parent_fp = str(final), lineage["fingerprint"]
    return finals


def train_stage(config, top: PipelineConfig, stage: str):
    """Train one stage in a fresh child process, or here (``stage_processes``): its final dir or None."""
    if use_stage_processes(top):
        from redone.isolate import run_isolated

        return run_isolated(run_stage, config, label=stage)
    return run_stage(config)


def use_stage_processes(top: PipelineConfig) -> bool:
    return top.stage_processes == "always" or (top.stage_processes == "auto" and not launched_as_ranks())


def launched_as_ranks() -> bool:
    # Several ranks (accelerate launch, torchrun) train every stage in their own processes and keep one
    # process group, as a child per rank would have to form a new group per stage.
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def ablation_rows(top: PipelineConfig) -> list[str]:
    """The ablation rows: the configured ones (checked), or every ordered subset of the stages with sft."""
    if top.ablations.rows:
        rows = list(top.ablations.rows)
    else:
        n = len(top.stages)
        subsets = [[s for j, s in enumerate(top.stages) if mask >> j & 1] for mask in range(1, 2 ** n)]
        rows = ["-".join(c) for c in sorted(subsets, key=lambda c: (len(c), [top.stages.index(s) for s in c]))
                if "sft" in c or "sft" not in top.stages]
    for i, row in enumerate(rows):
        chain = row.split("-")
        order = [top.stages.index(s) if s in top.stages else -1 for s in chain]
        if -1 in order or order != sorted(set(order)):
            raise ConfigError(f"ablations.rows[{i}]: '{row}' is not a chain of this pipeline's stages "
                              f"{top.stages} in their order (e.g. 'sft-dpo')")
    if top.ablations.reference not in rows:
        raise ConfigError(f"ablations.reference: '{top.ablations.reference}' is not one of the rows {rows}")
    return rows


# ---------------------------------------------------------------- evaluation of every stage


def evaluate_stages(top: PipelineConfig, finals: dict[str, str], record: dict, log=print) -> dict:
    """Evaluate the skill-free baseline, the base model and each stage's final with one EvalConfig (and
    again per extra prompt style), render the report and write the table into every model card."""
    from redone.card import write_model_card
    from redone.model import resolve_model
    from redone.report import eval_settings, headline, render

    root = Path(top.output_root)
    (root / "eval").mkdir(parents=True, exist_ok=True)
    columns: list[tuple[str, str | None, str | None]] = []  # label, model, fingerprint
    for label in top.eval.models:
        if label == "base":
            columns.append((label, resolve_model(top.model.name_or_path), record.get("base_fingerprint")))
        elif label in finals:
            columns.append((label, finals[label], record["stages"][label]["fingerprint"]))
    skill_free = top.eval.skill_free and "sns-bench" in (top.eval.benches or ["sns-bench"])
    tables = []
    for style in [top.eval.prompt_style, *top.eval.extra_prompt_styles]:
        suffix = "" if style == top.eval.prompt_style else f"@{style}"
        options = dataclasses.replace(top.eval, prompt_style=style)
        results, labels = [], []
        if skill_free:  # no prompts: one skill-free column serves every style
            results.append(cached_eval("skill-free", None, root / "eval" / "skill-free.json",
                                       run_config(top.eval, True), "none", log))
            labels.append("skill-free")
        for label, model, fingerprint in columns:
            results.append(cached_eval(label + suffix, model, root / "eval" / f"{label}{suffix}.json",
                                       run_config(options, False), fingerprint, log))
            labels.append(label + suffix)
        tables.append((style, results, labels))
    table = render(root, record, tables)
    for final in finals.values():
        write_model_card(final, table)
    for style, results, labels in tables:
        log(f"\n[{style} prompts]\n" + "\n".join(eval_settings(results, labels)))
        summary = headline(results, labels)
        if summary:
            log(summary)
    log("\n" + table)
    return {"labels": [label for _, _, labels in tables for label in labels], "table": table,
            "files": sorted(str(p) for p in root.glob("*.png"))}


def run_config(section: EvalConfig, skill_free: bool) -> EvalConfig:
    """The EvalConfig of one column: the section's options; the skill-free column scores no model."""
    fields = {f.name: getattr(section, f.name) for f in dataclasses.fields(EvalConfig)}
    fields["skill_free"] = skill_free
    if skill_free:
        fields["benches"] = [b for b in (section.benches or ["sns-bench", "sns-transbench"])
                             if b in ("sns-bench", "sns-transbench")]
    return EvalConfig(**fields)


def cached_eval(label: str, model: str | None, out: Path, options: EvalConfig, fingerprint: str | None,
                log) -> dict:
    """Evaluate unless a result for the same model fingerprint and options already exists."""
    from redone.eval.runner import load_result, predictions_path, run_eval

    settings = {k: str(v) for k, v in sorted(dataclasses.asdict(options).items()) if k not in ("out", "label")}
    wanted = {"fingerprint": fingerprint, "options": settings}
    stamp = out.with_suffix(".key.json")
    if out.exists() and stamp.exists() and json.loads(stamp.read_text()) == wanted:
        log(f"[pipeline] eval {label}: cached ({out})")
        return load_result(out)
    for stale in (out, predictions_path(str(out)), stamp):  # results of other weights or options
        if stale is not None and stale.exists():
            stale.unlink()
    log(f"[pipeline] eval {label}: {model or 'skill-free baseline'}")
    t0 = time.perf_counter()
    result = run_eval(model, dataclasses.replace(options, out=str(out), label=label))
    stamp.write_text(json.dumps(wanted))
    log(f"[pipeline] eval {label}: {time.perf_counter() - t0:.0f} s")
    return result


# ---------------------------------------------------------------- ablations: one row per recipe


def row_column(top: PipelineConfig, row: str, record: dict) -> tuple[str, dict]:
    """(eval label, stage record) of an ablation row's last stage; main-chain rows reuse the stage column."""
    chain = row.split("-")
    if chain == top.stages[:len(chain)]:
        return chain[-1], record["stages"][chain[-1]]
    return f"ablation-{row}", record["ablations"][row][chain[-1]]


def evaluate_ablations(top: PipelineConfig, rows: list[str], record: dict, log=print) -> dict:
    """Every row evaluated on the same items with the same EvalConfig (cached by weights fingerprint),
    SNS-Bench deltas against the reference row with paired-bootstrap 95% intervals, the table and plot."""
    from redone.report import append_ablations

    root = Path(top.output_root)
    results, other_styles = {}, {}
    for style in [top.eval.prompt_style, *top.eval.extra_prompt_styles]:
        suffix = "" if style == top.eval.prompt_style else f"@{style}"
        options = run_config(dataclasses.replace(top.eval, prompt_style=style), skill_free=False)
        scored = {}
        for row in rows:
            label, info = row_column(top, row, record)
            scored[row] = cached_eval(label + suffix, info["final"], root / "eval" / f"{label}{suffix}.json",
                                      options, info["fingerprint"], log)
        if suffix:
            other_styles[style] = scored
        else:
            results = scored
    deltas = {}
    if top.ablations.bootstrap and all(r.get("sns_bench") for r in results.values()):
        deltas = bootstrap_deltas(top, rows, results, log)
    table = append_ablations(root, rows, results, deltas, top.ablations.reference, other_styles)
    log("\n" + table)
    return {"rows": rows, "deltas": deltas, "table": table}


def bootstrap_deltas(top: PipelineConfig, rows: list[str], results: dict[str, dict], log) -> dict:
    """{row: paired bootstrap of its SNS-Bench average minus the reference row's}."""
    from redone.eval.bootstrap import paired_bootstrap
    from redone.eval.runner import querygen_embedder, resolve_data_dir, sns_bench_items

    options = top.eval
    by_file = sns_bench_items(resolve_data_dir(options.data_dir), options.split, options.files, options.limit,
                              options.subset)
    items = {file: [it.item for it in its] for file, its in by_file.items()}
    embedder, _ = querygen_embedder(options, list(by_file))
    predictions = {row: stored_predictions(results[row], by_file) for row in rows}
    reference = top.ablations.reference
    deltas = {}
    for row in rows:
        if row == reference:
            continue
        t0 = time.perf_counter()
        deltas[row] = paired_bootstrap(predictions[reference], predictions[row], items,
                                       resamples=top.ablations.bootstrap, seed=top.seed,
                                       mode=options.scoring_mode, embedder=embedder)
        log(f"[pipeline] bootstrap {row} vs {reference}: {deltas[row]['delta']:+.2f} "
            f"[{deltas[row]['low']:+.2f}, {deltas[row]['high']:+.2f}] ({time.perf_counter() - t0:.0f} s)")
    return deltas


def stored_predictions(result: dict, by_file: dict) -> dict[str, list[str]]:
    """The SNS-Bench predictions an eval result stored, in the order of ``by_file``'s items."""
    path = Path(result["header"]["predictions_file"])
    stored = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        if line.strip():
            record = json.loads(line)
            stored[record["key"]] = record["prediction"]
    try:
        return {file: [stored[it.key] for it in its] for file, its in by_file.items()}
    except KeyError as missing:
        raise ConfigError(f"ablations: {path} has no prediction for {missing}; delete it to re-evaluate") from None
