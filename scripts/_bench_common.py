"""Shared machinery of the benchmarks (bench.py and the per-workload bench_cpt/sft/dpo.py, bench_data.py).

- Every run (one side of a comparison) is a fresh subprocess of a workload script in ``--worker`` mode:
  its peak RSS is that process's own ``ru_maxrss`` taken from ``os.wait4`` (per child, so one run's peak
  never leaks into the next one's), and one side's allocator state never slows or helps the other. CPU
  rows hide any GPU (``CUDA_VISIBLE_DEVICES=""``).
- A ``StepClock`` takes a timestamp after every optimizer step (redone: after the loop's ``record_step``;
  HF/TRL: ``on_step_end``). The first ``warmup`` steps are left out: throughput = work of steps
  warmup+1..N / (t_N - t_warmup). Model loading, tokenisation, reference passes and saving are outside
  the timed window on every side (the time to the end of step 1 is reported separately).
- Two throughputs per run: per wall second, and per CPU second of the process (``time.process_time``
  over the same steps). On a box shared with other jobs the wall figure swings by 2x between identical
  runs while the CPU-time figure moves far less.
- A ``FlopCounter`` (forward hooks on the model, its LM head and any reference model) counts, for every
  forward pass, the real tokens through the decoder, the attended (query, key) pairs and the positions
  through the LM head, and turns them into model FLOPs with ``ModelCost`` (formula in
  docs/BENCHMARKS.md): matmuls 2 x weights per token forward, attention 4 x heads x head_dim per
  attended pair forward, backward 2x forward where gradients flow, nothing for padding, row tails or
  activation-checkpointing recomputation. The same counter gives each side's computed tokens.
- Sides run interleaved (A, B, C, A, B, C, ...) for ``--repeats`` rounds; tables show medians with the
  min-max spread, and every ratio is a ratio of medians.
- ``matmul_peak`` measures the dense matmul ceiling (square sizes, best of a few) in the same run, on
  the same thread count, for the dtype of a row: MFU = model FLOP/s / that peak.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
               "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
               "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
SCRATCH = Path(os.environ.get("REDONE_BENCH_DIR", Path(tempfile.gettempdir()) / "redone-bench"))
IGNORE = -100


# ---------------------------------------------------------------- arguments and sides


def common_parser(description: str, *, steps: int, batch: int, seq_len: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="tiny",
                        help="tiny (a random 2-layer Llama with SmolLM2's tokenizer, built once), "
                             "smollm2-135m-instruct, or a local HF model dir")
    parser.add_argument("--steps", type=int, default=steps, help="optimizer steps per run (warm-up included)")
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out of the timing")
    parser.add_argument("--batch", type=int, default=batch, help="rows (cpt) / examples (sft) / pairs (dpo) per step")
    parser.add_argument("--seq-len", type=int, default=seq_len)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--precisions", default="fp32,bf16", help="rows to run: fp32, bf16 or both")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--scratch", default=str(SCRATCH), help="scratch dir (models, caches, run dirs)")
    parser.add_argument("--json", dest="json_out", default=None, help="also write all results to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return parser


def split_side(side: str) -> tuple[str, str]:
    """'trl-padded@bf16' -> ('trl-padded', 'bf16')."""
    impl, _, precision = side.partition("@")
    if precision not in ("fp32", "bf16"):
        raise SystemExit(f"side '{side}': expected <implementation>@fp32 or @bf16")
    return impl, precision


def master_precision(impl: str, precision: str) -> str:
    """The train.precision of a redone side: ``redone-master@bf16`` trains with bf16 weights and fp32
    master weights (train.precision=bf16-master); it is compared with the peers' bf16 autocast rows."""
    if not impl.endswith("-master"):
        return precision
    if precision != "bf16":
        raise SystemExit(f"side '{impl}@{precision}': bf16-master sides only exist at @bf16")
    return "bf16-master"


def precision_note(precision: str) -> str:
    return {"bf16": "bf16 autocast", "bf16-master": "bf16 weights + fp32 master"}.get(precision, "fp32")


def sides_for(implementations: list[str], precisions: list[str]) -> list[str]:
    return [f"{impl}@{p}" for p in precisions for impl in implementations
            if p == "bf16" or not impl.endswith("-master")]


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)


