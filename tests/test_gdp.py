"""mu-GDP of a site's events, checked against what is known exactly and against accountants.

Exact: a Gaussian mechanism with noise multiplier sigma is 1/sigma-GDP, and k of them compose
to sqrt(k)/sigma-GDP (Dong, Roth, Su 2022, Thm 2.7 and Cor. 3.3). Independent: the epsilons of
dp-accounting's PLD accountant (built from DpEvents, not from privacy.gdp's code path) and of
Opacus' PRV accountant at several deltas, which the mu-GDP curve must cover.
"""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant
from scipy.stats import norm

from privacy.accounting import PrivacyEvent, compute_epsilon
from privacy.errors import FedVaultError
from privacy.gdp import DELTA_FLOOR, gdp_delta, gdp_mu

# Opacus' PRV accountant (eps_error 0.01, accounting.py) returns its estimate + eps_error, and
# bounds the true epsilon from below by its estimate - eps_error: the truth can lie 0.02 lower.
PRV_WIDTH = 2 * 0.01


def event(sigma: float, q: float, steps: int) -> PrivacyEvent:
    return PrivacyEvent(noise_multiplier=sigma, sample_rate=q, steps=steps, clip_norm=1.0)


def pld_accountant(events: list[PrivacyEvent]) -> pld_privacy_accountant.PLDAccountant:
    """dp-accounting's own accountant over the events (it composes once, then answers)."""
    accountant = pld_privacy_accountant.PLDAccountant()
    for e in events:
        accountant.compose(
            dp_accounting.PoissonSampledDpEvent(
                e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier)
            ),
            e.steps,
        )
    return accountant


def test_delta_of_mu_is_the_closed_form():
    mu = 1.3
    for eps in (0.0, 0.5, 2.0, 6.0, 12.0):
        exact = norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)
        assert float(gdp_delta(mu, eps)) == pytest.approx(exact, rel=1e-9)
    assert float(gdp_delta(mu, 0.0)) == pytest.approx(2 * norm.cdf(mu / 2) - 1)
    with pytest.raises(FedVaultError, match="mu must be > 0"):
        gdp_delta(0.0, 1.0)


@pytest.mark.parametrize(("sigma", "steps"), [(1.0, 1), (0.5, 1), (5.0, 1), (2.0, 4)])
def test_gaussian_mechanisms_get_their_exact_mu(sigma, steps):
    exact = math.sqrt(steps) / sigma
    mu = gdp_mu([event(sigma, 1.0, steps)])
    assert exact <= mu <= exact * (1 + 1e-3), (mu, exact)


HISTORIES = {
    "one schedule": [event(0.9, 0.057, 350)],
    "long, small q": [event(1.1, 256 / 60000, 14062)],
    "mixed sigmas": [event(1.0, 0.05, 40), event(1.0, 0.05, 40), event(1.3, 0.05, 40)],
}


@pytest.fixture(scope="module", params=sorted(HISTORIES))
def history(request) -> tuple[list[PrivacyEvent], float, pld_privacy_accountant.PLDAccountant]:
    events = HISTORIES[request.param]
    return events, gdp_mu(events), pld_accountant(events)


def test_mu_covers_independent_accountants_at_every_delta(history):
    events, mu, pld = history
    for delta in (1e-3, 1e-5, 1e-7, DELTA_FLOOR):
        # delta_mu(eps) >= delta  <=>  the mu-GDP epsilon at delta is at least eps
        assert float(gdp_delta(mu, pld.get_epsilon(delta))) >= delta, delta
        prv = compute_epsilon(events, delta, "prv")
        assert float(gdp_delta(mu, prv - PRV_WIDTH)) >= delta, delta


def test_mu_is_the_smallest_that_covers_the_profile(history):
    """1 % less and some delta above the floor is no longer covered: mu is not padded."""
    _, mu, pld = history
    deltas = np.geomspace(0.5, DELTA_FLOOR, 60)
    smaller = mu * 0.99
    assert any(float(gdp_delta(smaller, pld.get_epsilon(d))) < d for d in deltas)


def test_no_events_and_unbounded_histories():
    assert gdp_mu([]) == 0.0
    with pytest.raises(FedVaultError, match="mu-GDP not computed"):
        gdp_mu([event(0.3, 0.5, 1000)])
