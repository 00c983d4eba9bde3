"""The one training loop (cpt, sft and dpo differ only in their Stage: batches -> loss).

Features
- accelerate underneath: single process, DDP, DeepSpeed ZeRO-2/3 and FSDP2 via ``accelerate launch``;
  nothing here touches whole parameters on one process except through accelerate (clip, save, gather).
- Gradient accumulation weighted by real units (tokens, or pairs for dpo): every micro-batch's loss
  sum is divided by the step's global unit count, so a step equals one big batch however it is split
  across micro-batches and processes.
- AdamW, warmup + cosine/linear/constant, grad clipping, bf16 autocast (CUDA default), fp32 (CPU
  default) or ``bf16-master`` (bf16 weights, fp32 master weights in the optimizer: no autocast casts),
  optional gradient checkpointing and LoRA.
- Logs loss, lr, grad-norm, tokens/s and per-source/task token counts and losses to the console
  (progress bar), ``output_dir/train_log.jsonl`` and wandb/tensorboard (``tracking.report_to``).
- Checkpoints every ``save_every`` steps (see checkpoint.py); exact resume restores model, optimizer,
  scheduler, RNG and the data position in O(1). ``final/`` is a plain ``save_pretrained`` dir.

Resume and restart rules (checked before any data or model is loaded)
- ``output_dir`` must be writable (not a file, not under a file, not read-only): probed first.
- Resume takes the newest intact checkpoint (a damaged newest one is skipped, saying so).
- A key that changes the weights (data order, optimizer, schedule, model, loss) must equal the value
  the checkpoint was written with: a changed one is refused with the list of changed keys and their
  old -> new values, unless ``train.force_resume``; then the new values apply from the resume step on
  (optimizer hyperparameters and the lr schedule are set on the restored optimizer) and the change is
  recorded in the loop state and ``final/redone.json`` (``resume_changes``). Run-control keys (logging,
  saving, progress, threads, tracking, stop_after_steps) change freely. So ``config.yaml``,
  ``config_hash.txt`` and the lineage always describe the settings that were used.
- A dir holding only this run's own start files (``config.yaml``, ``config_hash.txt``, a log, incomplete
  checkpoints: a run killed before its first checkpoint) restarts cleanly; the start of a run with a
  different config is refused, naming the changed keys.
- A checkpoint or final save that fails to write (disk full, I/O error) removes its temp dir and stops
  with one line; the previous checkpoint stays loadable.

Errors: ``RedoneError`` for all of the above refusals, an already finished run, a non-empty
``output_dir`` holding files of something else, and a checkpoint that cannot be loaded.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from redone import __version__
from redone.allocator import tune_malloc
from redone.card import write_model_card
from redone.config.load import config_hash, config_to_dict, config_to_yaml, result_hash
from redone.config.schema import RunConfig
from redone.distributed import (
    configure_deepspeed,
    end_run,
    is_partitioned,
    is_zero3,
    resolve_precision,
    zero3_init_disabled,
)
from redone.errors import ConfigError, RedoneError
from redone.model import (
    apply_liger_kernels,
    apply_lora,
    check_model,
    fingerprint_state_dict,
    freeze_bottom,
    load_model,
    load_tokenizer,
    merge_lora_adapter,
    resolve_model,
    training_attention,
)
from redone.train import checkpoint as ckpt
from redone.train.optim import (
    build_optimizer,
    build_scheduler,
    cast_to_bf16_with_masters,
    implementation_kwargs,
    lr_factor,
    param_groups,
)

# Keys whose change alters which data a step sees: resuming across such a change is refused.
DATA_ORDER_KEYS = ("seed", "data")
# Dotted config keys (a trailing "." = a whole section) by what a change to them alters. A resume whose
# config differs from its checkpoint's in any of these is refused unless train.force_resume.
KEY_CLASSES = (
    ("data order", ("seed", "data.", "train.micro_batch_size", "train.grad_accum")),
    ("optimizer", ("optim.lr", "optim.betas", "optim.eps", "optim.weight_decay", "optim.implementation",
                   "optim.max_grad_norm")),
    ("schedule", ("optim.scheduler", "optim.warmup_steps", "optim.warmup_ratio", "optim.min_lr_ratio",
                  "train.max_steps")),
    ("model", ("model.", "train.precision")),
    ("loss", ("dpo.",)),
)
# How a run is driven or reported, never what it computes: a resume applies new values silently.
RUN_CONTROL = ("stage", "output_dir", "train.resume", "train.force_resume", "train.stop_after_steps",
               "train.progress", "train.threads", "train.log_every", "train.eval_every", "train.save_every",
               "train.keep_last", "tracking.")
UNSET = "(unset)"  # a key present in only one of two compared configs
# What a run writes into output_dir before its first checkpoint (plus tracker dirs): a dir holding
# nothing else is the start of a run, which the same config may restart.
START_FILES = ("config.yaml", "config_hash.txt", "train_log.jsonl", "step_loss.jsonl", "checkpoints", "wandb",
               ".config.yaml.tmp", ".config_hash.txt.tmp")


def run_training(config: RunConfig, stage_cls) -> Path | None:
    """Train one stage; returns the final model dir (None when stopped early by stop_after_steps)."""
    output_dir = Path(config.output_dir)
    resume_from, changes = check_output_dir(config, output_dir)
    check_model(config.model.name_or_path)  # a broken model dir fails now, not after the data is built
    tune_malloc()  # glibc: keep a CPU run from slowing down step after step (redone/allocator.py)
    accelerator = make_accelerator(config)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    torch.manual_seed(config.seed)

    tokenizer = load_tokenizer(config.model.name_or_path, config.model.trust_remote_code)
    stage = stage_cls(config, tokenizer)
    model = build_model(config, accelerator)
    stage.layout = batch_layout(config, model)
    start_fingerprint = weights_fingerprint(model, accelerator)
    masters = bf16_master_weights(config, accelerator, model)
    stage.prepare_model(model)  # dpo: reference log-probs, computed by the starting policy itself
    optimizer = build_optimizer(model, config.optim, masters)
    scheduler = build_scheduler(optimizer, config.optim, config.train.max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    state = new_loop_state(config, accelerator)
    state["tag_names"] = stage.tag_names()
    state["start_fingerprint"] = start_fingerprint
    if resume_from is not None:
        state = restore(accelerator, stage, resume_from, config, (model, optimizer, scheduler), changes)
    if accelerator.is_main_process:  # only now: a refused resume never records a config it did not use
        output_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(output_dir / "config.yaml", config_to_yaml(config))
        write_atomic(output_dir / "config_hash.txt", result_hash(config) + "\n")
        truncate_log(output_dir / "train_log.jsonl", state["step"])
        truncate_log(output_dir / "step_loss.jsonl", state["step"])
    ckpt.kill_point("start-files")
    start_trackers(accelerator, config)

    finished = train_steps(config, accelerator, stage, model, optimizer, scheduler, state)
    if not finished:
        end_run(accelerator)
        return None
    if masters is not None:  # final/ from the fp32 masters, not the bf16 copies the steps ran on
        getattr(optimizer, "optimizer", optimizer).restore_fp32()
    final = save_final(config, accelerator, model, tokenizer, stage, state)
    end_run(accelerator)  # not end_training(): a pipeline's next stage reuses the process group
    return final


def bf16_master_weights(config: RunConfig, accelerator, model) -> dict | None:
    """``train.precision: bf16-master``: cast the model's weights to bf16, return their fp32 masters."""
    if resolve_precision(config.train.precision) != "bf16-master":
        return None
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        # Both keep their own fp32 master weights under bf16: a second copy here would fight them.
        raise ConfigError(f"train.precision: bf16-master is for single-process and DDP runs; under "
                          f"{accelerator.distributed_type.value} use train.precision=bf16 (it keeps fp32 "
                          "master weights itself)")
    return cast_to_bf16_with_masters(model)


