"""The pipeline's report: renders what the stages and the evaluation produced; runs nothing itself.

- ``report.md``: per-stage training summary, the settings the evaluation was measured with, and the
  stage-by-stage table with deltas (the skill-free column -- perfect formats, no skill -- beside it).
- PNG plots: the loss curves of all stages on one step axis with the stage boundaries marked (train loss
  as logged plus an EMA line, held-out loss), SFT's train and held-out loss per task, the SNS-Bench bars.
- ``headline``: the one line the console ends with (base -> last stage, and the skill-free baseline).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from redone.eval.report_table import compare_markdown
from redone.sns.scoring import TASKS


def headline(results: list[dict], labels: list[str]) -> str:
    scores = {label: (r.get("sns_bench") or {}).get("average") for label, r in zip(labels, results)}
    final = next((label for label in reversed(labels) if label not in ("skill-free",)), None)
    if final is None or scores.get("base") is None or scores.get(final) is None:
        return ""
    line = f"SNS-Bench average: base {scores['base']:.2f} -> {final} {scores[final]:.2f} " \
           f"({scores[final] - scores['base']:+.2f})"
    if scores.get("skill-free") is not None:
        line += f"; skill-free baseline {scores['skill-free']:.2f}"
    return line


def training_summary(record: dict) -> str:
    lines = ["| stage | status | seconds | steps | tokens | final loss |", "|---|---|---|---|---|---|"]
    for stage, info in record["stages"].items():
        lineage_file = Path(info["final"]) / "redone.json"
        lineage = json.loads(lineage_file.read_text()) if lineage_file.exists() else {}
        loss = (lineage.get("final_metrics") or {}).get("loss")
        lines.append(f"| {stage} | {info.get('status')} | {info.get('seconds', '')} | {lineage.get('steps', '')} | "
                     f"{lineage.get('tokens_seen', 0):,} | {'' if loss is None else f'{loss:.4f}'} |")
    return "\n".join(lines)


def render(root: Path, record: dict, tables: list[tuple[str, list[dict], list[str]]]) -> str:
    """Write report.md and the plots under ``root`` from one (prompt style, results, labels) group per
    evaluated prompt style; returns the stage tables (Markdown), the main style first."""
    sections, text = [], []
    for i, (style, results, labels) in enumerate(tables):
        table = compare_markdown(results, labels)
        title = "## Evaluation (stage by stage)" if i == 0 else f"## Evaluation with the {style} prompts"
        sections.append(f"{title}\n\n{table}")
        text += [title, "", *eval_settings(results, labels), "", table, ""]
    _, results, labels = tables[0]
    plots = plot_losses(root, record) + plot_eval_bars(root, results, labels)
    head = ["# redone pipeline report", "", "## Training", "", training_summary(record), ""]
    tail = ["## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots]]
    (root / "report.md").write_text("\n".join(head + text + tail) + "\n")
    return "\n\n".join(sections)


def eval_settings(results: list[dict], labels: list[str]) -> list[str]:
    """What the table was measured on, so a number is never read without its subset and decoding."""
    model_results = [r for r, label in zip(results, labels) if label != "skill-free"] or results
    if not model_results:
        return []
    h = model_results[0]["header"]
    seconds = ", ".join(f"{label} {r['header'].get('wall_time_s', 0):.0f} s" for r, label in zip(results, labels))
    return [f"- data: {h.get('split')} split, {h.get('limit_note')}",
            f"- prompts: {h.get('prompt_style')} style (long note fields clipped to {h.get('max_prompt_chars')} chars); "
            f"{h.get('decoding')}; {h.get('max_new_tokens_note')}; dtype {h.get('dtype')}",
            f"- scoring: {h.get('scoring_mode')} mode; QueryGen {h.get('querygen_mode')}; a two-file task is "
            "the mean of its two files",
            f"- eval wall time: {seconds}"]


def read_log(stage_dir: Path) -> list[dict]:
    """The records of ``<stage_dir>/train_log.jsonl``.

    Errors: ``RedoneError`` naming the file when it is missing, or file:line for a corrupt line.
    """
    from redone.errors import RedoneError

    path = Path(stage_dir) / "train_log.jsonl"
    if not path.is_file():
        raise RedoneError(f"report: {path} not found: the stage's training log is needed for the loss plots")
    return _read_jsonl(path)


def _read_jsonl(path: Path) -> list[dict]:
    """JSON lines of a log; a torn last line (a run killed mid-write) is left out."""
    from redone.errors import RedoneError

    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise RedoneError(f"report: {path}:{number}: not valid JSON") from None
    return records


# Per-step losses, when the loop writes them (one {"step", "loss"} line per optimizer step): train_log.jsonl
# holds one mean per train.log_every steps.
STEP_LOSS_FILE = "step_loss.jsonl"


def train_loss_points(stage_dir: Path, log: list[dict]) -> tuple[list[int], list[float], str]:
    """(steps, losses, what they are): every step's loss when ``step_loss.jsonl`` exists, else the logged
    window means of train_log.jsonl."""
    per_step = Path(stage_dir) / STEP_LOSS_FILE
    if per_step.is_file():
        points = [(x["step"], x["loss"]) for x in _read_jsonl(per_step) if "loss" in x]
        what = "every step"
    else:
        points = [(x["step"], x["loss"]) for x in log if isinstance(x.get("loss"), (int, float))]
        what = "mean of each logged window"
    steps, losses = (list(v) for v in zip(*points)) if points else ([], [])
    return steps, losses, what


def smooth(steps: list[int], values: list[float], tau: float) -> list[float]:
    """Exponential moving average with a time constant of ``tau`` steps, bias-corrected at the start.

    Each point's weight follows the steps it covers (a window of log_every steps counts log_every times
    as much as one step), so the curve does not depend on how often the loop logged.
    """
    import math

    out, mean, weight, previous = [], 0.0, 0.0, 0  # step 0: before training; the first window starts there
    for step, value in zip(steps, values):
        gap = max(step - previous, 1)
        decay = math.exp(-gap / tau)
        mean = decay * mean + (1 - decay) * value
        weight = decay * weight + (1 - decay)
        out.append(mean / weight)
        previous = step
    return out


def smoothing_tau(steps: list[int]) -> float:
    """10% of the stage's steps, at least one step."""
    return max(1.0, 0.1 * (max(steps) if steps else 1))


