"""Tests for the SNS task registry / prompt builder, on the real data shipped in data/."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from redone.errors import DataError, RedoneError
from redone.sns import tasks as st

DATA = Path(__file__).resolve().parents[2] / "data"
SNS_FILES = sorted((DATA / "sns_bench").glob("*/*.json"))
TRANSBENCH_FILES = sorted((DATA / "sns_transbench").glob("*.json"))
HH_TRAIN = DATA / "preference" / "hh_rlhf_harmless_train.jsonl"
SEED_TASKS = DATA / "general" / "self_instruct_seed_tasks.jsonl"

# Gold-as-prediction scores of the official (bug-compatible) scorer, below 100 for documented reasons:
# Taxonomy/Hashtag-single golds containing "end", "." or "," are cut by the official pattern;
# Taxonomy-multiple likewise; MRC-simple gold spans containing "[" (emoji codes like "[Cry R]") cannot
# be parsed by the official no-nested-brackets list pattern. Fixed mode scores all of them 100.
BUG_COMPATIBLE_GOLD = {
    ("train", "Note-Hashtag-single"): 96.6597,
    ("train", "Note-MRC-simple"): 94.4559,
    ("train", "Note-Taxonomy-multiple"): 95.1754,
    ("train", "Note-Taxonomy-single"): 98.0952,
    ("test", "Note-Hashtag-single"): 93.4524,
    ("test", "Note-MRC-simple"): 94.1935,
    ("test", "Note-Taxonomy-multiple"): 95.1872,
    ("test", "Note-Taxonomy-single"): 98.4064,
}


def _split_and_task(path: Path) -> tuple[str, str]:
    return path.parent.name, st.task_for_file(path)


@pytest.fixture(scope="module")
def sns_items() -> dict[Path, list[dict]]:
    return {p: st.load_items(p) for p in SNS_FILES}


@pytest.fixture(scope="module")
def transbench_items() -> list[dict]:
    return st.load_items(DATA / "sns_transbench" / "test.json")


# ---------------------------------------------------------------- registry


def test_registry_lists_all_builtin_tasks():
    assert len(SNS_FILES) == 24, "data/sns_bench should hold 12 train and 12 test files"
    names = st.list_tasks()
    assert {p.stem for p in SNS_FILES} <= set(names)
    assert {"TransBench-zh2en", "TransBench-en2zh"} <= set(names)
    families = {st.get_task(n).family for n in st.SNS_BENCH_TASKS}
    assert families == {"Taxonomy", "Hashtag", "QueryCorr", "MRC", "NER", "Gender", "CHLW", "QueryGen"}
    assert st.get_task("Note-MRC-complex").max_new_tokens > st.get_task("Note-MRC-simple").max_new_tokens


def test_unknown_task_suggests_the_closest_name():
    with pytest.raises(RedoneError, match=r"unknown task 'Note-CHWL'.*did you mean 'Note-CHLW'"):
        st.get_task("Note-CHWL")
    with pytest.raises(RedoneError, match="did you mean 'Note-NER'"):
        st.prompt_messages("note-ner", {"content": "x", "question": "y"})


def test_unknown_style_is_refused():
    with pytest.raises(RedoneError, match="did you mean 'official'"):
        st.prompt_messages("Note-Gender", {"content": "x"}, style="oficial")


def test_duplicate_registration_is_refused():
    with pytest.raises(RedoneError, match="already registered"):
        st.register_task(st.get_task("Note-NER"))


def test_function_task_registration_round_trip():
    task = st.Task(
        name="Demo-Sentiment",
        family="Sentiment",
        max_new_tokens=4,
        system="Is the comment positive? Answer Yes or No.",
        user=lambda item: f"Comment: {item['text']}\nAnswer:",
        fields=("text",),
        answer_field="label",
    )
    st.register_task(task)
    try:
        ex = st.build_example("Demo-Sentiment", {"text": "love it", "label": "Yes"})
        assert ex["task"] == "Demo-Sentiment"
        assert [m["role"] for m in ex["messages"]] == ["system", "user", "assistant"]
        assert ex["messages"][1]["content"] == "Comment: love it\nAnswer:"
        assert ex["messages"][2]["content"] == "Yes"
        with pytest.raises(RedoneError, match="no 'official' prompt"):
            st.prompt_messages("Demo-Sentiment", {"text": "x"}, style="official")
    finally:
        st.unregister_task("Demo-Sentiment")
    assert "Demo-Sentiment" not in st.list_tasks()


# ---------------------------------------------------------------- YAML tasks


def test_yaml_task_round_trip(tmp_path):
    spec = tmp_path / "tone.yaml"
    spec.write_text(
        "name: Note-Tone\n"
        "family: Tone\n"
        "system: Classify the tone of the note. Answer with one word.\n"
        'user: "Title: {title}\\nBody: {body}\\nAnswer:"\n'
        "answer_field: tone\n"
        "max_new_tokens: 8\n",
        encoding="utf-8",
    )
    task = st.register_yaml_task(spec)
    try:
        assert task.fields == ("title", "body") and task.max_new_tokens == 8
        item = {"title": "Rainy day", "body": "Stayed in with tea", "tone": "calm"}
        ex = st.build_example("Note-Tone", item)
        assert ex["messages"] == [
            {"role": "system", "content": "Classify the tone of the note. Answer with one word."},
            {"role": "user", "content": "Title: Rainy day\nBody: Stayed in with tea\nAnswer:"},
            {"role": "assistant", "content": "calm"},
        ]
        assert st.answer_text("Note-Tone", item) == "calm"
        with pytest.raises(DataError, match="missing field 'body'"):
            st.prompt_messages("Note-Tone", {"title": "x"})
        with pytest.raises(RedoneError, match="already registered"):
            st.register_yaml_task(spec)
    finally:
        st.unregister_task("Note-Tone")


def test_yaml_task_rejects_unknown_and_missing_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: X\nfamily: F\nsystem: s\nuser: '{a}'\nmax_new_token: 3\n", encoding="utf-8")
    with pytest.raises(
        RedoneError, match=r"bad.yaml:5: unknown key 'max_new_token'.*did you mean 'max_new_tokens'"
    ):
        st.register_yaml_task(bad)
    bad.write_text("name: X\nfamily: F\nsystem: s\nuser: '{a}'\n", encoding="utf-8")
    with pytest.raises(RedoneError, match="missing key 'max_new_tokens'"):
        st.register_yaml_task(bad)
    bad.write_text("name: X\nfamily: F\nsystem: s\nuser: '{a.b}'\nmax_new_tokens: 3\n", encoding="utf-8")
    with pytest.raises(RedoneError, match="plain field name"):
        st.register_yaml_task(bad)
    bad.write_text(
        "name: X\nfamily: F\nsystem: s\nuser: '{a} {answer}'\nmax_new_tokens: 3\n", encoding="utf-8"
    )
    with pytest.raises(RedoneError, match=r"must not use the answer field \{answer\}"):
        st.register_yaml_task(bad)
    assert "X" not in st.list_tasks()


def _builtin_spec(name: str) -> dict:
    specs = yaml.safe_load(st.BUILTIN_TASKS_FILE.read_text(encoding="utf-8"))
    return next(s for s in specs if s["name"] == name)


def test_builtin_tasks_are_declared_as_data():
    specs = yaml.safe_load(st.BUILTIN_TASKS_FILE.read_text(encoding="utf-8"))
    assert [s["name"] for s in specs] == list(st.SNS_BENCH_TASKS + st.TRANSBENCH_TASKS)
    assert len(st.SNS_BENCH_TASKS) == 12 and st.TRANSBENCH_TASKS == ("TransBench-zh2en", "TransBench-en2zh")
    for name in st.list_tasks():
        t = st.get_task(name)
        assert t.source == "builtin" and isinstance(t.user, st.PromptTemplate), name
        assert isinstance(t.official_user, st.PromptTemplate) and t.description, name
    chlw = st.get_task("Note-CHLW").user
    assert chlw.split == (("content", "chlw"),) and chlw.fields == ("content",)
    assert st.get_task("Note-MRC-simple").fields == ("query", "content")


@pytest.mark.parametrize("name", ["Note-CHLW", "Note-MRC-complex", "Note-QueryCorr-topic", "Note-Taxonomy-multiple"])
def test_a_user_yaml_task_renders_like_the_builtin_it_copies(tmp_path, sns_items, name):
    """One loader: the built-in spec, saved as a user's YAML file, gives the same prompts and golds."""
    spec = {**_builtin_spec(name), "name": f"Copy-{name}"}
    path = tmp_path / "copy.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False), encoding="utf-8")
    copy = st.register_yaml_task(path)
    try:
        assert copy.source == str(path) and copy.fields == st.get_task(name).fields
        items = [i for p, v in sns_items.items() if p.stem == name for i in v]
        for style in st.STYLES:
            for item in items:
                assert st.prompt_messages(copy, item, style) == st.prompt_messages(name, item, style)
                assert st.answer_text(copy, item, style) == st.answer_text(name, item, style)
    finally:
        st.unregister_task(copy.name)