def weights_fingerprint(model, accelerator) -> str | None:
    """Fingerprint of the starting weights (lineage: proves which model a stage started from).

    Skipped under ZeRO-3, where no process holds whole parameters before training.
    """
    if is_zero3(accelerator):
        return None
    return fingerprint_state_dict(model.state_dict())


def check_output_dir(config: RunConfig, output_dir: Path) -> tuple[Path | None, dict]:
    """Decide between a fresh start, a restart and a resume; refuse anything that would overwrite a run
    or resume it with settings it was not trained with. Returns (checkpoint or None, forced changes)."""
    check_writable(output_dir)
    if (output_dir / "final" / "config.json").exists():
        raise RedoneError(f"output_dir: {output_dir} already holds a finished run (final/); "
                          "choose another output_dir or delete it")
    log = print if int(os.environ.get("RANK", "0")) == 0 else (lambda *_: None)
    resume_from = ckpt.resolve_resume(config.train.resume, output_dir, log=log)
    if resume_from is not None:
        changes = config_changes(read_config_file(resume_from / "config.yaml"), config)
        weight_changes = {k: v for k, v in changes.items() if not _matches(k, RUN_CONTROL)}
        if weight_changes and not config.train.force_resume:
            raise RedoneError(f"train.resume: {resume_from} was written with a different config: "
                              f"{describe_changes(weight_changes)}; resuming would mix two settings "
                              "(set train.force_resume=true to apply the new values from this step on, or "
                              "use a new output_dir)")
        notes = {k: v for k, v in changes.items()
                 if k not in weight_changes and k not in ("output_dir", "train.resume", "train.force_resume")}
        if notes:
            log(f"[redone] resuming with new run settings: {describe_changes(notes, classes=False)}")
        return resume_from, weight_changes
    if output_dir.exists() and any(output_dir.iterdir()):
        check_restartable(config, output_dir, log)
    return None, {}