def resolve_bench_model(name: str, scratch: str) -> str:
    """A path (or built-in name) every side loads; ``tiny`` is made once under the scratch dir."""
    if name != "tiny":
        from redone.model import resolve_model

        return resolve_model(name)
    target = Path(scratch) / "tiny-model"
    if not (target / "config.json").exists():
        from redone.model import make_tiny_model

        Path(scratch).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=Path(scratch)))
        make_tiny_model(tmp / "m", layers=2, hidden=64)
        (tmp / "m").rename(target)
    return str(target)


# ---------------------------------------------------------------- FLOPs


class ModelCost:
    """Model FLOPs of one forward (and backward) pass of a decoder-only transformer, from its modules.

    Per real token, forward: 2 x (weights of every Linear in a decoder layer); per attended (query, key)
    pair and layer: 4 x heads x head_dim (QK^T and PV); per LM-head position: 2 x vocab x hidden.
    Backward, in a layer gradients flow through (something trainable in it or below it): 2x the
    forward's activation-gradient matmuls and attention, plus 2 x trainable weights per token for weight
    gradients. Frozen bottom layers cost no backward; a frozen matrix costs no weight gradient.
    """

    def __init__(self, model):
        import torch

        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        layers = find_layers(model, config.num_hidden_layers)
        linears = [[m for m in layer.modules() if isinstance(m, torch.nn.Linear)] for layer in layers]
        self.layer_weights = [sum(m.weight.numel() for m in ms) for ms in linears]
        self.layer_trainable = [sum(m.weight.numel() for m in ms if m.weight.requires_grad) for ms in linears]
        self.layer_any_trainable = [any(p.requires_grad for p in layer.parameters()) for layer in layers]
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.attn_width = config.num_attention_heads * head_dim
        head = model.get_output_embeddings().weight
        self.head_weights = head.numel()
        self.head_trainable = head.requires_grad
        self.embed_trainable = model.get_input_embeddings().weight.requires_grad

    def flops(self, tokens: int, pairs: int, head_positions: int, backward: bool) -> float:
        forward = (2 * sum(self.layer_weights) * tokens + 4 * self.attn_width * pairs * len(self.layer_weights)
                   + 2 * self.head_weights * head_positions)
        if not backward:
            return float(forward)
        total, below = forward, self.embed_trainable
        for weights, trainable, any_trainable in zip(self.layer_weights, self.layer_trainable,
                                                     self.layer_any_trainable):
            if below or any_trainable:
                total += 2 * weights * tokens + 8 * self.attn_width * pairs + 2 * trainable * tokens
            below = below or any_trainable
        if below:
            total += 2 * self.head_weights * head_positions
        if self.head_trainable:
            total += 2 * self.head_weights * head_positions
        return float(total)

    def per_token_note(self) -> dict:
        return {"layer_weights": sum(self.layer_weights), "head_weights": self.head_weights,
                "attn_width": self.attn_width, "layers": len(self.layer_weights)}


