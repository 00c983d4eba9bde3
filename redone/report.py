"""The pipeline's report: renders what the stages and the evaluation produced; runs nothing itself.

- ``report.md``: per-stage training summary, the settings the evaluation was measured with, and the
  stage-by-stage table with deltas (the skill-free column -- perfect formats, no skill -- beside it).
- PNG plots of the loss curves (per stage, and per task for SFT) and the SNS-Bench bars.
- ``headline``: the one line the console ends with (base -> last stage, and the skill-free baseline).
"""

from __future__ import annotations

import json
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
    path = stage_dir / "train_log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(root: Path, record: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    stages = [s for s in record["stages"] if read_log(root / s)]
    if not stages:
        return paths
    fig, axes = plt.subplots(1, len(stages), figsize=(4.5 * len(stages), 3.4), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        log = [x for x in read_log(root / stage) if "loss" in x]
        ax.plot([x["step"] for x in log], [x["loss"] for x in log], marker=".")
        ax.set_title(f"{stage} train loss")
        ax.set_xlabel("step")
    fig.tight_layout()
    paths.append(root / "loss_curves.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    sft = read_log(root / "sft")
    task_keys = sorted({k for x in sft for k in x if k.startswith("loss/")})
    if task_keys:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for key in task_keys:
            points = [(x["step"], x[key]) for x in sft if key in x]
            ax.plot(*zip(*points), label=key.split("/", 1)[1], linewidth=1)
        ax.set_title("SFT train loss per task")
        ax.set_xlabel("step")
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        paths.append(root / "sft_task_losses.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def plot_eval_bars(root: Path, results: list[dict], labels: list[str]) -> list[Path]:
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
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, (label, section) in enumerate(rows):
        values = [section["tasks"].get(t) or 0 for t in TASKS] + [section.get("average") or 0]
        ax.bar(x + i * width, values, width, label=label)
    ax.set_xticks(x + width * (len(rows) - 1) / 2, names, rotation=20)
    ax.set_ylabel("score (0-100)")
    ax.set_title("SNS-Bench by stage")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = root / "sns_bench_bars.png"
    fig.savefig(path, dpi=110)
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
