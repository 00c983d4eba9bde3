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
- ``train.precision: bf16-master``: the model holds bf16 weights (forward and backward run in bf16 with
  no autocast casts) while ``MasterWeightsAdamW`` keeps an fp32 copy of every weight and steps AdamW on
  those copies, writing the rounded result back into the model after each step. The fp32 copies are
  part of the optimizer's state dict, so a resumed run is bitwise equal to an uninterrupted one, and
  ``final/`` is written from them (fp32, nothing lost to the bf16 rounding).

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


def build_optimizer(model: torch.nn.Module, optim: OptimSection, masters: dict | None = None) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; with ``masters`` (bf16-master) over their fp32 copies."""
    groups = param_groups(model, optim.weight_decay)
    stepped = [masters[p] if masters else p for g in groups for p in g["params"]]
    kwargs = dict(lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                  **implementation_kwargs(optim.implementation, stepped))
    return MasterWeightsAdamW(groups, masters, **kwargs) if masters else torch.optim.AdamW(groups, **kwargs)


def cast_to_bf16_with_masters(model: torch.nn.Module) -> dict[torch.nn.Parameter, torch.Tensor]:
    """Turn every parameter of ``model`` to bf16 in place; return {parameter: its fp32 value before}.

    Only parameters: buffers (rotary frequencies) keep their dtype. Frozen parameters keep an fp32 copy
    too, so ``final/`` holds their exact original values rather than bf16-rounded ones.
    """
    masters = {}
    for param in model.parameters():  # tied weights appear once
        if not torch.is_floating_point(param) or param.dtype == torch.bfloat16:
            raise ConfigError(f"train.precision: bf16-master needs fp32 weights to start from (found {param.dtype})")
        masters[param] = param.data  # the fp32 storage itself: no second fp32 copy of the model
        param.data = param.data.to(torch.bfloat16)
    return masters


class MasterWeightsAdamW(torch.optim.AdamW):
    """AdamW over fp32 master copies of a bf16 model's trainable weights.

    ``step`` copies the model's bf16 gradients into the masters (as fp32), steps AdamW on the masters
    and writes them back rounded to bf16. The masters travel in ``state_dict()`` ("master_weights"), so
    resume restores them exactly; ``load_state_dict`` also refreshes the model's bf16 weights from them.
    """

    def __init__(self, groups: list[dict], masters: dict, **kwargs):
        self.model_params = [p for g in groups for p in g["params"]]
        self.all_masters = masters  # every parameter's fp32 value, trainable or frozen
        master_groups = [dict(g, params=[masters[p] for p in g["params"]]) for g in groups]
        super().__init__(master_groups, **kwargs)
        self.masters = [m for g in self.param_groups for m in g["params"]]

    @torch.no_grad()
    def step(self, closure=None):
        for param, master in zip(self.model_params, self.masters):
            master.grad = None if param.grad is None else param.grad.to(torch.float32)
        loss = super().step(closure)
        for param, master in zip(self.model_params, self.masters):
            param.copy_(master)
            master.grad = None  # the fp32 gradient copy lives only for the step
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for param in self.model_params:
            param.grad = None

    def state_dict(self) -> dict:
        return dict(super().state_dict(), master_weights=[m.detach().clone() for m in self.masters])

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        saved = state_dict.pop("master_weights", None)
        if saved is None or len(saved) != len(self.masters):
            raise ValueError("optimizer state has no fp32 master weights for this model (written with another "
                             "train.precision?)")
        super().load_state_dict(state_dict)
        for param, master, value in zip(self.model_params, self.masters, saved):
            master.copy_(value)
            param.copy_(master)

    @torch.no_grad()
    def restore_fp32(self) -> None:
        """Put the fp32 masters back into the model (before writing final/): the model ends fp32."""
        for param, master in self.all_masters.items():
            param.data = master  # training is over: the model may share the optimizer's storage


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
