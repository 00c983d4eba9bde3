"""The whole recipe on the tiny model: chaining, lineage, skipping, partial re-runs and resume."""

import json

import pytest

from redone.errors import ConfigError
from redone.pipeline import run_pipeline
from tests.conftest import DATA

PIPELINE = """
output_root: {root}
seed: 0
model:
  name_or_path: {model}
cpt:
  data:
    seq_len: 64
    cache_dir: {cache}
    sources:
      - {{name: sns_notes, path: {data}/sns_bench/train, format: sns_bench, tasks: [Note-Gender], weight: 3}}
      - {{name: shakespeare, path: {data}/general/tinyshakespeare.txt, weight: 1, limit: 200}}
  train: {{max_steps: 2, micro_batch_size: 2, save_every: 2, progress: false}}
  optim: {{lr: 1.0e-3}}
sft:
  data:
    seq_len: 256
    max_prompt_chars: 300
    cache_dir: {cache}
    sources:
      - {{name: sns, path: {data}/sns_bench/train, format: sns_bench, tasks: [Note-Gender, Note-NER], limit: 20}}
  train: {{max_steps: 4, micro_batch_size: 2, save_every: 2, log_every: 1, progress: false}}
  optim: {{lr: 1.0e-3}}
dpo:
  data:
    seq_len: 256
    max_prompt_chars: 300
    cache_dir: {cache}
    sources:
      - {{name: sns, path: {data}/sns_bench/train, format: sns_bench, tasks: [Note-Gender], limit: 12}}
  train: {{max_steps: 2, micro_batch_size: 2, save_every: 2, progress: false}}
  optim: {{lr: 1.0e-4}}
eval:
  benches: [sns-bench]
  models: [base, dpo]
  limit: 1
  max_new_tokens_cap: 4
  batch_size: 4
  data_dir: {data}
"""


@pytest.fixture()
def pipeline_file(tiny_model_dir, tmp_path):
    path = tmp_path / "pipeline.yaml"
    # Stages in this process: these tests are about chaining and skipping, and a fresh interpreter per
    # stage (the default, covered by tests/test_golden.py and tests/test_isolate.py) adds ~5 s each.
    path.write_text(PIPELINE.format(root=tmp_path / "run", model=tiny_model_dir, cache=tmp_path / "cache",
                                    data=DATA) + "stage_processes: never\n")
    return path


def lineage(root, stage):
    return json.loads((root / stage / "final" / "redone.json").read_text())


def statuses(record):
    return {stage: info["status"] for stage, info in record["stages"].items()}


def test_pipeline_chains_skips_and_reruns(pipeline_file, tmp_path):
    root = tmp_path / "run"
    lines = []
    first = run_pipeline(pipeline_file, log=lines.append)
    assert statuses(first) == {"cpt": "fresh", "sft": "fresh", "dpo": "fresh"}
    # Each stage started from exactly the weights its parent saved.
    assert lineage(root, "sft")["start_fingerprint"] == lineage(root, "cpt")["fingerprint"]
    assert lineage(root, "dpo")["start_fingerprint"] == lineage(root, "sft")["fingerprint"]
    assert lineage(root, "cpt")["start_fingerprint"] == first["base_fingerprint"]
    assert any(line.startswith("[pipeline]   inherited model.name_or_path=") and "cpt/final" in line
               for line in lines)
    for key in ("stage", "parent_model", "fingerprint", "data_sources", "tokens_seen", "config", "redone_version"):
        assert key in lineage(root, "dpo")
    card = (root / "dpo" / "final" / "README.md").read_text()
    # The tiny base is a local dir with no Hub id: the card says so instead of inventing a base_model.
    assert "license: cc-by-nc-sa-4.0" in card and "Base model: the local model dir" in card
    assert "SNS-Bench (Guo et al.)" in card and "CC BY-NC-SA 4.0" in card
    from redone.hub import validate_card

    validate_card(root / "dpo" / "final" / "README.md")
    assert "## Evaluation" in card
    report = (root / "report.md").read_text()
    assert "skill-free" in report and "SNS-Bench average" in report
    assert "- data: test split, first 1 items of each SNS-Bench file" in report and "dtype float32" in report
    assert {p.name for p in root.glob("*.png")} == {"loss_curves.png", "sft_task_losses.png", "sns_bench_bars.png"}

    again = []
    second = run_pipeline(pipeline_file, log=again.append)
    assert statuses(second) == {"cpt": "skipped", "sft": "skipped", "dpo": "skipped"}
    assert sum("eval" in line and "cached" in line for line in again) == 3  # skill-free, base, dpo

    third = run_pipeline(pipeline_file, ["sft.optim.lr=5.0e-4"], log=lambda _: None)
    assert statuses(third) == {"cpt": "skipped", "sft": "restart", "dpo": "restart"}
    assert lineage(root, "dpo")["start_fingerprint"] == lineage(root, "sft")["fingerprint"]


