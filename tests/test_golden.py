"""Golden numbers of the tiny three-stage pipeline (tests/test_pipeline.py's recipe), recorded on the code
before the issue-12 reorganisation (commit aa5c665), so that moving code between modules can be shown to
change nothing a user sees: the same losses per step and per task, the same token counts, the same eval
prompts (hashes) and scores.

Losses are compared to 1e-5 relative: the default AdamW kernel became torch's fused one afterwards, which
rounds differently from the per-parameter loop in the last bits (measured: <= 2e-7 relative on these
runs; with ``optim.implementation=loop`` the runs are bitwise identical to the recording). Token counts,
prompt hashes and scores are exact.
"""

from __future__ import annotations

import json

import pytest

from redone.pipeline import run_pipeline
from tests.conftest import DATA
from tests.test_pipeline import PIPELINE

# train_log.jsonl lines (throughput, lr and grad-norm left out: lr is a schedule, the rest timing/noise).
GOLDEN_LOGS = {
    "cpt": [{"step": 2, "loss": 10.807792417464718, "tokens_seen": 256, "loss/sns_notes": 10.803464403339461,
             "tokens/sns_notes": 153.0, "loss/shakespeare": 10.814764083059211, "tokens/shakespeare": 95.0}],
    "sft": [{"step": 1, "loss": 10.724947102864583, "tokens_seen": 477, "loss/Note-Gender": 10.748577117919922,
             "tokens/Note-Gender": 6.0, "loss/Note-NER": 10.709191216362846, "tokens/Note-NER": 9.0},
            {"step": 2, "loss": 10.616982199928977, "tokens_seen": 937, "loss/Note-Gender": 10.429722468058268,
             "tokens/Note-Gender": 6.0, "loss/Note-NER": 10.687202453613281, "tokens/Note-NER": 16.0},
            {"step": 3, "loss": 10.59807880108173, "tokens_seen": 1405, "loss/Note-Gender": 10.273305892944336,
             "tokens/Note-Gender": 6.0, "loss/Note-NER": 10.695510101318359, "tokens/Note-NER": 20.0},
            {"step": 4, "loss": 10.392968570484834, "tokens_seen": 1873, "loss/Note-Gender": 10.182990392049154,
             "tokens/Note-Gender": 6.0, "loss/Note-NER": 10.507501775568182, "tokens/Note-NER": 11.0}],
    "dpo": [{"step": 2, "loss": 0.690851628780365, "tokens_seen": 1182, "loss/Note-Gender": 0.6908516138792038,
             "reward_accuracy/Note-Gender": 0.5, "reward_chosen/Note-Gender": 0.0012267112964750027,
             "reward_rejected/Note-Gender": -0.0033750057918950915,
             "reward_margin/Note-Gender": 0.004601717088370094, "logp_chosen/Note-Gender": -30.427109241485596,
             "logp_rejected/Note-Gender": -30.73424005508423, "pairs/Note-Gender": 4.0,
             "tokens/Note-Gender": 1182.0}],
}
# Tokens of each mixture component as recorded in final/redone.json.
GOLDEN_SOURCES = {"cpt": [("sns_notes", 41169), ("shakespeare", 8040)],
                  "sft": [("Note-Gender", 2912), ("Note-NER", 1772)], "dpo": [("Note-Gender", 3536)]}
# sha of each eval prompt (first item of every SNS-Bench test file, redone style, clipped to 300 chars).
GOLDEN_PROMPTS = {
    "sns-bench/Note-CHLW/0": "55d692bb515f8d56", "sns-bench/Note-Gender/0": "fc5389b4bb31b46c",
    "sns-bench/Note-Hashtag-multiple/0": "1120c67ee08ad4ea", "sns-bench/Note-Hashtag-single/0": "e543e4f5752a66a5",
    "sns-bench/Note-MRC-complex/0": "30a209b40a0f8c70", "sns-bench/Note-MRC-simple/0": "9a01fdd3f4f9ce44",
    "sns-bench/Note-NER/0": "81763809a99dbd0d", "sns-bench/Note-QueryCorr-explain/0": "fb79dd12f1e98414",
    "sns-bench/Note-QueryCorr-topic/0": "38d8a0f5cc88c3ac", "sns-bench/Note-QueryGen/0": "dbd8c1b4149bbafb",
    "sns-bench/Note-Taxonomy-multiple/0": "1c238cce0811f462", "sns-bench/Note-Taxonomy-single/0": "268a59eb8472ed5d",
}
GOLDEN_SKILL_FREE = {"Note-CHLW": 100.0, "Note-QueryGen": 50.29949552555318}  # every other file 0.0
GOLDEN_AVERAGES = {"skill-free": 18.78743694069415, "base": -0.15741660393632978, "dpo": -0.15741660393632978}


@pytest.fixture(scope="module")
def golden_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("golden")
    path = tmp / "pipeline.yaml"
    path.write_text(PIPELINE.format(root=tmp / "run", model=tiny_model_dir, cache=tmp / "cache", data=DATA))
    run_pipeline(path, log=lambda _: None)
    return tmp / "run"


def _log(root, stage):
    lines = [json.loads(x) for x in (root / stage / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in x.items() if k not in ("tokens_per_s", "grad_norm", "lr")} for x in lines]


@pytest.mark.parametrize("stage", ["cpt", "sft", "dpo"])
def test_losses_and_tokens_match_the_recording(golden_run, stage):
    log = _log(golden_run, stage)
    assert [sorted(x) for x in log] == [sorted(x) for x in GOLDEN_LOGS[stage]]
    for got, want in zip(log, GOLDEN_LOGS[stage]):
        for key, value in want.items():
            if key.startswith(("loss", "reward", "logp")):
                # A reward margin is a small difference of two large log-prob sums: its last bits move with
                # the thread count other tests leave behind, so it gets an absolute 1e-6.
                tol = 1e-6 if "margin" in key else 1e-7
                assert got[key] == pytest.approx(value, rel=1e-5, abs=tol), (stage, got["step"], key)
            else:
                assert got[key] == value, (stage, got["step"], key)
    lineage = json.loads((golden_run / stage / "final" / "redone.json").read_text())
    assert [(s["name"], s["tokens"]) for s in lineage["data_sources"]] == GOLDEN_SOURCES[stage]


def test_eval_prompts_and_scores_match_the_recording(golden_run):
    for label, average in GOLDEN_AVERAGES.items():
        result = json.loads((golden_run / "eval" / f"{label}.json").read_text())
        assert result["sns_bench"]["average"] == pytest.approx(average, abs=1e-6), label
    skill_free = json.loads((golden_run / "eval" / "skill-free.json").read_text())["sns_bench"]["files"]
    assert {f: r["score"] for f, r in skill_free.items() if r["score"]} == pytest.approx(GOLDEN_SKILL_FREE)
    predictions = (golden_run / "eval" / "dpo.predictions.jsonl").read_text().splitlines()[1:]
    assert {p["key"]: p["prompt_sha"] for p in map(json.loads, predictions)} == GOLDEN_PROMPTS
