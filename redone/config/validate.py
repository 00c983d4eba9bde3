"""Cross-field checks, one small named function each; ``validate`` runs them all in order.

Each check raises ``ConfigError`` naming the offending key; none of them mutates the config.
"""

from __future__ import annotations

import difflib
import re

from redone.config.schema import (
    BACKENDS,
    BENCHES,
    DTYPES,
    FILTER_NAMES,
    SCORING_MODES,
    SCRIPTS,
    SKILL_FREE_BENCHES,
    SUBSETS,
    EvalConfig,
    PipelineEvalConfig,
    QualityDecontam,
    QualityDedup,
    QualityFilters,
    RunConfig,
)
from redone.errors import ConfigError


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: '{value}' is not one of {', '.join(map(str, allowed))}")


def check_sources(config: RunConfig) -> None:
    sources = config.data.sources
    if not sources:
        raise ConfigError("data.sources: at least one data source is required")
    names = [s.name for s in sources if s.name]
    for i, source in enumerate(sources):
        if not str(source.path).strip():
            raise ConfigError(f"data.sources[{i}].path: must name a file, folder or hub dataset (got '')")
        # inf/nan would give every other source a zero (or NaN) share: weights are finite and positive.
        if not 0 < source.weight < float("inf"):  # false for nan too
            raise ConfigError(f"data.sources[{i}].weight: must be > 0 and finite (got {source.weight})")
        if source.limit is not None and source.limit <= 0:
            raise ConfigError(f"data.sources[{i}].limit: must be positive (got {source.limit})")
        _one_of(f"data.sources[{i}].text_unit", source.text_unit, ("paragraph", "line", "file"))
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ConfigError(f"data.sources: duplicate source name(s) {sorted(duplicates)}")


def check_mixing(config: RunConfig) -> None:
    _one_of("data.mixing", config.data.mixing, ("ratio", "temperature"))
    if config.data.temperature <= 0:
        raise ConfigError(f"data.temperature: must be > 0 (got {config.data.temperature})")
    if config.stage == "cpt" and config.data.mixing == "ratio" and config.data.temperature != 1.0:
        # A CPT source is one component: there is nothing inside it for a temperature to split.
        raise ConfigError("data.temperature: only used with data.mixing=temperature in CPT "
                          f"(got {config.data.temperature} with mixing=ratio)")


def check_lengths(config: RunConfig) -> None:
    if config.data.seq_len < 8:
        raise ConfigError(f"data.seq_len: must be at least 8 (got {config.data.seq_len})")
    if config.data.num_proc < 1:
        raise ConfigError(f"data.num_proc: must be >= 1 (got {config.data.num_proc})")


def check_sft_data(config: RunConfig) -> None:
    if config.stage not in ("sft", "dpo"):
        return
    _one_of("data.loss_on", config.data.loss_on, ("assistant", "all"))
    _one_of("data.overlong", config.data.overlong, ("truncate_prompt", "drop", "error"))
    _one_of("data.prompt_style", config.data.prompt_style, ("redone", "official", "mixed"))
    if not 0.0 <= config.data.official_share <= 1.0:
        raise ConfigError(f"data.official_share: must be in [0, 1] (got {config.data.official_share})")
    check_quality_decontam(config.data.decontam, "data.decontam")


def check_optim(config: RunConfig) -> None:
    optim = config.optim
    if optim.lr <= 0:
        raise ConfigError(f"optim.lr: must be > 0 (got {optim.lr})")
    _one_of("optim.scheduler", optim.scheduler, ("cosine", "linear", "constant"))
    if not 0 <= optim.warmup_ratio < 1:
        raise ConfigError(f"optim.warmup_ratio: must be in [0, 1) (got {optim.warmup_ratio})")
    if optim.warmup_steps and optim.warmup_ratio:
        raise ConfigError("optim.warmup_steps: set either warmup_steps or warmup_ratio, not both")
    if not 0 <= optim.min_lr_ratio <= 1:
        raise ConfigError(f"optim.min_lr_ratio: must be in [0, 1] (got {optim.min_lr_ratio})")
    if len(optim.betas) != 2 or not all(0 <= b < 1 for b in optim.betas):
        raise ConfigError(f"optim.betas: need two values in [0, 1) (got {list(optim.betas)})")
    _one_of("optim.implementation", optim.implementation, ("fused", "foreach", "loop"))


