"""The secure randomness source: right distributions, fresh OS randomness, a labelled test mode."""

import time

import numpy as np
import pytest
from scipy import stats

from privacy.errors import FedVaultError
from privacy.randomness import SecureRandom

N = 200_000


def _check_standard_normal(z: np.ndarray) -> None:
    assert z.shape == (N,)
    assert abs(z.mean()) < 5 / np.sqrt(N)
    assert z.std() == pytest.approx(1.0, abs=0.01)
    assert stats.kurtosis(z) == pytest.approx(0.0, abs=0.08)
    assert abs(stats.skew(z)) < 0.04
    assert np.mean(np.abs(z) > 3) == pytest.approx(2 * stats.norm.sf(3), rel=0.25)
    # Kolmogorov-Smirnov against N(0, 1): a false alarm here has probability 1e-6.
    assert stats.kstest(z, "norm").pvalue > 1e-6
    # Box-Muller emits pairs (cos half, sin half): both halves and neighbours independent.
    half = N // 2
    assert abs(np.corrcoef(z[:half], z[half:])[0, 1]) < 5 / np.sqrt(half)
    assert abs(np.corrcoef(z[:half] ** 2, z[half:] ** 2)[0, 1]) < 5 / np.sqrt(half)
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 5 / np.sqrt(N)


def test_secure_samples_are_standard_normal():
    gaussian = SecureRandom()
    assert gaussian.secure
    _check_standard_normal(gaussian.normal(N))


def test_seeded_mode_is_standard_normal_reproducible_and_marked_insecure():
    first, second = SecureRandom(insecure_seed=7), SecureRandom(insecure_seed=7)
    assert not first.secure
    z = first.normal(N)
    _check_standard_normal(z)
    np.testing.assert_array_equal(z, second.normal(N))
    assert not np.array_equal(first.normal(10), first.normal(10))
    assert not np.array_equal(SecureRandom(insecure_seed=8).normal(10), z[:10])


def test_secure_calls_differ_and_ignore_numpy_global_seed():
    gaussian = SecureRandom()
    np.random.seed(0)
    a = gaussian.normal(1000)
    np.random.seed(0)
    b = gaussian.normal(1000)
    c = SecureRandom().normal(1000)
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(np.intersect1d(a, b)) == 0


def test_std_and_shape():
    gaussian = SecureRandom()
    z = gaussian.normal((400, 500), std=3.0)
    assert z.shape == (400, 500) and z.dtype == np.float64
    assert z.std() == pytest.approx(3.0, rel=0.01)
    assert gaussian.normal(7).shape == (7,)
    assert gaussian.normal(0).shape == (0,)
    assert gaussian.normal(()).shape == ()
    np.testing.assert_array_equal(gaussian.normal((3, 2), std=0.0), np.zeros((3, 2)))


def test_one_million_values_are_fast():
    gaussian = SecureRandom()
    start = time.perf_counter()
    gaussian.normal(1_000_000)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("std", [-1.0, float("nan"), float("inf")])
def test_bad_std_is_refused(std):
    with pytest.raises(FedVaultError, match="noise standard deviation"):
        SecureRandom().normal(3, std)


def test_bad_shape_and_seed_are_refused():
    with pytest.raises(FedVaultError, match="non-negative"):
        SecureRandom().normal((2, -1))
    with pytest.raises(FedVaultError, match="insecure seed"):
        SecureRandom(insecure_seed=-1)
    with pytest.raises(FedVaultError, match="probability"):
        SecureRandom().bernoulli(3, 1.5)
    with pytest.raises(FedVaultError, match="size"):
        SecureRandom().uniform(-1)


def test_uniforms_are_uniform_and_bernoulli_has_its_rate():
    u = SecureRandom().uniform(N)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-6
    mask = SecureRandom().bernoulli(N, 0.1)
    assert mask.dtype == bool
    assert mask.mean() == pytest.approx(0.1, abs=5 * np.sqrt(0.09 / N))
    assert not SecureRandom().bernoulli(100, 0.0).any()
    assert SecureRandom().bernoulli(100, 1.0).all()


def test_masked_normal_has_the_requested_std_and_is_gaussian():
    z = SecureRandom().masked_normal(N, std=2.0) / 2.0
    _check_standard_normal(z)
    assert SecureRandom().masked_normal((3, 4)).shape == (3, 4)
    seeded = SecureRandom(insecure_seed=3).masked_normal(5)
    np.testing.assert_array_equal(seeded, SecureRandom(insecure_seed=3).masked_normal(5))


def test_source_names_the_mode():
    assert "os.urandom" in SecureRandom().source
    assert "seed" in SecureRandom(insecure_seed=1).source
