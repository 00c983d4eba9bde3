"""Regression: Spearman, ridge on log-shares and the numpy trees recover planted optima, CV flags noise,
the constraint is honoured and an unsatisfiable one is refused."""

import numpy as np
import pytest

from redone.errors import ConfigError, RedoneError
from redone.mix.candidates import sample_mixtures
from redone.mix.regress import (
    RidgeLogShares,
    TreeBoost,
    cross_validate,
    fit_best,
    fit_tree,
    model_factories,
    rankdata,
    spearman,
)
from redone.mix.search import Constraint, choose_mixture

NATURAL = np.array([0.5, 0.3, 0.2])
PLANTED = np.array([0.2, 0.5, 0.3])


def planted_log_loss(shares, offset=1e-3):
    # -sum a_i log(s_i + e) is minimised over the simplex at s_i = a_i (1 + K e) - e (= a for e -> 0).
    return -(PLANTED * np.log(shares + offset)).sum(axis=1)


def test_spearman_and_ranks():
    assert rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0


def test_ridge_recovers_a_planted_optimum():
    rng = np.random.default_rng(0)
    shares = sample_mixtures(NATURAL, 30, rng, (2.0, 30.0))
    y = planted_log_loss(shares) + rng.normal(0, 0.005, len(shares))
    fit = fit_best(shares, y, "ridge")
    assert fit.name == "ridge" and fit.cv["spearman"] > 0.95
    sim = sample_mixtures(NATURAL, 100_000, np.random.default_rng(1), (2.0, 30.0))
    chosen, top = choose_mixture(sim, fit.model.predict(sim), None, None, 100)
    assert len(top) == 100
    np.testing.assert_allclose(chosen, PLANTED, atol=0.03)


def test_ridge_picks_the_offset_the_data_was_made_with():
    shares = sample_mixtures(NATURAL, 40, np.random.default_rng(5), (1.0, 30.0))
    for offset in (1e-3, 3e-2):
        model = RidgeLogShares().fit(shares, planted_log_loss(shares, offset))
        assert model.offset == offset
        np.testing.assert_allclose(model.predict(shares), planted_log_loss(shares, offset), atol=1e-3)


def test_trees_recover_a_planted_optimum_of_a_bowl():
    rng = np.random.default_rng(2)
    shares = sample_mixtures(NATURAL, 200, rng, (2.0, 30.0))
    y = ((shares - PLANTED) ** 2).sum(axis=1)
    model = TreeBoost().fit(shares, y)
    sim = sample_mixtures(NATURAL, 20_000, np.random.default_rng(3), (2.0, 30.0))
    chosen, _ = choose_mixture(sim, model.predict(sim), None, None, 100)
    np.testing.assert_allclose(chosen, PLANTED, atol=0.04)
    assert cross_validate(TreeBoost, shares, y)["spearman"] > 0.8


def test_one_tree_fits_a_step_exactly():
    x = np.array([[0.1, 0.9], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.9, 0.1]])
    y = np.array([0.0, 0.0, 1.0, 1.0, 1.0])
    tree = fit_tree(x, y, max_depth=3, min_leaf=1)
    np.testing.assert_allclose(tree.predict(x), y)
    assert tree.predict(np.array([[0.35, 0.65]]))[0] in (0.0, 1.0)


def test_cross_validation_flags_a_fit_that_cannot_be_trusted():
    rng = np.random.default_rng(4)
    shares = sample_mixtures(NATURAL, 40, rng, (2.0, 30.0))
    noise = rng.normal(0, 1, len(shares))
    result = fit_best(shares, noise)
    assert abs(result.cv["spearman"]) < 0.4
    assert set(result.all_cv) == {"ridge", "gbm"}


def test_too_few_proxies_and_bad_regressor():
    with pytest.raises(RedoneError, match="too few to cross-validate"):
        cross_validate(RidgeLogShares, NATURAL[None].repeat(3, 0), np.zeros(3))
    with pytest.raises(ConfigError, match="--regressor"):
        model_factories("xgboost")


def test_constraint_filters_and_unsatisfiable_constraint_is_refused():
    sim = np.array([[0.9, 0.1], [0.7, 0.3], [0.5, 0.5]])
    objective = np.array([1.0, 2.0, 3.0])
    general = np.array([5.0, 4.0, 3.0])
    chosen, top = choose_mixture(sim, objective, general, Constraint(reference=4.0, rise_pct=3.0), 1)
    assert top.tolist() == [1] and chosen.tolist() == [0.7, 0.3]  # the best one breaks the +3% limit
    with pytest.raises(RedoneError, match=r"--max-general-rise: no mixture keeps .* within -50%") as err:
        choose_mixture(sim, objective, general, Constraint(reference=4.0, rise_pct=-50.0), 1)
    assert "lowest predicted is 3.0000 (-25.00%)" in str(err.value)