def check_writable(output_dir: Path) -> None:
    """output_dir (or the nearest existing dir above it) must be a directory this process can write."""
    existing = next(p for p in (output_dir, *output_dir.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        where = "is a file" if existing == output_dir else f"lies under {existing}, which is a file"
        raise RedoneError(f"output_dir: {output_dir} {where}; choose a directory path")
    try:
        handle, probe = tempfile.mkstemp(prefix=".redone-write-probe-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise RedoneError(f"output_dir: {existing} is not writable ({err.strerror or err})") from None


def check_restartable(config: RunConfig, output_dir: Path, log) -> None:
    """A non-empty dir with no checkpoint to resume: restart it only if it holds nothing but the start
    files of this very run (killed before its first checkpoint)."""
    own = set(START_FILES) | {config.tracking.project}
    foreign = sorted(p.name for p in output_dir.iterdir() if p.name not in own)
    if foreign or not (output_dir / "config.yaml").exists() or ckpt.complete_checkpoints(output_dir):
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise RedoneError(f"output_dir: {output_dir} is not empty and there is no checkpoint to resume "
                          f"(train.resume{'; it holds ' + shown if foreign else ''}); refusing to overwrite it")
    changes = config_changes(read_config_file(output_dir / "config.yaml"), config)
    changes = {k: v for k, v in changes.items() if not _matches(k, RUN_CONTROL)}
    if changes and not config.train.force_resume:
        raise RedoneError(f"output_dir: {output_dir} holds the start of a run with a different config (stopped "
                          f"before its first checkpoint): {describe_changes(changes)}; delete it, use a new "
                          "output_dir, or set train.force_resume=true to start it over with this config")
    log(f"[redone] {output_dir} holds only the start of {'a run with another config' if changes else 'this run'} "
        "(no checkpoint yet): starting it over")


def read_config_file(path: Path) -> dict | None:
    """A config.yaml this package wrote (None when absent: a checkpoint of an older version)."""
    if not path.exists():
        return None
    try:
        return OmegaConf.to_container(OmegaConf.create(path.read_text(encoding="utf-8")))
    except Exception as err:  # OmegaConf/YAML raise many types; only the file and the first line matter
        raise RedoneError(f"{path}: cannot read the saved config ({(str(err).splitlines() or [''])[0]})") from None


def flat_keys(node, prefix: str = "") -> dict:
    """Dotted keys -> leaf values; lists of mappings are indexed (data.sources[0].path), other lists kept."""
    if isinstance(node, dict):
        flat = {}
        for key, value in node.items():
            flat.update(flat_keys(value, f"{prefix}{key}."))
        return flat
    if isinstance(node, list) and any(isinstance(item, dict) for item in node):
        flat = {}
        for i, item in enumerate(node):
            flat.update(flat_keys(item, f"{prefix.rstrip('.')}[{i}]."))
        return flat
    return {prefix.rstrip("."): node}


def config_changes(saved: dict | None, config: RunConfig) -> dict[str, tuple]:
    """Keys whose value differs between a saved config and this one: key -> (old, new)."""
    if saved is None:
        return {}
    old, new = flat_keys(saved), flat_keys(config_to_dict(config))
    return {k: (old.get(k, UNSET), new.get(k, UNSET)) for k in sorted(set(old) | set(new))
            if old.get(k, UNSET) != new.get(k, UNSET)}


def _matches(key: str, prefixes) -> bool:
    return any(key.startswith(p) if p.endswith(".") else key == p or key.startswith(p + "[") for p in prefixes)


def key_class(key: str) -> str:
    return next((name for name, prefixes in KEY_CLASSES if _matches(key, prefixes)), "other")


def describe_changes(changes: dict, classes: bool = True) -> str:
    def show(value):
        return value if value == UNSET else repr(value)

    parts = [f"{k} {show(a)} -> {show(b)}" + (f" ({key_class(k)})" if classes else "") for k, (a, b) in changes.items()]
    return ", ".join(parts[:8]) + (f", and {len(parts) - 8} more" if len(parts) > 8 else "")


def write_atomic(path: Path, text: str) -> None:
    """Write a small file whole or not at all (temp file + rename): a kill never leaves half a config."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def make_accelerator(config: RunConfig):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    if "wandb" in config.tracking.report_to:
        os.environ.setdefault("WANDB_MODE", config.tracking.wandb_mode)
    precision = resolve_precision(config.train.precision)
    if precision.startswith("bf16") and not torch.cuda.is_available() and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        # Honoured (bf16 still runs), but without oneDNN's bf16 kernels it is slower than fp32: say so.
        print(f"[redone] train.precision={precision} on a CPU without native bf16 support (AVX-512/AMX): bf16 "
              "math is emulated and slower than fp32; set train.precision=fp32 on this machine", flush=True)
    # bf16-master runs bf16 weights directly: no autocast (its per-op casts are what it saves).
    return Accelerator(
        gradient_accumulation_steps=config.train.grad_accum,
        mixed_precision="bf16" if precision == "bf16" else "no",
        log_with=list(config.tracking.report_to) or None,
        project_config=ProjectConfiguration(project_dir=config.output_dir, logging_dir=config.output_dir),
        # accelerate would otherwise step the scheduler once per *process* per optimizer step (it assumes
        # a per-process dataloader): train_steps steps it exactly once per optimizer step instead.
        step_scheduler_with_optimizer=False,
    )


def build_model(config: RunConfig, accelerator):
    # DeepSpeed: fill the config's "auto" values; ZeRO-3: arm zero.Init so each rank loads only its shard.
    configure_deepspeed(accelerator, config)
    model = load_model(config.model.name_or_path,
                       attn_implementation=training_attention(config.model.attn_implementation, config.data.packing),
                       trust_remote_code=config.model.trust_remote_code)
    if config.model.liger_kernels:
        apply_liger_kernels(model)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if config.model.freeze_bottom_layers:
        freeze_bottom(model, config.model.freeze_bottom_layers)
    if config.model.lora.enabled:
        model = apply_lora(model, config.model.lora)
    return model


def save_adapter_and_merge(config: RunConfig, peft_model, state_dict: dict, adapter_dir: Path):
    """LoRA at the end of a run (main process): write the adapter, return the merged model + state dict.

    The adapter comes from the gathered ``state_dict``. Under ZeRO-3 the live modules hold only shards,
    so the merge reloads the base whole (zero.Init off) and applies the saved adapter -- the same path
    as ``redone model merge-lora``; otherwise peft merges in place.
    """
    peft_model.save_pretrained(adapter_dir, state_dict=state_dict)
    if is_partitioned(peft_model):
        with zero3_init_disabled():
            merged = merge_lora_adapter(adapter_dir, base=config.model.name_or_path, dtype=torch.float32,
                                        trust_remote_code=config.model.trust_remote_code)
    else:
        merged = peft_model.merge_and_unload()
    return merged, merged.state_dict()


def batch_layout(config: RunConfig, model) -> str:
    if not config.data.packing:
        return "padded"
    # flash-attn's varlen kernel takes one flat sequence; sdpa prefers [B, L] rows (cost B*L^2, not (BL)^2).
    return "flat" if getattr(model.config, "_attn_implementation", "") == "flash_attention_2" else "rows"


def new_loop_state(config: RunConfig, accelerator) -> dict:
    return {"step": 0, "tokens": 0, "units": 0, "source_tokens": {}, "data_hash": data_order_hash(config),
            "tag_names": [],
            "world_size": accelerator.num_processes, "redone_version": __version__}


def data_order_hash(config: RunConfig) -> str:
    data = config_to_dict(config)
    data["train_batch"] = [config.train.micro_batch_size, config.train.grad_accum]
    return config_hash(data, DATA_ORDER_KEYS + ("train_batch",))


def restore(accelerator, stage, path: Path, config: RunConfig, prepared, changes: dict) -> dict:
    """Load a checkpoint into the prepared (model, optimizer, scheduler) and the stage's data position.

    ``changes`` are the weight-relevant keys that differ from the checkpoint's config (only non-empty
    under train.force_resume): the new optimizer and schedule values are applied on top of the restored
    state and the change is recorded in the loop state (and so in final/redone.json).
    """
    state = ckpt.read_loop_state(path)
    if state["data_hash"] != data_order_hash(config) and not config.train.force_resume:
        raise RedoneError(f"train.resume: {path} was written with a different data order (data/seed/batch "
                          "settings changed); set train.force_resume=true to resume anyway")
    if state["world_size"] != accelerator.num_processes and not config.train.force_resume:
        raise RedoneError(f"train.resume: {path} was written by {state['world_size']} processes, now "
                          f"{accelerator.num_processes}; set train.force_resume=true to resume anyway")
    try:
        accelerator.load_state(str(path))
    except (OSError, RuntimeError, ValueError, KeyError, EOFError) as err:  # shapes/keys of another model
        reason = (str(err).strip().splitlines() or [""])[0]
        raise RedoneError(f"train.resume: cannot load {path} into this run ({type(err).__name__}: {reason})") from None
    stage.load_state_dict(state["data"])
    if changes:
        model, optimizer, scheduler = prepared
        apply_optimizer_settings(config, accelerator.unwrap_model(model), optimizer, scheduler)
        record = {k: [v[0], v[1]] for k, v in changes.items()}
        state.setdefault("resume_changes", []).append({"step": state["step"], "changed": record})
        accelerator.print(f"[redone] train.force_resume: applying {describe_changes(changes)} from step "
                          f"{state['step']} on")
    accelerator.print(f"[redone] resumed from {path} at step {state['step']}")
    return state


def apply_optimizer_settings(config: RunConfig, model, optimizer, scheduler) -> None:
    """Set this config's optimizer hyperparameters and lr schedule on a restored optimizer (force_resume).

    The restored param groups carry the checkpoint's lr, betas, eps, weight decay and kernel; the
    scheduler's lambda already follows this config, so its base lr and the current lr are reset here.
    """
    optim = config.optim
    fresh = param_groups(model, optim.weight_decay)
    kernel = implementation_kwargs(optim.implementation, [p for g in fresh for p in g["params"]])
    for group, new in zip(optimizer.param_groups, fresh):
        group.update(weight_decay=new["weight_decay"], betas=tuple(optim.betas), eps=optim.eps,
                     initial_lr=optim.lr, **kernel)
    inner = getattr(scheduler, "scheduler", scheduler)
    inner.base_lrs = [optim.lr] * len(optimizer.param_groups)
    factor = lr_factor(inner.last_epoch, optim, config.train.max_steps)
    for group in optimizer.param_groups:
        group["lr"] = optim.lr * factor
    inner._last_lr = [group["lr"] for group in optimizer.param_groups]


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the resume step, so a resumed run's log equals an uninterrupted one."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in lines))


def start_trackers(accelerator, config: RunConfig) -> None:
    if config.tracking.report_to:
        run_name = config.tracking.run_name or f"{Path(config.output_dir).name}-{config.stage}"
        init_kwargs = {"wandb": {"name": run_name, "dir": config.output_dir}} if "wandb" in config.tracking.report_to else {}
        accelerator.init_trackers(config.tracking.project, config=flat_config(config_to_dict(config)),
                                  init_kwargs=init_kwargs)


def flat_config(node: dict, prefix: str = "") -> dict:
    """Dotted keys with scalar values: what tensorboard's hparams (and wandb's table) accept."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return flat


def global_sum(accelerator, value: float) -> float:
    if accelerator.num_processes == 1:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(tensor, reduction="sum").item())


