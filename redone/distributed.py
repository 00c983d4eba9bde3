"""Scale-out helpers: which engine accelerate picked, DeepSpeed "auto" values, ZeRO-3 model construction.

Features
- ``zero_stage(accelerator)`` / ``is_zero3(accelerator)``: the DeepSpeed ZeRO stage accelerate selected
  (0 when DeepSpeed is off), so the loop can branch in one named place.
- ``configure_deepspeed(accelerator, config)``: fills every ``"auto"`` of the DeepSpeed
  config (``configs/deepspeed/*.json``) from the redone config -- micro batch, grad accumulation, global
  batch, grad clipping, bf16, the bucket sizes that depend on the hidden size, gather-on-save -- and refuses
  explicit values that contradict redone's (a silent mismatch would change what a step means). Under
  ZeRO-3 it then keeps a live ``transformers.integrations.HfDeepSpeedConfig`` holding the filled config:
  transformers sees it through a weak reference and builds the model under ``deepspeed.zero.Init``, so
  each rank only ever materialises its shard of the weights.
- ``whole_parameters(model)``: a context in which a zero.Init-built model holds whole parameters on
  every rank (the DPO reference pass before training); a no-op for unpartitioned models.
- ``is_partitioned(model)`` and ``zero3_init_disabled()``: the LoRA merge at the end of a ZeRO-3 run
  reloads the base whole on the main process instead of touching the sharded live modules; DPO's
  rejected-answer sampler and separate reference model load whole copies the same way.
- ``end_run(accelerator)``: the end of one stage (trackers finished, process group kept for the next
  stage of a pipeline in the same processes, destroyed at exit).
- ``local_numel`` / ``full_numel``: parameter counts on this rank vs the whole model (ZeRO-3 shards have
  local numel 0 outside forward/backward).

Why the client optimizer: redone passes its own torch AdamW (and LambdaLR schedule) through accelerate,
so the DeepSpeed JSONs carry no ``optimizer``/``scheduler`` sections and the update rule is the same in
every engine. With CPU offload accelerate swaps that AdamW for DeepSpeed's CPUAdam (same hyperparameters,
per-group betas/eps kept) unless ``zero_force_ds_cpu_optimizer`` is false.

Gradient accumulation under DeepSpeed: accelerate hands ``gradient_accumulation_steps`` to the engine,
whose ``backward`` divides the loss by it (accelerate itself divides only for the other engines), and
the engine averages gradients over ranks like DDP; the loop's ``world * grad_accum / units`` scale is
therefore correct for both.

Errors: ``ConfigError`` when the DeepSpeed config contradicts the redone config (batch, accumulation,
clipping, precision) or disables the 16-bit gather ZeRO-3 needs to write ``final/``.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from redone.errors import ConfigError

AUTO = "auto"
# Explicit values for these keys must equal what redone computes (they change what a step means); when
# missing they are added (DeepSpeed's own defaults would differ, e.g. no clipping at all).
STRICT_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
               "gradient_clipping", "bf16.enabled", "fp16.enabled")
GATHER_KEY = "zero_optimization.stage3_gather_16bit_weights_on_model_save"
ADD_IF_MISSING = STRICT_KEYS + (GATHER_KEY,)

# Keeps the filled HfDeepSpeedConfig alive: transformers only holds a weak reference to it.
_LIVE_HF_DS_CONFIG: list[Any] = []


def resolve_precision(requested: str) -> str:
    """``train.precision: auto`` -> bf16 where the GPU supports it, else fp32; explicit values pass."""
    if requested == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return requested


def deepspeed_plugin(accelerator):
    """The active DeepSpeedPlugin, or None when accelerate runs another engine."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return None
    return accelerator.state.deepspeed_plugin


def zero_stage(accelerator) -> int:
    plugin = deepspeed_plugin(accelerator)
    return int(plugin.zero_stage or 0) if plugin is not None else 0


def is_zero3(accelerator) -> bool:
    return zero_stage(accelerator) == 3


def redone_values(config, world_size: int, hidden_size: int | None, bf16: bool) -> dict[str, Any]:
    """The DeepSpeed config values implied by a redone config (dotted keys)."""
    train = config.train
    values = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.micro_batch_size * train.grad_accum * world_size,
        "gradient_clipping": config.optim.max_grad_norm,
        "bf16.enabled": bf16,
        "fp16.enabled": False,
        # ZeRO-3 keeps no whole weights anywhere: final/ needs them gathered on save (ignored by ZeRO-1/2).
        GATHER_KEY: True,
    }
    if hidden_size:  # the same formulas accelerate uses; zero.Init needs them before prepare()
        values.update({
            "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
            "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
            "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
        })
    return values


def _node(config: dict, dotted: str, create: bool = False):
    *parents, leaf = dotted.split(".")
    for part in parents:
        if part not in config:
            if not create:
                return None, leaf
            config[part] = {}
        config = config[part]
    return config, leaf


def fill_auto(ds_config: dict, values: dict[str, Any]) -> list[str]:
    """Replace ``"auto"`` (in place) at each dotted key with redone's value; list contradictions.

    Missing keys are added for the batch/accumulation/clipping/precision entries and the ZeRO-3 gather
    (ADD_IF_MISSING); other missing keys (bucket sizes) keep DeepSpeed's defaults. A contradiction is an
    explicit value of a STRICT key that differs from redone's.
    """
    mismatches = []
    for key, value in values.items():
        node, leaf = _node(ds_config, key, create=key in ADD_IF_MISSING)
        if node is None or (leaf not in node and key not in ADD_IF_MISSING):
            continue
        current = node.get(leaf, AUTO)
        if current == AUTO:
            node[leaf] = value
        elif key in STRICT_KEYS and _differs(current, value):
            mismatches.append(f"{key}={current!r} in the DeepSpeed config, but redone's config implies {value!r}")
    return mismatches


