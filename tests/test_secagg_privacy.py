"""What the server sees of one client, a masked vector, says nothing about its update.

Masks come from fresh X25519 keys and a CSPRNG, so these checks use fixed updates and very
strict thresholds (p < 1e-6): a correct implementation fails them about once in a million
runs, while an unmasked or badly masked vector fails them every time (the control test).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from privacy.secagg import SecAggClient, SecAggConfig, SecAggServer
from privacy.secagg import messages as m
from privacy.secagg.field import encode

D = 20_000
P_MIN = 1e-6


def masked_view(update: np.ndarray, weight: int, session: str, n: int = 4) -> np.ndarray:
    """The masked vector the server receives from client 1 when it holds `update`."""
    rng = np.random.default_rng(7)
    ids = list(range(1, n + 1))
    updates = {c: rng.uniform(-1, 1, D) for c in ids}
    updates[1] = update
    server = SecAggServer(SecAggConfig(authenticated=False), session, ids, D, seed=1)
    clients = {c: SecAggClient(c) for c in ids}
    while server.stage != m.MASKED_INPUT:
        server.receive([clients[c].handle(r) for c, r in server.requests().items()])
    reply = clients[1].handle(server.requests()[1], update, weight)
    return reply[m.MASKED_VECTOR]


def uniformity_p_values(vector: np.ndarray) -> tuple[float, float]:
    """Chi-square on the top byte and KS on the value / 2**64, against uniform."""
    top_byte = (vector >> np.uint64(56)).astype(np.int64)
    counts = np.bincount(top_byte, minlength=256)
    chi_p = stats.chisquare(counts).pvalue
    ks_p = stats.kstest(vector.astype(np.float64) / 2.0**64, "uniform").pvalue
    return chi_p, ks_p


ZEROS = np.zeros(D)
EXTREME = np.full(D, 7.99)
RAMP = np.linspace(-8, 8, D)


def test_masked_vectors_of_very_different_updates_are_uniform():
    for i, (update, weight) in enumerate([(ZEROS, 1), (EXTREME, 999_999), (RAMP, 37)]):
        chi_p, ks_p = uniformity_p_values(masked_view(update, weight, f"u{i}"))
        assert chi_p > P_MIN and ks_p > P_MIN, (i, chi_p, ks_p)


def test_masked_vectors_of_different_updates_are_indistinguishable():
    a = masked_view(ZEROS, 1, "a").astype(np.float64)
    b = masked_view(EXTREME, 999_999, "b").astype(np.float64)
    assert stats.ks_2samp(a, b).pvalue > P_MIN


def test_masked_vector_is_uncorrelated_with_the_update():
    update = np.random.default_rng(3).uniform(-8, 8, D)
    masked = masked_view(update, 10, "c").astype(np.float64)[:D]
    r = np.corrcoef(masked, update)[0, 1]
    assert abs(r) < 5 / np.sqrt(D), r
    # Fresh masks every session: the same update never gives the same vector twice.
    again = masked_view(update, 10, "d").astype(np.float64)[:D]
    assert not np.array_equal(masked, again)


def test_control_unmasked_encoding_fails_the_same_checks():
    """The checks have power: the plain field encoding of an update is far from uniform."""
    params = SecAggConfig().resolve(4, D)
    plain, _ = encode(RAMP, 37, params)
    assert max(uniformity_p_values(plain)) < P_MIN
    update = np.random.default_rng(3).uniform(-8, 8, D)
    encoded, _ = encode(update, 10, params)
    assert np.corrcoef(encoded[:D].astype(np.float64), update)[0, 1] > 0.99
