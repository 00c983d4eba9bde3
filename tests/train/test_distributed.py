"""Scale-out on CPU: 2-process DDP (gloo) and DeepSpeed ZeRO-3 against one process, same global batch.

Each multi-process run is a real ``accelerate launch --config_file configs/accelerate/<x>.yaml
--num_processes 2`` of ``redone train`` through ``tests/_dist_backend_patch.py`` (test-only: the accelerate
backend patch that lets DeepSpeed run without a GPU, and a per-rank probe of what each process holds).

Same global batch: 1 process x grad_accum 2 vs 2 processes x grad_accum 1, micro batch 2 (DDP), and
2 processes x grad_accum 2 x micro batch 1 (ZeRO-3, so DeepSpeed's own 1/GAS scaling is exercised). The
loop draws world x micro rows per micro-step and rank r keeps rows r::world, so every layout sees the same
4 rows per optimizer step; only the summation order differs (fp32). Measured on this box: max |loss diff| 1.5e-6,
max |weight diff| 5e-6 (DDP and ZeRO-3 alike), grad-norm rel diff 1e-7 (DDP) / 3e-5 (DeepSpeed computes
its own norm). Asserted: losses within rel 1e-5, weights within 1e-4, grad norms within rel 1e-3, lr
equal (the lr schedule advancing once per process, a bug this test caught, doubles the lr decay; a wrong
1/GAS or 1/world factor doubles the grad norm).
Resume within the same engine and process count is asserted bitwise.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from redone.stages import load_config
from redone.train.cpt import CPTStage
from redone.train.loop import run_training
from tests.conftest import REPO, cpt_overrides

ACCEL = REPO / "configs" / "accelerate"
DSCONF = REPO / "configs" / "deepspeed"
STEPS = 4
LOSS_RTOL, WEIGHT_ATOL, GRAD_NORM_RTOL = 1e-5, 1e-4, 1e-3
# ZeRO-3 runs use grad_accum 2 x micro 1 x 2 processes (still 4 rows a step, the same rows): this
# exercises DeepSpeed's own 1/GAS loss scaling, which replaces accelerate's under DeepSpeed.
ZERO3_BATCH = (2, 1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def overrides(model_dir, out, cache, grad_accum, micro=2, **extra) -> list[str]:
    extra = {"train.save_every": 2, "train.grad_accum": grad_accum, "train.micro_batch_size": micro, **extra}
    return cpt_overrides(model_dir, out, cache, STEPS, **extra)


def launch(accelerate_yaml: str, args: list[str], probe: Path, *, env: dict | None = None,
           launch_args: tuple[str, ...] = (), stage: str = "cpt",
           command: tuple[str, ...] | None = None) -> subprocess.CompletedProcess:
    """``accelerate launch`` 2 processes of redone (via the test wrapper); fails the test on error."""
    run_env = dict(os.environ, REDONE_TEST_PROBE=str(probe), OMP_NUM_THREADS="1",
                   PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {}))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCEL / accelerate_yaml),
           "--num_processes", "2", "--main_process_port", str(free_port()), *launch_args,
           "-m", "tests._dist_backend_patch",
           *(command or ("train", "--stage", stage, "--config", os.devnull, *args, "train.threads=1"))]
    result = subprocess.run(cmd, cwd=REPO, env=run_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def probes(probe: Path) -> list[dict]:
    return [json.loads((probe / f"rank-{r}.json").read_text()) for r in range(2)]


def assert_same_curve(a: Path, b: Path, steps: int = STEPS) -> None:
    la, lb = log(a), log(b)
    assert [x["step"] for x in la] == [x["step"] for x in lb] == list(range(1, steps + 1))
    for x, y in zip(la, lb):
        assert x["loss"] == pytest.approx(y["loss"], rel=LOSS_RTOL), (x, y)
        assert x["lr"] == pytest.approx(y["lr"], rel=1e-12)  # one scheduler step per optimizer step
        # Adam hardly sees a constant gradient factor, so the pre-clip norm is what catches a wrong
        # 1/GAS or 1/world scaling (DeepSpeed's own norm differs from torch's by ~3e-5 relative).
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=GRAD_NORM_RTOL), (x, y)
        assert x["tokens_seen"] == y["tokens_seen"]


def assert_close_weights(a: Path, b: Path, atol: float = WEIGHT_ATOL, ignore: tuple[str, ...] = ()) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    for key in ignore:
        wa.pop(key, None), wb.pop(key, None)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst <= atol, worst


def assert_equal_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert wa[key].equal(wb[key]), key


def resume_copy(run: Path, target: Path, step: int) -> None:
    """A run dir as a job killed right after checkpoint ``step`` leaves it (no final/, later steps gone)."""
    shutil.copytree(run / "checkpoints" / f"step-{step}", target / "checkpoints" / f"step-{step}")
    shutil.copy(run / "config.yaml", target / "config.yaml")
    lines = [line for line in (run / "train_log.jsonl").read_text().splitlines() if json.loads(line)["step"] <= step]
    (target / "train_log.jsonl").write_text("".join(line + "\n" for line in lines))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("dist-cache"))


@pytest.fixture(scope="module")
def single(tiny_model_dir, tmp_path_factory, cache) -> Path:
    """The reference: one process, grad_accum 2 (global batch 4 rows)."""
    out = tmp_path_factory.mktemp("single") / "out"
    config = load_config("cpt", None, overrides(tiny_model_dir, out, cache, 2))
    run_training(config, CPTStage)
    return out


@pytest.fixture(scope="module")
def ddp(tiny_model_dir, tmp_path_factory, cache) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ddp")
    launch("ddp.yaml", overrides(tiny_model_dir, root / "out", cache, 1), root / "probe",
           env={"ACCELERATE_USE_CPU": "true"})
    return root / "out", root / "probe"


@pytest.fixture(scope="module")
def zero3(tiny_model_dir, tmp_path_factory, cache) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("zero3")
    launch("zero3.yaml", overrides(tiny_model_dir, root / "out", cache, *ZERO3_BATCH), root / "probe")
    return root / "out", root / "probe"


# ---------------------------------------------------------------- DDP (gloo)

def test_ddp_matches_single_process(single, ddp):
    out, probe = ddp
    assert all(p["distributed_type"] == "DistributedType.MULTI_CPU" and p["world"] == 2 for p in probes(probe))
    assert_same_curve(single, out)
    assert_close_weights(single / "final", out / "final")


def test_ddp_params_identical_across_ranks(ddp):
    _, probe = ddp
    rank0, rank1 = probes(probe)
    assert rank0["end"]["local_numel"] == rank0["end"]["full_numel"]  # DDP: every rank holds everything
    assert rank0["end"]["local_fingerprint"] == rank1["end"]["local_fingerprint"]


def test_ddp_resume_is_bitwise(tiny_model_dir, ddp, cache, tmp_path):
    full, _ = ddp
    out = tmp_path / "out"
    resume_copy(full, out, 2)
    result = launch("ddp.yaml", overrides(tiny_model_dir, out, cache, 1), tmp_path / "probe",
                    env={"ACCELERATE_USE_CPU": "true"})
    assert "resumed from" in result.stdout + result.stderr
    assert_equal_weights(full / "final", out / "final")
    assert [x["loss"] for x in log(out)] == [x["loss"] for x in log(full)]


# ---------------------------------------------------------------- DeepSpeed ZeRO-3

def test_zero3_builds_partitioned_under_zero_init(zero3, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    _, probe = zero3
    total = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    ranks = probes(probe)
    for rank in ranks:
        assert rank["distributed_type"] == "DistributedType.DEEPSPEED" and rank["zero_stage"] == 3
        # Right after from_pretrained: no rank holds any whole parameter (zero.Init built the shards).
        assert rank["built"] == {"local_numel": 0, "full_numel": total}
        # After training only params under stage3_param_persistence_threshold (the norms) are whole.
        assert rank["end"]["local_numel"] < total // 1000
        assert rank["end"]["shard_numel"] <= total // 2 + 1000
    assert sum(rank["end"]["shard_numel"] for rank in ranks) >= total


def test_zero3_matches_single_process(single, zero3):
    out, _ = zero3
    assert_same_curve(single, out)
    assert_close_weights(single / "final", out / "final")


def test_zero3_final_is_plain_and_equals_rank0_gather(zero3):
    from transformers import AutoModelForCausalLM

    from tests._dist_backend_patch import tensor_hash

    out, probe = zero3
    model = AutoModelForCausalLM.from_pretrained(out / "final")  # plain transformers, no DeepSpeed
    loaded = {k: tensor_hash(v) for k, v in model.state_dict().items()}
    gathered = probes(probe)[0]["gathered"]
    assert set(gathered) <= set(loaded) and "model.embed_tokens.weight" in gathered
    assert {k: loaded[k] for k in gathered} == gathered
    step = out / "checkpoints" / "step-4"
    assert {p.name for p in step.iterdir()} >= {"COMPLETE", "loop_state.json", "latest", "pytorch_model",
                                               "random_states_0.pkl", "random_states_1.pkl", "scheduler.bin"}
    assert sorted(p.name for p in (step / "pytorch_model").iterdir()) == [
        f"zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt" for r in range(2) for kind in ("model", "optim")]
    lineage = json.loads((out / "final" / "redone.json").read_text())
    assert lineage["start_fingerprint"] is None  # no rank holds the whole starting weights under ZeRO-3


def test_zero3_resume_is_bitwise(tiny_model_dir, zero3, cache, tmp_path):
    full, _ = zero3
    out = tmp_path / "out"
    resume_copy(full, out, 2)
    result = launch("zero3.yaml", overrides(tiny_model_dir, out, cache, *ZERO3_BATCH), tmp_path / "probe")
    assert "resumed from" in result.stdout + result.stderr
    assert_equal_weights(full / "final", out / "final")
    assert [x["loss"] for x in log(out)] == [x["loss"] for x in log(full)]


def test_zero3_cpu_offload_smoke(tiny_model_dir, single, cache, tmp_path):
    """The shipped offload config; only zero_force_ds_cpu_optimizer=false is added so DeepSpeed keeps
    redone's torch AdamW instead of JIT-compiling CPUAdam (~40 s) -- the update rule is then identical."""
    ds = json.loads((DSCONF / "zero3_offload.json").read_text())
    ds["zero_force_ds_cpu_optimizer"] = False
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    out = tmp_path / "out"
    launch("zero3_offload.yaml", overrides(tiny_model_dir, out, cache, *ZERO3_BATCH, **{"train.max_steps": 2}),
           tmp_path / "probe", launch_args=("--deepspeed_config_file", str(tmp_path / "ds.json")))
    assert probes(tmp_path / "probe")[0]["built"]["local_numel"] == 0
    assert [x["loss"] for x in log(out)] == pytest.approx([x["loss"] for x in log(single)[:2]], rel=LOSS_RTOL)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "final").config.num_hidden_layers == 2


