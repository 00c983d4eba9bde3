"""The mixture search, start to end (RegMix: Liu et al. 2024, arXiv 2407.01492).

1. Read the config and run its data path once (token counts per unit; the natural shares).
2. Candidates: the natural mixture, the config's own mixture, and ``proxies - 2`` Dirichlet samples
   around the natural shares (``candidates.py``), within ``--bounds``.
3. Train one proxy per candidate (``proxies.py``: cached, resumable, parallel) and read its held-out
   loss per component (``eval_loss/<tag>``).
4. Objective = mean held-out loss over the target groups (default: the sources with "sns" in their name
   or path; a group's loss is the mean over its components, so every SNS task counts the same).
   General = the same over the other sources. Constraint: general loss may rise at most
   ``--max-general-rise`` percent above the natural mixture's proxy.
5. Fit regressors shares -> objective and shares -> general (``regress.py``), print their
   cross-validated Spearman, predict ``--simulations`` unseen Dirichlet mixtures, keep those whose
   predicted general loss meets the constraint and average the ``--top-k`` best: the chosen mixture.
6. Train one more proxy on the chosen mixture (``--no-validate`` skips it): observed vs predicted,
   and against the config's and the natural mixture's proxies.
7. Write ``mix.yaml`` (a config that applies the weights), ``overrides.txt``, ``report.md``,
   ``mix_plot.png`` and ``search.json`` (everything above, for lineage) to ``--out``.

Errors: ``ConfigError`` for bad options or names (from units/candidates/regress), ``RedoneError``
when no mixture meets the constraint, or a proxy fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from redone.config import config_hash, config_to_dict
from redone.errors import ConfigError, RedoneError
from redone.mix import candidates as cand
from redone.mix import proxies as px
from redone.mix.regress import fit_best
from redone.mix.units import (
    MixData,
    build_units,
    default_targets,
    resolve_names,
    source_dicts,
    stage_data_info,
)

# Defaults sized for the shipped data on 2 CPU cores (docs/MIX_SEARCH.md has the measurement).
DEFAULT_PROXIES = 16
DEFAULT_TOKENS = 300_000
DEFAULT_HOLDOUT = 16
DEFAULT_LAYERS = 2
DEFAULT_HIDDEN = 64
DEFAULT_TINY_LR = 2e-3


@dataclass
class SearchOptions:
    stage: str
    config: str
    overrides: list[str] = field(default_factory=list)
    proxies: int = DEFAULT_PROXIES  # proxy runs, the natural and the config mixture included
    proxy_model: str = "tiny"  # tiny | PATH (any model dir or hub id)
    proxy_layers: int = DEFAULT_LAYERS
    proxy_hidden: int = DEFAULT_HIDDEN
    proxy_lr: float | None = None  # None: 2e-3 for the tiny model, the config's lr for a given model
    proxy_set: list[str] = field(default_factory=list)
    tokens: int = DEFAULT_TOKENS
    holdout: int | None = None  # None: the config's data.eval_holdout, or 16 when that is 0
    jobs: int | None = None  # None: cores // threads
    threads: int = 1
    over: str = "sources"
    concentration: str = f"{cand.DEFAULT_CONCENTRATION[0]:g}:{cand.DEFAULT_CONCENTRATION[1]:g}"
    bounds: list[str] = field(default_factory=list)
    target: list[str] = field(default_factory=list)
    general: list[str] = field(default_factory=list)
    max_general_rise: float = 3.0  # percent over the natural mixture's proxy
    top_k: int = 100
    simulations: int = 100_000
    regressor: str = "auto"
    folds: int = 5
    seed: int = 0
    validate: bool = True
    out: str | None = None
    cache: str | None = None
    keep_proxy_weights: bool = False


@dataclass
class Constraint:
    reference: float  # the natural mixture proxy's general loss
    rise_pct: float

    @property
    def limit(self) -> float:
        return self.reference * (1.0 + self.rise_pct / 100.0)


def check_options(opts: SearchOptions) -> None:
    checks = (("--proxies", opts.proxies >= 4, "at least 4 (natural, config and 2 samples)"),
              ("--tokens", opts.tokens > 0, "> 0"), ("--threads", opts.threads >= 1, ">= 1"),
              ("--jobs", opts.jobs is None or opts.jobs >= 1, ">= 1"), ("--top-k", opts.top_k >= 1, ">= 1"),
              ("--simulations", opts.simulations >= opts.top_k, ">= --top-k"),
              ("--holdout", opts.holdout is None or opts.holdout >= 1, ">= 1"),
              ("--folds", opts.folds >= 2, ">= 2"),
              ("--proxy-layers", opts.proxy_layers >= 1, ">= 1"), ("--proxy-hidden", opts.proxy_hidden >= 8, ">= 8"))
    for flag, ok, need in checks:
        if not ok:
            raise ConfigError(f"{flag}: must be {need}")


def default_jobs(threads: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // threads)


def default_out(opts: SearchOptions) -> Path:
    return Path("runs") / "mix" / f"{Path(opts.config).stem}-{opts.stage}"


def cache_root(opts: SearchOptions) -> Path:
    from redone.model import redone_home

    return Path(opts.cache) if opts.cache else redone_home() / "mix_cache"


def proxy_model_dir(opts: SearchOptions, base_config, cache: Path) -> Path:
    from redone.model import resolve_model

    if opts.proxy_model == "tiny":
        return px.ensure_tiny_model(base_config.model.name_or_path, cache, opts.proxy_layers, opts.proxy_hidden)
    return Path(resolve_model(opts.proxy_model))


def group_loss(losses: dict[str, float], groups: dict[str, list[str]], where: str) -> float:
    values = []
    for name, tags in groups.items():
        missing = [t for t in tags if t not in losses]
        if missing:
            raise RedoneError(f"mix: {where} logged no held-out loss for {missing} (group {name})")
        values.append(float(np.mean([losses[t] for t in tags])))
    return float(np.mean(values))


def choose_mixture(sim: np.ndarray, pred_obj: np.ndarray, pred_gen: np.ndarray | None,
                   constraint: Constraint | None, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the ``top_k`` simulated mixtures with the lowest predicted objective that meet the
    constraint; (chosen shares, indices of the averaged mixtures)."""
    feasible = np.ones(len(sim), dtype=bool)
    if constraint is not None:
        feasible = pred_gen <= constraint.limit
        if not feasible.any():
            best = float(pred_gen.min())
            raise RedoneError(
                f"--max-general-rise: no mixture keeps the general held-out loss within {constraint.rise_pct:+g}% "
                f"of the natural mixture's ({constraint.reference:.4f} -> at most {constraint.limit:.4f}); the "
                f"lowest predicted is {best:.4f} ({100 * (best / constraint.reference - 1):+.2f}%). Allow a larger "
                "rise or widen --bounds")
    index = np.flatnonzero(feasible)
    top = index[np.argsort(pred_obj[index], kind="stable")[:top_k]]
    return sim[top].mean(axis=0), top


