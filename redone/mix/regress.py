"""Regression from mixture shares to a held-out loss, and how far it can be trusted.

Models (each has ``fit(shares, y)`` and ``predict(shares)``):
- ``ridge``: ridge regression on log-shares (``log(share + offset)``, standardised), the offset and
  the penalty chosen by exact leave-one-out error over a grid. A loss that falls like
  ``-a log(share)`` as a source gets more weight (the usual shape) is linear in these features.
- ``gbm``: gradient-boosted regression trees in numpy (least squares, depth 3, shrinkage 0.05), the
  non-linear model RegMix uses, for when LightGBM is not installed.
- ``lightgbm``: LightGBM's regressor, used instead of ``gbm`` when ``lightgbm`` imports.

``cross_validate`` gives K-fold out-of-fold predictions and their Spearman rank correlation with the
observed losses: the number that says whether the regression ranks unseen mixtures correctly.
``fit_best`` fits every available model and keeps the one with the best cross-validated Spearman.

Errors: ``ConfigError`` for an unknown or unavailable regressor name; ``RedoneError`` when there are
too few proxies to cross-validate (fewer than 4).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np

from redone.errors import ConfigError, RedoneError

OFFSETS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
MIN_POINTS = 4


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get their average rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation (0.0 when either side is constant)."""
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


class RidgeLogShares:
    """Ridge on ``log(share + offset)``. The offset says how much data counts as "a little": with a
    tiny offset a source going from 0.01% to 0.1% moves the prediction as much as 10% to 100%, which is
    not how losses behave; it and the penalty are chosen together by exact leave-one-out error."""

    name = "ridge"

    def __init__(self, alphas=tuple(np.logspace(-4, 3, 15)), offsets=OFFSETS):
        self.alphas, self.offsets = alphas, offsets

    def features(self, shares: np.ndarray, offset: float | None = None) -> np.ndarray:
        return np.log(np.atleast_2d(shares) + (self.offset if offset is None else offset))

    def fit(self, shares: np.ndarray, y: np.ndarray) -> RidgeLogShares:
        y = np.asarray(y, dtype=np.float64)
        self.intercept = float(np.mean(y))
        yc = y - self.intercept
        best = None
        for offset in self.offsets:
            z, mean, scale = standardise(self.features(shares, offset))
            for alpha in self.alphas:
                error = loo_error(z, yc, alpha)
                if best is None or error < best[0] - 1e-15:
                    best = (error, offset, alpha, z, mean, scale)
        _, self.offset, self.alpha, z, self.mean, self.scale = best
        self.coef = np.linalg.solve(z.T @ z + self.alpha * np.eye(z.shape[1]), z.T @ yc)
        return self

    def predict(self, shares: np.ndarray) -> np.ndarray:
        z = (self.features(shares) - self.mean) / self.scale
        return self.intercept + z @ self.coef


def standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    return (x - mean) / scale, mean, scale


def loo_error(z: np.ndarray, yc: np.ndarray, alpha: float) -> float:
    """Mean squared exact leave-one-out residual of ridge (a linear smoother: e_i / (1 - h_ii); the
    fitted intercept adds 1/n to every h_ii)."""
    inverse = np.linalg.inv(z.T @ z + alpha * np.eye(z.shape[1]))
    hat = np.einsum("ij,jk,ik->i", z, inverse, z) + 1.0 / len(yc)
    residual = yc - z @ inverse @ z.T @ yc
    return float(np.mean((residual / np.maximum(1.0 - hat, 1e-6)) ** 2))


@dataclass
class Tree:
    feature: np.ndarray  # -1 at leaves
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        node = np.zeros(len(x), dtype=np.int64)
        while True:
            inner = self.feature[node] >= 0
            if not inner.any():
                return self.value[node]
            rows = np.flatnonzero(inner)
            at = node[rows]
            go_left = x[rows, self.feature[at]] <= self.threshold[at]
            node[rows] = np.where(go_left, self.left[at], self.right[at])


def best_split(x: np.ndarray, r: np.ndarray, min_leaf: int) -> tuple[float, int, float]:
    """(SSE reduction, feature, threshold) of the best single split of the rows, or gain 0."""
    n, best = len(r), (0.0, -1, 0.0)
    total = r.sum()
    for f in range(x.shape[1]):
        order = np.argsort(x[:, f], kind="stable")
        xs, csum = x[order, f], np.cumsum(r[order])
        i = np.arange(min_leaf - 1, n - min_leaf)
        if len(i) == 0:
            continue
        valid = xs[i] < xs[i + 1]
        left_n = i + 1
        gain = csum[i] ** 2 / left_n + (total - csum[i]) ** 2 / (n - left_n) - total ** 2 / n
        gain = np.where(valid, gain, -np.inf)
        j = int(np.argmax(gain))
        if gain[j] > best[0] + 1e-12:
            best = (float(gain[j]), f, float((xs[i[j]] + xs[i[j] + 1]) / 2))
    return best


