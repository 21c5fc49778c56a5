"""Distributed DP noise: the sampler, the share sizes, and the noise a released sum carries.

The released sum is produced by the real SecAgg+ protocol (authenticated, integer input),
with every site's gradient zero, so what comes out is the noise alone; its variance is tested
against sigma*C, with bounds that half or double the noise falls outside.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from privacy.distributed_noise import SHARE_STD, NoiseShares, poisson, skellam, stochastic_round
from privacy.errors import FedVaultError
from privacy.randomness import SecureRandom
from privacy.secagg import SecAggAbort, SecAggClient, SecAggConfig, SecAggServer
from privacy.secagg import messages as m
from privacy.secagg.local import LocalSteps as Session
from privacy.secagg.local import local_identities

RNG = SecureRandom()


def chi2_variance_ok(values: np.ndarray, variance: float) -> bool:
    """Two-sided 1e-4 chi-square test of `values` (mean 0) having `variance`."""
    df = values.size
    statistic = float(np.sum(values.astype(np.float64) ** 2)) / variance
    return stats.chi2.ppf(5e-5, df) <= statistic <= stats.chi2.ppf(1 - 5e-5, df)


def test_skellam_variates_follow_the_skellam_distribution():
    draws = skellam(100_000, 200.0, RNG)
    values, counts = np.unique(draws, return_counts=True)
    inside = np.abs(values) <= 40
    expected = stats.skellam.pmf(values[inside], 100, 100) * len(draws)
    expected *= counts[inside].sum() / expected.sum()
    assert stats.chisquare(counts[inside], expected).pvalue > 1e-4
    # The same test tells a Skellam of another variance apart.
    wrong = stats.skellam.pmf(values[inside], 130, 130) * len(draws)
    wrong *= counts[inside].sum() / wrong.sum()
    assert stats.chisquare(counts[inside], wrong).pvalue < 1e-6


def test_poisson_at_the_share_mean_has_its_mean_and_variance():
    mean = SHARE_STD**2 / 2
    draws = poisson(200_000, mean, RNG).astype(np.float64)
    assert abs(draws.mean() - mean) < 5 * math.sqrt(mean / draws.size)
    assert chi2_variance_ok(draws - mean, mean)
    with pytest.raises(FedVaultError, match="Poisson mean must be >= 10"):
        poisson(3, 2.0, RNG)


def test_stochastic_rounding_is_unbiased_and_moves_each_value_by_less_than_one():
    values = np.full(200_000, 3.25)
    rounded = stochastic_round(values, RNG)
    assert set(np.unique(rounded)) == {3, 4}
    assert abs(rounded.mean() - 3.25) < 5 * math.sqrt(0.25 * 0.75 / values.size)


def test_shares_are_sized_for_the_honest_contributors_and_refuse_too_many_colluders():
    shares = NoiseShares(2.0, 1.5, threshold=7, colluders=2, dimension=10)
    assert shares.honest == 5
    # honest shares of variance SHARE_STD^2 sum to (sigma * C * scale)^2.
    assert shares.honest * SHARE_STD**2 == pytest.approx((2.0 * 1.5 * shares.scale) ** 2)
    assert shares.fallback_noise_multiplier == pytest.approx(2.0 / math.sqrt(5))
    assert shares.event(0.1).noise_multiplier == 2.0
    assert shares.fallback_event(0.1).noise_multiplier == pytest.approx(2.0 / math.sqrt(5))
    with pytest.raises(FedVaultError, match="leave no honest share"):
        NoiseShares(2.0, 1.0, threshold=3, colluders=3, dimension=10)
    with pytest.raises(FedVaultError, match="noise multiplier > 0"):
        NoiseShares(0.0, 1.0, threshold=3, colluders=0, dimension=10)


def test_a_multi_step_session_sums_integer_vectors_exactly_at_every_step():
    session = Session(5, 50)
    gen = np.random.default_rng(0)
    for index in (1, 2, 5):
        vectors = {c: gen.integers(-(2**40), 2**40, 50) for c in session.ids}
        total = session.step(index, vectors)
        np.testing.assert_array_equal(total, sum(vectors.values()).astype(np.float64))
        assert session.server.result().contributors == tuple(session.ids)


def test_a_step_is_answered_once_and_in_order():
    session = Session(3, 8)
    zeros = {c: np.zeros(8, dtype=np.int64) for c in session.ids}
    session.step(4, zeros)
    session.server.open_step(4)
    request = session.server.requests()[1]
    with pytest.raises(Exception, match="a step is answered once"):
        session.clients[1].handle(request, zeros[1])
    with pytest.raises(Exception, match="out of order"):
        session.clients[1].handle({**request, m.STAGE: m.MASKED_INPUT}, zeros[1], 1)
    fresh = Session(3, 8)
    fresh.server.open_step(1)
    request = fresh.server.requests()[1]
    with pytest.raises(Exception, match="masked-input request in a multi-step session"):
        fresh.clients[1].handle({**request, m.STAGE: m.MASKED_INPUT}, zeros[1], 1)


def test_a_member_missing_at_a_step_releases_nothing_and_exposes_no_vector():
    session = Session(4, 64)
    gen = np.random.default_rng(1)
    vectors = {c: gen.integers(-1000, 1000, 64) for c in session.ids}
    session.server.open_step(1)
    replies = [
        session.clients[c].handle(request, vectors[c])
        for c, request in session.server.requests().items()
        if c != 4
    ]
    with pytest.raises(SecAggAbort, match="did not answer the step"):
        session.server.receive(replies)
    # What the server holds, the three masked vectors, sums to noise: masks with site 4
    # remain, uniform over 2**64, nowhere near the three sites' true sum.
    held = sum(r[m.MASKED_VECTOR] for r in replies)[:64].view(np.int64)
    true = sum(vectors[c] for c in (1, 2, 3))
    assert np.all(np.abs(held - true) > 2**40)


def _released_noise(n: int, colluders: int, dim: int, steps: int, sigma: float, clip: float):
    """`steps` secure sums of n sites' zero gradients plus noise shares, in gradient units."""
    session = Session(n, dim)
    shares = NoiseShares(sigma, clip, session.server.params.threshold, colluders, dim)
    sums = []
    for index in range(1, steps + 1):
        vectors = {c: shares.noisy_share(np.zeros(dim), RNG) for c in session.ids}
        sums.append(shares.gradient_sum(session.step(index, vectors)))
    return np.concatenate(sums), shares


