"""The bad-input catalogue: every case runs the real CLI and must fail cleanly (or, for valid but unusual
input, succeed).

A failing case must exit non-zero (1 for user errors, 2 for argparse usage errors) with ONE error line on
stderr (``redone: error: ...``) that names the file and its 1-based line, or the config key, with no
traceback, and must leave the pre-existing output root (holding a marker file; the run's output_dir
lies inside it) byte-for-byte untouched. Valid-but-unusual inputs (UTF-8 BOM, CRLF, trailing blank
lines) must train one step and exit 0.

Cases run in-process through ``redone.cli.main`` (a subprocess pays ~4 s of imports per case); a few
subprocess cases at the end prove the real exit codes and stderr of ``python -m redone``.

A case's ``needs_lead`` text records where its fix lives (each was an expected failure until it landed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from redone.cli import main
from tests.conftest import DATA, REPO

ERROR_LINE = re.compile(r"^redone: error: ")
# tqdm progress bars ("[00:00<?, ?it/s]", "[00:00, 44 examples/s]"), library warnings and blank pieces
PROGRESS = re.compile(r"\[\d+:\d+(<|,|\])|\[WARNING\]|^\s*$")


# --------------------------------------------------------------------------------------------- harness


class Env:
    """One case's sandbox: a guarded output root with a marker file, a cache dir and input files."""

    def __init__(self, tmp: Path, model: Path):
        self.tmp, self.model = tmp, model
        self.root = tmp / "out_root"
        self.root.mkdir()
        (self.root / "marker.txt").write_text("keep me\n")
        self.out = self.root / "run"
        self.cache = tmp / "cache"
        self.inputs = tmp / "inputs"
        self.inputs.mkdir()

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.inputs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode("utf-8")
        path.write_bytes(content)
        return path

    def model_copy(self, mutate: Callable[[Path], None]) -> Path:
        path = self.inputs / "model"
        shutil.copytree(self.model, path)
        mutate(path)
        return path

    def config(self, stage: str, sources: list[dict] | None = None, raw: str | None = None, **keys) -> Path:
        """A small valid config of ``stage`` (one training step), with dotted ``keys`` changed."""
        if raw is not None:
            return self.write(f"{stage}.yaml", raw)
        data = base_config(self, stage, sources)
        for key, value in keys.items():
            set_key(data, key.replace("__", "."), value)
        return self.write(f"{stage}.yaml", yaml.safe_dump(data, sort_keys=False))

    def train(self, stage: str, sources: list[dict] | None = None, *overrides: str, **keys) -> list[str]:
        return ["train", "--stage", stage, "--config", str(self.config(stage, sources, **keys)), *overrides]


def base_config(env: Env, stage: str, sources: list[dict] | None) -> dict:
    if sources is None:
        sources = [{"name": "text", "path": str(env.write("default.txt", PARAGRAPHS))}] if stage == "cpt" else \
            [{"name": "chat", "path": str(env.write("default.jsonl", chat_lines(3))), "format": "chat"}]
    data = {"seq_len": 64 if stage == "cpt" else 192, "cache_dir": str(env.cache), "sources": sources}
    if stage == "cpt":
        data["quality"] = {"enabled": False}
    if stage == "dpo":
        data["bad_pairs"] = "error"
    return {"stage": stage, "output_dir": str(env.out), "seed": 0, "model": {"name_or_path": str(env.model)},
            "data": data, "optim": {"lr": 1.0e-3},
            "train": {"max_steps": 1, "micro_batch_size": 1, "save_every": 1, "log_every": 1, "progress": False}}