def find_layers(model, count: int):
    """The decoder's layer list: the first ModuleList with num_hidden_layers entries."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return list(module)
    raise SystemExit(f"bench: no list of {count} decoder layers in {type(model).__name__}")


def attention_work(input_ids, attention_mask, position_ids, valid) -> tuple[int, int]:
    """(real tokens, attended query-key pairs) of one forward's inputs.

    ``valid`` [B, L] marks real tokens when the caller knows better than the inputs (redone's row
    tails); otherwise a 2D attention mask, or every position. A 4D mask is counted entry by entry;
    otherwise attention is causal within runs of consecutive position_ids (a packed row restarts them
    per sequence) or within the row.
    """
    import torch

    batch, length = input_ids.shape[:2]
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4:
        allowed = attention_mask[:, 0]
        allowed = allowed if allowed.dtype == torch.bool else allowed == 0
        if valid is None:
            valid = torch.ones(batch, length, dtype=torch.bool)
        valid = valid.to(allowed.device)
        pairs = (allowed & valid[:, :, None] & valid[:, None, :]).sum()
        return int(valid.sum()), int(pairs)
    if valid is None:
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
            valid = attention_mask.bool()
        else:
            valid = torch.ones(batch, length, dtype=torch.bool)
    valid = valid.cpu()
    if isinstance(position_ids, torch.Tensor) and position_ids.shape[-1] == length:
        pos = position_ids.reshape(-1, length).expand(batch, length).cpu()
        starts = torch.zeros(batch, length, dtype=torch.long)
        starts[:, 1:] = (pos[:, 1:] != pos[:, :-1] + 1).long()
        run = starts.cumsum(1)
    else:
        run = torch.zeros(batch, length, dtype=torch.long)
    key = torch.arange(batch)[:, None] * (length + 1) + run
    counts = torch.bincount(key[valid])
    return int(valid.sum()), int((counts * (counts + 1) // 2).sum())


class FlopCounter:
    """Forward hooks that add up model FLOPs and computed tokens of every pass (see ``ModelCost``)."""

    def __init__(self):
        self.flops = 0.0  # since the last take()
        self.tokens = 0  # real tokens of passes with gradients (the trained model's computed tokens)
        self.hint = None  # [B, L] real-token mask for the next forward (set by redone's loss wrapper)
        self.costs: dict[int, ModelCost] = {}
        self.pending: list[dict] = []
        self.note: dict = {}

    def attach(self, model) -> None:
        model.register_forward_pre_hook(self._before, with_kwargs=True)
        model.register_forward_hook(self._after, with_kwargs=True)
        model.get_output_embeddings().register_forward_pre_hook(self._head)

    def _before(self, model, args, kwargs):
        import torch

        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            return
        tokens, pairs = attention_work(input_ids, kwargs.get("attention_mask"), kwargs.get("position_ids"),
                                       self.hint)
        self.hint = None
        head = 0
        labels = kwargs.get("labels")
        if kwargs.get("fused_lm_head") and labels is not None:
            # TRL's fused LM head calls no Linear module: it scores the labelled positions where Triton
            # runs (CUDA/XPU) and every position elsewhere (CPU).
            from trl.kernels.chunked_logprob import _use_triton

            shifted = labels[:, 1:]
            head = int((shifted != IGNORE).sum()) if _use_triton(labels.device) else shifted.numel()
        self.pending.append({"model": model, "tokens": tokens, "pairs": pairs, "head": head,
                             "grad": torch.is_grad_enabled()})

    def _head(self, module, args):
        if self.pending:
            hidden = args[0]
            self.pending[-1]["head"] += hidden.numel() // hidden.shape[-1]

    def _after(self, model, args, kwargs, output):
        if not self.pending:
            return
        call = self.pending.pop()
        cost = self.costs.get(id(model))
        if cost is None:  # built at the first pass, once freezing / LoRA are in place
            cost = self.costs[id(model)] = ModelCost(model)
            self.note = cost.per_token_note()
        # Padding and row tails go through the LM head on some sides: only real positions count.
        head = min(call["head"], call["tokens"])
        self.flops += cost.flops(call["tokens"], call["pairs"], head, backward=call["grad"])
        if call["grad"]:
            self.tokens += call["tokens"]

    def take(self) -> tuple[float, int]:
        flops, tokens = self.flops, self.tokens
        self.flops, self.tokens = 0.0, 0
        return flops, tokens


# ---------------------------------------------------------------- clock and results


class StepClock:
    """Timestamps after each optimizer step, with the step's computed tokens, FLOPs and pairs."""

    def __init__(self):
        self.created = time.perf_counter()
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.tokens: list[int] = []
        self.flops: list[float] = []
        self.units: list[int] = []

    def tick(self, tokens: int, flops: float = 0.0, units: int = 0) -> None:
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())
        self.tokens.append(int(tokens))
        self.flops.append(float(flops))
        self.units.append(int(units))

    def tick_counter(self, counter: FlopCounter, units: int = 0) -> None:
        flops, tokens = counter.take()
        self.tick(tokens, flops, units)

    def summary(self, warmup: int) -> dict:
        # The clock starts at the end of step max(warmup, 1): step 1 has no earlier timestamp.
        first = max(warmup, 1)
        if len(self.times) <= first:
            raise SystemExit(f"only {len(self.times)} steps ran; need more than --warmup={first}")
        elapsed = self.times[-1] - self.times[first - 1]
        cpu = self.cpu[-1] - self.cpu[first - 1]
        tokens, flops, units = sum(self.tokens[first:]), sum(self.flops[first:]), sum(self.units[first:])
        steps = len(self.times) - first
        return {"steps": len(self.times), "timed_steps": steps, "timed_s": elapsed, "timed_cpu_s": cpu,
                "tokens_per_s": tokens / elapsed, "tokens_per_cpu_s": tokens / cpu,
                "units_per_s": units / elapsed, "units_per_cpu_s": units / cpu,
                "flops_per_s": flops / elapsed, "flops_per_cpu_s": flops / cpu,
                "tokens_per_step": tokens / steps, "flops_per_token": flops / max(tokens, 1),
                "first_step_end_s": self.times[0] - self.created,
                "step_s": [round(b - a, 3) for a, b in zip(self.times, self.times[1:])]}


