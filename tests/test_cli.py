"""The CLI as users run it: through `accelerate launch` and as the `redone` script."""

import os
import subprocess
import sys

from tests.conftest import REPO, cpt_overrides


def run(args, **kwargs):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=600, **kwargs)


def test_accelerate_launch_cpt(tiny_model_dir, tmp_path):
    overrides = cpt_overrides(tiny_model_dir, tmp_path / "out", str(tmp_path / "cache"), steps=2)
    config = tmp_path / "cpt.yaml"
    config.write_text("stage: cpt\ntracking:\n  report_to: [tensorboard]\n")
    result = run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
                  "-m", "redone", "train", "--stage", "cpt", "--config", str(config), *overrides])
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "final" / "model.safetensors").exists()
    assert "cpt finished" in result.stdout
    assert list((tmp_path / "out").rglob("events.out.tfevents.*"))  # tensorboard tracker wrote


def test_config_show_and_errors(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("stage: cpt\noutput_dir: o\ndata:\n  sources: [{path: a.txt}]\n")
    shown = run([sys.executable, "-m", "redone", "config", "show", "--stage", "cpt", "--config", str(config),
                 "optim.lr=0.5"])
    assert shown.returncode == 0 and "lr: 0.5" in shown.stdout and "seq_len: 512" in shown.stdout
    bad = run([sys.executable, "-m", "redone", "train", "--stage", "cpt", "--config", str(config), "optim.lrr=1"])
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == ("redone: error: optim.lrr: unknown config key; "
                                                   "did you mean 'optim.lr'?")
    missing = run([sys.executable, "-m", "redone", "train", "--stage", "cpt", "--config", str(config),
                   f"output_dir={tmp_path / 'o'}", "data.sources=[{path: /nonexistent/x.txt}]",
                   "model.name_or_path=/nonexistent/model"])
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    assert not (tmp_path / "o").exists()  # nothing half-written
