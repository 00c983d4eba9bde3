"""Cross-field checks, one small named function each; ``validate`` runs them all in order.

Each check raises ``ConfigError`` naming the offending key; none of them mutates the config.
"""

from __future__ import annotations

from redone.config.schema import RunConfig
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
        if not (source.weight > 0):
            raise ConfigError(f"data.sources[{i}].weight: must be > 0 (got {source.weight})")
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
    _one_of("data.prompt_style", config.data.prompt_style, ("redone", "official"))


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


def check_train(config: RunConfig) -> None:
    train = config.train
    for key in ("max_steps", "micro_batch_size", "grad_accum", "log_every", "save_every", "keep_last"):
        if getattr(train, key) < 1:
            raise ConfigError(f"train.{key}: must be >= 1 (got {getattr(train, key)})")
    _one_of("train.precision", train.precision, ("auto", "fp32", "bf16"))
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


def check_quality(config: RunConfig) -> None:
    """data.quality values (cpt), checked by the curation configs themselves; eval set files are
    checked when the data is prepared (``config show`` works from any dir)."""
    if config.stage != "cpt":
        return
    from redone.data.prepare import quality_configs

    quality_configs(config.data.quality, check_files=False)


CHECKS = (check_sources, check_mixing, check_lengths, check_sft_data, check_optim, check_train,
          check_model, check_tracking, check_dpo, check_dpo_data, check_quality)


def validate(config: RunConfig) -> None:
    for check in CHECKS:
        check(config)