def train_steps(config, accelerator, stage, model, optimizer, scheduler, state) -> None:
    train = config.train
    world, rank = accelerator.num_processes, accelerator.process_index
    progress = make_progress(accelerator, train, state["step"])
    window = Meter()
    model.train()
    last = train.max_steps
    if train.stop_after_steps:
        last = min(last, state["step"] + train.stop_after_steps)
    for step in range(state["step"], last):
        micro_batches = [stage.next_batch(rank, world) for _ in range(train.grad_accum)]
        # Units are counted before any backward so each micro-batch can be scaled by the step total.
        step_units = global_sum(accelerator, sum(stage.batch_units(mb) for mb in micro_batches))
        step_meter, grad_norm = Meter(), None
        for batch in micro_batches:
            with accelerator.accumulate(model):
                out = stage.loss(model, batch)
                # accelerate divides by grad_accum and DDP averages over ranks: undo both, then
                # normalise by the global unit count of the whole step.
                scale = world * train.grad_accum / max(step_units, 1.0)
                accelerator.backward(out.loss_sum * scale)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.optim.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:  # once per optimizer step, whatever the process count
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            step_meter.add(out)
        state["step"] = step + 1
        record_step(state, step_meter, accelerator, Path(config.output_dir))
        window.merge(step_meter)
        if state["step"] % train.log_every == 0 or state["step"] == train.max_steps:
            log_metrics(config, accelerator, stage, window, state, scheduler, grad_norm, progress)
            window = Meter()
        if train.eval_every and state["step"] % train.eval_every == 0:
            log_eval(config, accelerator, stage, model, state)
        ckpt.kill_point("step")
        if state["step"] % train.save_every == 0 or state["step"] in (train.max_steps, last):
            save_checkpoint(config, accelerator, stage, state)
        progress.update(1)
    progress.close()
    return state["step"] == train.max_steps


