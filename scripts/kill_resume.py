"""Kill/resume harness: SIGKILL training runs at random and at chosen points, rerun the same command until
it finishes, and check that the result equals an uninterrupted run bit for bit.

    python scripts/kill_resume.py [--stages cpt,sft,dpo,pipeline] [--k 5] [--seed 0]
                                  [--model tiny|smollm2|DIR] [--steps N] [--launcher subprocess|fork]
                                  [--points all|essential] [--random-kills both|one] [--jobs N]
                                  [--workdir DIR] [--keep]

For each stage (and the whole pipeline): one uninterrupted reference run, then K trials. A trial is one
output dir driven to completion through several launches of the same command: each launch but the
last is killed with SIGKILL, at

- named points, deterministic (``REDONE_KILL_AT=<point>:<n>``, see redone/train/checkpoint.py): inside a
  checkpoint save (files written, no marker yet), between the marker and the rename, mid-prune, inside
  the final save, right after the start files, inside the tokenized-data cache write and the DPO
  reference-cache write; the reference run's trace (``REDONE_KILL_TRACE``) says which points a run
  reaches and how often, and each kill picks an occurrence at random (seeded);
- a random optimizer step (``step:<n>``), and a random moment (a timer in the parent, a fraction of the
  reference run's wall time: this one lands wherever the run happens to be).

Then the trial's final weights must equal the reference's (every tensor, bitwise) and its loss log
(``train_log.jsonl`` without the timing field) must be identical. Prints ``<stage>: K/K identical``.

Launchers: ``subprocess`` runs ``python -m redone ...`` exactly as a user would (~4 s of imports per
launch); ``fork`` forks a parent that has imported torch/transformers once (same code path, fast; what
the pytest wrapper uses). The cache write points need two one-line hooks in files this harness does
not own; until they exist (``kill_point("data-cache-write")`` in redone/data/cache.py
write_atomically after ``fill(tmp)``, ``kill_point("ref-cache-write")`` in redone/train/ref_cache.py
save before ``os.replace``), the child process wraps those two functions to call the same kill point.

Exit status 0 when every trial of every stage is identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
sys.path.insert(0, str(REPO))

# Points a run passes through, in the order a run meets them; "essential" = the ones issue 13 names.
ALL_POINTS = ("data-cache-write", "ref-cache-write", "start-files", "checkpoint-save", "checkpoint-marker",
              "checkpoint-prune", "final-save")
ESSENTIAL_POINTS = ("data-cache-write", "ref-cache-write", "checkpoint-save", "final-save")
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false",
       "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


# ------------------------------------------------------------------------------------------- configs


def stage_config(stage: str, model: str, out: Path, cache: Path, steps: int, threads: int) -> dict:
    train = {"max_steps": steps, "micro_batch_size": 2, "grad_accum": 1, "save_every": 2, "keep_last": 2,
             "log_every": 1, "progress": False, "threads": threads}
    sns = str(DATA / "sns_bench" / "train")
    data = {
        "cpt": {"seq_len": 64, "sources": [
            {"name": "notes", "path": sns, "format": "sns_bench", "tasks": ["Note-Gender"], "weight": 3},
            {"name": "shakespeare", "path": str(DATA / "general" / "tinyshakespeare.txt"), "limit": 200}],
            "quality": {"decontam": {"eval_sets": []}}},
        "sft": {"seq_len": 256, "max_prompt_chars": 300, "sources": [
            {"name": "sns", "path": sns, "format": "sns_bench", "tasks": ["Note-Gender", "Note-NER"], "limit": 16},
            {"name": "chat", "path": str(DATA / "preference" / "hh_rlhf_harmless_train.jsonl"),
             "format": "hh_rlhf", "limit": 16}]},
        "dpo": {"seq_len": 256, "max_prompt_chars": 300, "sources": [
            {"name": "sns", "path": sns, "format": "sns_bench", "tasks": ["Note-Gender"], "limit": 12},
            {"name": "hh", "path": str(DATA / "preference" / "hh_rlhf_harmless_train.jsonl"), "limit": 8}]},
    }[stage]
    data["cache_dir"] = str(cache)
    return {"stage": stage, "output_dir": str(out), "seed": 0, "model": {"name_or_path": model},
            "data": data, "optim": {"lr": 1.0e-3 if stage != "dpo" else 1.0e-4, "warmup_steps": 1}, "train": train}


def pipeline_config(model: str, root: Path, cache: Path, steps: int, threads: int) -> dict:
    sections = {}
    for stage in ("cpt", "sft", "dpo"):
        config = stage_config(stage, model, root / stage, cache, steps, threads)
        sections[stage] = {k: config[k] for k in ("data", "optim", "train")}
    return {"output_root": str(root), "seed": 0, "model": {"name_or_path": model}, **sections,
            "eval": {"enabled": False}}


def write_config(trial_dir: Path, stage: str, model: str, steps: int, threads: int) -> tuple[Path, list[str]]:
    """The config file of one run dir and the CLI arguments that train it."""
    import yaml

    cache = trial_dir / "cache"
    if stage == "pipeline":
        config, argv = pipeline_config(model, trial_dir / "run", cache, steps, threads), ["pipeline"]
    else:
        config, argv = stage_config(stage, model, trial_dir / "run", cache, steps, threads), ["train", "--stage", stage]
    path = trial_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, argv + ["--config", str(path)]


def run_dirs(trial_dir: Path, stage: str) -> list[Path]:
    run = trial_dir / "run"
    return [run / s for s in ("cpt", "sft", "dpo")] if stage == "pipeline" else [run]


# ------------------------------------------------------------------------------------------- launching


def install_cache_kill_points() -> list[str]:
    """Interim: make the data-cache and reference-cache writes call kill_point if their modules do not yet."""
    import redone.data.cache as cache
    import redone.train.ref_cache as ref_cache
    from redone.train.checkpoint import kill_point

    installed = []
    if "kill_point(" not in inspect.getsource(cache.write_atomically):
        original = cache.write_atomically

        def write_atomically(root, key, fill):
            def fill_then_maybe_die(tmp):
                fill(tmp)
                kill_point("data-cache-write")
            return original(root, key, fill_then_maybe_die)

        for module in [m for name, m in sys.modules.items() if name.startswith("redone.") and m is not None]:
            if getattr(module, "write_atomically", None) is original:
                module.write_atomically = write_atomically
        installed.append("data-cache-write")
    if "kill_point(" not in inspect.getsource(ref_cache.save):
        original_save_file = ref_cache.save_file

        def save_file(*args, **kwargs):
            original_save_file(*args, **kwargs)
            kill_point("ref-cache-write")

        ref_cache.save_file = save_file
        installed.append("ref-cache-write")
    return installed


def preload() -> None:
    """Import what a run needs once, before forking (no torch op runs here: no thread pool to inherit)."""
    import redone.cli  # noqa: F401
    import redone.data.cpt  # noqa: F401
    import redone.pipeline  # noqa: F401
    import redone.train.cpt  # noqa: F401
    import redone.train.dpo  # noqa: F401
    import redone.train.loop  # noqa: F401
    import redone.train.sft  # noqa: F401

    install_cache_kill_points()


@dataclass
class Launch:
    code: int  # exit status; -9 = SIGKILL
    seconds: float
    log: Path


def launch(argv: list[str], log: Path, launcher: str, kill_at: str | None = None, after: float | None = None,
           trace: Path | None = None) -> Launch:
    env = dict(ENV)
    if kill_at:
        env["REDONE_KILL_AT"] = kill_at
    if trace:
        env["REDONE_KILL_TRACE"] = str(trace)
    start = time.perf_counter()
    if launcher == "fork":
        pid = _fork_child(argv, env, log)
    else:
        with open(log, "w") as handle:
            proc = subprocess.Popen([sys.executable, __file__, "--child", "--", *argv], cwd=REPO,
                                    env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT)
        pid = proc.pid
    code = _wait(pid, after, start)
    return Launch(code, time.perf_counter() - start, log)


def _fork_child(argv: list[str], env: dict, log: Path) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        _fresh_locks_after_fork()
        os.environ.update(env)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        from redone.cli import main

        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001  reported in the launch log
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _fresh_locks_after_fork() -> None:
    """Give a forked child its own tqdm locks. tqdm guards its bars with a multiprocessing lock that every
    process forked from one parent shares; a child SIGKILLed while drawing a bar dies holding it, and
    every later child would block on it forever. (Subprocess launches never share it.)"""
    from tqdm import std

    if "mp_lock" in vars(std.TqdmDefaultWriteLock):
        del std.TqdmDefaultWriteLock.mp_lock
    std.TqdmDefaultWriteLock.th_lock = std.TRLock()
    classes = [std.tqdm]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        if "_lock" in vars(cls):
            delattr(cls, "_lock")


def _wait(pid: int, after: float | None, start: float) -> int:
    while after is not None:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.perf_counter() - start >= after:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def finished_before_kill(result: Launch, runs: list[Path]) -> bool:
    """A timer that fired after final/ was in place: the rerun says the run is finished (``train`` refuses
    to overwrite a finished run), which is the end of that trial, not a failure."""
    text = result.log.read_text(errors="replace") if result.log.exists() else ""
    return result.code == 1 and "already holds a finished run" in text and all((r / "final").is_dir() for r in runs)


def child(argv: list[str]) -> int:
    """``--child``: the real CLI in this process, with the interim cache kill points installed."""
    from redone.cli import main

    install_cache_kill_points()
    return main(argv)


# ------------------------------------------------------------------------------------------- comparing


def weights_digest(final: Path) -> dict[str, str]:
    """Per tensor: sha256 of its bytes + shape + dtype (equal digests = bitwise-equal weights)."""
    import torch
    from safetensors import safe_open

    digests = {}
    for file in sorted(final.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name).contiguous()
                raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
                digests[name] = f"{hashlib.sha256(raw).hexdigest()}|{tuple(tensor.shape)}|{tensor.dtype}"
    return digests


def loss_log(run: Path) -> list[dict]:
    lines = (run / "train_log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in lines if line.strip()]


def outcome(trial_dir: Path, stage: str) -> dict:
    return {str(run.name): {"weights": weights_digest(run / "final"), "log": loss_log(run)}
            for run in run_dirs(trial_dir, stage)}


# ------------------------------------------------------------------------------------------- planning


@dataclass
class Trial:
    index: int
    kills: list[tuple[str, str | None, float | None]] = field(default_factory=list)  # (label, kill_at, timer)
    launches: list[Launch] = field(default_factory=list)
    identical: bool = False
    note: str = ""


# The order a trial tries its kills in: the order a run meets them, so that no kill makes a later one
# unreachable. The random-moment timer goes just before the final save: it fires a fraction (0.1-0.5) of
# the reference run's wall time into its launch, which still has at least half a run ahead of it, and
# whatever it interrupts, the final save is still to come.
KILL_ORDER = ("data-cache-write", "ref-cache-write", "start-files", "step", "checkpoint-save",
              "checkpoint-marker", "checkpoint-prune", "timer", "final-save")


def plan_trials(trace: list[str], k: int, seed: int, points: tuple[str, ...], ref_seconds: float,
                stage: str, random_kills: str = "both") -> list[Trial]:
    """K trials. The named points the reference run reached are dealt round-robin over the trials; each
    trial adds a random moment (a fraction of the reference wall time) and a random optimizer step
    (``random_kills="one"``: odd trials the moment, even trials the step).

    A trial's first named kill takes a random occurrence of its point in the first half of a fresh run
    (seeded); the relaunches that follow have done part of the work, so each later kill takes an early
    occurrence of what is left (the first one; for ``step`` one of the next two): every planned kill
    stays reachable.
    """
    counts = {kind: trace.count(kind) for kind in KILL_ORDER}
    reachable = [p for p in points if counts.get(p)]
    trials = []
    for i in range(k):
        rng = random.Random(f"{seed}:{stage}:{i}")
        trial, first = Trial(i + 1), True
        extra = ["step", "timer"] if random_kills == "both" else [("timer", "step")[i % 2]]
        for kind in sorted(reachable[i::k] + extra, key=KILL_ORDER.index):
            if kind == "timer":
                fraction = rng.uniform(0.1, 0.5)
                trial.kills.append((f"timer:{fraction:.2f}", None, fraction * ref_seconds))
                first = False
                continue
            total = max(1, counts[kind] - 1) if kind == "step" else counts[kind]
            if first:
                n = rng.randint(1, (total + 1) // 2)
            else:
                n = rng.randint(1, min(2, total)) if kind == "step" else 1
            first = False
            trial.kills.append((f"{kind}:{n}", f"{kind}:{n}", None))
        trials.append(trial)
    return trials


# ------------------------------------------------------------------------------------------- driving


def run_stage(stage: str, args, workdir: Path, model: str, log) -> tuple[int, int, dict]:
    stage_dir = workdir / stage
    ref_dir = stage_dir / "reference"
    ref_dir.mkdir(parents=True)
    _, argv = write_config(ref_dir, stage, model, args.steps, args.threads)
    trace = ref_dir / "trace.txt"
    ref = launch(argv, ref_dir / "launch.log", args.launcher, trace=trace)
    if ref.code != 0:
        raise SystemExit(f"{stage}: the reference run failed (exit {ref.code}); see {ref.log}")
    reference = outcome(ref_dir, stage)
    points = ALL_POINTS if args.points == "all" else ESSENTIAL_POINTS
    trials = plan_trials(trace.read_text().split(), args.k, args.seed, points, ref.seconds, stage,
                         args.random_kills)
    for trial in trials:
        trial_dir = stage_dir / f"trial-{trial.index}"
        trial_dir.mkdir()
        _, argv = write_config(trial_dir, stage, model, args.steps, args.threads)
        for j, (label, kill_at, timer) in enumerate(trial.kills):
            result = launch(argv, trial_dir / f"launch-{j + 1}.log", args.launcher, kill_at=kill_at, after=timer)
            trial.launches.append(result)
            if result.code == 0 or finished_before_kill(result, run_dirs(trial_dir, stage)):
                break  # finished before this kill point was reached (e.g. the timer fired too late)
            if result.code != -signal.SIGKILL:
                trial.note = f"launch {j + 1} ({label}) exited {result.code}: see {result.log}"
                break
        else:
            result = launch(argv, trial_dir / "launch-final.log", args.launcher)
            trial.launches.append(result)
            if result.code != 0 and not finished_before_kill(result, run_dirs(trial_dir, stage)):
                trial.note = f"the final launch exited {result.code}: see {result.log}"
        if not trial.note:
            got = outcome(trial_dir, stage)
            trial.identical = got == reference
            if not trial.identical:
                trial.note = "final weights or loss log differ from the reference"
        killed = [label for (label, _, _), run in zip(trial.kills, trial.launches) if run.code == -signal.SIGKILL]
        log(f"  {stage} trial {trial.index}: killed at {', '.join(killed) or 'nothing'}; "
            f"{len(trial.launches)} launches, {sum(x.seconds for x in trial.launches):.1f} s -> "
            f"{'identical' if trial.identical else 'DIFFERENT: ' + trial.note}")
        if trial.identical and not args.keep:
            shutil.rmtree(trial_dir)
    identical = sum(t.identical for t in trials)
    kills = sum(run.code == -signal.SIGKILL for t in trials for run in t.launches)
    covered = sorted({label.split(":")[0] for t in trials for (label, _, _), run in zip(t.kills, t.launches)
                      if run.code == -signal.SIGKILL})
    return identical, len(trials), {"kills": kills, "points_hit": covered, "reference_s": round(ref.seconds, 1)}


def resolve_model_arg(name: str, workdir: Path) -> str:
    if name == "tiny":  # in a subprocess: the (forking) parent must not start torch's thread pool
        out = workdir / "tiny-model"
        subprocess.run([sys.executable, "-m", "redone", "model", "tiny", "--out", str(out)], cwd=REPO, check=True,
                       env={**os.environ, **ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return str(out)
    if name == "smollm2":
        from redone.model import resolve_model

        return resolve_model("smollm2-135m-instruct")
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", default="cpt,sft,dpo,pipeline")
    parser.add_argument("--k", type=int, default=5, help="killed trials per stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="tiny", help="tiny (random 2-layer Llama), smollm2, or a model dir")
    parser.add_argument("--steps", type=int, default=6, help="max_steps of every run (checkpoint every 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--launcher", choices=("subprocess", "fork"), default="subprocess")
    parser.add_argument("--points", choices=("all", "essential"), default="all")
    parser.add_argument("--random-kills", choices=("both", "one"), default="both",
                        help="per trial: a random moment and a random step, or one of the two (alternating)")
    parser.add_argument("--jobs", type=int, default=1, help="stages run by this many worker processes at once")
    parser.add_argument("--workdir", default=None, help="default: a temp dir, removed unless --keep")
    parser.add_argument("--keep", action="store_true", help="keep every run dir (default: only differing ones)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child([a for a in args.rest if a != "--"])
    os.environ.update(ENV)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="redone-kill-resume-"))
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    stages = args.stages.split(",")
    model = resolve_model_arg(args.model, workdir)
    if args.jobs > 1 and len(stages) > 1:
        summary = run_workers(args, stages, workdir, model)
    else:
        summary = run_stages(args, stages, workdir, model)
    all_ok = all(info["identical"] == info["trials"] for info in summary.values())
    print(json.dumps({"model": args.model, "k": args.k, "launcher": args.launcher, "steps": args.steps,
                      "seconds": round(time.perf_counter() - start, 1), "stages": summary}))
    if all_ok and not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all_ok else 1


def run_stages(args, stages: list[str], workdir: Path, model: str) -> dict:
    if args.launcher == "fork":
        preload()
    summary = {}
    for stage in stages:
        identical, total, info = run_stage(stage, args, workdir, model, lambda line: print(line, flush=True))
        summary[stage] = {"identical": identical, "trials": total, **info}
        print(f"{stage}: {identical}/{total} identical ({info['kills']} kills; points hit: "
              f"{', '.join(info['points_hit'])}; reference run {info['reference_s']} s)", flush=True)
    return summary


# Relative cost of a stage's runs (the pipeline trains all three stages): used to balance the workers.
STAGE_COST = {"cpt": 1.3, "sft": 1.0, "dpo": 1.1, "pipeline": 3.4}


def run_workers(args, stages: list[str], workdir: Path, model: str) -> dict:
    """Split the stages over ``--jobs`` worker processes (each one this script on a subset), costliest
    first onto the least loaded worker; relay their output, merge their summaries."""
    loads: list[tuple[float, list[str]]] = [(0.0, []) for _ in range(min(args.jobs, len(stages)))]
    for stage in sorted(stages, key=lambda s: -STAGE_COST.get(s, 1.0)):
        loads.sort(key=lambda item: item[0])
        cost, group = loads[0]
        loads[0] = (cost + STAGE_COST.get(stage, 1.0), group + [stage])
    workers = []
    for i, (_, group) in enumerate(loads):
        out = workdir / f"worker-{i}.out"
        cmd = [sys.executable, __file__, "--stages", ",".join(group), "--k", str(args.k), "--seed", str(args.seed),
               "--model", model, "--steps", str(args.steps), "--threads", str(args.threads), "--launcher",
               args.launcher, "--points", args.points, "--random-kills", args.random_kills,
               "--workdir", str(workdir / f"worker-{i}")] + (["--keep"] if args.keep else [])
        with open(out, "w") as handle:
            workers.append((out, subprocess.Popen(cmd, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)))
    summary = {}
    for out, proc in workers:
        proc.wait()
        lines = out.read_text().splitlines()
        for line in lines[:-1]:
            print(line, flush=True)
        try:
            summary.update(json.loads(lines[-1])["stages"])
        except (IndexError, ValueError, KeyError):
            raise SystemExit(f"a worker failed (exit {proc.returncode}); see {out}") from None
    return {stage: summary[stage] for stage in stages if stage in summary}


if __name__ == "__main__":
    sys.exit(main())