def _differs(a, b) -> bool:
    if isinstance(b, bool) or isinstance(a, bool):
        return str(a).lower() != str(b).lower()
    if isinstance(b, float) or isinstance(a, float):
        return abs(float(a) - float(b)) > 1e-12
    return a != b


def check_zero3_gather(ds_config: dict) -> None:
    zero = ds_config.get("zero_optimization", {})
    if int(zero.get("stage", 0)) == 3 and zero.get(GATHER_KEY.split(".")[1]) is False:
        raise ConfigError("deepspeed: zero_optimization.stage3_gather_16bit_weights_on_model_save is false; "
                          "redone needs it (or 'auto') to gather ZeRO-3 shards into output_dir/final")


def configure_deepspeed(accelerator, config) -> None:
    """Fill the active DeepSpeed config from ``config``; under ZeRO-3 arm zero.Init for the next load.

    Call on every rank after the Accelerator exists and before the model is built (no-op without
    DeepSpeed).
    """
    from transformers import AutoConfig

    from redone.model import resolve_model

    plugin = deepspeed_plugin(accelerator)
    if plugin is None:
        return
    ds_config = plugin.deepspeed_config
    # A pipeline runs several stages in one process on the same plugin: each stage refills the user's
    # config as first read (its "auto"s), not the values the previous stage wrote into it.
    if not hasattr(plugin, "_redone_pristine"):
        plugin._redone_pristine = copy.deepcopy(ds_config)
    ds_config.clear()
    ds_config.update(copy.deepcopy(plugin._redone_pristine))
    model_config = AutoConfig.from_pretrained(resolve_model(config.model.name_or_path),
                                              trust_remote_code=config.model.trust_remote_code)
    hidden = getattr(model_config, "hidden_size", None)
    bf16 = resolve_precision(config.train.precision) == "bf16"
    mismatches = fill_auto(ds_config, redone_values(config, accelerator.num_processes, hidden, bf16))
    if mismatches:
        raise ConfigError("deepspeed: the DeepSpeed config contradicts the redone config (set these to "
                          "'auto' so redone fills them):\n  " + "\n  ".join(mismatches))
    check_zero3_gather(ds_config)
    if int(ds_config.get("zero_optimization", {}).get("stage", 0)) == 3:
        keep_zero3_init_config(ds_config)


def keep_zero3_init_config(ds_config: dict):
    """Register (and keep alive) an HfDeepSpeedConfig: transformers then loads under zero.Init."""
    from transformers.integrations import HfDeepSpeedConfig, is_deepspeed_zero3_enabled

    live = HfDeepSpeedConfig(copy.deepcopy(ds_config))  # registers itself as transformers' weakref target
    _LIVE_HF_DS_CONFIG[:] = [live]
    if not is_deepspeed_zero3_enabled():  # pragma: no cover - a transformers API change
        raise RuntimeError("transformers did not pick up the ZeRO-3 config (zero.Init would be skipped)")
    return live


def whole_parameters(model):
    """Inside the block a ZeRO-3-partitioned model (built under zero.Init, not yet wrapped by the engine)
    holds whole parameters on every rank and runs forward like a plain module; no-op otherwise.

    Collective: every rank must enter it. Costs one full copy of the weights per rank while it lasts --
    used for the one no-grad DPO reference pass before training.
    """
    if not is_partitioned(model):
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)


def is_partitioned(model) -> bool:
    """True when the model's parameters are ZeRO-3 shards (built under zero.Init / wrapped by the engine)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


@contextmanager
def zero3_init_disabled():
    """Inside the block transformers loads models whole even while a ZeRO-3 config is live.

    Used to rebuild the base for the LoRA merge at the end of a ZeRO-3 run (main process) and for the
    models DPO samples rejected answers from or takes its reference from (before training). Afterwards
    redone's own filled config is registered again (``configure_deepspeed`` registers it before any
    model is built under zero.Init, so accelerate's earlier registration need not be restored).
    """
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if _LIVE_HF_DS_CONFIG:
            set_hf_deepspeed_config(_LIVE_HF_DS_CONFIG[0])


def local_numel(model) -> int:
    """Elements this rank holds right now (0 for ZeRO-3-partitioned parameters outside forward)."""
    return sum(p.numel() for p in model.parameters())


def full_numel(model) -> int:
    """Elements of the whole model (``ds_numel`` for ZeRO-3 parameters)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def end_run(accelerator) -> None:
    """End of one stage: finish the trackers but keep the process group alive.

    ``accelerator.end_training()`` would destroy it, and a pipeline runs its next stage in the same
    processes. The group is destroyed once, at interpreter exit (a gloo group left undestroyed makes
    some runs abort at exit).
    """
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:
        tracker.finish()
    # Drop the accelerator's references (DeepSpeed: engine.destroy()) so the next stage's model does
    # not share the GPU with this one's weights and optimizer states.
    accelerator.free_memory()
    _destroy_process_group_at_exit()


_EXIT_HOOK: list = []


def _destroy_process_group_at_exit() -> None:
    if _EXIT_HOOK:
        return
    import atexit

    import torch.distributed as dist

    def destroy() -> None:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    atexit.register(destroy)
    _EXIT_HOOK.append(destroy)