def test_yaml_system_with_worked_examples_and_named_transforms(tmp_path):
    spec = tmp_path / "fence.yaml"
    spec.write_text(
        "name: Note-Fence\nfamily: Demo\nmax_new_tokens: 4\nsystem: |\n  Say the topic.\n"
        "user:\n  template: |\n    Text: {text}\n    Topic:\n  transforms: {text: strip_fence}\n"
        "official_system:\n  definition: Name the topic of the text.\n  examples:\n"
        "    - {input: 'Text: rain all day', answer: weather}\n    - {input: 'Text: 3-1 win', answer: sport}\n"
        "  closing: Answer with one word.\n"
        'official_user: "Text: {text}\\nAnswer:"\n',
        encoding="utf-8",
    )
    task = st.register_yaml_task(spec)
    try:
        item = {"text": "```\n sunny again ```", "answer": "weather"}
        (system, user), (o_system, o_user) = (st.prompt_messages(task, item, s) for s in st.STYLES)
        assert system["content"] == "Say the topic."  # a block scalar's final newline is not part of it
        assert user["content"] == "Text: sunny again\nTopic:"
        assert o_system["content"] == (
            "Name the topic of the text.\n\nExamples:\n\nText: rain all day\nAnswer: weather\n\n"
            "Text: 3-1 win\nAnswer: sport\n\nAnswer with one word."
        )
        assert o_user["content"] == "Text: ```\n sunny again ```\nAnswer:"  # no transform in this style
    finally:
        st.unregister_task("Note-Fence")