def search_id(opts: SearchOptions, base_config, data: MixData, fingerprint: str) -> str:
    ident = {k: v for k, v in asdict(opts).items() if k not in ("out", "cache", "jobs", "threads")}
    blob = json.dumps({"opts": ident, "config": config_hash(config_to_dict(base_config)), "digests": data.digests,
                       "model": fingerprint}, sort_keys=True, default=str)
    return "mix-" + hashlib.sha256(blob.encode()).hexdigest()[:10]


@dataclass
class Plan:
    """What the search knows before it trains anything."""

    opts: SearchOptions
    base_config: object
    base: dict  # the base config as a plain dict (proxies are rendered from it)
    out: Path
    cache: Path
    jobs: int
    settings: px.ProxySettings
    data: MixData
    targets: dict[str, list[str]]
    general: dict[str, list[str]]
    low: np.ndarray
    high: np.ndarray
    concentration: tuple[float, float]
    fingerprint: str = ""

    def proxy(self, label: str, shares: np.ndarray) -> px.Proxy:
        return px.make_proxy(label, cand.floor_shares(shares)[0], self.data.units, self.base, self.settings,
                             self.cache, self.data.digests, self.fingerprint)

    def sample(self, n: int, seed, batch: int = 256) -> np.ndarray:
        return cand.sample_mixtures(self.data.natural, n, np.random.default_rng(seed), self.concentration,
                                    self.low, self.high, batch=batch)


def plan_search(opts: SearchOptions) -> Plan:
    """Read the config, make the proxy model, run the data path once, check every name and bound."""
    from redone.model import fingerprint_model_dir, load_tokenizer
    from redone.stages import build_config, load_config

    check_options(opts)
    base_config = load_config(opts.stage, opts.config, opts.overrides)
    base = config_to_dict(base_config)
    cache, out = cache_root(opts), Path(opts.out) if opts.out else default_out(opts)
    model_dir = proxy_model_dir(opts, base_config, cache)
    lr = opts.proxy_lr if opts.proxy_lr is not None else (DEFAULT_TINY_LR if opts.proxy_model == "tiny" else None)
    holdout = opts.holdout or getattr(base_config.data, "eval_holdout", 0) or DEFAULT_HOLDOUT
    settings = px.ProxySettings(opts.stage, str(model_dir), opts.tokens, holdout, opts.threads, lr,
                                list(opts.proxy_set), opts.keep_proxy_weights)
    # The data path once, with the proxies' data settings: token counts, digests, the config's shares.
    raw = dict(px.proxy_dict(base, source_dicts(base_config), settings), output_dir=str(out / "data"))
    data_config = build_config(opts.stage, OmegaConf.create(raw), origin=opts.config)
    data = build_units(data_config, stage_data_info(data_config, load_tokenizer(str(model_dir))), opts.over)
    targets = resolve_names(data, list(opts.target) or default_targets(base_config), "--target")
    general_names = list(opts.general) or [s for s in data.source_names if s not in targets]
    general = resolve_names(data, general_names, "--general") if general_names else {}
    overlap = {t for g in targets.values() for t in g} & {t for g in general.values() for t in g}
    if overlap:
        raise ConfigError(f"--general: {sorted(overlap)} are also targets; a component is either target or general")
    low, high = cand.parse_bounds(list(opts.bounds), data.names)
    return Plan(opts, base_config, base, out, cache, opts.jobs or default_jobs(opts.threads), settings, data,
                targets, general, low, high, cand.parse_concentration(opts.concentration),
                fingerprint_model_dir(model_dir))


