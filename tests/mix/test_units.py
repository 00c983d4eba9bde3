"""Mixture units: sources or task files, token counts, config shares, name resolution."""

import pytest

from redone.errors import ConfigError
from redone.mix.units import assign_source_index, build_units, default_targets, resolve_names
from redone.stages import load_config
from tests.conftest import DATA

SOURCES = (f"[{{name: sns, path: {DATA}/sns_bench/train, format: sns_bench, weight: 8, "
           f"tasks: [Note-Gender, Note-NER]}}, {{name: transbench, path: {DATA}/sns_transbench/train.json, "
           f"format: transbench, weight: 1}}, {{name: general_chat, "
           f"path: {DATA}/preference/hh_rlhf_harmless_train.jsonl, format: hh_rlhf, weight: 1}}]")


def config():
    return load_config("sft", None, ["output_dir=unused", f"data.sources={SOURCES}"])


def info():
    rows = [("Note-Gender", 0, 100, 0.3), ("Note-NER", 0, 300, 0.5), ("TransBench-en2zh", 1, 50, 0.04),
            ("TransBench-zh2en", 1, 50, 0.06), ("general_chat", 2, 500, 0.1)]
    return [{"name": n, "source_index": s, "tokens": t, "planned_share": p, "digest": f"d{s}"} for n, s, t, p in rows]


def test_units_over_sources():
    data = build_units(config(), info(), "sources")
    assert data.names == ["sns", "transbench", "general_chat"]
    assert data.natural.tolist() == [0.4, 0.1, 0.5]
    assert data.config_shares.tolist() == pytest.approx([0.8, 0.1, 0.1])
    assert data.units[0].components == ["Note-Gender", "Note-NER"]
    assert data.units[0].source["tasks"] == ["Note-Gender", "Note-NER"]


def test_units_over_tasks_split_only_task_folders():
    data = build_units(config(), info(), "tasks")
    assert data.names == ["Note-Gender", "Note-NER", "transbench", "general_chat"]
    assert data.natural.tolist() == [0.1, 0.3, 0.1, 0.5]
    gender = data.units[0].source
    assert gender["name"] == "Note-Gender" and gender["tasks"] == ["Note-Gender"] and gender["format"] == "sns_bench"
    assert data.units[2].components == ["TransBench-en2zh", "TransBench-zh2en"]


def test_names_resolve_to_components_and_unknown_names_are_refused():
    data = build_units(config(), info(), "tasks")
    groups = resolve_names(data, ["sns", "Note-NER", "TransBench-zh2en"], "--target")
    assert groups == {"sns": ["Note-Gender", "Note-NER"], "Note-NER": ["Note-NER"],
                      "TransBench-zh2en": ["TransBench-zh2en"]}
    with pytest.raises(ConfigError, match=r"--target: 'snss' is not a source, unit or task of this config "
                                          r"\(known: sns, transbench, general_chat, Note-Gender"):
        resolve_names(data, ["snss"], "--target")
    with pytest.raises(ConfigError, match="--over tasks: only SFT"):
        build_units(load_config("cpt", None, ["output_dir=x", f"data.sources=[{{path: {DATA}/general/tinyshakespeare.txt}}]"]),
                    [], "tasks")


def test_default_targets_are_the_sns_sources():
    # transbench's path is data/sns_transbench: it counts as SNS data.
    assert default_targets(config()) == ["sns", "transbench"]
    plain = load_config("sft", None, ["output_dir=x", f"data.sources=[{{name: chat, path: {DATA}/preference/"
                                      "hh_rlhf_harmless_train.jsonl, format: hh_rlhf}]"])
    with pytest.raises(ConfigError, match="--target: no data source has 'sns'"):
        default_targets(plain)


def test_components_map_to_their_sources_by_path_in_order():
    rows = [{"name": "a", "source": "x"}, {"name": "b", "source": "x"}, {"name": "c", "source": "y"},
            {"name": "d", "source": "x"}]
    assign_source_index(rows, ["x", "y", "x"])
    assert [r["source_index"] for r in rows] == [0, 0, 1, 2]
    with pytest.raises(ConfigError, match="read the same path"):
        assign_source_index(rows, ["x", "x"])
