"""`redone predict`: parsed answers on the user's own records, exactly the training/eval prompts, resumable
after a SIGKILL with no record lost or written twice, bad records skipped with their line or refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from redone.errors import DataError, RedoneError
from redone.predict import PredictOptions, next_steps, predict, read_input
from redone.sns.scoring import candidate_labels, parse_answer
from tests.conftest import DATA, REPO
from tests.varied_model import greedy_texts, make_varied_model

HASHTAGS = DATA / "sns_bench" / "test" / "Note-Hashtag-multiple.json"
GENDER = DATA / "sns_bench" / "test" / "Note-Gender.json"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_varied_model(tmp_path_factory.mktemp("varied") / "model")


def greedy(model_dir: Path, task: str, items: list[dict], budget: int) -> list[str]:
    """The reference answers: the eval generator on the eval prompt builder."""
    from redone.sns.tasks import prompt_messages

    return greedy_texts(model_dir, [prompt_messages(task, item) for item in items], budget)


def read_out(path: Path) -> tuple[dict, list[dict]]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return lines[0]["header"], lines[1:]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_parsed_answers_from_mapped_columns_with_a_bad_record_skipped(model_dir, tmp_path):
    notes = json.loads(HASHTAGS.read_text())[:5]
    records = [{"note_id": f"n{i}", "text": n["content"], "tags": n["candidates"]} for i, n in enumerate(notes)]
    del records[3]["tags"]  # line 4 lacks a field the task needs
    source = write_jsonl(tmp_path / "notes.jsonl", records)
    out = tmp_path / "preds.jsonl"
    logged = []
    summary = predict(PredictOptions(model=str(model_dir), task="Note-Hashtag-multiple", input=str(source),
                                     out=str(out), fields=["content=text", "candidates=tags"], id_field="note_id",
                                     max_new_tokens=8, batch_size=3, progress=False), log=logged.append)
    assert summary.written == 4 and summary.reused == 0
    assert summary.skipped == [(4, "missing field 'tags' (item field 'candidates')")]
    assert any("1 record(s) skipped: line 4: missing field 'tags'" in line for line in logged)
    header, rows = read_out(out)
    assert header["task"] == "Note-Hashtag-multiple" and header["fields"] == {"content": "text", "candidates": "tags"}
    assert header["max_new_tokens"] == 8 and header["prompt_style"] == "redone"
    kept = [0, 1, 2, 4]
    expected = greedy(model_dir, "Note-Hashtag-multiple", [notes[i] for i in kept], 8)
    by_line = {row["line"]: row for row in rows}
    assert sorted(by_line) == [1, 2, 3, 5]
    for i, text in zip(kept, expected):
        row = by_line[i + 1]
        assert row["id"] == f"n{i}" and row["raw"] == text  # the eval prompt, the eval generator
        value, ok = parse_answer("Note-Hashtag-multiple", text, labels=candidate_labels(notes[i]))
        assert row["parsed"] == value and row["parse_ok"] == ok
        assert isinstance(row["parsed"], list) and row["new_tokens"] <= 8
    assert len({row["raw"] for row in rows}) > 1  # the model answers each note differently


def run_cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "redone.predict", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_mid_file_then_resume_loses_and_repeats_nothing(model_dir, tmp_path):
    out = tmp_path / "gender.jsonl"
    common = ["--model", str(model_dir), "--task", "Note-Gender", "--input", str(GENDER), "--out", str(out),
              "--max-new-tokens", "4", "--batch-size", "1", "--no-progress"]
    process = run_cli(*common)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_text(encoding="utf-8").count("\n") >= 3:  # header + 2 records
            break
        time.sleep(0.005)
    assert process.poll() is None, f"predict ended before it could be killed:\n{process.stdout.read()}"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stdout.close()
    written_before = out.read_text(encoding="utf-8").count("\n") - 1
    total = len(json.loads(GENDER.read_text()))
    assert 2 <= written_before < total  # killed mid-file
    with out.open("a", encoding="utf-8") as handle:  # what a kill in the middle of a write leaves
        handle.write('{"line": 999, "task": "Note-Gen')
    logged = []
    summary = predict(PredictOptions(model=str(model_dir), task="Note-Gender", input=str(GENDER), out=str(out),
                                     max_new_tokens=4, batch_size=4, progress=False), log=logged.append)
    assert any("dropped a torn last line" in line for line in logged)
    assert summary.reused == written_before and summary.written == total - written_before
    _, rows = read_out(out)
    lines = [row["line"] for row in rows]
    assert len(lines) == len(set(lines)) == total  # nothing lost, nothing twice
    assert sorted(lines) == sorted(r["_line"] for r in read_input(GENDER))
    # The same answers as one uninterrupted run.
    fresh = tmp_path / "fresh.jsonl"
    predict(PredictOptions(model=str(model_dir), task="Note-Gender", input=str(GENDER), out=str(fresh),
                           max_new_tokens=4, batch_size=4, progress=False), log=lambda _: None)
    assert {r["line"]: r["raw"] for r in rows} == {r["line"]: r["raw"] for r in read_out(fresh)[1]}
    # A third run has nothing left to do and writes nothing.
    again = predict(PredictOptions(model=str(model_dir), task="Note-Gender", input=str(GENDER), out=str(out),
                                   max_new_tokens=4, progress=False), log=lambda _: None)
    assert again.written == 0 and again.reused == total
    assert len(read_out(out)[1]) == total


def test_stop_after_hook_resumes_in_input_windows(model_dir, tmp_path):
    out = tmp_path / "p.jsonl"
    options = dict(model=str(model_dir), task="Note-Gender", input=str(GENDER), out=str(out), max_new_tokens=2,
                   batch_size=2, limit=7, progress=False)
    first = predict(PredictOptions(**options, stop_after=3), log=lambda _: None)
    assert first.stopped and first.written == 4  # stops after the batch that passed 3
    second = predict(PredictOptions(**options), log=lambda _: None)
    assert second.reused == 4 and second.written == 3
    assert sorted(r["line"] for r in read_out(out)[1]) == [r["_line"] for r in read_input(GENDER)[:7]]


def test_another_runs_output_is_refused_and_left_alone(model_dir, tmp_path):
    out = tmp_path / "p.jsonl"
    base = dict(model=str(model_dir), input=str(GENDER), out=str(out), max_new_tokens=2, limit=2, progress=False)
    predict(PredictOptions(task="Note-Gender", **base), log=lambda _: None)
    before = out.read_bytes()
    with pytest.raises(RedoneError, match=r"holds predictions of a different run \(task: 'Note-Gender' there, "
                                          r"'Note-Taxonomy-single' now"):
        predict(PredictOptions(task="Note-Taxonomy-single", **base), log=lambda _: None)
    with pytest.raises(RedoneError, match="max_new_tokens: 2 there, 3 now"):
        predict(PredictOptions(task="Note-Gender", **{**base, "max_new_tokens": 3}), log=lambda _: None)
    assert out.read_bytes() == before
    other = write_jsonl(tmp_path / "other.jsonl", [{"a": 1}])
    with pytest.raises(RedoneError, match="not a redone predict output"):
        predict(PredictOptions(task="Note-Gender", **{**base, "out": str(other)}), log=lambda _: None)


def test_strict_refuses_a_bad_record_before_writing(model_dir, tmp_path):
    source = write_jsonl(tmp_path / "notes.jsonl", [{"content": "a note"}, {"content": "another"}, {"text": "x"}])
    out = tmp_path / "p.jsonl"
    with pytest.raises(DataError, match=r"notes\.jsonl:3: missing field 'content' \(task Note-Gender reads content"):
        predict(PredictOptions(model=str(model_dir), task="Note-Gender", input=str(source), out=str(out),
                               strict=True, progress=False), log=lambda _: None)
    assert not out.exists()
    source = write_jsonl(tmp_path / "typed.jsonl", [{"content": 7}])
    with pytest.raises(DataError, match=r"typed\.jsonl:1: field 'content' is int, not text"):
        predict(PredictOptions(model=str(model_dir), task="Note-Gender", input=str(source), out=str(out),
                               strict=True, progress=False), log=lambda _: None)


def test_flag_errors_name_the_flag(model_dir, tmp_path):
    source = write_jsonl(tmp_path / "notes.jsonl", [{"text": "x"}])
    base = dict(model=str(model_dir), input=str(source), out=str(tmp_path / "o.jsonl"), progress=False)
    cases = [
        ({"task": "Note-Gendr"}, "unknown task 'Note-Gendr'; did you mean 'Note-Gender'"),
        ({"task": "Note-Gender", "fields": ["contnet=text"]}, "does not read a field 'contnet'; did you mean 'content'"),
        ({"task": "Note-Gender", "fields": ["content"]}, "expected item_field=input_column"),
        ({"task": "Note-Gender", "fields": ["content=text", "content=x"]}, "'content' is mapped twice"),
        ({"task": "Note-Gender", "backend": "vllm"}, "--backend vllm needs the vllm package"),
        ({"task": "Note-Gender", "dtype": "float16"}, "--dtype 'float16': expected one of float32, bfloat16"),
        ({"task": "Note-Gender", "out": str(source)}, "is the input file"),
    ]
    for extra, message in cases:
        with pytest.raises(RedoneError) as err:
            predict(PredictOptions(**{**base, **extra}), log=lambda _: None)
        assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "o.jsonl").exists()  # nothing written by a refused run


def test_cli_bad_record_is_one_line_and_exit_1(model_dir, tmp_path):
    source = write_jsonl(tmp_path / "notes.jsonl", [{"content": "fine"}, {"text": "x"}])
    process = run_cli("--model", str(model_dir), "--input", str(source), "--out", str(tmp_path / "o.jsonl"),
                      "--task", "Note-Gender", "--strict")
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 1, output
    assert output.strip().splitlines() == [
        f"redone: error: {source}:2: missing field 'content' (task Note-Gender reads content; map another column "
        "with --field FIELD=COLUMN)"]
    assert not (tmp_path / "o.jsonl").exists()


def test_csv_with_bom_and_multiline_field_keeps_line_numbers(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_bytes("\ufeffid,content\n1,plain note\n2,\"a note\nover two lines\"\n3,last\n".encode())
    records = read_input(path)
    assert [(r["_line"], r["id"], r["content"]) for r in records] == [
        (2, "1", "plain note"), (3, "2", "a note\nover two lines"), (5, "3", "last")]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,content\n1,a,extra\n")
    with pytest.raises(DataError, match=r"bad\.csv:2: 3 columns, the header has 2"):
        read_input(bad)
    with pytest.raises(DataError, match="unknown input format .xlsx"):
        read_input(tmp_path / "notes.xlsx")
    tsv = tmp_path / "notes.tsv"
    tsv.write_text("content\tcandidates\nhello\tA, B\n")
    assert read_input(tsv) == [{"content": "hello", "candidates": "A, B", "_line": 2}]


def test_transbench_directions_and_a_yaml_task_pass_the_text_through(model_dir, tmp_path):
    from redone.sns.tasks import unregister_task

    out = tmp_path / "t.jsonl"
    summary = predict(PredictOptions(model=str(model_dir), task="TransBench", input=str(DATA / "sns_transbench" / "test.json"),
                                     out=str(out), limit=6, max_new_tokens=5, progress=False), log=lambda _: None)
    assert summary.written == 6
    items = read_input(DATA / "sns_transbench" / "test.json")[:6]
    rows = {r["line"]: r for r in read_out(out)[1]}
    for item in items:
        row = rows[item["_line"]]
        assert row["task"] == f"TransBench-{item['src_lang']}2{item['dst_lang']}"
        assert row["parsed"] == row["raw"].strip() and row["parse_ok"] == bool(row["raw"].strip())
    task_file = tmp_path / "mood.yaml"
    task_file.write_text("name: Post-Mood\nfamily: Mood\nmax_new_tokens: 6\nsystem: Say the mood of the post.\n"
                         "user: \"Post: {post}\\nMood:\"\n")
    posts = write_jsonl(tmp_path / "posts.jsonl", [{"post": "Sunny day at the beach!"}, {"post": "Lost my keys."}])
    try:
        predict(PredictOptions(model=str(model_dir), task="", task_file=str(task_file), input=str(posts),
                               out=str(tmp_path / "m.jsonl"), progress=False), log=lambda _: None)
    finally:
        unregister_task("Post-Mood")
    header, rows = read_out(tmp_path / "m.jsonl")
    assert header["task"] == "Post-Mood" and header["task_source"].startswith("yaml sha256:")
    assert [r["line"] for r in sorted(rows, key=lambda r: r["line"])] == [1, 2]
    assert all(r["parsed"] == r["raw"].strip() and r["new_tokens"] <= 6 for r in rows)


def test_training_prompt_settings_are_the_default(model_dir, tmp_path):
    """A model trained with max_prompt_chars gets the same clipping by default; --max-prompt-chars 0 lifts it."""
    import shutil

    from redone.predict import prompt_settings

    trained = tmp_path / "trained"
    shutil.copytree(model_dir, trained)
    (trained / "redone.json").write_text(json.dumps({"fingerprint": "abc", "config": {
        "data": {"prompt_style": "mixed", "max_prompt_chars": 120}}}))
    style, chars, notes = prompt_settings(str(trained))
    assert (style, chars) == ("redone", 120)
    assert any("mixed" in n for n in notes) and any("120 chars" in n for n in notes)
    assert prompt_settings(str(trained), "official", 0)[:2] == ("official", None)
    out = tmp_path / "p.jsonl"
    predict(PredictOptions(model=str(trained), task="Note-Gender", input=str(GENDER), out=str(out), limit=1,
                           max_new_tokens=2, progress=False), log=lambda _: None)
    header = read_out(out)[0]
    assert header["max_prompt_chars"] == 120 and header["fingerprint"] == "abc"


def test_next_steps_names_the_three_commands():
    text = next_steps("runs/demo/dpo/final")
    lines = text.splitlines()
    assert lines[1].split() == ["redone", "predict", "--model", "runs/demo/dpo/final", "--task", "Note-Hashtag-multiple",
                                "--input", "docs/examples/hashtag_notes.jsonl", "--out",
                                "runs/demo/hashtag_predictions.jsonl"]
    assert lines[2].split() == ["redone", "chat", "--model", "runs/demo/dpo/final"]
    assert lines[3].split() == ["redone", "export", "gguf", "--model", "runs/demo/dpo/final", "--out",
                                "runs/demo/dpo.gguf"]
    assert "'runs/my run/sft/final'" in next_steps("runs/my run/sft/final")  # quoted for the shell
    assert (REPO / "docs" / "examples" / "hashtag_notes.jsonl").is_file()


@pytest.mark.slow
def test_smollm2_tags_the_shipped_example_notes(tmp_path):
    """The built-in SmolLM2 on the three example notes of docs/PREDICT.md: the recorded answers."""
    out = tmp_path / "p.jsonl"
    predict(PredictOptions(model="smollm2-135m-instruct", task="Note-Hashtag-multiple",
                           input=str(REPO / "docs" / "examples" / "hashtag_notes.jsonl"), out=str(out),
                           max_new_tokens=24, progress=False), log=lambda _: None)
    rows = {r["id"]: r for r in read_out(out)[1]}
    assert len(rows) == 3 and all(r["parse_ok"] for r in rows.values())
    # Recorded (docs/PREDICT.md): the untrained base model answers with a word of the note's title, not
    # the candidates; the format holds, the skill does not.
    assert [rows[f"sns-bench-test-hashtag-multiple-{i}"]["parsed"] for i in (85, 45, 96)] == [
        ["Nan"], ["Nan"], ["The following is a response to a question about the best way to make a line dog wallpaper."]]