def train_candidates(plan: Plan, echo) -> tuple[list[px.Proxy], list[dict], dict]:
    """The natural and config mixtures plus Dirichlet samples, each trained (or read from the cache)."""
    labelled = [("natural", plan.data.natural), ("config", plan.data.config_shares)]
    labelled += [(f"candidate-{i + 1}", s) for i, s in enumerate(plan.sample(plan.opts.proxies - 2, plan.opts.seed))]
    proxies = [plan.proxy(label, shares) for label, shares in labelled]
    status = px.run_pending(proxies, plan.data.names, plan.settings, plan.jobs, echo)
    return proxies, [proxy_row(p, plan.targets, plan.general, status) for p in proxies], status


@dataclass
class Choice:
    fit_obj: object
    fit_gen: object | None
    constraint: Constraint | None
    sim: np.ndarray
    pred_obj: np.ndarray
    pred_gen: np.ndarray | None
    chosen: np.ndarray
    top: np.ndarray
    prediction: dict


def fit_and_choose(plan: Plan, rows: list[dict], echo) -> Choice:
    opts = plan.opts
    shares = np.array([r["shares"] for r in rows])
    fit_obj = fit_best(shares, np.array([r["objective"] for r in rows]), opts.regressor, opts.folds, opts.seed)
    for row, oof in zip(rows, fit_obj.cv["oof"]):
        row["objective_oof"] = float(oof)
    echo(f"[mix] objective fit: {fit_summary(fit_obj)}")
    fit_gen, constraint = None, None
    if plan.general:
        fit_gen = fit_best(shares, np.array([r["general"] for r in rows]), opts.regressor, opts.folds, opts.seed)
        for row, oof in zip(rows, fit_gen.cv["oof"]):
            row["general_oof"] = float(oof)
        constraint = Constraint(rows[0]["general"], opts.max_general_rise)  # rows[0]: the natural mixture
        echo(f"[mix] general fit:   {fit_summary(fit_gen)}")
    sim = plan.sample(opts.simulations, [opts.seed, 1], batch=8192)
    pred_obj = fit_obj.model.predict(sim)
    pred_gen = fit_gen.model.predict(sim) if fit_gen else None
    chosen, top = choose_mixture(sim, pred_obj, pred_gen, constraint, opts.top_k)
    chosen = cand.floor_shares(chosen)[0]
    prediction = {"objective": float(fit_obj.model.predict(chosen[None])[0]),
                  "general": float(fit_gen.model.predict(chosen[None])[0]) if fit_gen else None}
    echo("[mix] chosen: " + ", ".join(f"{n} {s:.3f}" for n, s in zip(plan.data.names, chosen))
         + f" (predicted objective {prediction['objective']:.4f})")
    return Choice(fit_obj, fit_gen, constraint, sim, pred_obj, pred_gen, chosen, top, prediction)


def validate_choice(plan: Plan, choice: Choice, rows: list[dict], status: dict, echo) -> dict:
    """Train a proxy on the chosen mixture: observed objective, and whether it meets the constraint."""
    proxy = plan.proxy("chosen", choice.chosen)
    status.update(px.run_pending([proxy], plan.data.names, plan.settings, plan.jobs, echo))
    row = proxy_row(proxy, plan.targets, plan.general, status)
    echo(f"[mix] chosen mixture's proxy: objective {row['objective']:.4f} observed "
         f"(config {rows[1]['objective']:.4f}, natural {rows[0]['objective']:.4f})")
    constraint = choice.constraint
    if constraint is not None:
        row["constraint_met"] = bool(row["general"] <= constraint.limit)
        row["general_rise_pct"] = 100 * (row["general"] / constraint.reference - 1)
        if not row["constraint_met"]:
            echo(f"[mix] warning: the chosen mixture's proxy breaks the constraint: general loss "
                 f"{row['general']:.4f} ({row['general_rise_pct']:+.2f}% > {constraint.rise_pct:+g}%); the "
                 f"general fit's error is {choice.fit_gen.cv['mae']:.4f} (CV MAE)")
    return row


