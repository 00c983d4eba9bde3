"""Serving a trained model through an existing OpenAI-compatible server, not one of redone's own.

    redone serve --model DIR [--host 127.0.0.1] [--port 8000] [--dtype auto] [--device auto]

is a thin wrapper that runs ``transformers serve DIR ...`` (FastAPI + uvicorn, in transformers) with the
model pinned, so ``POST /v1/chat/completions`` with ``"model": "<DIR as given>"`` answers with the dir's
chat template. ``serve_command`` builds that command line (tests start the server with it). On a CUDA
machine, vLLM's ``vllm serve DIR`` is the faster server for the same requests (docs/USING_MODELS.md).

Errors (``RedoneError``): a model that is not a local dir with config.json and safetensors weights; the
serving packages (fastapi, uvicorn, openai: ``pip install 'redone[serve]'``) missing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from redone.errors import RedoneError


def serve_model_dir(model: str | Path) -> Path:
    from redone.model import resolve_model

    path = Path(resolve_model(str(model)))
    if not path.is_dir() or not any(path.glob("*.safetensors")):
        raise RedoneError(f"serve: --model {model} is not a local model dir with *.safetensors weights")
    return path


def check_serve_available() -> None:
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        raise RedoneError("serve: `transformers serve` needs fastapi, uvicorn and openai: "
                          "pip install 'redone[serve]'")


def serve_command(model: str | Path, *, host: str = "127.0.0.1", port: int = 8000, dtype: str = "auto",
                  device: str = "auto") -> list[str]:
    """The ``transformers serve`` command line serving ``model`` (pinned: the only model it loads)."""
    model_dir = serve_model_dir(model)
    return [sys.executable, "-m", "transformers.cli.transformers", "serve", str(model_dir),
            "--host", host, "--port", str(port), "--dtype", dtype, "--device", device]


def add_serve_parser(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="OpenAI-compatible server for a model dir (transformers serve)")
    serve.add_argument("--model", required=True, help="model dir (e.g. runs/demo/dpo/final) or built-in name")
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--dtype", default="auto", help="auto (from the weights), float32, bfloat16, float16")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda:0, ...")
    serve.set_defaults(func=run_serve)


def run_serve(args) -> int:
    check_serve_available()
    command = serve_command(args.model, host=args.host, port=args.port, dtype=args.dtype, device=args.device)
    print(f"[redone] {' '.join(command[1:])}", flush=True)
    print(f"[redone] chat completions: POST http://{args.host}:{args.port}/v1/chat/completions "
          f"with \"model\": \"{command[4]}\"", flush=True)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130
