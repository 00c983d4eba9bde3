"""`redone model push`: offline dry run over a real trained final dir, card validation, refusals."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys

import pytest

from redone.errors import RedoneError
from redone.hub import add_model_parsers, check_card_metadata, push_model, upload_files

from .conftest import cpt_overrides

FINAL_FILES = {"README.md", "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
               "redone.json", "redone_config.yaml", "tokenizer.json", "tokenizer_config.json"}
GOOD = {"license": "cc-by-nc-sa-4.0", "datasets": ["Anthropic/hh-rlhf"], "pipeline_tag": "text-generation",
        "library_name": "transformers", "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "tags": ["redone"]}


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A real CPT run of 2 steps: output_dir with checkpoints/ and final/."""
    from redone.stages import load_config, run_stage

    out = tmp_path_factory.mktemp("push") / "cpt"
    overrides = cpt_overrides(tiny_model_dir, out, str(out.parent / "cache"), steps=2, **{"train.save_every": 2})
    final = run_stage(load_config("cpt", None, overrides))
    return out, final


def test_dry_run_lists_every_file_and_validates_the_card(trained):
    _, final = trained
    lines = []
    files = push_model(final, "me/sns-tiny", dry_run=True, log=lines.append)
    assert {name for name, _ in files} == FINAL_FILES
    assert dict(files) == {p.name: p.stat().st_size for p in final.iterdir()}
    assert lines[0].startswith("[redone] would upload 9 files (") and lines[0].endswith("to me/sns-tiny (public):")
    for name, size in files:
        assert f"  {size:>14,}  {name}" in lines
    assert lines[-1] == ("[redone] card metadata OK: license cc-by-nc-sa-4.0, base_model (none), "
                         "datasets ['karpathy/tiny_shakespeare']")


def test_push_without_network_says_how_to_go_online(trained, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RedoneError, match=r"^model push needs the network: set HF_HUB_OFFLINE=0 and a token"):
        push_model(trained[1], "me/sns-tiny", log=lambda _: None)


def test_checkpoints_and_output_dirs_are_never_pushed(trained):
    out, _ = trained
    for folder in (out, out / "checkpoints", next((out / "checkpoints").iterdir())):
        with pytest.raises(RedoneError, match="is not a final model dir"):
            upload_files(folder)


def test_subfolders_hidden_and_temp_files_are_left_out(trained, tmp_path):
    copy = shutil.copytree(trained[1], tmp_path / "final")
    (copy / "checkpoints").mkdir()
    (copy / "checkpoints" / "model.safetensors").write_bytes(b"x")
    (copy / ".cache").write_text("x")
    (copy / "model.safetensors.tmp").write_text("x")
    assert {name for name, _ in upload_files(copy)} == FINAL_FILES
    (copy / "training_args.bin").write_bytes(b"pickle")
    with pytest.raises(RedoneError, match=r"pickled files \(training_args.bin\)"):
        upload_files(copy)


def test_bad_card_is_refused_naming_the_field(trained, tmp_path):
    copy = shutil.copytree(trained[1], tmp_path / "final")
    card = copy / "README.md"
    # The card redone wrote before Hub ids: a built-in name as base_model and license other with no name.
    card.write_text("---\nbase_model: smollm2-135m-instruct\nlibrary_name: transformers\nlicense: other\n"
                    "tags: [redone, sns, cpt]\n---\n\n# cpt\n")
    with pytest.raises(RedoneError, match="README.md: license_name is missing"):
        push_model(copy, "me/x", dry_run=True, log=lambda _: None)
    card.write_text(card.read_text().replace("license: other", "license: apache-2.0"))
    with pytest.raises(RedoneError, match="README.md: base_model 'smollm2-135m-instruct' is not a Hub id"):
        push_model(copy, "me/x", dry_run=True, log=lambda _: None)
    (copy / "README.md").unlink()
    with pytest.raises(RedoneError, match="no model card"):
        push_model(copy, "me/x", dry_run=True, log=lambda _: None)


@pytest.mark.parametrize("field, value, message", [
    ("license", "apache", "license 'apache' is not a Hub license id"),
    ("license", None, "license is missing"),
    ("base_model", "./runs/cpt/final", "base_model './runs/cpt/final' is not a Hub id"),
    ("datasets", None, "datasets is missing"),
    ("datasets", ["data/sns_bench/train"], "datasets entry 'data/sns_bench/train' is not a Hub dataset id"),
    ("pipeline_tag", None, "pipeline_tag is missing"),
    ("library_name", "", "library_name is missing"),
    ("tags", "redone", "tags must be a list"),
])
def test_metadata_checks(field, value, message):
    metadata = dict(GOOD)
    if value is None:
        del metadata[field]
    else:
        metadata[field] = value
    with pytest.raises(RedoneError, match=f"^card.md: {message}"):
        check_card_metadata(metadata, "", where="card.md")
    check_card_metadata(GOOD, "", where="card.md")  # the unmodified metadata passes


def test_empty_datasets_need_a_datasets_table():
    metadata = dict(GOOD, datasets=[])
    with pytest.raises(RedoneError, match="datasets is empty and the card has no '## Datasets' table"):
        check_card_metadata(metadata, "# model\n\n## Datasets\n\nnone\n")
    check_card_metadata(metadata, "## Datasets\n\n| dataset | license |\n|---|---|\n| my notes | CC0 |\n")


def test_repo_id_form(trained):
    with pytest.raises(RedoneError, match="--repo 'sns-tiny' is not a Hub repo id"):
        push_model(trained[1], "sns-tiny", dry_run=True, log=lambda _: None)


def test_cli_parser_runs_a_dry_run(trained, capsys):
    parser = argparse.ArgumentParser()
    model = parser.add_subparsers(dest="command").add_parser("model")
    add_model_parsers(model.add_subparsers(dest="model_cmd"))
    args = parser.parse_args(["model", "push", str(trained[1]), "--repo", "me/sns-tiny", "--private", "--dry-run"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "(private):" in out and "model.safetensors" in out and "card metadata OK" in out


def test_real_push_reaches_the_endpoint_and_fails_in_one_line(trained, tmp_path):
    """HF_HUB_OFFLINE=0 and an endpoint where nothing listens: create_repo really goes to the network,
    and its failure comes back as one line, not a traceback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="0", HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_TOKEN="hf_unused",
               HF_HOME=str(tmp_path / "hf"))
    code = "\n".join([
        "import argparse",
        "from redone.errors import RedoneError",
        "from redone.hub import run_push",
        f"args = argparse.Namespace(model_dir={str(trained[1])!r}, repo='me/sns-tiny', private=True, dry_run=False)",
        "try:",
        "    run_push(args)",
        "except RedoneError as err:",
        "    print('ERROR', err)",
    ])
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stdout.splitlines() if line.startswith("ERROR")]
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("ERROR model push to me/sns-tiny failed: ")
    assert "Connect" in lines[0]
