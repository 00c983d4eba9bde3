"""What a mixture search leaves behind in ``--out``.

- ``mix.yaml``: a config file that is the searched config (``defaults:``) with the chosen source
  weights: ``redone train --stage S --config OUT/mix.yaml``. YAML lists replace rather than merge, so
  the fragment repeats every source with its new weight. It names the search in ``mix_search:`` when
  the config schema has that key (the run's ``redone.json`` then records it), else in a comment.
- ``overrides.txt``: the same weights as ``key=value`` overrides for ``redone train --config C ...``.
- ``report.md``: units, objective and constraint, fit quality (cross-validated Spearman per model),
  the chosen mixture with its prediction and its validation proxy, every proxy with its observed and
  out-of-fold predicted objective; ``mix_plot.png``: predicted objective against each unit's share.
- ``search.json``: the whole summary (options, proxies, fits, chosen weights), for lineage.

Every file is written to a temp name and renamed, so an interrupted write leaves the old file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from pathlib import Path

import numpy as np
import yaml

from redone.config.schema import RunConfig, SourceSection

PLOT_POINTS = 4000


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def chosen_sources(summary: dict) -> list[dict]:
    """The units' sources with the chosen weights, keeping only keys that differ from the defaults."""
    defaults = {f.name: f.default for f in dataclasses.fields(SourceSection)
                if f.default is not dataclasses.MISSING}
    defaults.update(text_fields=[], tasks=[])
    sources = []
    for source, share in zip(summary["unit_sources"], summary["chosen"]):
        entry = {"name": source["name"], "path": source["path"]}
        entry.update({k: v for k, v in source.items() if k not in entry and k != "weight" and v != defaults.get(k)})
        entry["weight"] = round(float(share), 6)
        sources.append(entry)
    return sources


def schema_has_mix_search() -> bool:
    return any(f.name == "mix_search" for f in dataclasses.fields(RunConfig))


def fragment_text(out: Path, summary: dict) -> str:
    config = Path(summary["config"]).resolve()
    lineage = f"{summary['id']} ({out / 'search.json'})"
    # Relative to the fragment when both live in the working tree (a repo stays movable), else absolute.
    inside = Path.cwd().resolve() in out.resolve().parents and Path.cwd().resolve() in config.parents
    body: dict = {"defaults": [os.path.relpath(config, out.resolve()) if inside else str(config)]}
    if schema_has_mix_search():
        body["mix_search"] = lineage
    body["data"] = {"mixing": "ratio", "sources": chosen_sources(summary)}
    if summary["stage"] == "cpt":
        body["data"]["temperature"] = 1.0
    header = [f"# Data mixture chosen by `redone mix search` ({lineage}); report: {out / 'report.md'}",
              f"# Use: redone train --stage {summary['stage']} --config {out / 'mix.yaml'} [key=value ...]"]
    if not schema_has_mix_search():
        header.append(f"# mix_search: {lineage}")
    if summary["options"]["overrides"]:
        header.append("# The search also applied these overrides (pass them again if they matter): "
                      + " ".join(summary["options"]["overrides"]))
    return "\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def override_line(summary: dict) -> str:
    flow = yaml.safe_dump(chosen_sources(summary), default_flow_style=True, sort_keys=False, width=1 << 20).strip()
    items = ["data.mixing=ratio", f"data.sources={flow}"]
    if summary["stage"] == "cpt":
        items.append("data.temperature=1.0")
    return " ".join(shlex.quote(item) for item in items)


