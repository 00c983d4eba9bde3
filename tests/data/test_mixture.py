import numpy as np
import pytest

from redone.data.mixture import MixtureSampler, mixture_probs, split_source_weights


def make_lengths(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(5, 200, size=300), rng.integers(50, 400, size=80), rng.integers(1, 30, size=1000)]


def realised(sampler, draws):
    for _ in range(draws):
        sampler.next()
    return sampler.shares()


def test_ratio_shares_within_two_percent():
    lengths = make_lengths()
    probs = mixture_probs([3, 1, 1], [int(x.sum()) for x in lengths], "ratio", 1.0)
    assert probs == pytest.approx([0.6, 0.2, 0.2])
    shares = realised(MixtureSampler(lengths, probs, seed=1), 5000)
    assert np.allclose(shares, probs, atol=0.02)


def test_temperature_one_is_size_proportional():
    lengths = make_lengths()
    sizes = [int(x.sum()) for x in lengths]
    probs = mixture_probs([1, 1, 1], sizes, "temperature", 1.0)
    assert probs == pytest.approx([s / sum(sizes) for s in sizes])
    hot = mixture_probs([1, 1, 1], sizes, "temperature", 5.0)
    assert max(hot) - min(hot) < max(probs) - min(probs)  # higher T flattens the mix
    shares = realised(MixtureSampler(lengths, probs, seed=0), 4000)
    assert np.allclose(shares, probs, atol=0.02)


def test_split_source_weights_keeps_source_totals_and_flattens_inside():
    source_of, sizes = [0, 0, 0, 1, 1], [9000, 900, 100, 50, 50]
    by_size = split_source_weights(source_of, [8.0, 2.0], sizes, 1.0)
    assert by_size == pytest.approx([7.2, 0.72, 0.08, 1.0, 1.0])  # T = 1: by size within the source
    hot = split_source_weights(source_of, [8.0, 2.0], sizes, 3.0)
    assert sum(hot[:3]) == pytest.approx(8.0) and sum(hot[3:]) == pytest.approx(2.0)
    assert hot[0] / hot[2] == pytest.approx(90 ** (1 / 3))  # size ratio 90 -> share ratio 90^(1/3)
    assert split_source_weights(source_of, [8.0, 2.0], sizes, 1e9)[:3] == pytest.approx([8 / 3] * 3, rel=1e-6)


def test_same_seed_same_order_other_seed_differs():
    lengths = make_lengths()
    probs = [0.5, 0.25, 0.25]
    a = [MixtureSampler(lengths, probs, 7).next() for _ in range(1)]
    s1, s2, s3 = (MixtureSampler(lengths, probs, seed) for seed in (7, 7, 8))
    seq1 = [s1.next() for _ in range(500)]
    assert seq1 == [s2.next() for _ in range(500)]
    assert seq1 != [s3.next() for _ in range(500)]
    assert a[0] == seq1[0]


def test_state_round_trip_continues_identically():
    lengths = make_lengths()
    probs = [0.5, 0.3, 0.2]
    a = MixtureSampler(lengths, probs, 3)
    for _ in range(1234):  # crosses epoch boundaries of the small sources
        a.next()
    state = a.state_dict()
    assert max(state["epoch"]) >= 1
    b = MixtureSampler(lengths, probs, 3)
    b.load_state_dict(state)
    assert [a.next() for _ in range(700)] == [b.next() for _ in range(700)]


def test_epochs_cover_each_item_once():
    lengths = [np.full(10, 5), np.full(10, 5)]
    sampler = MixtureSampler(lengths, [0.5, 0.5], 0)
    picks = [sampler.next() for _ in range(20)]
    assert sorted(i for s, i in picks if s == 0) == list(range(10))
    assert sampler.state_dict()["epoch"] == [1, 1]