def test_zero2_matches_single_process(tiny_model_dir, single, cache, tmp_path):
    out = tmp_path / "out"
    launch("zero2.yaml", overrides(tiny_model_dir, out, cache, *ZERO3_BATCH), tmp_path / "probe")
    rank0 = probes(tmp_path / "probe")[0]
    assert rank0["zero_stage"] == 2 and rank0["built"]["local_numel"] == rank0["built"]["full_numel"]
    assert_same_curve(single, out)
    # ZeRO-1/2's state dict is cloned tensor by tensor (accelerate), so save_pretrained no longer sees
    # the tied LM head as shared and writes it too: a duplicate of the embedding, not a different weight.
    extra = load_file(out / "final" / "model.safetensors")
    assert extra.pop("lm_head.weight").equal(extra["model.embed_tokens.weight"])
    assert_close_weights(single / "final", out / "final", ignore=("lm_head.weight",))

# ---------------------------------------------------------------- configs, auto values, attention

def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import ClusterConfig

    expected = {"cpu": "NO", "ddp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED",
                "zero3_offload": "DEEPSPEED", "fsdp2": "FSDP", "multinode": "DEEPSPEED"}
    assert {p.stem for p in ACCEL.glob("*.yaml")} == set(expected)
    for name, kind in expected.items():
        config = ClusterConfig.from_yaml_file(str(ACCEL / f"{name}.yaml"))
        assert config.distributed_type.value == kind, name
        if kind == "DEEPSPEED":
            ds_file = REPO / config.deepspeed_config["deepspeed_config_file"]
            stage = json.loads(ds_file.read_text())["zero_optimization"]["stage"]
            assert config.deepspeed_config["zero3_init_flag"] == (stage == 3), name
    assert ClusterConfig.from_yaml_file(str(ACCEL / "fsdp2.yaml")).fsdp_config["fsdp_version"] == 2
    assert ClusterConfig.from_yaml_file(str(ACCEL / "multinode.yaml")).num_machines > 1


