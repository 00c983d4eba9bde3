"""`redone chat`: talk to a model in the terminal, tokens streamed as they are generated.

    redone chat --model DIR [--task T] [--max-new-tokens N] [--temperature T] [--dtype float32|bfloat16]

Features
- The model's own chat template (``tokenizer.apply_chat_template``), greedy decoding by default
  (``--temperature T`` samples, with ``--top-p`` and ``--seed``), generation stopped at EOS and the
  end-of-turn token (``redone.eval.generate.stop_token_ids``); tokens printed as they come
  (transformers ``TextStreamer``).
- Free chat keeps the conversation (multi-turn history); when the history outgrows the model's
  context the oldest turns are dropped, and it says so. ``--system TEXT`` sets a system turn.
- ``--task T``: each message is one item of that task, wrapped in the task's prompt exactly as training
  and ``redone predict`` wrap it (``prompt_messages`` after ``clip_item``; the SNS tasks are single-turn,
  so no history), and the parsed answer (``redone.predict.parse_output``) is printed after the streamed
  text as ``parsed: <JSON>  (parse_ok: true|false)``. A message is the note itself for a one-field task,
  ``field: value`` lines (a line without a known ``field:`` continues the previous field), or one JSON
  object line; in task mode a message ends with an empty line, so a pasted multi-line note stays one
  message.
- Commands: ``/reset`` (forget the history), ``/exit`` or ``/quit`` (also Ctrl-D), ``/help``. Ctrl-C
  during an answer stops that answer; at the prompt it quits.

Errors (``RedoneError``, one line): an unknown task, a bad flag value, the model loader's. A message
that misses a task field or does not fit the context is reported in the chat and the chat goes on.
"""

from __future__ import annotations

import argparse
import json
import sys

from redone.errors import RedoneError

PROMPT = "you> "
MORE = "...> "
REPLY = "model> "
DEFAULT_MAX_NEW_TOKENS = 512  # free chat; a task uses its own budget
HELP = "commands: /reset (forget the conversation), /exit (or Ctrl-D), /help"


class Chat:
    """A loaded model, its tokenizer, decoding settings and the conversation so far."""

    def __init__(self, model, tokenizer, *, task=None, max_new_tokens: int | None = None,
                 temperature: float = 0.0, top_p: float = 1.0, system: str | None = None,
                 prompt_style: str = "redone", max_prompt_chars: int | None = None, out=None):
        from redone.eval.generate import stop_token_ids

        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.budget = max_new_tokens or (task.max_new_tokens if task is not None else DEFAULT_MAX_NEW_TOKENS)
        self.temperature, self.top_p = temperature, top_p
        self.system = system
        self.prompt_style, self.max_prompt_chars = prompt_style, max_prompt_chars
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.context = getattr(model.config, "max_position_embeddings", None)
        self.out = out or sys.stdout
        self.history: list[dict] = []

    # ------------------------------------------------------------ one turn

    def reset(self) -> None:
        self.history = []

    def say(self, text: str) -> str | None:
        """Answer one message (streamed to ``out``); returns the answer, or None if it could not run."""
        if self.task is None:
            turns = self._fit(self.history + [{"role": "user", "content": text}])
            if turns is None:
                return None
            answer = self.generate(self._system() + turns)
            if answer is not None:
                self.history = turns + [{"role": "assistant", "content": answer}]
            return answer
        from redone.predict import parse_output

        item = self.task_item(text)
        if item is None:
            return None
        answer = self.generate(self.task_messages(item))
        if answer is not None:
            parsed, ok = parse_output(self.task, answer, item)
            self.write(f"parsed: {json.dumps(parsed, ensure_ascii=False)}  (parse_ok: {str(ok).lower()})\n")
        return answer

    def task_messages(self, item: dict) -> list[dict]:
        from redone.sns.tasks import clip_item, prompt_messages

        return prompt_messages(self.task, clip_item(self.task, item, self.max_prompt_chars), self.prompt_style)

    def task_item(self, text: str) -> dict | None:
        """The task item a message stands for (a note, ``field: value`` lines, or a JSON object)."""
        fields = self.task.fields
        text = text.strip()
        if text.startswith("{"):
            try:
                item = json.loads(text)
            except json.JSONDecodeError as err:
                self.write(f"[not a JSON object: {err.msg}]\n")
                return None
            if not isinstance(item, dict):
                self.write("[a JSON message must be an object of task fields]\n")
                return None
        elif len(fields) == 1:
            item = {fields[0]: text}
        else:
            item = field_lines(text, fields)
        missing = [f for f in fields if not isinstance(item.get(f), str)]
        if missing:
            self.write(f"[task {self.task.name} reads {', '.join(fields)}; missing or not text: "
                       f"{', '.join(missing)}. Write `{missing[0]}: ...` lines, then an empty line]\n")
            return None
        return item

    def _system(self) -> list[dict]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def _fit(self, turns: list[dict]) -> list[dict] | None:
        """The turns with the oldest exchanges dropped until prompt + budget fit the context (None: the
        last message alone does not fit)."""
        from redone.eval.generate import render_prompt

        dropped = 0
        while True:
            prompt = render_prompt(self.tokenizer, self._system() + turns)
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if not self.context or len(ids) + self.budget <= self.context:
                break
            if len(turns) <= 1:
                self.write(f"[message too long: {len(ids)} prompt tokens + {self.budget} new tokens exceed the "
                           f"model's context of {self.context}]\n")
                return None
            turns, dropped = turns[2:], dropped + 1  # a user turn and its answer
        if dropped:
            self.write(f"[dropped the {dropped} oldest exchange(s) to fit the model's context]\n")
        return turns

    def generate(self, messages: list[dict]) -> str | None:
        """Stream the answer to ``messages``; returns its text (None when interrupted with Ctrl-C)."""
        import torch
        from transformers import GenerationConfig

        from redone.eval.generate import render_prompt

        prompt = self.tokenizer(render_prompt(self.tokenizer, messages), add_special_tokens=False,
                                return_tensors="pt")
        width = prompt["input_ids"].shape[1]
        budget = self.budget if not self.context else max(1, min(self.budget, self.context - width))
        sample = self.temperature > 0
        config = GenerationConfig(do_sample=sample, max_new_tokens=budget, eos_token_id=self.stop_ids,
                                  pad_token_id=self.pad_id, **({"temperature": self.temperature,
                                                               "top_p": self.top_p} if sample else {}))
        self.write(REPLY)
        streamer = make_streamer(self.tokenizer, self.write)
        try:
            with torch.inference_mode():
                out = self.model.generate(**{k: v.to(self.model.device) for k, v in prompt.items()},
                                          generation_config=config, streamer=streamer)
        except KeyboardInterrupt:
            self.write("\n[answer interrupted]\n")
            return None
        new = out[0, width:].tolist()
        stop = next((i for i, t in enumerate(new) if t in self.stop_ids), len(new))
        return self.tokenizer.decode(new[:stop], skip_special_tokens=True)

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


