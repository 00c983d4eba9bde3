"""`redone mix search`: the command line of the mixture search (wired into redone/cli.py).

    redone mix search --stage cpt|sft --config C [--proxies N] [--proxy-model tiny|PATH] [--tokens T]
                      [--jobs J] [--out DIR] [key=value ...]
    redone mix verify --search DIR [--labels chosen config ...] [--tokens T] [--set key=value]

``add_parser(subparsers)`` adds ``mix`` to the ``redone`` parser; ``run(args)`` runs it and returns the
exit code. Errors are ``RedoneError`` subclasses, printed by the caller as one line (exit 1).
Also runnable alone: ``python -m redone.mix.cli search ...``.
"""

from __future__ import annotations

import argparse
import sys

from redone.mix import search as search_mod
from redone.mix.verify import DEFAULT_LABELS


def add_parser(subparsers) -> argparse.ArgumentParser:
    mix = subparsers.add_parser("mix", help="data-mixture search by regression over proxy runs (RegMix)")
    mix_sub = mix.add_subparsers(dest="mix_cmd", required=True)
    p = mix_sub.add_parser(
        "search", help="train small proxies on Dirichlet-sampled mixtures, regress held-out loss on the shares, "
                       "write the best predicted mixture as a config")
    d = search_mod.SearchOptions
    p.add_argument("--stage", required=True, choices=("cpt", "sft"))
    p.add_argument("--config", required=True)
    p.add_argument("--proxies", type=int, default=d.proxies,
                   help=f"proxy runs incl. the natural and the config mixture (default {d.proxies})")
    p.add_argument("--proxy-model", default=d.proxy_model,
                   help="tiny (random model of the base model's architecture and tokenizer) or a model dir/id")
    p.add_argument("--proxy-layers", type=int, default=d.proxy_layers, help="tiny proxy: decoder layers")
    p.add_argument("--proxy-hidden", type=int, default=d.proxy_hidden, help="tiny proxy: hidden size")
    p.add_argument("--proxy-lr", type=float, default=None,
                   help=f"proxy learning rate (default {search_mod.DEFAULT_TINY_LR:g} for tiny, else the config's)")
    p.add_argument("--proxy-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for the proxies only (repeatable)")
    p.add_argument("--tokens", type=int, default=d.tokens, help=f"training tokens per proxy (default {d.tokens:,})")
    p.add_argument("--holdout", type=int, default=None,
                   help=f"held-out items per component (default: data.eval_holdout, or {search_mod.DEFAULT_HOLDOUT})")
    p.add_argument("--jobs", type=int, default=None, help="proxies in parallel (default: cores // threads)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads per proxy (default 1)")
    p.add_argument("--over", choices=("sources", "tasks"), default=d.over,
                   help="weigh config sources, or (sft) every SNS-Bench task file on its own")
    p.add_argument("--concentration", default=d.concentration,
                   help="Dirichlet alpha = c * natural share; c or lo:hi drawn log-uniformly (default %(default)s)")
    p.add_argument("--bounds", action="append", default=[], metavar="NAME=MIN:MAX",
                   help="share bounds of one unit (repeatable), e.g. general_chat=0.05:0.3")
    p.add_argument("--target", action="append", default=[], metavar="NAME",
                   help="target source/task (repeatable; default: sources with 'sns' in name or path)")
    p.add_argument("--general", action="append", default=[], metavar="NAME",
                   help="general source/task for the constraint (repeatable; default: every non-target source)")
    p.add_argument("--max-general-rise", type=float, default=d.max_general_rise,
                   help="percent the general held-out loss may rise over the natural mixture (default 3)")
    p.add_argument("--top-k", type=int, default=d.top_k, help="simulated mixtures averaged (default 100)")
    p.add_argument("--simulations", type=int, default=d.simulations, help="simulated mixtures (default 100000)")
    p.add_argument("--regressor", default=d.regressor, choices=("auto", "ridge", "gbm", "lightgbm"),
                   help="auto: the best cross-validated of ridge and gbm/lightgbm")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-validate", dest="validate", action="store_false",
                   help="skip the proxy run on the chosen mixture")
    p.add_argument("--out", default=None, help="output dir (default runs/mix/<config stem>-<stage>)")
    p.add_argument("--cache", default=None, help="proxy cache dir (default $REDONE_HOME/mix_cache)")
    p.add_argument("--keep-proxy-weights", action="store_true", help="keep each proxy's final weights")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the searched config")
    p.set_defaults(func=run)

    v = mix_sub.add_parser("verify", help="train the config's own model on a few searched mixtures (same token "
                                          "budget) and compare with the proxies")
    v.add_argument("--search", required=True, help="the search's --out dir (holds search.json)")
    v.add_argument("--labels", nargs="+", default=list(DEFAULT_LABELS),
                   help="mixtures to train; 'spread' = the sampled candidates with the lowest, median and "
                        "highest proxy objective (default: %(default)s)")
    v.add_argument("--tokens", type=int, default=None, help="tokens per run (default: the config's own max_steps)")
    v.add_argument("--jobs", type=int, default=1)
    v.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores // jobs)")
    v.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for these runs (repeatable)")
    v.add_argument("--cache", default=None, help="run cache (default: the search's proxy cache)")
    v.set_defaults(func=run_verify_command)
    return mix


def run_verify_command(args) -> int:
    from redone.mix.verify import VerifyOptions, run_verify

    run_verify(VerifyOptions(search=args.search, labels=list(args.labels), tokens=args.tokens, jobs=args.jobs,
                             threads=args.threads, extra=list(args.extra), cache=args.cache))
    return 0


def options_from_args(args) -> search_mod.SearchOptions:
    return search_mod.SearchOptions(
        stage=args.stage, config=args.config, overrides=list(args.overrides), proxies=args.proxies,
        proxy_model=args.proxy_model, proxy_layers=args.proxy_layers, proxy_hidden=args.proxy_hidden,
        proxy_lr=args.proxy_lr, proxy_set=list(args.proxy_set), tokens=args.tokens, holdout=args.holdout,
        jobs=args.jobs, threads=args.threads, over=args.over, concentration=args.concentration,
        bounds=list(args.bounds), target=list(args.target), general=list(args.general),
        max_general_rise=args.max_general_rise, top_k=args.top_k, simulations=args.simulations,
        regressor=args.regressor, seed=args.seed, validate=args.validate, out=args.out, cache=args.cache,
        keep_proxy_weights=args.keep_proxy_weights)


def run(args) -> int:
    search_mod.run_search(options_from_args(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    import os

    from redone.errors import report_errors

    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("WANDB_MODE", "offline"),
                       ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    parser = argparse.ArgumentParser(prog="redone")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["mix", *(sys.argv[1:] if argv is None else argv)])
    return report_errors(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
