"""Dirichlet candidates: sums, bounds, the natural mean, prefix stability, bad bounds."""

import numpy as np
import pytest

from redone.errors import ConfigError
from redone.mix.candidates import (
    dirichlet,
    parse_bounds,
    parse_concentration,
    sample_mixtures,
    within_bounds,
)

NAMES = ["sns", "transbench", "general_chat"]
NATURAL = np.array([0.74, 0.21, 0.05])


def test_samples_sum_to_one_and_respect_bounds():
    low, high = parse_bounds(["sns=0.5:0.8", "general_chat=0.1:"], NAMES)
    assert low.tolist() == [0.5, 0.0, 0.1] and high.tolist() == [0.8, 1.0, 1.0]
    shares = sample_mixtures(NATURAL, 2000, np.random.default_rng(0), (2.0, 30.0), low, high)
    assert shares.shape == (2000, 3)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-12)
    assert within_bounds(shares, low, high).all()
    assert shares[:, 0].min() >= 0.5 - 1e-9 and shares[:, 0].max() <= 0.8 + 1e-9
    assert shares[:, 2].min() >= 0.1 - 1e-9
    # The bounds are actually binding: without them many samples fall outside.
    free = sample_mixtures(NATURAL, 2000, np.random.default_rng(0), (2.0, 30.0))
    assert (~within_bounds(free, low, high)).mean() > 0.3


def test_samples_centre_on_the_natural_mixture_with_the_documented_spread():
    shares = sample_mixtures(NATURAL, 20000, np.random.default_rng(1), (10.0, 10.0))
    np.testing.assert_allclose(shares.mean(axis=0), NATURAL, atol=0.005)
    # Dirichlet(c * p): Var(share_i) = p_i (1 - p_i) / (c + 1)
    np.testing.assert_allclose(shares.var(axis=0), NATURAL * (1 - NATURAL) / 11, rtol=0.06)


def test_first_samples_do_not_depend_on_how_many_are_drawn():
    few = sample_mixtures(NATURAL, 5, np.random.default_rng(3))
    many = sample_mixtures(NATURAL, 40, np.random.default_rng(3))
    np.testing.assert_array_equal(few, many[:5])


def test_dirichlet_survives_tiny_alphas():
    draws = dirichlet(np.full((500, 4), 1e-3), np.random.default_rng(0))
    assert np.isfinite(draws).all()
    np.testing.assert_allclose(draws.sum(axis=1), 1.0)


@pytest.mark.parametrize("items, message", [
    (["nope=0:0.5"], "'nope' is not a mixture unit (units: sns, transbench, general_chat)"),
    (["sns=0.9:0.2"], "sns needs 0 <= min <= max <= 1"),
    (["sns=0.7:", "transbench=0.4:"], "minimum shares sum to 1.100 > 1"),
    (["sns=:0.3", "transbench=:0.3", "general_chat=:0.3"], "maximum shares sum to 0.900 < 1"),
    (["sns0.5"], "is not name=min:max"),
    (["sns=a:b"], "must be numbers"),
])
def test_bad_bounds_name_the_problem(items, message):
    with pytest.raises(ConfigError, match="--bounds") as err:
        parse_bounds(items, NAMES)
    assert message in str(err.value)


def test_bounds_too_tight_for_sampling_are_refused():
    low, high = parse_bounds(["general_chat=0.999:1"], NAMES)
    # Feasible, and the minimum makes it reachable: every sample is 0.999 + 0.001 * draw.
    shares = sample_mixtures(NATURAL, 10, np.random.default_rng(0), (5.0, 5.0), low, high)
    assert (shares[:, 2] >= 0.999).all()
    low, high = parse_bounds(["sns=:0.01", "transbench=:0.01"], NAMES)
    with pytest.raises(ConfigError, match="fell within the bounds"):
        sample_mixtures(NATURAL, 10, np.random.default_rng(0), (500.0, 500.0), low, high)


def test_concentration_parsing():
    assert parse_concentration("8") == (8.0, 8.0)
    assert parse_concentration("2:30") == (2.0, 30.0)
    for bad in ("0", "5:1", "x", "1:2:3"):
        with pytest.raises(ConfigError, match="--concentration"):
            parse_concentration(bad)
