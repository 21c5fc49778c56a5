"""Adaptive clipping: converges to the target quantile and pays for its estimate."""

import math
from statistics import NormalDist

import dp_accounting
import numpy as np
import pytest

from privacy.client_dp import (
    AdaptiveClipper,
    clip_update,
    quantile_budget_share,
    update_noise_multiplier,
)
from privacy.errors import FedVaultError
from privacy.randomness import SecureRandom

CLIENTS_PER_ROUND = 100
ROUNDS = 200


def _run(target: float, *, noisy: bool, seed: int) -> tuple[AdaptiveClipper, list[float]]:
    """Clients with lognormal update norms (median e^0.5) report clip bits for 200 rounds."""
    rng = np.random.default_rng(seed)
    clipper = AdaptiveClipper(
        0.1,
        noise_multiplier=1.0,
        count_noise_std=CLIENTS_PER_ROUND / 20,
        target_quantile=target,
        gaussian=SecureRandom(insecure_seed=seed),
    )
    fractions = []
    for _ in range(ROUNDS):
        norms = rng.lognormal(mean=0.5, sigma=0.6, size=CLIENTS_PER_ROUND)
        unclipped = int(np.sum(norms <= clipper.clip_norm))
        fractions.append(unclipped / CLIENTS_PER_ROUND)
        clipper.update(unclipped, CLIENTS_PER_ROUND, CLIENTS_PER_ROUND, add_noise=noisy)
    return clipper, fractions


@pytest.mark.parametrize("noisy", [False, True])
@pytest.mark.parametrize("target", [0.2, 0.5, 0.8])
def test_clip_norm_converges_to_the_target_quantile(target, noisy):
    clipper, fractions = _run(target, noisy=noisy, seed=int(target * 10) + noisy)
    fresh = np.random.default_rng(99).lognormal(mean=0.5, sigma=0.6, size=200_000)
    assert np.mean(fresh <= clipper.clip_norm) == pytest.approx(target, abs=0.05)
    assert np.mean(fractions[-50:]) == pytest.approx(target, abs=0.02)
    true_quantile = math.exp(0.5 + 0.6 * NormalDist().inv_cdf(target))
    assert clipper.clip_norm == pytest.approx(true_quantile, rel=0.1)
    # It started far below every norm, so it had to move a long way to get there.
    assert fractions[0] == 0.0


def test_geometric_update_without_noise():
    clipper = AdaptiveClipper(
        2.0, noise_multiplier=1.0, count_noise_std=5.0, target_quantile=0.3, learning_rate=0.5
    )
    assert clipper.update(0, 10, 10, add_noise=False) == pytest.approx(2.0 * math.exp(0.5 * 0.3))
    assert clipper.last_estimate == 0.0
    before = clipper.clip_norm
    assert clipper.update(10, 10, 10, add_noise=False) == pytest.approx(before * math.exp(-0.35))
    assert clipper.last_estimate == 1.0
    # The estimate uses the fixed denominator (expected clients), not the reporting count.
    clipper.update(6, 8, 10, add_noise=False)
    assert clipper.last_estimate == pytest.approx((6 - 4) / 10 + 0.5)


def test_count_noise_has_std_sigma_b():
    sigma_b = 4.0
    clipper = AdaptiveClipper(
        1.0,
        noise_multiplier=1.0,
        count_noise_std=sigma_b,
        learning_rate=1e-9,
        gaussian=SecureRandom(insecure_seed=1),
    )
    estimates = []
    for _ in range(4000):
        clipper.update(25, 50, 50)
        estimates.append(clipper.last_estimate)
    centred = (np.array(estimates) - 0.5) * 50
    assert centred.std() == pytest.approx(sigma_b, rel=0.05)
    assert abs(centred.mean()) < 5 * sigma_b / math.sqrt(len(centred))


def test_update_noise_multiplier_spends_exactly_sigma():
    sigma, sigma_b = 1.2, 5.0
    sigma_delta = update_noise_multiplier(sigma, sigma_b)
    assert sigma_delta == pytest.approx((1.2**-2 - 10.0**-2) ** -0.5)
    assert sigma_delta**-2 + (2 * sigma_b) ** -2 == pytest.approx(sigma**-2)
    assert quantile_budget_share(sigma, sigma_b) == pytest.approx(1.2**2 / 100)
    # Independently, with dp-accounting's PLD: the update (multiplier sigma_delta) and the
    # centred count (sensitivity 1/2, std sigma_b) cost the same as one Gaussian with sigma.
    pair = dp_accounting.pld.PLDAccountant()
    pair.compose(dp_accounting.GaussianDpEvent(sigma_delta))
    pair.compose(dp_accounting.GaussianDpEvent(2 * sigma_b))
    single = dp_accounting.pld.PLDAccountant()
    single.compose(dp_accounting.GaussianDpEvent(sigma))
    assert pair.get_epsilon(1e-5) == pytest.approx(single.get_epsilon(1e-5), rel=1e-3)


def test_clipper_records_its_budget_share_and_clips_with_its_norm():
    clipper = AdaptiveClipper(0.5, noise_multiplier=1.0, count_noise_std=5.0)
    assert clipper.quantile_budget_share == pytest.approx(0.01)
    assert clipper.update_noise_multiplier > clipper.noise_multiplier
    _, _, was_clipped = clip_update([np.ones(4)], clipper.clip_norm)
    assert was_clipped


def test_bad_settings_are_refused():
    with pytest.raises(FedVaultError, match="must exceed half the noise multiplier"):
        AdaptiveClipper(1.0, noise_multiplier=2.0, count_noise_std=1.0)
    with pytest.raises(FedVaultError, match="target quantile"):
        AdaptiveClipper(1.0, noise_multiplier=1.0, count_noise_std=5.0, target_quantile=1.0)
    with pytest.raises(FedVaultError, match="target quantile"):
        AdaptiveClipper(1.0, noise_multiplier=1.0, count_noise_std=5.0, target_quantile=0.0)
    with pytest.raises(FedVaultError, match="clip norm"):
        AdaptiveClipper(0.0, noise_multiplier=1.0, count_noise_std=5.0)
    with pytest.raises(FedVaultError, match="learning rate"):
        AdaptiveClipper(1.0, noise_multiplier=1.0, count_noise_std=5.0, learning_rate=0)
    with pytest.raises(FedVaultError, match="noise multiplier"):
        AdaptiveClipper(1.0, noise_multiplier=0.0, count_noise_std=5.0)
    clipper = AdaptiveClipper(1.0, noise_multiplier=1.0, count_noise_std=5.0)
    with pytest.raises(FedVaultError, match=r"lie in \[0, 10\]"):
        clipper.update(11, 10, 10)
    with pytest.raises(FedVaultError, match="finite"):
        clipper.update(float("nan"), 10, 10)
    with pytest.raises(FedVaultError, match="expected number of clients"):
        clipper.update(5, 10, 0)
    assert clipper.clip_norm == 1.0