def auto_keys(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from auto_keys(value, f"{prefix}{key}.")
        elif value == "auto":
            yield prefix + key


@pytest.mark.parametrize("name", ["zero2", "zero3", "zero3_offload"])
def test_deepspeed_auto_values_all_filled(name, tiny_model_dir):
    from redone.distributed import fill_auto, redone_values

    ds = json.loads((DSCONF / f"{name}.json").read_text())
    assert list(auto_keys(ds)), "the shipped configs leave batch/clipping/precision to redone"
    config = load_config("cpt", None, cpt_overrides(tiny_model_dir, "/tmp/unused", "/tmp/unused", 4,
                                                    **{"train.grad_accum": 3, "optim.max_grad_norm": 0.5}))
    assert fill_auto(ds, redone_values(config, world_size=8, hidden_size=64, bf16=True)) == []
    assert list(auto_keys(ds)) == []
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 2 * 3 * 8 and ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] is True
    if ds["zero_optimization"]["stage"] == 3:
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_deepspeed_contradictions_are_refused(tiny_model_dir):
    from redone.distributed import check_zero3_gather, fill_auto, redone_values
    from redone.errors import ConfigError

    config = load_config("cpt", None, cpt_overrides(tiny_model_dir, "/tmp/unused", "/tmp/unused", 4))
    values = redone_values(config, world_size=2, hidden_size=64, bf16=False)
    ds = {"gradient_accumulation_steps": 8, "gradient_clipping": 1.0, "bf16": {"enabled": True},
          "zero_optimization": {"stage": 3, "reduce_bucket_size": 12345}}
    problems = fill_auto(ds, values)
    assert len(problems) == 2 and "gradient_accumulation_steps=8" in problems[0] and "bf16.enabled" in problems[1]
    assert ds["zero_optimization"]["reduce_bucket_size"] == 12345  # explicit tuning knobs are kept
    assert "stage3_prefetch_bucket_size" not in ds["zero_optimization"]  # omitted ones keep DeepSpeed's
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["train_batch_size"] == 8  # batch keys added
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    with pytest.raises(ConfigError, match="stage3_gather_16bit"):
        check_zero3_gather({"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": False}})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_flash_attention_request_without_cuda_raises():
    from redone.errors import RedoneError
    from redone.model import choose_attention

    assert choose_attention("auto") == "sdpa"
    with pytest.raises(RedoneError, match="flash_attention_2 needs CUDA"):
        choose_attention("flash_attention_2")


