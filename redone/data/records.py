"""General chat records -> chat messages (SFT's general data, HH-RLHF dialogues for perplexity and DPO).

Accepted records: ``{"messages": [...]}``, ``{"instruction", "input"?, "output"}``, self-instruct seed
tasks (``instruction`` + ``instances[0]``) and HH-RLHF ``"\\n\\nHuman: ... \\n\\nAssistant: ..."``
dialogues (``parse_hh_dialogue``).

Errors: ``DataError`` naming ``file:index`` for a malformed record, an empty turn, an unknown role (with
a did-you-mean) or a conversation that does not end with an assistant turn.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from redone.errors import DataError

Message = dict[str, str]


def _did_you_mean(word: str, choices: list[str]) -> str:
    folded = {c.lower(): c for c in choices}
    close = [folded[c] for c in difflib.get_close_matches(word.lower(), list(folded), n=3, cutoff=0.5)]
    if close:
        return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    return f" (known: {', '.join(sorted(choices))})"


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_CHAT_ROLES = ("system", "user", "assistant")


def parse_hh_dialogue(text: str, where: str = "HH-RLHF dialogue") -> list[Message]:
    """Split "\\n\\nHuman: ... \\n\\nAssistant: ..." into alternating user/assistant messages.

    Consecutive turns of one speaker (a few upstream records have two Assistant turns in a row) are
    joined with a blank line so turns alternate. Empty turns are kept: an empty "chosen" reply is a
    real preference in HH-RLHF; ``messages_from_record`` refuses them for SFT.
    """
    if not isinstance(text, str):
        raise DataError(f"{where}: dialogue must be a string, got {type(text).__name__}")
    parts = _HH_TURN.split("\n\n" + text.lstrip())
    if parts[0].strip() or len(parts) < 3:
        raise DataError(f"{where}: not an HH-RLHF dialogue (must start with 'Human:')")
    messages: list[Message] = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role, content = _HH_ROLES[speaker], content.strip()
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] = f"{messages[-1]['content']}\n\n{content}".strip()
        else:
            messages.append({"role": role, "content": content})
    if messages[0]["role"] != "user":
        raise DataError(f"{where}: dialogue must start with a Human turn")
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: dialogue must end with an Assistant turn")
    return messages


def messages_from_record(record: dict, file: str | Path, line: int) -> list[Message]:
    """Chat messages from a general-chat record, for SFT (every turn non-empty, ends with assistant).

    Accepts ``{"messages": [...]}``, ``{"instruction", "input"?, "output"}``, self-instruct seed tasks
    (``instruction`` + ``instances[0]``) and HH-RLHF records (``chosen``, or ``text``, as a dialogue).
    """
    where = f"{file}:{line}"  # the record's 1-based line in its file
    if not isinstance(record, dict):
        raise DataError(f"{where}: record is a {type(record).__name__}, not an object")
    if "messages" in record:
        messages = _checked_messages(record["messages"], where)
    elif "instruction" in record and "instances" in record:
        messages = _self_instruct_messages(record, where)
    elif "instruction" in record and "output" in record:
        messages = _instruction_messages(record, record, where)
    elif isinstance(record.get("chosen"), str) or isinstance(record.get("text"), str):
        key = "chosen" if "chosen" in record else "text"
        messages = parse_hh_dialogue(record[key], f"{where}: field {key!r}")
    else:
        raise DataError(
            f"{where}: unrecognised chat record with keys {sorted(record)} (expected messages, "
            "instruction/output, instruction/instances, or an HH-RLHF 'chosen' dialogue)"
        )
    for m in messages:
        if not m["content"].strip():
            raise DataError(f"{where}: empty {m['role']} turn")
    return messages


def _checked_messages(messages: Any, where: str) -> list[Message]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    out = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: messages[{j}] must be an object with a string 'content'")
        if m.get("role") not in _CHAT_ROLES:
            raise DataError(
                f"{where}: messages[{j}] has role {m.get('role')!r}{_did_you_mean(str(m.get('role')), list(_CHAT_ROLES))}"
            )
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be an assistant turn (nothing to train on)")
    return out


def _self_instruct_messages(record: dict, where: str) -> list[Message]:
    instances = record["instances"]
    if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
        raise DataError(f"{where}: 'instances' must be a non-empty list of objects")
    return _instruction_messages(record, instances[0], where)


def _instruction_messages(record: dict, io: dict, where: str) -> list[Message]:
    for key, obj in (("instruction", record), ("output", io)):
        if not isinstance(obj.get(key), str):
            raise DataError(f"{where}: field {key!r} must be a string")
    inp = io.get("input") or ""
    if not isinstance(inp, str):
        raise DataError(f"{where}: field 'input' must be a string")
    user = record["instruction"].strip()
    if inp.strip():
        user = f"{user}\n\n{inp.strip()}"
    return [{"role": "user", "content": user}, {"role": "assistant", "content": io["output"].strip()}]
