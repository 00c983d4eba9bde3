"""CPT throughput: redone's continued-pretraining stage vs HF ``Trainer`` on concatenated blocks.

Both sides: the same model, the same documents (SNS-Bench train note titles/bodies + tinyshakespeare
paragraphs, each document followed by EOS), the same sequence length, rows per step, steps, lr schedule
(cosine, no warm-up, clip 1.0) and torch threads.

Sides (``<implementation>@<fp32|bf16>``):
- ``redone``: ``run_training(config, CPTStage)`` at redone's defaults: documents drawn by the mixture
  sampler (temperature 1: size-proportional shares, the same token mix as the peer's corpus) and packed
  into full rows, attention masked at document boundaries (position_ids restart), fused AdamW.
- ``hf-trainer``: the classic ``group_texts`` recipe (documents shuffled, tokenized with
  ``datasets.map``, concatenated, cut into ``seq_len`` blocks, all-ones attention mask so attention
  crosses documents) trained by ``transformers.Trainer`` at its defaults (fused AdamW, fp32); the bf16
  row sets ``bf16=True``.
- ``redone-crossdoc`` (optional): ``data.cross_document_attention=true``, the peer's attention pattern.

Every row is full, so real tokens = rows x seq_len on both sides; the FLOP count charges attention for
the (query, key) pairs each side really attends to (within documents for redone, the whole block for
the peer).

Usage (see _bench_common.py for the clock, the FLOP count and the two throughput figures):
    python scripts/bench_cpt.py                                   # tiny model, fp32 + bf16 rows
    python scripts/bench_cpt.py --model smollm2-135m-instruct --steps 3 --batch 2 --threads 2
    python scripts/bench_cpt.py --implementations redone,hf-trainer,redone-crossdoc --precisions fp32
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common  # noqa: E402

WORKLOAD = "cpt"
IMPLEMENTATIONS = ("redone", "hf-trainer", "redone-crossdoc", "redone-master")
DEFAULT_IMPLEMENTATIONS = ("redone", "hf-trainer")
TARGETS = (("hf-trainer", 1.2, "issue 15"),)
FULL = {"steps": 3, "batch": 2, "seq_len": 512}
QUICK = {"steps": 3, "batch": 2, "seq_len": 256}


def cpt_sources():
    from redone.config.schema import SourceSection

    return [SourceSection(path=str(common.DATA / "sns_bench" / "train"), name="sns_notes", format="sns_bench"),
            SourceSection(path=str(common.DATA / "general" / "tinyshakespeare.txt"), name="shakespeare")]


def add_arguments(parser) -> None:
    """No CPT-specific options."""


def prepare(args, model_path: str) -> list[str]:
    return []


def describe(args) -> str:
    return f"{args.batch} rows x {args.seq_len} tokens/step"


def run_redone(args, precision: str, model_path: str, cross_document: bool) -> dict:
    from redone.train.cpt import CPTStage

    result = common.run_redone_stage("cpt", CPTStage, args, precision, model_path, cpt_sources(), {
        "data.cross_document_attention": str(cross_document).lower(), "train.micro_batch_size": args.batch})
    result["notes"] = (f"packed, {'cross-document' if cross_document else 'per-document'} attention, fused adamw, "
                       f"{common.precision_note(precision)}")
    return result


def read_documents():
    """Adapter for the one redone data API this script needs besides the stage itself."""
    from redone.data.sources import read_documents as read

    return [doc for source in cpt_sources() for doc in read(source)]


def group_texts_dataset(tokenizer, seq_len: int, blocks_needed: int):
    """The classic run_clm recipe: tokenize, concatenate, cut into seq_len blocks (remainder dropped)."""
    import datasets

    docs = read_documents()
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
    grouped = tokenized.map(group_texts, batched=True, batch_size=1000, load_from_cache_file=False)
    if len(grouped) < blocks_needed:
        raise SystemExit(f"only {len(grouped)} blocks for {blocks_needed} rows")
    return grouped


def run_hf_trainer(args, precision: str, model_path: str) -> dict:
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

    from redone.model import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    dataset = group_texts_dataset(tokenizer, args.seq_len, args.steps * args.batch)
    model = AutoModelForCausalLM.from_pretrained(model_path)  # the library's defaults (dtype, attention)
    clock, counter = common.StepClock(), common.FlopCounter()
    out = Path(tempfile.mkdtemp(prefix="cpt-hf-", dir=Path(args.scratch) / "runs"))
    training_args = TrainingArguments(**common.hf_training_args(out, args, precision))
    settings = common.check_peer_args(training_args, precision, args.device)
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=default_data_collator,
                      callbacks=[common.trainer_clock_callback(clock, counter)])
    common.attach_trainer(trainer, counter)
    output = trainer.train()
    return dict(clock.summary(args.warmup), final_loss=float(output.training_loss), flop_model=counter.note,
                notes="group_texts blocks, " + common.peer_notes(settings),
                attention=model.config._attn_implementation)


def worker(args) -> dict:
    impl, precision = common.split_side(args.worker)
    common.set_threads(args.threads)
    model_path = common.resolve_bench_model(args.model, args.scratch)
    if impl in ("redone", "redone-crossdoc", "redone-master"):
        return run_redone(args, common.master_precision(impl, precision), model_path,
                          cross_document=impl == "redone-crossdoc")
    if impl == "hf-trainer":
        return run_hf_trainer(args, precision, model_path)
    raise SystemExit(f"unknown side {args.worker}")


if __name__ == "__main__":
    common.workload_main(sys.modules[__name__], steps=20, batch=4, seq_len=512)
