"""Accounting of distributed (Skellam) steps, checked against independent computations.

dp-accounting has no Skellam mechanism, so the checks are: the subsampling expansion
reproduces dp-accounting's exact subsampled Gaussian when given the Gaussian's RDP; the
Skellam bound sits above that Gaussian and converges to it as the scale grows; the closed-
form Skellam RDP bounds the exact one-dimensional Renyi divergence (computed from the pmf);
and, for the one-dimensional Skellam, adding a record costs no more than removing one, the
accounting's one stated assumption.
"""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant as rdp
from scipy import special, stats

from privacy.accounting import (
    SKELLAM,
    SKELLAM_ORDERS,
    PrivacyEvent,
    compute_epsilon,
    skellam_step_rdp,
)
from privacy.distributed_noise import NoiseShares
from privacy.errors import FedVaultError

Q, STEPS, SIGMA, DELTA = 512 / 9000, 360, 1.8, 1e-5


def skellam_event(scale: float, steps: int = STEPS, sigma: float = SIGMA) -> PrivacyEvent:
    return PrivacyEvent(
        mechanism=SKELLAM,
        noise_multiplier=sigma,
        sample_rate=Q,
        steps=steps,
        clip_norm=1.0,
        dimension=3370,
        scale=scale,
    )


def dp_accounting_gaussian(sigma: float, steps: int) -> float:
    accountant = rdp.RdpAccountant(list(SKELLAM_ORDERS))
    event = dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(sigma))
    accountant.compose(event, steps)
    return accountant.get_epsilon(DELTA)


def test_skellam_epsilon_sits_just_above_the_gaussian_of_dp_accounting():
    gaussian = dp_accounting_gaussian(SIGMA, STEPS)
    shares = NoiseShares(SIGMA, 1.0, threshold=6, colluders=0, dimension=3370)
    ours = compute_epsilon([skellam_event(shares.scale)], DELTA, "rdp")
    assert gaussian <= ours <= gaussian * 1.01
    # Coarser rounding costs more, finer rounding converges to the Gaussian.
    coarse = compute_epsilon([skellam_event(64.0)], DELTA, "rdp")
    fine = compute_epsilon([skellam_event(2.0**24)], DELTA, "rdp")
    assert coarse > ours > fine >= gaussian
    assert fine == pytest.approx(gaussian, rel=1e-4)


def test_composition_mixes_local_and_distributed_steps():
    local = PrivacyEvent(noise_multiplier=1.2, sample_rate=0.05, steps=200, clip_norm=1.0)
    step = skellam_event(2.0**24, steps=100)
    both = compute_epsilon([local, step], DELTA, "rdp")
    accountant = rdp.RdpAccountant(list(SKELLAM_ORDERS))
    accountant.compose(
        dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(1.2)), 200
    )
    accountant.compose(
        dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(SIGMA)), 100
    )
    assert both == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-3)
    with pytest.raises(FedVaultError, match="rdp accountant only"):
        compute_epsilon([local, step], DELTA, "prv")


def _skellam_log_pmf(mu: float, support: np.ndarray) -> np.ndarray:
    return stats.skellam.logpmf(support, mu / 2, mu / 2)


def _support(mu: float) -> np.ndarray:
    """Where the pmf is representable (its log finite); the mass outside is below 1e-80."""
    width = int(20 * math.sqrt(mu)) + 10
    return np.arange(-width, width + 1)


def _renyi(log_p: np.ndarray, log_q: np.ndarray, alpha: int) -> float:
    return float(special.logsumexp(alpha * log_p - (alpha - 1) * log_q) / (alpha - 1))


def test_closed_form_bound_covers_the_exact_one_dimensional_skellam_divergence():
    mu, shift = 40.0, 3
    support = _support(mu)
    base = _skellam_log_pmf(mu, support)
    shifted = _skellam_log_pmf(mu, support - shift)
    event = PrivacyEvent(
        mechanism=SKELLAM,
        noise_multiplier=math.sqrt(mu) / (shift - 1),
        sample_rate=1.0,
        steps=1,
        clip_norm=1.0,
        dimension=1,
        scale=shift - 1.0,  # rounding adds one unit: the sensitivity is `shift`
    )
    bound = skellam_step_rdp(event, orders=list(range(2, 17)))
    for alpha, value in zip(range(2, 17), bound, strict=True):
        assert _renyi(shifted, base, alpha) <= value + 1e-12


@pytest.mark.parametrize("mu", [30.0, 300.0])
def test_adding_a_record_costs_no_more_than_removing_one_for_the_skellam(mu):
    support = _support(mu)
    absent = _skellam_log_pmf(mu, support)
    present = _skellam_log_pmf(mu, support - 1)
    assert np.all(np.isfinite(absent)) and np.all(np.isfinite(present))
    for q in (0.01, 0.06, 0.3):
        mixture = np.logaddexp(math.log1p(-q) + absent, math.log(q) + present)
        for alpha in range(2, 40):
            removal = _renyi(mixture, absent, alpha)
            addition = _renyi(absent, mixture, alpha)
            assert addition <= removal + 1e-12


def test_skellam_events_round_trip_and_reject_missing_fields():
    event = skellam_event(1000.0)
    assert PrivacyEvent.from_dict(event.to_dict()) == event
    data = event.to_dict()
    del data["scale"]
    with pytest.raises(FedVaultError, match="missing keys"):
        PrivacyEvent.from_dict(data)
    gaussian = PrivacyEvent(noise_multiplier=1.0, sample_rate=0.1, steps=1, clip_norm=1.0)
    assert "scale" not in gaussian.to_dict()
    with pytest.raises(FedVaultError, match="Skellam events only"):
        PrivacyEvent(noise_multiplier=1.0, sample_rate=0.1, steps=1, clip_norm=1.0, scale=2.0)