class Meter:
    """Sums of loss, units, tokens and per-tag values over some micro-batches."""

    def __init__(self):
        self.loss_sum, self.units, self.tokens, self.start = 0.0, 0, 0, time.perf_counter()
        self.tags: dict[str, list[float]] = {}

    def add(self, out) -> None:
        self.loss_sum += float(out.loss_sum.detach())
        self.units += out.units
        self.tokens += out.real_tokens
        self._add_tags(out.tags)

    def merge(self, other: Meter) -> None:
        self.loss_sum += other.loss_sum
        self.units += other.units
        self.tokens += other.tokens
        self._add_tags(other.tags)

    def _add_tags(self, tags: dict[str, list[float]]) -> None:
        for tag, values in tags.items():
            current = self.tags.setdefault(tag, [0.0] * len(values))
            for i, value in enumerate(values):
                current[i] += value

    def global_tags(self, accelerator, names: list[str]) -> dict[str, list[float]]:
        """Per-tag sums over all processes (every rank reduces the same tags, in the same order)."""
        width = max((len(v) for v in self.tags.values()), default=2)
        local = torch.tensor([self.tags.get(n, [0.0] * width) for n in names], dtype=torch.float64)
        if accelerator.num_processes > 1:
            local = accelerator.reduce(local.to(accelerator.device), reduction="sum").cpu()
        return {n: row.tolist() for n, row in zip(names, local) if row[1] > 0}


