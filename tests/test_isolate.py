"""redone.isolate: a function run in a fresh interpreter, and the pipeline training each stage that way."""

import os
import signal
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from redone import faults
from redone.errors import ConfigError
from redone.isolate import ChildTraceback, run_isolated
from tests.conftest import DATA, REPO
from tests.test_pipeline import PIPELINE


def child_facts(x):
    return {"double": 2 * x, "pid": os.getpid(), "hits": faults.hit_counts()}


def raise_config_error():
    raise ConfigError("sft.optim.lr: must be > 0")


def raise_bug():
    return {}["missing key"]


def count_a_hit():
    faults._kill_hits["checkpoint-save"] = faults._kill_hits.get("checkpoint-save", 0) + 1


def test_result_comes_back_from_another_process():
    facts = run_isolated(child_facts, 21, label="t")
    assert facts["double"] == 42 and facts["pid"] != os.getpid()


def test_user_error_is_raised_unchanged_and_a_bug_carries_the_child_traceback():
    with pytest.raises(ConfigError, match=r"^sft\.optim\.lr: must be > 0$") as info:
        run_isolated(raise_config_error, label="sft")
    assert info.value.__cause__ is None
    with pytest.raises(KeyError, match="missing key") as info:
        run_isolated(raise_bug, label="sft")
    assert isinstance(info.value.__cause__, ChildTraceback) and "in raise_bug" in str(info.value.__cause__)


def test_kill_point_counts_travel_to_the_child_and_back():
    saved = faults.hit_counts()
    try:
        faults.restore_hit_counts({"checkpoint-save": 3})
        assert run_isolated(child_facts, 1, label="t")["hits"] == {"checkpoint-save": 3}
        run_isolated(count_a_hit, label="t")
        assert faults.hit_counts() == {"checkpoint-save": 4}
    finally:
        faults.restore_hit_counts(saved)


def kill_myself():
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_child_kills_the_parent_with_the_same_signal():
    code = ("from redone.isolate import run_isolated\nfrom tests.test_isolate import kill_myself\n"
            "run_isolated(kill_myself, label='sft')\nprint('not reached')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "not reached" not in proc.stdout
    assert "redone: sft: the stage process was killed by SIGKILL" in proc.stderr


def cli(args, env=None):
    env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "redone", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env)


def test_pipeline_stage_killed_in_its_process_resumes_to_the_in_process_result(tiny_model_dir, tmp_path):
    """The default pipeline trains each stage in a child: a kill planned at the pipeline's 2nd checkpoint
    save lands in SFT's process (CPT saved once in its own), the pipeline dies by the same signal, and a
    rerun finishes with the weights of a pipeline that trained both stages in one process."""
    def config(name, extra=""):
        path = tmp_path / f"{name}.yaml"
        path.write_text(PIPELINE.format(root=tmp_path / name, model=tiny_model_dir, cache=tmp_path / "cache",
                                        data=DATA) + "stages: [cpt, sft]\n" + extra)
        return str(path)

    flags = ["eval.enabled=false"]
    killed = cli(["pipeline", "--config", config("isolated"), *flags], env={"REDONE_KILL_AT": "checkpoint-save:2"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert "redone: sft: the stage process was killed by SIGKILL" in killed.stderr
    assert (tmp_path / "isolated" / "cpt" / "final").is_dir() and not (tmp_path / "isolated" / "sft" / "final").exists()
    resumed = cli(["pipeline", "--config", config("isolated"), *flags])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "[pipeline] cpt: up to date, skipped" in resumed.stdout and "resum" in resumed.stdout
    together = cli(["pipeline", "--config", config("together", "stage_processes: never\n"), *flags])
    assert together.returncode == 0, together.stderr[-2000:]
    for stage in ("cpt", "sft"):
        a = load_file(tmp_path / "isolated" / stage / "final" / "model.safetensors")
        b = load_file(tmp_path / "together" / stage / "final" / "model.safetensors")
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), stage


def test_stage_processes_is_checked(tiny_model_dir, tmp_path, monkeypatch):
    from redone.pipeline import run_pipeline

    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE.format(root=tmp_path / "run", model=tiny_model_dir, cache=tmp_path / "cache", data=DATA))
    with pytest.raises(ConfigError, match=r"stage_processes: 'sometimes' is not one of auto, always, never"):
        run_pipeline(path, ["stage_processes=sometimes"], log=lambda _: None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"'always' cannot be honoured under a multi-process launch"):
        run_pipeline(path, ["stage_processes=always", "eval.enabled=false"], log=lambda _: None)
    assert not (tmp_path / "run" / "cpt").exists()
