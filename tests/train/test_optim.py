"""AdamW as redone builds it: fused by default, same update as the reference loop, decay groups, config keys."""

import copy
import io

import pytest
import torch

from redone.config.schema import OptimSection
from redone.errors import ConfigError
from redone.model import load_model
from redone.stages import load_config
from redone.train.optim import build_optimizer, param_groups
from tests.conftest import cpt_overrides

LR, BETAS, EPS, DECAY = 1e-2, (0.9, 0.95), 1e-8, 0.1


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return load_model(str(tiny_model_dir), attn_implementation="sdpa")


def gradient_sequence(model, steps: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Fixed per-step gradients, so every implementation sees the same inputs (no forward noise)."""
    generator = torch.Generator().manual_seed(seed)
    return [{name: torch.randn(p.shape, generator=generator) for name, p in model.named_parameters()}
            for _ in range(steps)]


def train_with(model, optimizer, grads: list[dict[str, torch.Tensor]]) -> None:
    params = dict(model.named_parameters())
    for step_grads in grads:
        for name, grad in step_grads.items():
            if params[name].requires_grad:
                params[name].grad = grad.clone()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def reference_adamw(model, grads, decayed: set[str]) -> dict[str, torch.Tensor]:
    """AdamW written out in float64 (Loshchilov & Hutter: decay applied to the weights, not the moments)."""
    params = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    m = {n: torch.zeros_like(p) for n, p in params.items()}
    v = {n: torch.zeros_like(p) for n, p in params.items()}
    for t, step_grads in enumerate(grads, start=1):
        for name, p in params.items():
            g = step_grads[name].double()
            if name in decayed:
                p.mul_(1 - LR * DECAY)
            m[name].mul_(BETAS[0]).add_(g, alpha=1 - BETAS[0])
            v[name].mul_(BETAS[1]).addcmul_(g, g, value=1 - BETAS[1])
            m_hat = m[name] / (1 - BETAS[0] ** t)
            v_hat = v[name] / (1 - BETAS[1] ** t)
            p.sub_(LR * m_hat / (v_hat.sqrt() + EPS))
    return params


def optim_section(implementation: str = "fused") -> OptimSection:
    return OptimSection(lr=LR, betas=list(BETAS), eps=EPS, weight_decay=DECAY, implementation=implementation)


def test_default_is_fused(tiny_model):
    assert OptimSection().implementation == "fused"
    optimizer = build_optimizer(copy.deepcopy(tiny_model), OptimSection())
    assert optimizer.defaults["fused"] is True and not optimizer.defaults["foreach"]
    assert all(group["fused"] for group in optimizer.param_groups)


def test_param_groups_decay_matrices_only_and_skip_frozen(tiny_model):
    model = copy.deepcopy(tiny_model)
    frozen = "model.layers.0.self_attn.q_proj.weight"
    model.get_parameter(frozen).requires_grad_(False)
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = param_groups(model, weight_decay=0.3)
    assert decay["weight_decay"] == 0.3 and no_decay["weight_decay"] == 0.0
    decayed = {names[id(p)] for p in decay["params"]}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    matrices = {n for n, p in model.named_parameters() if p.ndim == 2 and n != frozen}
    assert decayed == matrices
    # The tiny Llama has 2 layers x 2 RMSNorms + the final norm, and no biases.
    assert undecayed == {f"model.layers.{i}.{k}.weight" for i in range(2)
                         for k in ("input_layernorm", "post_attention_layernorm")} | {"model.norm.weight"}
    assert frozen not in decayed | undecayed


@pytest.mark.parametrize("implementation", ["fused", "foreach", "loop"])
def test_every_implementation_matches_reference_adamw(tiny_model, implementation):
    model = copy.deepcopy(tiny_model)
    grads = gradient_sequence(model, steps=8)
    decayed = {n for n, p in model.named_parameters() if p.ndim == 2}
    expected = reference_adamw(model, grads, decayed)
    train_with(model, build_optimizer(model, optim_section(implementation)), grads)
    for name, p in model.named_parameters():
        # 8 steps at lr 1e-2 move every weight by up to ~0.08; fp32 rounding stays below 1e-6.
        torch.testing.assert_close(p.detach().double(), expected[name], atol=2e-6, rtol=0, msg=name)
        assert not torch.equal(p.detach(), tiny_model.get_parameter(name).detach()), name


def test_fused_and_loop_agree_on_frozen_and_moved_weights(tiny_model):
    results = {}
    for implementation in ("fused", "loop"):
        model = copy.deepcopy(tiny_model)
        model.get_parameter("lm_head.weight").requires_grad_(False)  # tied to embed_tokens: both frozen
        train_with(model, build_optimizer(model, optim_section(implementation)), gradient_sequence(model, 5))
        results[implementation] = dict(model.named_parameters())
    for name, p in results["fused"].items():
        torch.testing.assert_close(p, results["loop"][name], atol=1e-6, rtol=0, msg=name)
    assert torch.equal(results["fused"]["model.embed_tokens.weight"], tiny_model.model.embed_tokens.weight)


def test_fused_state_round_trip_resumes_bitwise(tiny_model):
    """What a checkpoint does: save optimizer state mid-run, load it into a fresh optimizer, continue."""
    grads = gradient_sequence(tiny_model, steps=6, seed=1)
    straight = copy.deepcopy(tiny_model)
    train_with(straight, build_optimizer(straight, optim_section()), grads)

    first = copy.deepcopy(tiny_model)
    optimizer = build_optimizer(first, optim_section())
    train_with(first, optimizer, grads[:3])
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optim": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = copy.deepcopy(tiny_model)
    resumed.load_state_dict(saved["model"])
    optimizer = build_optimizer(resumed, optim_section())
    optimizer.load_state_dict(saved["optim"])
    train_with(resumed, optimizer, grads[3:])
    for name, p in straight.named_parameters():
        assert torch.equal(p, resumed.get_parameter(name)), name


def test_fused_refuses_parameters_it_has_no_kernel_for():
    model = torch.nn.Linear(4, 4, device="meta")
    with pytest.raises(ConfigError, match="optim.implementation: fused AdamW has no kernel"):
        build_optimizer(model, OptimSection())
    assert build_optimizer(model, OptimSection(implementation="foreach")).defaults["foreach"] is True


def test_config_key_is_validated(tiny_model_dir, tmp_path):
    overrides = cpt_overrides(tiny_model_dir, tmp_path / "out", str(tmp_path / "cache"))
    assert load_config("cpt", None, overrides).optim.implementation == "fused"
    assert load_config("cpt", None, overrides + ["optim.implementation=loop"]).optim.implementation == "loop"
    with pytest.raises(ConfigError, match="optim.implementation: 'adam8bit' is not one of fused, foreach, loop"):
        load_config("cpt", None, overrides + ["optim.implementation=adam8bit"])
    with pytest.raises(ConfigError, match="optim.implementation"):
        build_optimizer(torch.nn.Linear(2, 2), OptimSection(implementation="sgd"))
