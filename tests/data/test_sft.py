"""SFT's data path: decontamination of training examples against the eval sets (planted overlap)."""

from __future__ import annotations

import json

import pytest

from redone.data.dpo import build_dpo_data
from redone.data.sft import build_sft_data
from redone.model import load_tokenizer
from redone.stages import load_config
from tests.conftest import DATA


@pytest.fixture()
def planted(tmp_path):
    """A task folder of 6 real Note-Gender train items plus one item copied from the test split."""
    train = json.loads((DATA / "sns_bench" / "train" / "Note-Gender.json").read_text(encoding="utf-8"))
    test = json.loads((DATA / "sns_bench" / "test" / "Note-Gender.json").read_text(encoding="utf-8"))
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "Note-Gender.json").write_text(json.dumps(train[:6] + [test[5]]), encoding="utf-8")
    return folder


def overrides(tiny_model_dir, tmp_path, folder, **extra) -> list[str]:
    items = {"output_dir": tmp_path / "out", "model.name_or_path": tiny_model_dir,
             "data.cache_dir": tmp_path / "cache", "data.seq_len": 512,
             "data.sources": f"[{{name: sns, path: {folder}, format: sns_bench}}]",
             "data.decontam.eval_sets": f"[{DATA}/sns_bench/test]", **extra}
    return [f"{k}={v}" for k, v in items.items()]


def test_sft_drops_and_counts_a_planted_test_item(tiny_model_dir, tmp_path, planted):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    data = build_sft_data(load_config("sft", None, overrides(tiny_model_dir, tmp_path, planted)), tokenizer)
    info = data.components[0]
    assert (info["examples"], info["decontaminated"]) == (6, 1)
    assert info["decontaminated_by"] == {"sns_bench/Note-Gender": 1}
    assert info["eval_items_affected"].get("sns_bench/Note-Gender", 0) >= 1
    off = build_sft_data(load_config("sft", None, overrides(tiny_model_dir, tmp_path, planted,
                                                            **{"data.decontam.eval_sets": "[]"})), tokenizer)
    assert (off.components[0]["examples"], off.components[0]["decontaminated"]) == (7, 0)


def test_dpo_drops_and_counts_a_planted_test_item(tiny_model_dir, tmp_path, planted):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    data = build_dpo_data(load_config("dpo", None, overrides(tiny_model_dir, tmp_path, planted)), tokenizer)
    info = data.components[0]
    assert info["dropped_decontaminated"] == 1 and info["pairs"] == 6


def test_mixed_prompt_style_gives_each_item_one_stable_style(tiny_model_dir, tmp_path):
    from redone.data.sft import item_styles

    styles = item_styles("mixed", 0.5, "Note-Gender", 400, seed=0)
    assert styles == item_styles("mixed", 0.5, "Note-Gender", 400, seed=0)
    assert styles[:100] == item_styles("mixed", 0.5, "Note-Gender", 100, seed=0)  # per item, not per list
    assert 160 < styles.count("official") < 240
    assert item_styles("mixed", 0.0, "x", 50, 0) == ["redone"] * 50 == item_styles("redone", 0.9, "x", 50, 0)
    config = load_config("sft", None, overrides(tiny_model_dir, tmp_path, DATA / "sns_bench" / "train") + [
        "data.prompt_style=mixed", "data.sources=[{name: sns, path: " + str(DATA / "sns_bench" / "train")
        + ", format: sns_bench, tasks: [Note-Gender], limit: 40}]"])
    data = build_sft_data(config, load_tokenizer(str(tiny_model_dir)))
    assert data.components[0]["examples"] == 40 - data.components[0]["decontaminated"]
    # The official system turn carries worked examples: it is much longer than the redone one.
    from redone.data.sft import all_components

    examples = all_components(list(config.data.sources), "mixed", None, 0.5, 0)[0].examples
    lengths = [len(e["messages"][0]["content"]) for e in examples]
    expected = item_styles("mixed", 0.5, "Note-Gender", 40, 0)
    short, long_ = min(lengths), max(lengths)
    assert [("official" if n == long_ else "redone") for n in lengths] == expected and long_ > 2 * short


def rl_overrides(tiny_model_dir, tmp_path, folder, **extra) -> list[str]:
    items = {"output_dir": tmp_path / "rl", "model.name_or_path": tiny_model_dir, "data.seq_len": 1024,
             "data.sources": f"[{{name: sns, path: {folder}, format: sns_bench}}]",
             "data.decontam.eval_sets": f"[{DATA}/sns_bench/test]", "rl.group_size": 2,
             "train.micro_batch_size": 2, **extra}
    return [f"{k}={v}" for k, v in items.items()]


def test_rl_drops_and_counts_a_planted_test_item(tiny_model_dir, tmp_path, planted):
    from redone.data.rl import build_rl_data

    tokenizer = load_tokenizer(str(tiny_model_dir))
    data = build_rl_data(load_config("rl", None, rl_overrides(tiny_model_dir, tmp_path, planted)), tokenizer)
    info = data.components[0]
    assert (info["items"], info["dropped_decontaminated"]) == (6, 1)
    assert info["decontaminated_by"] == {"sns_bench/Note-Gender": 1}
    assert info["eval_items_affected"].get("sns_bench/Note-Gender", 0) >= 1
    assert 6 not in {p.index for p in data.prompts[0]}  # the planted item (index 6) is gone
    off = build_rl_data(load_config("rl", None, rl_overrides(tiny_model_dir, tmp_path, planted,
                                                            **{"data.decontam.eval_sets": "[]"})), tokenizer)
    assert (off.components[0]["items"], off.components[0]["dropped_decontaminated"]) == (7, 0)


def test_rl_mixed_prompt_style_follows_the_item_hash(tiny_model_dir, tmp_path):
    from redone.data.rl import build_rl_data
    from redone.data.sft import item_styles

    folder = DATA / "sns_bench" / "train"
    source = f"[{{name: sns, path: {folder}, format: sns_bench, tasks: [Note-Gender], limit: 30}}]"
    tokenizer = load_tokenizer(str(tiny_model_dir))
    built = {style: build_rl_data(load_config("rl", None, rl_overrides(
        tiny_model_dir, tmp_path, folder, **{"data.prompt_style": style, "data.sources": source,
                                             "data.decontam.eval_sets": "[]"})), tokenizer)
        for style in ("redone", "official", "mixed")}
    expected = item_styles("mixed", 0.5, "Note-Gender", 30, 0)
    assert 5 < expected.count("official") < 25
    by_style = {style: {p.index: p.ids for p in data.prompts[0]} for style, data in built.items()}
    for index, ids in by_style["mixed"].items():
        assert ids == by_style[expected[index]][index], index
