"""A site's sample-level guarantee as mu-Gaussian DP: one number that compares across runs.

An (epsilon, delta) pair describes one point of a mechanism's privacy profile, and two pairs
at different deltas (or from different accountants) cannot be compared; mu-GDP (Dong, Roth,
Su, *Gaussian Differential Privacy*, JRSS-B 2022) is one curve: the mechanism is no easier
to attack than telling N(0, 1) from N(mu, 1). Reporting DP-SGD as mu-GDP beside (epsilon,
delta) is what Gomez et al., *(epsilon, delta) Considered Harmful* / *Gaussian DP for
Reporting Differential Privacy Guarantees in Machine Learning* (2025), recommend.

mu-GDP holds exactly when the mechanism is (epsilon, delta_mu(epsilon))-DP for every
epsilon >= 0, with (Dong, Roth, Su 2022, Corollary 2.13)

    delta_mu(epsilon) = Phi(-epsilon/mu + mu/2) - e^epsilon * Phi(-epsilon/mu - mu/2).

A composition of Poisson-subsampled Gaussians has no exact mu: its privacy loss has a
heavier far tail than any Gaussian with less than the unsubsampled mu. So the mu here is the
smallest one whose profile dominates the mechanism's for every delta >= DELTA_FLOOR:

    delta_M(epsilon) <= max(delta_mu(epsilon), DELTA_FLOOR)   for every epsilon >= 0,

that is, every (epsilon, delta) pair of the mu-GDP curve with delta >= DELTA_FLOOR holds.
delta_M is the privacy profile of the site's events from dp-accounting's privacy loss
distribution (pessimistic discretization, so an upper bound at every epsilon), evaluated on
a grid epsilon_0 = 0 < ... < epsilon_n with delta_M(epsilon_n) <= DELTA_FLOOR. Both profiles
decrease, so checking delta_M(epsilon_i) <= delta_mu(epsilon_{i+1}) on consecutive points
covers every epsilon between them, and beyond epsilon_n the floor covers the rest: the check
on a finite grid is a proof, not a sample. The floor is one fixed number so that mu compares
across sites, runs and deltas.

The profile comes from dp-accounting, not from the run's accountant, so mu is the same number
whichever accountant (PRV or RDP) the run used. The tests check it against dp-accounting's
PLD accountant and Opacus' PRV at several deltas: its epsilon is never below PLD's, nor below
the lower end of PRV's error interval (PRV's stated epsilon minus twice its eps_error).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.special import log_ndtr

from privacy.accounting import GAUSSIAN, PRV_MAX_EPSILON, PrivacyEvent, compute_epsilon
from privacy.errors import FedVaultError

DELTA_FLOOR = 1e-10
GRID_POINTS = 20001  # mu comes out about 3e-4 (relative) above the exact mu of a Gaussian
DISCRETIZATION = 1e-3  # dp-accounting's value_discretization_interval of the privacy loss
MAX_MU = 1e3
METHOD = (
    "smallest mu whose mu-GDP privacy profile delta_mu(eps) (Dong, Roth, Su 2022, Cor. 2.13) "
    f"dominates the events' privacy profile for every delta >= {DELTA_FLOOR:g} (dp-accounting "
    "privacy loss distribution, pessimistic, checked on a grid of epsilon that bounds the "
    "profiles between grid points)"
)


def gdp_delta(mu: float, epsilon: float | np.ndarray) -> np.ndarray:
    """delta_mu(epsilon) of mu-GDP, computed in log space (no cancellation in the tail)."""
    if not mu > 0:
        raise FedVaultError(f"mu must be > 0, got {mu!r}")
    eps = np.asarray(epsilon, dtype=np.float64)
    log_a = log_ndtr(-eps / mu + mu / 2)
    log_b = eps + log_ndtr(-eps / mu - mu / 2)
    with np.errstate(divide="ignore"):
        return np.exp(log_a + np.log1p(-np.exp(np.minimum(log_b - log_a, 0.0))))


def _smallest(passes: Callable[[float], bool]) -> float:
    """The smallest mu in (0, MAX_MU] with passes(mu), for a monotone `passes`, from above.

    Bisection keeps the passing end, so the result always passes (never a hair below).
    """
    low, high = 0.0, 1.0
    while not passes(high):
        low, high = high, 2 * high
        if high > MAX_MU:
            raise FedVaultError(f"no mu up to {MAX_MU:g} covers these privacy events")
    for _ in range(50):
        middle = (low + high) / 2
        if passes(middle):
            high = middle
        else:
            low = middle
    return high


def _profile(events: Sequence[PrivacyEvent]):
    """dp-accounting's privacy loss distribution of the composed events (add/remove)."""
    from dp_accounting.pld import privacy_loss_distribution as pld

    steps: dict[tuple[float, float], int] = {}
    for event in events:
        key = (event.noise_multiplier, event.sample_rate)
        steps[key] = steps.get(key, 0) + event.steps
    composed = None
    for (sigma, q), count in steps.items():
        part = pld.from_gaussian_mechanism(
            sigma, sampling_prob=q, value_discretization_interval=DISCRETIZATION
        ).self_compose(count)
        composed = part if composed is None else composed.compose(part)
    return composed


def _profile_mu(events: Sequence[PrivacyEvent]) -> float:
    """The smallest mu-GDP that dominates the events' profile for every delta >= DELTA_FLOOR."""
    profile = _profile(events)
    top = float(profile.get_epsilon_for_delta(DELTA_FLOOR))
    for _ in range(100):  # the inverse can land a rounding error above the floor: step past it
        if not math.isfinite(top) or profile.get_delta_for_epsilon(top) <= DELTA_FLOOR:
            break
        top += DISCRETIZATION
    grid = np.linspace(0.0, top, GRID_POINTS) if math.isfinite(top) else np.array([])
    delta = np.asarray(profile.get_delta_for_epsilon(grid), dtype=np.float64)
    if not grid.size or delta[-1] > DELTA_FLOOR:
        raise FedVaultError(
            f"mu-GDP not computed: the privacy loss distribution never falls to delta "
            f"{DELTA_FLOOR:g} (its truncated tail is heavier)"
        )

    def dominates(mu: float) -> bool:
        return bool(np.all(delta[:-1] <= np.maximum(gdp_delta(mu, grid[1:]), DELTA_FLOOR)))

    return _smallest(dominates)


def gdp_mu(events: Sequence[PrivacyEvent]) -> float:
    """mu-GDP of `events` (see the module docstring); 0.0 for none.

    FedVaultError where RDP puts epsilon at DELTA_FLOOR above PRV_MAX_EPSILON: there the
    privacy loss distribution would be costly to build and the guarantee is void anyway.
    """
    if not events:
        return 0.0
    if any(event.mechanism != GAUSSIAN for event in events):
        raise FedVaultError(
            "mu-GDP is computed for Gaussian (local DP-SGD) events; this history holds "
            "distributed (Skellam) steps"
        )
    loose = compute_epsilon(events, DELTA_FLOOR, "rdp")
    if loose > PRV_MAX_EPSILON:
        raise FedVaultError(
            f"mu-GDP not computed: epsilon is {loose:.4g} under rdp at delta {DELTA_FLOOR:g}, "
            f"above {PRV_MAX_EPSILON:g}"
        )
    return _profile_mu(events)