def fit_tree(x: np.ndarray, r: np.ndarray, max_depth: int, min_leaf: int) -> Tree:
    feature, threshold, left, right, value = [], [], [], [], []

    def grow(rows: np.ndarray, depth: int) -> int:
        node = len(feature)
        for column, item in ((feature, -1), (threshold, 0.0), (left, -1), (right, -1), (value, r[rows].mean())):
            column.append(item)
        if depth == max_depth or len(rows) < 2 * min_leaf:
            return node
        gain, f, thr = best_split(x[rows], r[rows], min_leaf)
        if f < 0:
            return node
        mask = x[rows, f] <= thr
        feature[node], threshold[node] = f, thr
        left[node] = grow(rows[mask], depth + 1)
        right[node] = grow(rows[~mask], depth + 1)
        return node

    grow(np.arange(len(r)), 0)
    return Tree(np.array(feature), np.array(threshold), np.array(left), np.array(right), np.array(value))


class TreeBoost:
    """Least-squares gradient boosting of small regression trees (numpy; shares as features)."""

    name = "gbm"

    def __init__(self, n_trees: int = 300, learning_rate: float = 0.05, max_depth: int = 3, min_leaf: int = 2):
        self.n_trees, self.learning_rate, self.max_depth, self.min_leaf = n_trees, learning_rate, max_depth, min_leaf

    def fit(self, shares: np.ndarray, y: np.ndarray) -> TreeBoost:
        x, y = np.atleast_2d(shares), np.asarray(y, dtype=np.float64)
        self.base = float(y.mean())
        prediction = np.full(len(y), self.base)
        self.trees = []
        for _ in range(self.n_trees):
            tree = fit_tree(x, y - prediction, self.max_depth, self.min_leaf)
            self.trees.append(tree)
            prediction += self.learning_rate * tree.predict(x)
        return self

    def predict(self, shares: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(shares)
        out = np.full(len(x), self.base)
        for tree in self.trees:
            out += self.learning_rate * tree.predict(x)
        return out


class LightGBMModel:
    name = "lightgbm"

    def fit(self, shares: np.ndarray, y: np.ndarray) -> LightGBMModel:
        import lightgbm

        # Small-data settings: tiny leaves are needed with a few dozen proxies.
        self.model = lightgbm.LGBMRegressor(n_estimators=300, learning_rate=0.05, num_leaves=8,
                                            min_child_samples=2, verbose=-1, random_state=0)
        self.model.fit(np.atleast_2d(shares), np.asarray(y, dtype=np.float64))
        return self

    def predict(self, shares: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(np.atleast_2d(shares)), dtype=np.float64)


def lightgbm_available() -> bool:
    return importlib.util.find_spec("lightgbm") is not None


def model_factories(name: str = "auto") -> dict:
    """The regressors to try: ridge always, then LightGBM when installed, else the numpy trees."""
    trees = ("lightgbm", LightGBMModel) if lightgbm_available() else ("gbm", TreeBoost)
    available = {"ridge": RidgeLogShares, trees[0]: trees[1]}
    if name == "auto":
        return available
    if name == "lightgbm" and not lightgbm_available():
        raise ConfigError("--regressor lightgbm: lightgbm is not installed (pip install lightgbm) ")
    if name not in ("ridge", "gbm", "lightgbm"):
        raise ConfigError(f"--regressor: '{name}' is not one of auto, ridge, gbm, lightgbm")
    return {name: {"ridge": RidgeLogShares, "gbm": TreeBoost, "lightgbm": LightGBMModel}[name]}


def kfold_indices(n: int, folds: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[i::folds] for i in range(folds)]


def cross_validate(factory, shares: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> dict:
    """Out-of-fold predictions for every point, their Spearman with ``y`` and mean absolute error."""
    n = len(y)
    if n < MIN_POINTS:
        raise RedoneError(f"regression: {n} proxies are too few to cross-validate (need {MIN_POINTS}+; "
                          "raise --proxies)")
    folds = min(folds, n)
    predicted = np.zeros(n)
    for held in kfold_indices(n, folds, seed):
        train = np.setdiff1d(np.arange(n), held)
        predicted[held] = factory().fit(shares[train], y[train]).predict(shares[held])
    return {"folds": folds, "oof": predicted, "spearman": spearman(predicted, y),
            "mae": float(np.mean(np.abs(predicted - y)))}


@dataclass
class Fit:
    name: str
    model: object
    cv: dict  # of the chosen model
    all_cv: dict  # model name -> {"spearman", "mae"}


def fit_best(shares: np.ndarray, y: np.ndarray, regressor: str = "auto", folds: int = 5, seed: int = 0) -> Fit:
    """Cross-validate every candidate model; refit the best (by CV Spearman, then MAE) on all points."""
    shares, y = np.atleast_2d(shares), np.asarray(y, dtype=np.float64)
    results = {name: cross_validate(factory, shares, y, folds, seed)
               for name, factory in model_factories(regressor).items()}
    best = max(results, key=lambda name: (round(results[name]["spearman"], 6), -results[name]["mae"]))
    model = model_factories(regressor)[best]().fit(shares, y)
    summary = {name: {"spearman": r["spearman"], "mae": r["mae"]} for name, r in results.items()}
    return Fit(best, model, results[best], summary)