BASE = "name: X\nfamily: F\nmax_new_tokens: 3\nsystem: s\n"


@pytest.mark.parametrize(
    "body, error",
    [
        ("user: {template: '{a}', transforms: {a: strp}}\n", r"bad.yaml:5: unknown transform 'strp'.*'strip'"),
        ("user:\n  template: '{a}'\n  split: {a: chwl}\n", r"bad.yaml:7: unknown split 'chwl'.*'chlw'"),
        ("user: '{a}'\nredone_answer: result\n", r"bad.yaml:6: unknown redone_answer 'result'.*'result_block'"),
        ("user: '{a}'\nanswer_type: dict\n", r"bad.yaml:6: unknown answer_type 'dict'"),
        ("user:\n  template: '{a}'\n  transforms: {b: strip}\n", r"bad.yaml:7: transform of \{b\}, which user"),
        ("user:\n  template: '{a}'\n  fallback: '{a}'\n", r"bad.yaml:7: a fallback needs a split"),
        ("user:\n  template: '{comment}'\n  split: {a: chlw}\n  fallback: '{comment}'\n",
         r"bad.yaml:8: the fallback must not use the split's parts"),
        ("user: '{a}'\nofficial_user: '{a}'\n", r"bad.yaml:1: task X: give official_system and official_user"),
        ("user: '{a}'\nofficial_system: {definition: d}\nofficial_user: '{a}'\n", r"bad.yaml:6: missing key 'examples'"),
        ("user: '{a}'\nofficial_system: {definition: d, examples: [{input: i, answer: 3}]}\nofficial_user: '{a}'\n",
         r"bad.yaml:6: answer must be a string"),
        ("user:\n  template: '{a}'\n  transform: {a: strip}\n", r"bad.yaml:7: unknown key 'transform'.*'transforms'"),
        ("user: '{a}'\nsystem: t\n", r"bad.yaml:6: duplicate key 'system'"),
    ],
)
def test_yaml_task_errors_name_file_and_line(tmp_path, body, error):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE + body, encoding="utf-8")
    with pytest.raises(RedoneError, match=error):
        st.register_yaml_task(bad)
    assert "X" not in st.list_tasks()


