"""DPO on the tiny model: parity with TRL 1.16, the on-disk reference cache, packing, learning, bad input."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from redone.cli import main as cli_main
from redone.data.dpo import pair_from_record
from redone.model import load_model, load_tokenizer, make_tiny_model, training_attention
from redone.stages import load_config
from redone.train import ref_cache
from redone.train.dpo import DPOStage, compute_reference, segment_logps
from redone.train.loop import run_training
from tests.conftest import DATA, REPO

HH_TEST = DATA / "preference" / "hh_rlhf_harmless_test.jsonl"
N_PAIRS = 4


def overrides(model_dir, out, cache, sources, **extra) -> list[str]:
    items = {"output_dir": str(out), "model.name_or_path": str(model_dir), "data.cache_dir": str(cache),
             "data.sources": sources, "data.seq_len": 512, "train.max_steps": 4, "train.micro_batch_size": 4,
             "train.log_every": 1, "train.save_every": 2, "train.progress": "false", "optim.lr": 1e-3, **extra}
    return [f"{k}={v}" for k, v in items.items()]


def make_stage(model_dir, tmp_path, sources, layout="rows", **extra):
    config = load_config("dpo", None, overrides(model_dir, tmp_path / "out", tmp_path / "cache", sources, **extra))
    stage = DPOStage(config, load_tokenizer(str(model_dir)))
    stage.layout = layout
    return stage


@pytest.fixture(scope="module")
def ref_model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("ref") / "model", layers=2, hidden=64, seed=1)


@pytest.fixture(scope="module")
def pair_file(tmp_path_factory):
    """HH-RLHF test pairs as conversational prompt/chosen/rejected records (what TRL takes as is)."""
    records = [json.loads(line) for line in HH_TEST.read_text().splitlines()[:N_PAIRS]]
    pairs = [pair_from_record(r, f"hh:{i}") for i, r in enumerate(records)]
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                            for p in pairs))
    return path


@pytest.fixture(scope="module")
def trl_trainer(tiny_model_dir, ref_model_dir, pair_file, tmp_path_factory):
    """TRL's DPOTrainer on the same policy, an explicit (different) reference model and the same pairs."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    rows = [json.loads(line) for line in pair_file.read_text().splitlines()]
    args = DPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), bf16=False, gradient_checkpointing=False,
                     report_to=[], beta=0.1, per_device_train_batch_size=N_PAIRS, max_length=512, use_cpu=True)
    return DPOTrainer(model=load_model(str(tiny_model_dir)), ref_model=load_model(str(ref_model_dir)), args=args,
                      train_dataset=Dataset.from_list(rows), processing_class=load_tokenizer(str(tiny_model_dir)))


_TRL_RESULTS: dict = {}


def trl_first_batch(trainer, indices, loss_types=("sigmoid",), weights=(1.0,)) -> dict:
    """TRL's loss and reward metrics for one batch of its own tokenized dataset (memoised: TRL 1.16's
    chunked log-prob kernel is the slowest part of these tests on CPU)."""
    key = (tuple(indices), tuple(loss_types), tuple(weights))
    if key not in _TRL_RESULTS:
        _TRL_RESULTS[key] = _trl_batch(trainer, indices, loss_types, weights)
    return _TRL_RESULTS[key]


def _trl_batch(trainer, indices, loss_types, weights) -> dict:
    trainer.loss_types, trainer.loss_weights = list(loss_types), list(weights)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in indices])
    trainer.model.train()
    loss = float(trainer.compute_loss(trainer.model, batch).detach())
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return {"loss": loss, "chosen": metrics["rewards/chosen"], "rejected": metrics["rewards/rejected"],
            "accuracy": metrics["rewards/accuracies"], "margin": metrics["rewards/margins"]}


def our_first_batch(stage, model, indices) -> dict:
    out = stage.loss(model, stage.make_batch([(0, i) for i in indices]))
    m = stage.tag_metrics("t", out.tags[stage.source_names[0]])
    return {"loss": float(out.loss_sum.detach()) / out.units, "chosen": m["reward_chosen/t"], "rejected": m["reward_rejected/t"],
            "accuracy": m["reward_accuracy/t"], "margin": m["reward_margin/t"]}


