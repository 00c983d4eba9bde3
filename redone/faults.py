"""Named kill points for the kill/resume harness (scripts/kill_resume.py): a process SIGKILLs itself at
a named point of a write (checkpoint, final, data cache, reference cache) when ``REDONE_KILL_AT`` says so,
so the windows a crash can hit are tested deterministically. No effect unless the variable is set.

Used by the writers in train/ and data/ alike, so it lives in its own module and imports nothing.
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "REDONE_KILL_AT"
TRACE_ENV = "REDONE_KILL_TRACE"
_kill_hits: dict[str, int] = {}


def kill_point(name: str) -> None:
    """SIGKILL this process here when ``REDONE_KILL_AT`` names this point (and this is the n-th hit).

    With ``REDONE_KILL_TRACE=FILE`` every point reached is appended to FILE (one name a line), so a
    harness can learn from an uninterrupted run which kills a run can take.
    """
    trace = os.environ.get(TRACE_ENV)
    if trace:
        with open(trace, "a") as handle:
            handle.write(name + "\n")
    wanted = os.environ.get(KILL_ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _kill_hits[name] = _kill_hits.get(name, 0) + 1
    if _kill_hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def hit_counts() -> dict[str, int]:
    """How often each point was reached in this process (what a stage run in a child process hands
    back, so the n-th hit of a pipeline counts across its stage processes: ``redone.isolate``)."""
    return dict(_kill_hits)


def restore_hit_counts(counts: dict[str, int]) -> None:
    _kill_hits.clear()
    _kill_hits.update(counts)