@pytest.mark.parametrize("budget", ["0", "-5", "true", "'32'"])
def test_yaml_budget_must_be_a_positive_integer(tmp_path, budget):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("max_new_tokens: 3", f"max_new_tokens: {budget}") + "user: '{a}'\n", encoding="utf-8")
    with pytest.raises(RedoneError, match=r"bad.yaml:3: max_new_tokens must be a positive integer"):
        st.register_yaml_task(bad)


def test_split_without_fallback_refuses_an_unknown_layout(tmp_path):
    spec = tmp_path / "hl.yaml"
    spec.write_text(BASE.replace("X", "Note-HL") + "user:\n  template: 'C: {comment} O: {options}'\n"
                    "  split: {content: chlw}\n", encoding="utf-8")
    task = st.register_yaml_task(spec)
    try:
        good = "Comment: nice lamp Possible highlight word options list: ['lamp'] Please provide the list"
        assert st.prompt_messages(task, {"content": good})[1]["content"] == "C: nice lamp O: ['lamp']"
        with pytest.raises(DataError, match=r"^items.json:3: field 'content' does not have the layout the 'chlw'"):
            st.prompt_messages(task, {"content": "odd layout"}, where="items.json:3")
    finally:
        st.unregister_task("Note-HL")


# ---------------------------------------------------------------- generation budgets


@pytest.fixture(scope="module")
def gold_tokens(sns_items) -> dict[str, dict[str, list[int]]]:
    """Token length of every shipped gold answer (train + test), by task and style, in SmolLM2 tokens."""
    from redone.model import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    golds: dict[str, dict[str, list[str]]] = {}
    for p, items in sns_items.items():
        for style in st.STYLES:
            golds.setdefault(p.stem, {}).setdefault(style, []).extend(st.answer_text(p.stem, i, style) for i in items)
    for split in ("train", "test"):
        for item in st.load_items(DATA / "sns_transbench" / f"{split}.json"):
            task = st.transbench_task(item)
            for style in st.STYLES:
                golds.setdefault(task, {}).setdefault(style, []).append(st.answer_text(task, item, style))
    unique = sorted({t for by_style in golds.values() for texts in by_style.values() for t in texts})
    length = dict(zip(unique, map(len, tok(unique, add_special_tokens=False)["input_ids"])))
    return {task: {style: [length[t] for t in texts] for style, texts in by_style.items()}
            for task, by_style in golds.items()}