@pytest.mark.parametrize("packing", ["true", "false"])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_first_batch_matches_trl(tiny_model_dir, ref_model_dir, pair_file, trl_trainer, tmp_path, packing, loss_type):
    stage = make_stage(tiny_model_dir, tmp_path, f"[{{path: {pair_file}}}]", "rows" if packing == "true" else "padded",
                       **{"data.packing": packing, "dpo.reference_model": ref_model_dir, "dpo.loss_type": loss_type,
                          "train.micro_batch_size": N_PAIRS})
    # Both sides tokenize identically (TRL: prompt ids, then the completion after the common prefix).
    for i in range(N_PAIRS):
        row = trl_trainer.train_dataset[i]
        expected = row["prompt_ids"] + row["chosen_ids"] + row["prompt_ids"] + row["rejected_ids"]
        assert stage.data.stores[0].item(i)[0].tolist() == expected
    policy = load_model(str(tiny_model_dir))
    stage.prepare_model(policy)
    assert stage.shared_prompt == (packing == "true")  # packed under sdpa: one prompt copy per pair
    policy.train()
    theirs = trl_first_batch(trl_trainer, range(N_PAIRS), [loss_type])
    ours = our_first_batch(stage, policy, range(N_PAIRS))
    assert theirs["loss"] != pytest.approx(math.log(2), abs=1e-3)  # a real reference, not the policy itself
    for key in theirs:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-4), key


def test_nll_term_and_label_smoothing_match_trl(tiny_model_dir, ref_model_dir, pair_file, trl_trainer, tmp_path):
    # NLL: TRL's "sft" loss is the mean NLL over the batch's chosen tokens; ours is per pair (length
    # normalised), so the two agree on a one-pair batch.
    stage = make_stage(tiny_model_dir, tmp_path, f"[{{path: {pair_file}}}]",
                       **{"dpo.reference_model": ref_model_dir, "dpo.nll_weight": 0.5})
    policy = load_model(str(tiny_model_dir))
    stage.prepare_model(policy)
    policy.train()
    for i in range(2):
        theirs = trl_first_batch(trl_trainer, [i], ["sigmoid", "sft"], [1.0, 0.5])
        assert our_first_batch(stage, policy, [i])["loss"] == pytest.approx(theirs["loss"], abs=1e-4)
    # cDPO: TRL 1.16's sigmoid loss ignores label_smoothing, so check the formula on TRL's own rewards.
    stage.config.dpo.nll_weight, stage.config.dpo.label_smoothing = 0.0, 0.2
    theirs = trl_first_batch(trl_trainer, [3])
    logit = theirs["chosen"] - theirs["rejected"]  # beta * (chosen log ratio - rejected log ratio)
    expected = -(0.8 * F.logsigmoid(torch.tensor(logit)) + 0.2 * F.logsigmoid(torch.tensor(-logit)))
    assert our_first_batch(stage, policy, [3])["loss"] == pytest.approx(float(expected), abs=1e-4)


def test_packed_and_shared_prompt_logps_equal_unpacked(tiny_model_dir, pair_file, tmp_path):
    sources = f"[{{path: {pair_file}}}, {{path: {DATA}/sns_bench/train, tasks: [Note-NER], limit: 10}}]"
    stage = make_stage(tiny_model_dir, tmp_path, sources, **{"train.micro_batch_size": 8})
    model = load_model(str(tiny_model_dir))
    picks = [(0, i) for i in range(N_PAIRS)] + [(1, i) for i in range(8)]
    results = {}
    for layout, shared in (("padded", False), ("rows", False), ("flat", False), ("rows", True)):
        stage.layout, stage.shared_prompt = layout, shared
        batch = stage.make_batch(picks)
        with torch.no_grad():
            logps, counts = segment_logps(model, batch)
        results[layout, shared] = {(s[3], s[4], s[5]): (float(v), int(c))
                                   for s, v, c in zip(batch["segments"], logps, counts)}
        if layout == "rows" and not shared:  # packed: fewer rows than sequences, none wider than the longest
            assert batch["input_ids"].shape[0] < 2 * len(picks)
            assert batch["input_ids"].shape[1] == max(s[2] for s in batch["segments"])
        if shared:  # one prompt per pair: fewer tokens in the forward than the two sequences hold
            assert int((batch["attention_mask"].diagonal(dim1=-2, dim2=-1)).sum()) < sum(batch["pair_tokens"])
        assert sum(batch["pair_tokens"]) == sum(int(stage.data.stores[s].lengths()[i]) for s, i in picks)
    assert len(results["padded", False]) == 2 * len(picks)
    for key, (value, count) in results["padded", False].items():
        for variant in (("rows", False), ("flat", False), ("rows", True)):
            assert results[variant][key][1] == count, variant
            assert results[variant][key][0] == pytest.approx(value, abs=1e-5, rel=1e-6), (variant, key)


