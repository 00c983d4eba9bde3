"""AdamW with decoupled weight decay (none on biases and norms) and a warmup + decay schedule."""

from __future__ import annotations

import math

import torch

from redone.config.schema import OptimSection


def build_optimizer(model: torch.nn.Module, optim: OptimSection) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # 1-D tensors are norms and biases: decaying them only fights the normalisation.
        (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # foreach=False keeps the update order fixed, which the bitwise resume test relies on.
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=optim.lr, betas=tuple(optim.betas),
                             eps=optim.eps, foreach=False)


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
