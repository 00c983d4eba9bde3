"""End to end: a small SFT mixture search through the real training loop (tiny proxies, a few steps).

One search runs once for the module (4 proxies, 2 worker processes); the tests then check what it
wrote, that the proxies differ only in their source weights, that a second search trains nothing, and
that bad names and an unsatisfiable constraint are refused with a clear message.
"""

import json
import shlex
from dataclasses import replace

import numpy as np
import pytest
import yaml

from redone.errors import ConfigError, RedoneError
from redone.mix.search import SearchOptions, run_search
from redone.stages import load_config
from tests.conftest import DATA


def write_config(path, model_dir, cache):
    config = {
        "stage": "sft", "output_dir": str(path.parent / "unused"), "seed": 0,
        "model": {"name_or_path": str(model_dir)},
        "data": {"seq_len": 128, "cache_dir": str(cache), "sources": [
            {"name": "sns", "path": f"{DATA}/sns_bench/train", "format": "sns_bench", "weight": 8,
             "tasks": ["Note-Gender", "Note-NER"], "limit": 40},
            {"name": "transbench", "path": f"{DATA}/sns_transbench/train.json", "format": "transbench",
             "limit": 60, "weight": 1},
            {"name": "general_chat", "path": f"{DATA}/preference/hh_rlhf_harmless_train.jsonl",
             "format": "hh_rlhf", "limit": 40, "weight": 1}]},
        "optim": {"lr": 1e-3}, "train": {"max_steps": 40, "micro_batch_size": 2},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def searched(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    config = write_config(root / "sft.yaml", tiny_model_dir, root / "data_cache")
    opts = SearchOptions(stage="sft", config=str(config), proxies=4, tokens=4 * 2 * 128, holdout=4,
                         proxy_layers=1, proxy_hidden=32, jobs=2, simulations=2000, top_k=20, validate=False,
                         out=str(root / "out"), cache=str(root / "cache"))
    summary = run_search(opts, echo=lambda _: None)
    return opts, summary, root


def test_search_writes_a_config_that_applies_the_chosen_weights(searched):
    opts, summary, root = searched
    chosen = np.array(summary["chosen"])
    assert chosen.shape == (3,) and chosen.sum() == pytest.approx(1.0) and (chosen > 0).all()
    applied = load_config("sft", root / "out" / "mix.yaml")
    assert [s.name for s in applied.data.sources] == ["sns", "transbench", "general_chat"]
    assert [s.weight for s in applied.data.sources] == [round(x, 6) for x in summary["chosen"]]
    assert applied.data.sources[0].tasks == ["Note-Gender", "Note-NER"] and applied.data.sources[2].limit == 40
    assert applied.data.mixing == "ratio" and applied.data.seq_len == 128  # the rest comes from defaults:
    overrides = shlex.split((root / "out" / "overrides.txt").read_text())
    assert load_config("sft", opts.config, overrides).data.sources == applied.data.sources
    assert f"mix_search: {summary['id']}" in (root / "out" / "mix.yaml").read_text()


def test_report_and_plot(searched):
    _, summary, root = searched
    report = (root / "out" / "report.md").read_text()
    for label in ("natural", "config", "candidate-1", "candidate-2"):
        assert f"| {label} | " in report
    assert "CV Spearman" in report and summary["fit"]["objective"]["folds"] == 4
    assert (root / "out" / "mix_plot.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((root / "out" / "search.json").read_text())
    assert saved["chosen"] == summary["chosen"] and saved["id"] == summary["id"]


def test_proxies_differ_only_in_source_weights(searched, tiny_model_dir):
    _, summary, _ = searched
    assert summary["ran"] == 4 and summary["cached"] == 0
    configs = []
    for row in summary["proxies"]:
        lineage = json.loads((root_of(row) / "run" / "final" / "redone.json").read_text())
        config = lineage["config"]
        assert [s["weight"] for s in config["data"]["sources"]] == [round(x, 6) for x in row["shares"]]
        assert config["model"]["name_or_path"] == summary["proxy"]["model"] != str(tiny_model_dir)
        assert config["data"]["eval_holdout"] == 4 and config["train"]["max_steps"] == 4
        # The first 60 TransBench items are all zh->en: one component.
        assert set(row["eval_loss"]) == {"Note-Gender", "Note-NER", "TransBench-zh2en", "general_chat"}
        assert row["objective"] == pytest.approx(np.mean([
            np.mean([row["eval_loss"]["Note-Gender"], row["eval_loss"]["Note-NER"]]),
            row["eval_loss"]["TransBench-zh2en"]]))
        assert row["general"] == row["eval_loss"]["general_chat"]
        for source in config["data"]["sources"]:
            source.pop("weight")
        config.pop("output_dir")
        configs.append(config)
    assert all(c == configs[0] for c in configs[1:])
    assert summary["proxies"][1]["shares"] == pytest.approx([0.8, 0.1, 0.1])


def root_of(row):
    from pathlib import Path

    return Path(row["dir"])


def test_second_search_trains_nothing(searched):
    opts, summary, root = searched
    before = {row["key"]: json.loads((root_of(row) / "result.json").read_text())["finished_at"]
              for row in summary["proxies"]}
    again = run_search(replace(opts, out=str(root / "out2")), echo=lambda _: None)
    assert again["ran"] == 0 and again["cached"] == 4
    assert again["chosen"] == summary["chosen"] and again["id"] == summary["id"]
    for row in again["proxies"]:
        lineage = json.loads((root_of(row) / "run" / "final" / "redone.json").read_text())
        assert lineage["finished_at"] == before[row["key"]]
        assert not (root_of(row) / "run" / "checkpoints").exists()  # pruned once finished
    assert sorted(p.name for p in (root / "cache").iterdir() if p.name != "models") == sorted(before)


def test_unsatisfiable_constraint_is_refused(searched):
    opts, _, root = searched
    with pytest.raises(RedoneError, match=r"--max-general-rise: no mixture keeps the general held-out loss "
                                          r"within -90% of the natural mixture's"):
        run_search(replace(opts, max_general_rise=-90.0, out=str(root / "out3")), echo=lambda _: None)
    assert not (root / "out3").exists()


@pytest.mark.parametrize("change, message", [
    ({"target": ["snss"]}, "--target: 'snss' is not a source, unit or task of this config (known: sns, "),
    ({"general": ["chat"]}, "--general: 'chat' is not a source"),
    ({"bounds": ["shakespeare=0:0.5"]}, "--bounds: 'shakespeare' is not a mixture unit (units: sns, transbench, "
                                        "general_chat)"),
    ({"target": ["sns"], "general": ["sns"]}, "are also targets"),
    ({"proxies": 3}, "--proxies: must be at least 4"),
])
def test_bad_names_are_refused_before_training(searched, change, message):
    opts, _, root = searched
    with pytest.raises(ConfigError) as err:
        run_search(replace(opts, cache=str(root / "empty_cache"), **change), echo=lambda _: None)
    assert message in str(err.value)
    assert not any((root / "empty_cache").glob("[0-9a-f]*"))  # no proxy was set up


def test_an_interrupted_proxy_resumes_to_the_same_losses(searched, tmp_path):
    from redone.mix.proxies import train_proxy

    _, summary, _ = searched
    done = root_of(summary["proxies"][2])
    config = yaml.safe_load((done / "proxy.yaml").read_text())
    config["output_dir"] = str(tmp_path / "run")
    (tmp_path / "spec.json").write_text((done / "spec.json").read_text())
    (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(dict(config, train=dict(config["train"], stop_after_steps=3))))
    with pytest.raises(RedoneError, match="stopped before its last step"):
        train_proxy(tmp_path)
    assert (tmp_path / "run" / "checkpoints" / "step-3").is_dir() and not (tmp_path / "result.json").exists()
    (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(config))
    result = train_proxy(tmp_path)
    assert result["resumed"] is True
    # Bitwise the losses of the uninterrupted run (trained in a worker process after another proxy).
    assert result["eval_loss"] == json.loads((done / "result.json").read_text())["eval_loss"]


@pytest.mark.slow  # ~21 s: trains the config's own model three times
def test_verify_trains_the_configs_own_model_on_the_searched_mixtures(searched, tiny_model_dir):
    from redone.mix.verify import VerifyOptions, run_verify

    opts, summary, root = searched
    result = run_verify(VerifyOptions(search=opts.out, labels=["config", "natural", "candidate-1"], tokens=2 * 2 * 128,
                                      jobs=1, threads=1), echo=lambda _: None)
    assert [r["label"] for r in result["rows"]] == ["config", "natural", "candidate-1"]
    assert result["steps"] == 2 and result["paired"] == 3 and -1.0 <= result["spearman"] <= 1.0
    proxies = {r["label"]: r for r in summary["proxies"]}
    for row in result["rows"]:
        lineage = json.loads((root_of(row) / "run" / "final" / "redone.json").read_text())
        assert lineage["config"]["model"]["name_or_path"] == str(tiny_model_dir)  # the config's own model
        assert [s["weight"] for s in lineage["config"]["data"]["sources"]] == [
            round(x, 6) for x in proxies[row["label"]]["shares"]]
        assert row["proxy_objective"] == proxies[row["label"]]["objective"]
    assert json.loads((root / "out" / "verify.json").read_text())["spearman"] == result["spearman"]
    with pytest.raises(ConfigError, match="--labels: 'best' is not a mixture of this search"):
        run_verify(VerifyOptions(search=opts.out, labels=["best", "config"]), echo=lambda _: None)


def test_cpt_search_follows_the_held_out_contract(tiny_model_dir, tmp_path):
    """CPT proxies read ``eval_loss/<source>`` from ``data.eval_holdout`` documents per source. Until the
    CPT schema has that key the search says so in one line; once it has, a small CPT search runs."""
    import dataclasses

    from redone.config.schema import CPTData

    config = tmp_path / "cpt.yaml"
    config.write_text(yaml.safe_dump({
        "stage": "cpt", "output_dir": str(tmp_path / "unused"), "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"seq_len": 64, "cache_dir": str(tmp_path / "data_cache"), "quality": {"enabled": False},
                 "sources": [{"name": "sns_notes", "path": f"{DATA}/sns_bench/train", "format": "sns_bench",
                              "tasks": ["Note-Gender"], "weight": 3},
                             {"name": "shakespeare", "path": f"{DATA}/general/tinyshakespeare.txt", "limit": 300,
                              "weight": 1}]},
        "train": {"max_steps": 10, "micro_batch_size": 2}}))
    opts = SearchOptions(stage="cpt", config=str(config), proxies=4, tokens=3 * 2 * 64, holdout=4, proxy_layers=1,
                         proxy_hidden=32, jobs=2, simulations=1000, top_k=10, validate=False,
                         out=str(tmp_path / "out"), cache=str(tmp_path / "cache"))
    if "eval_holdout" not in {f.name for f in dataclasses.fields(CPTData)}:
        with pytest.raises(ConfigError, match="data.eval_holdout: the cpt stage has no held-out split"):
            run_search(opts, echo=lambda _: None)
        return
    summary = run_search(opts, echo=lambda _: None)
    assert summary["targets"] == {"sns_notes": ["sns_notes"]} and summary["general"] == {"shakespeare": ["shakespeare"]}
    assert all(set(row["eval_loss"]) == {"sns_notes", "shakespeare"} for row in summary["proxies"])
    applied = load_config("cpt", tmp_path / "out" / "mix.yaml")
    assert [s.weight for s in applied.data.sources] == [round(x, 6) for x in summary["chosen"]]


def test_a_proxy_in_training_elsewhere_is_not_trained_twice(searched):
    from redone.mix.proxies import proxy_lock, train_proxy

    _, summary, _ = searched
    busy = root_of(summary["proxies"][0])
    with proxy_lock(busy):
        with pytest.raises(RedoneError, match="is being trained by another process"):
            train_proxy(busy)
    assert train_proxy(busy)["eval_loss"] == summary["proxies"][0]["eval_loss"]  # free again: just collected