def set_key(node: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


PARAGRAPHS = "".join(f"Paragraph {i} talks about notes, hashtags and the people who write them.\n\n"
                     for i in range(40))


def chat_record(i: int = 0) -> dict:
    return {"messages": [{"role": "user", "content": f"Question {i}: what is a hashtag?"},
                         {"role": "assistant", "content": f"Answer {i}: a word marked with #."}]}


def chat_lines(n: int, records: list | None = None) -> str:
    return "".join(json.dumps(r) + "\n" for r in (records or [chat_record(i) for i in range(n)]))


def pair_record(i: int = 0, **changes) -> dict:
    record = {"prompt": f"Is note {i} about travel?", "chosen": "Yes, it describes a trip.", "rejected": "No."}
    record.update(changes)
    return {k: v for k, v in record.items() if v is not None}


def pair_lines(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``redone.cli.main`` in-process: (exit code, stdout, stderr); an escaped exception is a failure."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001  what a user would see as a raw traceback
        out, err = capsys.readouterr()
        pytest.fail(f"raw traceback escaped the CLI:\n{traceback.format_exc()}\nstderr: {err}")
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not PROGRESS.search(line)]


def assert_clean_failure(case: Case, code: int, stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert code == case.code, f"exit {code}, expected {case.code}; stderr: {stderr}"
    lines = error_lines(stderr)
    if case.code == 2:  # argparse: a usage line, then one error line
        assert lines and lines[-1].startswith("redone") and "error:" in lines[-1], stderr
        assert re.search(case.match, lines[-1]), f"{case.match!r} not in {lines[-1]!r}"
        return
    assert len(lines) == 1 and ERROR_LINE.match(lines[0]), f"want one error line, got: {stderr!r}"
    assert re.search(case.match, lines[0]), f"{case.match!r} not in {lines[0]!r}"


# --------------------------------------------------------------------------------------------- cases


@dataclass
class Case:
    id: str
    argv: Callable[[Env], list[str]]
    match: str = ""  # regex the error line must contain (file:line or key); "" for success cases
    code: int = 1
    needs_lead: str | None = None  # the change in a file this module's author does not own
    check: Callable[[Env, str, str], None] | None = None  # extra assertions (success cases)


CASES: list[Case] = []


def case(id: str, match: str = "", code: int = 1, needs_lead: str | None = None, check=None):
    def register(argv):
        CASES.append(Case(id, argv, match, code, needs_lead, check))
        return argv
    return register


def cfg_case(id: str, text: str, match: str, stage: str = "cpt", needs_lead: str | None = None) -> None:
    """A config-file case: ``text`` is the whole file; ``{base}`` in it expands to a valid config."""

    def argv(env: Env) -> list[str]:
        body = text.replace("{base}", yaml.safe_dump(base_config(env, stage, None), sort_keys=False))
        return ["train", "--stage", stage, "--config", str(env.config(stage, raw=body))]

    CASES.append(Case(id, argv, match, 1, needs_lead))


def key_case(id: str, match: str, stage: str = "cpt", needs_lead: str | None = None, **keys) -> None:
    """A config whose dotted keys (``a__b=value``) are set to a bad value."""
    CASES.append(Case(id, lambda env: env.train(stage, None, **keys), match, 1, needs_lead))


def override_case(id: str, overrides: list[str], match: str, stage: str = "cpt") -> None:
    CASES.append(Case(id, lambda env: env.train(stage, None, *overrides), match))


def source_case(id: str, stage: str, make_sources: Callable[[Env], list[dict]], match: str = "",
                needs_lead: str | None = None, check=None, **keys) -> None:
    CASES.append(Case(id, lambda env: env.train(stage, make_sources(env), **keys), match,
                      0 if not match else 1, needs_lead, check))


# ---- config files: YAML syntax, structure, defaults
cfg_case("yaml-unclosed-bracket", "{base}\nextra: [1, 2\n", r"cpt\.yaml:\d+: invalid YAML")
cfg_case("yaml-bad-indent", "stage: cpt\noutput_dir: x\n  train: 1\n", r"cpt\.yaml:3: invalid YAML")
cfg_case("yaml-tab", "stage: cpt\ntrain:\n\tmax_steps: 1\n", r"cpt\.yaml:3: invalid YAML")
cfg_case("yaml-top-level-list", "- stage\n- cpt\n", r"cpt\.yaml: top level must be a mapping")
cfg_case("yaml-top-level-scalar", "just a string\n", r"cpt\.yaml: top level must be a mapping")
cfg_case("yaml-empty-file", "", r"output_dir: .*missing mandatory value")
cfg_case("yaml-missing-output-dir", "stage: cpt\ndata: {sources: [{path: x.txt}]}\n", r"^redone: error: output_dir")
CASES += [
    Case("stage-mismatch", lambda env: ["train", "--stage", "sft", "--config", str(env.config("cpt"))],
         r"stage: .* is a 'cpt' config, but --stage sft"),
    Case("unknown-nested-key", lambda env: env.train("cpt", None, train__max_step=3),
         r"train\.max_step: unknown config key; did you mean 'train\.max_steps'"),
    Case("unknown-source-key", lambda env: env.train("cpt", [{"pth": "x.txt", "path": "y.txt"}]),
         r"data\.sources\[0\]\.pth: unknown config key; did you mean 'data\.sources\[0\]\.path'"),
    Case("interp-missing-key", lambda env: env.train("cpt", None, train__max_steps="${train.nope}"),
         r"train\.max_steps: Interpolation key 'train\.nope' not found"),
    Case("interp-missing-env", lambda env: env.train("cpt", None, train__max_steps="${oc.env:REDONE_SURELY_UNSET}"),
         r"train\.max_steps: .*REDONE_SURELY_UNSET"),
]
cfg_case("unknown-top-key", "{base}optimm: {lr: 1}\n", r"optimm: unknown config key; did you mean 'optim'")

@case("defaults-cycle", r"defaults: .*includes itself")
def _(env):
    a = env.write("a.yaml", "defaults: [b.yaml]\nstage: cpt\n")
    env.write("b.yaml", "defaults: [a.yaml]\n")
    return ["train", "--stage", "cpt", "--config", str(a)]


@case("defaults-self", r"defaults: .*includes itself")
def _(env):
    return ["train", "--stage", "cpt", "--config", str(env.write("a.yaml", "defaults: [a.yaml]\n"))]


@case("defaults-missing-base", r"defaults: .*a\.yaml: base file nope\.yaml not found")
def _(env):
    return ["train", "--stage", "cpt", "--config", str(env.write("a.yaml", "defaults: [nope.yaml]\nstage: cpt\n"))]


@case("defaults-base-bad-yaml", r"base\.yaml:2: invalid YAML")
def _(env):
    env.write("base.yaml", "seed: 0\nfoo: bar: baz\n")
    return ["train", "--stage", "cpt", "--config", str(env.write("a.yaml", "defaults: [base.yaml]\n"))]


@case("defaults-base-not-utf8", r"base\.yaml:2: not valid UTF-8",
      needs_lead="redone/config/load.py read_yaml: read bytes and decode them itself, raising "
                 "ConfigError(f'{path}:{line}: not valid UTF-8 ...') (line = raw[:err.start].count(b'\\n') + 1); "
                 "cli.main only checks the --config file, not its defaults: bases")
def _(env):
    env.write("base.yaml", b"seed: 0\n# caf\xe9\n")
    return ["train", "--stage", "cpt", "--config", str(env.write("a.yaml", "defaults: [base.yaml]\n"))]


@case("config-file-missing", r"--config: .*nope\.yaml not found")
def _(env):
    return ["train", "--stage", "cpt", "--config", str(env.inputs / "nope.yaml")]


@case("config-path-is-directory", r"--config: .*inputs is a directory")
def _(env):
    return ["train", "--stage", "cpt", "--config", str(env.inputs)]


@case("config-not-utf8", r"--config: .*bad\.yaml:3: not valid UTF-8")
def _(env):
    return ["train", "--stage", "cpt", "--config", str(env.write("bad.yaml", b"stage: cpt\nseed: 0\n# \xff\xfe\n"))]


# ---- config values: wrong types and bad values, each named by its key
key_case("type-max-steps-str", r"train\.max_steps: Value 'ten'", train__max_steps="ten")
key_case("type-lr-list", r"optim\.lr: ", optim__lr=[1])
key_case("type-sources-str", r"data\.sources: ", data__sources="notalist")
key_case("type-source-item-int", r"data\.sources\[0\]: ", data__sources=[5])
key_case("type-output-dir-list", r"output_dir: ", output_dir=[1])
key_case("type-model-scalar", r"^redone: error: model: ", model=5,
         needs_lead="redone/config/load.py check_unknown_keys: a value given for a dataclass section "
                    "(model, train, ...) that is not a mapping -> ConfigError(f'{full}: must be a mapping of "
                    "keys, got {type}'); today OmegaConf's merge error has no key and prints '?:'")
key_case("type-train-scalar", r"^redone: error: train: ", train=7,
         needs_lead="redone/config/load.py check_unknown_keys: same as type-model-scalar ('?:' today)")
key_case("type-source-path-mapping", r"data\.sources\[0\]\.path: ", data__sources=[{"path": {"a": 1}}],
         needs_lead="redone/config/load.py build_config: OmegaConf's error key for a field inside a list item "
                    "is the bare field ('path:'); prefix it with the item's dotted path, e.g. by checking "
                    "scalar fields' types in check_unknown_keys where the full key is known")
key_case("max-steps-zero", r"train\.max_steps: must be >= 1", train__max_steps=0)
key_case("micro-batch-negative", r"train\.micro_batch_size: must be >= 1", train__micro_batch_size=-2)
key_case("keep-last-zero", r"train\.keep_last: must be >= 1", train__keep_last=0)
key_case("lr-negative", r"optim\.lr: must be > 0", optim__lr=-1.0)
key_case("scheduler-typo", r"optim\.scheduler: 'cosin' is not one of", optim__scheduler="cosin")
key_case("warmup-ratio-too-big", r"optim\.warmup_ratio: must be in \[0, 1\)", optim__warmup_ratio=1.5)
key_case("warmup-both", r"optim\.warmup_steps: set either", optim__warmup_steps=2, optim__warmup_ratio=0.1)
key_case("betas-one-value", r"optim\.betas: need two values", optim__betas=[0.9])
key_case("min-lr-ratio", r"optim\.min_lr_ratio: must be in \[0, 1\]", optim__min_lr_ratio=2.0)
key_case("implementation-typo", r"optim\.implementation: 'turbo' is not one of", optim__implementation="turbo")
key_case("precision-fp64", r"train\.precision: 'fp64' is not one of", train__precision="fp64")
key_case("resume-int", r"train\.resume: must be auto, false or a checkpoint path", train__resume=5)
key_case("seq-len-tiny", r"data\.seq_len: must be at least 8", data__seq_len=4)
key_case("num-proc-zero", r"data\.num_proc: must be >= 1", data__num_proc=0)
key_case("mixing-typo", r"data\.mixing: 'random' is not one of", data__mixing="random")
key_case("temperature-zero", r"data\.temperature: must be > 0", data__temperature=0.0)
key_case("sources-empty", r"data\.sources: at least one data source", data__sources=[])
key_case("attn-typo", r"model\.attn_implementation: 'flash' is not one of", model__attn_implementation="flash")
key_case("freeze-negative", r"model\.freeze_bottom_layers: must be >= 0", model__freeze_bottom_layers=-1)
key_case("lora-r-zero", r"model\.lora\.r: r must be >= 1", model__lora={"enabled": True, "r": 0})
key_case("report-to-typo", r"tracking\.report_to\[0\]: 'mlflow' is not one of", tracking__report_to=["mlflow"])
key_case("wandb-mode-typo", r"tracking\.wandb_mode: 'cloud' is not one of", tracking__wandb_mode="cloud")
key_case("sft-loss-on", r"data\.loss_on: 'prompt' is not one of", stage="sft", data__loss_on="prompt")
key_case("sft-overlong", r"data\.overlong: 'cut' is not one of", stage="sft", data__overlong="cut")
key_case("sft-prompt-style", r"data\.prompt_style: 'fancy' is not one of", stage="sft", data__prompt_style="fancy")
key_case("dpo-beta-zero", r"dpo\.beta: must be > 0", stage="dpo", dpo={"beta": 0.0})
key_case("dpo-loss-type", r"dpo\.loss_type: 'hinge' is not one of", stage="dpo", dpo={"loss_type": "hinge"})
key_case("dpo-label-smoothing", r"dpo\.label_smoothing: must be in \[0, 0\.5\)", stage="dpo",
         dpo={"label_smoothing": 0.6})
key_case("dpo-bad-pairs-typo", r"data\.bad_pairs: 'skip' is not one of", stage="dpo", data__bad_pairs="skip")
key_case("dpo-pairs-per-item", r"data\.pairs_per_item: must be >= 1", stage="dpo", data__pairs_per_item=0)


def _one_source(**fields):
    return lambda env: [{"name": "text", "path": str(env.write("t.txt", PARAGRAPHS)), **fields}]


source_case("weight-zero", "cpt", _one_source(weight=0), r"data\.sources\[0\]\.weight: must be > 0")
source_case("weight-inf", "cpt", _one_source(weight=float("inf")), r"data\.sources\[0\]\.weight: must be > 0 and finite")
source_case("weight-nan", "cpt", _one_source(weight=float("nan")), r"data\.sources\[0\]\.weight: must be > 0 and finite")
source_case("limit-zero", "cpt", _one_source(limit=0), r"data\.sources\[0\]\.limit: must be positive")
source_case("text-unit-typo", "cpt", _one_source(text_unit="sentence"), r"data\.sources\[0\]\.text_unit: 'sentence'")
source_case("path-empty", "cpt", lambda env: [{"path": ""}], r"data\.sources\[0\]\.path: must name")
source_case("duplicate-names", "cpt", lambda env: _one_source()(env) * 2, r"data\.sources: duplicate source name")

# ---- command-line overrides
override_case("override-no-equals", ["train.max_steps"], r"override 'train\.max_steps' is not key=value")
override_case("override-unknown-key", ["train.maxsteps=3"], r"train\.maxsteps: unknown config key; did you mean")
override_case("override-wrong-type", ["train.max_steps=abc"], r"train\.max_steps: Value 'abc'")
override_case("override-bad-value", ["optim.lr=0"], r"optim\.lr: must be > 0")
CASES.append(Case("override-broken-list", lambda env: env.train("cpt", None, "data.sources=[{path: x"),
                   r"^redone: error: override: ",
                   needs_lead="redone/config/load.py parse_overrides: OmegaConf.from_dotlist lets yaml.YAMLError "
                              "escape for a value that is broken YAML; catch it too: except (OmegaConfBaseException, "
                              "yaml.YAMLError) -> ConfigError(f\"override '{item}': ...\") (today a raw traceback)"))


# ---- CPT data files (txt, jsonl, json, parquet, SNS-Bench folders)
def _src(name: str, content, **fields):
    return lambda env: [{"name": "s", "path": str(env.write(name, content)), **fields}]


source_case("txt-missing", "cpt", lambda env: [{"name": "s", "path": str(env.inputs / "nope.txt")}],
            r"nope\.txt: file not found")
source_case("txt-is-directory", "cpt", lambda env: [{"name": "s", "path": str(_mkdir(env, "notes.txt"))}],
            r"notes\.txt: is a directory")
source_case("dir-without-notes", "cpt", lambda env: [{"name": "s", "path": str(_mkdir(env, "folder"))}],
            r"folder: is a directory without SNS-Bench")
source_case("txt-not-utf8", "cpt", _src("latin.txt", b"first line\n\ncaf\xe9 au lait\n"), r"latin\.txt:3: not valid UTF-8")
source_case("txt-empty", "cpt", _src("empty.txt", b""), r"empty\.txt: source 's' is empty")
source_case("txt-only-blank-lines", "cpt", _src("blank.txt", "\n \n\t\n"), r"blank\.txt: source 's' is empty")
source_case("unknown-suffix", "cpt", _src("data.csv", "a,b\n"), r"data\.csv: cannot tell the format")
source_case("jsonl-malformed-line", "cpt", _src("bad.jsonl", '{"text": "ok"}\n{"text": "broken"\n'),
            r"bad\.jsonl:2: malformed JSON")
source_case("jsonl-not-object", "cpt", _src("list.jsonl", '{"text": "ok"}\n\n[1, 2]\n'),
            r"list\.jsonl:3: expected a JSON object, got list")
source_case("jsonl-missing-field", "cpt", _src("f.jsonl", '{"text": "ok"}\n{"body": "x"}\n'),
            r"f\.jsonl:2: missing field 'text'")
source_case("jsonl-field-not-text", "cpt", _src("n.jsonl", '{"text": 5}\n'), r"n\.jsonl:1: field 'text' is int")
source_case("jsonl-empty", "cpt", _src("e.jsonl", ""), r"e\.jsonl: source 's' is empty")
source_case("jsonl-not-utf8", "cpt", _src("u.jsonl", b'{"text": "a"}\n{"text": "\xff"}\n'), r"u\.jsonl:2: not valid UTF-8")
source_case("jsonl-directory", "cpt", lambda env: [{"name": "s", "path": str(_mkdir(env, "d")), "format": "jsonl"}],
            r"d: is a directory; format 'jsonl' reads one file")
source_case("json-scalar", "cpt", _src("n.json", "42\n"), r"n\.json: expected a JSON list of objects")
source_case("json-malformed", "cpt", _src("m.json", '[\n  {"text": "a"},\n  {"text": }\n]\n'),
            r"m\.json:3: malformed JSON")
source_case("json-item-not-object", "cpt", _src("i.json", '[\n  {"text": "a"},\n\n  "b"\n]\n'),
            r"i\.json:4: expected a JSON object, got str")
source_case("json-item-missing-field", "cpt", _src("k.json", '[{"text": "a"},\n {"title": "b"}]\n'),
            r"k\.json:2: missing field 'text'")
source_case("json-trailing-garbage", "cpt", _src("g.json", '[{"text": "a"}]\n]\n'), r"g\.json:2: malformed JSON")
source_case("parquet-corrupt", "cpt", _src("c.parquet", b"PAR1 this is not parquet"), r"c\.parquet: cannot load")
source_case("parquet-missing-column", "cpt", lambda env: [{"name": "s", "path": str(_parquet(env, {"body": ["x"]}))}],
            r"p\.parquet:row 1: missing field 'text'")
source_case("hub-offline", "cpt", lambda env: [{"name": "s", "path": "someorg/surely-not-a-dataset"}],
            r"someorg/surely-not-a-dataset: cannot load with datasets")
source_case("sns-unknown-task", "cpt", lambda env: [{"name": "s", "path": str(DATA / "sns_bench" / "train"),
                                                      "tasks": ["Note-Nope"]}], r"no SNS-Bench Note-\*\.json files")
source_case("sns-note-malformed", "cpt", lambda env: [{"name": "s", "path": str(_notes(env, '[\n{"content": "x"\n]'))}],
            r"Note-Gender\.json:3: malformed JSON")


def _mkdir(env: Env, name: str) -> Path:
    path = env.inputs / name
    path.mkdir()
    return path


def _parquet(env: Env, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = env.inputs / "p.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def _notes(env: Env, content: str | bytes, task: str = "Note-Gender") -> Path:
    folder = env.inputs / "sns"
    folder.mkdir(exist_ok=True)
    env.write(f"sns/{task}.json", content)
    return folder


source_case("quality-drops-a-whole-source", "cpt", _src("long.txt", "word " * 30000),
            r"long\.txt: data\.quality dropped every document of source 's' .*too_long 1",
            data__quality={"enabled": True, "decontam": {"eval_sets": []}})


# ---- valid but unusual CPT inputs: accepted, and read exactly like their plain twins
def _trained(env: Env, out: str, err: str) -> None:
    assert (env.out / "final" / "model.safetensors").exists()


LF_TEXT = "".join(f"Note {i}: a line about a trip to the sea\nwith a second line of detail {i}.\n\n" for i in range(30))
def _odd_sources(env: Env) -> list[dict]:
    crlf = LF_TEXT.replace("\n", "\r\n")
    jsonl = "\ufeff" + "".join(json.dumps({"text": f"{LF_TEXT[:80]} {i}"}) + "\r\n" for i in range(20)) + "\r\n\n \n"
    array = "\ufeff" + json.dumps([{"text": f"{LF_TEXT[:90]} {i}"} for i in range(20)], indent=1).replace("\n", "\r\n")
    return [{"name": "bom_txt", "path": str(env.write("bom.txt", "\ufeff" + LF_TEXT))},
            {"name": "crlf_txt", "path": str(env.write("crlf.txt", crlf))},
            {"name": "bom_crlf_jsonl", "path": str(env.write("b.jsonl", jsonl))},
            {"name": "bom_crlf_json", "path": str(env.write("b.json", array))}]


def _documents_like_lf(env: Env, out: str, err: str) -> None:
    """Each odd file trained, read exactly like its plain twin: 30 paragraphs, 20 records."""
    sources = json.loads((env.out / "final" / "redone.json").read_text())["data_sources"]
    got = {s["name"]: s["documents_in"] for s in sources}
    assert got == {"bom_txt": 30, "crlf_txt": 30, "bom_crlf_jsonl": 20, "bom_crlf_json": 20}, got


def _one_crlf_source_kept(env: Env, out: str, err: str) -> None:
    (source,) = json.loads((env.out / "final" / "redone.json").read_text())["data_sources"]
    assert source["documents_in"] == 30 and source["documents"] == 30, source  # not one 'too_long' blob


source_case("bom-crlf-trailing-blanks-every-format", "cpt", _odd_sources, check=_documents_like_lf)
source_case("txt-crlf-quality-on", "cpt", _src("crlf.txt", LF_TEXT.replace("\n", "\r\n")),
            check=_one_crlf_source_kept, data__quality={"enabled": True, "decontam": {"eval_sets": []},
                                                        "dedup": {"near": False}})

# ---- SFT data (chat records, HH-RLHF, SNS-Bench task files, TransBench)
B7 = ("redone/data/sft.py chat_component / task_components: pass the record's 1-based line (record['_line'] "
      "from sources.read_records; for SNS/TransBench JSON lists sources.json_list_items(path) gives (line, item)) "
      "instead of the 0-based index i in every where=f'{path}:{i}'")
B7_TASKS = ("redone/sns/tasks.py load_items: read items with redone.data.sources.json_list_items(p) (BOM, CRLF, "
            "file:line errors) and use where=f'{p}:{line}' instead of the 0-based index")


def _chat(records: list, name: str = "c.jsonl", **fields):
    return lambda env: [{"name": "chat", "path": str(env.write(name, chat_lines(0, records))), "format": "chat", **fields}]


source_case("chat-malformed-json", "sft", _src("c.jsonl", chat_lines(2) + '{"messages": [\n', format="chat"),
            r"c\.jsonl:3: malformed JSON")
source_case("chat-messages-not-list", "sft", _chat([chat_record(0), {"messages": "hello"}]), r"c\.jsonl:2: ",
            needs_lead=B7)
source_case("chat-unknown-role", "sft", _chat([chat_record(0), chat_record(1),
                                               {"messages": [{"role": "bot", "content": "hi"}]}]),
            r"c\.jsonl:3: .*role", needs_lead=B7)
source_case("chat-ends-with-user", "sft", _chat([{"messages": [{"role": "user", "content": "hi"}]}]),
            r"c\.jsonl:1: ", needs_lead=B7)
source_case("chat-empty-content", "sft", _chat([chat_record(0), {"messages": [
    {"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]}]), r"c\.jsonl:2: ", needs_lead=B7)
source_case("chat-content-not-string", "sft", _chat([{"messages": [
    {"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}]), r"c\.jsonl:1: ", needs_lead=B7)
source_case("chat-empty-file", "sft", _src("c.jsonl", "", format="chat"), r"c\.jsonl: source 's' is empty")
source_case("chat-not-utf8", "sft", _src("c.jsonl", chat_lines(1).encode() + b'{"messages": "\xe9"}\n', format="chat"),
            r"c\.jsonl:2: not valid UTF-8")
source_case("hh-chosen-not-string", "sft", _src("h.jsonl", json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: yo"})
                                                + "\n" + json.dumps({"chosen": 7}) + "\n", format="hh_rlhf"),
            r"h\.jsonl:2: ", needs_lead=B7)
source_case("sns-task-unknown", "sft", lambda env: [{"name": "sns", "path": str(DATA / "sns_bench" / "train"),
                                                     "format": "sns_bench", "tasks": ["Note-Nope"]}],
            r"no task file\(s\) \['Note-Nope'\]")
source_case("sns-item-missing-field", "sft", lambda env: [{"name": "sns", "format": "sns_bench", "path": str(_notes(
    env, '[\n {"content": "a note", "answer": "Yes"},\n {"answer": "No"}\n]\n'))}], r"Note-Gender\.json:3: ",
    needs_lead=B7_TASKS)
source_case("sns-file-malformed", "sft", lambda env: [{"name": "sns", "format": "sns_bench", "path": str(_notes(
    env, '[\n {"content": "a note", "answer": "Yes"},\n {"content": \n]\n'))}], r"Note-Gender\.json:4: malformed JSON",
    needs_lead=B7_TASKS)
source_case("transbench-item-bad", "sft", lambda env: [{"name": "tb", "format": "transbench", "path": str(env.write(
    "tb.json", '[\n {"en": "a", "zh": "b", "src_lang": "zh", "dst_lang": "en"},\n {"en": "a"}\n]\n'))}],
    r"tb\.json:3: ", needs_lead=B7_TASKS)
source_case("sft-overlong-error-names-file", "sft", _chat([chat_record(0), {"messages": [
    {"role": "user", "content": "long " * 400}, {"role": "assistant", "content": "x"}]}]), r"c\.jsonl:2: ",
    needs_lead="redone/data/sft.py tokenize_component: where=f'{component.name}:{i}' names no file and is "
               "0-based; pass the source path and the record's 1-based line (keep it on each example)",
    data__overlong="error")
source_case("chat-bom-crlf", "sft", lambda env: [{"name": "chat", "format": "chat", "path": str(env.write(
    "c.jsonl", "\ufeff" + chat_lines(6).replace("\n", "\r\n") + "\r\n"))}], check=_trained)
source_case("sns-bom", "sft", lambda env: [{"name": "sns", "format": "sns_bench", "path": str(_notes(
    env, "\ufeff" + json.dumps([{"content": f"Title: trip {i}\nBody: a note", "answer": "Yes"} for i in range(4)])))}],
    check=_trained, needs_lead=B7_TASKS + " (today a BOM file is refused as 'cannot read JSON')")

# ---- DPO preference pairs
source_case("pairs-missing-rejected", "dpo", _src("p.jsonl", pair_lines([pair_record(0), pair_record(1, rejected=None)])),
            r"p\.jsonl:2: missing field 'rejected'")
source_case("pairs-chosen-not-text", "dpo", _src("p.jsonl", pair_lines([pair_record(0, chosen=3)])), r"p\.jsonl:1: ")
source_case("pairs-identical", "dpo", _src("p.jsonl", pair_lines([pair_record(0), pair_record(1, rejected="Yes, it "
                                                                                               "describes a trip.")])),
            r"p\.jsonl:2: ")
source_case("pairs-malformed-json", "dpo", _src("p.jsonl", pair_lines([pair_record(0)]) + "{oops}\n"),
            r"p\.jsonl:2: malformed JSON")
source_case("pairs-all-dropped", "dpo", _src("p.jsonl", pair_lines([pair_record(0, rejected=None)])),
            r"p\.jsonl: source 's' has no usable pairs", data__bad_pairs="drop")
source_case("pairs-json-item-line", "dpo", _src("p.json", '[\n' + json.dumps(pair_record(0)) + ',\n'
                                                + json.dumps(pair_record(1, chosen=None)) + '\n]\n', format="preference"),
            r"p\.json:3: missing field 'chosen'")
source_case("pairs-plain-text", "dpo", _src("t.txt", PARAGRAPHS), r"t\.txt: plain text holds no preference pairs")
source_case("pairs-overlong-error-names-file", "dpo",
            _src("p.jsonl", pair_lines([pair_record(0), pair_record(1, prompt="long " * 400)])), r"p\.jsonl:2: ",
            needs_lead="redone/data/dpo.py tokenize_pairs: where=f'{name}:{i}' names the component and a 0-based "
                       "index; keep each pair's source 'file:line' (the where its record was read with) and use it",
            data__overlong="error")
source_case("pairs-bom-crlf", "dpo", _src("p.jsonl", "\ufeff" + pair_lines([pair_record(i) for i in range(6)])
                                          .replace("\n", "\r\n") + "\r\n"), check=_trained)


# ---- models: train and eval
def _truncate(path: Path) -> None:
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])


def _no_tokenizer(path: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (path / name).unlink(missing_ok=True)


MODEL_BREAKS = {
    "zero-byte-weights": (lambda p: (p / "model.safetensors").write_bytes(b""), r"model\.safetensors: empty file"),
    "truncated-weights": (_truncate, r"model\.safetensors: truncated"),
    "no-tokenizer": (_no_tokenizer, r"model/? ?has no tokenizer files"),
    "malformed-config": (lambda p: (p / "config.json").write_text('{"model_type": "llama",\n oops}'),
                         r"config\.json:2: malformed JSON"),
    "config-not-object": (lambda p: (p / "config.json").write_text("[1]"), r"config\.json: must be a JSON object"),
    "config-no-model-type": (lambda p: (p / "config.json").write_text("{}"), r"config\.json has no model_type"),
    "no-weights": (lambda p: (p / "model.safetensors").unlink(), r"has no weights file"),
}
for _name, (_mutate, _match) in MODEL_BREAKS.items():
    CASES.append(Case(f"train-model-{_name}", lambda env, m=_mutate: env.train(
        "cpt", None, model__name_or_path=str(env.model_copy(m))), _match))
    if _name not in ("no-tokenizer",):  # eval loads the tokenizer first: covered once below
        CASES.append(Case(f"eval-model-{_name}", lambda env, m=_mutate: [
            "eval", "--model", str(env.model_copy(m)), "--bench", "general-ppl", "--data", str(DATA),
            "--ppl-max-tokens", "64"], _match))
CASES.append(Case("eval-model-no-tokenizer", lambda env: [
    "eval", "--model", str(env.model_copy(_no_tokenizer)), "--bench", "general-ppl", "--data", str(DATA)],
    r"has no tokenizer files"))
for _where, _argv in (("train", lambda env, name: env.train("cpt", None, model__name_or_path=name)),
                      ("eval", lambda env, name: ["eval", "--model", name, "--bench", "general-ppl", "--data", str(DATA)])):
    CASES.append(Case(f"{_where}-model-missing-relative-path", lambda env, a=_argv: a(env, "./no/such/model"),
                      r"model: path \./no/such/model does not exist"))
    CASES.append(Case(f"{_where}-model-unknown-hub-id", lambda env, a=_argv: a(env, "someorg/surely-not-a-model"),
                      r"model: 'someorg/surely-not-a-model' is not a local dir.*hub id"))
    CASES.append(Case(f"{_where}-model-builtin-typo", lambda env, a=_argv: a(env, "smollm2-135m-instrct"),
                      r"did you mean the built-in 'smollm2-135m-instruct'"))
    CASES.append(Case(f"{_where}-model-is-a-file", lambda env, a=_argv: a(env, str(env.write("m.bin", b"x"))),
                      r"model: .*m\.bin is a file"))


# ---- output dirs
@case("output-dir-not-empty", r"output_dir: .* is not empty and there is no checkpoint.*marker\.txt")
def _(env):
    return env.train("cpt", None, output_dir=str(env.root))


@case("output-dir-is-a-file", r"output_dir: .*marker\.txt is a file")
def _(env):
    return env.train("cpt", None, output_dir=str(env.root / "marker.txt"))


@case("output-dir-under-a-file", r"output_dir: .*marker\.txt/run lies under .*marker\.txt, which is a file")
def _(env):
    return env.train("cpt", None, output_dir=str(env.root / "marker.txt" / "run"))


@case("data-report-under-a-file", r"marker\.txt")
def _(env):
    return ["data", "prepare", "--stage", "cpt", "--config", str(env.config("cpt")),
            "--report", str(env.root / "marker.txt" / "report.json")]


# ---- CLI flags
CASES += [
    Case("cli-unknown-stage", lambda env: ["train", "--stage", "rl2", "--config", "x.yaml"],
         r"argument --stage: invalid choice: 'rl2'", code=2),
    Case("cli-missing-config", lambda env: ["train", "--stage", "cpt"], r"the following arguments are required: --config",
         code=2),
    Case("cli-unknown-command", lambda env: ["trian"], r"invalid choice: 'trian'", code=2),
    Case("cli-no-command", lambda env: [], r"the following arguments are required: command", code=2),
    Case("cli-eval-limit-not-int", lambda env: ["eval", "--model", "x", "--limit", "ten"],
         r"argument --limit: invalid int value: 'ten'", code=2),
    Case("cli-eval-no-model", lambda env: ["eval", "--bench", "general-ppl"], r"eval: pass --model"),
    Case("cli-eval-config-directory", lambda env: ["eval", "--model", "x", "--config", str(env.inputs)],
         r"--config: .*inputs is a directory"),
    Case("cli-eval-data-missing", lambda env: ["eval", "--model", str(env.model), "--bench", "general-ppl",
                                               "--data", str(env.inputs / "nope")], r"eval: data folder not found"),
    Case("cli-config-show-bad-key", lambda env: ["config", "show", "--stage", "cpt", "output_dir=x", "trian.x=1"],
         r"trian: unknown config key; did you mean 'train'"),
    Case("cli-merge-lora-not-adapter", lambda env: ["model", "merge-lora", "--adapter", str(env.inputs),
                                                    "--out", str(env.out)], r"has no adapter_config\.json"),
]


# ---- pipeline
def pipeline_text(env: Env, extra: str = "") -> str:
    notes = env.write("notes.txt", PARAGRAPHS)
    chat = env.write("chat.jsonl", chat_lines(4))
    pairs = env.write("pairs.jsonl", pair_lines([pair_record(i) for i in range(4)]))
    train = "{max_steps: 1, micro_batch_size: 1, save_every: 1, progress: false}"
    return (f"output_root: {env.out}\nseed: 0\nmodel: {{name_or_path: {env.model}}}\n"
            f"cpt:\n  data: {{seq_len: 64, cache_dir: {env.cache}, quality: {{enabled: false}}, "
            f"sources: [{{name: n, path: {notes}}}]}}\n  train: {train}\n"
            f"sft:\n  data: {{seq_len: 192, cache_dir: {env.cache}, sources: [{{name: c, path: {chat}, format: chat}}]}}\n"
            f"  train: {train}\n"
            f"dpo:\n  data: {{seq_len: 192, cache_dir: {env.cache}, sources: [{{name: p, path: {pairs}}}]}}\n"
            f"  train: {train}\n"
            f"eval: {{benches: [general-ppl], limit: 1, data_dir: {DATA}}}\n{extra}")


def pipe_case(id: str, match: str, extra: str = "", flags: tuple = (), needs_lead: str | None = None,
              overrides: tuple = ()) -> None:
    def argv(env: Env) -> list[str]:
        path = env.write("pipeline.yaml", pipeline_text(env, extra))
        return ["pipeline", "--config", str(path), *flags, *overrides]
    CASES.append(Case(id, argv, match, 1, needs_lead))


pipe_case("pipe-unknown-stage", r"stages: 'rl2' is not one of", "stages: [cpt, rl2]\n")
PIPE_ROOT = ("redone/pipeline.py run_pipeline: root.mkdir() runs before --from/--only and the stages are "
             "checked, so a refused command leaves an empty output_root behind; create it only when a stage is "
             "about to run (or state.json is written)")
pipe_case("pipe-from-unknown", r"--from: 'rl2' is not one of", flags=("--from", "rl2"), needs_lead=PIPE_ROOT)
pipe_case("pipe-only-unknown", r"--only: 'xyz' is not one of", flags=("--only", "xyz"), needs_lead=PIPE_ROOT)
pipe_case("pipe-only-needs-upstream", r"cpt: not selected .* run it first", flags=("--only", "dpo"),
          overrides=("eval.enabled=false",), needs_lead=PIPE_ROOT)
pipe_case("pipe-unknown-top-key", r"stagez: unknown config key; did you mean 'stages'", "stagez: [cpt]\n")
pipe_case("pipe-seed-type", r"seed: Value 'abc'", overrides=("seed=abc",))
pipe_case("pipe-eval-subset", r"eval\.subset: .*'random'.*first, spread", overrides=("eval.subset=random",))
pipe_case("pipe-eval-limit-type", r"eval\.limit: Value 'abc'", overrides=("eval.limit=abc",))
pipe_case("pipe-stage-bad-value", r"sft\.train\.max_steps: must be >= 1", overrides=("sft.train.max_steps=0",),
          needs_lead="redone/pipeline.py run_pipeline: build every stage's config before the first stage trains "
                     "(today CPT trains, then SFT's bad key fails), and prefix build_config's ConfigError with "
                     "f'{stage}.' (today 'train.max_steps')")
pipe_case("pipe-stage-unknown-key", r"sft\.optim\.lrr: unknown config key", overrides=("sft.optim.lrr=1",),
          needs_lead="redone/pipeline.py: check a stage section's keys with prefix f'{stage}.' (today 'optim.lrr'), "
                     "before any stage trains (today CPT trains first)")
pipe_case("pipe-eval-models-typo", r"eval\.models.*'sfft'", flags=("--dry-run",),
          overrides=("eval.models=[base,sfft]",))
pipe_case("pipe-model-scalar", r"^redone: error: model: ", overrides=("model=5",),
          needs_lead="redone/pipeline.py load_pipeline: the OmegaConf merge error has no full_key and prints "
                     "'None:'; check that dataclass sections are mappings first (see type-model-scalar)")
pipe_case("pipe-stage-section-scalar", r"^redone: error: sft: ", overrides=("sft=5",),
          needs_lead="redone/pipeline.py load_pipeline: a stage section that is not a mapping raises a raw "
                     "AttributeError in stage_raw; refuse it: ConfigError(f'{stage}: must be a mapping of '"
                     "'stage config keys, got int')")
pipe_case("pipe-dry-run-bad-stage-value", r"train\.max_steps: must be >= 1", flags=("--dry-run",),
          overrides=("sft.train.max_steps=0",))


# ---- checkpoints (a session-wide 2-step CPT run gives the checkpoints to damage)
@pytest.fixture(scope="session")
def ckpt_run(tiny_model_dir, tmp_path_factory) -> dict:
    """A finished 2-step CPT run with checkpoints at steps 1 and 2, and its config file."""
    tmp = tmp_path_factory.mktemp("ckpt_run")
    env = Env(tmp, tiny_model_dir)
    config = env.config("cpt", train__max_steps=2)
    assert main(["train", "--stage", "cpt", "--config", str(config)]) == 0
    return {"out": env.out, "config_text": config.read_text(), "final": env.out / "final"}


def resumable_copy(env: Env, ckpt_run: dict, damage: Callable[[Path], None] | None = None) -> Path:
    """The finished run minus final/ (a run killed after its last checkpoint), with ``damage`` applied."""
    shutil.copytree(ckpt_run["out"], env.out, ignore=shutil.ignore_patterns("final"))
    if damage:
        damage(env.out / "checkpoints")
    text = ckpt_run["config_text"].replace(str(ckpt_run["out"]), str(env.out))
    return env.write("resume.yaml", text)


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


CHECKPOINT_CASES = {
    # id: (damage, expected error or None for a fallback success)
    "ckpt-all-damaged": (lambda c: [_cut(c / s / "model.safetensors") for s in ("step-1", "step-2")],
                         r"train\.resume: no intact checkpoint .*step-2: model\.safetensors: truncated"),
    "ckpt-newest-weights-truncated": (lambda c: _cut(c / "step-2" / "model.safetensors"), None),
    "ckpt-newest-state-malformed": (lambda c: (c / "step-2" / "loop_state.json").write_text('{"step": '), None),
    "ckpt-newest-optimizer-truncated": (lambda c: _cut(c / "step-2" / "optimizer.bin"), None),
    "ckpt-newest-state-missing": (lambda c: (c / "step-2" / "loop_state.json").unlink(), None),
    "ckpt-newest-marker-missing": (lambda c: (c / "step-2" / "COMPLETE").unlink(), None),
}


# ---- the tests

# What a case that still needs the lead's fix fails with: a failed assertion or an escaped traceback
# (pytest.fail in run_cli). Anything else (a broken fixture) is a real error, not the expected failure.
EXPECTED_FAILURES = (AssertionError, pytest.fail.Exception)


def _params():
    # Every change once marked needs_lead has landed; the field stays as a note of where each fix lives.
    for c in CASES:
        yield pytest.param(c, id=c.id)


@pytest.mark.parametrize("c", list(_params()))
def test_bad_input(c: Case, tiny_model_dir, tmp_path, capsys):
    env = Env(tmp_path, tiny_model_dir)
    argv = c.argv(env)
    before = snapshot(env.root)
    code, out, err = run_cli(argv, capsys)
    if c.code == 0 or not c.match:
        assert "Traceback" not in err, err
        assert code == 0, f"valid input refused: {err}"
        if c.check:
            c.check(env, out, err)
        return
    assert_clean_failure(c, code, err)
    assert snapshot(env.root) == before, "the output root changed"


@pytest.mark.parametrize("name", list(CHECKPOINT_CASES))
def test_damaged_checkpoint(name, ckpt_run, tiny_model_dir, tmp_path, capsys):
    """A damaged newest checkpoint: fall back to the previous intact one (saying so) and finish with the
    same weights as the uninterrupted run; nothing intact at all: refuse, touching nothing."""
    from safetensors.torch import load_file

    damage, match = CHECKPOINT_CASES[name]
    env = Env(tmp_path, tiny_model_dir)
    config = resumable_copy(env, ckpt_run, damage)
    before = snapshot(env.root)
    code, out, err = run_cli(["train", "--stage", "cpt", "--config", str(config)], capsys)
    assert "Traceback" not in err
    if match:
        assert code == 1 and re.search(match, error_lines(err)[0]), err
        assert snapshot(env.root) == before
        return
    assert code == 0, err
    if name != "ckpt-newest-marker-missing":  # an unmarked dir is simply not a checkpoint: no message
        assert re.search(r"checkpoint step-2 is damaged \(.+\); falling back to step-1", out), out
    assert "resumed from" in out and "step-1 at step 1" in out
    a, b = load_file(ckpt_run["final"] / "model.safetensors"), load_file(env.out / "final" / "model.safetensors")
    assert all(a[k].equal(b[k]) for k in a) and a.keys() == b.keys()


def test_explicit_resume_path_damaged_or_unmarked(ckpt_run, tiny_model_dir, tmp_path, capsys):
    env = Env(tmp_path, tiny_model_dir)
    config = resumable_copy(env, ckpt_run, lambda c: (_cut(c / "step-2" / "scheduler.bin"),
                                                       (c / "step-1" / "COMPLETE").unlink()))
    before = snapshot(env.root)
    for step, match in (("step-2", r"train\.resume: .*step-2 is damaged \(scheduler\.bin: "),
                        ("step-1", r"train\.resume: .*step-1 is not a complete checkpoint")):
        code, _, err = run_cli(["train", "--stage", "cpt", "--config", str(config),
                                f"train.resume={env.out / 'checkpoints' / step}"], capsys)
        assert code == 1 and len(error_lines(err)) == 1 and re.search(match, err), err
    assert snapshot(env.root) == before


def test_resume_with_changed_lr_is_refused_then_applied_when_forced(ckpt_run, tiny_model_dir, tmp_path, capsys):
    """B1: a changed optimizer key is refused (naming it, nothing rewritten); forced, it is applied from
    the resume step, and config.yaml, config_hash.txt and final/redone.json record what was used."""
    env = Env(tmp_path, tiny_model_dir)
    config = resumable_copy(env, ckpt_run, lambda c: shutil.rmtree(c / "step-2"))
    (env.out / "train_log.jsonl").write_text((env.out / "train_log.jsonl").read_text().splitlines()[0] + "\n")
    before = snapshot(env.root)
    argv = ["train", "--stage", "cpt", "--config", str(config), "optim.lr=0.0005", "optim.scheduler=constant"]
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and len(error_lines(err)) == 1, err
    assert "optim.lr 0.001 -> 0.0005 (optimizer)" in err and "optim.scheduler 'cosine' -> 'constant' (schedule)" in err
    assert snapshot(env.root) == before  # config.yaml and config_hash.txt still say lr 0.001

    code, out, err = run_cli(argv + ["train.force_resume=true"], capsys)
    assert code == 0, err
    log = [json.loads(line) for line in (env.out / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2] and log[1]["lr"] == pytest.approx(0.0005)  # constant: no decay
    lineage = json.loads((env.out / "final" / "redone.json").read_text())
    assert lineage["config"]["optim"]["lr"] == 0.0005
    assert lineage["resume_changes"] == [{"step": 1, "changed": {"optim.lr": [0.001, 0.0005],
                                                                 "optim.scheduler": ["cosine", "constant"]}}]
    assert "lr: 0.0005" in (env.out / "config.yaml").read_text()


def test_run_control_keys_change_freely_on_resume(ckpt_run, tiny_model_dir, tmp_path, capsys):
    env = Env(tmp_path, tiny_model_dir)
    config = resumable_copy(env, ckpt_run, lambda c: shutil.rmtree(c / "step-2"))
    code, out, err = run_cli(["train", "--stage", "cpt", "--config", str(config), "train.log_every=2",
                              "train.keep_last=1"], capsys)
    assert code == 0, err
    assert "resuming with new run settings: train.keep_last 2 -> 1, train.log_every 1 -> 2" in out
    assert [p.name for p in (env.out / "checkpoints").iterdir()] == ["step-2"]


@pytest.mark.parametrize("same", [True, False], ids=["same-config", "other-config"])
def test_start_files_only(same, tiny_model_dir, tmp_path, capsys):
    """B2: a run killed after writing its start files but before its first checkpoint restarts under the
    same config; under another config it is refused, naming the changed key, and left untouched."""
    env = Env(tmp_path, tiny_model_dir)
    config = env.config("cpt")
    env.out.mkdir()
    first = ["train", "--stage", "cpt", "--config", str(config)]
    # The start files exactly as a run writes them (config.yaml, config_hash.txt, an empty log, a temp dir).
    from redone.config import config_to_yaml
    from redone.config.load import result_hash
    from redone.stages import load_config

    written = load_config("cpt", config, [])
    (env.out / "config.yaml").write_text(config_to_yaml(written))
    (env.out / "config_hash.txt").write_text(result_hash(written) + "\n")
    (env.out / "train_log.jsonl").write_text("")
    (env.out / "checkpoints" / ".tmp-step-1").mkdir(parents=True)
    before = snapshot(env.root)
    argv = first if same else first + ["optim.lr=0.01"]
    code, out, err = run_cli(argv, capsys)
    if same:
        assert code == 0, err
        assert "holds only the start of this run (no checkpoint yet): starting it over" in out
        assert (env.out / "final" / "redone.json").exists()
    else:
        assert code == 1 and len(error_lines(err)) == 1, err
        assert "holds the start of a run with a different config" in err and "optim.lr 0.001 -> 0.01" in err
        assert snapshot(env.root) == before


PIPE_B2 = ("redone/pipeline.py stage_status: a stage dir with no checkpoint whose config_hash.txt equals "
           "result_hash(config) is the start of the same run: return 'resume' (run_training restarts it cleanly), "
           "not 'restart' with 'config or parent weights changed'")


def test_pipeline_restarts_a_stage_killed_before_its_first_checkpoint(tiny_model_dir, tmp_path, capsys):
    env = Env(tmp_path, tiny_model_dir)
    path = env.write("pipeline.yaml", pipeline_text(env))
    assert main(["pipeline", "--config", str(path), "--only", "cpt"]) == 0
    shutil.rmtree(env.out / "cpt" / "final")
    shutil.rmtree(env.out / "cpt" / "checkpoints")
    capsys.readouterr()
    assert main(["pipeline", "--config", str(path), "--only", "cpt"]) == 0
    out = capsys.readouterr().out
    assert "changed" not in out and "removing stale" not in out


PIPE_DAMAGED = ("redone/pipeline.py stage_status reads the newest marked checkpoint's loop_state.json directly "
                "(a damaged one is a raw JSONDecodeError traceback); use redone.train.checkpoint."
                "usable_checkpoints(out) (skips damaged ones, saying so) instead of latest_checkpoint + "
                "read_loop_state")


def test_pipeline_resumes_past_a_damaged_checkpoint(tiny_model_dir, tmp_path, capsys):
    env = Env(tmp_path, tiny_model_dir)
    path = env.write("pipeline.yaml", pipeline_text(env))
    stop = ["cpt.train.max_steps=3", "cpt.train.stop_after_steps=2", "eval.enabled=false"]
    assert main(["pipeline", "--config", str(path), "--only", "cpt", *stop]) == 0
    (env.out / "cpt" / "checkpoints" / "step-2" / "loop_state.json").write_text("{")
    capsys.readouterr()
    code, out, err = run_cli(["pipeline", "--config", str(path), "--only", "cpt", *stop[:1], "eval.enabled=false"],
                             capsys)
    assert code == 0 and "falling back to step-1" in out, err


def test_bom_crlf_text_reads_like_lf():
    """B5/B6 at the reader: BOM and CRLF give exactly the records/documents of the plain LF file."""
    import tempfile

    from redone.config.schema import SourceSection
    from redone.data.sources import read_documents, read_records

    with tempfile.TemporaryDirectory() as tmp:
        for suffix, text in ((".txt", LF_TEXT), (".jsonl", '{"text": "a"}\n{"text": "b"}\n\n'),
                             (".json", '[\n {"text": "a"},\n {"text": "b"}\n]\n')):
            plain, odd = Path(tmp) / f"plain{suffix}", Path(tmp) / f"odd{suffix}"
            plain.write_text(text)
            odd.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
            for unit in ("paragraph", "line"):
                assert read_documents(SourceSection(path=str(odd), text_unit=unit)) == \
                    read_documents(SourceSection(path=str(plain), text_unit=unit))
            if suffix != ".txt":
                assert read_records(SourceSection(path=str(odd))) == read_records(SourceSection(path=str(plain)))
        assert [r["_line"] for r in read_records(SourceSection(path=str(Path(tmp) / "odd.json")))] == [2, 3]


def test_prune_unmarks_before_deleting(tmp_path):
    """A crash mid-prune must not leave a dir marked COMPLETE with files already deleted: kill a real
    process at the point between unmarking and deleting, and look at what it left."""
    from redone.train import checkpoint as ckpt

    for step in (1, 2, 3):
        d = ckpt.step_dir(tmp_path, step)
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"x")
        (d / ckpt.MARKER).write_text("ok\n")
    code = f"from redone.train import checkpoint as c; c.prune({str(tmp_path)!r}, 1)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, REDONE_KILL_AT="checkpoint-prune"))
    assert proc.returncode == -9  # SIGKILL at the kill point
    assert (ckpt.step_dir(tmp_path, 1) / "model.safetensors").exists()  # files still there, marker gone
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step-2", "step-3"]
    ckpt.prune(tmp_path, keep_last=1)
    assert [p.name for p in ckpt.checkpoints_dir(tmp_path).iterdir()] == ["step-3"]


def _can_mount() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount a size-limited tmpfs"
    probe = Path("/tmp") / f"redone-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True).returncode
    if ok == 0:
        subprocess.run(["umount", str(probe)], check=False)
    probe.rmdir()
    return None if ok == 0 else "mount -t tmpfs is not permitted in this container"


@pytest.fixture()
def small_disk(tmp_path):
    """A 60 MB tmpfs: room for one tiny-model checkpoint (~37 MB), not two."""
    reason = _can_mount()
    if reason:
        pytest.skip(reason)
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=60m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_disk_full_during_checkpoint_keeps_the_previous_one(small_disk, tiny_model_dir, tmp_path, capsys):
    from redone.train import checkpoint as ckpt

    env = Env(tmp_path, tiny_model_dir)
    out = small_disk / "run"
    config = env.config("cpt", output_dir=str(out), train__max_steps=3)
    code, _, err = run_cli(["train", "--stage", "cpt", "--config", str(config)], capsys)
    assert code == 1 and "Traceback" not in err
    assert len(error_lines(err)) == 1, err
    assert re.search(r"writing checkpoint step-2 to .* failed \(no space left on device\); the previous checkpoint "
                     r"step-1 is intact", err), err
    assert [p.name for p in ckpt.checkpoints_dir(out).iterdir()] == ["step-1"]  # the temp dir was removed
    assert ckpt.checkpoint_problem(ckpt.step_dir(out, 1)) is None
    # Resumable from there once there is room: move the run to a normal disk and rerun the command.
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    code, out_text, err = run_cli(["train", "--stage", "cpt", "--config", str(config), f"output_dir={moved}"], capsys)
    assert code == 0 and "step-1 at step 1" in out_text, err


def test_read_only_output_dir_is_refused_before_loading(tiny_model_dir, tmp_path, capsys):
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
    else:
        if _can_mount():
            pytest.skip(_can_mount())
        ro = tmp_path / "ro"
        ro.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(ro)], check=True)
    try:
        env = Env(tmp_path, tiny_model_dir)
        code, out, err = run_cli(env.train("cpt", None, output_dir=str(ro / "run")), capsys)
        assert code == 1 and re.search(r"output_dir: .*ro is not writable \(Read-only file system|Permission", err), err
        assert "tokenizing" not in err + out  # refused before any data was read
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], check=False)


# ---- a few real subprocesses: the exit codes and stderr a shell sees


SUBPROCESS_CASES = [
    ("yaml-error", lambda env: ["train", "--stage", "cpt", "--config", str(env.write("b.yaml", "a: [1\n"))],
     1, r"b\.yaml:2: invalid YAML"),
    ("usage-error", lambda env: ["train", "--stage", "rl2", "--config", "x"], 2, r"invalid choice: 'rl2'"),
]


@pytest.mark.parametrize("name,argv,code,match", SUBPROCESS_CASES, ids=[c[0] for c in SUBPROCESS_CASES])
def test_real_exit_codes(name, argv, code, match, tiny_model_dir, tmp_path):
    env = Env(tmp_path, tiny_model_dir)
    args = argv(env)
    before = snapshot(env.root)
    proc = subprocess.run([sys.executable, "-m", "redone", *args], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"), timeout=120)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert re.search(match, lines[-1]), proc.stderr
    if code == 1:
        assert len(lines) == 1 and ERROR_LINE.match(lines[0]), proc.stderr
    assert snapshot(env.root) == before


def test_catalogue_size():
    assert len(CASES) + len(CHECKPOINT_CASES) + len(SUBPROCESS_CASES) >= 100
