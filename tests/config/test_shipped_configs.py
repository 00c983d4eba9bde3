"""Every shipped pipeline config resolves: each stage's config validates against the schema (dry run)."""

from pathlib import Path

import pytest

from redone.pipeline import ablation_rows, dry_run, load_pipeline

PIPELINES = sorted((Path(__file__).resolve().parents[2] / "configs" / "pipeline").glob("*.yaml"))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_pipeline_config_resolves(path, monkeypatch):
    monkeypatch.chdir(path.parents[2])  # data paths in the configs are relative to the repo root
    configs = dry_run(path, log=lambda *_: None)
    _, top = load_pipeline(path)
    assert [c.stage for c in configs] == list(top.stages)


def test_ablation_config_plans_the_paper_rows():
    path = next(p for p in PIPELINES if p.name == "demo_ablations.yaml")
    _, top = load_pipeline(path)
    assert top.ablations.enabled
    assert ablation_rows(top) == ["sft", "cpt-sft", "sft-dpo", "cpt-sft-dpo"]