def write_result(path: str, result: dict) -> None:
    result["maxrss_self_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(path).write_text(json.dumps(result, default=str))


def run_worker(script: str, side: str, argv: list[str], threads: int, log_dir: Path, device: str = "cpu") -> dict:
    """Run one side in a fresh process; returns its result dict plus its own peak RSS."""
    log_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(script).stem}-{side.replace('@', '-')}-{time.time_ns()}"
    result_file, log_file = log_dir / f"{stem}.json", log_dir / f"{stem}.log"
    env = dict(os.environ, **OFFLINE_ENV, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU row never touches a GPU, even on a GPU machine
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, script, *argv, "--worker", side, "--result", str(result_file), "--device", device]
    start = time.perf_counter()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        # wait4 gives this child's own rusage (ru_maxrss in KiB on Linux), not a max over all children.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not result_file.exists():
        tail = "".join(log_file.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise SystemExit(f"[bench] side '{side}' failed (exit {proc.returncode}); log {log_file}:\n{tail}")
    result = json.loads(result_file.read_text())
    result.update(side=side, device=device, peak_rss_bytes=usage.ru_maxrss * 1024, process_wall_s=wall,
                  log=str(log_file), load_avg=os.getloadavg()[0])
    return result


def run_interleaved(script: str, sides: list[str], argv: list[str], threads: int, repeats: int,
                    log_dir: Path, device: str = "cpu") -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for round_ in range(repeats):
        for side in sides:
            print(f"[bench] {Path(script).stem} round {round_ + 1}/{repeats}: {side} ({device}) ...", flush=True)
            result = run_worker(script, side, argv, threads, log_dir, device)
            print(f"[bench]   {result['tokens_per_s']:,.0f} tok/s wall, {result['tokens_per_cpu_s']:,.0f} tok/CPU-s, "
                  f"{result['flops_per_s'] / 1e9:,.1f} GFLOP/s, peak RSS {gib(result['peak_rss_bytes'])}, "
                  f"loss {result.get('final_loss', float('nan')):.4f}, process {result['process_wall_s']:.0f}s",
                  flush=True)
            runs[side].append(result)
    return runs


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


STAT_KEYS = ("tokens_per_s", "tokens_per_cpu_s", "units_per_s", "units_per_cpu_s", "flops_per_s",
             "flops_per_cpu_s", "peak_rss_bytes", "tokens_per_step", "flops_per_token", "first_step_end_s")


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per side: median, min and max of every throughput figure over its runs."""
    out = {}
    for side, results in runs.items():
        entry = {"runs": len(results), "final_loss": statistics.median(r.get("final_loss", float("nan"))
                                                                       for r in results)}
        for key in STAT_KEYS:
            values = [float(r.get(key, 0.0)) for r in results]
            entry[key] = statistics.median(values)
            entry[f"{key}_min"], entry[f"{key}_max"] = min(values), max(values)
        entry["notes"] = results[0].get("notes", "")
        entry["attention"] = results[0].get("attention", "")
        out[side] = entry
    return out


# ---------------------------------------------------------------- matmul peak and machine


def matmul_peak(dtype_name: str, sizes: list[int], seconds: float = 1.0, device: str = "cpu") -> dict:
    """Best dense square-matmul FLOP/s over ``sizes`` (each timed >= ``seconds``, best of 3 tries)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    best, per_size = 0.0, {}
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        _sync(device, a @ b)
        top = 0.0
        for _ in range(3):
            reps, start = 0, time.perf_counter()
            while True:
                c = a @ b
                reps += 1
                if reps % 2 == 0:
                    _sync(device, c)
                    if time.perf_counter() - start >= seconds / 3:
                        break
            top = max(top, 2 * n ** 3 * reps / (time.perf_counter() - start))
        per_size[n] = top
        best = max(best, top)
    return {"dtype": dtype_name, "flops_per_s": best, "per_size": per_size}


def _sync(device: str, tensor) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    else:
        float(tensor[0, 0])


def machine_info(threads: int) -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if _which("lscpu") else ""
    model = re.search(r"Model name:\s*(.+)", lscpu)
    flags = re.search(r"Flags:\s*(.+)", lscpu)
    flag_set = set(flags.group(1).split()) if flags else set()
    import torch

    info = {"cpu": model.group(1).strip() if model else platform.processor(), "logical_cpus": os.cpu_count(),
            "amx_bf16": "amx_bf16" in flag_set, "avx512_bf16": "avx512_bf16" in flag_set,
            "threads": threads, "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.date.today().isoformat(), "load_avg": os.getloadavg()}
    try:
        import transformers
        import trl

        info.update(transformers=transformers.__version__, trl=trl.__version__)
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _which(name: str) -> bool:
    from shutil import which

    return which(name) is not None


def save_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=1, default=str))
        print(f"\n[bench] results written to {path}")


