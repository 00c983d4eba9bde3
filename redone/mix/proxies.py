"""Proxy runs: one small-model training run per candidate mixture, through the normal training loop.

Features
- A proxy's config is the user's config with only these changed: the model (the proxy model), the
  source weights (the candidate's shares, ``data.mixing: ratio``), ``data.eval_holdout`` (the same
  held-out items in every proxy), the step count (``--tokens`` / tokens per step), a held-out eval at
  the last step, checkpoints for resume, fp32, no trackers, one learning rate for the proxy model,
  plus any ``--proxy-set key=value``. Packing, sequence length, batch geometry, seed, the mixture
  sampler and the data path are the real run's.
- Cache: ``<cache>/<key>/`` where the key hashes the resolved proxy config (weights included,
  run-control keys and the output dir excluded), the content digests of the data and the proxy
  model's weight fingerprint. ``result.json`` (written last, atomically) marks a finished proxy: it is
  never trained again. A proxy stopped part-way resumes from its newest complete checkpoint
  (``train.resume: auto``); one stopped before its first checkpoint starts over.
- Parallel: ``run_pending`` deals the pending proxies to ``jobs`` worker processes (``python -m
  redone.mix.proxies DIR ...``, each with ``train.threads`` torch threads); a worker trains its queue
  one proxy after another (each a fresh ``run_stage``, as the pipeline chains stages), isolated from
  the search process and the other workers. Each proxy logs to its own ``worker.log``; a failed proxy
  stops the search with the last error line of its log. Workers stop when the search stops (SIGINT,
  SIGTERM, or on Linux even SIGKILL of the search), and a lock keeps two searches from training the
  same proxy at once.
- The default proxy model: a randomly initialised small model of the base model's architecture and
  tokenizer (``ensure_tiny_model``), cached under ``<cache>/models``.
- After a proxy finishes its checkpoints and (unless kept) its final weights are deleted; its
  ``run/final/redone.json``, ``run/train_log.jsonl`` and ``result.json`` stay.
- ``ProxySettings.own_model`` (``redone mix verify``): the same machinery trains the config's own model
  with its own model, precision and optimiser settings, for checks at full scale.

Errors: ``RedoneError`` for a failed proxy (naming its log), a proxy that logged no held-out loss, a
proxy another process is training;
``ConfigError`` for a CPT config whose schema has no ``data.eval_holdout`` yet, or a bad ``--proxy-set``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from redone.config import config_hash, config_to_dict, config_to_yaml
from redone.errors import ConfigError, RedoneError
from redone.isolate import die_with_parent

KEY_VERSION = 1
# Keys that change how a run is driven, never what it computes: left out of the cache key (with output_dir).
RUN_CONTROL_TRAIN = ("resume", "force_resume", "stop_after_steps", "progress", "threads", "log_every")
WEIGHT_DIGITS = 6


@dataclass
class ProxySettings:
    stage: str
    model_dir: str
    tokens: int  # training tokens per proxy (rows x seq_len)
    holdout: int  # data.eval_holdout items per component
    threads: int = 1
    lr: float | None = None  # None: the config's optim.lr
    extra: list[str] = field(default_factory=list)  # --proxy-set key=value
    keep_weights: bool = False
    # Verification at full scale: train the config's own model with its own model and precision settings.
    own_model: bool = False


@dataclass
class Proxy:
    label: str  # natural | config | candidate-N | chosen
    shares: np.ndarray
    key: str
    dir: Path
    config: object  # the validated proxy RunConfig

    @property
    def result_path(self) -> Path:
        return self.dir / "result.json"

    def result(self) -> dict | None:
        return json.loads(self.result_path.read_text()) if self.result_path.exists() else None


def checkpoint_adapter(run_dir: Path):
    """Adapter onto the loop's checkpoint layout: the newest complete checkpoint of a run, or None."""
    from redone.train.checkpoint import latest_checkpoint

    return latest_checkpoint(run_dir)