def test_flash_attention_uses_the_flat_varlen_layout(tiny_model_dir):
    from types import SimpleNamespace

    from redone.train.loop import batch_layout

    config = load_config("cpt", None, cpt_overrides(tiny_model_dir, "/tmp/unused", "/tmp/unused", 4))
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    sdpa = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa"))
    assert batch_layout(config, flash) == "flat" and batch_layout(config, sdpa) == "rows"


def test_lora_under_zero3_matches_single_process(tiny_model_dir, cache, tmp_path):
    """LoRA + ZeRO-3: the adapter is cut from the gathered state dict and the merge reloads the base whole
    (the live modules are shards) -- both must equal the single-process LoRA run."""
    lora = {"model.lora.enabled": "true", "model.lora.r": 4}
    single_out = tmp_path / "single"
    run_training(load_config("cpt", None, overrides(tiny_model_dir, single_out, cache, 2, **lora)), CPTStage)
    out = tmp_path / "zero3"
    launch("zero3.yaml", overrides(tiny_model_dir, out, cache, *ZERO3_BATCH, **lora), tmp_path / "probe")
    assert probes(tmp_path / "probe")[0]["end"]["trainable"] == 8704  # adapter weights only (see test_lora)
    assert_same_curve(single_out, out)
    assert_close_weights(single_out / "final", out / "final")
    a = load_file(single_out / "adapter" / "adapter_model.safetensors")
    b = load_file(out / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= WEIGHT_ATOL


def test_dpo_under_zero3_matches_single_process(tiny_model_dir, tmp_path):
    """The DPO reference pass runs before the engine exists: under ZeRO-3 the zero.Init shards are gathered
    whole for it. Same reference table (same cache key: the fingerprint is of the whole weights) and the
    same loss curve as one process; each run computes its own reference (separate caches)."""
    from redone.train.dpo import DPOStage
    from tests.conftest import DATA

    def items(out, cache, micro, accum):
        return [f"{k}={v}" for k, v in {
            "output_dir": out, "model.name_or_path": tiny_model_dir, "data.cache_dir": cache,
            "data.sources": f"[{{name: hh, path: {DATA}/preference/hh_rlhf_harmless_test.jsonl, limit: 8}}]",
            "data.seq_len": 512, "train.max_steps": 2, "train.micro_batch_size": micro, "train.grad_accum": accum,
            "train.log_every": 1, "train.save_every": 2, "train.progress": "false", "optim.lr": 1e-3}.items()]

    run_training(load_config("dpo", None, items(tmp_path / "single", tmp_path / "c1", 2, 2)), DPOStage)
    launch("zero3.yaml", items(tmp_path / "zero3", tmp_path / "c2", 1, 2), tmp_path / "probe", stage="dpo")
    assert probes(tmp_path / "probe")[0]["built"]["local_numel"] == 0
    (ref1,), (ref2,) = (list((tmp_path / c / "ref_logps").glob("*.safetensors")) for c in ("c1", "c2"))
    assert ref1.name == ref2.name
    a, b = load_file(ref1), load_file(ref2)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert_same_curve(tmp_path / "single", tmp_path / "zero3", steps=2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_liger_kernels_request_without_cuda_raises(tiny_model_dir):
    from redone.errors import RedoneError
    from redone.model import apply_liger_kernels, load_model

    with pytest.raises(RedoneError, match="liger_kernels: needs CUDA"):
        apply_liger_kernels(load_model(str(tiny_model_dir)))


@pytest.mark.slow  # ~75 s: three stages, each tokenizing into a fresh cache
def test_pipeline_chains_stages_under_zero3(tiny_model_dir, tmp_path):
    """``accelerate launch ... -m redone pipeline``: all stages in the same 2 processes under ZeRO-3 (the
    process group survives between stages; each stage refills the DeepSpeed "auto"s from its own config)."""
    root = tmp_path / "runs"
    args = [f"output_root={root}", f"model.name_or_path={tiny_model_dir}", "eval.enabled=false"]
    for stage in ("cpt", "sft", "dpo"):
        args += [f"{stage}.train.max_steps=2", f"{stage}.train.progress=false", f"{stage}.train.threads=1",
                 f"{stage}.train.micro_batch_size=1", f"{stage}.data.cache_dir={tmp_path / 'cache'}"]
    args += ["sft.model.freeze_bottom_layers=0", "sft.train.grad_accum=2", "dpo.data.seq_len=512"]
    launch("zero3.yaml", [], tmp_path / "probe",
           command=("pipeline", "--config", str(REPO / "configs" / "pipeline" / "demo.yaml"), *args))
    from transformers import AutoModelForCausalLM

    for stage in ("cpt", "sft", "dpo"):
        lineage = json.loads((root / stage / "final" / "redone.json").read_text())
        assert lineage["steps"] == 2 and lineage["stage"] == stage
        assert AutoModelForCausalLM.from_pretrained(root / stage / "final").config.num_hidden_layers == 2
    assert json.loads((root / "sft" / "final" / "redone.json").read_text())["parent_path"] == str(root / "cpt" / "final")
