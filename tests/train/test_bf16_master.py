"""train.precision=bf16-master: bf16 weights, fp32 masters in the optimizer, exact resume, fp32 final/."""

import copy
import io
import json

import pytest
import torch
from safetensors.torch import load_file

from redone.config.schema import OptimSection
from redone.errors import ConfigError
from redone.model import load_model
from redone.stages import load_config
from redone.train.cpt import CPTStage
from redone.train.loop import run_training
from redone.train.optim import build_optimizer, cast_to_bf16_with_masters
from tests.conftest import cpt_overrides

OPTIM = OptimSection(lr=1e-2, betas=[0.9, 0.95], eps=1e-8, weight_decay=0.1)


def fixed_grads(model, steps: int) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [[torch.randn(p.shape, generator=generator) for p in model.parameters()] for _ in range(steps)]


def test_step_is_adamw_on_the_fp32_masters_rounded_into_the_model(tiny_model_dir):
    """The same bf16 gradients give the masters exactly what fp32 AdamW gives fp32 weights, and the
    model holds those masters rounded to bf16 after every step."""
    model = load_model(str(tiny_model_dir), attn_implementation="sdpa")
    reference = copy.deepcopy(model)
    masters = cast_to_bf16_with_masters(model)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert all(m.dtype == torch.float32 for m in masters.values())
    optimizer = build_optimizer(model, OPTIM, masters)
    ref_optimizer = build_optimizer(reference, OPTIM)
    for grads in fixed_grads(model, 3):
        for p, r, g in zip(model.parameters(), reference.parameters(), grads):
            p.grad, r.grad = g.to(torch.bfloat16), g.to(torch.bfloat16).float()
        optimizer.step()
        ref_optimizer.step()
        optimizer.zero_grad()
        ref_optimizer.zero_grad()
    for p, r in zip(model.parameters(), reference.parameters()):
        assert masters[p].equal(r.detach())
        assert p.detach().equal(r.detach().to(torch.bfloat16))
    assert all(p.grad is None for p in model.parameters())


def test_state_dict_carries_the_masters_and_restores_them(tiny_model_dir):
    model = load_model(str(tiny_model_dir), attn_implementation="sdpa")
    masters = cast_to_bf16_with_masters(model)
    optimizer = build_optimizer(model, OPTIM, masters)
    grads = fixed_grads(model, 4)

    def step(opt, mdl, g):
        for p, grad in zip(mdl.parameters(), g):
            p.grad = grad.to(torch.bfloat16)
        opt.step()
        opt.zero_grad()

    for g in grads[:2]:
        step(optimizer, model, g)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    for g in grads[2:]:
        step(optimizer, model, g)

    fresh = load_model(str(tiny_model_dir), attn_implementation="sdpa")
    fresh_optimizer = build_optimizer(fresh, OPTIM, cast_to_bf16_with_masters(fresh))
    buffer.seek(0)
    fresh_optimizer.load_state_dict(torch.load(buffer, weights_only=True))
    for g in grads[2:]:
        step(fresh_optimizer, fresh, g)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert a.detach().equal(b.detach())
    plain = build_optimizer(load_model(str(tiny_model_dir), attn_implementation="sdpa"), OPTIM)
    with pytest.raises(ValueError, match="master weights"):
        fresh_optimizer.load_state_dict(plain.state_dict())


def test_refuses_weights_that_are_already_bf16(tiny_model_dir):
    model = load_model(str(tiny_model_dir), attn_implementation="sdpa", dtype=torch.bfloat16)
    with pytest.raises(ConfigError, match="bf16-master needs fp32 weights"):
        cast_to_bf16_with_masters(model)


def train(tiny_model_dir, out, cache, **extra):
    overrides = {"train.precision": "bf16-master", "model.freeze_bottom_layers": 1, **extra}
    return run_training(load_config("cpt", None, cpt_overrides(tiny_model_dir, out, cache, **overrides)), CPTStage)


def step_losses(out):
    return [json.loads(line)["loss"] for line in (out / "step_loss.jsonl").read_text().splitlines()]


def test_run_resumes_bitwise_and_writes_fp32_final(tiny_model_dir, tmp_path):
    full = train(tiny_model_dir, tmp_path / "full", str(tmp_path / "cache"))
    out = tmp_path / "resumed"
    assert train(tiny_model_dir, out, str(tmp_path / "cache"), **{"train.stop_after_steps": 3}) is None
    checkpoint = load_file(out / "checkpoints" / "step-3" / "model.safetensors")
    assert {t.dtype for t in checkpoint.values()} == {torch.bfloat16}  # the model trains in bf16
    resumed = train(tiny_model_dir, out, str(tmp_path / "cache"))
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].equal(b[key]), key
    assert step_losses(out) == step_losses(tmp_path / "full")
    assert step_losses(out)[-1] < step_losses(out)[0]
    # final/ comes from the fp32 masters: fp32 throughout, frozen layer 0 exactly as it started, the
    # trained layers off the bf16 grid (values a bf16 copy could not hold).
    start = load_file(tiny_model_dir / "model.safetensors")
    assert {t.dtype for t in a.values()} == {torch.float32}
    frozen = [k for k in a if k.startswith("model.layers.0.")]
    assert frozen and all(a[k].equal(start[k]) for k in frozen)
    trained = a["model.layers.1.mlp.down_proj.weight"]
    assert not trained.equal(start["model.layers.1.mlp.down_proj.weight"])
    assert not trained.equal(trained.to(torch.bfloat16).float())


def test_unknown_precision_is_refused_naming_the_key(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="train.precision"):
        load_config("cpt", None, cpt_overrides(tiny_model_dir, tmp_path / "o", str(tmp_path / "c"),
                                               **{"train.precision": "bf16-true"}))
