"""`redone` command line: a thin layer over the stage, config, model and eval modules.

    redone train --stage cpt|sft|dpo --config FILE [key=value ...]
    redone config show --stage cpt --config FILE [key=value ...]
    redone data prepare --stage cpt|sft|dpo --config FILE [--report FILE] [key=value ...]
    redone model prepare [--name smollm2-135m-instruct] | redone model tiny --out DIR
    redone model merge-lora --adapter DIR --out DIR [--base MODEL]
    redone model push DIR --repo ID [--private] [--dry-run]
    redone export gguf --model DIR --out model.gguf [--dtype f16|bf16|f32] [--force]
    redone serve --model DIR [--host 127.0.0.1] [--port 8000]
    redone predict --model DIR --task TASK --input FILE --out FILE [--field F=C ...] [--strict] [--limit N]
    redone chat --model DIR [--task TASK]
    redone eval --model DIR_OR_ID [--bench ...] [--limit N] [--out FILE] | redone eval compare A.json B.json

User errors (RedoneError) print one line to stderr and exit 1; usage errors exit 2; an OSError that
no check caught (a path the user gave) prints one line naming the file and exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from redone.allocator import tune_malloc
from redone.errors import RedoneError, report_errors
from redone.stages import STAGE_NAMES


def _offline_defaults() -> None:
    # Offline unless the user says otherwise: an unknown hub id would otherwise retry for ~50 s.
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("WANDB_MODE", "offline"),
                       ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)


def cmd_train(args) -> int:
    from redone.stages import load_config, run_stage

    final = run_stage(load_config(args.stage, args.config, args.overrides))
    if final is None:
        print(f"[redone] {args.stage} stopped at train.stop_after_steps; rerun to resume")
    else:
        print(f"[redone] {args.stage} finished: {final}")
    return 0


def cmd_config_show(args) -> int:
    from redone.config import config_to_yaml
    from redone.stages import load_config

    print(config_to_yaml(load_config(args.stage, args.config, args.overrides)), end="")
    return 0


def cmd_pipeline(args) -> int:
    from redone.pipeline import dry_run, run_pipeline

    if args.dry_run:
        dry_run(args.config, args.overrides)
        return 0
    record = run_pipeline(args.config, args.overrides, start=args.start, only=args.only, ablations=args.ablations)
    stages = record.get("stages") or {}
    last = next(reversed(stages), None)
    if last and stages[last].get("final") and stages[last].get("status") != "stopped":
        from redone.predict import next_steps

        print(next_steps(stages[last]["final"]))
    return 0


def cmd_model(args) -> int:
    from redone.model import make_tiny_model, resolve_model

    if args.model_cmd == "prepare":
        print(resolve_model(args.name))
    elif args.model_cmd == "tiny":
        print(make_tiny_model(args.out, layers=args.layers, hidden=args.hidden))
    return 0


def cmd_merge_lora(args) -> int:
    from redone.model import merge_lora_adapter

    merge_lora_adapter(args.adapter, args.out, base=args.base, trust_remote_code=args.trust_remote_code)
    print(f"[redone] merged {args.adapter} into {args.out}")
    return 0


def cmd_data_prepare(args) -> int:
    from redone.data.report import format_stage_report, report_path, write_report
    from redone.stages import load_config, prepare_data

    config = load_config(args.stage, args.config, args.overrides)
    report = prepare_data(args.stage, config)
    path = report_path(config, args.report)
    write_report(path, report)
    print(format_stage_report(report))
    print(f"[redone] report written to {path}")
    return 0


def cmd_eval(args) -> int:
    from redone.eval.cli_eval import run_eval_command

    return run_eval_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="redone", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one stage")
    train.add_argument("--stage", required=True, choices=STAGE_NAMES)
    train.add_argument("--config", required=True)
    train.add_argument("overrides", nargs="*", help="key=value config overrides")
    train.set_defaults(func=cmd_train)

    config = sub.add_parser("config", help="inspect configs")
    config_sub = config.add_subparsers(dest="config_cmd", required=True)
    show = config_sub.add_parser("show", help="print the resolved config")
    show.add_argument("--stage", required=True, choices=STAGE_NAMES)
    show.add_argument("--config", default=None)
    show.add_argument("overrides", nargs="*")
    show.set_defaults(func=cmd_config_show)

    pipeline = sub.add_parser("pipeline", help="run cpt -> sft -> dpo -> eval, chaining each stage's final/")
    pipeline.add_argument("--config", required=True)
    pipeline.add_argument("--from", dest="start", default=None, help="start at this stage (earlier ones must be done)")
    pipeline.add_argument("--only", default=None, help="run just this stage (no eval)")
    pipeline.add_argument("--dry-run", action="store_true", help="print every stage's resolved config and stop")
    pipeline.add_argument("--ablations", action="store_true",
                          help="also train and evaluate the ablation rows (SFT only, CPT->SFT, SFT->DPO, ...; "
                               "see the ablations: section), with bootstrap intervals")
    pipeline.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sft.optim.lr=1e-4")
    pipeline.set_defaults(func=cmd_pipeline)

    data = sub.add_parser("data", help="data utilities")
    data_sub = data.add_subparsers(dest="data_cmd", required=True)
    data_prepare = data_sub.add_parser(
        "prepare", help="run a stage's data path (curate, tokenize, cache) and report what it would train on")
    data_prepare.add_argument("--stage", required=True, choices=STAGE_NAMES)
    data_prepare.add_argument("--config", required=True)
    data_prepare.add_argument("--report", default=None,
                              help="JSON report path (default: <output_dir>.data_report.json, beside output_dir)")
    data_prepare.add_argument("overrides", nargs="*", help="key=value config overrides")
    data_prepare.set_defaults(func=cmd_data_prepare)

    model = sub.add_parser("model", help="model utilities")
    model_sub = model.add_subparsers(dest="model_cmd", required=True)
    prepare = model_sub.add_parser("prepare", help="convert/cache a built-in model, print its dir")
    prepare.add_argument("--name", default="smollm2-135m-instruct")
    prepare.set_defaults(func=cmd_model)
    tiny = model_sub.add_parser("tiny", help="write a tiny random model (tests, benchmarks)")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--hidden", type=int, default=64)
    tiny.set_defaults(func=cmd_model)
    merge = model_sub.add_parser("merge-lora", help="merge a LoRA adapter (output_dir/adapter) into its base")
    merge.add_argument("--adapter", required=True, help="peft adapter dir")
    merge.add_argument("--out", required=True, help="new dir for the merged model (must not exist or be empty)")
    merge.add_argument("--base", default=None, help="base model (default: the adapter's base_model_name_or_path)")
    merge.add_argument("--trust-remote-code", action="store_true")
    merge.set_defaults(func=cmd_merge_lora)

    from redone.export import add_export_parser
    from redone.hub import add_model_parsers
    from redone.serve import add_serve_parser

    add_model_parsers(model_sub)  # redone model push DIR --repo ID [--private] [--dry-run]
    add_export_parser(sub)  # redone export gguf --model DIR --out F [--dtype f16|bf16|f32] [--force]
    add_serve_parser(sub)  # redone serve --model DIR [--host] [--port] [--dtype] [--device]
    from redone.chat import add_chat_parser
    from redone.predict import add_predict_parser

    add_predict_parser(sub)  # redone predict --model DIR --task T --input F --out F [--field F=C ...] [--strict]
    add_chat_parser(sub)  # redone chat --model DIR [--task T] [--max-new-tokens N] [--temperature T]
    from redone.eval.cli_eval import add_eval_parser

    add_eval_parser(sub, cmd_eval)  # `redone eval ...` and `redone eval compare|table ...`
    from redone.mix.cli import add_parser as add_mix_parser

    add_mix_parser(sub)  # redone mix search --stage cpt|sft --config C [--proxies N] ... / redone mix verify
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. User errors print ONE line (``redone: error: ...``) to stderr and return 1."""
    _offline_defaults()
    tune_malloc()  # before the first large tensor: eval and data prep allocate too (redone/allocator.py)
    args = build_parser().parse_args(argv)
    return report_errors(run_command, args)


def run_command(args) -> int:
    # --config is the user's path into every command: check it here, once, so a directory, a missing
    # file or non-UTF-8 bytes are one line naming the file (and line), whichever command reads it.
    config_path = getattr(args, "config", None)
    if config_path is not None:
        path = Path(config_path)
        if not path.exists():
            raise RedoneError(f"--config: {path} not found")
        if path.is_dir():
            raise RedoneError(f"--config: {path} is a directory, not a YAML file")
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            line = raw[: err.start].count(b"\n") + 1
            raise RedoneError(f"--config: {path}:{line}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
