"""CPT end to end on the tiny model: exact resume, checkpoint contents, refusal to overwrite."""

import json
import shutil

import pytest
from safetensors.torch import load_file

from redone.errors import RedoneError
from redone.stages import load_config
from redone.train.cpt import CPTStage
from redone.train.loop import run_training
from tests.conftest import cpt_overrides

STEP_FILES = {"COMPLETE", "config.yaml", "loop_state.json", "model.safetensors", "optimizer.bin",
              "random_states_0.pkl", "scheduler.bin"}
FINAL_FILES = {"README.md", "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
               "redone.json", "redone_config.yaml", "tokenizer.json", "tokenizer_config.json"}


def train(tiny_model_dir, out, cache, **extra):
    config = load_config("cpt", None, cpt_overrides(tiny_model_dir, out, cache, **extra))
    return run_training(config, CPTStage)


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    final = train(tiny_model_dir, root / "out", str(root / "cache"))
    return root / "out", final


def test_resume_is_bitwise_identical(tiny_model_dir, uninterrupted, tmp_path):
    full_out, full_final = uninterrupted
    out = tmp_path / "out"
    assert train(tiny_model_dir, out, str(tmp_path / "cache"), **{"train.stop_after_steps": 3}) is None
    assert not (out / "final").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-3"]
    final = train(tiny_model_dir, out, str(tmp_path / "cache"))
    a, b = load_file(full_final / "model.safetensors"), load_file(final / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].equal(b[key]), key
    assert losses(out) == losses(full_out)
    assert len(losses(out)) == 6 and losses(out)[-1] < losses(out)[0]


def test_checkpoint_and_final_files(uninterrupted):
    out, final = uninterrupted
    steps = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert steps == ["step-3", "step-6"]  # keep_last=2 of saves at 3 and 6
    for step in steps:
        assert {p.name for p in (out / "checkpoints" / step).iterdir()} == STEP_FILES
    assert {p.name for p in final.iterdir()} == FINAL_FILES
    state = json.loads((out / "checkpoints" / "step-6" / "loop_state.json").read_text())
    assert state["step"] == 6 and state["tokens"] == 6 * 2 * 2 * 64
    assert set(state["source_tokens"]) == {"sns", "shakespeare"}
    lineage = json.loads((final / "redone.json").read_text())
    assert lineage["stage"] == "cpt" and len(lineage["fingerprint"]) == 16
    assert [s["name"] for s in lineage["data_sources"]] == ["sns", "shakespeare"]


def test_final_loads_in_plain_transformers(uninterrupted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, final = uninterrupted
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert model.config.num_hidden_layers == 2 and tokenizer.chat_template


def test_incomplete_checkpoint_is_ignored(tiny_model_dir, uninterrupted, tmp_path):
    out, _ = uninterrupted
    copy = tmp_path / "out"
    shutil.copytree(out / "checkpoints", copy / "checkpoints")
    (copy / "checkpoints" / "step-6" / "COMPLETE").unlink()
    from redone.train.checkpoint import latest_checkpoint

    assert latest_checkpoint(copy).name == "step-3"


def test_refuses_to_overwrite(tiny_model_dir, uninterrupted, tmp_path):
    out, _ = uninterrupted
    with pytest.raises(RedoneError, match="finished run"):
        train(tiny_model_dir, out, str(tmp_path / "cache"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RedoneError, match="not empty"):
        train(tiny_model_dir, other, str(tmp_path / "cache"))
    assert (other / "notes.txt").read_text() == "mine"


def test_resume_refuses_changed_data_order(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    train(tiny_model_dir, out, str(tmp_path / "cache"), **{"train.stop_after_steps": 3})
    with pytest.raises(RedoneError, match="data order"):
        train(tiny_model_dir, out, str(tmp_path / "cache"), **{"seed": 5})