def fmt(value, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def report_text(summary: dict) -> str:
    opts, proxy, names = summary["options"], summary["proxy"], summary["units"]
    objective, general = summary["fit"]["objective"], summary["fit"]["general"]
    lines = [f"# Mixture search {summary['id']}", "",
             f"`redone mix search --stage {summary['stage']} --config {summary['config']}` "
             f"({' '.join(opts['overrides']) or 'no overrides'}); units over {summary['over']}.", "",
             f"Proxy model: `{proxy['model']}` ({proxy['parameters'] / 1e6:.2f} M parameters), {proxy['steps']} "
             f"steps = {proxy['tokens']:,} tokens each, lr {proxy['lr']:g}, {proxy['holdout']} held-out items "
             f"per component; {len(summary['proxies'])} proxies{' + 1 on the chosen mixture' * bool(summary['validation'])} "
             f"({summary['ran']} trained now, {summary['cached']} cached), {proxy['jobs']} parallel x {proxy['threads']} thread(s). Wall time: prepare "
             f"{summary['timing_s']['prepare']} s, proxies {summary['timing_s']['proxies']} s, total "
             f"{summary['timing_s']['total']} s.", "",
             "## Units", "", "| unit | train tokens | natural | config | chosen | bounds |", "|---|---|---|---|---|---|"]
    for i, name in enumerate(names):
        lines.append(f"| {name} | {summary['tokens'][i]:,} | {summary['natural'][i]:.4f} | "
                     f"{summary['config_shares'][i]:.4f} | **{summary['chosen'][i]:.4f}** | "
                     f"{summary['bounds']['low'][i]:g}–{summary['bounds']['high'][i]:g} |")
    lines += ["", "## Objective", "",
              "Objective: mean held-out loss over " + ", ".join(
                  f"{g} ({len(t)} component{'s' * (len(t) > 1)})" for g, t in summary["targets"].items())
              + " (a group's loss is the mean over its components)."]
    if summary["constraint"]:
        c = summary["constraint"]
        lines.append("Constraint: general held-out loss (" + ", ".join(summary["general"]) + f") at most "
                     f"{c['rise_pct']:+g}% over the natural mixture's proxy: {c['reference']:.4f} -> {c['limit']:.4f}.")
    else:
        lines.append("Constraint: none (no general sources).")
    lines += ["", "## Fit quality", "",
              f"{objective['folds']}-fold cross-validated Spearman rank correlation between out-of-fold predictions "
              "and observed proxy losses (1 = ranks unseen mixtures perfectly; below ~0.5 the choice is "
              "little better than the natural mixture).", "",
              "| target | model | CV Spearman | CV MAE | used |", "|---|---|---|---|---|"]
    for label, fit in (("objective", objective), ("general", general)):
        if fit:
            for model, r in fit["all"].items():
                lines.append(f"| {label} | {model} | {r['spearman']:.3f} | {r['mae']:.4f} | "
                             f"{'yes' if model == fit['model'] else ''} |")
    lines += ["", "## Chosen mixture", "",
              f"Mean of the {opts['top_k']} best of {opts['simulations']:,} simulated mixtures"
              + (" that meet the constraint" if summary["constraint"] else "") + ": "
              + ", ".join(f"{n} {s:.4f}" for n, s in zip(names, summary["chosen"])) + ".",
              f"Predicted objective {fmt(summary['prediction']['objective'])}, general "
              f"{fmt(summary['prediction']['general'])}."]
    validation, rows = summary["validation"], summary["proxies"]
    if validation:
        lines += ["", "| proxy | objective | general |", "|---|---|---|"]
        for row in (validation, rows[1], rows[0]):
            lines.append(f"| {row['label']} | {row['objective']:.4f} | {fmt(row['general'])} |")
        lines.append("")
        lines.append(f"Chosen vs config mixture at proxy scale: {validation['objective'] - rows[1]['objective']:+.4f} "
                     f"objective (predicted {summary['prediction']['objective']:.4f}, observed "
                     f"{validation['objective']:.4f}).")
        if "constraint_met" in validation:
            lines.append(f"Constraint on the chosen mixture's proxy: general loss {validation['general']:.4f}, "
                         f"{validation['general_rise_pct']:+.2f}% vs the natural mixture: "
                         + ("met." if validation["constraint_met"] else "**broken** (the general fit's error is "
                            "larger than the margin left; allow a larger rise, add proxies or set --bounds)."))
    lines += ["", "## Proxies", "",
              "Observed held-out losses, and the objective the regression predicts for each proxy when that "
              "proxy is held out of the fit (out-of-fold).", "",
              "| proxy | " + " | ".join(names) + " | objective | predicted (held out) | general | run |",
              "|---" * (len(names) + 5) + "|"]
    for row in rows:
        lines.append(f"| {row['label']} | " + " | ".join(f"{s:.3f}" for s in row["shares"])
                     + f" | {row['objective']:.4f} | {row['objective_oof']:.4f} | {fmt(row['general'])} | "
                     f"{row['status']} ({row['wall_s']:.0f} s) |")
    lines += ["", "![predicted objective against each unit's share](mix_plot.png)", "",
              "Use the mixture:", "", "```", f"redone train --stage {summary['stage']} --config "
              f"{summary['out']}/mix.yaml", f"redone train --stage {summary['stage']} --config {summary['config']} "
              + override_line(summary), "```", ""]
    return "\n".join(lines)


def plot(path: Path, summary: dict, sim: np.ndarray, pred_obj: np.ndarray, pred_gen, constraint) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = summary["units"]
    cols = min(4, len(names))
    rows_n = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3.3 * rows_n), squeeze=False)
    pick = np.random.default_rng(0).permutation(len(sim))[:PLOT_POINTS]
    feasible = np.ones(len(sim), dtype=bool) if constraint is None else pred_gen <= constraint.limit
    observed = np.array([r["shares"] for r in summary["proxies"]])
    objective = np.array([r["objective"] for r in summary["proxies"]])
    for i, name in enumerate(names):
        ax = axes[i // cols][i % cols]
        for mask, colour, label in ((~feasible[pick], "#d9a6a6", "simulated, breaks constraint"),
                                    (feasible[pick], "#9db4d0", "simulated (predicted)")):
            ax.scatter(sim[pick][mask, i], pred_obj[pick][mask], s=3, c=colour, label=label, rasterized=True)
        ax.scatter(observed[:, i], objective, s=18, c="black", label="proxies (observed)")
        ax.axvline(summary["chosen"][i], color="red", lw=1.2, label="chosen")
        ax.set_xlabel(f"share of {name}")
        ax.set_ylabel("objective (held-out loss)")
    for j in range(len(names), rows_n * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{summary['id']}: predicted objective vs share", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_outputs(out: Path, summary: dict, sim, pred_obj, pred_gen, constraint) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plot(out / "mix_plot.png", summary, sim, pred_obj, pred_gen, constraint)
    write_text(out / "search.json", json.dumps(summary, indent=1, default=str))
    write_text(out / "report.md", report_text(summary))
    write_text(out / "overrides.txt", override_line(summary) + "\n")
    write_text(out / "mix.yaml", fragment_text(out, summary))
