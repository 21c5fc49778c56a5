"""The secure Gaussian source: right distribution, fresh OS randomness, a labelled test mode."""

import time

import numpy as np
import pytest

from privacy.client_dp import SecureGaussian
from privacy.errors import FedVaultError

stats = pytest.importorskip("scipy.stats")

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
    gaussian = SecureGaussian()
    assert gaussian.secure
    _check_standard_normal(gaussian.normal(N))


def test_seeded_mode_is_standard_normal_reproducible_and_marked_insecure():
    first, second = SecureGaussian(insecure_seed=7), SecureGaussian(insecure_seed=7)
    assert not first.secure
    z = first.normal(N)
    _check_standard_normal(z)
    np.testing.assert_array_equal(z, second.normal(N))
    assert not np.array_equal(first.normal(10), first.normal(10))
    assert not np.array_equal(SecureGaussian(insecure_seed=8).normal(10), z[:10])


def test_secure_calls_differ_and_ignore_numpy_global_seed():
    gaussian = SecureGaussian()
    np.random.seed(0)
    a = gaussian.normal(1000)
    np.random.seed(0)
    b = gaussian.normal(1000)
    c = SecureGaussian().normal(1000)
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(np.intersect1d(a, b)) == 0


def test_std_and_shape():
    gaussian = SecureGaussian()
    z = gaussian.normal((400, 500), std=3.0)
    assert z.shape == (400, 500) and z.dtype == np.float64
    assert z.std() == pytest.approx(3.0, rel=0.01)
    assert gaussian.normal(7).shape == (7,)
    assert gaussian.normal(0).shape == (0,)
    assert gaussian.normal(()).shape == ()
    np.testing.assert_array_equal(gaussian.normal((3, 2), std=0.0), np.zeros((3, 2)))


def test_one_million_values_are_fast():
    gaussian = SecureGaussian()
    start = time.perf_counter()
    gaussian.normal(1_000_000)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("std", [-1.0, float("nan"), float("inf")])
def test_bad_std_is_refused(std):
    with pytest.raises(FedVaultError, match="noise standard deviation"):
        SecureGaussian().normal(3, std)


def test_bad_shape_and_seed_are_refused():
    with pytest.raises(FedVaultError, match="non-negative"):
        SecureGaussian().normal((2, -1))
    with pytest.raises(FedVaultError, match="insecure seed"):
        SecureGaussian(insecure_seed=-1)
