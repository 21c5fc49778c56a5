"""Client sampling: Poisson with rate q, fixed-size m of N, from a secret source by default."""

import random
from collections import Counter

import numpy as np
import pytest

from privacy.client_dp import sample_clients, sample_fixed
from privacy.errors import FedVaultError

NODES = list(range(1000, 1200))


def test_poisson_includes_each_client_independently_with_rate_q():
    rng = random.Random(0)
    q, trials = 0.1, 2000
    counts: Counter[int] = Counter()
    sizes = []
    for _ in range(trials):
        chosen = sample_clients(NODES, q, rng)
        assert chosen == sorted(chosen) and set(chosen) <= set(NODES)
        counts.update(chosen)
        sizes.append(len(chosen))
    n = len(NODES)
    assert np.mean(sizes) == pytest.approx(q * n, rel=0.02)
    assert np.var(sizes) == pytest.approx(q * (1 - q) * n, rel=0.1)
    frequencies = np.array([counts[node] / trials for node in NODES])
    assert np.all(np.abs(frequencies - q) < 5 * np.sqrt(q * (1 - q) / trials))


def test_poisson_with_rate_one_takes_everyone():
    assert sample_clients(NODES, 1.0) == NODES


def test_fixed_size_takes_m_distinct_clients_uniformly():
    rng = random.Random(1)
    m, trials = 20, 2000
    counts: Counter[int] = Counter()
    for _ in range(trials):
        chosen = sample_fixed(NODES, m, rng)
        assert len(chosen) == m == len(set(chosen))
        assert set(chosen) <= set(NODES)
        counts.update(chosen)
    p = m / len(NODES)
    frequencies = np.array([counts[node] / trials for node in NODES])
    assert np.all(np.abs(frequencies - p) < 5 * np.sqrt(p * (1 - p) / trials))
    assert sorted(sample_fixed(NODES, len(NODES))) == NODES


def test_default_source_is_not_repeatable():
    assert sample_fixed(NODES, 100) != sample_fixed(NODES, 100)
    assert sample_clients(NODES, 0.5) != sample_clients(NODES, 0.5)


@pytest.mark.parametrize("q", [0.0, -0.1, 1.5, float("nan")])
def test_bad_rate_is_refused(q):
    with pytest.raises(FedVaultError, match="sampling rate"):
        sample_clients(NODES, q)


def test_bad_fixed_size_and_duplicates_are_refused():
    with pytest.raises(FedVaultError, match="cannot sample 201"):
        sample_fixed(NODES, 201)
    with pytest.raises(FedVaultError, match="number of sampled clients"):
        sample_fixed(NODES, 0)
    with pytest.raises(FedVaultError, match="integer"):
        sample_fixed(NODES, 2.5)
    with pytest.raises(FedVaultError, match="duplicates"):
        sample_clients([1, 2, 2], 0.5)
    with pytest.raises(FedVaultError, match="duplicates"):
        sample_fixed([1, 1], 1)
