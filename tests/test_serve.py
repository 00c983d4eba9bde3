"""Serving through `transformers serve` (the command `redone serve` runs): one OpenAI-style chat completion
with an SNS task prompt, answered exactly as local greedy generation answers it."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from redone.errors import RedoneError
from redone.serve import serve_command

DATA = Path(__file__).resolve().parent.parent / "data"
TASK = "Note-Hashtag-multiple"
MAX_TOKENS = 12


def task_prompt(task: str, item: dict) -> list[dict]:
    """The project's prompt builder (the one place this test imports it from)."""
    from redone.sns.tasks import prompt_messages

    return prompt_messages(task, item)


def parse_hashtags(text: str) -> list[str]:
    """Note-Hashtag-multiple's answer protocol: the chosen candidates separated by ', '."""
    return [part.strip() for part in text.split(",") if part.strip()]


def serving_missing() -> str | None:
    from transformers.utils.import_utils import is_serve_available

    if is_serve_available():
        return None
    return "transformers serve needs fastapi, uvicorn and openai (pip install 'redone[serve]')"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(process, port: int, log: Path, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"transformers serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"transformers serve not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
        return json.loads(response.read())


def local_greedy(model_dir: Path, messages: list[dict]) -> tuple[str, int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_TOKENS, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True), ids.shape[1]


@pytest.mark.parametrize("model", ["tiny", pytest.param("smollm2", marks=pytest.mark.slow)])
def test_chat_completion_round_trip(model, request, tmp_path):
    missing = serving_missing()
    if missing:
        pytest.skip(missing)
    if model == "tiny":  # random weights: the answer is noise, the round trip is what is tested
        model_dir = request.getfixturevalue("tiny_model_dir")
    else:  # real weights: an answer in words that the task's parser splits into hashtags
        from redone.model import resolve_model

        model_dir = Path(resolve_model("smollm2-135m-instruct"))
    item = json.loads((DATA / "sns_bench" / "test" / f"{TASK}.json").read_text())[0]
    messages = task_prompt(TASK, item)
    port, log = free_port(), tmp_path / "serve.log"
    command = serve_command(model_dir, port=port, dtype="float32", device="cpu")
    with open(log, "w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(process, port, log)
        answer = post_json(f"http://127.0.0.1:{port}/v1/chat/completions",
                           {"model": str(model_dir), "messages": messages, "max_tokens": MAX_TOKENS,
                            "temperature": 0})
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    assert answer["object"] == "chat.completion" and answer["model"] == str(model_dir)
    [choice] = answer["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    text = choice["message"]["content"]
    assert isinstance(text, str)
    # Same chat template, same greedy decoding: the server's answer is the local one, token for token.
    expected, prompt_tokens = local_greedy(model_dir, messages)
    assert answer["usage"]["prompt_tokens"] == prompt_tokens
    assert 0 < answer["usage"]["completion_tokens"] <= MAX_TOKENS
    assert text == expected
    hashtags = parse_hashtags(text)
    assert all(isinstance(tag, str) and tag for tag in hashtags)
    assert hashtags == parse_hashtags(expected)
    if model == "smollm2":
        assert hashtags  # SmolLM2-135M answers in words (measured: "No, no, no, ..."), not whitespace


def test_serve_command_runs_transformers_serve_pinned_to_the_dir(tiny_model_dir):
    command = serve_command(tiny_model_dir, port=8123)
    assert command[1:5] == ["-m", "transformers.cli.transformers", "serve", str(tiny_model_dir)]
    assert command[5:] == ["--host", "127.0.0.1", "--port", "8123", "--dtype", "auto", "--device", "auto"]


def test_serve_refuses_a_dir_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RedoneError, match="not a local model dir with \\*.safetensors weights"):
        serve_command(tmp_path)
