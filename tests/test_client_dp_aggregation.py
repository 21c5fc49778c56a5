"""Noise on the aggregate: sigma*C on the sum, fixed denominator, distributed shares."""

import numpy as np
import pytest

from privacy.client_dp import (
    add_noise,
    central_noise_std,
    clip_update,
    distributed_share_std,
    mean_from_sum,
    private_mean,
    sum_updates,
)
from privacy.errors import FedVaultError
from privacy.randomness import SecureRandom

SIZE = 50_000


def _clipped_updates(n: int, clip: float, seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    raw = [[rng.normal(size=(SIZE // 2,)), rng.normal(size=(50, SIZE // 100))] for _ in range(n)]
    return [clip_update(update, clip)[0] for update in raw]


def test_central_noise_std_is_sigma_times_c():
    assert central_noise_std(1.3, 0.5) == pytest.approx(0.65)
    assert central_noise_std(0.0, 2.0) == 0.0


def test_private_mean_noise_has_std_sigma_c_over_denominator():
    clip, sigma, denominator = 0.5, 2.0, 8.0
    updates = _clipped_updates(6, clip)
    exact = [a / denominator for a in sum_updates(updates)]
    noisy = private_mean(
        updates,
        clip_norm=clip,
        noise_multiplier=sigma,
        denominator=denominator,
        gaussian=SecureRandom(insecure_seed=3),
    )
    error = np.concatenate([(n - e).ravel() for n, e in zip(noisy, exact, strict=True)])
    assert error.std() == pytest.approx(sigma * clip / denominator, rel=0.02)
    assert abs(error.mean()) < 5 * sigma * clip / denominator / np.sqrt(error.size)
    without_noise = private_mean(
        updates,
        clip_norm=clip,
        noise_multiplier=0.0,
        denominator=denominator,
        gaussian=SecureRandom(),
    )
    for got, want in zip(without_noise, exact, strict=True):
        np.testing.assert_allclose(got, want)


def test_private_mean_refuses_an_unclipped_update():
    updates = _clipped_updates(3, 1.0)
    updates[1] = [a * 3 for a in updates[1]]
    with pytest.raises(FedVaultError, match="update 1 has L2 norm"):
        private_mean(
            updates, clip_norm=1.0, noise_multiplier=1.0, denominator=3, gaussian=SecureRandom()
        )


@pytest.mark.parametrize("survivors", [10, 16])
def test_distributed_shares_sum_to_at_least_the_required_variance(survivors):
    sigma, clip, min_clients = 1.5, 0.8, 10
    share_std = distributed_share_std(central_noise_std(sigma, clip), min_clients)
    assert share_std == pytest.approx(sigma * clip / np.sqrt(min_clients))
    gaussian = SecureRandom(insecure_seed=11)
    zeros = [np.zeros(SIZE)]
    total = sum_updates([add_noise(zeros, share_std, gaussian) for _ in range(survivors)])[0]
    required = (sigma * clip) ** 2
    assert total.var() == pytest.approx(required * survivors / min_clients, rel=0.03)
    assert total.var() >= 0.97 * required


def test_distributed_round_end_to_end():
    sigma, clip, clients = 1.0, 1.0, 12
    updates = _clipped_updates(clients, clip, seed=5)
    share_std = distributed_share_std(central_noise_std(sigma, clip), clients)
    gaussian = SecureRandom(insecure_seed=5)
    noised = [add_noise(update, share_std, gaussian) for update in updates]
    mean = mean_from_sum(sum_updates(noised), clients)
    exact = mean_from_sum(sum_updates(updates), clients)
    error = np.concatenate([(m - e).ravel() for m, e in zip(mean, exact, strict=True)])
    assert error.std() == pytest.approx(sigma * clip / clients, rel=0.02)


def test_add_noise_keeps_shapes_and_inputs():
    arrays = [np.ones((3, 4), dtype=np.float32), np.zeros(5)]
    out = add_noise(arrays, 0.1, SecureRandom())
    assert [a.shape for a in out] == [(3, 4), (5,)]
    assert all(a.dtype == np.float64 for a in out)
    np.testing.assert_array_equal(arrays[0], np.ones((3, 4)))
    assert not np.array_equal(out[0], arrays[0])


def test_bad_inputs_are_refused():
    with pytest.raises(FedVaultError, match="empty"):
        sum_updates([])
    with pytest.raises(FedVaultError, match="update 1 has array shapes"):
        sum_updates([[np.zeros(3)], [np.zeros(4)]])
    with pytest.raises(FedVaultError, match="denominator"):
        mean_from_sum([np.zeros(3)], 0)
    with pytest.raises(FedVaultError, match="noise multiplier"):
        central_noise_std(-0.1, 1.0)
    with pytest.raises(FedVaultError, match="clip norm"):
        central_noise_std(1.0, 0.0)
    with pytest.raises(FedVaultError, match="minimum clients"):
        distributed_share_std(1.0, 0)