def record_step(state: dict, step_meter: Meter, accelerator, output_dir: Path | None = None) -> None:
    """Add the step's global token counts to the loop state; with ``output_dir`` also append the step's
    own loss to ``step_loss.jsonl`` (train_log.jsonl averages over ``log_every`` steps; plots want both)."""
    units = global_sum(accelerator, step_meter.units)
    loss = global_sum(accelerator, step_meter.loss_sum) / max(units, 1)
    state["tokens"] += int(global_sum(accelerator, step_meter.tokens))
    state["units"] += int(units)
    if output_dir is not None and accelerator.is_main_process:
        with open(output_dir / "step_loss.jsonl", "a") as handle:
            handle.write(json.dumps({"step": state["step"], "loss": loss}) + "\n")
    for tag, values in step_meter.global_tags(accelerator, state["tag_names"]).items():
        state["source_tokens"][tag] = state["source_tokens"].get(tag, 0) + int(values[1])


def log_metrics(config, accelerator, stage, window, state, scheduler, grad_norm, progress) -> None:
    loss_sum = global_sum(accelerator, window.loss_sum)
    units = global_sum(accelerator, window.units)
    tokens = global_sum(accelerator, window.tokens)
    elapsed = max(time.perf_counter() - window.start, 1e-9)
    metrics = {"step": state["step"], "loss": loss_sum / max(units, 1), "lr": scheduler.get_last_lr()[0],
               "grad_norm": float(grad_norm) if grad_norm is not None else None,
               "tokens_per_s": tokens / elapsed, "tokens_seen": state["tokens"]}
    for tag, totals in window.global_tags(accelerator, state["tag_names"]).items():
        metrics.update(stage.tag_metrics(tag, totals))
    if accelerator.is_main_process:
        with open(Path(config.output_dir) / "train_log.jsonl", "a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        progress.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                             tok_s=f"{metrics['tokens_per_s']:.0f}")
        if not config.train.progress:
            print(json.dumps(metrics), flush=True)
    accelerator.log({k: v for k, v in metrics.items() if v is not None and k != "step"}, step=state["step"])


def log_eval(config, accelerator, stage, model, state) -> None:
    model.eval()
    metrics = stage.held_out_metrics(model)
    model.train()
    if metrics and accelerator.is_main_process:
        with open(Path(config.output_dir) / "train_log.jsonl", "a") as handle:
            handle.write(json.dumps({"step": state["step"], **metrics}) + "\n")
        if not config.train.progress:
            print(json.dumps({"step": state["step"], **metrics}), flush=True)
    accelerator.log(metrics, step=state["step"])


def make_progress(accelerator, train, start: int):
    from tqdm.auto import tqdm

    return tqdm(total=train.max_steps, initial=start, desc="train", dynamic_ncols=True,
                disable=not (accelerator.is_main_process and train.progress))


def save_checkpoint(config, accelerator, stage, state) -> None:
    output_dir = Path(config.output_dir)
    tmp = ckpt.temp_dir_for(output_dir, state["step"])
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            ckpt.kill_point("checkpoint-save")
            loop_state = dict(state, data=stage.state_dict())
            ckpt.finalize(tmp, ckpt.step_dir(output_dir, state["step"]), loop_state, config_to_yaml(config))
    except Exception as err:
        raise write_failure(err, tmp, f"checkpoint step-{state['step']}", output_dir) from None
    if accelerator.is_main_process:
        ckpt.prune(output_dir, config.train.keep_last)
    accelerator.wait_for_everyone()


def write_failure(err: Exception, tmp: Path, what: str, output_dir: Path) -> Exception:
    """Clean up a failed save and say what is left; re-raises errors that are not about writing."""
    full = disk_full(err, tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    if not (full or isinstance(err, OSError) or type(err).__name__ == "SafetensorError"):
        raise err  # a bug, not the disk: keep its traceback
    previous = ckpt.latest_checkpoint(output_dir)
    kept = (f"the previous checkpoint {previous.name} is intact; free space and rerun the same command to "
            "resume from it") if previous else "no earlier checkpoint exists"
    reason = "no space left on device" if full else f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
    return RedoneError(f"output_dir: writing {what} to {tmp.parent} failed ({reason}); {kept}")


def disk_full(err: Exception, path: Path) -> bool:
    """ENOSPC/EDQUOT, or a library error (torch's zip writer hides errno) on a device with ~no space left."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left on device" in str(err):
        return True
    try:
        return shutil.disk_usage(path if path.exists() else path.parent).free < (1 << 20)
    except OSError:
        return False


def save_final(config, accelerator, model, tokenizer, stage, state) -> Path:
    """Write output_dir/final: a plain HF model dir (gathered weights, merged LoRA) + lineage."""
    output_dir = Path(config.output_dir)
    final, tmp = output_dir / "final", output_dir / ".tmp-final"
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model)  # gathers ZeRO-3 / FSDP shards on the main process
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            if config.model.lora.enabled:
                unwrapped, state_dict = save_adapter_and_merge(config, unwrapped, state_dict, output_dir / "adapter")
            unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / "redone_config.yaml").write_text(config_to_yaml(config))
            lineage = build_lineage(config, stage, state, state_dict)
            (tmp / "redone.json").write_text(json.dumps(lineage, indent=1, default=str))
            write_model_card(tmp)
            ckpt.kill_point("final-save")
            tmp.rename(final)
        except Exception as err:
            raise write_failure(err, tmp, "final/", output_dir) from None
    accelerator.wait_for_everyone()
    return final


def build_lineage(config, stage, state, state_dict) -> dict:
    log = Path(config.output_dir) / "train_log.jsonl"
    last = json.loads(log.read_text().splitlines()[-1]) if log.exists() and log.read_text().strip() else {}
    return {
        "stage": config.stage,
        "parent_model": config.model.name_or_path,
        "parent_path": resolve_model(config.model.name_or_path),
        "fingerprint": fingerprint_state_dict(state_dict),
        "start_fingerprint": state.get("start_fingerprint"),
        "config_hash": result_hash(config),
        "data_sources": stage.source_info,
        "tokens_seen": state["tokens"],
        "source_tokens": state["source_tokens"],
        "steps": state["step"],
        "final_metrics": last,
        "config": config_to_dict(config),
        # train.force_resume with changed settings: which keys changed at which step (empty normally)
        "resume_changes": state.get("resume_changes", []),
        "redone_version": __version__,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }

