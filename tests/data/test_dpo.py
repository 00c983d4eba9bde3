"""Preference pairs: file formats, HH-RLHF prompts, SNS-built pairs checked by the benchmark metric, bad input."""

from __future__ import annotations

import json
import random

import pytest

from redone.data import records
from redone.data.dpo import (
    BadPair,
    Pair,
    encode_pair,
    file_pairs,
    pair_from_record,
    pair_plans,
    task_pairs,
    task_score,
    tokenize_pairs,
    wrong_answers,
)
from redone.errors import DataError
from redone.sns import tasks as sns_tasks
from redone.stages import load_config
from tests.conftest import DATA

HH_TEST = DATA / "preference" / "hh_rlhf_harmless_test.jsonl"


def dpo_config(tmp_path, sources: str, **extra):
    items = {"output_dir": str(tmp_path / "out"), "data.sources": sources, **extra}
    return load_config("dpo", None, [f"{k}={v}" for k, v in items.items()])


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_hh_rlhf_prompt_is_the_shared_prefix():
    record = json.loads(HH_TEST.read_text().splitlines()[0])
    pair = pair_from_record(record, "hh:1")
    chosen = records.parse_hh_dialogue(record["chosen"])
    rejected = records.parse_hh_dialogue(record["rejected"])
    assert pair.prompt == chosen[:-1] == rejected[:-1]
    assert pair.prompt[-1]["role"] == "user"
    assert pair.chosen == chosen[-1:] and pair.rejected == rejected[-1:]
    assert pair.chosen != pair.rejected


def test_string_message_and_implicit_prompt_records_agree():
    prompt = [{"role": "user", "content": "Best time to post?"}]
    good, bad = "Weekday evenings.", "Never."
    as_strings = pair_from_record({"prompt": "Best time to post?", "chosen": good, "rejected": bad}, "a")
    as_messages = pair_from_record({"prompt": prompt, "chosen": [{"role": "assistant", "content": good}],
                                    "rejected": [{"role": "assistant", "content": bad}]}, "b")
    implicit = pair_from_record({"chosen": prompt + [{"role": "assistant", "content": good}],
                                 "rejected": prompt + [{"role": "assistant", "content": bad}]}, "c")
    assert as_strings == as_messages == implicit


@pytest.mark.parametrize("record, reason", [
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "identical"),
    ({"prompt": "q", "chosen": "   ", "rejected": "no"}, "empty_completion"),
    ({"prompt": "q", "chosen": "yes"}, "malformed"),
    ({"chosen": "yes", "rejected": "no"}, "malformed"),
    ({"prompt": "q", "chosen": [{"role": "robot", "content": "x"}], "rejected": "no"}, "malformed"),
])
def test_bad_records_name_their_reason(record, reason):
    with pytest.raises(BadPair) as err:
        pair_from_record(record, "file.jsonl:3")
    assert err.value.reason == reason
    assert str(err.value).startswith("file.jsonl:3: ") and "\n" not in str(err.value)


def bad_file(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "Is this note about food?", "chosen": "Yes", "rejected": "No"},
        {"prompt": "q", "chosen": "same", "rejected": "same"},
        {"prompt": "q", "chosen": "", "rejected": "no"},
        {"prompt": "q", "rejected": "no"},
    ])


def test_bad_pairs_are_dropped_and_counted(tmp_path):
    config = dpo_config(tmp_path, f"[{{path: {bad_file(tmp_path)}}}]")
    pairs, counts = file_pairs(config.data.sources[0], "drop")
    assert len(pairs) == 1
    assert counts == {"records": 4, "dropped_identical": 1, "dropped_empty_completion": 1, "dropped_malformed": 1}


def test_bad_pairs_error_is_one_line_with_file_and_line(tmp_path):
    path = bad_file(tmp_path)
    config = dpo_config(tmp_path, f"[{{path: {path}}}]", **{"data.bad_pairs": "error"})
    with pytest.raises(DataError) as err:
        file_pairs(config.data.sources[0], "error")
    message = str(err.value)
    assert message.startswith(f"{path}:2: ") and "identical" in message and "\n" not in message


def long_pair(words: int) -> Pair:
    note = " ".join(f"word{i}" for i in range(words))
    return Pair([{"role": "user", "content": f"Classify this note: {note}\nAnswer:"}],
                [{"role": "assistant", "content": "Food"}], [{"role": "assistant", "content": "Travel"}])


def test_overlong_pairs_truncate_drop_or_error(tokenizer):
    pair = long_pair(300)
    full = encode_pair(tokenizer, pair, max_len=None)
    assert len(full.prompt) + len(full.chosen) > 200
    cut = encode_pair(tokenizer, pair, max_len=200)
    assert cut.truncated and len(cut.prompt) + max(len(cut.chosen), len(cut.rejected)) <= 200
    assert cut.chosen == full.chosen and cut.rejected == full.rejected  # completions untouched
    assert cut.prompt[:20] == full.prompt[:20] and cut.prompt[-8:] == full.prompt[-8:]  # middle removed
    assert encode_pair(tokenizer, pair, max_len=200, overlong="drop") is None
    with pytest.raises(DataError, match=r"exceed data.seq_len=200 \(data.overlong: error\)"):
        encode_pair(tokenizer, pair, max_len=200, overlong="error")
    # A prompt longer than the limit that cannot be cut enough is dropped (counted), not silently kept.
    assert encode_pair(tokenizer, long_pair(300), max_len=40) is None


