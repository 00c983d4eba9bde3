import pytest

from redone.config import config_hash
from redone.errors import ConfigError
from redone.stages import load_config

BASE = ["output_dir=/tmp/x", "data.sources=[{path: a.txt}]"]


def test_defaults_and_overrides(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("train:\n  max_steps: 50\n  log_every: ${train.max_steps}\noptim:\n  lr: 3.0e-4\n")
    child = tmp_path / "child.yaml"
    child.write_text("defaults: [base.yaml]\nstage: cpt\noutput_dir: out\ndata:\n  sources: [{path: a.txt}]\n"
                     "optim:\n  lr: 1.0e-4\n")
    config = load_config("cpt", child, ["train.max_steps=7"])
    assert config.optim.lr == 1e-4  # the file beats its base
    assert config.train.max_steps == 7 and config.train.log_every == 7  # override, then interpolation
    assert config.data.sources[0].weight == 1.0


@pytest.mark.parametrize("overrides, message", [
    (["data.sources=[{path: a.txt, wieght: 3}]"], r"data.sources\[0\].wieght: unknown config key; did you mean 'data.sources\[0\].weight'"),
    (["trian.max_steps=3"], r"trian: unknown config key; did you mean 'train'"),
    (["optim.lr=abc"], r"optim.lr: .*could not be converted"),
    (["train.max_steps=0"], r"train.max_steps: must be >= 1"),
    (["data.sources=[{path: a.txt, weight: 0}]"], r"data.sources\[0\].weight: must be > 0"),
    (["data.mixing=tempreature"], r"data.mixing: 'tempreature' is not one of"),
    (["data.temperature=3"], r"data.temperature: only used with data.mixing=temperature in CPT"),
    (["optim.warmup_ratio=1.5"], r"optim.warmup_ratio"),
    (["data.sources=[]"], r"data.sources: at least one"),
    (["tracking.report_to=[mlflow]"], r"tracking.report_to\[0\]"),
])
def test_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cpt", None, BASE + overrides)


def test_stage_specific_keys():
    with pytest.raises(ConfigError, match="dpo: unknown config key"):
        load_config("cpt", None, BASE + ["dpo.beta=0.2"])
    assert load_config("dpo", None, BASE + ["dpo.beta=0.2"]).dpo.beta == 0.2


def test_yaml_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: cpt\ntrain:\n  max_steps: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config("cpt", bad)
    wrong = tmp_path / "sft.yaml"
    wrong.write_text("stage: sft\n")
    with pytest.raises(ConfigError, match="is a 'sft' config"):
        load_config("cpt", wrong, BASE)


def test_hash_changes_with_values():
    a = load_config("cpt", None, BASE)
    b = load_config("cpt", None, BASE + ["seed=1"])
    assert config_hash(a) != config_hash(b)
    assert config_hash(a, ("data",)) == config_hash(b, ("data",))
