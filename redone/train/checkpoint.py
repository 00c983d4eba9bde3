"""Checkpoints: ``output_dir/checkpoints/step-N/`` written atomically, newest complete one resumed.

A step dir holds accelerate's state (model weights as safetensors, optimizer, scheduler, RNG),
``loop_state.json`` (step, tokens, sampler position, data-order hash) and ``config.yaml``; the
``COMPLETE`` marker is written last, inside a temp dir that is then renamed, so a crash mid-save
never leaves a dir that looks complete. ``keep_last`` prunes older complete checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from redone.errors import RedoneError

MARKER = "COMPLETE"
STATE_FILE = "loop_state.json"


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def step_dir(output_dir: str | Path, step: int) -> Path:
    return checkpoints_dir(output_dir) / f"step-{step}"


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete step dirs, oldest first (incomplete and temp dirs are ignored)."""
    root = checkpoints_dir(output_dir)
    if not root.exists():
        return []
    found = []
    for path in root.iterdir():
        if path.name.startswith("step-") and (path / MARKER).exists():
            try:
                found.append((int(path.name.split("-", 1)[1]), path))
            except ValueError:
                continue
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = complete_checkpoints(output_dir)
    return found[-1] if found else None


def resolve_resume(resume, output_dir: str | Path) -> Path | None:
    """``auto`` -> newest complete checkpoint or None; ``false`` -> None; a path -> that dir (checked)."""
    if resume in (False, None) or str(resume).lower() in ("false", "no", "none", "never"):
        return None
    if str(resume).lower() == "auto":
        return latest_checkpoint(output_dir)
    path = Path(str(resume))
    if not (path / MARKER).exists():
        raise RedoneError(f"train.resume: {path} is not a complete checkpoint (no {MARKER} marker)")
    return path


def temp_dir_for(output_dir: str | Path, step: int) -> Path:
    path = checkpoints_dir(output_dir) / f".tmp-step-{step}"
    return path


def finalize(tmp: Path, target: Path, loop_state: dict, config_yaml: str) -> None:
    """Main process only, after every rank wrote its part of the state into ``tmp``."""
    (tmp / STATE_FILE).write_text(json.dumps(loop_state, indent=1, sort_keys=True))
    (tmp / "config.yaml").write_text(config_yaml)
    (tmp / MARKER).write_text("ok\n")
    if target.exists():  # a stale, incomplete dir of the same step (a crash after rename is impossible)
        shutil.rmtree(target)
    tmp.rename(target)


def prune(output_dir: str | Path, keep_last: int) -> None:
    for path in complete_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
    for path in checkpoints_dir(output_dir).glob(".tmp-step-*"):
        shutil.rmtree(path, ignore_errors=True)


def read_loop_state(path: Path) -> dict:
    return json.loads((path / STATE_FILE).read_text())
