"""AdamW with decoupled weight decay (none on biases and norms) and a warmup + decay schedule.

Features
- ``optim.implementation`` picks torch's AdamW kernel: ``fused`` (default; one fused kernel per
  parameter group, on CPU as well as CUDA since torch 2.4 -- the default of HF Trainer and TRL),
  ``foreach`` (multi-tensor ops) or ``loop`` (the per-parameter reference loop). All three compute the
  same update; fused is ~4-5x faster on CPU for SmolLM2 (docs/BENCHMARKS.md).
- Every implementation is deterministic for a given thread count, so a resumed run still equals an
  uninterrupted one bitwise (tests/train/test_cpt_resume.py): the fused CPU kernel parallelises over
  chunks of each tensor, and every element's update reads only that element's own values.
- Parameter groups: weight decay on matrices only; 1-D tensors (norms, biases) are never decayed.
- Schedule: linear warmup, then cosine, linear or constant, down to ``min_lr_ratio`` of the peak.

Errors: ``ConfigError`` for an implementation the parameters' device cannot run (fused needs every
parameter on a device torch has a fused AdamW kernel for, in a floating dtype).
"""

from __future__ import annotations

import math

import torch

from redone.config.schema import OptimSection
from redone.errors import ConfigError

IMPLEMENTATIONS = ("fused", "foreach", "loop")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into a decayed group (matrices) and an undecayed one (norms, biases)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # 1-D tensors are norms and biases: decaying them only fights the normalisation.
        (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def implementation_kwargs(implementation: str, params: list[torch.Tensor]) -> dict:
    """The AdamW keyword that selects the kernel; refuses fused where torch has no fused kernel."""
    if implementation == "loop":
        return {"foreach": False, "fused": False}
    if implementation == "foreach":
        return {"foreach": True, "fused": False}
    if implementation != "fused":
        raise ConfigError(f"optim.implementation: '{implementation}' is not one of {', '.join(IMPLEMENTATIONS)}")
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    supported = _get_fused_kernels_supported_devices()
    for param in params:
        if param.device.type not in supported or not torch.is_floating_point(param):
            raise ConfigError(f"optim.implementation: fused AdamW has no kernel for a {param.dtype} parameter on "
                              f"{param.device.type}; set optim.implementation=foreach")
    return {"foreach": False, "fused": True}


def build_optimizer(model: torch.nn.Module, optim: OptimSection) -> torch.optim.Optimizer:
    groups = param_groups(model, optim.weight_decay)
    kwargs = implementation_kwargs(optim.implementation, [p for g in groups for p in g["params"]])
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, **kwargs)


def warmup_steps(optim: OptimSection, max_steps: int) -> int:
    return optim.warmup_steps or int(round(optim.warmup_ratio * max_steps))


def lr_factor(step: int, optim: OptimSection, max_steps: int) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based)."""
    warm = warmup_steps(optim, max_steps)
    if step < warm:
        return (step + 1) / warm
    if optim.scheduler == "constant":
        return 1.0
    progress = min(1.0, (step - warm) / max(1, max_steps - warm))
    floor = optim.min_lr_ratio
    if optim.scheduler == "linear":
        return floor + (1 - floor) * (1 - progress)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimSection, max_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, optim, max_steps))
