"""CPT throughput: redone's continued-pretraining stage vs HF ``Trainer`` on concatenated blocks.

Both sides: the same model (fp32, sdpa), the same documents (SNS-Bench train note titles/bodies,
deduplicated, + tinyshakespeare paragraphs, each document followed by EOS), the same sequence length,
rows per step, steps, optimizer (AdamW, betas 0.9/0.95, lr, cosine, clip 1.0) and torch threads.

- redone: ``run_training(config, CPTStage)``: documents drawn by the mixture sampler (temperature 1, i.e.
  size-proportional shares, the same token mix as the peer's corpus) and packed padding-free into full
  rows, position_ids restarting per document so attention is masked at document boundaries (the default;
  ``--sides redone-crossdoc`` adds a run with ``data.cross_document_attention=true``).
- hf-trainer: the classic ``group_texts`` recipe: documents shuffled, tokenized with ``datasets.map``,
  concatenated and cut into ``seq_len`` blocks (labels = input_ids, all-ones attention mask, so attention
  crosses document boundaries), trained by ``transformers.Trainer``.

Every block/row is full, so real tokens = rows x seq_len on both sides. Each run is its own process
(peak RSS = that process's ru_maxrss); the first ``--warmup`` steps are left out of the timing (the
clock starts at the end of step ``warmup``: redone's ``record_step``, HF's ``on_step_end``). Checkpoint
saving is off on both sides.

Usage (1 torch thread per run by default; see _bench_common.py for the two throughput figures):
    python scripts/bench_cpt.py                                   # tiny model, 20 steps, batch 4 x 512
    python scripts/bench_cpt.py --steps 10 --repeats 2 --sides redone,hf-trainer,redone-crossdoc
    python scripts/bench_cpt.py --model smollm2-135m-instruct --steps 5 --warmup 1 --batch 2
    python scripts/bench_cpt.py --threads 2 --json /tmp/bench_cpt.json
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common  # noqa: E402

SIDES = ("redone", "hf-trainer", "redone-crossdoc")


def cpt_sources():
    from redone.config.schema import SourceSection

    return [SourceSection(path=str(common.DATA / "sns_bench" / "train"), name="sns_notes", format="sns_bench"),
            SourceSection(path=str(common.DATA / "general" / "tinyshakespeare.txt"), name="shakespeare")]


def run_redone(args, model_path: str, cross_document: bool) -> dict:
    from redone.train.cpt import CPTStage

    return common.run_redone_stage("cpt", CPTStage, args, model_path, cpt_sources(),
                                   {"data.cross_document_attention": str(cross_document).lower()})


def group_texts_dataset(tokenizer, seq_len: int):
    """The classic run_clm recipe: tokenize, concatenate, cut into seq_len blocks (remainder dropped)."""
    import datasets

    from redone.data.sources import read_documents

    docs = [doc for source in cpt_sources() for doc in read_documents(source)]
    random.Random(0).shuffle(docs)
    eos = tokenizer.eos_token_id

    def tokenize(batch):
        return {"input_ids": [ids + [eos] for ids in tokenizer(batch["text"], add_special_tokens=False)["input_ids"]]}

    def group_texts(batch):
        concatenated = [t for ids in batch["input_ids"] for t in ids]
        total = len(concatenated) // seq_len * seq_len
        blocks = [concatenated[i:i + seq_len] for i in range(0, total, seq_len)]
        return {"input_ids": blocks, "labels": [list(b) for b in blocks],
                "attention_mask": [[1] * seq_len for _ in blocks]}

    raw = datasets.Dataset.from_dict({"text": docs})
    tokenized = raw.map(tokenize, batched=True, remove_columns=["text"], load_from_cache_file=False)
    return tokenized.map(group_texts, batched=True, batch_size=1000, load_from_cache_file=False)


def run_hf_trainer(args, model_path: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

    from redone.model import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    dataset = group_texts_dataset(tokenizer, args.seq_len)
    if len(dataset) < args.steps * args.batch:
        raise SystemExit(f"only {len(dataset)} blocks for {args.steps} steps x {args.batch} rows")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="sdpa")
    clock = common.StepClock()
    out = Path(tempfile.mkdtemp(prefix="cpt-hf-", dir=Path(args.scratch) / "runs"))
    training_args = TrainingArguments(**common.hf_training_args(out, args))
    common.check_peer_args(training_args)
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=default_data_collator,
                      callbacks=[common.trainer_clock_callback(clock, lambda: args.batch * args.seq_len)])
    output = trainer.train()
    return dict(clock.summary(args.warmup), final_loss=float(output.training_loss))


def worker(args) -> None:
    common.set_threads(args.threads)
    model_path = common.resolve_bench_model(args.model, args.scratch)
    if args.worker == "redone":
        result = run_redone(args, model_path, cross_document=False)
    elif args.worker == "redone-crossdoc":
        result = run_redone(args, model_path, cross_document=True)
    elif args.worker == "hf-trainer":
        result = run_hf_trainer(args, model_path)
    else:
        raise SystemExit(f"unknown side {args.worker}")
    common.write_result(args.result, result)


def main() -> None:
    parser = common.common_parser(__doc__.splitlines()[0], steps=20, batch=4, seq_len=512)
    parser.add_argument("--sides", default="redone,hf-trainer",
                        help=f"comma-separated subset of {','.join(SIDES)}")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = set(sides) - set(SIDES)
    if unknown or "redone" not in sides:
        parser.error(f"--sides must include redone and only use {SIDES} (got {sides})")
    scratch = Path(args.scratch)
    (scratch / "runs").mkdir(parents=True, exist_ok=True)
    common.resolve_bench_model(args.model, args.scratch)  # build the tiny model once, before the runs
    argv = list(sys.argv[1:])
    print(f"[bench_cpt] model={args.model} steps={args.steps} (warm-up {args.warmup} untimed) "
          f"batch={args.batch}x{args.seq_len} threads={args.threads} repeats={args.repeats}", flush=True)
    runs = common.run_interleaved(__file__, sides, argv, args.threads, args.repeats, scratch / "logs")
    med = common.medians(runs)
    targets = {"hf-trainer": (1.0, "issue 2")} if "hf-trainer" in sides else {}
    verdict = common.print_table(f"CPT, model {args.model}, {args.batch}x{args.seq_len} tokens/step, "
                                 f"{args.steps} steps ({args.warmup} warm-up), {args.threads} torch thread(s)",
                                 med, "redone", targets)
    print("\n(speed-up = redone tokens/s / that run's tokens/s; RSS = each run's own process peak)")
    common.save_json(args.json_out, {"args": vars(args), "runs": runs, "medians": med, **verdict})


if __name__ == "__main__":
    main()