def _stage_dirs(root: Path, record: dict) -> dict[str, Path]:
    dirs = {}
    for stage, info in record["stages"].items():
        output = ((info or {}).get("config") or {}).get("output_dir")
        dirs[stage] = Path(output) if output and Path(output).is_dir() else Path(root) / stage
    return dirs


def _held_out(log: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """eval_loss/<tag> -> [(step, loss)] from the stage's periodic held-out evaluations."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for x in log:
        for key, value in x.items():
            if key.startswith("eval_loss/") and isinstance(value, (int, float)):
                curves.setdefault(key.split("/", 1)[1], []).append((x["step"], value))
    return curves


@dataclass
class StageLosses:
    """One stage's curves on the pipeline's step axis (``x = offset + stage step``)."""

    stage: str
    offset: int  # steps of the stages before it
    last_step: int
    steps: list[int]
    losses: list[float]  # as logged: every step, or the mean of each log_every window
    smoothed: list[float]  # EMA (``smooth``, time constant ``smoothing_tau``)
    what: str  # "every step" or "mean of each logged window"
    held_out: dict[int, float]  # step -> mean eval_loss over the stage's held-out tasks
    held_out_tasks: int
    log: list[dict]


def pipeline_losses(root: Path, record: dict) -> list[StageLosses]:
    """Every stage of the record, in order, placed end to end on one step axis.

    Raises ``RedoneError`` when a stage's train_log.jsonl is missing."""
    out, offset = [], 0
    for stage, path in _stage_dirs(root, record).items():
        log = read_log(path)
        steps, losses, what = train_loss_points(path, log)
        held = _held_out(log)
        by_step: dict[int, list[float]] = {}
        for points in held.values():
            for step, value in points:
                by_step.setdefault(step, []).append(value)
        last = max([*steps, *[x.get("step", 0) for x in log]], default=0)
        out.append(StageLosses(stage, offset, last, steps, losses, smooth(steps, losses, smoothing_tau(steps)), what,
                               {s: sum(v) / len(v) for s, v in sorted(by_step.items())}, len(held), log))
        offset += last
    return out


def plot_losses(root: Path, record: dict) -> list[Path]:
    """``loss_curves.png``: every stage on one step axis (cpt -> sft -> dpo -> rl) with the stage
    boundaries marked: the train loss (dots as logged, line = EMA, ``smooth``) and the held-out loss
    (mean over the stage's held-out tasks, when ``data.eval_holdout`` and ``train.eval_every`` are set).
    ``sft_task_losses.png``: one panel per SFT task, its train loss and its held-out loss on the same
    axes. Raises ``RedoneError`` when a stage's train_log.jsonl is missing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = pipeline_losses(root, record)
    if not stages:
        return []
    fig, ax = plt.subplots(figsize=(11, 5.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, s in enumerate(stages):
        colour = colours[i % len(colours)]
        if s.steps:
            xs = [s.offset + step for step in s.steps]
            ax.plot(xs, s.losses, linestyle="none", marker=".", markersize=4, alpha=0.35, color=colour)
            ax.plot(xs, s.smoothed, color=colour, linewidth=2, label=f"{s.stage} train loss (EMA)")
        if s.held_out:
            ax.plot([s.offset + step for step in s.held_out], list(s.held_out.values()), color=colour,
                    linestyle="--", marker="o", markersize=4,
                    label=f"{s.stage} held-out loss (mean of {s.held_out_tasks} tasks)")
        if i:
            ax.axvline(s.offset, color="0.35", linewidth=1, linestyle=":")
        ax.text(s.offset + s.last_step / 2, 1.01, f"{s.stage.upper()} ({s.last_step} steps)",
                transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=9, fontweight="bold")
    end = stages[-1].offset + stages[-1].last_step
    ax.set_xlabel("optimizer step, stages in order")
    ax.set_ylabel("loss")
    ax.set_xlim(0, max(end, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=len(stages), loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    dots = " / ".join(sorted({s.what for s in stages}))
    fig.suptitle(f"Training losses across the pipeline (dots: {dots}; line: EMA, time constant 10% of the "
                 "stage's steps)", fontsize=9, y=0.99)
    fig.tight_layout()
    paths = [Path(root) / "loss_curves.png"]
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    sft = next((s for s in stages if s.stage == "sft"), None)
    if sft is not None:
        task_plot = _plot_task_losses(Path(root) / "sft_task_losses.png", sft.log)
        if task_plot:
            paths.append(task_plot)
    return paths


def _plot_task_losses(path: Path, log: list[dict]) -> Path | None:
    """One small panel per task: the train loss/<task> (dots as logged, line = EMA) and the held-out
    eval_loss/<task> (dashed, circles) on the same axes."""
    import matplotlib.pyplot as plt

    tasks = sorted({k.split("/", 1)[1] for x in log for k in x if k.startswith("loss/")})
    held = _held_out(log)
    tasks += sorted(t for t in held if t not in tasks)
    if not tasks:
        return None
    columns = min(4, len(tasks))
    rows = -(-len(tasks) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.3 * rows + 0.6), sharex=True,
                             squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        points = [(x["step"], x[f"loss/{task}"]) for x in log if isinstance(x.get(f"loss/{task}"), (int, float))]
        if points:
            steps, values = (list(v) for v in zip(*points))
            ax.plot(steps, values, linestyle="none", marker=".", markersize=4, alpha=0.4, color="C0")
            ax.plot(steps, smooth(steps, values, smoothing_tau(steps)), color="C0", linewidth=1.8, label="train (EMA)")
        if task in held:
            steps, values = zip(*held[task])
            ax.plot(steps, values, color="C3", linestyle="--", marker="o", markersize=3, label="held-out")
        ax.set_title(task, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    handles, names = {}, []
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            if name not in handles:
                handles[name] = handle
                names.append(name)
    fig.legend([handles[n] for n in names], names, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle("SFT loss per task (train: dots as logged, line EMA with a time constant of 10% of the steps; "
                 "held-out: dashed)", fontsize=9)
    fig.supxlabel("SFT step", fontsize=9, y=0.06)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_eval_bars(root: Path, results: list[dict], labels: list[str]) -> list[Path]:
    """``sns_bench_bars.png``: the 8 task scores and the average per evaluated model, the averages
    written on their bars, the skill-free baseline grey and hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [(label, r["sns_bench"]) for label, r in zip(labels, results) if r.get("sns_bench")]
    if not rows:
        return []
    names = TASKS + ["average"]
    x = np.arange(len(names))
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(11, 4.4))
    for i, (label, section) in enumerate(rows):
        values = [section["tasks"].get(t) or 0 for t in TASKS] + [section.get("average") or 0]
        baseline = label == "skill-free"
        bars = ax.bar(x + i * width, values, width, label=label, hatch="//" if baseline else None,
                      color="0.8" if baseline else None, edgecolor="0.4" if baseline else "white")
        ax.bar_label(bars, labels=[""] * len(TASKS) + [f"{values[-1]:.1f}"], fontsize=7, padding=2, rotation=90)
    ax.set_xticks(x + width * (len(rows) - 1) / 2, names, rotation=20)
    ax.set_ylabel("score (0-100)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("SNS-Bench by stage")
    ax.legend(fontsize=8, ncol=len(rows), loc="upper left")
    fig.tight_layout()
    path = Path(root) / "sns_bench_bars.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


# ---------------------------------------------------------------- ablations


def ablation_name(row: str) -> str:
    """'cpt-sft-dpo' -> 'CPT→SFT→DPO'; a lone stage reads '<STAGE> only'."""
    chain = [s.upper() for s in row.split("-")]
    return f"{chain[0]} only" if len(chain) == 1 else "→".join(chain)


def ablation_markdown(rows: list[str], results: dict[str, dict], deltas: dict[str, dict], reference: str,
                      other_styles: dict[str, dict[str, dict]] | None = None) -> str:
    """One row per recipe: SNS-Bench average, its paired-bootstrap delta against the reference row, the
    average under each other prompt style, the 8 tasks, TransBench and the perplexities."""
    other_styles = other_styles or {}
    from redone.eval.report_table import headline_rows

    def cell(value) -> str:
        return "–" if value is None else f"{value:.2f}"

    head = ["recipe", "SNS-Bench avg", f"Δ vs {ablation_name(reference)} [95% CI]",
            *[f"SNS-Bench avg ({style} prompts)" for style in other_styles], *TASKS, "TransBench avg",
            "PPL SNS ↓", "PPL Shakespeare ↓", "PPL HH ↓"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        values = {name: value for name, value, _ in headline_rows(results[row])}
        if row == reference:
            delta = "(reference)"
        elif row in deltas:
            d = deltas[row]
            delta = f"{d['delta']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
        else:
            delta = "–"
        styled = [cell((scored[row].get("sns_bench") or {}).get("average")) for scored in other_styles.values()]
        cells = [ablation_name(row), cell(values.get("SNS-Bench average")), delta, *styled,
                 *[cell(values.get(f"SNS {t}")) for t in TASKS], cell(values.get("SNS-TransBench average")),
                 cell(values.get("PPL SNS held-out notes ↓")), cell(values.get("PPL Shakespeare tail ↓")),
                 cell(values.get("PPL HH-RLHF chosen ↓"))]
        lines.append("| " + " | ".join(cells) + " |")
    some = next(iter(deltas.values()), None)
    if some:
        lines += ["", f"Δ: paired bootstrap over the {some['items']} SNS-Bench items ({some['resamples']} resamples, "
                      "the same items resampled for both rows, each file scored by its own metric); an interval "
                      "that contains 0 is no evidence of a difference."]
    return "\n".join(lines) + "\n"


def plot_ablation_bars(root: Path, rows: list[str], results: dict[str, dict], deltas: dict[str, dict],
                       reference: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    averages = [(results[r].get("sns_bench") or {}).get("average") or 0.0 for r in rows]
    ref_value = averages[rows.index(reference)]
    errors = [[0.0, 0.0] if r not in deltas else [deltas[r]["delta"] - deltas[r]["low"],
                                                   deltas[r]["high"] - deltas[r]["delta"]] for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(rows)), 3.6))
    ax.bar(range(len(rows)), averages, yerr=list(zip(*errors)), capsize=4, color="#4c72b0")
    ax.axhline(ref_value, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(rows)), [ablation_name(r) for r in rows], rotation=15)
    ax.set_ylabel("SNS-Bench average")
    ax.set_title(f"Ablations (error bars: 95% CI of the delta vs {ablation_name(reference)})")
    fig.tight_layout()
    path = root / "ablations.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def append_ablations(root: Path, rows: list[str], results: dict[str, dict], deltas: dict[str, dict],
                     reference: str, other_styles: dict[str, dict[str, dict]] | None = None) -> str:
    """Add the ablation table and bar plot to report.md; returns the table."""
    table = ablation_markdown(rows, results, deltas, reference, other_styles)
    plot = plot_ablation_bars(root, rows, results, deltas, reference)
    report = root / "report.md"
    text = report.read_text() if report.exists() else "# redone pipeline report\n"
    marker = "\n## Ablations\n"
    text = text.split(marker)[0].rstrip("\n") + "\n" + marker + "\n" + table + f"\n![ablations]({plot.name})\n"
    report.write_text(text)
    return table
