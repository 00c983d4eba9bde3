"""RL (GRPO/DAPO) throughput: redone's rl stage vs TRL ``GRPOTrainer``, same model, prompts and workload.

Workload per optimizer step: ``--prompts`` prompts x ``--group`` sampled completions of at most
``--completion-len`` tokens, DAPO loss (token-level, clip 0.2 / 0.28), no KL, temperature 1, one
optimizer step per generation batch, the same reward (sentence chrF++ of the answer, redone's TransBench
reward) and lr. Prompts: SNS-TransBench zh->en items rendered by redone's prompt builder (the TRL side
gets the same chat messages and applies the same chat template). Both sides sample with transformers
``generate`` and the KV cache. redone runs with dynamic sampling and over-long shaping off (TRL has
neither), so both generate exactly one batch per step.

Sides (each run a fresh process; peak RSS from ``wait4``; interleaved rounds; medians):
- ``redone``: ``run_training(config, RLStage)``: packed prompt+completion rows (sdpa_segments on CPU),
  LM head on completion positions only, sampling by a seeded logits processor, fused AdamW.
- ``trl``: ``GRPOTrainer`` at its defaults for this workload (``use_cpu``, fp32, its fused log-prob
  head, activation checkpointing as it defaults).
- ``trl-nockpt`` (optional): the same without activation checkpointing (TRL's fastest CPU setting).

Figures per run (steps after ``--warmup`` only):
- generation tok/s: completion tokens sampled / seconds inside generation (redone:
  ``HFBackend.sample``; TRL: ``_generate_single_turn``);
- training tok/s: prompt + completion tokens through the trained forward/backward / (step time -
  generation time) -- scoring, advantages and the optimizer step are in this part on both sides;
- end-to-end: completions per second of step time (the whole RL step);
- peak RSS of the process.

Usage:
    python scripts/bench_rl.py                                   # tiny model: 4 prompts x 8, 32 tokens
    python scripts/bench_rl.py --model smollm2-135m-instruct --prompts 2 --group 4 --completion-len 16 --steps 4
    python scripts/bench_rl.py --model runs/rl-work/sft/final ...   # any HF model dir
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common  # noqa: E402

SIDES = ("redone", "trl")
ALL_SIDES = ("redone", "trl", "trl-nockpt")


# ---------------------------------------------------------------- the shared workload


def write_prompts(path: Path, n: int) -> None:
    """n SNS-TransBench zh->en items (a subset file both sides read)."""
    items = json.loads((common.DATA / "sns_transbench" / "train.json").read_text())
    chosen = [it for it in items if it.get("src_lang") == "zh" and len(it.get("zh", "")) < 200][:n]
    if len(chosen) < n:
        raise SystemExit(f"only {len(chosen)} zh->en items")
    path.write_text(json.dumps(chosen, ensure_ascii=False))


def prompt_messages(item: dict) -> list[dict]:
    from redone.sns import tasks as sns_tasks

    return sns_tasks.prompt_messages("TransBench-zh2en", item, "redone")


class Meter:
    """Per-step timestamps, generation seconds and token counts (ticked once per optimizer step)."""

    def __init__(self):
        self.ticks, self.cpu = [time.perf_counter()], [time.process_time()]
        self.gen_s, self.gen_tokens, self.train_tokens, self.completions = [0.0], [0], [0], [0]

    def tick(self) -> None:
        self.ticks.append(time.perf_counter())
        self.cpu.append(time.process_time())
        for series in (self.gen_s, self.gen_tokens, self.train_tokens, self.completions):
            series.append(0)

    def summary(self, warmup: int) -> dict:
        first = max(warmup, 1)  # step k spans ticks[k-1]..ticks[k]; step 1 includes start-up work
        steps = len(self.ticks) - 1
        if steps <= first:
            raise SystemExit(f"only {steps} steps ran; need more than --warmup={first}")
        wall = self.ticks[-1] - self.ticks[first]
        cpu = self.cpu[-1] - self.cpu[first]
        # Counters of step k are accumulated in slot k-1 (filled before tick k).
        gen_s = sum(self.gen_s[first:steps])
        gen_tokens = sum(self.gen_tokens[first:steps])
        train_tokens = sum(self.train_tokens[first:steps])
        completions = sum(self.completions[first:steps])
        return {"timed_steps": steps - first, "timed_s": wall, "timed_cpu_s": cpu, "gen_s": gen_s,
                "gen_tokens_per_s": gen_tokens / max(gen_s, 1e-9),
                "train_tokens_per_s": train_tokens / max(wall - gen_s, 1e-9),
                "completions_per_s": completions / wall, "completions_per_cpu_s": completions / cpu,
                "tokens_per_s": train_tokens / wall, "tokens_per_cpu_s": train_tokens / cpu, "flops_per_s": 0.0,
                "gen_tokens_per_step": gen_tokens / (steps - first),
                "train_tokens_per_step": train_tokens / (steps - first),
                "step_s": [round(b - a, 2) for a, b in zip(self.ticks, self.ticks[1:])]}


# ---------------------------------------------------------------- redone side


def run_redone(args, model_path: str) -> dict:
    from redone.stages import load_config
    from redone.train import loop
    from redone.train import rl as rl_stage

    meter = Meter()
    sample, loss, record_step = rl_stage.HFBackend.sample, rl_stage.RLStage.loss, loop.record_step

    def timed_sample(self, model, prompts, group, rng):
        start = time.perf_counter()
        out = sample(self, model, prompts, group, rng)
        meter.gen_s[-1] += time.perf_counter() - start
        meter.gen_tokens[-1] += sum(len(g.token_ids) for g in out)
        meter.completions[-1] += len(out)
        return out

    def counted_loss(self, model, batch):
        out = loss(self, model, batch)
        meter.train_tokens[-1] += out.real_tokens
        return out

    def ticking_record_step(*args, **kwargs):  # pass-through: the loop's helper may gain arguments
        record_step(*args, **kwargs)
        meter.tick()

    rl_stage.HFBackend.sample, rl_stage.RLStage.loss, loop.record_step = timed_sample, counted_loss, ticking_record_step
    loop.save_checkpoint = lambda *a, **k: None  # the peer saves nothing either
    loop.save_final = lambda *a, **k: None
    out = Path(tempfile.mkdtemp(prefix="rl-redone-", dir=Path(args.scratch) / "runs")) / "out"
    overrides = {
        "output_dir": out, "model.name_or_path": model_path, "seed": 0, "data.seq_len": 1024,
        "data.sources": f"[{{path: {args.prompts_file}, format: transbench}}]",
        "train.max_steps": args.steps, "train.micro_batch_size": args.prompts * args.group, "train.grad_accum": 1,
        "train.log_every": 1, "train.save_every": args.steps, "train.progress": "false", "train.precision": "fp32",
        "optim.lr": args.lr, "optim.betas": "[0.9,0.999]", "optim.scheduler": "constant", "optim.weight_decay": 0.0,
        "rl.group_size": args.group, "rl.loss_type": "dapo", "rl.max_new_tokens": args.completion_len,
        "rl.dynamic_sampling": "false", "rl.overlong": "none", "rl.generation_batch_size": args.prompts * args.group,
    }
    config = load_config("rl", None, [f"{k}={v}" for k, v in overrides.items()])
    loop.run_training(config, rl_stage.RLStage)
    return dict(meter.summary(args.warmup), final_loss=0.0, notes="packed rows, sdpa_segments, fused adamw, fp32")


# ---------------------------------------------------------------- TRL side


def run_trl(args, model_path: str, checkpointing: bool | None = None) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from redone.model import load_tokenizer
    from redone.sns.rewards import chrf_reward

    items = json.loads(Path(args.prompts_file).read_text())
    rows = [{"prompt": prompt_messages(it), "item": json.dumps(it, ensure_ascii=False)} for it in items]

    def chrf(completions, item, **_):
        return [chrf_reward(c[0]["content"], json.loads(i), "TransBench-zh2en") for c, i in zip(completions, item)]

    meter = Meter()
    out = Path(tempfile.mkdtemp(prefix="rl-trl-", dir=Path(args.scratch) / "runs"))
    config = GRPOConfig(output_dir=str(out), per_device_train_batch_size=args.prompts * args.group,
                        gradient_accumulation_steps=1, num_generations=args.group,
                        max_completion_length=args.completion_len, max_steps=args.steps, learning_rate=args.lr,
                        lr_scheduler_type="constant", weight_decay=0.0, loss_type="dapo", beta=0.0, epsilon=0.2,
                        epsilon_high=0.28, temperature=1.0, bf16=False, use_cpu=True, report_to="none",
                        save_strategy="no", disable_tqdm=True, seed=0, logging_steps=1,
                        **({} if checkpointing is None else {"activation_checkpointing": checkpointing}))
    from transformers import TrainerCallback

    class Tick(TrainerCallback):
        def on_step_end(self, *a, **k):
            meter.tick()

    trainer = GRPOTrainer(model=model_path, reward_funcs=[chrf], args=config, train_dataset=Dataset.from_list(rows),
                          processing_class=load_tokenizer(model_path), callbacks=[Tick()])
    generate, compute_loss = trainer._generate_single_turn, trainer._compute_loss

    def timed_generate(*a, **k):
        start = time.perf_counter()
        result = generate(*a, **k)
        meter.gen_s[-1] += time.perf_counter() - start
        completion_ids = result[0]  # (completion_ids, logprobs)
        meter.gen_tokens[-1] += sum(len(c) for c in completion_ids)
        meter.completions[-1] += len(completion_ids)
        return result

    def counted_loss(model, inputs):
        meter.train_tokens[-1] += int(inputs["prompt_mask"].sum() + inputs["completion_mask"].sum())
        return compute_loss(model, inputs)

    trainer._generate_single_turn, trainer._compute_loss = timed_generate, counted_loss
    output = trainer.train()
    checkpointing = bool(getattr(config, "activation_checkpointing", False) or getattr(config, "gradient_checkpointing", False))
    return dict(meter.summary(args.warmup), final_loss=float(output.training_loss),
                notes=f"padded prompt|completion, fused log-prob head, grad ckpt {bool(checkpointing)}, fp32")


# ---------------------------------------------------------------- driver


def worker(args) -> dict:
    common.set_threads(args.threads)
    model_path = common.resolve_bench_model(args.model, args.scratch)
    if args.worker == "redone":
        return run_redone(args, model_path)
    return run_trl(args, model_path, checkpointing=False if args.worker == "trl-nockpt" else None)


def run_worker(args, side: str, argv: list[str]) -> dict:
    """One side in a fresh process (``_bench_common.run_worker`` wants '<impl>@<dtype>'; fp32 only here)."""
    result = common.run_worker(__file__, f"{side}@fp32", argv, args.threads, Path(args.scratch) / "logs")
    print(f"[bench] {side}: gen {result['gen_tokens_per_s']:,.0f} tok/s, train {result['train_tokens_per_s']:,.0f} "
          f"tok/s, {result['completions_per_s']:.2f} completions/s, peak RSS {common.gib(result['peak_rss_bytes'])}, "
          f"steps {result['step_s']}", flush=True)
    return result


KEYS = ("gen_tokens_per_s", "train_tokens_per_s", "completions_per_s", "completions_per_cpu_s", "peak_rss_bytes",
        "gen_tokens_per_step", "train_tokens_per_step")


def median_table(runs: dict[str, list[dict]]) -> dict[str, dict]:
    out = {}
    for side, results in runs.items():
        out[side] = {key: statistics.median(r[key] for r in results) for key in KEYS}
        out[side].update({f"{key}_range": (min(r[key] for r in results), max(r[key] for r in results))
                          for key in KEYS})
        out[side]["runs"], out[side]["notes"] = len(results), results[0]["notes"]
    return out


def print_table(args, table: dict[str, dict], machine: dict) -> None:
    print(f"\n### rl: model {args.model}, {args.prompts} prompts x {args.group} completions <= {args.completion_len} "
          f"tokens, {args.steps} steps ({args.warmup} untimed), {args.threads} thread(s), {args.repeats} repeats\n")
    print(f"machine: {machine['cpu']}, load avg {machine['load_avg'][0]:.1f} at start\n")
    print("| side | gen tok/s | train tok/s | completions/s (end to end) | completions/CPU-s | peak RSS | gen / train "
          "tokens per step | settings |\n|---|---|---|---|---|---|---|---|")
    def spread(e, key, fmt="{:,.0f}"):
        lo, hi = e[f"{key}_range"]
        return f"{fmt.format(e[key])} ({fmt.format(lo)}–{fmt.format(hi)})"

    for side, e in table.items():
        print(f"| {side} | {spread(e, 'gen_tokens_per_s')} | {spread(e, 'train_tokens_per_s')} "
              f"| {spread(e, 'completions_per_s', '{:.2f}')} | {spread(e, 'completions_per_cpu_s', '{:.2f}')} "
              f"| {common.gib(e['peak_rss_bytes'])} | {e['gen_tokens_per_step']:.0f} / {e['train_tokens_per_step']:.0f} "
              f"| {e['notes']} |")
    if set(SIDES) <= set(table):
        r, t = table["redone"], table["trl"]
        for key, name in (("gen_tokens_per_s", "generation"), ("train_tokens_per_s", "training"),
                          ("completions_per_s", "end to end (wall)"), ("completions_per_cpu_s", "end to end (CPU)")):
            print(f"- redone ÷ TRL {name}: {r[key] / t[key]:.2f}×")
        print(f"- peak RSS redone ÷ TRL: {r['peak_rss_bytes'] / t['peak_rss_bytes']:.2f}")
        ratio = r["completions_per_s"] / t["completions_per_s"]
        print(f"- target ≥ 2× TRL end to end on CPU (issue 14): **{'MET' if ratio >= 2 else 'MISSED'}** ({ratio:.2f}×)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, smollm2-135m-instruct, or an HF model dir")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt")
    parser.add_argument("--completion-len", type=int, default=32, help="max new tokens per completion")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (warm-up included)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--scratch", default=str(common.SCRATCH))
    parser.add_argument("--json", dest="json_out", default=None)
    parser.add_argument("--prompts-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.worker = args.worker.split("@")[0]
        common.write_result(args.result, worker(args))
        return
    scratch = Path(args.scratch)
    (scratch / "runs").mkdir(parents=True, exist_ok=True)
    prompts_file = scratch / f"rl-prompts-{args.prompts * args.steps}.json"
    write_prompts(prompts_file, args.prompts * args.steps)
    model_path = common.resolve_bench_model(args.model, args.scratch)
    argv = ["--model", model_path if args.model != "tiny" else "tiny", "--prompts", str(args.prompts), "--group",
            str(args.group), "--completion-len", str(args.completion_len), "--steps", str(args.steps), "--warmup",
            str(args.warmup), "--threads", str(args.threads), "--lr", str(args.lr), "--scratch", str(scratch),
            "--prompts-file", str(prompts_file)]
    machine = common.machine_info(args.threads)
    sides = [s for s in args.sides.split(",") if s]
    if set(sides) - set(ALL_SIDES):
        raise SystemExit(f"--sides: choose from {', '.join(ALL_SIDES)}")
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for round_ in range(args.repeats):
        for side in sides:
            print(f"[bench] round {round_ + 1}/{args.repeats}: {side} ...", flush=True)
            runs[side].append(run_worker(args, side, argv))
    table = median_table(runs)
    print_table(args, table, machine)
    common.save_json(args.json_out, {"machine": machine, "table": table, "runs": runs, "args": vars(args)})


if __name__ == "__main__":
    main()
