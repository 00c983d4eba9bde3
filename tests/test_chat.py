"""`redone chat` through a pseudo-terminal: streamed greedy answers equal to the eval generator's, multi-turn
history, /reset, /exit and Ctrl-D; with --task, the task prompt and the parsed answer line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pexpect
import pytest

from redone.chat import Chat, chat_loop, field_lines, read_message
from redone.sns.scoring import candidate_labels, parse_answer
from tests.conftest import REPO
from tests.varied_model import greedy_texts, make_varied_model

BUDGET = 8
TASK = "Note-Hashtag-multiple"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_varied_model(tmp_path_factory.mktemp("varied") / "model")


def chat_command() -> list[str]:
    """``-m redone chat`` once the CLI has the command, else the module itself (same parser and errors)."""
    from redone.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return ["-m", "redone", "chat"] if "chat" in sub.choices else ["-m", "redone.chat"]


def spawn(*args: str) -> pexpect.spawn:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return pexpect.spawn(sys.executable, [*chat_command(), *args], cwd=str(REPO), env=env, encoding="utf-8",
                         timeout=240, dimensions=(40, 400))


def answer(child: pexpect.spawn, message: str, end: str = "\r\nyou> ") -> str:
    """Send one line, return the streamed answer (terminal CRLF back to LF)."""
    child.sendline(message)
    child.expect_exact("model> ")
    child.expect_exact(end)
    return child.before.replace("\r\n", "\n")


def test_free_chat_streams_keeps_history_resets_and_exits(model_dir):
    child = spawn("--model", str(model_dir), "--max-new-tokens", str(BUDGET))
    child.expect_exact("you> ")
    first = answer(child, "hello there")
    second = answer(child, "and what else?")
    child.sendline("/reset")
    child.expect_exact("[history cleared]")
    child.expect_exact("you> ")
    after_reset = answer(child, "hello there")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    hello = [{"role": "user", "content": "hello there"}]
    expected_first, expected_second = greedy_texts(model_dir, [hello, hello + [
        {"role": "assistant", "content": first}, {"role": "user", "content": "and what else?"}]], BUDGET)
    assert first == expected_first and first.strip()  # the template, greedy, the same tokens as eval
    assert second == expected_second  # the first exchange was in the prompt
    assert after_reset == first  # /reset forgot it


def test_task_chat_wraps_the_message_and_prints_the_parsed_answer(model_dir):
    from redone.sns.tasks import prompt_messages

    child = spawn("--model", str(model_dir), "--task", TASK, "--max-new-tokens", str(BUDGET))
    child.expect_exact("you> ")
    child.sendline("content: Climbed Mount Tai at sunrise,")
    child.expect_exact("...> ")
    child.sendline("the clouds below us")  # continues the content field
    child.expect_exact("...> ")
    child.sendline("candidates: Hiking, Sunrise, Home Cooking")
    child.expect_exact("...> ")
    reply = answer(child, "", end="\r\nparsed: ")
    child.expect_exact("\r\n")
    parsed_line = child.before
    child.expect_exact("you> ")
    child.sendeof()  # Ctrl-D
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    item = {"content": "Climbed Mount Tai at sunrise,\nthe clouds below us", "candidates": "Hiking, Sunrise, Home Cooking"}
    assert reply == greedy_texts(model_dir, [prompt_messages(TASK, item)], BUDGET)[0]
    value, ok = parse_answer(TASK, reply, labels=candidate_labels(item))
    assert parsed_line == f"{json.dumps(value, ensure_ascii=False)}  (parse_ok: {str(ok).lower()})"


class Recorder:
    def __init__(self):
        self.pieces: list[str] = []

    def write(self, text: str) -> None:
        self.pieces.append(text)

    def flush(self) -> None:
        pass


def test_answer_arrives_in_pieces_and_messages_are_read_like_the_terminal(model_dir):
    from redone.model import load_model, load_tokenizer

    out = Recorder()
    chat = Chat(load_model(str(model_dir)), load_tokenizer(str(model_dir)), max_new_tokens=BUDGET, out=out)
    lines = iter(["hello there", "/reset", "/nope", "/exit"])
    assert chat_loop(chat, read=lambda prompt: next(lines)) == 0
    reply_pieces = out.pieces[out.pieces.index("model> ") + 1: out.pieces.index("[history cleared]\n")]
    assert len(reply_pieces) >= 2  # streamed: several writes while generating, not one at the end
    assert "".join(reply_pieces) == greedy_texts(model_dir, [[{"role": "user", "content": "hello there"}]],
                                                 BUDGET)[0] + "\n"
    assert any(p.startswith("[unknown command /nope") for p in out.pieces)
    assert chat.history == []

    typed = iter(['{"content": "x", "candidates": "A"}'])
    assert read_message(True, lambda p: next(typed)) == '{"content": "x", "candidates": "A"}'  # JSON stands alone
    typed = iter(["content: a", "b", "", "never read"])
    assert read_message(True, lambda p: next(typed)) == "content: a\nb"
    assert field_lines("content: a\nb\ncandidates: X, Y\nnote: kept", ("content", "candidates")) == {
        "content": "a\nb", "candidates": "X, Y\nnote: kept"}

    from redone.sns.tasks import get_task

    chat.task, out.pieces = get_task(TASK), []
    assert chat.say("content: only the note") is None  # the candidates are missing: said, nothing generated
    assert out.pieces[0].startswith(f"[task {TASK} reads content, candidates; missing or not text: candidates.")


def test_history_keeps_one_system_turn_and_drops_the_oldest_exchange_to_fit(model_dir):
    from redone.eval.generate import render_prompt
    from redone.model import load_model, load_tokenizer

    out = Recorder()
    tokenizer = load_tokenizer(str(model_dir))
    chat = Chat(load_model(str(model_dir)), tokenizer, max_new_tokens=BUDGET, system="Be brief.", out=out)
    first, second = chat.say("first question"), chat.say("second question")
    assert [m["role"] for m in chat.history] == ["user", "assistant", "user", "assistant"]  # no system inside
    messages = [{"role": "system", "content": "Be brief."}, *chat.history, {"role": "user", "content": "third"}]
    length = len(tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"])
    chat.context = length + BUDGET - 1  # one token short: the first exchange must go
    third = chat.say("third")
    assert "[dropped the 1 oldest exchange(s) to fit the model's context]\n" in out.pieces
    assert chat.history == [{"role": "user", "content": "second question"}, {"role": "assistant", "content": second},
                            {"role": "user", "content": "third"}, {"role": "assistant", "content": third}]
    kept = [{"role": "system", "content": "Be brief."}, *chat.history[:3]]
    assert third == greedy_texts(model_dir, [kept], BUDGET)[0]
    assert first != second