def set_key(node: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def steps_for(tokens: int, base: dict) -> int:
    per_step = base["train"]["micro_batch_size"] * base["train"]["grad_accum"] * base["data"]["seq_len"]
    return max(1, round(tokens / per_step))


def proxy_dict(base: dict, sources: list[dict], settings: ProxySettings) -> dict:
    """The proxy's raw config (a full plain dict) from the base config's and the candidate's sources."""
    d = copy.deepcopy(base)
    if "eval_holdout" not in d["data"]:
        raise ConfigError(f"data.eval_holdout: the {settings.stage} stage has no held-out split in this version, "
                          "so proxies cannot measure a held-out loss per source")
    steps = steps_for(settings.tokens, d)
    if not settings.own_model:
        d["model"]["name_or_path"] = settings.model_dir
        d["model"]["freeze_bottom_layers"] = 0  # the proxy is small and trained from its start
        d["model"]["lora"]["enabled"] = False
        d["train"]["precision"] = "fp32"  # a tiny model gains nothing from bf16 autocast on a CPU
    d["data"]["sources"] = sources
    if d["data"]["mixing"] == "temperature" and settings.stage == "cpt":
        d["data"]["temperature"] = 1.0  # ratio mode in CPT takes no temperature
    d["data"]["mixing"] = "ratio"
    d["data"]["eval_holdout"] = settings.holdout
    d["train"].update(max_steps=steps, eval_every=steps, save_every=max(1, steps // 4), keep_last=1,
                      log_every=max(1, steps // 10), threads=settings.threads, progress=False,
                      resume="auto", stop_after_steps=None)
    d["tracking"]["report_to"] = []
    if settings.lr is not None:
        d["optim"]["lr"] = settings.lr
    for item in settings.extra:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--proxy-set: '{item}' is not key=value")
        set_key(d, key, OmegaConf.to_container(OmegaConf.from_dotlist([f"v={value}"]))["v"])
    return d


def render_sources(units, shares: np.ndarray) -> list[dict]:
    return [dict(u.source, weight=round(float(s), WEIGHT_DIGITS)) for u, s in zip(units, shares)]


def cache_key(config, digests: list[str], model_fingerprint: str) -> str:
    d = config_to_dict(config)
    d.pop("output_dir", None)
    d["train"] = {k: v for k, v in d["train"].items() if k not in RUN_CONTROL_TRAIN}
    blob = json.dumps({"v": KEY_VERSION, "config": config_hash(d), "digests": digests, "model": model_fingerprint},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_proxy(label: str, shares: np.ndarray, units, base: dict, settings: ProxySettings, cache: Path,
               digests: list[str], model_fingerprint: str) -> Proxy:
    from redone.stages import build_config

    raw = proxy_dict(base, render_sources(units, shares), settings)
    raw["output_dir"] = "<proxy>"
    config = build_config(settings.stage, OmegaConf.create(raw), origin="mix proxy")
    key = cache_key(config, digests, model_fingerprint)
    config.output_dir = str(cache / key / "run")
    return Proxy(label, np.asarray(shares, dtype=np.float64), key, cache / key, config)


def write_spec(proxy: Proxy, unit_names: list[str], settings: ProxySettings) -> None:
    proxy.dir.mkdir(parents=True, exist_ok=True)
    (proxy.dir / "proxy.yaml").write_text(config_to_yaml(proxy.config))
    spec = {"key": proxy.key, "stage": settings.stage, "units": unit_names,
            "shares": [float(s) for s in proxy.shares], "keep_weights": settings.keep_weights}
    (proxy.dir / "spec.json").write_text(json.dumps(spec, indent=1))


# ----------------------------------------------------------------------------------------------------
# Running: the search process starts workers; a worker trains its queue of proxies.


def run_pending(proxies: list[Proxy], unit_names: list[str], settings: ProxySettings, jobs: int,
                echo=print) -> dict[str, str]:
    """Train every proxy that has no result yet in ``jobs`` worker processes. Returns key -> ran|cached.

    The pending proxies are dealt round-robin into one queue per worker (they all cost the same number
    of steps); a worker trains its queue in order, one proxy after another, so the interpreter and
    library imports are paid once per worker rather than once per proxy."""
    status, pending, seen = {}, [], set()
    for proxy in proxies:
        if proxy.key in seen:  # two candidates with the same weights train once
            continue
        seen.add(proxy.key)
        if proxy.result() is not None:
            status[proxy.key] = "cached"
        else:
            pending.append(proxy)
    if not pending:
        return status
    jobs = min(jobs, len(pending))
    echo(f"[mix] training {len(pending)} proxies ({len(status)} cached): {jobs} worker process(es), "
         f"{settings.threads} thread(s) each")
    for proxy in pending:
        write_spec(proxy, unit_names, settings)
    workers = []
    with terminate_as_interrupt():
        try:
            for queue in (pending[i::jobs] for i in range(jobs)):
                workers.append((queue, start_worker(queue, settings.threads)))
            wait_for_workers(workers, status, len(pending), echo)
        finally:
            for _queue, process in workers:
                if process.poll() is None:  # interrupted or another proxy failed: it resumes next time
                    process.terminate()
                    process.wait(timeout=60)
    return status


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt while workers run, so the ``finally`` that stops them runs
    (the workers live in their own sessions and would otherwise outlive a killed search)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_for_workers(workers: list, status: dict, total: int, echo) -> None:
    while True:
        running = False
        for queue, process in workers:
            code = process.poll()  # before reading results: a worker writes its last result, then exits
            for proxy in queue:
                if proxy.key not in status and proxy.result_path.exists():
                    status[proxy.key] = "ran"
                    echo(f"[mix] proxy {sum(v == 'ran' for v in status.values())}/{total} {proxy.label} "
                         f"trained in {proxy.result()['wall_s']:.0f} s")
            unfinished = [p for p in queue if p.key not in status]
            if code is None:
                running = True
            elif unfinished:  # the worker stopped (an error, or killed) before its queue was done
                failed = unfinished[0]
                raise RedoneError(f"mix: proxy {failed.label} ({failed.dir}) failed: {log_tail(failed.dir)}")
        if not running:
            return
        time.sleep(0.5)


def start_worker(queue: list[Proxy], threads: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false")
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("WANDB_MODE", "offline")):
        env.setdefault(key, value)
    log = open(queue[0].dir / "worker.log", "ab")
    try:
        # Same process group as the search (a Ctrl-C or a group kill stops both; checkpoints are written
        # atomically), and on Linux a SIGTERM when the search itself dies, even by SIGKILL.
        return subprocess.Popen([sys.executable, "-m", "redone.mix.proxies", *(str(p.dir) for p in queue)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)
    finally:
        log.close()


@contextlib.contextmanager
def proxy_lock(proxy_dir: Path):
    """Exclusive lock on a proxy dir while a worker trains it: two searches sharing a cache never
    train the same proxy at once (the lock goes with the process, however it ends)."""
    import fcntl

    handle = open(proxy_dir / ".lock", "w")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RedoneError(f"mix: proxy {proxy_dir} is being trained by another process (another search "
                              "sharing this cache?); wait for it or stop it") from None
        yield
    finally:
        handle.close()


def log_tail(proxy_dir: Path) -> str:
    path = proxy_dir / "worker.log"
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no log"])[-1].strip() + f" (log: {path})"


def redirect_output(path: Path) -> None:
    """Send this process's stdout/stderr (file descriptors, so library output too) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def train_proxy(proxy_dir: Path) -> dict:
    """Worker body: train (or resume, or just collect) one proxy; write result.json last."""
    with proxy_lock(proxy_dir):
        return train_locked(proxy_dir)


def train_locked(proxy_dir: Path) -> dict:
    from redone.stages import load_config, run_stage

    spec = json.loads((proxy_dir / "spec.json").read_text())
    config = load_config(spec["stage"], proxy_dir / "proxy.yaml")
    run_dir = Path(config.output_dir)
    started, resumed = time.perf_counter(), False
    if not (run_dir / "final" / "redone.json").exists():
        if run_dir.exists() and checkpoint_adapter(run_dir) is None:
            shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to resume
        resumed = run_dir.exists()
        if run_stage(config) is None:
            raise RedoneError(f"mix: proxy {proxy_dir} stopped before its last step")
    result = collect_result(spec, config, run_dir, time.perf_counter() - started, resumed)
    prune_run(run_dir, spec.get("keep_weights", False))
    write_json_atomically(proxy_dir / "result.json", result)
    return result


def collect_result(spec: dict, config, run_dir: Path, wall_s: float, resumed: bool) -> dict:
    lineage = json.loads((run_dir / "final" / "redone.json").read_text())
    evals = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines() if "eval_loss/" in line]
    last = [e for e in evals if e.get("step") == config.train.max_steps]
    if not last:
        raise RedoneError(f"mix: proxy {run_dir} logged no eval_loss at step {config.train.max_steps} "
                          "(is data.eval_holdout > 0?)")
    losses = {k.split("/", 1)[1]: float(v) for k, v in last[-1].items() if k.startswith("eval_loss/")}
    return {"key": spec["key"], "units": spec["units"], "shares": spec["shares"], "eval_loss": losses,
            "steps": lineage["steps"], "tokens_seen": lineage["tokens_seen"],
            "source_tokens": lineage["source_tokens"], "finished_at": lineage["finished_at"],
            "wall_s": round(wall_s, 2), "resumed": resumed, "run_dir": str(run_dir)}


def prune_run(run_dir: Path, keep_weights: bool) -> None:
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    if not keep_weights:
        for path in (run_dir / "final").glob("*.safetensors"):
            path.unlink()


def write_json_atomically(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------------
# The proxy model.


def ensure_tiny_model(base: str, cache: Path, layers: int, hidden: int, heads: int = 4, seed: int = 0) -> Path:
    """A random ``layers`` x ``hidden`` model of the base model's architecture with its tokenizer
    (cached: the same base and size give the same weights)."""
    from redone.model import resolve_model

    base_dir = Path(resolve_model(base))
    if not (base_dir / "config.json").exists():
        raise ConfigError(f"--proxy-model tiny: {base} has no config.json to take the architecture from; "
                          "pass --proxy-model PATH")
    if hidden % heads:
        raise ConfigError(f"--proxy-hidden: {hidden} is not a multiple of {heads} heads")
    ident = json.dumps({"config": (base_dir / "config.json").read_text(), "layers": layers, "hidden": hidden,
                        "heads": heads, "seed": seed, "base": str(base_dir)})
    target = cache / "models" / f"tiny-{layers}x{hidden}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        write_tiny_model(base_dir, tmp, layers, hidden, heads, seed)
        tmp.rename(target)
    except FileExistsError:  # another search made it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_tiny_model(base_dir: Path, out: Path, layers: int, hidden: int, heads: int, seed: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from redone.model import load_tokenizer

    config = AutoConfig.from_pretrained(base_dir)
    ffn_ratio = getattr(config, "intermediate_size", 2 * config.hidden_size) / config.hidden_size
    for key, value in (("hidden_size", hidden), ("intermediate_size", int(round(hidden * ffn_ratio))),
                       ("num_hidden_layers", layers), ("num_attention_heads", heads),
                       ("num_key_value_heads", heads), ("head_dim", hidden // heads)):
        if hasattr(config, key):
            setattr(config, key, value)
    if getattr(config, "layer_types", None) is not None:  # per-layer attention kinds (Qwen2/3, Gemma)
        config.layer_types = config.layer_types[:layers]
    config.tie_word_embeddings = True  # most of a tiny model is its embedding: do not pay for it twice
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out, safe_serialization=True)
    load_tokenizer(str(base_dir)).save_pretrained(out)


def model_parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            for name in handle.keys():
                total += int(np.prod(handle.get_slice(name).get_shape()))
    return total


def main(argv: list[str]) -> int:
    """``python -m redone.mix.proxies DIR [DIR ...]``: train the proxies in order; stop at the first failure."""
    import traceback

    if not argv:
        print("usage: python -m redone.mix.proxies PROXY_DIR [PROXY_DIR ...]", file=sys.stderr)
        return 2
    for index, item in enumerate(argv):
        if index:
            redirect_output(Path(item) / "worker.log")
        try:
            train_proxy(Path(item))
        except RedoneError as err:
            print(f"redone: error: {err}", file=sys.stderr, flush=True)
            return 1
        except Exception as err:  # the search reads the reason from this proxy's log
            traceback.print_exc()
            print(f"redone: error: proxy crashed: {type(err).__name__}: {err} (traceback above)", file=sys.stderr,
                  flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
