"""Checkpoints: ``output_dir/checkpoints/step-N/`` written atomically, newest usable one resumed.

A step dir holds accelerate's state (model weights as safetensors, optimizer, scheduler, RNG),
``loop_state.json`` (step, tokens, sampler position, data-order hash) and ``config.yaml``; the
``COMPLETE`` marker is written last, inside a temp dir that is then renamed, so a crash mid-save
never leaves a dir that looks complete. ``keep_last`` prunes older complete checkpoints: the marker
goes first, then the files, so a crash mid-prune never leaves a dir marked complete with files missing.

Resume (``train.resume: auto``) takes the newest complete checkpoint whose files pass a structural
check (``checkpoint_problem``: loop state parses, safetensors headers cover their files, torch zip
archives are whole); a damaged newest one is skipped, with a printed line naming it and the reason.

Kill points (testing crash safety, ``scripts/kill_resume.py``): ``REDONE_KILL_AT=<point>[:<n>]`` makes
the process SIGKILL itself the n-th time (default 1st) it reaches ``kill_point("<point>")``;
``REDONE_KILL_TRACE=FILE`` lists the points a run reaches. Unset, a kill point costs two dict lookups.
Points: ``start-files``, ``step``, ``checkpoint-save``, ``checkpoint-marker``, ``checkpoint-prune``,
``final-save`` (loop.py and here); the data and reference caches may call ``kill_point`` too
(``data-cache-write``, ``ref-cache-write``).

Errors: ``RedoneError`` for an explicit ``train.resume`` path that is not a complete, intact checkpoint.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

from redone.errors import RedoneError
from redone.faults import KILL_ENV, TRACE_ENV, kill_point  # noqa: F401 (re-exported)

MARKER = "COMPLETE"
STATE_FILE = "loop_state.json"
def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def step_dir(output_dir: str | Path, step: int) -> Path:
    return checkpoints_dir(output_dir) / f"step-{step}"


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete step dirs, oldest first (incomplete and temp dirs are ignored)."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = [(_step_number(p), p) for p in root.glob("step-*") if (p / MARKER).exists()]
    return [p for step, p in sorted(found) if step is not None]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = complete_checkpoints(output_dir)
    return found[-1] if found else None


def checkpoint_problem(path: Path) -> str | None:
    """Why a complete-marked checkpoint cannot be resumed from (a file and the reason), or None."""
    from redone.model import safetensors_problem

    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{STATE_FILE} is missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{STATE_FILE} is unreadable ({str(err).splitlines()[0]})"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return f"{STATE_FILE} holds no step"
    # FSDP's sharded state is .distcp files; DeepSpeed's is .pt; accelerate's default .safetensors + .bin.
    if not any(f.suffix in (".safetensors", ".bin", ".pt", ".distcp") for f in path.rglob("*")):
        return "no model or optimizer files"
    for file in sorted(path.rglob("*")):
        if not file.is_file():
            continue
        if file.suffix == ".safetensors":
            problem = safetensors_problem(file)
        else:
            problem = torch_archive_problem(file) if file.suffix in (".bin", ".pt", ".pkl") else None
        if problem:
            return f"{file.relative_to(path)}: {problem}"
    return None


def torch_archive_problem(file: Path) -> str | None:
    """A torch.save file (a zip archive) that is empty or cut short; None if it looks whole."""
    size = file.stat().st_size
    if size == 0:
        return "empty file (0 bytes)"
    with file.open("rb") as handle:
        magic = handle.read(2)
    if magic == b"PK":  # torch's zip format: a truncated archive has lost its central directory
        try:
            with zipfile.ZipFile(file) as archive:
                archive.infolist()
        except (zipfile.BadZipFile, OSError) as err:
            return f"truncated or damaged archive ({err})"
    return None


def usable_checkpoints(output_dir: str | Path, log=print) -> Path | None:
    """The newest complete checkpoint that passes ``checkpoint_problem``; damaged newer ones are
    skipped with a line saying which and why. None when there is no usable checkpoint."""
    skipped = []
    for path in reversed(complete_checkpoints(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            if skipped:
                log(f"[redone] checkpoint {skipped[-1][0]} is damaged ({skipped[-1][1]}); "
                    f"falling back to {path.name}, the newest intact one")
            return path
        skipped.append((path.name, problem))
    if skipped:
        damaged = "; ".join(f"{name}: {problem}" for name, problem in skipped)
        raise RedoneError(f"train.resume: no intact checkpoint in {checkpoints_dir(output_dir)} ({damaged}); "
                          "delete the damaged step dirs to start over")
    return None


def resolve_resume(resume, output_dir: str | Path, log=print) -> Path | None:
    """``auto`` -> newest usable checkpoint or None; ``false`` -> None; a path -> that dir (checked)."""
    if resume in (False, None) or str(resume).lower() in ("false", "no", "none", "never"):
        return None
    if str(resume).lower() == "auto":
        return usable_checkpoints(output_dir, log)
    path = Path(str(resume))
    if not (path / MARKER).exists():
        raise RedoneError(f"train.resume: {path} is not a complete checkpoint (no {MARKER} marker)")
    problem = checkpoint_problem(path)
    if problem:
        raise RedoneError(f"train.resume: {path} is damaged ({problem})")
    return path


def temp_dir_for(output_dir: str | Path, step: int) -> Path:
    path = checkpoints_dir(output_dir) / f".tmp-step-{step}"
    return path


def finalize(tmp: Path, target: Path, loop_state: dict, config_yaml: str) -> None:
    """Main process only, after every rank wrote its part of the state into ``tmp``."""
    (tmp / STATE_FILE).write_text(json.dumps(loop_state, indent=1, sort_keys=True))
    (tmp / "config.yaml").write_text(config_yaml)
    (tmp / MARKER).write_text("ok\n")
    kill_point("checkpoint-marker")
    if target.exists():  # a stale, incomplete dir of the same step (a crash after rename is impossible)
        shutil.rmtree(target)
    tmp.rename(target)


def remove_checkpoint(path: Path) -> None:
    """Unmark first, then delete: a crash in between leaves an incomplete dir, which resume ignores."""
    (path / MARKER).unlink(missing_ok=True)
    kill_point("checkpoint-prune")
    shutil.rmtree(path, ignore_errors=True)


def prune(output_dir: str | Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` complete checkpoints; also clear what crashes leave behind: temp
    dirs, and unmarked step dirs older than the newest complete one (a prune killed half-way)."""
    complete = complete_checkpoints(output_dir)
    for path in complete[:-keep_last]:
        remove_checkpoint(path)
    for path in checkpoints_dir(output_dir).glob(".tmp-step-*"):
        shutil.rmtree(path, ignore_errors=True)
    newest = _step_number(complete[-1]) if complete else None
    for path in checkpoints_dir(output_dir).glob("step-*"):
        step = _step_number(path)
        if newest is not None and step is not None and step < newest and not (path / MARKER).exists():
            shutil.rmtree(path, ignore_errors=True)


def _step_number(path: Path) -> int | None:
    try:
        return int(path.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return None


def read_loop_state(path: Path) -> dict:
    return json.loads((path / STATE_FILE).read_text())
