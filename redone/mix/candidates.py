"""Candidate mixtures: Dirichlet samples around the natural token shares, within per-unit bounds.

A candidate is a vector of shares over the search's units (sources or task files) that sums to one.
Samples are drawn as ``Dirichlet(alpha)`` with ``alpha_i = c * natural_share_i``: the mean of every
sample is the natural mixture, and the concentration ``c`` sets how far candidates stray from it
(``Var(share_i) = p_i (1 - p_i) / (c + 1)``; c = 1 puts most samples near a corner of the simplex,
c = 100 keeps them within a few points of natural). Like RegMix, the concentration may be a range
``lo:hi``, drawn log-uniformly per sample, so the candidates cover both the neighbourhood of the
natural mixture and bolder reweightings. The default range is ``DEFAULT_CONCENTRATION``.

Bounds (``name=min:max`` shares) are honoured exactly: a sample is ``min + (1 - sum(min)) * d`` with
``d`` the Dirichlet draw (so every minimum holds and the sum stays one), and draws exceeding a maximum
are rejected and redrawn.

Errors (``ConfigError``): a malformed concentration or bound, an unknown unit name in a bound,
bounds that no mixture satisfies (sum of minima > 1, sum of maxima < 1, min > max), bounds so tight
that rejection sampling cannot find samples.
"""

from __future__ import annotations

import numpy as np

from redone.errors import ConfigError

DEFAULT_CONCENTRATION = (2.0, 30.0)
# Every share is at least this (then renormalised): a zero weight is refused by the config, and a
# Gamma draw with a tiny alpha can underflow to exactly zero.
SHARE_FLOOR = 1e-6


def parse_concentration(text: str | float) -> tuple[float, float]:
    """``"8"`` -> (8, 8); ``"2:30"`` -> (2, 30) drawn log-uniformly per sample."""
    parts = str(text).split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--concentration: '{text}' is not a number or lo:hi") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not (0 < values[0] <= values[1]):
        raise ConfigError(f"--concentration: need c > 0 or 0 < lo <= hi (got '{text}')")
    return values[0], values[1]


def parse_bounds(items: list[str], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``["sns=0.5:0.9", "general_chat=0.05:"]`` -> (low, high) arrays aligned with ``names``."""
    low, high = np.zeros(len(names)), np.ones(len(names))
    for item in items:
        name, sep, span = item.partition("=")
        lo_text, colon, hi_text = span.partition(":")
        if not sep or not colon:
            raise ConfigError(f"--bounds: '{item}' is not name=min:max (either side may be empty)")
        if name not in names:
            raise ConfigError(f"--bounds: '{name}' is not a mixture unit (units: {', '.join(names)})")
        try:
            i = names.index(name)
            low[i] = float(lo_text) if lo_text else 0.0
            high[i] = float(hi_text) if hi_text else 1.0
        except ValueError:
            raise ConfigError(f"--bounds: '{item}': min and max must be numbers") from None
    check_bounds(low, high, names)
    return low, high


def check_bounds(low: np.ndarray, high: np.ndarray, names: list[str]) -> None:
    for i, name in enumerate(names):
        if not (0.0 <= low[i] <= high[i] <= 1.0):
            raise ConfigError(f"--bounds: {name} needs 0 <= min <= max <= 1 (got {low[i]}:{high[i]})")
    if low.sum() > 1.0 + 1e-9:
        raise ConfigError(f"--bounds: the minimum shares sum to {low.sum():.3f} > 1: no mixture satisfies them")
    if high.sum() < 1.0 - 1e-9:
        raise ConfigError(f"--bounds: the maximum shares sum to {high.sum():.3f} < 1: no mixture satisfies them")


def within_bounds(shares: np.ndarray, low: np.ndarray, high: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    shares = np.atleast_2d(shares)
    return np.all((shares >= low - tol) & (shares <= high + tol), axis=1)


def dirichlet(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows of Dirichlet draws for a [n, K] alpha matrix (Gamma draws, renormalised; underflow-safe)."""
    draws = rng.gamma(alpha)
    total = draws.sum(axis=1, keepdims=True)
    bad = ~(total[:, 0] > 0)
    while bad.any():  # every Gamma of a row underflowed: redraw just those rows
        draws[bad] = rng.gamma(alpha[bad])
        total = draws.sum(axis=1, keepdims=True)
        bad = ~(total[:, 0] > 0)
    return draws / total


def floor_shares(shares: np.ndarray) -> np.ndarray:
    shares = np.maximum(np.atleast_2d(shares), SHARE_FLOOR)
    return shares / shares.sum(axis=1, keepdims=True)


def sample_mixtures(natural: np.ndarray, n: int, rng: np.random.Generator,
                    concentration: tuple[float, float] = DEFAULT_CONCENTRATION,
                    low: np.ndarray | None = None, high: np.ndarray | None = None, batch: int = 256) -> np.ndarray:
    """``n`` mixtures (rows summing to one) around ``natural`` within [low, high].

    Draws come in fixed-size batches, so for one seed the first n samples do not depend on n: a
    search asked for more proxies keeps (and reuses the cached runs of) the ones it had."""
    natural = np.asarray(natural, dtype=np.float64)
    k = len(natural)
    low = np.zeros(k) if low is None else np.asarray(low, dtype=np.float64)
    high = np.ones(k) if high is None else np.asarray(high, dtype=np.float64)
    free = 1.0 - low.sum()
    kept: list[np.ndarray] = []
    count, drawn = 0, 0
    while count < n:
        if drawn > 1000 * max(n, 100):
            raise ConfigError(f"--bounds: only {count} of {drawn} Dirichlet draws fell within the bounds; "
                              "widen the bounds or raise --concentration")
        c = np.exp(rng.uniform(np.log(concentration[0]), np.log(concentration[1]), size=(batch, 1)))
        alpha = np.maximum(c * natural[None, :], 1e-3)
        shares = floor_shares(low + free * dirichlet(alpha, rng))
        ok = shares[within_bounds(shares, low, high)]
        kept.append(ok)
        count += len(ok)
        drawn += batch
    return np.concatenate(kept)[:n]
