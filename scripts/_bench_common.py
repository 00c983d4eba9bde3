"""Shared helpers of the benchmark scripts (bench_cpt.py, bench_sft.py).

- Every run (one side of a comparison) is a fresh subprocess of the calling script in ``--worker`` mode:
  its peak RSS is that process's own ``ru_maxrss`` taken from ``os.wait4`` (per child, so one run's peak
  never leaks into the next one's, which ``RUSAGE_CHILDREN`` would do), and one side's allocator state
  never slows or helps the other.
- A ``StepClock`` takes a timestamp after every optimizer step (redone: after the loop's ``record_step``;
  HF/TRL: ``on_step_end``) with the real tokens of that step. The first ``warmup`` steps are left out:
  throughput = tokens of steps warmup+1..N / (t_N - t_warmup). Model loading, tokenisation, packing
  set-up and saving are outside the timed window on every side.
- Two throughputs per run: real tokens per wall second, and real tokens per CPU second of the process
  (``time.process_time`` over the same steps). On a 2-core box shared with other jobs the wall figure
  swings by 2x between identical runs while the CPU-time figure stays within a few percent; with one
  torch thread (the default here) it estimates the uncontended single-thread wall throughput.
- Sides run interleaved (A, B, C, A, B, C, ...) for ``--repeats`` rounds; the table shows medians and
  every ratio is the ratio of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
               "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
               "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
SCRATCH = Path(os.environ.get("REDONE_BENCH_DIR", Path(tempfile.gettempdir()) / "redone-bench"))


def common_parser(description: str, *, steps: int, batch: int, seq_len: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="tiny",
                        help="tiny (a random 2-layer Llama with SmolLM2's tokenizer, built once), "
                             "smollm2-135m-instruct, or a local HF model dir")
    parser.add_argument("--steps", type=int, default=steps, help="optimizer steps per run (warm-up included)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    parser.add_argument("--batch", type=int, default=batch, help="rows (cpt) / examples (sft) per step")
    parser.add_argument("--seq-len", type=int, default=seq_len)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in every run (1: stable ratios on a shared 2-core box)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds; medians are reported")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--scratch", default=str(SCRATCH), help="scratch dir (models, caches, run dirs)")
    parser.add_argument("--json", dest="json_out", default=None, help="also write all results to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return parser


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)


def resolve_bench_model(name: str, scratch: str) -> str:
    """A path (or built-in name) both sides load; ``tiny`` is made once under the scratch dir."""
    if name != "tiny":
        from redone.model import resolve_model

        return resolve_model(name)
    target = Path(scratch) / "tiny-model"
    if not (target / "config.json").exists():
        from redone.model import make_tiny_model

        tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=Path(scratch)))
        make_tiny_model(tmp / "m", layers=2, hidden=64)
        (tmp / "m").rename(target)
    return str(target)


class StepClock:
    """Timestamps after each optimizer step, with the real (non-pad) tokens of the step."""

    def __init__(self):
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.tokens: list[int] = []

    def tick(self, tokens: int) -> None:
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())
        self.tokens.append(int(tokens))

    def summary(self, warmup: int) -> dict:
        # The clock starts at the end of step max(warmup, 1): step 1 has no earlier timestamp.
        first = max(warmup, 1)
        if len(self.times) <= first:
            raise SystemExit(f"only {len(self.times)} steps ran; need more than --warmup={first}")
        elapsed = self.times[-1] - self.times[first - 1]
        cpu = self.cpu[-1] - self.cpu[first - 1]
        timed_tokens = sum(self.tokens[first:])
        steps = len(self.times) - first
        return {"steps": len(self.times), "timed_steps": steps, "timed_s": elapsed, "timed_cpu_s": cpu,
                "tokens_per_s": timed_tokens / elapsed, "tokens_per_cpu_s": timed_tokens / cpu,
                "tokens_per_step": timed_tokens / steps,
                "step_s": [round(b - a, 3) for a, b in zip(self.times, self.times[1:])]}


def write_result(path: str, result: dict) -> None:
    result["maxrss_self_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(path).write_text(json.dumps(result))


def run_worker(script: str, side: str, argv: list[str], threads: int, log_dir: Path) -> dict:
    """Run one side in a fresh process; returns its result dict plus its own peak RSS."""
    log_dir.mkdir(parents=True, exist_ok=True)
    result_file = log_dir / f"{side}-{time.time_ns()}.json"
    log_file = log_dir / f"{side}-{time.time_ns()}.log"
    env = dict(os.environ, **OFFLINE_ENV, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, script, *argv, "--worker", side, "--result", str(result_file)]
    start = time.perf_counter()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        # wait4 gives this child's own rusage (ru_maxrss in KiB on Linux), not a max over all children.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not result_file.exists():
        tail = "".join(log_file.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise SystemExit(f"[bench] side '{side}' failed (exit {proc.returncode}); log {log_file}:\n{tail}")
    result = json.loads(result_file.read_text())
    result.update(side=side, peak_rss_bytes=usage.ru_maxrss * 1024, process_wall_s=wall, log=str(log_file))
    return result


def run_interleaved(script: str, sides: list[str], argv: list[str], threads: int, repeats: int,
                    log_dir: Path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for round_ in range(repeats):
        for side in sides:
            print(f"[bench] round {round_ + 1}/{repeats}: {side} ...", flush=True)
            result = run_worker(script, side, argv, threads, log_dir)
            print(f"[bench]   {result['tokens_per_s']:,.0f} tok/s wall, {result['tokens_per_cpu_s']:,.0f} tok/CPU-s, "
                  f"peak RSS {gib(result['peak_rss_bytes'])}, "
                  f"loss {result.get('final_loss', float('nan')):.4f}, process {result['process_wall_s']:.0f}s",
                  flush=True)
            runs[side].append(result)
    return runs


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def medians(runs: dict[str, list[dict]]) -> dict[str, dict]:
    out = {}
    for side, results in runs.items():
        out[side] = {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in results),
            "tokens_per_cpu_s": statistics.median(r["tokens_per_cpu_s"] for r in results),
            "peak_rss_bytes": statistics.median(r["peak_rss_bytes"] for r in results),
            "tokens_per_step": statistics.median(r["tokens_per_step"] for r in results),
            "final_loss": statistics.median(r.get("final_loss", float("nan")) for r in results),
            "all_tokens_per_s": [r["tokens_per_s"] for r in results],
            "all_tokens_per_cpu_s": [r["tokens_per_cpu_s"] for r in results],
        }
    return out


def print_table(title: str, med: dict[str, dict], baseline: str, targets: dict[str, tuple[float, str]]) -> dict:
    """Print a markdown table; ``targets``: side -> (minimum speed-up of ``baseline`` over it, label).

    Two throughputs: real tokens per wall second (what a user sees on an idle machine) and real tokens
    per CPU second of the process (time.process_time over the same steps): on a box shared with other
    jobs the latter is far less noisy, and with 1 torch thread it estimates the uncontended wall figure.
    """
    print(f"\n### {title}\n")
    print("| run | real tok/s (wall) | each run | real tok/CPU-s | each run | tokens/step | peak RSS | "
          "mean train loss | speed-up wall | speed-up CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ratios = {}
    for side, m in med.items():
        wall = med[baseline]["tokens_per_s"] / m["tokens_per_s"]
        cpu = med[baseline]["tokens_per_cpu_s"] / m["tokens_per_cpu_s"]
        ratios[side] = {"wall": wall, "cpu": cpu}
        each = ", ".join(f"{x:,.0f}" for x in m["all_tokens_per_s"])
        each_cpu = ", ".join(f"{x:,.0f}" for x in m["all_tokens_per_cpu_s"])
        print(f"| {side} | {m['tokens_per_s']:,.0f} | {each} | {m['tokens_per_cpu_s']:,.0f} | {each_cpu} | "
              f"{m['tokens_per_step']:,.0f} | {gib(m['peak_rss_bytes'])} | {m['final_loss']:.4f} | "
              f"{wall:.2f}x | {cpu:.2f}x |")
    verdicts = {}
    for side, (minimum, label) in targets.items():
        r = ratios[side]
        verdicts[side] = {k: v >= minimum for k, v in r.items()}
        print(f"- {baseline} vs {side} ({label}, target >= {minimum}x): wall {r['wall']:.2f}x "
              f"{'MET' if r['wall'] >= minimum else 'MISSED'}, CPU-time {r['cpu']:.2f}x "
              f"{'MET' if r['cpu'] >= minimum else 'MISSED'}")
    return {"ratios": ratios, "verdicts": verdicts}


def save_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=1, default=str))
        print(f"\n[bench] results written to {path}")


def check_peer_args(args) -> None:
    """TRL's CPU traps: its defaults (bf16, gradient checkpointing) must really be off."""
    if args.bf16 or args.fp16 or args.gradient_checkpointing or not args.use_cpu:
        raise SystemExit(f"peer not in fp32/no-checkpointing CPU mode: bf16={args.bf16} fp16={args.fp16} "
                         f"gradient_checkpointing={args.gradient_checkpointing} use_cpu={args.use_cpu}")