def test_reference_cache_reused_on_rerun_and_resume(tiny_model_dir, pair_file, tmp_path):
    sources = f"[{{path: {pair_file}}}]"

    def train(out, **extra):
        config = load_config("dpo", None, overrides(tiny_model_dir, out, tmp_path / "cache", sources, **extra))
        return run_training(config, DPOStage)

    passes = ref_cache.PASSES
    assert train(tmp_path / "a", **{"train.stop_after_steps": 2}) is None
    assert ref_cache.PASSES == passes + 1
    assert (tmp_path / "a" / "checkpoints" / "step-2").exists()
    final = train(tmp_path / "a")  # resume after the stop: no second reference pass
    assert final is not None and ref_cache.PASSES == passes + 1
    train(tmp_path / "b")  # a rerun in a fresh output_dir: the cache still answers
    assert ref_cache.PASSES == passes + 1
    lineage = json.loads((final / "redone.json").read_text())
    assert lineage["data_sources"][0]["reference_cache"]["hit"] is True
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4]
    assert {"reward_accuracy/pairs", "reward_margin/pairs", "reward_chosen/pairs", "loss/pairs"} <= set(log[0])

    # The cached numbers equal a fresh no-grad computation by the starting policy.
    # (Loaded with the attention training resolves "auto" to: the cache key names it.)
    attn = training_attention("auto", packing=True)
    stage = make_stage(tiny_model_dir, tmp_path, sources)
    stage.prepare_model(load_model(str(tiny_model_dir), attn_implementation=attn))
    from accelerate import PartialState

    fresh = compute_reference(stage, load_model(str(tiny_model_dir), attn_implementation=attn), stage.store_names(),
                              "fp32", PartialState())
    assert stage.reference_info["cache_hit"] and fresh.keys() == stage.ref.keys()
    for name in fresh:
        torch.testing.assert_close(stage.ref[name], fresh[name], atol=1e-5, rtol=0)


def test_changed_template_or_pairs_invalidate_the_cache(tiny_model_dir, pair_file, tmp_path):
    def key(model_dir, path):
        stage = make_stage(model_dir, tmp_path, f"[{{path: {path}}}]")
        before = ref_cache.PASSES
        stage.prepare_model(load_model(str(model_dir)))
        return stage.reference_info["key"], ref_cache.PASSES - before

    base, _ = key(tiny_model_dir, pair_file)
    assert key(tiny_model_dir, pair_file) == (base, 0)
    other_template = tmp_path / "model"
    shutil.copytree(tiny_model_dir, other_template)
    tokenizer = load_tokenizer(str(other_template))
    tokenizer.chat_template = tokenizer.chat_template.replace("You are a helpful AI assistant", "You are an AI")
    tokenizer.save_pretrained(other_template)
    assert key(other_template, pair_file)[1] == 1
    edited = tmp_path / "pairs.jsonl"
    lines = pair_file.read_text().splitlines()
    edited.write_text("\n".join(lines[:-1]) + "\n")
    assert key(tiny_model_dir, edited)[1] == 1