def test_the_released_sum_carries_noise_of_std_sigma_c_from_the_honest_shares():
    n, colluders, sigma, clip = 5, 1, 1.3, 0.7
    noise, shares = _released_noise(n, colluders, dim=400, steps=10, sigma=sigma, clip=clip)
    # A session's sum holds all n members; each share has variance (sigma C)^2 / (n - c).
    assert shares.threshold == n and shares.honest == n - colluders
    variance = n / shares.honest * (sigma * clip) ** 2
    assert chi2_variance_ok(noise, variance)
    # The test fails for half or double the noise.
    assert not chi2_variance_ok(noise * 0.5, variance)
    assert not chi2_variance_ok(noise * 2.0, variance)
    # Without the colluders' shares, the honest ones still carry exactly (sigma C)^2.
    assert shares.honest * (sigma * clip) ** 2 / shares.honest == pytest.approx((sigma * clip) ** 2)


def test_one_share_alone_has_the_smaller_std_the_fallback_epsilon_assumes():
    shares = NoiseShares(1.3, 0.7, threshold=4, colluders=1, dimension=4000)
    alone = shares.gradient_sum(shares.noisy_share(np.zeros(4000), RNG))
    expected = (shares.fallback_noise_multiplier * 0.7) ** 2
    assert chi2_variance_ok(alone, expected)
    assert not chi2_variance_ok(alone, (1.3 * 0.7) ** 2)


def test_a_server_telling_sites_different_round_parameters_gets_their_keys_refused():
    """Sites sign their keys bound to the parameters they were sent: a split fails."""
    ids = [1, 2, 3]
    identities = local_identities(ids)
    server = SecAggServer(SecAggConfig(), "split", ids, 8, integer_input=True)
    clients = {c: SecAggClient(c, identities[c], 0, "ctx") for c in ids}
    setup = server.requests()
    lied = {**setup[3], "threshold": 3}  # site 3 alone is told a stricter threshold
    replies = [clients[1].handle(setup[1]), clients[2].handle(setup[2]), clients[3].handle(lied)]
    server.receive(replies)
    with pytest.raises(Exception, match="no valid signature"):
        clients[1].handle(server.requests()[1])


def test_sites_with_different_run_settings_refuse_each_others_keys():
    with pytest.raises(Exception, match="no valid signature"):
        Session(3, 8, contexts={1: "noise 2.0", 2: "noise 2.0", 3: "noise 0.1"})


def test_integer_input_refuses_values_that_could_overflow_the_field():
    ids = [1, 2]
    identities = local_identities(ids)
    server = SecAggServer(SecAggConfig(), "big", ids, 4, integer_input=True)
    clients = {c: SecAggClient(c, identities[c], 0, "") for c in ids}
    with pytest.raises((FedVaultError, SecAggAbort), match="overflow"):
        while not server.done:
            replies = []
            for cid, request in server.requests().items():
                big = np.full(4, 2**61, dtype=np.int64)
                replies.append(clients[cid].handle(request, big, 1))
            server.receive(replies)