def instrument_redone_loop(clock: StepClock) -> None:
    """Time redone's own loop from outside: a tick after every step, no checkpoint or final save.

    ``record_step`` runs once per optimizer step, right after the optimizer/scheduler step (the same
    point as HF's ``on_step_end``); its meter holds the step's real tokens. Saving is stubbed out because
    the peer runs use ``save_strategy="no"``: neither side's peak RSS or time includes serialisation.
    """
    from redone.train import loop

    record_step = loop.record_step

    def timed_record_step(state, step_meter, accelerator):
        record_step(state, step_meter, accelerator)
        clock.tick(step_meter.tokens)

    loop.record_step = timed_record_step
    loop.save_checkpoint = lambda *args, **kwargs: None
    loop.save_final = lambda *args, **kwargs: None


def run_redone_stage(stage: str, stage_class, args, model_path: str, sources, extra: dict) -> dict:
    """One timed redone run with the settings every peer comparison shares (fp32, sdpa, no warm-up,
    cosine, clipping 1.0, one log at the end); ``extra`` holds the stage's own overrides."""
    from redone.stages import load_config
    from redone.train.loop import run_training

    clock = StepClock()
    instrument_redone_loop(clock)
    out = Path(tempfile.mkdtemp(prefix=f"{stage}-redone-", dir=Path(args.scratch) / "runs")) / "out"
    listed = ", ".join(f"{{name: {s.name}, path: {s.path}, format: {s.format}}}" for s in sources)
    overrides = {
        "output_dir": out, "model.name_or_path": model_path, "model.attn_implementation": "sdpa",
        "data.seq_len": args.seq_len, "data.mixing": "temperature", "data.temperature": 1.0,
        "data.sources": f"[{listed}]", "data.cache_dir": Path(args.scratch) / "cache",
        "train.max_steps": args.steps, "train.micro_batch_size": args.batch, "train.grad_accum": 1,
        "train.precision": "fp32", "train.threads": args.threads, "train.log_every": args.steps,
        "train.save_every": args.steps * 10, "train.progress": "false", "optim.lr": args.lr,
        "optim.warmup_steps": 0, "optim.scheduler": "cosine", "optim.weight_decay": 0.0,
        "optim.max_grad_norm": 1.0, **extra,
    }
    config = load_config(stage, None, [f"{k}={v}" for k, v in overrides.items()])
    run_training(config, stage_class)
    return dict(clock.summary(args.warmup), final_loss=last_logged_loss(out))