def make_streamer(tokenizer, write):
    """A TextStreamer (prompt skipped, special tokens hidden) that writes through ``write``."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False):
            write(text + ("\n" if stream_end else ""))

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def field_lines(text: str, fields) -> dict:
    """``field: value`` lines -> {field: value}; a line without a known ``field:`` continues the last field."""
    item: dict[str, str] = {}
    current = None
    for line in text.split("\n"):
        name, sep, rest = line.partition(":")
        if sep and name.strip() in fields:
            current = name.strip()
            item[current] = rest.strip()
        elif current is not None:
            item[current] += "\n" + line
    return {k: v.strip() for k, v in item.items()}


# ---------------------------------------------------------------- the loop


def read_message(task_mode: bool, read=input) -> str | None:
    """One message from the terminal (None on Ctrl-D). In task mode lines are gathered up to an empty
    line, except a /command or a JSON line, which stand alone."""
    try:
        first = read(PROMPT)
    except EOFError:
        return None
    if not task_mode or not first.strip() or first.lstrip().startswith(("/", "{")):
        return first
    lines = [first]
    while True:
        try:
            line = read(MORE)
        except EOFError:
            break
        if not line.strip():
            break
        lines.append(line)
    return "\n".join(lines)


def chat_loop(chat: Chat, read=input) -> int:
    task_mode = chat.task is not None
    if task_mode:
        fields = chat.task.fields
        how = "the note itself" if len(fields) == 1 else " and ".join(f"`{f}: ...`" for f in fields) + " lines"
        chat.write(f"[task {chat.task.name}: type {how} (or one JSON object), then an empty line; {HELP}]\n")
    else:
        chat.write(f"[chat with the model's template; {HELP}]\n")
    while True:
        message = read_message(task_mode, read)
        if message is None:  # Ctrl-D
            chat.write("\n")
            return 0
        command = message.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            chat.reset()
            chat.write("[history cleared]\n")
        elif command == "/help":
            chat.write(f"[{HELP}]\n")
        elif command.startswith("/") and " " not in command:
            chat.write(f"[unknown command {command}; {HELP}]\n")
        else:
            chat.say(message)


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model dir (e.g. runs/demo/dpo/final), hub id or built-in name")
    parser.add_argument("--task", default=None, help="wrap each message in this task's prompt and print the parsed answer")
    parser.add_argument("--task-file", default=None, help="a YAML task definition to register first")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help=f"answer budget (default: the task's; free chat {DEFAULT_MAX_NEW_TOKENS})")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; > 0: sample")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--system", default=None, help="system turn of a free chat")
    parser.add_argument("--prompt-style", default=None, choices=("redone", "official"),
                        help="task prompts: default the model's training style")
    parser.add_argument("--max-prompt-chars", type=int, default=None,
                        help="clip long note fields like training (default: the model's; 0: off)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")


def add_chat_parser(subparsers) -> None:
    """``redone chat ...`` on the CLI's subparsers."""
    parser = subparsers.add_parser("chat", help="chat with a model in the terminal (streamed; --task for task prompts)")
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    import torch

    from redone.model import load_model, load_tokenizer, resolve_model
    from redone.predict import prompt_settings, resolve_task

    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise RedoneError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise RedoneError("--temperature must be >= 0 and --top-p in (0, 1]")
    if args.task and args.system:
        raise RedoneError("--system is for free chat; a --task brings its own system turn")
    task = resolve_task(args.task or "", args.task_file) if (args.task or args.task_file) else None
    if isinstance(task, str):  # "TransBench": a direction per item
        raise RedoneError("chat: pick a direction, --task TransBench-zh2en or --task TransBench-en2zh")
    path = resolve_model(args.model)
    style, chars, notes = prompt_settings(path, args.prompt_style, args.max_prompt_chars)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weight-loading bar would land in the conversation
    torch.manual_seed(args.seed)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(path, dtype=dtype).to(device).eval()
    chat = Chat(model, load_tokenizer(path), task=task, max_new_tokens=args.max_new_tokens,
                temperature=args.temperature, top_p=args.top_p, system=args.system, prompt_style=style,
                max_prompt_chars=chars)
    if task is not None:
        for note in notes:
            chat.write(f"[{note}]\n")
    return chat_loop(chat)


if __name__ == "__main__":
    from redone.predict import standalone

    sys.exit(standalone(None, "redone chat", add_arguments, run))