def check_train(config: RunConfig) -> None:
    train = config.train
    for key in ("max_steps", "micro_batch_size", "grad_accum", "log_every", "save_every", "keep_last"):
        if getattr(train, key) < 1:
            raise ConfigError(f"train.{key}: must be >= 1 (got {getattr(train, key)})")
    _one_of("train.precision", train.precision, ("auto", "fp32", "bf16", "bf16-master"))
    resume = train.resume
    if not (resume is False or resume is None or isinstance(resume, str)):
        raise ConfigError(f"train.resume: must be auto, false or a checkpoint path (got {resume!r})")


def check_model(config: RunConfig) -> None:
    _one_of("model.attn_implementation", config.model.attn_implementation,
            ("auto", "sdpa", "sdpa_segments", "eager", "flash_attention_2"))
    if config.model.freeze_bottom_layers < 0:
        raise ConfigError(f"model.freeze_bottom_layers: must be >= 0 (got {config.model.freeze_bottom_layers})")
    if config.model.freeze_bottom_layers and config.model.lora.enabled:
        raise ConfigError("model.freeze_bottom_layers: not combinable with model.lora (LoRA already freezes the base)")
    lora = config.model.lora
    if lora.enabled and (lora.r < 1 or lora.alpha <= 0):
        raise ConfigError(f"model.lora.r: r must be >= 1 and alpha > 0 (got r={lora.r}, alpha={lora.alpha})")


def check_tracking(config: RunConfig) -> None:
    for i, target in enumerate(config.tracking.report_to):
        _one_of(f"tracking.report_to[{i}]", target, ("wandb", "tensorboard"))
    _one_of("tracking.wandb_mode", config.tracking.wandb_mode, ("offline", "online", "disabled"))


def check_dpo(config: RunConfig) -> None:
    if config.stage != "dpo":
        return
    dpo = config.dpo
    if dpo.beta <= 0:
        raise ConfigError(f"dpo.beta: must be > 0 (got {dpo.beta})")
    _one_of("dpo.loss_type", dpo.loss_type, ("sigmoid", "ipo"))
    if not 0 <= dpo.label_smoothing < 0.5:
        raise ConfigError(f"dpo.label_smoothing: must be in [0, 0.5) (got {dpo.label_smoothing})")
    if dpo.label_smoothing and dpo.loss_type == "ipo":
        raise ConfigError("dpo.label_smoothing: only applies to loss_type sigmoid")
    if dpo.nll_weight < 0:
        raise ConfigError(f"dpo.nll_weight: must be >= 0 (got {dpo.nll_weight})")


def check_dpo_data(config: RunConfig) -> None:
    if config.stage != "dpo":
        return
    data = config.data
    _one_of("data.bad_pairs", data.bad_pairs, ("drop", "error"))
    if data.pairs_per_item < 1:
        raise ConfigError(f"data.pairs_per_item: must be >= 1 (got {data.pairs_per_item})")
    if data.sample_rejected < 0 or data.sample_max_new_tokens < 1:
        raise ConfigError("data.sample_rejected: must be >= 0 and data.sample_max_new_tokens >= 1 "
                          f"(got {data.sample_rejected}, {data.sample_max_new_tokens})")
    if data.loss_on != "assistant":
        raise ConfigError("data.loss_on: dpo scores the completion only; 'all' does not apply")


_FILTERS = "data.quality.filters"
_DEDUP = "data.quality.dedup"
_DECONTAM = "data.quality.decontam"
SHINGLE = re.compile(r"(word|char)(\d+)")


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {message}")


def check_quality_filters(f: QualityFilters) -> None:
    _require(f.min_chars >= 0, f"{_FILTERS}.min_chars", "must be >= 0")
    _require(f.max_chars > f.min_chars, f"{_FILTERS}.max_chars", "must be > min_chars")
    for name in ("max_symbol_ratio", "max_repeated_line_ratio", "max_ngram_repetition", "min_script_share"):
        _require(0.0 <= getattr(f, name) <= 1.0, f"{_FILTERS}.{name}", "must be in [0, 1]")
    _require(f.ngram_repetition_n >= 1, f"{_FILTERS}.ngram_repetition_n", "must be >= 1")
    _require(f.script in SCRIPTS, f"{_FILTERS}.script", f"must be one of {', '.join(SCRIPTS)}")
    # A script filter with share 0 would run and drop nothing: a setting the code ignores.
    _require(f.script == "any" or f.min_script_share > 0, f"{_FILTERS}.min_script_share",
             f"must be > 0 when script is {f.script!r}")
    for name in f.enabled or ():
        _require(name in FILTER_NAMES, f"{_FILTERS}.enabled",
                 f"has unknown filter {name!r} (known: {', '.join(FILTER_NAMES)})")
    switches = (("url_only", "drop_url_only", f.drop_url_only),
                ("hashtag_only", "drop_hashtag_only", f.drop_hashtag_only),
                ("script", "script", f.script != "any"))
    for name, switch, on in switches:
        _require(f.enabled is None or name not in f.enabled or on, f"{_FILTERS}.enabled",
                 f"lists {name!r} but {_FILTERS}.{switch} switches it off")