# ---------------------------------------------------------------- redone side


def instrument_redone_loop(clock: StepClock, counter: FlopCounter, stage_class, units_per_step: int = 0) -> None:
    """Time and count redone's own loop from outside: no checkpoint or final save.

    ``build_model`` is wrapped to hook the FlopCounter onto the model the loop trains; the stage's
    ``loss`` is wrapped to hand the counter the batch's real-token mask (row tails are not real tokens;
    a shared DPO prompt is computed once); ``record_step`` (once per optimizer step, right after the
    optimizer/scheduler step, like HF's ``on_step_end``) ticks the clock. Saving is stubbed out because
    the peers save nothing either.
    """
    from redone.train import loop

    build_model, record_step = loop.build_model, loop.record_step

    # Pass-through signatures: the loop's internal helpers may gain arguments.
    def counted_build_model(*args, **kwargs):
        model = build_model(*args, **kwargs)
        counter.attach(model)
        return model

    def timed_record_step(*args, **kwargs):
        record_step(*args, **kwargs)
        clock.tick_counter(counter, units_per_step)

    loop.build_model = counted_build_model
    loop.record_step = timed_record_step
    loop.save_checkpoint = lambda *args, **kwargs: None
    loop.save_final = lambda *args, **kwargs: None
    _wrap_loss(stage_class, counter)


def _wrap_loss(stage_cls, counter: FlopCounter) -> None:
    original = stage_cls.loss

    def loss(self, model, batch):
        counter.hint = real_token_mask(batch)
        return original(self, model, batch)

    stage_cls.loss = loss


def real_token_mask(batch: dict):
    """[B, L] real tokens of a redone batch: its segments, plus (shared DPO prompt) what they attend to."""
    import torch

    shape = batch["input_ids"].shape
    valid = torch.zeros(shape, dtype=torch.bool)
    for segment in batch["segments"]:
        row, start, length = segment[0], segment[1], segment[2]
        valid[row, start:start + length] = True
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 4:
        allowed = mask[:, 0] if mask.dtype == torch.bool else mask[:, 0] == 0
        valid |= (allowed.cpu() & valid[:, :, None]).any(1)  # prompt tokens the completions attend to
    return valid


def redone_overrides(args, precision: str, model_path: str, sources, out: Path) -> dict:
    """Settings every redone side shares; everything else stays at redone's defaults (fused AdamW,
    attention auto: sdpa_segments on CPU, flash-attention 2 on CUDA when installed, packing on)."""
    listed = ", ".join(f"{{name: {s.name}, path: {s.path}, format: {s.format}}}" for s in sources)
    return {
        "output_dir": out, "model.name_or_path": model_path, "data.seq_len": args.seq_len,
        "data.mixing": "temperature", "data.temperature": 1.0, "data.sources": f"[{listed}]",
        "data.cache_dir": Path(args.scratch) / "cache", "train.max_steps": args.steps, "train.grad_accum": 1,
        "train.precision": precision, "train.threads": args.threads, "train.log_every": args.steps,
        "train.save_every": args.steps * 10, "train.progress": "false", "optim.lr": args.lr,
        "optim.warmup_steps": 0, "optim.scheduler": "cosine", "optim.weight_decay": 0.0, "optim.max_grad_norm": 1.0,
    }


