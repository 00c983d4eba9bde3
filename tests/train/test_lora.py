"""LoRA through peft in the shared loop: only adapter weights train, merge == adapter-on, exact resume,
``redone model merge-lora``, and SFT/DPO accept it too. (LoRA under ZeRO-3: test_distributed.py.)"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from redone.cli import main as cli_main
from redone.stages import load_config
from redone.train.cpt import CPTStage
from redone.train.loop import run_training
from tests.conftest import DATA, cpt_overrides

LORA = {"model.lora.enabled": "true", "model.lora.r": 4, "model.lora.alpha": 8, "train.save_every": 2}
# The tiny Llama (2 layers, hidden 64, intermediate 128, 4 heads): per layer q/k/v/o 4 x (64*4 + 4*64),
# gate/up 2 x (64*4 + 4*128), down (128*4 + 4*64) = 4352 adapter weights; 2 layers.
ADAPTER_NUMEL = 2 * 4352


def train(model_dir, out, cache, steps=4, **extra):
    config = load_config("cpt", None, cpt_overrides(model_dir, out, cache, steps, **{**LORA, **extra}))
    return run_training(config, CPTStage)


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    final = train(tiny_model_dir, root / "out", str(root / "cache"))
    return root / "out", final


def test_only_adapter_params_train(tiny_model_dir, lora_run):
    from redone.model import apply_lora, load_model

    config = load_config("cpt", None, cpt_overrides(tiny_model_dir, "/tmp/unused", "/tmp/unused", 4, **LORA))
    model = apply_lora(load_model(str(tiny_model_dir)), config.model.lora)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == ADAPTER_NUMEL and all("lora_" in n for n in trainable)

    out, _ = lora_run
    base = load_file(tiny_model_dir / "model.safetensors")
    trained = load_file(out / "checkpoints" / "step-4" / "model.safetensors")
    frozen = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in trained.items()
              if "lora_" not in k}
    assert set(frozen) == set(base)
    for key, value in base.items():
        assert frozen[key].equal(value), f"frozen base weight {key} changed"
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert sum(v.numel() for v in adapter.values()) == ADAPTER_NUMEL
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0: it trained


def test_merged_final_equals_adapter_on_model(tiny_model_dir, lora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, final = lora_run
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    adapter_on = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / "adapter")
    expected = logits(adapter_on.eval(), ids)
    base = logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), ids)
    assert (expected - base).abs().max() > 1e-3  # the adapter changes the model
    merged = AutoModelForCausalLM.from_pretrained(final)
    torch.testing.assert_close(logits(merged.eval(), ids), expected, atol=1e-5, rtol=1e-5)

    assert cli_main(["model", "merge-lora", "--adapter", str(out / "adapter"), "--out", str(tmp_path / "m")]) == 0
    cli_merged = load_file(tmp_path / "m" / "model.safetensors")
    assert all(cli_merged[k].equal(v) for k, v in load_file(final / "model.safetensors").items())
    assert (tmp_path / "m" / "tokenizer.json").exists()


def test_merge_lora_refuses_bad_input(lora_run, tmp_path, capsys):
    out, final = lora_run
    assert cli_main(["model", "merge-lora", "--adapter", str(final), "--out", str(tmp_path / "m")]) == 1
    assert "adapter_config.json" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("mine")
    assert cli_main(["model", "merge-lora", "--adapter", str(out / "adapter"), "--out", str(tmp_path / "busy")]) == 1
    assert (tmp_path / "busy" / "x").read_text() == "mine"


def test_lora_resume_is_bitwise(tiny_model_dir, lora_run, tmp_path):
    full, full_final = lora_run
    out = tmp_path / "out"
    assert train(tiny_model_dir, out, str(tmp_path / "cache"), **{"train.stop_after_steps": 2}) is None
    final = train(tiny_model_dir, out, str(tmp_path / "cache"))
    for name in ("adapter/adapter_model.safetensors", "final/model.safetensors"):
        a, b = load_file(full / name), load_file(out / name)
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), name
    log = [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log == [json.loads(line)["loss"] for line in (full / "train_log.jsonl").read_text().splitlines()]
    assert final.exists()


def test_sft_and_dpo_accept_lora(tiny_model_dir, tmp_path):
    from redone.train.dpo import DPOStage
    from redone.train.sft import SFTStage

    common = {"model.name_or_path": str(tiny_model_dir), "train.max_steps": 2, "train.micro_batch_size": 2,
              "train.save_every": 2, "train.log_every": 1, "train.progress": "false", "optim.lr": 1e-3,
              "data.seq_len": 256, **LORA}
    sources = {
        "sft": (f"[{{name: sns, path: {DATA}/sns_bench/train, format: sns_bench, limit: 12, "
                f"tasks: [Note-Taxonomy-single]}}]"),
        "dpo": f"[{{name: hh, path: {DATA}/preference/hh_rlhf_harmless_test.jsonl, limit: 8}}]",
    }
    for stage, cls in (("sft", SFTStage), ("dpo", DPOStage)):
        items = {**common, "output_dir": str(tmp_path / stage), "data.cache_dir": str(tmp_path / "cache"),
                 "data.sources": sources[stage]}
        if stage == "dpo":
            items["data.seq_len"] = 512
        final = run_training(load_config(stage, None, [f"{k}={v}" for k, v in items.items()]), cls)
        adapter = load_file(tmp_path / stage / "adapter" / "adapter_model.safetensors")
        assert sum(v.numel() for v in adapter.values()) == ADAPTER_NUMEL, stage
        assert (final / "model.safetensors").exists(), stage