def check_quality_dedup(d: QualityDedup) -> None:
    _require(0.0 < d.threshold <= 1.0, f"{_DEDUP}.threshold", "must be in (0, 1]")
    _require(d.num_perm >= 16, f"{_DEDUP}.num_perm", "must be >= 16")
    _require(d.seed >= 0, f"{_DEDUP}.seed", "must be >= 0")
    match = SHINGLE.fullmatch(d.shingle)
    _require(match is not None and int(match.group(2)) >= 1, f"{_DEDUP}.shingle",
             f"must look like 'word3' or 'char5', got {d.shingle!r}")


def check_quality_decontam(d: QualityDecontam, prefix: str = _DECONTAM) -> None:
    _require(d.ngram >= 1, f"{prefix}.ngram", "must be >= 1")
    _require(d.min_overlap >= 1, f"{prefix}.min_overlap", "must be >= 1")
    _require(1 <= d.min_item_tokens <= d.ngram, f"{prefix}.min_item_tokens", "must be in [1, ngram]")
    _require(d.boilerplate_min_items == 0 or d.boilerplate_min_items >= 2, f"{prefix}.boilerplate_min_items",
             "must be 0 (off) or >= 2")


def check_quality(config: RunConfig) -> None:
    """data.quality values (cpt); eval set files are checked when the data is prepared (so that
    ``config show`` works from any dir)."""
    if config.stage != "cpt" or not config.data.quality.enabled:
        return
    check_quality_filters(config.data.quality.filters)
    check_quality_dedup(config.data.quality.dedup)
    check_quality_decontam(config.data.quality.decontam)


def check_rl(config: RunConfig) -> None:
    """rl: the data keys, the batch shape (whole groups per process), the algorithm and the sampler."""
    if config.stage != "rl":
        return
    data = config.data
    _one_of("data.prompt_style", data.prompt_style, ("redone", "official", "mixed"))
    if not 0.0 <= data.official_share <= 1.0:
        raise ConfigError(f"data.official_share: must be in [0, 1] (got {data.official_share})")
    check_quality_decontam(data.decontam, "data.decontam")
    _one_of("data.overlong", data.overlong, ("drop", "error"))
    if data.eval_holdout < 0:
        raise ConfigError(f"data.eval_holdout: must be >= 0 (got {data.eval_holdout})")
    _check_rl_batch(config.rl, config.train)
    _check_rl_algorithm(config.rl)
    _check_rl_sampling(config.rl)


def _check_rl_batch(rl, train) -> None:
    if rl.group_size < 2:
        raise ConfigError(f"rl.group_size: must be >= 2 (got {rl.group_size}): advantages are rewards minus "
                          "the mean of the prompt's group, so a group of one has advantage 0 and nothing is learnt")
    if (train.micro_batch_size * train.grad_accum) % rl.group_size:
        raise ConfigError(f"train.micro_batch_size: micro_batch_size x grad_accum ({train.micro_batch_size} x "
                          f"{train.grad_accum}) completions per process and step must be a multiple of "
                          f"rl.group_size ({rl.group_size}): a step trains whole groups")
    if rl.updates_per_batch < 1:
        raise ConfigError(f"rl.updates_per_batch: must be >= 1 (got {rl.updates_per_batch})")
    for key in ("save_every", "log_every", "stop_after_steps"):
        value = getattr(train, key)
        if value and value % rl.updates_per_batch:
            # Checkpoints and per-task metrics fall on generation-batch boundaries.
            raise ConfigError(f"train.{key}: must be a multiple of rl.updates_per_batch ({rl.updates_per_batch}), "
                              f"got {value}")


