"""General chat records -> messages: HH-RLHF dialogues, instruction records, message lists, bad records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from redone.data.records import messages_from_record, parse_hh_dialogue
from redone.errors import DataError
from tests.conftest import DATA

HH_TRAIN = DATA / "preference" / "hh_rlhf_harmless_train.jsonl"
SEED_TASKS = DATA / "general" / "self_instruct_seed_tasks.jsonl"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _alternates(messages: list[dict]) -> bool:
    roles = [m["role"] for m in messages]
    return roles[0] == "user" and roles[-1] == "assistant" and all(a != b for a, b in zip(roles, roles[1:]))


def test_hh_rlhf_real_record_parses_into_alternating_turns():
    records = _jsonl(HH_TRAIN)
    messages = messages_from_record(records[0], HH_TRAIN, 0)
    assert _alternates(messages) and len(messages) >= 2
    assert records[0]["chosen"].rstrip().endswith(messages[-1]["content"])
    assert not any(m["content"].startswith(("Human:", "Assistant:")) for m in messages)
    # Record 408 has two Assistant turns in a row upstream: merged so turns still alternate.
    merged = parse_hh_dialogue(records[408]["chosen"], f"{HH_TRAIN}:408")
    assert _alternates(merged)
    assert records[408]["chosen"].count("\n\nAssistant:") > sum(m["role"] == "assistant" for m in merged)
    # Both sides of every pair parse (empty replies are kept for DPO, refused for SFT).
    for i, r in enumerate(records):
        assert _alternates(parse_hh_dialogue(r["chosen"], f"{HH_TRAIN}:{i}"))
        assert _alternates(parse_hh_dialogue(r["rejected"], f"{HH_TRAIN}:{i}"))


def test_hh_rlhf_malformed_names_file_and_index():
    with pytest.raises(DataError, match=r"^prefs.jsonl:7: field 'chosen': .*Human"):
        messages_from_record({"chosen": "Assistant: hi"}, "prefs.jsonl", 7)
    with pytest.raises(DataError, match=r"prefs.jsonl:3: .*must end with an Assistant turn"):
        messages_from_record({"chosen": "\n\nHuman: hi\n\nAssistant: yo\n\nHuman: ?"}, "prefs.jsonl", 3)
    with pytest.raises(DataError, match=r"prefs.jsonl:51: empty assistant turn"):
        messages_from_record({"chosen": "\n\nHuman: hi\n\nAssistant: "}, "prefs.jsonl", 51)


def test_instruction_records():
    seed = _jsonl(SEED_TASKS)
    for i, record in enumerate(seed):
        messages = messages_from_record(record, SEED_TASKS, i)
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[0]["content"].startswith(record["instruction"].strip())
        assert messages[1]["content"] == record["instances"][0]["output"].strip()
    alpaca = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
    assert messages_from_record(alpaca, "a.jsonl", 0) == [
        {"role": "user", "content": "Add the numbers.\n\n2 and 3"},
        {"role": "assistant", "content": "5"},
    ]
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    assert messages_from_record(chat, "c.jsonl", 0) == chat["messages"]
    with pytest.raises(DataError, match=r"c.jsonl:2: messages\[0\] has role 'usr'.*did you mean 'user'"):
        messages_from_record({"messages": [{"role": "usr", "content": "x"}]}, "c.jsonl", 2)
    with pytest.raises(DataError, match=r"c.jsonl:4: unrecognised chat record with keys \['prompt'\]"):
        messages_from_record({"prompt": "x"}, "c.jsonl", 4)
