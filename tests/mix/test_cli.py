"""`redone mix` argparse wiring: flags reach SearchOptions, and a user error exits 1 with one line."""

import argparse

from redone.mix import cli
from redone.mix.search import SearchOptions


def parse(argv):
    parser = argparse.ArgumentParser(prog="redone")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_flags_reach_the_search_options():
    args = parse(["mix", "search", "--stage", "sft", "--config", "c.yaml", "--proxies", "8", "--tokens", "1000",
                  "--bounds", "sns=0.5:0.9", "--bounds", "general_chat=0.05:", "--target", "sns", "--no-validate",
                  "--proxy-set", "optim.lr=1e-3", "--max-general-rise", "5", "train.seed=3"])
    assert args.func is cli.run
    opts = cli.options_from_args(args)
    assert isinstance(opts, SearchOptions)
    assert (opts.proxies, opts.tokens, opts.validate, opts.max_general_rise) == (8, 1000, False, 5.0)
    assert opts.bounds == ["sns=0.5:0.9", "general_chat=0.05:"] and opts.target == ["sns"]
    assert opts.proxy_set == ["optim.lr=1e-3"] and opts.overrides == ["train.seed=3"]
    defaults = cli.options_from_args(parse(["mix", "search", "--stage", "cpt", "--config", "c.yaml"]))
    assert defaults == SearchOptions(stage="cpt", config="c.yaml")


def test_verify_flags():
    args = parse(["mix", "verify", "--search", "runs/mix/x", "--labels", "chosen", "config", "--set",
                  "train.precision=bf16"])
    assert args.func is cli.run_verify_command
    assert args.labels == ["chosen", "config"] and args.extra == ["train.precision=bf16"]


def test_a_user_error_is_one_line_and_exit_1(tmp_path, capsys):
    code = cli.main(["search", "--stage", "sft", "--config", str(tmp_path / "missing.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == [f"redone: error: config file {tmp_path / 'missing.yaml'} not found"]
