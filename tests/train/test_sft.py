"""SFT stage on the tiny model: per-task metrics, packed == padded, bad input."""

import json

import pytest

from redone.errors import DataError
from redone.stages import load_config
from redone.train.base import held_out_losses
from redone.train.loop import run_training
from redone.train.sft import SFTStage
from tests.conftest import DATA

TASKS = "[Note-Taxonomy-single, Note-NER, Note-CHLW]"


def sft_config(model_dir, out, cache, **extra):
    items = {
        "output_dir": str(out), "model.name_or_path": str(model_dir), "data.seq_len": 256,
        "data.cache_dir": cache, "data.eval_holdout": 3, "train.max_steps": 4, "train.micro_batch_size": 2,
        "train.log_every": 2, "train.eval_every": 4, "train.save_every": 4, "train.progress": "false",
        "optim.lr": 1e-3,
        "data.sources": (f"[{{name: sns, path: {DATA}/sns_bench/train, format: sns_bench, limit: 40, "
                         f"tasks: {TASKS}}}, {{name: hh, path: {DATA}/preference/hh_rlhf_harmless_train.jsonl, "
                         f"format: hh_rlhf, limit: 30}}]"),
    }
    items.update(extra)
    return load_config("sft", None, [f"{k}={v}" for k, v in items.items()])


def test_sft_logs_per_task_train_and_eval_loss(tiny_model_dir, tmp_path):
    final = run_training(sft_config(tiny_model_dir, tmp_path / "out", str(tmp_path / "c")), SFTStage)
    lines = [json.loads(x) for x in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    eval_line = [x for x in lines if "eval_loss/hh" in x][0]
    assert {k for k in eval_line if k.startswith("eval_loss/")} == {
        "eval_loss/Note-Taxonomy-single", "eval_loss/Note-NER", "eval_loss/Note-CHLW", "eval_loss/hh"}
    train_keys = {k for x in lines for k in x if k.startswith("loss/")}
    assert train_keys <= {"loss/Note-Taxonomy-single", "loss/Note-NER", "loss/Note-CHLW", "loss/hh"}
    assert "loss/hh" in train_keys
    lineage = json.loads((final / "redone.json").read_text())
    info = {s["name"]: s for s in lineage["data_sources"]}
    assert info["Note-NER"]["examples"] == 37 and info["Note-NER"]["held_out"] == 3
    assert sum(s["planned_share"] for s in info.values()) == pytest.approx(1.0)


def test_packed_equals_padded_on_held_out_examples(tiny_model_dir, tokenizer, tmp_path):
    from redone.model import load_model

    model = load_model(str(tiny_model_dir), attn_implementation="sdpa").eval()
    losses = {}
    for packing in ("true", "false"):
        config = sft_config(tiny_model_dir, tmp_path / packing, str(tmp_path / "c"), **{"data.packing": packing})
        stage = SFTStage(config, tokenizer)
        stage.layout = "rows" if packing == "true" else "padded"
        batches = stage.eval_batches()
        if packing == "true":
            assert all("attention_mask" not in b for bs in batches.values() for b in bs)
        losses[packing] = held_out_losses(stage, model)
    assert losses["true"].keys() == losses["false"].keys() and len(losses["true"]) == 4
    for key in losses["true"]:
        assert losses["true"][key] == pytest.approx(losses["false"][key], abs=1e-5), key


def test_bad_sft_input(tiny_model_dir, tokenizer, tmp_path):
    with pytest.raises(DataError, match=r"no task file\(s\) \['Note-Taxnomy'\]"):
        SFTStage(sft_config(tiny_model_dir, tmp_path / "a", str(tmp_path / "c"), **{
            "data.sources": f"[{{path: {DATA}/sns_bench/train, format: sns_bench, tasks: [Note-Taxnomy]}}]"}),
            tokenizer)
    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "Note-NER.json").write_text(json.dumps([
        {"question": "Find all 'brand' entities", "content": "Nike shoes", "answer": "Nike"},
        {"question": "Find all 'brand' entities", "content": "Adidas"}]))
    with pytest.raises(DataError, match=r"Note-NER.json:1: missing field 'answer'"):
        SFTStage(sft_config(tiny_model_dir, tmp_path / "b", str(tmp_path / "c"), **{
            "data.sources": f"[{{path: {folder}, format: sns_bench}}]"}), tokenizer)


def test_overlong_drop_is_counted(tiny_model_dir, tokenizer, tmp_path):
    config = sft_config(tiny_model_dir, tmp_path / "a", str(tmp_path / "c"), **{
        "data.seq_len": 160, "data.overlong": "drop", "data.eval_holdout": 0,
        "data.sources": f"[{{path: {DATA}/sns_bench/train, format: sns_bench, tasks: [Note-Taxonomy-single], limit: 50}}]"})
    stage = SFTStage(config, tokenizer)
    info = stage.source_info[0]
    assert info["dropped_overlong"] > 0 and info["truncated"] == 0
    assert info["examples"] == 50 - info["dropped_overlong"]
    assert int(stage.data.stores[0].lengths().max()) <= 160
