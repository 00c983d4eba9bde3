"""RL stage (GRPO / DAPO): loss and gradients equal TRL 1.16's GRPOTrainer, advantages and shaping, seeded
sampling, exact resume, learning a verifiable task from chance, and the bad-input refusals."""

from __future__ import annotations

import json
import math
import tempfile

import pytest
import torch
from safetensors.torch import load_file

from redone.errors import ConfigError, RedoneError
from redone.stages import load_config
from redone.train import rl as rl_mod
from redone.train.loop import run_training
from redone.train.rl import GenerationBatch, RLStage, Rollout
from tests.conftest import DATA

SNS_SOURCE = f"{{path: {DATA}/sns_bench/train, tasks: [Note-Gender, Note-QueryCorr-explain], limit: 6}}"
TRANS_SOURCE = f"{{path: {DATA}/sns_transbench/train.json, limit: 8}}"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model's ops are too small to share between threads: on a busy 2-core box two threads
    only wait on each other (the learning test took 10x longer with 2)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rl_overrides(model_dir, out, **extra) -> list[str]:
    items = {
        "output_dir": str(out), "model.name_or_path": str(model_dir), "data.seq_len": 512,
        "data.max_prompt_chars": 120, "train.max_steps": 4, "train.micro_batch_size": 8, "train.grad_accum": 1,
        "train.log_every": 1, "train.save_every": 2, "train.progress": "false", "rl.group_size": 4,
        "rl.max_new_tokens": 6, "optim.lr": 1e-3, "data.sources": f"[{SNS_SOURCE}]",
    }
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


def rl_config(model_dir, out, **extra):
    return load_config("rl", None, rl_overrides(model_dir, out, **extra))


# ---------------------------------------------------------------- parity with TRL