def test_interrupted_stage_resumes(pipeline_file, tmp_path):
    root = tmp_path / "run"
    stopped = run_pipeline(pipeline_file, ["sft.train.stop_after_steps=2", "eval.enabled=false"],
                           log=lambda _: None)
    assert statuses(stopped) == {"cpt": "fresh", "sft": "stopped"}
    assert (root / "sft" / "checkpoints" / "step-2" / "COMPLETE").exists()
    lines = []
    resumed = run_pipeline(pipeline_file, ["eval.enabled=false", "prune_checkpoints=true"], log=lines.append)
    assert statuses(resumed) == {"cpt": "skipped", "sft": "resume", "dpo": "fresh"}
    log = [json.loads(x) for x in (root / "sft" / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log if "loss" in x] == [1, 2, 3, 4]
    # Stages finished in this run drop their step checkpoints; the skipped CPT keeps its own.
    assert not (root / "sft" / "checkpoints").exists() and not (root / "dpo" / "checkpoints").exists()
    assert (root / "cpt" / "checkpoints" / "step-2" / "COMPLETE").exists()
    assert (root / "sft" / "final" / "redone.json").exists()


def test_only_and_from_need_upstream(pipeline_file):
    from redone.errors import ConfigError

    with pytest.raises(ConfigError, match="cpt: not selected"):
        run_pipeline(pipeline_file, ["eval.enabled=false"], only="dpo", log=lambda _: None)
    with pytest.raises(ConfigError, match="--from: 'rl' is not one of"):
        run_pipeline(pipeline_file, [], start="rl", log=lambda _: None)
    # A bad eval value is refused before any stage trains.
    with pytest.raises(ConfigError, match=r"eval.subset: unknown value 'random' \(choose from first, spread\)"):
        run_pipeline(pipeline_file, ["eval.subset=random"], log=lambda _: None)
    assert not (pipeline_file.parent / "run" / "cpt").exists()


def test_cluster_and_demo_configs_validate():
    from redone.pipeline import dry_run
    from tests.conftest import REPO

    qwen = dry_run(REPO / "configs" / "pipeline" / "qwen2.5-7b.yaml", log=lambda _: None)
    assert [c.stage for c in qwen] == ["cpt", "sft", "dpo"]
    sft = qwen[1]
    assert (sft.optim.lr, sft.optim.warmup_ratio, sft.optim.scheduler, sft.data.seq_len) == (5e-6, 0.1, "cosine", 16384)
    assert sft.model.name_or_path == "runs/qwen2.5-7b-redone/cpt/final" and sft.train.precision == "bf16"
    demo = dry_run(REPO / "configs" / "pipeline" / "demo.yaml", log=lambda _: None)
    assert demo[2].model.name_or_path == "runs/demo/sft/final"
    # The full-data recipe inherits the demo and widens the data: no source limit left in SFT.
    full = dry_run(REPO / "configs" / "pipeline" / "full.yaml", log=lambda _: None)
    assert full[1].model.name_or_path == "runs/full/cpt/final" and full[1].data.temperature == 3
    assert [s.limit for s in full[1].data.sources] == [None, None, None]
    # Sized to fit 150 min on 2 cores (measured 67 min): twice the demo's SFT, on-policy DPO, whole test split.
    assert full[1].train.max_steps >= 2 * demo[1].train.max_steps and full[2].data.sample_rejected == 4
    from redone.config.load import read_yaml_with_defaults

    raw = read_yaml_with_defaults(REPO / "configs" / "pipeline" / "full.yaml")
    assert raw.eval.limit is None and "preference" in raw.eval.benches


def test_ablations_reuse_matching_stages_and_report_intervals(pipeline_file, tmp_path):
    root = tmp_path / "run"
    lines = []
    record = run_pipeline(pipeline_file, ["ablations.bootstrap=200", "eval.models=[base, sft, dpo]",
                                          "eval.extra_prompt_styles=[official]"],
                          ablations=True, log=lines.append)
    assert statuses(record) == {"cpt": "fresh", "sft": "fresh", "dpo": "fresh"}
    # Only the rows that are not prefixes of the main chain train, and only their own stages: SFT from
    # the base model, then DPO from that SFT. CPT (and the main SFT/DPO) are not trained twice.
    assert {row: {s: i["status"] for s, i in st.items()} for row, st in record["ablations"].items()} == {
        "sft": {"sft": "fresh"}, "sft-dpo": {"sft": "skipped", "dpo": "fresh"}}
    ablation = json.loads((root / "ablations" / "sft" / "final" / "redone.json").read_text())
    assert ablation["start_fingerprint"] == record["base_fingerprint"]
    sft_dpo = json.loads((root / "ablations" / "sft-dpo" / "final" / "redone.json").read_text())
    assert sft_dpo["start_fingerprint"] == ablation["fingerprint"]
    assert sorted(p.name for p in (root / "ablations").iterdir()) == ["sft", "sft-dpo"]
    report = (root / "report.md").read_text()
    assert "## Ablations" in report and "| SFT only |" in report and "| CPT→SFT→DPO |" in report
    assert "paired bootstrap over the 12 SNS-Bench items (200 resamples" in report
    deltas = record["eval"]["ablations"]["deltas"]
    assert set(deltas) == {"cpt-sft", "sft-dpo", "cpt-sft-dpo"}
    assert all(d["low"] <= d["delta"] <= d["high"] for d in deltas.values())
    assert (root / "ablations.png").exists()
    # Every model column and every row is scored with the official SNS-Bench prompts too.
    assert "## Evaluation with the official prompts" in report and "SNS-Bench avg (official prompts)" in report
    official = json.loads((root / "eval" / "ablation-sft@official.json").read_text())
    assert official["header"]["prompt_style"] == "official"

    again = run_pipeline(pipeline_file, ["ablations.bootstrap=200", "eval.models=[base, sft, dpo]",
                                         "eval.extra_prompt_styles=[official]"],
                         ablations=True, log=lambda _: None)
    assert {row: {s: i["status"] for s, i in st.items()} for row, st in again["ablations"].items()} == {
        "sft": {"sft": "skipped"}, "sft-dpo": {"sft": "skipped", "dpo": "skipped"}}
    with pytest.raises(ConfigError, match=r"ablations.rows\[0\]: 'dpo-sft' is not a chain"):
        run_pipeline(pipeline_file, ["ablations.rows=[dpo-sft]"], ablations=True, log=lambda _: None)