def run_redone_stage(stage: str, stage_class, args, precision: str, model_path: str, sources, extra: dict,
                     units_per_step: int = 0) -> dict:
    """One timed redone run; ``extra`` holds the stage's own overrides."""
    from redone.stages import load_config
    from redone.train.loop import run_training

    clock, counter = StepClock(), FlopCounter()
    instrument_redone_loop(clock, counter, stage_class, units_per_step)
    out = Path(tempfile.mkdtemp(prefix=f"{stage}-redone-", dir=Path(args.scratch) / "runs")) / "out"
    overrides = {**redone_overrides(args, precision, model_path, sources, out), **extra}
    config = load_config(stage, None, [f"{k}={v}" for k, v in overrides.items()])
    run_training(config, stage_class)
    from redone.model import training_attention

    return dict(clock.summary(args.warmup), final_loss=last_logged_loss(out), flop_model=counter.note,
                attention=training_attention(config.model.attn_implementation, config.data.packing))


def last_logged_loss(output_dir: Path) -> float:
    lines = [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines() if line]
    return float([line for line in lines if "loss" in line][-1]["loss"])


# ---------------------------------------------------------------- HF / TRL side


def trainer_clock_callback(clock: StepClock, counter: FlopCounter, units_per_step: int = 0):
    """An HF ``TrainerCallback`` ticking the clock at ``on_step_end`` (after the optimizer step)."""
    from transformers import TrainerCallback

    class ClockCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick_counter(counter, units_per_step)

    return ClockCallback()


def attach_trainer(trainer, counter: FlopCounter) -> None:
    counter.attach(trainer.model)
    if getattr(trainer, "ref_model", None) is not None:
        counter.attach(trainer.ref_model)


def hf_training_args(output_dir: Path, args, precision: str, **extra) -> dict:
    """TrainingArguments shared by the HF/TRL peers: only the workload (batch, steps, lr schedule,
    clipping, seed) and what a CPU needs (``use_cpu``) are set; the rest, optimizer included (fused
    AdamW), stays at the library's default. ``precision`` sets ``bf16`` (TRL's default is bf16=True,
    HF Trainer's False); TRL's default ``gradient_checkpointing=True`` (transformers 5 reads it as
    ``activation_checkpointing``) is left alone unless ``extra`` says otherwise."""
    fields = dict(output_dir=str(output_dir), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                  max_steps=args.steps, learning_rate=args.lr, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95,
                  lr_scheduler_type="cosine", warmup_steps=0, max_grad_norm=1.0, save_strategy="no",
                  report_to="none", disable_tqdm=True, seed=0, bf16=precision == "bf16")
    if args.device == "cpu":
        fields["use_cpu"] = True  # without it TRL's bf16 default refuses to start on a CPU-only machine
    return {**fields, **extra}


def check_peer_args(training_args, precision: str, device: str) -> dict:
    """The settings a peer really ran with (optimizer, precision, checkpointing), refusing surprises."""
    if bool(training_args.bf16) != (precision == "bf16") or training_args.fp16:
        raise SystemExit(f"peer precision: bf16={training_args.bf16} fp16={training_args.fp16}, wanted {precision}")
    if (device == "cpu") != bool(training_args.use_cpu):
        raise SystemExit(f"peer device: use_cpu={training_args.use_cpu}, wanted {device}")
    return {"optim": str(training_args.optim), "bf16": bool(training_args.bf16),
            "gradient_checkpointing": bool(training_args.activation_checkpointing)}


def peer_notes(settings: dict) -> str:
    optim = settings["optim"].split(".")[-1].lower()
    return f"{optim}, {'bf16 autocast' if settings['bf16'] else 'fp32'}" + \
        (", grad ckpt" if settings["gradient_checkpointing"] else "")


# ---------------------------------------------------------------- workloads, tables, targets


def worker_argv(args) -> list[str]:
    """The shared arguments every worker of a workload gets (workload extras come from ``prepare``)."""
    return ["--model", args.model, "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch",
            str(args.batch), "--seq-len", str(args.seq_len), "--threads", str(args.threads), "--lr", str(args.lr),
            "--scratch", str(args.scratch)]


