"""Report plots: every stage on one step axis with its boundaries, EMA smoothing with known values, held-out
losses, per-step losses preferred when the loop writes them, clear errors on missing or corrupt logs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from redone.errors import RedoneError
from redone.report import pipeline_losses, plot_eval_bars, plot_losses, read_log, smooth, smoothing_tau
from redone.sns.scoring import TASKS

TASK_NAMES = ["Note-NER", "Note-Gender", "TransBench-zh2en"]


def write_stage(root: Path, stage: str, steps: int, every: int, start: float, tasks=(), eval_every=0) -> dict:
    """A train_log.jsonl like the loop's: one window mean per `every` steps, eval_loss lines, per-task losses."""
    folder = root / stage
    folder.mkdir(parents=True)
    lines = []
    for step in range(every, steps + 1, every):
        line = {"step": step, "loss": start - 0.01 * step, "lr": 1e-4}
        line.update({f"loss/{t}": start + i - 0.01 * step for i, t in enumerate(tasks)})
        lines.append(line)
        if eval_every and step % eval_every == 0:
            lines.append({"step": step, **{f"eval_loss/{t}": start + 0.5 + i for i, t in enumerate(tasks)}})
    (folder / "train_log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {"status": "fresh", "final": str(folder / "final"), "config": {"output_dir": str(folder)}}


@pytest.fixture()
def run(tmp_path) -> tuple[Path, dict]:
    record = {"stages": {
        "cpt": write_stage(tmp_path, "cpt", 24, 4, 3.0, tasks=["sns", "shakespeare"], eval_every=12),
        "sft": write_stage(tmp_path, "sft", 120, 10, 2.0, tasks=TASK_NAMES, eval_every=40),
        "dpo": write_stage(tmp_path, "dpo", 12, 2, 0.7),
    }}
    return tmp_path, record


def test_stages_end_to_end_on_one_axis_with_held_out_means(run):
    root, record = run
    stages = pipeline_losses(root, record)
    assert [(s.stage, s.offset, s.last_step) for s in stages] == [("cpt", 0, 24), ("sft", 24, 120), ("dpo", 144, 12)]
    sft = stages[1]
    assert sft.steps == list(range(10, 121, 10)) and sft.what == "mean of each logged window"
    assert sft.losses[0] == pytest.approx(1.9)
    # Held-out: the mean over the three tasks (2.5, 3.5, 4.5) at every eval step.
    assert sft.held_out == {40: pytest.approx(3.5), 80: pytest.approx(3.5), 120: pytest.approx(3.5)}
    assert sft.held_out_tasks == 3 and stages[2].held_out == {}


def test_per_step_losses_win_over_the_logged_windows(run):
    root, record = run
    (root / "dpo" / "step_loss.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 0.7 - s / 100}) + "\n" for s in range(1, 13)) + '{"step": 13, "lo')
    dpo = pipeline_losses(root, record)[2]
    assert dpo.what == "every step" and dpo.steps == list(range(1, 13))  # the torn last line is left out
    assert dpo.losses[-1] == pytest.approx(0.58)


def test_ema_golden_values_and_window_weighting():
    d = math.exp(-1)
    assert smooth([1, 2, 3], [1.0, 0.0, 0.0], tau=1.0) == pytest.approx([1.0, d / (1 + d), d * d / (1 + d + d * d)])
    # A point logged 10 steps after the last counts like 10 steps: with tau = 10 it is the 1-step case above.
    assert smooth([10, 20, 30], [1.0, 0.0, 0.0], tau=10.0) == pytest.approx(smooth([1, 2, 3], [1.0, 0.0, 0.0], 1.0))
    assert smooth([5, 6, 7, 8], [2.0] * 4, tau=3.0) == pytest.approx([2.0] * 4)  # bias-corrected: no ramp from 0
    assert smoothing_tau(list(range(1, 121))) == 12.0 and smoothing_tau([3]) == 1.0


def test_plot_files_are_written_and_readable(run):
    import matplotlib.image

    root, record = run
    paths = plot_losses(root, record)
    assert [p.name for p in paths] == ["loss_curves.png", "sft_task_losses.png"]
    assert matplotlib.image.imread(paths[0]).shape[:2] == (624, 1320)  # 11 x 5.2 in at 120 dpi
    rows = 1  # three tasks: one row of three panels
    assert matplotlib.image.imread(paths[1]).shape[:2] == (int((2.3 * rows + 0.6) * 120), int(3.2 * 3 * 120))
    results = [{"sns_bench": {"tasks": {t: 10.0 * i for i, t in enumerate(TASKS)}, "average": 35.0}},
               {"sns_bench": {"tasks": {t: 5.0 for t in TASKS}, "average": 5.0}}, {"sns_bench": None}]
    bars = plot_eval_bars(root, results, ["dpo", "skill-free", "no-bench"])
    assert [p.name for p in bars] == ["sns_bench_bars.png"] and bars[0].stat().st_size > 10_000


def test_missing_or_corrupt_logs_fail_clearly(run):
    root, record = run
    (root / "sft" / "train_log.jsonl").unlink()
    with pytest.raises(RedoneError, match=r"report: .*sft/train_log\.jsonl not found"):
        plot_losses(root, record)
    assert not (root / "loss_curves.png").exists()
    (root / "sft" / "train_log.jsonl").write_text('{"step": 1, "loss": 2.0}\nnot json\n{"step": 2, "loss": 1.9}\n')
    with pytest.raises(RedoneError, match=r"sft/train_log\.jsonl:2: not valid JSON"):
        read_log(root / "sft")
    (root / "sft" / "train_log.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')  # killed mid-write
    assert read_log(root / "sft") == [{"step": 1, "loss": 2.0}]