def fixed_rollouts(stage: RLStage, tokenizer) -> list[Rollout]:
    """2 prompts x 4 completions of 1..6 tokens (some end in <|im_end|>, some hit the budget), fixed rewards."""
    gen = torch.Generator().manual_seed(0)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompts = [stage.data.prompts[0][0], stage.data.prompts[0][1]]
    rewards = [1.0, 0.0, 0.5, 0.0, 0.2, 0.9, 0.9, 0.1]
    rollouts = []
    for k in range(8):
        ids = torch.randint(100, 5000, (1 + k % 6,), generator=gen).tolist()
        if k % 3:
            ids[-1] = end
        rollouts.append(Rollout(prompts[k // 4], ids, "", k % 3 == 0, [rewards[k]], rewards[k]))
    rl_mod.set_advantages(rollouts, 4, stage.scale_rewards)
    return rollouts


def trl_inputs(rollouts, pad_id, old, ref=None) -> dict:
    """TRL's layout: left-padded prompts, right-padded completions and masks, per-token extras padded with 0."""
    width_p = max(len(r.prompt.ids) for r in rollouts)
    width_c = max(len(r.completion) for r in rollouts)

    def right(rows, value):
        return torch.tensor([list(row) + [value] * (width_c - len(row)) for row in rows])

    inputs = {
        "prompt_ids": torch.tensor([[pad_id] * (width_p - len(r.prompt.ids)) + r.prompt.ids for r in rollouts]),
        "prompt_mask": torch.tensor([[0] * (width_p - len(r.prompt.ids)) + [1] * len(r.prompt.ids) for r in rollouts]),
        "completion_ids": right([r.completion for r in rollouts], pad_id),
        "completion_mask": right([[1] * len(r.completion) for r in rollouts], 0),
        "advantages": torch.tensor([r.advantage for r in rollouts]),
        "old_per_token_logps": right([o.tolist() for o in old], 0.0).float(),
    }
    inputs["num_items_in_batch"] = inputs["completion_mask"].sum()
    if ref is not None:
        inputs["ref_per_token_logps"] = right([x.tolist() for x in ref], 0.0).float()
    return inputs


@pytest.fixture(scope="module")
def trl_trainer(tiny_model_dir, tokenizer):
    """The real GRPOTrainer on the tiny model (CPU, fp32); each test sets its loss type and beta."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from redone.model import load_model

    args = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=6, loss_type="dapo", beta=0.0, epsilon=0.2, epsilon_high=0.28,
                      temperature=0.9, bf16=False, use_cpu=True, report_to=[], disable_dropout=True)
    trainer = GRPOTrainer(model=load_model(str(tiny_model_dir), attn_implementation="sdpa"),
                          reward_funcs=[lambda completions, **_: [0.0] * len(completions)], args=args,
                          train_dataset=Dataset.from_dict({"prompt": ["x"] * 8}), processing_class=tokenizer)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's own loop: one micro-batch per step
    trainer.model.train()
    return trainer


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss_type,beta", [("grpo", 0.0), ("dapo", 0.0), ("dr_grpo", 0.0), ("dapo", 0.04)])
def test_loss_and_gradients_match_trl(tiny_model_dir, tokenizer, trl_trainer, tmp_path, loss_type, beta):
    """Second update of a generation batch (old log-probs differ from the policy's, so the clip acts),
    KL off and on: our packed-row loss and every gradient equal TRL's _compute_loss on padded rows."""
    from redone.model import load_model, training_attention

    config = rl_config(tiny_model_dir, tmp_path / "out", **{
        "rl.loss_type": loss_type, "rl.kl_beta": beta, "rl.temperature": 0.9, "rl.updates_per_batch": 2,
        "train.log_every": 2})
    stage = RLStage(config, tokenizer)
    ours = load_model(str(tiny_model_dir), attn_implementation=training_attention("auto", True))
    stage.prepare_model(ours)
    rollouts = fixed_rollouts(stage, tokenizer)
    gen = torch.Generator().manual_seed(1)
    ref = [torch.randn(len(r.completion), generator=gen) * 0.3 - 10.0 for r in rollouts]
    for rollout, values in zip(rollouts, ref):
        rollout.ref_logps = values
    stage.batch, stage.served = GenerationBatch(rollouts, {}), 0

    first = stage.next_batch(0, 1)  # update 1: ratio exactly 1, records the sampling policy's log-probs
    assert len(first["segments"]) == 8 and first["input_ids"].shape[0] < 8  # really packed
    with torch.no_grad():
        stage.loss(ours, first)
    old = [r.old_logps + torch.randn(len(r.completion), generator=gen) * 0.3 for r in rollouts]
    for rollout, values in zip(rollouts, old):
        rollout.old_logps = values
    second = stage.next_batch(0, 1)
    assert second["update"] == 1
    out = stage.loss(ours, second)
    (out.loss_sum / out.units).backward()

    trainer = trl_trainer
    trainer.loss_type, trainer.beta, trainer.max_completion_length = loss_type, beta, stage.max_answer
    trainer.model.zero_grad(set_to_none=True)
    theirs = trainer._compute_loss(trainer.model, trl_inputs(rollouts, tokenizer.pad_token_id, old,
                                                             ref if beta else None))
    theirs.backward()
    loss_diff = abs(float(out.loss_sum.detach() / out.units) - float(theirs.detach()))
    a, b = grads(ours), grads(trainer.model)
    assert a.keys() == b.keys()
    grad_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"parity {loss_type} beta={beta}: |loss diff| {loss_diff:.2e}, max |grad diff| {grad_diff:.2e}")
    assert loss_diff <= 1e-5 and grad_diff <= 1e-5
    clip = trainer._metrics["train"]["clip_ratio/region_mean"][-1]
    tag = out.tags[stage.source_names[0]]
    assert tag[rl_mod.F_["clipped"]] / tag[rl_mod.F_["trained_tokens"]] == pytest.approx(clip, abs=1e-6)
    assert clip > 0.1  # the perturbed old log-probs really do clip tokens


# ---------------------------------------------------------------- advantages, shaping, sampling


def test_group_advantages_golden():
    rollouts = [Rollout(None, [1], "", False, [r], r) for r in (1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5)]
    rl_mod.set_advantages(rollouts, 4, "group")
    std = math.sqrt(1 / 3 * (0.75 ** 2 + 3 * 0.25 ** 2))  # unbiased std of [1, 0, 0, 0] = 0.5
    assert [r.advantage for r in rollouts][:4] == pytest.approx([0.75 / (std + 1e-4)] + [-0.25 / (std + 1e-4)] * 3)
    assert [r.advantage for r in rollouts][4:] == [0.0] * 4
    rl_mod.set_advantages(rollouts, 4, "none")  # Dr. GRPO: no division by the std
    assert [r.advantage for r in rollouts][:4] == pytest.approx([0.75, -0.25, -0.25, -0.25])
    assert rl_mod.has_signal(rollouts[:4]) and not rl_mod.has_signal(rollouts[4:])
    assert rl_mod.resolve_scale_rewards("auto", "dr_grpo") == "none"
    assert rl_mod.resolve_scale_rewards("auto", "dapo") == "group"


def test_soft_overlong_penalty_golden():
    from redone.config.schema import RLSection

    rl = RLSection(overlong_buffer=0.25, overlong_penalty=1.0)
    # budget 16, buffer 4: free up to 12 tokens, then -1/4 per token down to -1 at the budget.
    assert [rl_mod.overlong_penalty(n, 16, rl) for n in (1, 12, 13, 14, 16)] == [0.0, 0.0, -0.25, -0.5, -1.0]
    assert rl_mod.overlong_penalty(4, 4, rl) == -1.0  # a 4-token Yes/No budget: buffer of 1 token
    assert rl_mod.overlong_penalty(3, 4, rl) == 0.0


def test_sampling_is_seeded_and_top_k_1_is_greedy(tiny_model_dir, tokenizer):
    from redone.eval.generate import HFGenerator, Request, Sampling
    from redone.model import load_model

    model = load_model(str(tiny_model_dir), attn_implementation="sdpa")
    with torch.no_grad():  # large weights: the output depends on the prompt and on the draw
        rng = torch.Generator().manual_seed(0)
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.copy_(torch.randn(param.shape, generator=rng) * 0.5)
    requests = [Request(f"k{i}", [{"role": "user", "content": text}], 6) for i, text in enumerate(["Hi", "Tell me"])]

    def sample(seed, **kw):
        gen = HFGenerator(model, tokenizer, batch_size=4, progress=False, sampling=Sampling(n=3, **kw),
                          rng=torch.Generator().manual_seed(seed))
        return [(g.key, g.token_ids) for g in gen.generate(requests)]

    first, again, other = sample(1), sample(1), sample(2)
    assert first == again and first != other
    assert [k for k, _ in first] == ["k0#0", "k0#1", "k0#2", "k1#0", "k1#1", "k1#2"]
    assert len({tuple(ids) for _, ids in first}) > 2  # samples differ within a prompt
    greedy = HFGenerator(model, tokenizer, batch_size=4, progress=False).generate(requests)
    assert [ids for _, ids in sample(3, top_k=1)] == [g.token_ids for g in greedy for _ in range(3)]


# ---------------------------------------------------------------- end to end: resume, checkpoints, logs


def run(tiny_model_dir, out, **extra):
    sources = f"[{SNS_SOURCE}, {TRANS_SOURCE}]"
    config = rl_config(tiny_model_dir, out, **{"data.sources": sources, "rl.updates_per_batch": 2,
                                               "train.log_every": 2, "train.eval_every": 2,
                                               "data.eval_holdout": 1, **extra})
    return run_training(config, RLStage)


def log_lines(out) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rl") / "out"
    return out, run(tiny_model_dir, out)


def test_resume_is_bitwise_identical(tiny_model_dir, uninterrupted, tmp_path):
    full_out, full_final = uninterrupted
    out = tmp_path / "out"
    assert run(tiny_model_dir, out, **{"train.stop_after_steps": 2}) is None
    final = run(tiny_model_dir, out)
    a, b = load_file(full_final / "model.safetensors"), load_file(final / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)

    def untimed(path):
        return [{k: v for k, v in line.items() if k != "tokens_per_s"} for line in log_lines(path)]

    assert untimed(out) == untimed(full_out) and len(untimed(out)) == 4  # 2 train + 2 eval lines


def test_logs_lineage_and_checkpoint_state(uninterrupted):
    out, final = uninterrupted
    lines = log_lines(out)
    train = [line for line in lines if "loss" in line]
    evals = [line for line in lines if "eval_reward/mean" in line]
    assert [line["step"] for line in train] == [2, 4] and [line["step"] for line in evals] == [2, 4]
    tasks = ["Note-Gender", "Note-QueryCorr-explain", "TransBench-zh2en"]  # the first 8 TransBench items are zh2en
    for key in ("reward", "reward_std", "kept", "length", "clip_frac", "reward_task", "groups", "loss"):
        assert any(f"{key}/{t}" in train[-1] for t in tasks), key
    assert all(f"eval_reward/{t}" in evals[0] and 0 <= evals[0][f"eval_reward/{t}"] <= 1 for t in tasks)
    assert max(v for k, v in train[-1].items() if k.startswith("length/")) <= 6  # rl.max_new_tokens
    lineage = json.loads((final / "redone.json").read_text())
    assert lineage["stage"] == "rl" and [s["name"] for s in lineage["data_sources"]] == tasks
    assert [s["held_out"] for s in lineage["data_sources"]] == [1, 1, 1]
    state = json.loads((out / "checkpoints" / "step-4" / "loop_state.json").read_text())
    assert set(state["data"]) == {"drawer", "rounds", "open_batch"} and state["data"]["open_batch"] is False


# ---------------------------------------------------------------- learning a verifiable task from chance

LETTERS = "ABCD"


def say_letter_user(item: dict) -> str:
    return "Letter: " + " ".join([item["letter"]] * 16)  # repeated: a random 2-layer net "hears" it


@pytest.fixture()
def say_letter(tmp_path):
    """A synthetic verifiable task: answer with the letter the prompt names (reward: exact match)."""
    from redone.sns.tasks import Task, register_task, unregister_task

    register_task(Task(name="SayLetter", family="Synthetic", max_new_tokens=3, system="Reply with the letter.",
                       user=say_letter_user, fields=("letter",)))
    path = tmp_path / "letters.jsonl"
    path.write_text("".join(json.dumps({"letter": x, "answer": x}) + "\n" for _ in range(16) for x in LETTERS))
    yield path
    unregister_task("SayLetter")


def chance_level_model(out_dir):
    """A random 2-layer Llama whose LM head alone was fitted to answer "<random letter><|im_end|>": it
    answers in the task's format at chance (1/4) and its backbone still tells the prompts apart."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from redone.data.chat import render
    from redone.model import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         tie_word_embeddings=False, initializer_range=0.3, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    letters = [tok(x, add_special_tokens=False)["input_ids"][0] for x in LETTERS]
    hidden, targets = [], []
    with torch.no_grad():
        for x in LETTERS:
            messages = [{"role": "system", "content": "Reply with the letter."},
                        {"role": "user", "content": say_letter_user({"letter": x})}]
            prompt = tok(render(tok, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
            for answer in letters:  # every letter after every prompt: the head cannot learn the task
                states = model.model(input_ids=torch.tensor([prompt + [answer]])).last_hidden_state[0]
                hidden += [states[-2], states[-1]]
                targets += [answer, end]
    hidden, targets = torch.stack(hidden), torch.tensor(targets)
    optimizer = torch.optim.AdamW(model.lm_head.parameters(), lr=3e-2)
    for _ in range(100):
        torch.nn.functional.cross_entropy(model.lm_head(hidden), targets).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def test_learns_a_verifiable_task_from_chance(say_letter, tmp_path):
    from redone.data.rl import build_rl_data
    from redone.model import load_model, load_tokenizer
    from redone.sns.rewards import resolve_rewards

    start = chance_level_model(tmp_path / "start")
    config = load_config("rl", None, [
        f"output_dir={tmp_path / 'out'}", f"model.name_or_path={start}", "data.seq_len=64",
        f"data.sources=[{{path: {say_letter}, task: SayLetter}}]", "train.max_steps=20",
        "train.micro_batch_size=32", "train.log_every=2", "train.save_every=20", "train.progress=false",
        "rl.group_size=8", "optim.lr=5e-4", "optim.scheduler=constant"])
    final = run_training(config, RLStage)
    curve = [line["reward_task/letters"] for line in log_lines(tmp_path / "out")]
    print("reward per 2 steps:", [round(x, 3) for x in curve])
    assert curve[0] <= 0.45  # chance is 0.25
    assert curve[-1] >= 0.9
    # Greedy answers of the trained policy, one prompt per letter: all right.
    tok = load_tokenizer(str(final))
    one_each = {p.item["letter"]: p for p in build_rl_data(config, tok).prompts[0]}
    metrics = rl_mod.held_out_rewards(load_model(str(final), attn_implementation="sdpa"), tok,
                                      {"letters": [one_each[x] for x in LETTERS]}, resolve_rewards(["task"]), 4)
    assert metrics["eval_reward/letters"] == 1.0


# ---------------------------------------------------------------- bad input


def test_group_size_one_is_refused_with_the_reason(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"rl.group_size: must be >= 2 .*advantage 0"):
        rl_config(tiny_model_dir, tmp_path, **{"rl.group_size": 1})


def test_batch_must_hold_whole_groups(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="multiple of rl.group_size"):
        rl_config(tiny_model_dir, tmp_path, **{"train.micro_batch_size": 6})


def test_checkpoints_must_fall_on_batch_boundaries(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"train.save_every: must be a multiple of rl.updates_per_batch"):
        rl_config(tiny_model_dir, tmp_path, **{"rl.updates_per_batch": 2, "train.save_every": 3,
                                               "train.log_every": 2})


def test_unknown_reward_name_did_you_mean(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown reward 'formt'; did you mean 'format'"):
        rl_config(tiny_model_dir, tmp_path, **{"rl.rewards": "[task, formt]"})


def test_failing_reward_function_names_function_and_item(tiny_model_dir, tokenizer, tmp_path):
    config = rl_config(tiny_model_dir, tmp_path / "out", **{"rl.rewards": "[task, tests.sns.test_rewards:always_nan]"})
    stage = RLStage(config, tokenizer)
    from redone.model import load_model

    stage.prepare_model(load_model(str(tiny_model_dir), attn_implementation="sdpa"))
    with pytest.raises(RedoneError, match=r"reward 'tests.sns.test_rewards:always_nan' on item \(Note-Gender, \d+\) "
                                          r"returned NaN"):
        stage.next_batch(0, 1)


def test_vllm_backend_without_vllm_says_so(tiny_model_dir, tokenizer, tmp_path):
    import importlib.util

    if importlib.util.find_spec("vllm"):
        pytest.skip("vllm is installed here")
    config = rl_config(tiny_model_dir, tmp_path / "out", **{"rl.backend": "vllm"})
    with pytest.raises(RedoneError, match=r"rl.backend: 'vllm' needs the vllm package"):
        rl_mod.make_backend(config, tokenizer, None)


def test_mid_batch_checkpoint_is_refused(tiny_model_dir, tokenizer, tmp_path):
    stage = RLStage(rl_config(tiny_model_dir, tmp_path / "out"), tokenizer)
    state = stage.state_dict()
    assert state["open_batch"] is False
    with pytest.raises(RedoneError, match="middle of a generation batch"):
        stage.load_state_dict(dict(state, open_batch=True))


# ---------------------------------------------------------------- the data path (redone/data/rl.py)


def test_prompts_are_the_eval_prompts_and_the_drawer_resumes(tiny_model_dir, tokenizer, tmp_path):
    from redone.data.rl import build_rl_data
    from redone.eval.generate import render_prompt
    from redone.sns.tasks import clip_item, prompt_messages

    config = rl_config(tiny_model_dir, tmp_path, **{"data.eval_holdout": 2,
                                                    "data.sources": f"[{SNS_SOURCE}, {TRANS_SOURCE}]"})
    data = build_rl_data(config, tokenizer)
    assert data.names == ["Note-Gender", "Note-QueryCorr-explain", "TransBench-zh2en"]
    assert [c["items"] for c in data.components] == [4, 4, 6] and [c["held_out"] for c in data.components] == [2, 2, 2]
    assert sum(c["planned_share"] for c in data.components) == pytest.approx(1.0)
    prompt = data.prompts[0][0]
    messages = prompt_messages("Note-Gender", clip_item("Note-Gender", prompt.item, 120), "redone")
    assert prompt.ids == tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    assert prompt.budget == 4 and data.prompts[2][0].budget == 6  # task budget, capped by rl.max_new_tokens
    held = {p.index for p in data.held_out_prompts["Note-Gender"]}
    assert held.isdisjoint(p.index for p in data.prompts[0])
    first = [data.drawer.next() for _ in range(5)]
    state = json.loads(json.dumps(data.drawer.state_dict()))
    after = [(p.component, p.index) for p in (data.drawer.next() for _ in range(7))]
    again = build_rl_data(config, tokenizer).drawer
    again.load_state_dict(state)
    assert [(p.component, p.index) for p in (again.next() for _ in range(7))] == after and len(first) == 5


def test_user_jsonl_task_file_and_its_errors(tiny_model_dir, tokenizer, tmp_path):
    from redone.data.rl import build_rl_data
    from redone.errors import DataError

    task = tmp_path / "yes_or_no.yaml"
    task.write_text("name: YesOrNo\nfamily: Synthetic\nmax_new_tokens: 3\nsystem: Answer Yes or No.\n"
                    "user: \"Is {thing} a fruit?\"\n")
    records = tmp_path / "fruit.jsonl"
    records.write_text('{"thing": "an apple", "answer": "Yes"}\n{"thing": "a chair", "answer": "No"}\n')
    config = rl_config(tiny_model_dir, tmp_path / "o", **{"data.sources": f"[{{path: {records}, task: {task}}}]",
                                                          "train.micro_batch_size": 4})
    data = build_rl_data(config, tokenizer)
    assert data.names == ["fruit"] and data.components[0]["task"] == "YesOrNo"
    assert [p.item["thing"] for p in data.prompts[0]] == ["an apple", "a chair"]
    from redone.sns.rewards import task_reward

    assert task_reward("Yes", data.prompts[0][0].item, "YesOrNo") == 1.0  # exact match for user tasks
    assert task_reward("No", data.prompts[0][0].item, "YesOrNo") == 0.0
    records.write_text('{"thing": "an apple", "answer": "Yes"}\n{"answer": "No"}\n')
    with pytest.raises(DataError, match=rf"{records}:2: missing field 'thing'"):
        build_rl_data(config, tokenizer)
    no_task = rl_config(tiny_model_dir, tmp_path / "o", **{"data.sources": f"[{{path: {records}}}]"})
    with pytest.raises(DataError, match="set task: in this source"):
        build_rl_data(no_task, tokenizer)
    chat = rl_config(tiny_model_dir, tmp_path / "o", **{
        "data.sources": f"[{{path: {DATA}/preference/hh_rlhf_harmless_train.jsonl, format: hh_rlhf}}]"})
    with pytest.raises(DataError, match="format 'hh_rlhf' has no gold answers to reward"):
        build_rl_data(chat, tokenizer)
    from redone.sns.tasks import unregister_task

    unregister_task("YesOrNo")


def test_overlong_prompts_are_dropped_and_counted_or_refused(tiny_model_dir, tokenizer, tmp_path):
    from redone.data.rl import build_rl_data
    from redone.errors import DataError

    config = rl_config(tiny_model_dir, tmp_path, **{"data.seq_len": 170, "data.max_prompt_chars": 400})
    data = build_rl_data(config, tokenizer)
    dropped = [c["dropped_overlong"] for c in data.components]
    assert dropped == [4, 0] and all(len(p.ids) + p.budget <= 170 for ps in data.prompts for p in ps)
    with pytest.raises(DataError, match=r"Note-\w+.json:\d+: prompt of \d+ tokens \+ answer budget 4 exceeds "
                                        r"data.seq_len=170"):
        build_rl_data(rl_config(tiny_model_dir, tmp_path, **{"data.seq_len": 170, "data.max_prompt_chars": 400,
                                                             "data.overlong": "error"}), tokenizer)
