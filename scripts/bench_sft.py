"""SFT throughput: redone's SFT stage vs TRL ``SFTTrainer`` at its defaults and with ``padding_free=True``.

Data, identical on every side: the SNS-Bench train files (12 tasks) + SNS-TransBench train (both
directions), rendered by redone's prompt builder (style "redone"); examples longer than ``--seq-len``
tokens are left out everywhere (redone: ``data.overlong=drop``; TRL: filtered with the same
``encode_chat`` count, so TRL never truncates). TRL gets them as conversational prompt/completion
records (prompt = system + user turns, completion = the assistant turn), so with its default
``completion_only_loss`` it trains on the same token ids and loss mask as redone.

Sides (``<implementation>@<fp32|bf16>``):
- ``redone``: ``run_training(config, SFTStage)`` at redone's defaults (packed rows, attention auto,
  fused AdamW, LM head on labelled positions only); ``train.precision`` from the row.
- ``trl``: ``SFTTrainer`` at its defaults: padded batches, gradient checkpointing, fused AdamW, bf16
  (on the fp32 row ``bf16=False``, the only change); ``use_cpu=True`` on CPU.
- ``trl-padding-free``: TRL's best setting for speed: ``padding_free=True`` (one flattened row with
  position_ids; TRL 1.16 wants ``max_length=None`` for it, harmless since every example fits) and
  ``gradient_checkpointing=False``.
- ``redone-padded`` (optional): ``data.packing=false``.

Same effective batch: TRL takes ``--batch`` examples per step; redone takes ``--rows`` packed rows,
by default round(batch x mean example length / seq_len), about the same real tokens per step (the
table prints each side's measured tokens/step). Same lr schedule, clipping, steps and torch threads.
Tokens = real (non-pad) input tokens through the decoder, counted by the FlopCounter on every side.

Usage (see _bench_common.py for the clock, the FLOP count and the two throughput figures):
    python scripts/bench_sft.py                                     # tiny model, fp32 + bf16 rows, 3 repeats
    python scripts/bench_sft.py --model smollm2-135m-instruct --steps 3 --batch 4 --threads 2
    python scripts/bench_sft.py --precisions bf16 --implementations redone,trl --json /tmp/bench_sft.json
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common  # noqa: E402

WORKLOAD = "sft"
IMPLEMENTATIONS = ("redone", "trl", "trl-padding-free", "redone-padded", "redone-master")
DEFAULT_IMPLEMENTATIONS = ("redone", "trl", "trl-padding-free")
# (peer, minimum redone/peer ratio of real tokens per second, where the target comes from)
TARGETS = (("trl", 3.0, "issue 15"), ("trl-padding-free", 1.5, "issue 15"))
MFU_TARGETS = (("bf16", 0.30),)  # redone's bf16 SFT at >= 30% of the bf16 matmul peak
FULL = {"steps": 3, "batch": 4, "seq_len": 1024}
QUICK = {"steps": 3, "batch": 2, "seq_len": 256}


def sft_sources():
    from redone.config.schema import SourceSection

    return [SourceSection(path=str(common.DATA / "sns_bench" / "train"), name="sns_bench", format="sns_bench"),
            SourceSection(path=str(common.DATA / "sns_transbench" / "train.json"), name="transbench",
                          format="transbench")]


def chat_examples():
    """Adapter for the one redone data API this script needs besides the stage itself."""
    from redone.data.chat import encode_chat
    from redone.data.sft import all_components

    return encode_chat, all_components(sft_sources(), "redone")


def example_lengths_and_records(tokenizer, seq_len: int) -> tuple[list[int], list[dict]]:
    """Token lengths (redone's encoding) and TRL prompt/completion records of the kept examples."""
    encode_chat, components = chat_examples()
    lengths, records = [], []
    for component in components:
        for example in component.examples:
            messages = example["messages"]
            encoded = encode_chat(tokenizer, messages, max_len=seq_len, overlong="drop")
            if encoded is None:
                continue
            assert messages[-1]["role"] == "assistant" and all(m["role"] != "assistant" for m in messages[:-1])
            lengths.append(len(encoded.ids))
            records.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return lengths, records


def add_arguments(parser) -> None:
    parser.add_argument("--rows", type=int, default=None,
                        help="redone packed rows per step (default: about the real tokens of --batch examples)")


def prepare(args, model_path: str) -> list[str]:
    """Parent side, once: redone's rows per step from the mean example length."""
    if args.rows is None:
        from redone.model import load_tokenizer

        lengths, _ = example_lengths_and_records(load_tokenizer(model_path), args.seq_len)
        args.rows = max(1, round(args.batch * sum(lengths) / len(lengths) / args.seq_len))
    return ["--rows", str(args.rows)]


def describe(args) -> str:
    return (f"TRL {args.batch} examples/step, redone {args.rows} packed rows x {args.seq_len} "
            f"(about the same real tokens)")


def run_redone(args, precision: str, model_path: str, packing: bool) -> dict:
    from redone.train.sft import SFTStage

    result = common.run_redone_stage("sft", SFTStage, args, precision, model_path, sft_sources(), {
        "data.overlong": "drop", "data.loss_on": "assistant", "data.prompt_style": "redone",
        "data.packing": str(packing).lower(), "train.micro_batch_size": args.rows if packing else args.batch})
    result["notes"] = (f"packed {args.rows}x{args.seq_len}" if packing else "padded") + \
        f", fused adamw, {common.precision_note(precision)}"
    return result


def run_trl(args, precision: str, model_path: str, padding_free: bool) -> dict:
    import datasets
    from trl import SFTConfig, SFTTrainer

    from redone.model import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    _, records = example_lengths_and_records(tokenizer, args.seq_len)
    # TRL tokenizes its whole dataset before step 1: a seeded sample of 4x what the run draws keeps
    # that set-up short without changing the length distribution.
    records = random.Random(0).sample(records, min(len(records), 4 * args.steps * args.batch))
    out = Path(tempfile.mkdtemp(prefix="sft-trl-", dir=Path(args.scratch) / "runs"))
    best = {"padding_free": True, "max_length": None, "activation_checkpointing": False} if padding_free else \
        {"max_length": args.seq_len}
    config = SFTConfig(**common.hf_training_args(out, args, precision, **best))
    settings = common.check_peer_args(config, precision, args.device)
    clock, counter = common.StepClock(), common.FlopCounter()
    # A model path, not an instance: TRL loads it with its own defaults (dtype, attention).
    trainer = SFTTrainer(model=model_path, args=config, train_dataset=datasets.Dataset.from_list(records),
                         processing_class=tokenizer, callbacks=[common.trainer_clock_callback(clock, counter)])
    common.attach_trainer(trainer, counter)
    output = trainer.train()
    timed = clock.summary(args.warmup)
    if trainer._total_train_tokens != sum(clock.tokens):  # TRL's own count of non-pad tokens must agree
        raise SystemExit(f"token count mismatch: TRL {trainer._total_train_tokens} vs counted {sum(clock.tokens)}")
    notes = ("padding-free" if padding_free else "padded") + ", " + common.peer_notes(settings)
    return dict(timed, final_loss=float(output.training_loss), flop_model=counter.note, notes=notes,
                attention=trainer.model.config._attn_implementation)


def worker(args) -> dict:
    impl, precision = common.split_side(args.worker)
    common.set_threads(args.threads)
    model_path = common.resolve_bench_model(args.model, args.scratch)
    if impl in ("redone", "redone-padded", "redone-master"):
        return run_redone(args, common.master_precision(impl, precision), model_path, packing=impl != "redone-padded")
    if impl in ("trl", "trl-padding-free"):
        return run_trl(args, precision, model_path, padding_free=impl == "trl-padding-free")
    raise SystemExit(f"unknown side {args.worker}")


if __name__ == "__main__":
    common.workload_main(sys.modules[__name__], steps=20, batch=8, seq_len=1024)