def test_tokenize_pairs_counts_drops_and_keeps_item_indices(tmp_path, tokenizer):
    config = dpo_config(tmp_path, "[{path: x.jsonl}]", **{"data.seq_len": 120})
    wordy = long_pair(5)
    wordy.chosen = [{"role": "assistant", "content": " ".join(["food"] * 200)}]  # no prompt cut can fit it
    store, counts = tokenize_pairs([long_pair(5), wordy, long_pair(150)], tokenizer, config.data, "t", "drop")
    assert len(store) == 3 and store.lengths()[1] == 0 and store.lengths()[0] > 0 and store.lengths()[2] > 0
    assert counts == {"dropped_overlong": 1, "truncated": 1}
    ids, mask = store.item(0)
    cut = int(store.part_offsets[0])
    assert not mask[: cut - 3].any() and mask[cut - 3: cut].all()  # "Food<|im_end|>\n"


def test_completion_mask_covers_exactly_the_completion(tokenizer):
    encoded = encode_pair(tokenizer, long_pair(3), max_len=None)
    ids, mask, cut = encoded.item()
    text = tokenizer.decode([t for t, m in zip(ids[:cut], mask[:cut]) if m])
    assert text == "Food<|im_end|>\n"
    assert tokenizer.decode(ids[cut:][len(encoded.prompt):]) == "Travel<|im_end|>\n"


SNS_TASKS = ["Note-Taxonomy-single", "Note-Taxonomy-multiple", "Note-Hashtag-single", "Note-Hashtag-multiple",
             "Note-QueryCorr-topic", "Note-QueryCorr-explain", "Note-MRC-simple", "Note-MRC-complex",
             "Note-NER", "Note-Gender", "Note-CHLW", "Note-QueryGen"]


@pytest.mark.parametrize("task", SNS_TASKS)
def test_built_pairs_score_gold_above_rejected(task):
    items = sns_tasks.load_items(DATA / "sns_bench" / "train" / f"{task}.json")[:15]
    pairs, counts = task_pairs(task, items, style="redone", max_prompt_chars=None, pairs_per_item=2, seed=0,
                               where=task)
    assert len(pairs) >= 12, counts
    for pair in pairs:
        chosen, rejected = pair.chosen[0]["content"], pair.rejected[0]["content"]
        item = next(it for it in items if sns_tasks.answer_text(task, it) == chosen
                    and sns_tasks.prompt_messages(task, it) == pair.prompt)
        assert task_score(task, item, chosen) > task_score(task, item, rejected), (task, chosen, rejected)
    assert sum(v for k, v in counts.items() if k.startswith("kind_")) == len(pairs)


def test_built_rejected_answers_are_plausible():
    item = sns_tasks.load_items(DATA / "sns_bench" / "train" / "Note-Taxonomy-single.json")[0]
    gold = sns_tasks.answer_text("Note-Taxonomy-single", item)
    answers = dict(wrong_answers("Note-Taxonomy-single", item, gold, random.Random(0), []))
    assert answers["other_label"] in [c.strip() for c in item["candidates"].split(",")]
    levels = [text for kind, text in wrong_answers("Note-QueryCorr-topic", {"content": "x"}, "2",
                                                    random.Random(0), [])]
    assert sorted(levels[:2]) == ["1", "3"] and levels[-1] == "-1"  # adjacent relevance levels first


def test_plans_name_one_component_per_task_and_file(tmp_path):
    config = dpo_config(tmp_path, f"[{{path: {DATA}/sns_bench/train, tasks: [Note-Gender, Note-NER]}}, "
                                  f"{{path: {DATA}/sns_transbench/train.json, format: transbench}}, "
                                  f"{{path: {HH_TEST}, limit: 5}}]")
    plans = pair_plans(config.data.sources, config.data, 0)
    assert [p.name for p in plans] == ["Note-Gender", "Note-NER", "TransBench-en2zh", "TransBench-zh2en",
                                       "hh_rlhf_harmless_test"]
    items = sns_tasks.load_items(DATA / "sns_transbench" / "train.json", sns_tasks.TRANSBENCH)[:10]
    pairs, _ = task_pairs("TransBench-zh2en", items, style="redone", max_prompt_chars=None, pairs_per_item=1,
                          seed=0, where="tb")
    assert len(pairs) == 10 and all(p.kind in ("untranslated", "truncated") for p in pairs)
    off = dpo_config(tmp_path, f"[{{path: {DATA}/sns_bench/train}}]", **{"data.build_from_tasks": "false"})
    with pytest.raises(DataError, match="build_from_tasks"):
        pair_plans(off.data.sources, off.data, 0)
