"""DPO throughput: redone's DPO stage vs TRL ``DPOTrainer`` at its defaults and with precomputed reference.

Both sides train on the same pairs (SNS-built + HH-RLHF, shuffled, each sequence fitting ``--seq-len``
so nobody truncates; one epoch: ``--steps`` x ``--batch`` pairs), the same pairs per optimizer step,
beta 0.1 sigmoid loss, lr schedule, clipping and torch threads.

Sides (``<implementation>@<fp32|bf16>``):
- ``redone``: ``run_training(config, DPOStage)`` at redone's defaults: the reference log-probs come
  from one no-grad pass before step 1 (a fresh cache dir per run, so every run pays for it, outside
  the timed window), no reference model during training, the prompt computed once per pair
  (``dpo.share_prompt`` auto), LM head on completion positions only, fused AdamW.
- ``trl``: ``DPOTrainer`` at its defaults: a resident reference model (one extra forward per step),
  padded chosen+rejected batch, gradient checkpointing, fused AdamW, bf16 (``bf16=False`` on the fp32
  row); ``use_cpu=True`` on CPU.
- ``trl-precompute``: TRL's best setting for speed: ``precompute_ref_log_probs=True`` (reference pass at
  set-up) and ``activation_checkpointing=False``.
- ``redone-unshared`` (optional): ``dpo.share_prompt=false`` (prompt computed twice, like TRL).

Two throughputs: pairs per second (the unit both sides train on; the DPO ratios use it) and computed
tokens per second: real tokens through the trained model, where a shared prompt counts once and TRL's
prompt counts twice (it runs twice). TRL's reference forward is in its FLOPs (it is work the default
does every step), not in its tokens.

Usage (see _bench_common.py for the clock, the FLOP count and the two throughput figures):
    python scripts/bench_dpo.py                                        # tiny model, fp32 + bf16 rows
    python scripts/bench_dpo.py --model smollm2-135m-instruct --steps 3 --batch 2 --seq-len 512 --threads 2
    python scripts/bench_dpo.py --implementations redone,redone-unshared,trl --precisions bf16
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common  # noqa: E402

WORKLOAD = "dpo"
IMPLEMENTATIONS = ("redone", "trl", "trl-precompute", "redone-unshared", "redone-master")
DEFAULT_IMPLEMENTATIONS = ("redone", "trl", "trl-precompute")
THROUGHPUT = "pairs"
TARGETS = (("trl", 3.0, "issue 15"),)
RSS_TARGETS = (("trl", 0.5),)  # redone's peak RSS at most half of TRL's default
FULL = {"steps": 3, "batch": 2, "seq_len": 512}
QUICK = {"steps": 3, "batch": 2, "seq_len": 256}
SNS_TASKS = ("Note-Taxonomy-single", "Note-Hashtag-single", "Note-Hashtag-multiple", "Note-NER", "Note-CHLW",
             "Note-Gender", "Note-QueryCorr-explain", "Note-QueryCorr-topic")


def pair_api():
    """Adapter for the redone data APIs this script needs besides the stage itself."""
    from redone.data.dpo import encode_pair, pair_from_record, task_pairs
    from redone.sns import tasks as sns_tasks

    return encode_pair, pair_from_record, task_pairs, sns_tasks.load_items


def write_pairs(path: Path, tokenizer, n: int, seq_len: int, seed: int = 0) -> None:
    """n pairs (SNS-built and HH-RLHF, shuffled) whose sequences fit seq_len untruncated."""
    encode_pair, pair_from_record, task_pairs, load_items = pair_api()
    pairs = []
    for task in SNS_TASKS:
        items = load_items(common.DATA / "sns_bench" / "train" / f"{task}.json")[:80]
        pairs += task_pairs(task, items, style="redone", max_prompt_chars=600, pairs_per_item=1, seed=seed,
                            where=task)[0]
    hh = (common.DATA / "preference" / "hh_rlhf_harmless_train.jsonl").read_text().splitlines()[:400]
    for i, line in enumerate(hh):
        try:
            pairs.append(pair_from_record(json.loads(line), f"hh:{i}"))
        except Exception:  # noqa: BLE001 - the benchmark only keeps clean pairs
            continue
    random.Random(seed).shuffle(pairs)
    kept = [p for p in pairs if encode_pair(tokenizer, p, max_len=seq_len, overlong="drop") is not None][:n]
    if len(kept) < n:
        raise SystemExit(f"only {len(kept)} pairs fit seq_len={seq_len}")
    path.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected},
                                       ensure_ascii=False) + "\n" for p in kept))


def add_arguments(parser) -> None:
    parser.add_argument("--pairs", default=None, help=argparse.SUPPRESS)  # written by prepare()


def prepare(args, model_path: str) -> list[str]:
    """Parent side, once: the pairs file every side trains on."""
    from redone.model import load_tokenizer

    n = args.steps * args.batch
    path = Path(args.scratch) / f"dpo-pairs-{Path(model_path).name}-{n}-{args.seq_len}.jsonl"
    if not path.exists():
        write_pairs(path, load_tokenizer(model_path), n, args.seq_len)
    args.pairs = str(path)
    return ["--pairs", str(path)]


def describe(args) -> str:
    return f"{args.batch} pairs/step, sequences <= {args.seq_len} tokens"


def run_redone(args, precision: str, model_path: str, share_prompt: bool | None) -> dict:
    from redone.config.schema import SourceSection
    from redone.train.dpo import DPOStage

    run_dir = Path(tempfile.mkdtemp(prefix="dpo-redone-", dir=Path(args.scratch) / "runs"))
    extra = {"train.micro_batch_size": args.batch, "data.cache_dir": run_dir / "cache", "dpo.beta": 0.1}
    if share_prompt is not None:
        extra["dpo.share_prompt"] = str(share_prompt).lower()
    source = SourceSection(path=args.pairs, name="pairs", format="preference")
    result = common.run_redone_stage("dpo", DPOStage, args, precision, model_path, [source], extra,
                                     units_per_step=args.batch)
    result["notes"] = (f"reference pass before step 1, {'prompt twice' if share_prompt is False else 'shared prompt'}"
                       f", fused adamw, {common.precision_note(precision)}")
    return result


def run_trl(args, precision: str, model_path: str, precompute: bool) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from redone.model import load_tokenizer

    rows = [json.loads(line) for line in Path(args.pairs).read_text().splitlines()]
    tokenizer = load_tokenizer(model_path)
    out = Path(tempfile.mkdtemp(prefix="dpo-trl-", dir=Path(args.scratch) / "runs"))
    best = {"precompute_ref_log_probs": True, "activation_checkpointing": False} if precompute else {}
    config = DPOConfig(**common.hf_training_args(out, args, precision, beta=0.1, max_length=args.seq_len, **best))
    settings = common.check_peer_args(config, precision, args.device)
    clock, counter = common.StepClock(), common.FlopCounter()
    # A model path, not an instance: TRL loads policy and reference with its own defaults.
    trainer = DPOTrainer(model=model_path, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         callbacks=[common.trainer_clock_callback(clock, counter, units_per_step=args.batch)])
    common.attach_trainer(trainer, counter)
    output = trainer.train()
    notes = ("precomputed reference" if precompute else "resident reference model") + ", " + \
        common.peer_notes(settings)
    return dict(clock.summary(args.warmup), final_loss=float(output.training_loss), flop_model=counter.note,
                notes=notes, attention=trainer.model.config._attn_implementation)


def worker(args) -> dict:
    impl, precision = common.split_side(args.worker)
    common.set_threads(args.threads)
    model_path = common.resolve_bench_model(args.model, args.scratch)
    if impl in ("redone", "redone-unshared", "redone-master"):
        return run_redone(args, common.master_precision(impl, precision), model_path,
                          share_prompt=False if impl == "redone-unshared" else None)
    if impl in ("trl", "trl-precompute"):
        return run_trl(args, precision, model_path, precompute=impl == "trl-precompute")
    raise SystemExit(f"unknown side {args.worker}")


if __name__ == "__main__":
    common.workload_main(sys.modules[__name__], steps=20, batch=8, seq_len=512)
