"""Kill/resume end to end: ``scripts/kill_resume.py`` with K=3 trials per stage on the tiny model.

Each of cpt, sft, dpo and the pipeline gets an uninterrupted reference run and three trials killed with
SIGKILL inside a checkpoint save, the final save, the tokenized-data cache write and (dpo) the reference
cache write, and at a random optimizer step or a random moment; every trial is rerun until it finishes
and must end with bitwise-equal final weights and an identical loss log. Two worker processes share the
stages (pipeline | cpt, sft, dpo).
"""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

STAGES = ("cpt", "sft", "dpo", "pipeline")


@pytest.mark.slow
def test_killed_runs_resume_to_identical_results(tmp_path):
    proc = subprocess.run(
        [sys.executable, "scripts/kill_resume.py", "--k", "3", "--launcher", "fork", "--points", "essential",
         "--random-kills", "one", "--jobs", "2", "--steps", "4", "--seed", "0", "--workdir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=1200)
    report = proc.stdout + proc.stderr[-3000:]
    for stage in STAGES:
        assert f"{stage}: 3/3 identical" in proc.stdout, report
    summary = json.loads(proc.stdout.strip().splitlines()[-1])["stages"]
    hit = {stage: set(info["points_hit"]) for stage, info in summary.items()}
    for stage in STAGES:
        assert {"checkpoint-save", "final-save"} <= hit[stage] and hit[stage] & {"step", "timer"}, (stage, hit[stage])
        assert summary[stage]["kills"] >= 3, summary[stage]
    for stage in ("cpt", "sft", "dpo"):
        assert "data-cache-write" in hit[stage], (stage, hit[stage])
    assert "ref-cache-write" in hit["dpo"] and "ref-cache-write" in hit["pipeline"], hit
    assert proc.returncode == 0, report