def last_logged_loss(output_dir: Path) -> float:
    lines = [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines() if line]
    return float([line for line in lines if "loss" in line][-1]["loss"])


def trainer_clock_callback(clock: StepClock, tokens_of_step):
    """An HF ``TrainerCallback`` ticking the clock at ``on_step_end`` (after the optimizer step)."""
    from transformers import TrainerCallback

    class ClockCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick(tokens_of_step())

    return ClockCallback()


def hf_training_args(output_dir: Path, args, **extra) -> dict:
    """TrainingArguments fields shared by the HF/TRL peers: fp32 on CPU, no activation checkpointing
    (``gradient_checkpointing`` is its deprecated alias in transformers 5; TRL defaults it to True), no saving,
    AdamW with redone's betas, cosine schedule without warm-up, grad clipping 1.0, one log at the end."""
    return dict(output_dir=str(output_dir), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                max_steps=args.steps, learning_rate=args.lr, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95,
                adam_epsilon=1e-8, lr_scheduler_type="cosine", warmup_steps=0, max_grad_norm=1.0,
                logging_steps=args.steps, save_strategy="no", report_to="none", use_cpu=True, bf16=False,
                fp16=False, activation_checkpointing=False, dataloader_num_workers=0, disable_tqdm=True, seed=0,
                optim="adamw_torch", **extra)