def run_workload(module, args) -> dict:
    """Every side of one workload, interleaved for ``args.repeats`` rounds; medians and spreads."""
    implementations = [s.strip() for s in args.implementations.split(",") if s.strip()]
    unknown = set(implementations) - set(module.IMPLEMENTATIONS)
    if unknown or "redone" not in implementations:
        raise SystemExit(f"--implementations must include redone and only use {module.IMPLEMENTATIONS} "
                         f"(got {implementations})")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    sides = sides_for(implementations, precisions)
    scratch = Path(args.scratch)
    (scratch / "runs").mkdir(parents=True, exist_ok=True)
    model_path = resolve_bench_model(args.model, args.scratch)
    argv = worker_argv(args) + module.prepare(args, model_path)
    print(f"[bench] {module.WORKLOAD}: model={args.model} steps={args.steps} (warm-up {args.warmup} untimed) "
          f"{module.describe(args)}; threads={args.threads} repeats={args.repeats} device={args.device}", flush=True)
    runs = run_interleaved(module.__file__, sides, argv, args.threads, args.repeats, scratch / "logs", args.device)
    return {"workload": module.WORKLOAD, "device": args.device, "describe": module.describe(args),
            "model": args.model, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
            "repeats": args.repeats, "sides": summarize(runs), "runs": runs,
            "targets": [list(t) for t in module.TARGETS], "throughput": getattr(module, "THROUGHPUT", "tokens"),
            "rss_targets": [list(t) for t in getattr(module, "RSS_TARGETS", ())],
            "mfu_targets": [list(t) for t in getattr(module, "MFU_TARGETS", ())]}


def measure_peaks(precisions: list[str], threads: int, quick: bool, device: str = "cpu") -> dict[str, dict]:
    import torch

    torch.set_num_threads(threads)
    if device == "cuda":
        sizes = [4096, 8192] if not quick else [2048]
    else:
        sizes = [1024, 2048, 3072, 4096] if not quick else [512, 1024]
    peaks = {}
    for precision in precisions:
        peaks[precision] = matmul_peak(precision, sizes, seconds=0.6 if quick else 1.5, device=device)
        print(f"[bench] matmul peak {precision} ({device}, {threads} thread(s)): "
              f"{peaks[precision]['flops_per_s'] / 1e9:,.0f} GFLOP/s "
              f"({', '.join(f'{n}: {v / 1e9:,.0f}' for n, v in peaks[precision]['per_size'].items())})", flush=True)
    return peaks


def merge_peaks(*measured: dict[str, dict]) -> dict[str, dict]:
    """Best of several peak measurements (before and after the workloads) per dtype."""
    out: dict[str, dict] = {}
    for peaks in measured:
        for dtype, peak in peaks.items():
            if dtype not in out or peak["flops_per_s"] > out[dtype]["flops_per_s"]:
                out[dtype] = peak
    return out


def _spread(entry: dict, key: str, scale: float = 1.0, digits: int = 0) -> str:
    fmt = f"{{:,.{digits}f}}"
    med, lo, hi = (entry[k] * scale for k in (key, f"{key}_min", f"{key}_max"))
    return f"{fmt.format(med)} ({fmt.format(lo)}–{fmt.format(hi)})" if entry["runs"] > 1 else fmt.format(med)


TABLE_HEADER = ("| workload | run | dtype | settings | real tok/s, wall: median (min–max) | tok/CPU-s: median (min–max) "
                "| pairs/s | GFLOP/tok | MFU wall / CPU | step 1 ends | peak RSS | redone ÷ run, wall / CPU |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|")


def table_rows(result: dict, peaks: dict[str, dict]) -> list[str]:
    """One markdown row per side of a workload result (see TABLE_HEADER)."""
    rows, sides = [], result["sides"]
    metric = "units_per_s" if result["throughput"] == "pairs" else "tokens_per_s"
    cpu_metric = metric.replace("_per_s", "_per_cpu_s")
    threads = result["threads"]
    for side, entry in sides.items():
        impl, precision = split_side(side)
        base = sides.get(f"redone@{precision}")
        ratio = (f"{base[metric] / entry[metric]:.2f}× / {base[cpu_metric] / entry[cpu_metric]:.2f}×"
                 if base and impl != "redone" else "—")
        peak = peaks.get(precision, {}).get("flops_per_s")
        mfu = (f"{entry['flops_per_s'] / peak:.1%} / {entry['flops_per_cpu_s'] * threads / peak:.1%}"
               if peak else "n/a")
        pairs = _spread(entry, "units_per_s", digits=2) if result["throughput"] == "pairs" else "—"
        rows.append(f"| {result['workload']}{' (GPU)' if result['device'] == 'cuda' else ''} | {impl} | {precision} "
                    f"| {entry['notes']}; attn {entry['attention']} | {_spread(entry, 'tokens_per_s')} "
                    f"| {_spread(entry, 'tokens_per_cpu_s')} | {pairs} | {entry['flops_per_token'] / 1e9:.3g} | {mfu} "
                    f"| {entry['first_step_end_s']:.0f} s | {entry['peak_rss_bytes'] / 2**30:.2f} GiB | {ratio} |")
    return rows


