"""Run one function in a fresh child process (``run_isolated``): how the pipeline trains each stage.

Why: every stage then starts with a fresh heap and hands all host (and GPU) memory of the previous
stage back before the next one loads its model. Measured (SmolLM2, 2 Xeon cores, bf16, full.yaml with
stages [cpt, sft], 96 CPT + 40 SFT steps, 2026-12-05): peak RSS 6.47 GB with a process per stage against
7.76 GB in one process, losses bitwise equal, wall 7:43 vs 7:23 (each child imports torch again, ~5 s).
It also rules out a slowdown seen once in one process (SFT after 96 CPT steps at 66-92 tokens/s against
164-308 fresh, py-spy: ~40% in glibc ``_int_malloc``), which the run above did not reproduce
(docs/BENCHMARKS.md).

How: ``python -m redone.isolate`` as a subprocess (a fresh interpreter: no fork, as the parent may have
used torch's OpenMP pool, which a forked child cannot use; and unlike multiprocessing's spawn it never
re-imports the caller's ``__main__`` script). The function and its arguments go to the child pickled on
its stdin, the outcome comes back pickled on a pipe of its own; stdout/stderr are the parent's, so the
stage's log lines appear as before. The child applies the process-wide settings the CLI applies
(``tune_malloc``) before running the function.

- A user error (``RedoneError``) raised in the child is raised again in the parent unchanged, so it is
  still one line. Any other exception is raised again with the child's traceback attached as its cause.
- A child killed by a signal (SIGKILL from the out-of-memory killer, a kill harness) makes the parent
  say which stage died and by what, then die by the same signal: the exit status a scheduler or shell
  sees is the one an in-process run would have given (137 for SIGKILL), and checkpoints stay resumable.
- The child dies with the parent (Linux: ``PR_SET_PDEATHSIG``), so killing the pipeline never leaves
  an orphaned stage training on.
- The kill/resume harness's hit counters (``redone.faults``) are carried into the child and back, so a
  kill planned at "the 5th checkpoint save of the pipeline" still means that across stage processes.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import traceback

from redone import faults
from redone.errors import RedoneError


class ChildTraceback(Exception):
    """The traceback of an exception raised in the child process (attached as ``__cause__``)."""

    def __str__(self) -> str:
        return "\n\n" + self.args[0]


def run_isolated(func, *args, label: str):
    """``func(*args)`` in a fresh Python process; its return value, or its exception raised here.

    ``func`` must be importable by name (a module-level function) and ``args`` and the return value must
    pickle (dataclass configs, paths).
    """
    task = pickle.dumps((func, args, faults.hit_counts()))
    result_read, result_write = os.pipe()
    try:
        child = subprocess.Popen([sys.executable, "-m", "redone.isolate", str(result_write)], stdin=subprocess.PIPE,
                                 pass_fds=(result_write,), env=_child_env(), preexec_fn=die_with_parent)
    finally:
        os.close(result_write)  # the child holds the writing end: EOF here once it is gone
    with os.fdopen(result_read, "rb") as results:
        try:
            child.stdin.write(task)
            child.stdin.close()
            outcome = results.read()
            code = child.wait()
        except BrokenPipeError:  # died before reading its task
            code = child.wait()
            outcome = b""
        except KeyboardInterrupt:
            # Ctrl-C reached the child as well (same process group); let it finish its own handling.
            child.wait()
            raise
    if not outcome:
        _child_died(code, label)
    kind, value, hits, text = pickle.loads(outcome)
    faults.restore_hit_counts(hits)
    if kind == "ok":
        return value
    if isinstance(value, (RedoneError, KeyboardInterrupt)) or text is None:
        raise value
    raise value from ChildTraceback(text)


def _child_env() -> dict:
    """The parent's environment, with this copy of redone first on the path (the one the parent runs)."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = [package_root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path))


def _child_died(code: int, label: str):
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        print(f"redone: {label}: the stage process was killed by {name}{hint}; rerun the same command to "
              f"resume from its newest checkpoint", file=sys.stderr, flush=True)
        sys.stdout.flush()
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be caught, so need no reset
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    raise RedoneError(f"{label}: the stage process exited with status {code} without a result")


def child_main(result_fd: int) -> None:
    """The child: the CLI's process settings, then the task read from stdin; the outcome goes to ``result_fd``."""
    from redone.allocator import tune_malloc

    tune_malloc()
    func, args, hits = pickle.loads(sys.stdin.buffer.read())
    faults.restore_hit_counts(hits)
    try:
        outcome = ("ok", func(*args), faults.hit_counts(), None)
    except BaseException as err:  # noqa: BLE001  every outcome goes back to the parent
        outcome = ("error", err, faults.hit_counts(), traceback.format_exc())
    try:
        data = pickle.dumps(outcome)
    except Exception as err:  # noqa: BLE001  an exception (or result) that does not pickle
        _, value, hits, text = outcome
        data = pickle.dumps(("error", RuntimeError(f"{type(value).__name__}: {value} (not picklable: {err})"),
                             hits, text))
    with os.fdopen(result_fd, "wb") as out:
        out.write(data)


def die_with_parent() -> None:
    """In the child before exec, Linux only: SIGTERM it when the parent dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


if __name__ == "__main__":
    child_main(int(sys.argv[1]))
