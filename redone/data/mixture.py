"""Deterministic, resumable mixing of sources by token share.

``mixture_probs`` turns weights (ratio mode) or sizes (temperature mode, p_i ~ n_i^(1/T), n_i = tokens)
into target shares. ``MixtureSampler`` then emits (source, item) picks so that realised *token* shares
track the targets: the next pick goes to the source furthest below its share (largest deficit), so the
mix is exact to within one item at every point of the run, not just in expectation. Within a source,
items come in a seeded permutation per epoch; a source that runs out starts its next epoch (the count
of epochs per source is logged, so repetition is visible).

The whole state is a few integers (tokens emitted, epoch and cursor per source), so a checkpoint
restores the exact position in O(1) without replaying anything.
"""

from __future__ import annotations

import numpy as np


def mixture_probs(weights: list[float], token_counts: list[int], mode: str, temperature: float) -> list[float]:
    if mode == "temperature":
        raw = [float(n) ** (1.0 / temperature) for n in token_counts]
    else:
        raw = [float(w) for w in weights]
    total = sum(raw)
    return [r / total for r in raw]


def split_source_weights(source_of: list[int], source_weights: list[float], sizes: list[int],
                         temperature: float) -> list[float]:
    """Ratio mode with several components per source (an SNS-Bench folder = 12 task files): each source's
    weight is shared by its components in proportion to size^(1/T). T = 1 splits by size; a larger T
    moves share from big components to small ones (T -> inf: evenly), like temperature sampling but
    inside a source, so the source weights the user set still hold exactly."""
    raw = [float(n) ** (1.0 / temperature) for n in sizes]
    per_source: dict[int, float] = {}
    for s, r in zip(source_of, raw):
        per_source[s] = per_source.get(s, 0.0) + r
    return [source_weights[s] * r / per_source[s] for s, r in zip(source_of, raw)]


class MixtureSampler:
    def __init__(self, lengths: list[np.ndarray], probs: list[float], seed: int):
        """lengths[s][i] = token length of item i of source s (what a pick costs in tokens)."""
        if len(lengths) != len(probs):
            raise ValueError("one probability per source")
        self.lengths = lengths
        self.probs = np.asarray(probs, dtype=np.float64)
        self.seed = seed
        n = len(lengths)
        self.tokens = [0] * n
        self.epoch = [0] * n
        self.cursor = [0] * n
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    def _order(self, source: int, epoch: int) -> np.ndarray:
        key = (source, epoch)
        if key not in self._perm_cache:
            rng = np.random.default_rng([self.seed, source, epoch])
            self._perm_cache = {key: rng.permutation(len(self.lengths[source]))}
        return self._perm_cache[key]

    def next(self) -> tuple[int, int]:
        """The next (source, item index) pick."""
        total = sum(self.tokens)
        deficits = self.probs * (total + 1) - np.asarray(self.tokens, dtype=np.float64)
        deficits[self.probs == 0] = -np.inf
        source = int(np.argmax(deficits))  # ties go to the lower index: deterministic
        order = self._order(source, self.epoch[source])
        item = int(order[self.cursor[source]])
        self.cursor[source] += 1
        if self.cursor[source] == len(order):
            self.epoch[source] += 1
            self.cursor[source] = 0
        self.tokens[source] += int(self.lengths[source][item])
        return source, item

    def state_dict(self) -> dict:
        return {"tokens": list(self.tokens), "epoch": list(self.epoch), "cursor": list(self.cursor),
                "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed or len(state["tokens"]) != len(self.tokens):
            raise ValueError("sampler state belongs to a different seed or source list")
        self.tokens = list(state["tokens"])
        self.epoch = list(state["epoch"])
        self.cursor = list(state["cursor"])

    def shares(self) -> list[float]:
        total = sum(self.tokens) or 1
        return [t / total for t in self.tokens]
