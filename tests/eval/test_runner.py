"""`redone eval` end to end on the tiny model, resume after an interruption, the skill-free row, compare."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from redone.cli import main
from redone.config.schema import EvalConfig
from redone.config.validate import check_eval
from redone.errors import RedoneError
from redone.eval import runner
from redone.eval.baseline import skill_free_predictions
from redone.eval.report_table import compare_markdown
from redone.eval.runner import eval_config, evaluate, load_result, resolved_benches
from redone.sns.scoring import SNS_FILES, TASKS, aggregate, score_file
from redone.sns.tasks import get_task
from tests.conftest import DATA

FAST = ["--max-new-tokens-cap", "8", "--ppl-max-tokens", "48", "--ppl-context", "256", "--no-progress"]


def _load(split: str, file: str) -> list[dict]:
    return json.loads((DATA / "sns_bench" / split / f"{file}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tiny_result(tiny_model_dir, tmp_path_factory):
    """One CLI run of all three benches with --limit 2: (exit code, stdout, result path)."""
    import io
    from contextlib import redirect_stdout

    out = tmp_path_factory.mktemp("eval") / "tiny.json"
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(["eval", "--model", str(tiny_model_dir), "--limit", "2", "--out", str(out), "--bench",
                     "sns-bench", "--bench", "sns-transbench", "--bench", "general-ppl", *FAST])
    return code, buffer.getvalue(), out


def test_end_to_end_numbers_land_in_json_and_table(tiny_result):
    code, stdout, out = tiny_result
    assert code == 0
    result = load_result(out)
    header = result["header"]
    assert header["limit"] == 2 and "first 2 items" in header["limit_note"]
    assert header["scoring_mode"] == "fixed" and header["prompt_style"] == "redone"
    assert header["max_new_tokens_cap"] == 8 and header["querygen_mode"].startswith(("embedding+anls", "anls-only"))

    sns = result["sns_bench"]
    assert list(sns["files"]) == SNS_FILES and all(r["n"] == 2 for r in sns["files"].values())
    assert set(sns["tasks"]) == set(TASKS) and isinstance(sns["average"], float)
    assert sns["other_mode"]["mode"] == "official"
    assert sns["generation"]["generated"] == 24 and sns["generation"]["items_per_s"] > 0
    assert all("metrics" in r and "hit_budget" in r for r in sns["files"].values())

    trans = result["sns_transbench"]
    assert trans["zh2en"]["n"] == 2 and trans["en2zh"]["n"] == 2 and "average" in trans
    ppl = result["general_ppl"]
    assert ppl["shakespeare_tail"]["ppl"] > 1 and ppl["hh_rlhf_chosen"]["scored_tokens"] == 48

    assert f"**{sns['average']:.2f}**" in stdout and "## SNS-TransBench" in stdout and "Shakespeare tail" in stdout
    assert out.with_suffix(".md").read_text() in stdout
    predictions = out.with_name("tiny.predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 1 + 24 + 4  # header, SNS-Bench items, TransBench items


def test_skill_free_row_beside_the_model_is_the_baseline_on_the_same_items(tiny_result):
    result = load_result(tiny_result[2])
    files = {}
    for file in SNS_FILES:
        items = _load("test", file)[:2]
        files[file] = score_file(file, skill_free_predictions(file, items, _load("train", file)), items,
                                 embedder=None if "anls-only" in result["header"]["querygen_mode"] else _embedder())
        assert result["sns_bench"]["skill_free"]["files"][file]["score"] == pytest.approx(files[file]["score"])
    assert result["sns_bench"]["skill_free"]["average"] == pytest.approx(aggregate(files)["average"])


def _embedder():
    from redone.eval.embedding import load_embedder

    return load_embedder()


def test_skill_free_baseline_on_the_full_test_split(tmp_path):
    result = evaluate(None, ["sns-bench"], skill_free=True, embedder="none", out=str(tmp_path / "floor.json"))
    assert result["header"]["model"] == "skill-free" and result["header"]["limit"] is None
    assert result["sns_bench"]["average"] == pytest.approx(30.68, abs=0.01)  # measured with the scorer
    direct = {}
    for file in SNS_FILES:
        items = _load("test", file)
        direct[file] = score_file(file, skill_free_predictions(file, items, _load("train", file)), items)
        assert result["sns_bench"]["files"][file]["score"] == pytest.approx(direct[file]["score"])
    assert result["sns_bench"]["average"] == pytest.approx(aggregate(direct)["average"])
    assert "skill_free" not in result["sns_bench"]  # it *is* the skill-free row


def test_compare_prints_deltas_against_the_first_column(tiny_result, tmp_path, capsys):
    out = tiny_result[2]
    floor = tmp_path / "floor.json"
    evaluate(None, ["sns-bench", "sns-transbench"], skill_free=True, limit=2, max_new_tokens_cap=8,
             out=str(floor), progress=False)
    capsys.readouterr()
    assert main(["eval", "compare", str(out), str(floor), "--labels", "tiny", "floor"]) == 0
    table = capsys.readouterr().out
    a, b = load_result(out), load_result(floor)
    delta = b["sns_bench"]["average"] - a["sns_bench"]["average"]
    row = next(line for line in table.splitlines() if line.startswith("| SNS-Bench average"))
    assert row == (f"| SNS-Bench average | {a['sns_bench']['average']:.2f} | "
                   f"{b['sns_bench']['average']:.2f} ({delta:+.2f}) |")
    assert "| metric | tiny | floor |" in table and "| SNS-TransBench average |" in table
    assert "PPL Shakespeare tail ↓" in table  # only the first result has it: "–" for the other
    assert "not like for like" not in table

    b["header"]["limit"] = 5
    assert "not like for like: limit differs (tiny=2, floor=5)" in compare_markdown([a, b], ["tiny", "floor"])


def test_interrupted_eval_resumes_without_regenerating(tiny_model_dir, tmp_path, monkeypatch):
    from redone.eval.generate import HFGenerator

    real = HFGenerator._generate_batch
    seen: list[int] = []

    def crash_on_second_batch(self, prompts, max_new_tokens):
        if len(seen) == 1:
            raise KeyboardInterrupt
        seen.append(len(prompts))
        return real(self, prompts, max_new_tokens)

    options = dict(files=("Note-Gender", "Note-NER"), limit=3, batch_size=2, max_new_tokens_cap=8,
                   embedder="none", progress=False, out=str(tmp_path / "r.json"))
    monkeypatch.setattr(HFGenerator, "_generate_batch", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate(str(tiny_model_dir), ["sns-bench"], **options)
    assert seen == [2]

    generated: list[int] = []

    def counting(self, prompts, max_new_tokens):
        generated.append(len(prompts))
        return real(self, prompts, max_new_tokens)

    monkeypatch.setattr(HFGenerator, "_generate_batch", counting)
    result = evaluate(str(tiny_model_dir), ["sns-bench"], **options)
    assert sum(generated) == 4  # 6 items, 2 finished before the interruption
    assert result["sns_bench"]["generation"]["reused"] == 2
    assert result["sns_bench"]["files"]["Note-Gender"]["n"] == 3

    generated.clear()
    again = evaluate(str(tiny_model_dir), ["sns-bench"], **options)
    assert generated == [] and again["sns_bench"]["files"] == result["sns_bench"]["files"]
    with pytest.raises(RedoneError, match="different run.*dtype"):
        evaluate(str(tiny_model_dir), ["sns-bench"], **{**options, "dtype": "bfloat16"})


def test_limit_takes_the_first_items_of_each_transbench_direction():
    items = runner.transbench_items(DATA, "test", 3)
    assert Counter(it.file for it in items) == {"zh2en": 3, "en2zh": 3}
    everything = json.loads((DATA / "sns_transbench" / "test.json").read_text(encoding="utf-8"))
    for direction in ("zh2en", "en2zh"):
        first = [i for i, x in enumerate(everything) if f"{x['src_lang']}2{x['dst_lang']}" == direction][:3]
        assert [it.index for it in items if it.file == direction] == first


def test_spread_subset_is_evenly_spaced_through_each_file_and_direction():
    assert runner.subset_indices(10, 4, "spread") == [0, 2, 5, 7]
    assert runner.subset_indices(10, 4, "first") == [0, 1, 2, 3]
    assert runner.subset_indices(3, 8, "spread") == [0, 1, 2]  # a limit above n takes everything
    by_file = runner.sns_bench_items(DATA, "test", ("Note-MRC-complex",), 5, "spread")
    n = len(json.loads((DATA / "sns_bench" / "test" / "Note-MRC-complex.json").read_text(encoding="utf-8")))
    assert [it.index for it in by_file["Note-MRC-complex"]] == [i * n // 5 for i in range(5)]
    everything = json.loads((DATA / "sns_transbench" / "test.json").read_text(encoding="utf-8"))
    items = runner.transbench_items(DATA, "test", 4, "spread")
    for direction in ("zh2en", "en2zh"):
        positions = [i for i, x in enumerate(everything) if f"{x['src_lang']}2{x['dst_lang']}" == direction]
        want = [positions[k * len(positions) // 4] for k in range(4)]
        assert [it.index for it in items if it.file == direction] == want
        assert [it.item for it in items if it.file == direction] == [everything[i] for i in want]
    with pytest.raises(RedoneError, match=r"eval.subset: unknown value 'random' \(choose from first, spread\)"):
        check_eval(eval_config({"subset": "random"}))


def test_budgets_are_capped():
    assert runner.budget("Note-MRC-simple", 256) == 256
    assert runner.budget("Note-MRC-simple", None) == get_task("Note-MRC-simple").max_new_tokens > 256
    assert runner.budget("Note-Gender", 256) == 4


def test_options_from_an_eval_config_section():
    options = eval_config({"benches": ["sns-bench"], "limit": 5, "prompt_style": "official"})
    assert options.benches == ["sns-bench"] and options.limit == 5
    with pytest.raises(RedoneError, match="eval.limt: unknown config key; did you mean 'eval.limit'"):
        eval_config({"limt": 5})
    with pytest.raises(RedoneError, match="eval.limit: Value 'five' of type 'str' could not be converted"):
        eval_config({"limit": "five"})
    with pytest.raises(RedoneError, match="eval.benches: unknown value 'sns-bnch'; did you mean 'sns-bench'"):
        check_eval(EvalConfig(benches=["sns-bnch"]))
    with pytest.raises(RedoneError, match="eval.prompt_style: unknown value 'offical'; did you mean 'official'"):
        check_eval(EvalConfig(prompt_style="offical"))
    with pytest.raises(RedoneError, match="eval.scoring_mode: unknown value 'bug_compatible'"):
        check_eval(EvalConfig(scoring_mode="bug_compatible"))
    with pytest.raises(RedoneError, match="has general-ppl: the skill-free baseline is no model"):
        check_eval(EvalConfig(benches=["general-ppl"], skill_free=True))
    assert resolved_benches(EvalConfig(skill_free=True)) == ("sns-bench", "sns-transbench")
    with pytest.raises(RedoneError, match="did you mean 'eval.prompt_style'"):
        evaluate("m", ["sns-bench"], prompt_styl="redone")
    assert runner.default_label("runs/demo/sft/final") == "sft" and runner.default_label("/m/base") == "base"


def test_cli_without_a_model_is_a_one_line_error(capsys):
    assert main(["eval", "--limit", "1"]) == 1
    assert "pass --model" in capsys.readouterr().err
    assert main(["eval", "compare", "/nonexistent.json"]) == 1


def test_config_file_section_with_flags_overriding(tmp_path):
    from redone.cli import build_parser
    from redone.eval.cli_eval import options_from_args
    from tests.conftest import REPO

    args = build_parser().parse_args(["eval", "--config", str(REPO / "configs/eval/demo.yaml"), "--limit", "3",
                                      "--no-progress", "--max-new-tokens-cap", "0"])
    options = options_from_args(args)
    assert options.limit == 3 and options.benches == ["sns-bench", "sns-transbench", "general-ppl"]
    assert options.progress is False and options.max_new_tokens_cap is None and options.batch_size == 8
    check_eval(options)
    plain = options_from_args(build_parser().parse_args(["eval", "--model", "m"]))
    assert plain == EvalConfig()  # no flags, no config: the dataclass defaults
    bad = tmp_path / "bad.yaml"
    bad.write_text("eval:\n  limt: 3\n")
    with pytest.raises(RedoneError, match="did you mean 'eval.limit'"):
        options_from_args(build_parser().parse_args(["eval", "--config", str(bad)]))


def test_max_prompt_chars_clips_the_prompt_not_the_scored_item(tiny_model_dir, monkeypatch):
    from redone.eval import generate

    seen = []
    real = generate.generate_resumable

    def spy(generator, jobs, store):
        seen.extend(jobs)
        return real(generator, jobs, store)

    monkeypatch.setattr(generate, "generate_resumable", spy)
    common = dict(files=("Note-Gender",), limit=1, max_new_tokens_cap=2, embedder="none", progress=False)
    full = evaluate(str(tiny_model_dir), ["sns-bench"], **common)
    clipped = evaluate(str(tiny_model_dir), ["sns-bench"], max_prompt_chars=60, **common)
    long_prompt, short_prompt = (job.request.messages[-1]["content"] for job in seen)
    assert " [...] " in short_prompt and len(short_prompt) < len(long_prompt)
    assert clipped["header"]["max_prompt_chars"] == 60 and full["header"]["max_prompt_chars"] is None
    assert clipped["sns_bench"]["files"]["Note-Gender"]["n"] == 1
