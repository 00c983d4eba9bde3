"""Model cards: Hub ids, the license the data implies, no made-up links, metadata the Hub accepts."""

from __future__ import annotations

import json

import pytest

from redone.card import base_model, lineage_chain, model_card, read_card, write_model_card
from redone.errors import RedoneError
from redone.hub import check_card_metadata

SNS = "/work/data/sns_bench/train"
TRANS = "/work/data/sns_transbench/train.json"
HH = "/work/data/preference/hh_rlhf_harmless_train.jsonl"
SHAKESPEARE = "/work/data/general/tinyshakespeare.txt"


def stage_dir(root, stage, parent, sources, *, loss=1.5, parent_path=None):
    """A final dir holding only what a card reads: redone.json with build_lineage's keys."""
    final = root / stage / "final"
    final.mkdir(parents=True)
    lineage = {"stage": stage, "parent_model": str(parent), "parent_path": str(parent_path or parent),
               "fingerprint": f"{stage}0123456789ab", "config_hash": "abc", "data_sources": sources,
               "tokens_seen": 12345, "steps": 7, "final_metrics": {"loss": loss}, "redone_version": "0.1.0"}
    (final / "redone.json").write_text(json.dumps(lineage))
    return final


def pipeline_dirs(root, base="smollm2-135m-instruct", base_path=None):
    cpt = stage_dir(root, "cpt", base, [{"name": "sns", "path": SNS}, {"name": "sh", "path": SHAKESPEARE}],
                    parent_path=base_path)
    sft = stage_dir(root, "sft", cpt, [{"name": "Note-NER", "source": SNS}, {"name": "zh2en", "source": TRANS}])
    return stage_dir(root, "dpo", sft, [{"name": "hh", "source": HH}])


def card_of(final, eval_table=None):
    path = write_model_card(final, eval_table)
    metadata, body = read_card(path)
    return metadata, body, path.read_text()


def test_pipeline_card_has_hub_ids_and_the_data_license(tmp_path):
    final = pipeline_dirs(tmp_path)
    metadata, body, text = card_of(final, "| metric | base | dpo |\n|---|---|---|\n| SNS NER | 1.00 | 2.00 |")
    assert metadata == {
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "license": "cc-by-nc-sa-4.0",
        "datasets": ["Anthropic/hh-rlhf", "karpathy/tiny_shakespeare"],
        "language": ["en", "zh"],
        "pipeline_tag": "text-generation",
        "library_name": "transformers",
        "tags": ["redone", "sns", "cpt", "sft", "dpo"],
    }
    check_card_metadata(metadata, body)
    assert ("licensed CC BY-NC-SA 4.0 because they were trained on SNS-Bench (Guo et al.), "
            "SNS-TransBench / RedTrans-Bench (Guo et al.)") in body
    assert "The base model's own license (apache-2.0) applies too." in body
    # Every stage, every dataset with its license and upstream source, the eval table: kept.
    assert "| cpt | smollm2-135m-instruct | 7 | 12,345 | 1.5000 | `cpt0123456789ab` |" in body
    assert f"| dpo | {tmp_path / 'sft' / 'final'} | 7 | 12,345 | 1.5000 | `dpo0123456789ab` |" in body
    assert "| SNS-Bench (Guo et al.) | CC BY-NC-SA 4.0 | https://github.com/HC-Guo/SNS-Bench | no | `" in body
    assert "| Anthropic HH-RLHF harmless-base | MIT | https://github.com/anthropics/hh-rlhf | Anthropic/hh-rlhf |" in body
    assert "## Evaluation" in body and "| SNS NER | 1.00 | 2.00 |" in body
    assert "English and Chinese" in body
    # No placeholder links: every URL in the card is a dataset's real upstream source.
    urls = {word.strip("()<>`|") for word in text.split() if "://" in word}
    assert urls == {"https://github.com/HC-Guo/SNS-Bench", "https://github.com/HC-Guo/RedTrans",
                    "https://github.com/anthropics/hh-rlhf", "https://github.com/karpathy/char-rnn"}
    assert "](" not in text


def test_permissive_data_keeps_the_base_license(tmp_path):
    final = stage_dir(tmp_path, "dpo", "smollm2-135m-instruct", [{"name": "hh", "source": HH}])
    metadata, body, _ = card_of(final)
    assert metadata["license"] == "apache-2.0" and "license_name" not in metadata
    assert metadata["datasets"] == ["Anthropic/hh-rlhf"]
    assert "keep the base model's license (apache-2.0)" in body
    assert "Limitations" in body and "non-commercial" not in body
    check_card_metadata(metadata, body)


def test_local_base_without_hub_id_is_left_out_and_explained(tmp_path, tiny_model_dir):
    final = stage_dir(tmp_path, "cpt", tiny_model_dir, [{"name": "sh", "path": SHAKESPEARE}])
    metadata, body, _ = card_of(final)
    assert "base_model" not in metadata
    assert f"the local model dir `{tiny_model_dir}`, whose config.json names no Hub id" in body
    # Nothing says what the tiny model's license is: other + a license name, and the card says why.
    assert metadata["license"] == "other" and metadata["license_name"] == "base-model-license"
    assert "base model's license is not known" in body
    check_card_metadata(metadata, body)


def test_local_base_declaring_a_hub_id_and_its_own_card_license(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "qwen2", "_name_or_path": "Qwen/Qwen2.5-0.5B"}))
    (base / "README.md").write_text("---\nlicense: mit\n---\n# a base\n")
    final = stage_dir(tmp_path, "sft", base, [{"name": "s", "source": "/data/my_notes.jsonl"}])
    metadata, body, _ = card_of(final)
    assert metadata["base_model"] == "Qwen/Qwen2.5-0.5B" and metadata["license"] == "mit"
    assert metadata["datasets"] == []  # the user's data is not on the Hub: named in the body instead
    assert "| /data/my_notes.jsonl | see the data's own license | local data | no |" in body
    assert "license of `/data/my_notes.jsonl` is not known to redone" in body
    check_card_metadata(metadata, body)


def test_hub_id_base_and_builtin_cache_path():
    assert base_model([{"parent_model": "Qwen/Qwen2.5-7B", "parent_path": "Qwen/Qwen2.5-7B"}])[0] == "Qwen/Qwen2.5-7B"
    assert base_model([{"parent_model": "no-owner-name", "parent_path": "no-owner-name"}])[0] is None
    from redone.model import redone_home

    cached = str(redone_home() / "models" / "smollm2-135m-instruct")
    hub_id, text = base_model([{"parent_model": cached, "parent_path": cached}])
    assert hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct" and "built-in" in text


def test_lineage_chain_is_oldest_first(tmp_path):
    final = pipeline_dirs(tmp_path)
    assert [s["stage"] for s in lineage_chain(final)] == ["cpt", "sft", "dpo"]
    assert model_card(final).splitlines()[0] == "---"


def test_read_card_errors_name_the_line(tmp_path):
    card = tmp_path / "README.md"
    card.write_text("# no front matter\n")
    with pytest.raises(RedoneError, match=r"README.md:1: the card has no YAML front matter"):
        read_card(card)
    card.write_text("---\nlicense: mit\ntags: [a, b\n---\n")
    with pytest.raises(RedoneError, match=r"README.md:\d+: invalid YAML"):
        read_card(card)
    card.write_text("---\nlicense: mit\n")
    with pytest.raises(RedoneError, match="not closed"):
        read_card(card)