def test_reward_accuracy_on_held_out_pairs_rises(tiny_model_dir, tmp_path):
    # Real task prompts with the builder's "malformed protocol" rejection (a chatty sentence instead of
    # the bare label): a pattern a 2-layer model can learn in a few steps and must generalise to
    # held-out items to score.
    from redone.sns import tasks as sns_tasks

    task = "Note-Hashtag-single"
    items = sns_tasks.load_items(DATA / "sns_bench" / "train" / f"{task}.json")[:96]
    path = tmp_path / "protocol_pairs.jsonl"
    with path.open("w") as handle:
        for item in items:
            gold = sns_tasks.answer_text(task, item)
            prompt = sns_tasks.prompt_messages(task, sns_tasks.clip_item(task, item, 300))
            handle.write(json.dumps({"prompt": prompt, "chosen": gold, "rejected": f"The best answer is {gold}."}) + "\n")
    sources = f"[{{path: {path}}}]"
    extra = {"data.seq_len": 256, "data.eval_holdout": 32, "train.max_steps": 12, "train.log_every": 6,
             "train.eval_every": 12, "train.save_every": 100, "optim.warmup_steps": 2}
    config = load_config("dpo", None, overrides(tiny_model_dir, tmp_path / "out", tmp_path / "cache", sources, **extra))
    run_training(config, DPOStage)
    stage = make_stage(tiny_model_dir, tmp_path, sources, **extra)
    start = load_model(str(tiny_model_dir))
    stage.prepare_model(start)
    before = stage.evaluate(start)
    # The loop's periodic eval logs the held-out metrics of the trained policy.
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    after = next(entry for entry in log if "eval_reward_accuracy/all" in entry)
    assert after["step"] == 12 and "eval_reward_margin/protocol_pairs" in after
    assert before["eval_pairs/all"] == after["eval_pairs/all"] == 32
    assert abs(before["eval_reward_margin/all"]) < 1e-3  # the policy is its own reference at the start
    assert after["eval_reward_accuracy/all"] >= 0.9 and after["eval_reward_margin/all"] > 0.1


def test_cli_runs_the_demo_config_and_reports_bad_pairs(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "chosen": "same", "rejected": "same"}) + "\n")
    base = [f"model.name_or_path={tiny_model_dir}", f"data.cache_dir={tmp_path / 'cache'}",
            "train.progress=false", "train.max_steps=2", "train.save_every=2", "train.micro_batch_size=2"]
    demo = str(REPO / "configs" / "dpo" / "demo.yaml")
    assert cli_main(["config", "show", "--stage", "dpo", "--config", demo]) == 0
    code = cli_main(["train", "--stage", "dpo", "--config", demo, f"output_dir={tmp_path / 'bad'}", *base,
                     f"data.sources=[{{path: {bad}}}]", "data.bad_pairs=error"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith(f"redone: error: {bad}:1: chosen and rejected are identical")
    code = cli_main(["train", "--stage", "dpo", "--config", demo, f"output_dir={tmp_path / 'ok'}", *base,
                     f"data.sources=[{{path: {HH_TEST}, limit: 8}}, {{path: {DATA}/sns_bench/train, "
                     "tasks: [Note-Gender], limit: 8}]", "data.seq_len=256"])
    assert code == 0 and (tmp_path / "ok" / "final" / "model.safetensors").exists()


def test_sampled_rejected_answers_are_scored_and_cached(tiny_model_dir, tmp_path):
    sources = f"[{{path: {DATA}/sns_bench/train, tasks: [Note-Gender], limit: 6}}]"
    extra = {"data.sample_rejected": 2, "data.sample_max_new_tokens": 6, "data.seq_len": 256}
    stage = make_stage(tiny_model_dir, tmp_path, sources, **extra)
    info = stage.source_info[0]
    assert info["kind_flipped"] == 6 and 1 <= info["kind_sampled"] <= 6  # random-model babble scores below gold
    assert info["pairs"] == 6 + info["kind_sampled"] and stage.rejected_sampler.model is None  # freed after building
    again = make_stage(tiny_model_dir, tmp_path, sources, **extra)
    assert again.source_info[0]["cache_hit"] and again.rejected_sampler.model is None  # cached: no model load