def _check_rl_algorithm(rl) -> None:
    _one_of("rl.loss_type", rl.loss_type, ("grpo", "dapo", "dr_grpo"))
    for name in rl.rewards:
        if ":" not in name and name not in ("task", "format"):
            close = difflib.get_close_matches(name, ["task", "format"], n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else " (built-ins: task, format; or module:function)"
            raise ConfigError(f"rl.rewards: unknown reward '{name}'{hint}")
    if rl.reward_weights and len(rl.reward_weights) != len(rl.rewards):
        raise ConfigError(f"rl.reward_weights: {len(rl.reward_weights)} weights for {len(rl.rewards)} rewards")
    _one_of("rl.scale_rewards", rl.scale_rewards, ("auto", "group", "batch", "none"))
    if not (0 <= rl.epsilon_low < 1 and rl.epsilon_high >= 0):
        raise ConfigError(f"rl.epsilon_low: need 0 <= epsilon_low < 1 and epsilon_high >= 0 "
                          f"(got {rl.epsilon_low}, {rl.epsilon_high})")
    if rl.max_refill_rounds < 0:
        raise ConfigError(f"rl.max_refill_rounds: must be >= 0 (got {rl.max_refill_rounds})")
    _one_of("rl.overlong", rl.overlong, ("soft", "mask", "none"))
    if not 0 < rl.overlong_buffer <= 1 or rl.overlong_penalty < 0:
        raise ConfigError(f"rl.overlong_buffer: must be in (0, 1] with overlong_penalty >= 0 "
                          f"(got {rl.overlong_buffer}, {rl.overlong_penalty})")
    if rl.kl_beta < 0:
        raise ConfigError(f"rl.kl_beta: must be >= 0 (got {rl.kl_beta})")


def _check_rl_sampling(rl) -> None:
    if not rl.temperature > 0 or not 0 < rl.top_p <= 1 or rl.top_k < 0:
        raise ConfigError(f"rl.temperature: need temperature > 0, 0 < top_p <= 1, top_k >= 0 "
                          f"(got {rl.temperature}, {rl.top_p}, {rl.top_k})")
    if rl.max_new_tokens is not None and rl.max_new_tokens < 1:
        raise ConfigError(f"rl.max_new_tokens: must be >= 1 or null (got {rl.max_new_tokens})")
    if rl.generation_batch_size < 1:
        raise ConfigError(f"rl.generation_batch_size: must be >= 1 (got {rl.generation_batch_size})")
    _one_of("rl.backend", rl.backend, ("auto", "hf", "vllm"))
    if not 0 < rl.vllm_gpu_memory_utilization < 1:
        raise ConfigError(f"rl.vllm_gpu_memory_utilization: must be in (0, 1) (got {rl.vllm_gpu_memory_utilization})")


def _choice(key: str, value, choices) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f" (choose from {', '.join(map(str, choices))})"
        raise ConfigError(f"{key}: unknown value {value!r}{hint}")


def check_eval(cfg: EvalConfig, prefix: str = "eval") -> None:
    """Every eval option, before any model is loaded (the pipeline checks it before training)."""
    from redone.sns.scoring import SNS_FILES
    from redone.sns.tasks import STYLES

    for bench in cfg.benches:
        _choice(f"{prefix}.benches", bench, BENCHES)
    if cfg.skill_free and not isinstance(cfg, PipelineEvalConfig):
        extra = [b for b in cfg.benches if b not in SKILL_FREE_BENCHES]
        _require(not extra, f"{prefix}.benches", f"has {', '.join(extra)}: the skill-free baseline is no model")
    _choice(f"{prefix}.prompt_style", cfg.prompt_style, STYLES)
    for style in getattr(cfg, "extra_prompt_styles", ()):
        _choice(f"{prefix}.extra_prompt_styles", style, STYLES)
    _choice(f"{prefix}.scoring_mode", cfg.scoring_mode, SCORING_MODES)
    _choice(f"{prefix}.subset", cfg.subset, SUBSETS)
    _choice(f"{prefix}.dtype", cfg.dtype, DTYPES)
    _choice(f"{prefix}.backend", cfg.backend, BACKENDS)
    _choice(f"{prefix}.embedder", cfg.embedder, ("auto", "none"))
    for file in cfg.files:
        _choice(f"{prefix}.files", file, SNS_FILES)
    for name in ("batch_size", "ppl_max_tokens", "ppl_context", "pref_pairs"):
        _require(getattr(cfg, name) >= 1, f"{prefix}.{name}", f"must be >= 1, got {getattr(cfg, name)}")
    for name in ("limit", "max_prompt_chars"):
        value = getattr(cfg, name)
        _require(value is None or value >= 1, f"{prefix}.{name}", f"must be >= 1 (or unset), got {value}")
    cap = cfg.max_new_tokens_cap
    _require(cap is None or cap >= 0, f"{prefix}.max_new_tokens_cap", f"must be >= 0, got {cap}")


CHECKS = (check_sources, check_mixing, check_lengths, check_sft_data, check_optim, check_train,
          check_model, check_tracking, check_dpo, check_dpo_data, check_quality, check_rl)


def validate(config: RunConfig) -> None:
    for check in CHECKS:
        check(config)
