"""`redone mix verify`: does a search's choice hold at the real model's scale?

Trains the searched config's own model (e.g. SmolLM2-135M, with the config's own model, precision and
optimiser settings) on several of the searched mixtures, each for the same token budget (by default
the config's own ``train.max_steps``) and with the proxies' held-out items, then reports per mixture
the objective and general held-out loss, the chosen mixture against the config's own, and the Spearman
rank correlation between the proxies' objectives and the real model's over the mixtures.

Runs are cached and resumable exactly like proxies (same cache, keys include the model fingerprint).
Writes ``verify.json`` and ``verify.md`` beside the search's ``search.json``.

Errors: ``ConfigError`` for a missing search, an unknown mixture label or fewer than 2 labels;
``RedoneError`` from a failed run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from redone.errors import ConfigError
from redone.mix import proxies as px
from redone.mix.regress import spearman
from redone.mix.units import Unit

# "spread": the three sampled candidates with the lowest, median and highest proxy objective, so the
# rank correlation is measured over the range the search explored.
DEFAULT_LABELS = ("chosen", "config", "natural", "spread")


@dataclass
class VerifyOptions:
    search: str  # the search's --out dir (or its search.json)
    labels: list[str] = field(default_factory=lambda: list(DEFAULT_LABELS))
    tokens: int | None = None  # None: the config's own max_steps x tokens per step
    jobs: int = 1
    threads: int | None = None  # None: every core for the one job
    extra: list[str] = field(default_factory=list)  # --set key=value for these runs
    cache: str | None = None  # None: the search's proxy cache


def load_summary(path: str) -> tuple[Path, dict]:
    file = Path(path)
    file = file / "search.json" if file.is_dir() else file
    if not file.exists():
        raise ConfigError(f"--search: {file} not found (run `redone mix search` first)")
    return file.parent, json.loads(file.read_text())


def mixture_shares(summary: dict, labels: list[str]) -> dict[str, tuple[list[float], float | None]]:
    """label -> (shares, the proxy's observed objective or None)."""
    known = {row["label"]: (row["shares"], row["objective"]) for row in summary["proxies"]}
    known["chosen"] = (summary["chosen"], (summary.get("validation") or {}).get("objective"))
    if "spread" in labels:
        sampled = sorted((r for r in summary["proxies"] if r["label"].startswith("candidate-")),
                         key=lambda r: r["objective"])
        picks = [sampled[0], sampled[len(sampled) // 2], sampled[-1]] if len(sampled) >= 3 else sampled
        index = labels.index("spread")
        labels = labels[:index] + [r["label"] for r in picks if r["label"] not in labels] + labels[index + 1:]
    for label in labels:
        if label not in known:
            raise ConfigError(f"--labels: '{label}' is not a mixture of this search (known: {', '.join(known)})")
    if len(labels) < 2:
        raise ConfigError("--labels: need at least 2 mixtures to compare")
    return {label: known[label] for label in labels}


def run_verify(opts: VerifyOptions, echo=print) -> dict:
    import os

    from redone.config import config_to_dict
    from redone.model import fingerprint_model_dir, resolve_model
    from redone.stages import load_config

    clock = time.perf_counter()
    out, summary = load_summary(opts.search)
    mixtures = mixture_shares(summary, list(opts.labels))
    search_opts = summary["options"]
    base_config = load_config(summary["stage"], summary["config"], search_opts["overrides"])
    base = config_to_dict(base_config)
    per_step = base["train"]["micro_batch_size"] * base["train"]["grad_accum"] * base["data"]["seq_len"]
    tokens = opts.tokens or base["train"]["max_steps"] * per_step
    threads = opts.threads or max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                      else os.cpu_count() or 1) // opts.jobs)
    settings = px.ProxySettings(summary["stage"], base_config.model.name_or_path, tokens,
                                summary["proxy"]["holdout"], threads, None, list(opts.extra), own_model=True)
    units = [Unit(name, source, [], 0, 0.0) for name, source in zip(summary["units"], summary["unit_sources"])]
    cache = Path(opts.cache or summary["proxy"]["cache"])
    fingerprint = fingerprint_model_dir(resolve_model(base_config.model.name_or_path))
    runs = {label: px.make_proxy(f"{label}@{Path(settings.model_dir).name}", np.asarray(shares), units, base,
                                 settings, cache, summary["digests"], fingerprint)
            for label, (shares, _) in mixtures.items()}
    echo(f"[mix] verifying {len(runs)} mixtures with {base_config.model.name_or_path}: "
         f"{runs[next(iter(runs))].config.train.max_steps} steps = {tokens:,} tokens each")
    status = px.run_pending(list(runs.values()), summary["units"], settings, opts.jobs, echo)

    from redone.mix.search import group_loss

    rows = []
    for label, run in runs.items():
        losses = run.result()["eval_loss"]
        rows.append({"label": label, "shares": mixtures[label][0], "proxy_objective": mixtures[label][1],
                     "objective": group_loss(losses, summary["targets"], label),
                     "general": group_loss(losses, summary["general"], label) if summary["general"] else None,
                     "eval_loss": losses, "status": status.get(run.key, "cached"), "wall_s": run.result()["wall_s"],
                     "dir": str(run.dir)})
    paired = [r for r in rows if r["proxy_objective"] is not None]
    result = {"search": summary["id"], "model": base_config.model.name_or_path, "tokens": tokens,
              "steps": runs[next(iter(runs))].config.train.max_steps, "rows": rows,
              "spearman": spearman([r["proxy_objective"] for r in paired], [r["objective"] for r in paired])
              if len(paired) >= 3 else None, "paired": len(paired),
              "wall_s": round(time.perf_counter() - clock, 1)}
    by_label = {r["label"]: r for r in rows}
    if "chosen" in by_label and "config" in by_label:
        result["chosen_minus_config"] = by_label["chosen"]["objective"] - by_label["config"]["objective"]
    px.write_json_atomically(out / "verify.json", result)
    (out / "verify.md").write_text(verify_report(result, summary))
    echo(verify_report(result, summary))
    return result


def verify_report(result: dict, summary: dict) -> str:
    lines = [f"# Verification of {result['search']} with {result['model']}", "",
             f"{result['steps']} steps = {result['tokens']:,} tokens per mixture, the proxies' held-out items; "
             f"{result['wall_s']} s.", "",
             "| mixture | " + " | ".join(summary["units"]) + " | proxy objective | real objective | real general |",
             "|---" * (len(summary["units"]) + 4) + "|"]
    for row in result["rows"]:
        proxy = "—" if row["proxy_objective"] is None else f"{row['proxy_objective']:.4f}"
        general = "—" if row["general"] is None else f"{row['general']:.4f}"
        lines.append(f"| {row['label']} | " + " | ".join(f"{s:.3f}" for s in row["shares"])
                     + f" | {proxy} | {row['objective']:.4f} | {general} |")
    lines.append("")
    if result.get("chosen_minus_config") is not None:
        lines.append(f"Chosen minus config mixture, real model: {result['chosen_minus_config']:+.4f} objective.")
    if result["spearman"] is not None:
        lines.append(f"Spearman rank correlation, proxy vs real objective over {result['paired']} mixtures: "
                     f"{result['spearman']:.3f}.")
    return "\n".join(lines) + "\n"
