"""SFT throughput: redone's SFT stage vs TRL 1.16 ``SFTTrainer`` (padded and ``padding_free=True``).

Data, identical on every side: the SNS-Bench train files (12 tasks) + SNS-TransBench train (both
directions), rendered by redone's prompt builder (``redone.data.examples.all_components``, style
"redone"); examples longer than ``--seq-len`` tokens are left out everywhere (redone:
``data.overlong=drop``; TRL: filtered with the same ``encode_chat`` count, so TRL never truncates).
TRL gets them as conversational prompt/completion records (prompt = system + user turns, completion =
the assistant turn), so with ``completion_only_loss`` it trains on the same token ids and the same
loss mask as redone (see tests/train/test_sft_parity.py).

- redone: ``run_training(config, SFTStage)``, examples sampled size-proportionally (temperature 1, the
  same mix as TRL's uniform shuffle), packed padding-free into ``rows`` rows of ``seq_len`` tokens
  (position_ids restart per example, no cross-example attention). ``--sides`` may add
  ``redone-padded`` (``data.packing=false``: one example per row, right-padded).
- trl-padded: ``SFTTrainer``, ``per_device_train_batch_size=--batch`` examples, padded to the longest.
- trl-padding-free: the same with ``padding_free=True`` (one flattened row, position_ids; ``max_length``
  must be None for it in TRL 1.16, harmless here since every example already fits).

Same effective batch: TRL takes ``--batch`` examples per step; redone takes ``--rows`` packed rows per
step, by default round(batch x mean example length / seq_len), i.e. about the same real tokens per step
(the table prints the measured tokens/step of every side). fp32 on CPU everywhere; TRL with
``bf16=False, gradient_checkpointing=False`` (its defaults fail on CPU). Same AdamW settings, lr, cosine
schedule, clip 1.0, torch threads, steps; no checkpoint saving anywhere.

Real tokens = non-pad input tokens (prompt + completion): redone counts segment lengths (row tails
excluded), TRL ``attention_mask.sum()`` (padded) or the flattened length (padding-free). Each run is its
own process (peak RSS = its ru_maxrss); the first ``--warmup`` steps are untimed (clock starts at the
end of step ``warmup``: redone's ``record_step``, TRL's ``on_step_end``).

Usage (1 torch thread per run by default; see _bench_common.py for the two throughput figures):
    python scripts/bench_sft.py                                  # tiny model, 20 steps, 8 examples/step
    python scripts/bench_sft.py --steps 10 --repeats 2 --sides redone,trl-padded,trl-padding-free,redone-padded
    python scripts/bench_sft.py --model smollm2-135m-instruct --steps 5 --warmup 1 --batch 4 --repeats 2
    python scripts/bench_sft.py --threads 2 --json /tmp/bench_sft.json
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as common  # noqa: E402

SIDES = ("redone", "trl-padded", "trl-padding-free", "redone-padded")


def sft_sources():
    from redone.config.schema import SourceSection

    return [SourceSection(path=str(common.DATA / "sns_bench" / "train"), name="sns_bench", format="sns_bench"),
            SourceSection(path=str(common.DATA / "sns_transbench" / "train.json"), name="transbench",
                          format="transbench")]


def example_lengths_and_records(tokenizer, seq_len: int) -> tuple[list[int], list[dict]]:
    """Token lengths (redone's encoding) and TRL prompt/completion records of the kept examples."""
    from redone.data.chat import encode_chat
    from redone.data.examples import all_components

    lengths, records = [], []
    for component in all_components(sft_sources(), "redone"):
        for example in component.examples:
            messages = example["messages"]
            encoded = encode_chat(tokenizer, messages, max_len=seq_len, overlong="drop")
            if encoded is None:
                continue
            assert messages[-1]["role"] == "assistant" and all(m["role"] != "assistant" for m in messages[:-1])
            lengths.append(len(encoded.ids))
            records.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return lengths, records


def default_rows(args, model_path: str) -> int:
    from redone.model import load_tokenizer

    lengths, _ = example_lengths_and_records(load_tokenizer(model_path), args.seq_len)
    return max(1, round(args.batch * sum(lengths) / len(lengths) / args.seq_len))


def run_redone(args, model_path: str, packing: bool) -> dict:
    from redone.train.sft import SFTStage

    return common.run_redone_stage("sft", SFTStage, args, model_path, sft_sources(), {
        "data.overlong": "drop", "data.loss_on": "assistant", "data.prompt_style": "redone",
        "data.packing": str(packing).lower(), "train.micro_batch_size": args.rows if packing else args.batch})


def run_trl(args, model_path: str, padding_free: bool) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from redone.model import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    _, records = example_lengths_and_records(tokenizer, args.seq_len)
    dataset = datasets.Dataset.from_list(records)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="sdpa")
    out = Path(tempfile.mkdtemp(prefix="sft-trl-", dir=Path(args.scratch) / "runs"))
    config = SFTConfig(**common.hf_training_args(
        out, args, padding_free=padding_free, packing=False, completion_only_loss=True,
        # TRL 1.16 refuses padding_free without packing unless max_length is None (examples already fit).
        max_length=None if padding_free else args.seq_len))
    common.check_peer_args(config)
    seen = {"tokens": 0}

    class CountingSFTTrainer(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            seen["tokens"] += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            return super().training_step(model, inputs, num_items_in_batch)

    clock = common.StepClock()
    step_tokens = {"last": 0}

    def tokens_of_step() -> int:
        tokens, step_tokens["last"] = seen["tokens"] - step_tokens["last"], seen["tokens"]
        return tokens

    trainer = CountingSFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                                 callbacks=[common.trainer_clock_callback(clock, tokens_of_step)])
    output = trainer.train()
    if trainer._total_train_tokens != seen["tokens"]:  # TRL's own count of non-pad tokens must agree
        raise SystemExit(f"token count mismatch: TRL {trainer._total_train_tokens} vs counted {seen['tokens']}")
    return dict(clock.summary(args.warmup), final_loss=float(output.training_loss))


def worker(args) -> None:
    common.set_threads(args.threads)
    model_path = common.resolve_bench_model(args.model, args.scratch)
    if args.worker in ("redone", "redone-padded"):
        result = run_redone(args, model_path, packing=args.worker == "redone")
    elif args.worker in ("trl-padded", "trl-padding-free"):
        result = run_trl(args, model_path, padding_free=args.worker == "trl-padding-free")
    else:
        raise SystemExit(f"unknown side {args.worker}")
    common.write_result(args.result, result)


def main() -> None:
    parser = common.common_parser(__doc__.splitlines()[0], steps=20, batch=8, seq_len=1024)
    parser.add_argument("--rows", type=int, default=None,
                        help="redone packed rows per step (default: about the real tokens of --batch examples)")
    parser.add_argument("--sides", default="redone,trl-padded,trl-padding-free",
                        help=f"comma-separated subset of {','.join(SIDES)}")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if set(sides) - set(SIDES) or "redone" not in sides:
        parser.error(f"--sides must include redone and only use {SIDES} (got {sides})")
    scratch = Path(args.scratch)
    (scratch / "runs").mkdir(parents=True, exist_ok=True)
    model_path = common.resolve_bench_model(args.model, args.scratch)
    argv = list(sys.argv[1:])
    if args.rows is None:
        args.rows = default_rows(args, model_path)
        argv += ["--rows", str(args.rows)]
    print(f"[bench_sft] model={args.model} steps={args.steps} (warm-up {args.warmup} untimed) "
          f"trl batch={args.batch} examples, redone {args.rows}x{args.seq_len} packed rows, "
          f"threads={args.threads} repeats={args.repeats}", flush=True)
    runs = common.run_interleaved(__file__, sides, argv, args.threads, args.repeats, scratch / "logs")
    med = common.medians(runs)
    targets = {side: target for side, target in (("trl-padded", (2.5, "issue 4")),
                                                 ("trl-padding-free", (1.2, "issue 4"))) if side in sides}
    verdict = common.print_table(
        f"SFT, model {args.model}, TRL {args.batch} examples/step vs redone {args.rows}x{args.seq_len} packed, "
        f"{args.steps} steps ({args.warmup} warm-up), {args.threads} torch thread(s)", med, "redone", targets)
    if "trl-padding-free" in sides:
        ours, theirs = med["redone"]["peak_rss_bytes"], med["trl-padding-free"]["peak_rss_bytes"]
        ok = ours <= theirs
        verdict["verdicts"]["rss"] = ok
        print(f"- peak RSS redone {common.gib(ours)} vs trl-padding-free {common.gib(theirs)} "
              f"(target: no higher): {'MET' if ok else 'MISSED'}")
    print("\n(speed-up = redone tokens/s / that run's tokens/s; RSS = each run's own process peak)")
    common.save_json(args.json_out, {"args": vars(args), "runs": runs, "medians": med, **verdict})


if __name__ == "__main__":
    main()
