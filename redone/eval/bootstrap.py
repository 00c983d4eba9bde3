"""Paired bootstrap intervals for the difference between two models' SNS-Bench averages.

Two rows of an ablation table were scored on the same items, so their difference is judged item by
item: each resample draws, for every SNS-Bench file, ``n`` item indices with replacement (the same
indices for both models), scores both models' predictions on that resample with the file's own metric
(``redone.sns.scoring.score_file``: corpus F1, macro-F1 and success ratios included, not a per-item
shortcut), aggregates to the 8-task average, and keeps the difference. The 95% interval is the 2.5th
and 97.5th percentile of those differences (percentile bootstrap); ``p_le_zero`` is the share of
resamples in which B does not beat A. So "DPO +0.4" on 96 items comes with the interval that says
whether it is a gain at all.

QueryGen's sentence embeddings are computed once per distinct text (a memo around the embedder), so a
thousand resamples cost a few seconds.

Errors: ``RedoneError`` when the two models were not scored on the same items.
"""

from __future__ import annotations

import numpy as np

from redone.errors import RedoneError
from redone.sns.scoring import aggregate, score_file


class MemoEmbedder:
    """Wraps a QueryGen embedder (``texts -> [n, dim]``) so each distinct text is embedded once."""

    def __init__(self, embedder):
        self.embedder = embedder
        self.cache: dict[str, np.ndarray] = {}
        self.name = getattr(embedder, "name", None) or getattr(embedder, "__name__", None)

    def __call__(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            for text, vector in zip(missing, np.asarray(self.embedder(missing))):
                self.cache[text] = vector
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, 1))


def average(predictions: dict[str, list[str]], items: dict[str, list[dict]], idx: dict[str, np.ndarray],
            mode: str, embedder) -> float:
    """SNS-Bench average over the files of ``predictions`` restricted to the item indices ``idx``."""
    results = {}
    for file, preds in predictions.items():
        take = idx[file]
        results[file] = score_file(file, [preds[i] for i in take], [items[file][i] for i in take],
                                   mode=mode, embedder=embedder)
    return aggregate(results)["average"]


def paired_bootstrap(a: dict[str, list[str]], b: dict[str, list[str]], items: dict[str, list[dict]], *,
                     resamples: int = 1000, seed: int = 0, mode: str = "fixed", embedder=None,
                     level: float = 0.95) -> dict:
    """Delta = average(b) - average(a) on the full items, with its paired-bootstrap interval."""
    if set(a) != set(b) or any(len(a[f]) != len(b[f]) or len(a[f]) != len(items[f]) for f in a):
        raise RedoneError("bootstrap: the two models were not scored on the same SNS-Bench items")
    if embedder is not None and not isinstance(embedder, MemoEmbedder):
        embedder = MemoEmbedder(embedder)
    full = {f: np.arange(len(items[f])) for f in a}
    delta = average(b, items, full, mode, embedder) - average(a, items, full, mode, embedder)
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for r in range(resamples):
        idx = {f: rng.integers(0, len(items[f]), len(items[f])) for f in sorted(a)}
        draws[r] = average(b, items, idx, mode, embedder) - average(a, items, idx, mode, embedder)
    tail = (1.0 - level) / 2
    low, high = np.quantile(draws, [tail, 1.0 - tail], method="inverted_cdf")
    return {"delta": float(delta), "low": float(low), "high": float(high), "level": level,
            "resamples": resamples, "seed": seed, "p_le_zero": float(np.mean(draws <= 0)),
            "items": int(sum(len(v) for v in items.values()))}