def target_lines(result: dict, peaks: dict[str, dict]) -> list[str]:
    """Each target of the workload, per precision row: the ratio of medians and MET / MISSED."""
    lines, sides = [], result["sides"]
    metric = "units_per_s" if result["throughput"] == "pairs" else "tokens_per_s"
    cpu_metric = metric.replace("_per_s", "_per_cpu_s")
    unit = "pairs/s" if result["throughput"] == "pairs" else "real tok/s"
    for peer, minimum, origin in result["targets"]:
        for side in sides:
            impl, precision = split_side(side)
            ours = sides.get(f"redone@{precision}")
            if impl != peer or not ours:
                continue
            wall, cpu = ours[metric] / sides[side][metric], ours[cpu_metric] / sides[side][cpu_metric]
            verdict = "MET" if min(wall, cpu) >= minimum else ("MET on one clock" if max(wall, cpu) >= minimum
                                                               else "MISSED")
            lines.append(f"- {result['workload']} {precision}: redone ÷ {peer} {unit} = {wall:.2f}× wall, {cpu:.2f}× "
                         f"CPU-time (target ≥ {minimum}×, {origin}): **{verdict}**")
    for spec in result.get("rss_targets", []):
        peer, maximum = spec
        for precision in ("fp32", "bf16"):
            ours, theirs = result["sides"].get(f"redone@{precision}"), result["sides"].get(f"{peer}@{precision}")
            if ours and theirs:
                ratio = ours["peak_rss_bytes"] / theirs["peak_rss_bytes"]
                lines.append(f"- {result['workload']} {precision}: peak RSS redone ÷ {peer} = {ratio:.2f} "
                             f"(target ≤ {maximum}): **{'MET' if ratio <= maximum else 'MISSED'}**")
    for precision, minimum in result.get("mfu_targets", []):
        ours, peak = sides.get(f"redone@{precision}"), peaks.get(precision, {}).get("flops_per_s")
        if ours and peak:
            wall, cpu = ours["flops_per_s"] / peak, ours["flops_per_cpu_s"] * result["threads"] / peak
            lines.append(f"- {result['workload']} {precision}: redone MFU {wall:.1%} wall, {cpu:.1%} CPU-time of the "
                         f"{precision} matmul peak {peak / 1e9:,.0f} GFLOP/s (target ≥ {minimum:.0%}): "
                         f"**{'MET' if min(wall, cpu) >= minimum else 'MISSED'}**")
    return lines


def workload_main(module, *, steps: int, batch: int, seq_len: int) -> None:
    """A workload script run on its own: its sides, the matmul peaks, its table and targets."""
    parser = common_parser(module.__doc__.splitlines()[0], steps=steps, batch=batch, seq_len=seq_len)
    parser.add_argument("--implementations", default=",".join(module.DEFAULT_IMPLEMENTATIONS),
                        help=f"comma-separated subset of {','.join(module.IMPLEMENTATIONS)}")
    module.add_arguments(parser)
    args = parser.parse_args()
    if args.worker:
        write_result(args.result, module.worker(args))
        return
    result = run_workload(module, args)
    peaks = measure_peaks([p.strip() for p in args.precisions.split(",")], args.threads, quick=False,
                          device=args.device)
    print(f"\n### {module.WORKLOAD}: model {args.model}, {result['describe']}\n")
    print(TABLE_HEADER)
    print("\n".join(table_rows(result, peaks)))
    print("\n".join(["", *target_lines(result, peaks)]))
    save_json(args.json_out, {"result": result, "peaks": peaks})
