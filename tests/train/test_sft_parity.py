"""Parity: redone's SFT loss on a batch equals TRL's SFTTrainer (completion-only) loss on the same batch.

Real SNS examples from redone's prompt builder go both ways: through ``encode_chat`` + packing +
``collate`` + ``token_ce_loss`` (packed rows, one flat row, and the padded layout), and, as
conversational prompt/completion records, through ``SFTTrainer``'s own dataset preparation, its collator
(padded, and ``padding_free=True``) and its ``compute_loss``. Token ids, loss masks, scored-token counts
and the mean loss must agree (fp32, tolerance 1e-4 on the mean).
"""

from __future__ import annotations

import pytest
import torch

from redone.data.chat import encode_chat
from redone.data.packing import IGNORE, TokenStore, collate, pack_in_order
from redone.sns import tasks as sns_tasks
from redone.train.base import token_ce_loss
from tests.conftest import DATA

TASK_FILES = ("Note-NER", "Note-Taxonomy-single", "Note-Hashtag-multiple", "Note-MRC-simple", "Note-CHLW")
MAX_TOKENS = 320  # keep the examples short: the test must stay fast


def pick_examples(tokenizer) -> list[list[dict]]:
    """The first short-enough item of a few SNS-Bench tasks and of each TransBench direction."""
    chosen = []
    for stem in TASK_FILES:
        for item in sns_tasks.load_items(DATA / "sns_bench" / "train" / f"{stem}.json"):
            messages = sns_tasks.build_example(stem, item, "redone")["messages"]
            if len(encode_chat(tokenizer, messages).ids) <= MAX_TOKENS:
                chosen.append(messages)
                break
    directions = set()
    for item in sns_tasks.load_items(DATA / "sns_transbench" / "train.json", sns_tasks.TRANSBENCH):
        task = sns_tasks.transbench_task(item)
        messages = sns_tasks.build_example(task, item, "redone")["messages"]
        if task not in directions and len(encode_chat(tokenizer, messages).ids) <= MAX_TOKENS:
            directions.add(task)
            chosen.append(messages)
        if len(directions) == 2:
            break
    assert len(chosen) == len(TASK_FILES) + 2
    return chosen


@pytest.fixture(scope="module")
def examples(tokenizer):
    return pick_examples(tokenizer)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with larger random weights, saved once: its logits are far from uniform, so a
    loss computed on the wrong (e.g. shifted) tokens could not pass for the right one."""
    from redone.model import load_model

    model = load_model(str(tiny_model_dir), attn_implementation="sdpa")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _name, param in sorted(model.named_parameters()):
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    out = tmp_path_factory.mktemp("sharp") / "model"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def trl_side(model_dir, tokenizer, examples, tmp_path_factory):
    """TRL's trainer (own model instance, same weights), and its tokenized features in dataset order."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    records = [{"prompt": m[:-1], "completion": m[-1:]} for m in examples]
    # fp32, no activation checkpointing: TRL's defaults (bf16 + checkpointing) fail on CPU.
    args = trl.SFTConfig(output_dir=str(tmp_path_factory.mktemp("trl")), use_cpu=True, bf16=False, fp16=False,
                         activation_checkpointing=False, report_to="none", save_strategy="no", disable_tqdm=True,
                         per_device_train_batch_size=len(records), completion_only_loss=True, max_length=None)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(records),
                             processing_class=tokenizer)
    features = [{k: trainer.train_dataset[i][k] for k in ("input_ids", "labels")} for i in range(len(records))]
    padding_free = trl.trainer.sft_trainer.DataCollatorForLanguageModeling(
        pad_token_id=trainer.processing_class.pad_token_id, padding_free=True)
    losses = {}
    for name, collator in (("trl-padded", trainer.data_collator), ("trl-padding-free", padding_free)):
        batch = collator(features)
        assert ("attention_mask" in batch) == (name == "trl-padded")
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, dict(batch))  # TRL's own loss (fused LM head)
        losses[name] = (float(loss), int((batch["labels"][:, 1:] != IGNORE).sum()))
    return features, losses


@pytest.fixture(scope="module")
def ours(model_dir, tokenizer, examples):
    from redone.model import load_model

    model = load_model(str(model_dir), attn_implementation="sdpa").eval()
    encoded = [encode_chat(tokenizer, m) for m in examples]
    store = TokenStore.from_lists([e.ids for e in encoded], [e.mask for e in encoded])
    results = {}
    # rows: several examples packed per 1024-token row; flat: one sequence; padded: one example per row.
    for layout, packing in (("rows", True), ("flat", True), ("padded", False)):
        rows = pack_in_order(store, 0, 1024, tokenizer.pad_token_id, packing)
        batch = collate(rows, tokenizer.pad_token_id, layout)
        if layout == "rows":
            assert len(rows) < len(examples)  # really packed
        with torch.no_grad():
            out = token_ce_loss(model, batch, ["sns"])
        results[layout] = (float(out.loss_sum) / out.units, out.units)
    return encoded, results


def test_same_tokens_and_loss_mask(ours, trl_side):
    encoded, _ = ours
    features, _ = trl_side
    for ours_example, theirs in zip(encoded, features, strict=True):
        assert ours_example.ids == theirs["input_ids"]
        assert ours_example.mask == [label != IGNORE for label in theirs["labels"]]


@pytest.mark.parametrize("peer", ["trl-padded", "trl-padding-free"])
@pytest.mark.parametrize("layout", ["rows", "flat", "padded"])
def test_loss_matches_trl(ours, trl_side, layout, peer):
    their_mean, their_count = trl_side[1][peer]
    our_mean, our_count = ours[1][layout]
    assert our_count == their_count
    assert our_mean == pytest.approx(their_mean, abs=1e-4)