def test_budgets_fit_the_longest_gold_answer(gold_tokens):
    """budget = ceil4(max + 1 + ceil(max / 10)): the longest gold in either style, its end-of-turn token
    and a 10% margin, so a model that writes a gold-length answer is never cut (builtin_tasks.yaml)."""
    assert set(gold_tokens) == set(st.list_tasks())
    longest = {task: max(max(v) for v in by_style.values()) for task, by_style in gold_tokens.items()}
    # Recorded with SmolLM2's tokenizer; MRC-complex's official gold keeps all four tags.
    assert longest == {
        "Note-Taxonomy-single": 8, "Note-Taxonomy-multiple": 17, "Note-Hashtag-single": 19,
        "Note-Hashtag-multiple": 62, "Note-QueryCorr-topic": 2, "Note-QueryCorr-explain": 1,
        "Note-MRC-simple": 732, "Note-MRC-complex": 853, "Note-NER": 25, "Note-Gender": 1, "Note-CHLW": 24,
        "Note-QueryGen": 17, "TransBench-zh2en": 1060, "TransBench-en2zh": 1999,
    }
    assert max(gold_tokens["Note-MRC-complex"]["redone"]) == 670
    for task, n in longest.items():
        budget = st.get_task(task).max_new_tokens
        assert budget > n, task
        assert budget == -(-(n + 1 + -(-n // 10)) // 4) * 4, task


# ---------------------------------------------------------------- loading and validation


def test_every_shipped_file_loads(sns_items, transbench_items):
    assert sum(len(v) for p, v in sns_items.items() if p.parent.name == "train") == 3964
    assert sum(len(v) for p, v in sns_items.items() if p.parent.name == "test") == 1393
    assert len(transbench_items) == 520
    assert len(st.load_items(DATA / "sns_transbench" / "train.json")) == 1749


def test_missing_field_names_file_and_index(tmp_path):
    path = tmp_path / "Note-Gender.json"
    # Errors name the 1-based line on which the offending item starts.
    path.write_text('[\n {"content": "a", "answer": "Yes"},\n {"content": "b"}\n]', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:3: missing field 'answer'$"):
        st.load_items(path)
    path.write_text(json.dumps([{"content": 3, "answer": "No"}]), encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:1: field 'content' must be a string"):
        st.load_items(path)
    path.write_text(json.dumps({"content": "a"}), encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON list"):
        st.load_items(path)


def test_mrc_simple_answer_must_be_a_list(tmp_path):
    path = tmp_path / "Note-MRC-simple.json"
    path.write_text(json.dumps([{"content": "c", "query": "q", "answer": "not a list"}]), encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:1: field 'answer' must be a list of strings"):
        st.load_items(path)


def test_unknown_file_stem_suggests_a_task():
    with pytest.raises(RedoneError, match=r"Note-Gendre.json: no task named after this file.*'Note-Gender'"):
        st.task_for_file("somewhere/Note-Gendre.json")
    with pytest.raises(RedoneError, match="transbench_task"):
        st.get_task(st.TRANSBENCH)


def test_transbench_directions(tmp_path, transbench_items):
    assert st.task_for_file(DATA / "sns_transbench" / "test.json") == st.TRANSBENCH
    zh2en = next(i for i in transbench_items if i["src_lang"] == "zh")
    en2zh = next(i for i in transbench_items if i["src_lang"] == "en")
    assert st.transbench_task(zh2en) == "TransBench-zh2en"
    assert st.transbench_task(en2zh) == "TransBench-en2zh"
    ex = st.build_example(st.TRANSBENCH, zh2en)
    assert ex["task"] == "TransBench-zh2en"
    assert zh2en["zh"].strip() in ex["messages"][1]["content"]
    assert zh2en["en"] not in ex["messages"][1]["content"]
    assert ex["messages"][2]["content"] == zh2en["en"]
    assert st.answer_text(st.TRANSBENCH, en2zh) == en2zh["zh"]
    bad = tmp_path / "transbench_bad.json"
    bad.write_text(json.dumps([{"zh": "a", "en": "b", "src_lang": "zh", "dst_lang": "fr"}]), encoding="utf-8")
    with pytest.raises(DataError, match=rf"{bad}:1: unsupported direction 'zh' -> 'fr'"):
        st.load_items(bad)


# ---------------------------------------------------------------- prompts


@pytest.mark.parametrize("style", st.STYLES)
def test_prompt_ignores_the_answer(sns_items, transbench_items, style):
    """Eval prompts are built from the same items: the answer field must never leak into them."""
    cases = [(st.task_for_file(p), items[:25]) for p, items in sns_items.items()]
    cases.append((st.TRANSBENCH, transbench_items[:25]))
    for task, items in cases:
        for item in items:
            t = st.get_task(st.transbench_task(item)) if task == st.TRANSBENCH else st.get_task(task)
            changed = {**item, t.answer_field: ["CHANGED"] if t.answer_type is list else "CHANGED"}
            without = {k: v for k, v in item.items() if k != t.answer_field}
            expected = st.prompt_messages(task, item, style)
            assert st.prompt_messages(task, changed, style) == expected, task
            assert st.prompt_messages(task, without, style) == expected, task


@pytest.mark.parametrize("style", st.STYLES)
def test_prompt_shape(sns_items, transbench_items, style):
    items_by_task = {st.task_for_file(p): items[0] for p, items in sns_items.items()}
    items_by_task.update({st.transbench_task(i): i for i in transbench_items})
    assert set(items_by_task) == set(st.list_tasks())
    for task, item in items_by_task.items():
        system, user = st.prompt_messages(task, item, style)
        assert system["role"] == "system" and user["role"] == "user"
        assert system["content"].strip() and user["content"].strip()
        # Every user turn ends with an answer cue (CHLW's own instruction ends in "Your output is:").
        assert user["content"].rstrip().endswith(":"), task


def test_redone_system_prompts_are_short_and_state_the_format():
    for name in st.list_tasks():
        system = st.get_task(name).system
        limit = 600 if name == "Note-MRC-complex" else 320
        assert len(system) <= limit, f"{name}: redone system prompt is {len(system)} chars"
        assert "Answer" in system, name
    assert "<Result>" in st.get_task("Note-MRC-complex").system
    assert "primary | secondary | tertiary" in st.get_task("Note-Taxonomy-multiple").system
    assert "Python list" in st.get_task("Note-MRC-simple").system
    assert "[] if none" in st.get_task("Note-CHLW").system


def test_official_style_has_worked_examples():
    for name in st.list_tasks():
        t = st.get_task(name)
        assert t.official_system and len(t.official_system) > len(t.system), name
        assert t.official_system.count("Answer:") >= 2 or "Example" in t.official_system, name


def test_chlw_embedded_instruction_is_not_repeated(sns_items):
    items = [i for p, v in sns_items.items() if p.stem == "Note-CHLW" for i in v]
    assert len(items) == 233
    assert all(st.chlw_parts(i["content"]) for i in items), "a CHLW item has an unknown layout"
    for item in items:
        user = st.prompt_messages("Note-CHLW", item)[1]["content"]
        assert "Your output is" not in user and "Please provide" not in user
        assert user.startswith("Comment: ") and "\nOptions: [" in user and user.endswith("\nAnswer:")
        # The official style keeps the item exactly as released (instruction included).
        assert st.prompt_messages("Note-CHLW", item, "official")[1]["content"] == item["content"]
    assert st.prompt_messages("Note-CHLW", {"content": "odd layout"})[1]["content"] == "odd layout"


def test_querycorr_topic_drops_code_fences(sns_items):
    item = sns_items[DATA / "sns_bench" / "test" / "Note-QueryCorr-topic.json"][0]
    user = st.prompt_messages("Note-QueryCorr-topic", item)[1]["content"]
    assert "```" not in user and user.startswith("Query: ")


# ---------------------------------------------------------------- round trip through the scorer


@pytest.mark.parametrize("path", SNS_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_gold_answer_round_trip(path, sns_items):
    """The assistant turn SFT trains on is exactly what the scorer gives full marks for."""
    scoring = pytest.importorskip("redone.sns.scoring")
    split, task = _split_and_task(path)
    items = sns_items[path]
    predictions = [st.build_example(task, item)["messages"][-1]["content"] for item in items]
    assert predictions == [st.answer_text(task, item) for item in items]
    fixed = scoring.score_file(task, predictions, items)
    assert fixed["score"] == pytest.approx(100.0), f"{split}/{task}: {fixed['score']}"
    if (split, task) in BUG_COMPATIBLE_GOLD:
        official = scoring.score_file(task, predictions, items, bug_compatible=True)
        assert official["score"] == pytest.approx(BUG_COMPATIBLE_GOLD[split, task], abs=1e-3)


def test_mrc_complex_redone_target_is_the_scored_result_block(sns_items):
    """The redone style trains only the <Result> block; the official style keeps all four tags; both
    get full marks, and the redone one is much shorter (what a CPU trains and decodes)."""
    scoring = pytest.importorskip("redone.sns.scoring")
    items = sns_items[DATA / "sns_bench" / "train" / "Note-MRC-complex.json"]
    redone = [st.answer_text("Note-MRC-complex", it) for it in items]
    official = [st.build_example("Note-MRC-complex", it, "official")["messages"][-1]["content"] for it in items]
    assert all(r.startswith("<Result>") and r.endswith("</Result>") and "<AnswerList>" not in r for r in redone)
    assert all("<rewrite_query>" in o and r in o for o, r in zip(official, redone))
    assert sum(map(len, redone)) < 0.5 * sum(map(len, official))
    for predictions in (redone, official):
        assert scoring.score_file("Note-MRC-complex", predictions, items)["score"] == pytest.approx(100.0)


def test_wrong_answers_do_not_round_trip(sns_items):
    """The round trip can fail: shifting golds by one item must lose points on every file."""
    scoring = pytest.importorskip("redone.sns.scoring")
    for path, items in sns_items.items():
        if path.parent.name != "test" or path.stem == "Note-QueryGen":
            continue  # QueryGen ANLS never reaches 0 for unrelated queries, but also drops below 100
        task = st.task_for_file(path)
        shifted = [st.answer_text(task, item) for item in items[1:] + items[:1]]
        assert scoring.score_file(task, shifted, items)["score"] < 100.0, task


# ---------------------------------------------------------------- prompt size report


def _tokenizer():
    """SmolLM2's tokenizer from a local folder named by $REDONE_TOKENIZER, if any (never the hub)."""
    folder = os.environ.get("REDONE_TOKENIZER")
    if not folder or not (Path(folder) / "tokenizer_config.json").exists():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def test_report_prompt_sizes(sns_items, transbench_items, capsys):
    """Prints average prompt size per task and style (tokens when a local tokenizer is available)."""
    tok = _tokenizer()
    samples = {st.task_for_file(p): items for p, items in sns_items.items() if p.parent.name == "test"}
    for item in transbench_items:
        samples.setdefault(st.transbench_task(item), []).append(item)
    rows = []
    for task, items in sorted(samples.items()):
        sizes = {}
        for style in st.STYLES:
            prompts = [st.prompt_messages(task, item, style) for item in items]
            chars = sum(len(m["content"]) for p in prompts for m in p) / len(prompts)
            sizes[style] = f"{chars:8.0f} ch"
            if tok is not None:
                texts = [
                    tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts
                ]
                n = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
                sizes[style] += f" {n / len(prompts):7.0f} tok"
        rows.append(f"{task:24s} redone {sizes['redone']}   official {sizes['official']}")
        assert "redone" in sizes
    with capsys.disabled():
        print("\naverage prompt size per item (test split)" + ("" if tok else "; no local tokenizer"))
        print("\n".join(rows))
