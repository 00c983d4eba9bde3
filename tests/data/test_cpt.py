"""The CPT data path (read -> curate across sources -> tokenize -> corpus cache) and `redone data prepare`.

Small crafted corpora with planted problems (duplicates across sources, a too-short line, a URL-only
post, an eval item inside a longer document) so every count in the report is known exactly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from redone.data import cpt
from redone.data.report import format_stage_report
from redone.errors import ConfigError
from redone.model import load_tokenizer
from redone.stages import load_config, prepare_data
from tests.conftest import DATA, REPO

# Eval items: 20+ words each, so each contributes 13-grams to the index.
BENCH_ITEM = ("the lighthouse keeper counted forty seven ships before the storm finally broke over the "
              "northern harbour wall at dawn")
OTHER_ITEM = ("a recipe for cold noodles with sesame paste cucumber ribbons chilli oil and a spoon of "
              "black vinegar serves two hungry people")
# Real SNS-Bench test item text (data/sns_bench/test/Note-QueryGen.json, item 0).
QUERYGEN_TEXT = ("Many people say that under-sink water purifiers are unhygienic, so I installed a direct "
                 "drinking water machine. Now they say tea bar machines are good to use.")


def paragraphs(n: int, offset: int = 0) -> list[str]:
    """Distinct real English paragraphs (Shakespeare speeches of 200+ chars)."""
    text = (DATA / "general" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    long = [" ".join(p.split()) for p in text.split("\n\n") if len(p) >= 200]
    return long[offset:offset + n]


@pytest.fixture()
def corpus(tmp_path) -> dict:
    """notes.jsonl (13 docs) + general.txt (8 paragraphs) + two eval sets, with planted drops."""
    notes = paragraphs(8)
    planted = {
        "exact": notes[0].upper(),  # differs only in case: an exact duplicate after normalisation
        "near": notes[1] + " Amen, amen.",  # two words added: a near duplicate
        "too_short": "ok",
        "url_only": "https://example.com/a/b",
        "decontam": notes[2][:150] + " " + BENCH_ITEM + " " + notes[3][:150],
    }
    # The originals come after their altered copies: the copies are kept, the originals are the dups.
    note_docs = notes[2:] + list(planted.values()) + [notes[0], notes[1]]
    general = paragraphs(7, offset=50) + [notes[4]]  # a cross-source exact duplicate of a notes doc
    (tmp_path / "notes.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in note_docs))
    (tmp_path / "general.txt").write_text("\n\n".join(general) + "\n")
    (tmp_path / "mybench.jsonl").write_text(json.dumps({"text": BENCH_ITEM}) + "\n")
    (tmp_path / "other.jsonl").write_text(json.dumps({"text": OTHER_ITEM}) + "\n")
    return {"dir": tmp_path, "notes": len(note_docs), "general": len(general)}


def cpt_config(tiny_model_dir, corpus, **extra):
    root = corpus["dir"]
    items = {
        "output_dir": root / "out", "model.name_or_path": tiny_model_dir, "data.seq_len": 64,
        "data.cache_dir": root / "cache", "train.max_steps": 4, "train.micro_batch_size": 2,
        "data.sources": f"[{{name: notes, path: {root}/notes.jsonl, weight: 3}}, "
                        f"{{name: general, path: {root}/general.txt, weight: 1}}]",
        "data.quality.decontam.eval_sets": f"[{root}/other.jsonl, {root}/mybench.jsonl]",
    }
    items.update(extra)
    return load_config("cpt", None, [f"{k}={v}" for k, v in items.items()])


def check_adds_up(report: dict) -> None:
    curation = report["curation"]
    total_in = total_kept = 0
    for source in report["sources"]:
        stats = curation["sources"][source["name"]]
        assert stats["docs_in"] == source["documents_in"]
        assert stats["kept"] == source["documents"]
        assert source["documents_in"] == source["documents"] + sum(source["dropped"].values())
        total_in += source["documents_in"]
        total_kept += source["documents"]
    total = curation["total"]
    assert total["docs_in"] == total_in == total["kept"] + sum(total["dropped"].values())
    assert total["kept"] == total_kept
    for reason, n in total["dropped"].items():
        assert n == sum(s["dropped"].get(reason, 0) for s in report["sources"])


def test_report_adds_up_and_names_each_drop(tiny_model_dir, tokenizer, corpus):
    stores, report, hit = cpt.prepare_cpt(cpt_config(tiny_model_dir, corpus), tokenizer)
    assert not hit
    check_adds_up(report)
    notes, general = report["sources"]
    assert notes["documents_in"] == corpus["notes"] and general["documents_in"] == corpus["general"]
    assert notes["dropped"] == {"filter:too_short": 1, "filter:url_only": 1, "dedup:exact": 1,
                                "dedup:near": 1, "decontam:mybench": 1}
    assert general["dropped"] == {"dedup:exact": 1}  # dedup is global: the notes copy came first
    assert [len(s) for s in stores] == [notes["documents"], general["documents"]] == [8, 7]
    assert [int(s.tokens.size) for s in stores] == [notes["tokens"], general["tokens"]]
    kept_text = tokenizer.decode(stores[0].tokens.tolist())
    assert "lighthouse keeper" not in kept_text and "example.com" not in kept_text
    assert report["quality"]["eval_index"]["mybench"]["items"] == 1


def test_cache_hit_skips_curation(tiny_model_dir, tokenizer, corpus, monkeypatch):
    config = cpt_config(tiny_model_dir, corpus)
    stores, report, hit = cpt.prepare_cpt(config, tokenizer)
    assert not hit
    manifest = json.loads((Path(report["cache"]["dir"]) / report["cache"]["key"] / "manifest.json").read_text())
    assert manifest["report"] == report and manifest["parts"]["tokenizer"]

    def refuse(*args, **kwargs):
        raise AssertionError("curation or reading ran on a cache hit")

    monkeypatch.setattr(cpt, "curate", refuse)
    monkeypatch.setattr(cpt, "read_documents", refuse)
    again, report2, hit2 = cpt.prepare_cpt(config, tokenizer)
    assert hit2 and report2 == report
    for a, b in zip(stores, again):
        assert (a.tokens == b.tokens).all() and (a.offsets == b.offsets).all()
    # Mixing settings act after the cache: a new weight still hits.
    _, _, hit3 = cpt.prepare_cpt(cpt_config(tiny_model_dir, corpus, **{"data.mixing": "temperature"}),
                                     tokenizer)
    assert hit3


def test_tokenizer_or_template_change_misses(tiny_model_dir, tokenizer, corpus, tmp_path):
    config = cpt_config(tiny_model_dir, corpus)
    assert not cpt.prepare_cpt(config, tokenizer)[2]
    same = tmp_path / "same"
    shutil.copytree(tiny_model_dir, same)
    assert cpt.prepare_cpt(config, load_tokenizer(str(same)))[2]  # a copy of the same files: hit
    edited = tmp_path / "edited"
    shutil.copytree(tiny_model_dir, edited)
    template = edited / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|im_start|>system", "<|im_start|>system\n", 1))
    changed = load_tokenizer(str(edited))
    assert changed.chat_template != tokenizer.chat_template
    assert not cpt.prepare_cpt(config, changed)[2]
    extended = load_tokenizer(str(same))
    extended.add_tokens(["<redone_test_token>"])
    assert not cpt.prepare_cpt(config, extended)[2]


def test_data_or_quality_change_misses(tiny_model_dir, tokenizer, corpus):
    config = cpt_config(tiny_model_dir, corpus)
    assert not cpt.prepare_cpt(config, tokenizer)[2]
    with open(corpus["dir"] / "general.txt", "a") as handle:
        handle.write("\n" + paragraphs(1, offset=80)[0] + "\n")
    _, report, hit = cpt.prepare_cpt(config, tokenizer)
    assert not hit and report["sources"][1]["documents_in"] == corpus["general"] + 1
    (corpus["dir"] / "mybench.jsonl").write_text(json.dumps({"text": OTHER_ITEM}) + "\n")  # eval set edit
    _, report, hit = cpt.prepare_cpt(config, tokenizer)
    assert not hit and "decontam:mybench" not in report["sources"][0]["dropped"]
    off = cpt_config(tiny_model_dir, corpus, **{"data.quality.enabled": "false"})
    _, report, hit = cpt.prepare_cpt(off, tokenizer)
    assert not hit and all(s["dropped"] == {} for s in report["sources"])
    check_adds_up(report)


def test_default_eval_sets_and_missing_eval_set(tiny_model_dir, tokenizer, corpus, monkeypatch):
    root = corpus["dir"]
    docs = paragraphs(3, offset=20)
    docs[1] = docs[1] + " " + QUERYGEN_TEXT
    (root / "notes.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    sources = f"[{{name: notes, path: {root}/notes.jsonl}}]"
    monkeypatch.chdir(REPO)  # the default eval set paths are relative to the working dir
    config = load_config("cpt", None, [f"output_dir={root / 'out'}", f"model.name_or_path={tiny_model_dir}",
                                       f"data.cache_dir={root / 'cache'}", f"data.sources={sources}"])
    assert config.data.quality.decontam.eval_sets == ["data/sns_bench/test", "data/sns_transbench/test.json"]
    _, report, _ = cpt.prepare_cpt(config, tokenizer)
    assert report["sources"][0]["dropped"] == {"decontam:sns_bench/Note-QueryGen": 1}
    monkeypatch.chdir(root)
    with pytest.raises(ConfigError, match=r"^data\.quality\.decontam\.eval_sets\[0\]: data/sns_bench/test "
                                          r"does not exist"):
        cpt.prepare_cpt(config, tokenizer)


def test_bad_quality_values_fail_at_load(tiny_model_dir, corpus):
    with pytest.raises(ConfigError, match=r"data\.quality\.dedup\.threshold must be in"):
        cpt_config(tiny_model_dir, corpus, **{"data.quality.dedup.threshold": 1.5})
    with pytest.raises(ConfigError, match=r"data\.quality\.filters\.enabled has unknown filter 'tooshort'"):
        cpt_config(tiny_model_dir, corpus, **{"data.quality.filters.enabled": "[tooshort]"})


def test_prepare_stage_sft_reports_components(tiny_model_dir, tmp_path):
    sources = (f"[{{path: {DATA}/sns_bench/train, tasks: [Note-Taxonomy-single, Note-QueryGen], limit: 12}}, "
               f"{{name: hh, path: {DATA}/preference/hh_rlhf_harmless_train.jsonl, format: hh_rlhf, limit: 10}}]")
    config = load_config("sft", None, [f"output_dir={tmp_path / 'out'}", f"model.name_or_path={tiny_model_dir}",
                                       f"data.cache_dir={tmp_path / 'cache'}", f"data.sources={sources}",
                                       "data.seq_len=256", "train.max_steps=3", "train.micro_batch_size=2"])
    report = prepare_data("sft", config)
    names = [c["name"] for c in report["components"]]
    assert names == ["Note-QueryGen", "Note-Taxonomy-single", "hh"]
    assert sum(c["planned_share"] for c in report["components"]) == pytest.approx(1.0)
    assert sum(c["realised_share"] for c in report["components"]) == pytest.approx(1.0)
    assert report["mixture"]["rows_packed"] == 6 and not report["cache_hit"]
    text = format_stage_report(report)
    assert "examples" in text and "truncated" in text and "Note-QueryGen" in text


def test_prepare_stage_dpo_reports_pair_shares(tiny_model_dir, tmp_path):
    sources = (f"[{{path: {DATA}/sns_bench/train, tasks: [Note-Taxonomy-single], limit: 10}}, "
               f"{{name: hh, path: {DATA}/preference/hh_rlhf_harmless_train.jsonl, format: hh_rlhf, limit: 10}}]")
    config = load_config("dpo", None, [f"output_dir={tmp_path / 'out'}", f"model.name_or_path={tiny_model_dir}",
                                       f"data.cache_dir={tmp_path / 'cache'}", f"data.sources={sources}",
                                       "data.seq_len=512", "train.max_steps=5", "train.micro_batch_size=2"])
    report = prepare_data("dpo", config)
    assert [c["name"] for c in report["components"]] == ["Note-Taxonomy-single", "hh"]
    assert [c["realised_share"] for c in report["components"]] == [0.5, 0.5]  # 10 pairs, drawn 5:5
    assert "pairs" in format_stage_report(report)


def run_cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "redone", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)


def test_cli_data_prepare(tiny_model_dir, tmp_path):
    config = tmp_path / "cpt.yaml"
    config.write_text("stage: cpt\ntrain:\n  max_steps: 5\n  micro_batch_size: 2\n")
    out = tmp_path / "runs" / "cpt"
    sources = (f"[{{name: sns, path: {DATA}/sns_bench/train, tasks: [Note-QueryGen, Note-Taxonomy-single], "
               f"weight: 3}}, {{name: shakespeare, path: {DATA}/general/tinyshakespeare.txt, limit: 300}}]")
    overrides = [f"output_dir={out}", f"model.name_or_path={tiny_model_dir}", "data.seq_len=64",
                 f"data.cache_dir={tmp_path / 'cache'}", f"data.sources={sources}"]
    result = run_cli("data", "prepare", "--stage", "cpt", "--config", str(config), *overrides)
    assert result.returncode == 0, result.stderr[-2000:]
    for text in ("docs in", "filter:too_short", "decontam:sns_bench/", "kept", "planned", "realised",
                 "top duplicate clusters"):
        assert text in result.stdout, text
    path = tmp_path / "runs" / "cpt.data_report.json"
    assert f"report written to {path}" in result.stdout
    report = json.loads(path.read_text())
    assert [c["name"] for c in report["components"]] == ["sns", "shakespeare"]
    assert report["mixture"]["rows_planned"] == report["mixture"]["rows_packed"] == 10
    assert sum(c["tokens"] for c in report["components"]) > 0 and not report["cache_hit"]
    assert not out.exists()  # `redone train` can still start in output_dir
    again = run_cli("data", "prepare", "--stage", "cpt", "--config", str(config), *overrides)
    assert again.returncode == 0 and "(cache hit" in again.stdout

    bad = run_cli("data", "prepare", "--stage", "cpt", "--config", str(config), *overrides,
                  "data.quality.dedup.treshold=0.5")
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == ["redone: error: data.quality.dedup.treshold: unknown config key; "
                                               "did you mean 'data.quality.dedup.threshold'?"]
    if importlib.util.find_spec("redone.train.dpo") is None:
        dpo = run_cli("data", "prepare", "--stage", "dpo", "--config", str(config))
        assert dpo.returncode == 2 and "not yet implemented" in dpo.stderr
