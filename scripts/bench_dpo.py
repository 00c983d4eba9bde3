"""Benchmark: redone DPO vs TRL 1.16 DPOTrainer on the same model, pairs and batch (fp32, CPU).

Every configuration runs in its own subprocess (honest peak RSS), on the same pairs (one epoch:
``--steps`` x ``--batch`` pairs, each fitting ``--seq-len`` so neither side truncates), the same
number of pairs per optimizer step, lr and torch threads:

- ``redone``: the DPO stage through the real loop (``run_training``), cold caches: the pairs are
  tokenized and the reference pass runs before step 1; no reference model during training.
- ``redone-warm``: the same run again with the caches warm (a rerun / resume: no reference pass).
- ``trl``: DPOTrainer defaults (a resident reference model, one extra forward per step, padded).
- ``trl-precompute``: DPOTrainer with ``precompute_ref_log_probs=True`` (a reference pass at init).

Reported per configuration: real (non-pad) tokens/s over the training steps (both sides count the
same tokens: prompt+chosen and prompt+rejected of every pair), wall time from setup start to the end
of training including tokenization and any reference pass (model loading excluded, it is the same on
both sides; redone's also includes its end-of-run checkpoint and final/ save, TRL saves nothing), the
reference pass time, peak RSS of the process (redone's includes those saves) and the high-water mark
before the last step (training alone), and ratios against TRL defaults. Run it on a quiet machine:
the figures are wall-clock.

    python scripts/bench_dpo.py --model tiny --steps 30 --batch 8
    python scripts/bench_dpo.py --model smollm2-135m-instruct --steps 6 --batch 2 --seq-len 384
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
for _key, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("WANDB_MODE", "disabled"),
                     ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_key, _value)

WORKERS = ("redone", "redone-warm", "trl", "trl-precompute")
SNS_TASKS = ("Note-Taxonomy-single", "Note-Hashtag-single", "Note-Hashtag-multiple", "Note-NER", "Note-CHLW",
             "Note-Gender", "Note-QueryCorr-explain", "Note-QueryCorr-topic")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------- shared inputs


def model_dir(name: str, work: Path) -> str:
    from redone.model import make_tiny_model, resolve_model

    if name == "tiny":
        return str(make_tiny_model(work / "tiny-model", layers=2, hidden=64))
    return resolve_model(name)


def write_pairs(path: Path, tokenizer, n: int, seq_len: int, seed: int) -> int:
    """n pairs (SNS-built and HH-RLHF, shuffled) whose sequences fit seq_len untruncated; their real tokens."""
    from redone.data import sns_tasks
    from redone.data.preference import encode_pair, pair_from_record, task_pairs

    data = REPO / "data"
    pairs = []
    for task in SNS_TASKS:
        items = sns_tasks.load_items(data / "sns_bench" / "train" / f"{task}.json")[:80]
        pairs += task_pairs(task, items, style="redone", max_prompt_chars=600, pairs_per_item=1, seed=seed,
                            where=task)[0]
    for i, line in enumerate((data / "preference" / "hh_rlhf_harmless_train.jsonl").read_text().splitlines()[:400]):
        try:
            pairs.append(pair_from_record(json.loads(line), f"hh:{i}"))
        except Exception:  # noqa: BLE001 - the benchmark only keeps clean pairs
            continue
    random.Random(seed).shuffle(pairs)
    kept, tokens = [], 0
    for pair in pairs:
        encoded = encode_pair(tokenizer, pair, max_len=seq_len, overlong="drop")
        if encoded is None:
            continue
        kept.append(pair)
        tokens += 2 * len(encoded.prompt) + len(encoded.chosen) + len(encoded.rejected)
        if len(kept) == n:
            break
    if len(kept) < n:
        raise SystemExit(f"only {len(kept)} pairs fit seq_len={seq_len}")
    path.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected},
                                       ensure_ascii=False) + "\n" for p in kept))
    return tokens


# ---------------------------------------------------------------- workers (one per subprocess)


def run_redone(args, work: Path, warm: bool) -> dict:
    import torch

    from redone.stages import load_config
    from redone.train.dpo import DPOStage
    from redone.train.loop import run_training

    torch.set_num_threads(args.threads)
    cache = work / "redone-cache"
    out = work / ("redone-warm-out" if warm else "redone-out")
    shutil.rmtree(out, ignore_errors=True)
    if not warm:
        shutil.rmtree(cache, ignore_errors=True)
    info: dict = {}

    class Timed(DPOStage):
        def prepare_model(self, model):
            super().prepare_model(model)
            info.update(self.reference_info)

        def next_batch(self, rank, world):
            info["train_peak_rss_mb"] = peak_rss_mb()  # high-water mark before the end-of-run saves
            return super().next_batch(rank, world)

    overrides = {
        "output_dir": out, "model.name_or_path": args.model_path, "data.cache_dir": cache,
        "data.sources": f"[{{path: {work / 'pairs.jsonl'}, format: preference}}]", "data.seq_len": args.seq_len,
        "train.max_steps": args.steps, "train.micro_batch_size": args.batch, "train.log_every": args.steps,
        "train.save_every": 10 ** 6, "train.progress": "false", "train.precision": "fp32",
        "train.threads": args.threads, "optim.lr": args.lr, "optim.scheduler": "constant", "dpo.beta": 0.1,
    }
    config = load_config("dpo", None, [f"{k}={v}" for k, v in overrides.items()])
    start = time.perf_counter()
    run_training(config, Timed)
    wall = time.perf_counter() - start
    log = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])
    train_s = log["tokens_seen"] / log["tokens_per_s"]
    return {"tokens": log["tokens_seen"], "tokens_per_s": log["tokens_per_s"], "train_s": train_s,
            "wall_s": wall, "reference_s": 0.0 if info.get("cache_hit") else info.get("seconds", 0.0),
            "cache_hit": info.get("cache_hit"), "final_loss": log["loss"],
            "train_peak_rss_mb": info.get("train_peak_rss_mb"), "note": "wall includes checkpoint + final save"}


def run_trl(args, work: Path, precompute: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from redone.model import load_model, load_tokenizer

    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in (work / "pairs.jsonl").read_text().splitlines()]
    tokenizer = load_tokenizer(args.model_path)
    model = load_model(args.model_path, attn_implementation="sdpa")
    times: dict = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            times["train_begin"] = time.perf_counter()

        def on_step_begin(self, *a, **k):
            times["train_peak_rss_mb"] = peak_rss_mb()

        def on_train_end(self, *a, **k):
            times["train_end"] = time.perf_counter()

    config = DPOConfig(
        output_dir=str(work / "trl-out"), bf16=False, gradient_checkpointing=False, use_cpu=True, report_to=[],
        per_device_train_batch_size=args.batch, max_steps=args.steps, learning_rate=args.lr,
        lr_scheduler_type="constant", logging_steps=args.steps, save_strategy="no", beta=0.1,
        max_length=args.seq_len, precompute_ref_log_probs=precompute, dataloader_num_workers=0,
        disable_tqdm=True, seed=0,
    )
    start = time.perf_counter()
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         callbacks=[Clock()])
    setup = time.perf_counter() - start
    result = trainer.train()
    end = time.perf_counter()
    ds = trainer.train_dataset
    tokens = sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]))
    train_s = times["train_end"] - times["train_begin"]
    return {"tokens": tokens, "tokens_per_s": tokens / train_s, "train_s": train_s, "wall_s": end - start,
            "reference_s": setup if precompute else 0.0, "final_loss": result.training_loss,
            "train_peak_rss_mb": times.get("train_peak_rss_mb"),
            "note": "reference_s = trainer setup incl. tokenization" if precompute else "ref model resident"}


def worker_main(args) -> None:
    work = Path(args.work)
    if args.worker.startswith("redone"):
        result = run_redone(args, work, warm=args.worker == "redone-warm")
    else:
        result = run_trl(args, work, precompute=args.worker == "trl-precompute")
    result["peak_rss_mb"] = peak_rss_mb()
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny | smollm2-135m-instruct | a model dir")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8, help="pairs per optimizer step (both sides)")
    parser.add_argument("--seq-len", type=int, default=512, help="max tokens per sequence")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", default=",".join(WORKERS))
    parser.add_argument("--out", default=None, help="write the results JSON here")
    parser.add_argument("--work", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return

    from redone.model import load_tokenizer

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-dpo-"))
    work.mkdir(parents=True, exist_ok=True)
    path = model_dir(args.model, work)
    tokens = write_pairs(work / "pairs.jsonl", load_tokenizer(path), args.steps * args.batch, args.seq_len, seed=0)
    print(f"[bench] {args.steps} steps x {args.batch} pairs = {args.steps * args.batch} pairs, {tokens} real tokens, "
          f"model {args.model}, seq_len {args.seq_len}, {args.threads} threads, work dir {work}", flush=True)
    results = {}
    for name in args.workers.split(","):
        result_file = work / f"{name}.json"
        cmd = [sys.executable, __file__, "--worker", name, "--result", str(result_file), "--work", str(work),
               "--model-path", path, "--steps", str(args.steps), "--batch", str(args.batch),
               "--seq-len", str(args.seq_len), "--lr", str(args.lr), "--threads", str(args.threads)]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"worker {name} failed")
        results[name] = json.loads(result_file.read_text())
        r = results[name]
        print(f"[bench] {name:<15} {r['tokens_per_s']:8.1f} tok/s  train {r['train_s']:7.1f} s  wall {r['wall_s']:7.1f} s"
              f"  ref {r['reference_s']:6.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB (before the last step "
              f"{r.get('train_peak_rss_mb') or 0:.0f} MB)  loss {r['final_loss']:.4f}"
              f"  (process {time.perf_counter() - started:.0f} s)", flush=True)
    base = results.get("trl")
    if base:
        for r in results.values():
            r["vs_trl"] = {"tokens_per_s": r["tokens_per_s"] / base["tokens_per_s"],
                           "wall": r["wall_s"] / base["wall_s"], "peak_rss": r["peak_rss_mb"] / base["peak_rss_mb"]}
            if r.get("train_peak_rss_mb") and base.get("train_peak_rss_mb"):
                r["vs_trl"]["train_peak_rss"] = r["train_peak_rss_mb"] / base["train_peak_rss_mb"]
        print("[bench] ratios vs TRL defaults (tokens/s higher is better; wall and RSS lower is better):")
        for name, r in results.items():
            v = r["vs_trl"]
            print(f"[bench]   {name:<15} tokens/s x{v['tokens_per_s']:.2f}   wall x{v['wall']:.2f}   "
                  f"peak RSS x{v['peak_rss']:.2f} (during training x{v.get('train_peak_rss', float('nan')):.2f})")
    summary = {"model": args.model, "steps": args.steps, "batch": args.batch, "seq_len": args.seq_len,
               "threads": args.threads, "pairs": args.steps * args.batch, "real_tokens": tokens, "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