def run_search(opts: SearchOptions, echo=print) -> dict:
    """Run the whole search; returns the summary also written to ``<out>/search.json``."""
    from redone.mix.output import write_outputs

    clock = time.perf_counter()
    plan = plan_search(opts)
    prep_s = time.perf_counter() - clock
    echo(f"[mix] {len(plan.data.units)} units over {opts.over}: " + ", ".join(
        f"{u.name} {p:.3f}" for u, p in zip(plan.data.units, plan.data.natural)) + " (natural token shares)")
    proxies, rows, status = train_candidates(plan, echo)
    proxy_s = time.perf_counter() - clock - prep_s
    choice = fit_and_choose(plan, rows, echo)
    validation = validate_choice(plan, choice, rows, status, echo) if opts.validate else None
    timing = {"prepare": round(prep_s, 1), "proxies": round(proxy_s, 1),
              "total": round(time.perf_counter() - clock, 1)}
    summary = make_summary(plan, proxies, rows, status, choice, validation, timing)
    write_outputs(plan.out, summary, choice.sim, choice.pred_obj, choice.pred_gen, choice.constraint)
    echo(f"[mix] {summary['id']}: wrote {plan.out}/mix.yaml, overrides.txt, report.md, mix_plot.png, search.json "
         f"({timing['total']:.0f} s; {summary['ran']} proxies trained, {summary['cached']} cached)")
    return summary


def make_summary(plan: Plan, proxies, rows, status, choice: Choice, validation, timing) -> dict:
    opts, data, constraint = plan.opts, plan.data, choice.constraint
    model_dir = Path(plan.settings.model_dir)
    return {
        "id": search_id(opts, plan.base_config, data, plan.fingerprint), "options": asdict(opts),
        "out": str(plan.out), "config": str(opts.config), "stage": opts.stage, "over": opts.over,
        "units": data.names, "unit_sources": [u.source for u in data.units], "tokens": [u.tokens for u in data.units],
        "natural": data.natural.tolist(), "config_shares": data.config_shares.tolist(), "digests": data.digests,
        "bounds": {"low": plan.low.tolist(), "high": plan.high.tolist()}, "concentration": list(plan.concentration),
        "targets": plan.targets, "general": plan.general,
        "constraint": None if constraint is None else {**asdict(constraint), "limit": constraint.limit},
        "proxy": {"model": str(model_dir), "parameters": px.model_parameters(model_dir), "tokens": opts.tokens,
                  "steps": proxies[0].config.train.max_steps, "holdout": plan.settings.holdout,
                  "lr": proxies[0].config.optim.lr, "jobs": plan.jobs, "threads": opts.threads,
                  "cache": str(plan.cache)},
        "proxies": rows, "ran": sum(v == "ran" for v in status.values()),
        "cached": sum(v == "cached" for v in status.values()),
        "fit": {"objective": fit_record(choice.fit_obj),
                "general": fit_record(choice.fit_gen) if choice.fit_gen else None},
        "chosen": choice.chosen.tolist(), "prediction": choice.prediction, "validation": validation,
        "top_k_spread": choice.sim[choice.top].std(axis=0).tolist(), "timing_s": timing,
    }


def proxy_row(proxy: px.Proxy, targets: dict, general: dict, status: dict) -> dict:
    result = proxy.result()
    row = {"label": proxy.label, "key": proxy.key, "shares": [float(s) for s in proxy.shares],
           "eval_loss": result["eval_loss"], "objective": group_loss(result["eval_loss"], targets, proxy.label),
           "groups": {name: float(np.mean([result["eval_loss"][t] for t in tags]))
                      for name, tags in {**targets, **general}.items()},
           "status": status.get(proxy.key, "cached"), "wall_s": result["wall_s"], "dir": str(proxy.dir)}
    row["general"] = group_loss(result["eval_loss"], general, proxy.label) if general else None
    return row


def fit_summary(fit) -> str:
    others = ", ".join(f"{name} {r['spearman']:.3f}" for name, r in fit.all_cv.items() if name != fit.name)
    return (f"{fit.name}, {fit.cv['folds']}-fold CV Spearman {fit.cv['spearman']:.3f}, MAE {fit.cv['mae']:.4f}"
            + (f" (also tried: {others})" if others else ""))


def fit_record(fit) -> dict:
    return {"model": fit.name, "cv_spearman": fit.cv["spearman"], "cv_mae": fit.cv["mae"], "folds": fit.cv["folds"],
            "all": fit.all_cv}
