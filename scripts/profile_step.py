"""Profile redone's training steps (torch.profiler): the top ops by self CPU time, as a text table.

Runs the redone side of a benchmark workload (scripts/bench_{cpt,sft,dpo}.py: same model, data, batch
geometry and settings as `make bench`) in this process, skips the first (warm-up) step and records the
next ``--active`` optimizer steps. Prints the table that docs/BENCHMARKS.md quotes.

    python scripts/profile_step.py --workload sft --precision bf16
    python scripts/profile_step.py --workload dpo --precision bf16 --rows 20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common  # noqa: E402
import bench_cpt  # noqa: E402
import bench_dpo  # noqa: E402
import bench_sft  # noqa: E402

WORKLOADS = {"cpt": bench_cpt, "sft": bench_sft, "dpo": bench_dpo}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--active", type=int, default=2, help="profiled optimizer steps after the warm-up step")
    parser.add_argument("--rows", type=int, default=25, help="ops in the table")
    parser.add_argument("--scratch", default=str(common.SCRATCH))
    return parser.parse_args(argv)


def workload_args(module, opts) -> argparse.Namespace:
    """The workload's own defaults (its FULL sizes), as `make bench` runs it."""
    parser = common.common_parser("", **module.FULL)
    parser.add_argument("--implementations", default="redone")
    module.add_arguments(parser)
    args = parser.parse_args(["--model", opts.model, "--threads", str(opts.threads), "--scratch", opts.scratch,
                              "--steps", str(1 + opts.active), "--precisions", opts.precision])
    (Path(args.scratch) / "runs").mkdir(parents=True, exist_ok=True)
    return args


def main(argv=None) -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    from redone.train import loop

    opts = parse_args(argv)
    module = WORKLOADS[opts.workload]
    args = workload_args(module, opts)
    common.set_threads(args.threads)
    model_path = common.resolve_bench_model(args.model, args.scratch)
    module.prepare(args, model_path)
    prof = profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=1, warmup=0, active=opts.active))
    record_step = loop.record_step

    def stepping_record_step(*a, **k):  # once per optimizer step, right after it
        record_step(*a, **k)
        prof.step()

    loop.record_step = stepping_record_step
    with prof:
        side = {"cpt": lambda: module.run_redone(args, opts.precision, model_path, cross_document=False),
                "sft": lambda: module.run_redone(args, opts.precision, model_path, packing=True),
                "dpo": lambda: module.run_redone(args, opts.precision, model_path, share_prompt=None)}
        side[opts.workload]()
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    print(f"### {opts.workload}, {opts.precision}, {opts.model}, {args.threads} threads, torch {torch.__version__}: "
          f"{opts.active} steps after the warm-up, {module.describe(args)}\n")
    print("| op | self CPU ms | share | calls |")
    print("|---|---|---|---|")
    for event in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:opts.rows]:
        print(f"| `{event.key}` | {event.self_cpu_time_total / 1e3:,.0f} | "
              f"{100 * event.self_cpu_time_total / total:.1f}% | {event.count} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
