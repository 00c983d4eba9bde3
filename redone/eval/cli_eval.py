"""Arguments of `redone eval` and what the command does (kept here so cli.py stays thin).

    redone eval --model DIR_OR_ID [--config FILE] [--bench sns-bench] [--bench sns-transbench]
                [--bench general-ppl] [--data PATH] [--limit N [--subset first|spread]] [--out FILE]
                [--prompt-style redone|official]
                [--bug-compatible] [--batch-size N] [--max-new-tokens-cap N] [--skill-free] ...
    redone eval compare A.json B.json ... [--labels base cpt ...] [--out TABLE.md]
    redone eval table RESULT.json

Imports stay light at module level: building the parser must not import torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# CLI flag -> EvalOptions field, for flags whose names differ or that need converting.
_FIELD_OF_FLAG = {"bench": "benches", "data": "data_dir", "no_progress": "progress"}
_NOT_OPTIONS = {"command", "func", "eval_cmd", "model", "config", "threads"}


def add_eval_parser(sub, func) -> argparse.ArgumentParser:
    """Add the `eval` subcommand (and its `compare` / `table` actions) to ``sub``.

    Defaults are None here so that only flags given on the command line override a --config file's
    ``eval:`` section; the real defaults live in one place, ``redone.config.schema.EvalConfig``.
    """
    from redone.config.schema import BACKENDS, BENCHES, DTYPES, SCORING_MODES, SUBSETS

    p = sub.add_parser("eval", help="evaluate a model: SNS-Bench, SNS-TransBench, general perplexity",
                       description="Evaluate a model; `redone eval compare A.json B.json` prints a stage table.")
    p.add_argument("--model", help="model dir, hub id or built-in name (smollm2-135m-instruct)")
    p.add_argument("--config", help="YAML file whose `eval:` section gives the options (flags override it)")
    p.add_argument("--bench", action="append", choices=BENCHES,
                   help="repeatable; default: sns-bench, sns-transbench, general-ppl")
    p.add_argument("--data", help="data root holding sns_bench/, sns_transbench/, general/, preference/")
    p.add_argument("--split", help="data split (default test)")
    p.add_argument("--file", action="append", dest="files", help="SNS-Bench file(s) to run (default all 12)")
    p.add_argument("--limit", type=int, help="N items per SNS-Bench file and per TransBench direction")
    p.add_argument("--subset", choices=SUBSETS,
                   help="with --limit: the first N items (default) or N evenly spaced ones")
    p.add_argument("--out", help="result JSON (predictions JSONL and .md table are written next to it)")
    p.add_argument("--label", help="column name in compare tables (default: the model folder name)")
    p.add_argument("--prompt-style", choices=["redone", "official"], help="default redone")
    p.add_argument("--max-prompt-chars", type=int, help="clip long note fields like SFT's data.max_prompt_chars")
    p.add_argument("--scoring-mode", choices=SCORING_MODES,
                   help="fixed (default: our documented corrections) or official (the OpenCompass scorer)")
    p.add_argument("--batch-size", type=int, help="default 8")
    p.add_argument("--max-new-tokens-cap", type=int, help="cap on every task's token budget (default 256; 0: none)")
    p.add_argument("--skill-free", action="store_true", default=None, help="score the skill-free baseline (no model)")
    p.add_argument("--embedder", choices=["auto", "none"], help="QueryGen embedding model (default auto)")
    p.add_argument("--dtype", choices=DTYPES, help="default float32")
    p.add_argument("--backend", choices=BACKENDS, help="default hf")
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument("--attn-implementation", help="auto (default), sdpa, eager, flash_attention_2")
    p.add_argument("--ppl-max-tokens", type=int, help="scored tokens per perplexity text (default 16384)")
    p.add_argument("--ppl-context", type=int, help="perplexity window in tokens (default 1024)")
    p.add_argument("--pref-pairs", type=int,
                   help="bench preference: HH-RLHF test pairs and SNS test pairs ranked (default 256 each)")
    p.add_argument("--lm-eval-task", action="append", dest="lm_eval_tasks", help="lm-eval task (bench lm-eval)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", default=None)
    p.set_defaults(func=func)

    actions = p.add_subparsers(dest="eval_cmd")
    compare = actions.add_parser("compare", help="stage-by-stage table of result JSONs with deltas")
    compare.add_argument("results", nargs="+")
    compare.add_argument("--labels", nargs="+")
    compare.add_argument("--out", dest="table_out", help="also write the table to this file")
    compare.set_defaults(func=func)
    table = actions.add_parser("table", help="print the tables of one result JSON")
    table.add_argument("result")
    table.set_defaults(func=func)
    return p


def options_from_args(args):
    """The EvalConfig of the --config file's `eval:` section, overridden by the flags given."""
    from redone.eval.runner import eval_config

    values = dict(_config_section(args.config)) if args.config else {}
    for name, value in vars(args).items():
        if name in _NOT_OPTIONS or value is None:
            continue
        if name == "no_progress":
            value = not value
        elif name == "max_new_tokens_cap":
            value = value or None  # 0 means "no cap"
        values[_FIELD_OF_FLAG.get(name, name)] = value
    return eval_config(values)


def _config_section(path: str) -> dict:
    import yaml

    from redone.errors import RedoneError

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise RedoneError(f"{path}: cannot read eval config ({err})") from None
    section = data.get("eval") if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise RedoneError(f"{path}: no `eval:` section (a mapping of eval options)")
    return section


def run_eval_command(args) -> int:
    from redone.errors import RedoneError

    if args.eval_cmd == "compare":
        return _compare(args)
    if args.eval_cmd == "table":
        from redone.eval.report_table import result_markdown
        from redone.eval.runner import load_result

        print(result_markdown(load_result(args.result)), end="")
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = options_from_args(args)
    if not args.model and not options.skill_free:
        raise RedoneError("eval: pass --model DIR_OR_ID, or --skill-free for the baseline without a model")
    from redone.eval.report_table import result_markdown
    from redone.eval.runner import run_eval

    result = run_eval(args.model, options)
    print(result_markdown(result), end="")
    if options.out:
        print(f"\n[redone] wrote {options.out} and {Path(options.out).with_suffix('.md')}")
    return 0


def _compare(args) -> int:
    from redone.eval.report_table import compare_markdown
    from redone.eval.runner import load_result

    table = compare_markdown([load_result(p) for p in args.results], args.labels)
    print(table, end="")
    if args.table_out:
        Path(args.table_out).write_text(table, encoding="utf-8")
    return 0
