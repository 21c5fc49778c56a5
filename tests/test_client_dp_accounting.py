"""Client-level accounting against independent dp-accounting computations, and the budget stop.

The independent checks compose differently from the library: round by round through an
accountant, through dp-accounting's lower-level PLD objects, or from closed forms (RDP of the
Gaussian mechanism, the analytic Gaussian mechanism of Balle & Wang 2018).
"""

import json
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution
from dp_accounting.rdp import rdp_privacy_accountant

from privacy.client_dp import ClientDpEvent, client_level_epsilon, ledger_adjacency, would_exceed
from privacy.errors import FedVaultError

DELTA = 1e-5
REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE


def poisson(sigma: float, q: float, rounds: int, **extra) -> ClientDpEvent:
    return ClientDpEvent(sigma, "poisson", rounds, 1.0, sampling_rate=q, **extra)


def fixed(sigma: float, m: int, n: int, rounds: int) -> ClientDpEvent:
    return ClientDpEvent(sigma, "fixed", rounds, 1.0, sample_size=m, population=n)


def everyone(sigma: float, rounds: int) -> ClientDpEvent:
    return ClientDpEvent(sigma, "none", rounds, 1.0)


def _rdp_round_by_round(rounds: list, relation=None) -> float:
    kwargs = {} if relation is None else {"neighboring_relation": relation}
    accountant = dp_accounting.rdp.RdpAccountant(**kwargs)
    for event in rounds:
        accountant.compose(event)
    return accountant.get_epsilon(DELTA)


def _gaussian_rdp_epsilon(sigma: float, rounds: int) -> float:
    orders = np.array(rdp_privacy_accountant.DEFAULT_RDP_ORDERS, dtype=float)
    rdp = rounds * orders / (2 * sigma**2)  # RDP of T Gaussian releases, sensitivity 1
    epsilon, _ = rdp_privacy_accountant.compute_epsilon(orders, rdp, DELTA)
    return epsilon


def test_rdp_with_poisson_sampling_matches_round_by_round_composition():
    ledger = [
        poisson(2.0, 0.05, 8),
        ClientDpEvent(3.0, "poisson", 5, 0.3, sampling_rate=0.05),
        poisson(2.0, 0.05, 4),
    ]
    rounds = [dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(2.0))] * 8
    rounds += [dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(3.0))] * 5
    rounds += [dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(2.0))] * 4
    expected = _rdp_round_by_round(rounds)
    assert client_level_epsilon(ledger, DELTA, "rdp") == pytest.approx(expected, rel=1e-9)
    assert 0.1 < expected < 10


def test_pld_with_poisson_sampling_matches_direct_pld_composition():
    ledger = [poisson(2.0, 0.05, 15), poisson(2.0, 0.05, 25), poisson(3.0, 0.05, 5)]
    parts = [
        privacy_loss_distribution.from_gaussian_mechanism(
            standard_deviation=sigma, sampling_prob=0.05, value_discretization_interval=1e-4
        ).self_compose(count)
        for sigma, count in ((2.0, 15), (2.0, 25), (3.0, 5))
    ]
    expected = parts[0].compose(parts[1]).compose(parts[2]).get_epsilon_for_delta(DELTA)
    assert client_level_epsilon(ledger, DELTA, "pld") == pytest.approx(expected, rel=1e-3)


def test_pld_round_by_round_through_the_accountant():
    accountant = dp_accounting.pld.PLDAccountant()
    for _ in range(3):
        accountant.compose(
            dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(2.0))
        )
    expected = accountant.get_epsilon(DELTA)
    assert client_level_epsilon([poisson(2.0, 0.1, 3)], DELTA, "pld") == pytest.approx(
        expected, rel=1e-3
    )


@pytest.mark.parametrize(("sigma", "rounds"), [(2.0, 10), (5.0, 100), (10.0, 3)])
def test_without_sampling_matches_closed_forms(sigma, rounds):
    ledger = [everyone(sigma, rounds - 1), everyone(sigma, 1)]
    assert client_level_epsilon(ledger, DELTA, "rdp") == pytest.approx(
        _gaussian_rdp_epsilon(sigma, rounds), rel=1e-9
    )
    # T Gaussian releases with multiplier sigma are one Gaussian with sigma / sqrt(T).
    analytic = dp_accounting.get_epsilon_gaussian(sigma / math.sqrt(rounds), DELTA)
    assert client_level_epsilon(ledger, DELTA, "pld") == pytest.approx(analytic, rel=1e-3)


def test_fixed_size_sampling_uses_replace_one_with_sensitivity_2c():
    ledger = [fixed(4.0, 10, 100, 3), fixed(4.0, 10, 100, 1)]
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        100, 10, dp_accounting.GaussianDpEvent(2.0)
    )
    expected = _rdp_round_by_round([event] * 4, relation=REPLACE_ONE)
    assert client_level_epsilon(ledger, DELTA, "rdp") == pytest.approx(expected, rel=1e-9)
    assert ledger_adjacency(ledger) == "replace_one"
    # Taking all N of N is the plain Gaussian mechanism on a sum that moves by 2C.
    all_of_them = [fixed(2.0, 50, 50, 8)]
    assert client_level_epsilon(all_of_them, DELTA) == pytest.approx(
        _gaussian_rdp_epsilon(1.0, 8), rel=1e-9
    )
    # In a replace-one ledger the rounds without sampling are charged at sigma / 2 as well.
    mixed = [fixed(4.0, 10, 100, 2), everyone(6.0, 3)]
    expected_mixed = _rdp_round_by_round(
        [event] * 2 + [dp_accounting.GaussianDpEvent(3.0)] * 3, relation=REPLACE_ONE
    )
    assert client_level_epsilon(mixed, DELTA) == pytest.approx(expected_mixed, rel=1e-9)


def test_fixed_size_with_pld_and_mixed_sampling_are_refused():
    with pytest.raises(FedVaultError, match="use the rdp accountant"):
        client_level_epsilon([fixed(1.0, 10, 100, 5)], DELTA, "pld")
    with pytest.raises(FedVaultError, match="cannot mix Poisson and fixed-size"):
        client_level_epsilon([fixed(1.0, 10, 100, 5), poisson(1.0, 0.1, 5)], DELTA)


def test_adjacency_of_ledgers():
    assert ledger_adjacency([poisson(1.0, 0.1, 1)]) == "add_or_remove_one"
    assert ledger_adjacency([everyone(1.0, 1)]) == "add_or_remove_one"
    assert ledger_adjacency([everyone(1.0, 1), fixed(1.0, 1, 2, 1)]) == "replace_one"
    assert ledger_adjacency([]) == "add_or_remove_one"


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_monotonicity(accountant):
    def eps(sigma=2.0, q=0.1, rounds=20, delta=DELTA):
        return client_level_epsilon([poisson(sigma, q, rounds)], delta, accountant)

    base = eps()
    assert eps(rounds=5) < base < eps(rounds=80)
    assert eps(sigma=4.0) < base < eps(sigma=1.5)
    assert eps(q=0.02) < base < eps(q=1.0)
    assert eps(delta=1e-3) < base
    # Sampling with q = 1 is the same as taking every client.
    assert eps(q=1.0) == pytest.approx(
        client_level_epsilon([everyone(2.0, 20)], DELTA, accountant), rel=1e-3
    )


def test_pld_is_tighter_than_rdp():
    for ledger in ([poisson(2.0, 0.1, 20)], [poisson(3.0, 0.05, 40)], [everyone(5.0, 20)]):
        assert client_level_epsilon(ledger, DELTA, "pld") < client_level_epsilon(
            ledger, DELTA, "rdp"
        )


def test_adaptive_rounds_are_charged_the_total_sigma():
    plain = [poisson(2.0, 0.1, 20)]
    adaptive = [poisson(2.0, 0.1, 20, adaptive=True, count_noise_std=5.0)]
    for accountant in ("rdp", "pld"):
        assert client_level_epsilon(adaptive, DELTA, accountant) == pytest.approx(
            client_level_epsilon(plain, DELTA, accountant), rel=1e-12
        )
    assert adaptive[0].quantile_budget_share == pytest.approx(0.04)
    assert plain[0].quantile_budget_share == 0.0


def test_no_noise_is_infinite_and_no_events_is_zero():
    assert client_level_epsilon([poisson(0.0, 0.1, 1)], DELTA) == math.inf
    assert client_level_epsilon([everyone(0.0, 1), everyone(5.0, 1)], DELTA, "pld") == math.inf
    assert client_level_epsilon([], DELTA) == 0.0


def _run_until_budget(next_round, max_epsilon: float, accountant: str, limit: int = 500):
    """A server loop: ask before every release, stop at the first one that would exceed."""
    ledger: list[ClientDpEvent] = []
    for _ in range(limit):
        event = next_round(len(ledger))
        if would_exceed(ledger, event, DELTA, max_epsilon, accountant):
            return ledger, event
        ledger.append(event)  # the release happens only after the check
    raise AssertionError("budget never ran out")


def test_budget_stop_triggers_before_the_exceeding_release_rdp():
    independent = dp_accounting.rdp.RdpAccountant()
    first_over = 0
    while independent.get_epsilon(DELTA) <= 1.0:
        independent.compose(
            dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(2.0))
        )
        first_over += 1
    ledger, refused = _run_until_budget(lambda _: poisson(2.0, 0.1, 1), 1.0, "rdp")
    assert len(ledger) == first_over - 1 > 5
    assert client_level_epsilon(ledger, DELTA, "rdp") <= 1.0
    assert client_level_epsilon([*ledger, refused], DELTA, "rdp") > 1.0


def test_budget_stop_with_adaptive_rounds_and_pld():
    def next_round(done: int) -> ClientDpEvent:
        return ClientDpEvent(3.0, "none", 1, 0.5 * 1.05**done, adaptive=True, count_noise_std=2.0)

    ledger, refused = _run_until_budget(next_round, 3.0, "pld")
    # Closed form: T rounds with sigma 3 are one Gaussian with sigma 3 / sqrt(T).
    first_over = next(
        t
        for t in range(1, 500)
        if dp_accounting.get_epsilon_gaussian(3.0 / math.sqrt(t), DELTA) > 3.0
    )
    assert len(ledger) == first_over - 1
    assert refused.clip_norm == pytest.approx(0.5 * 1.05 ** len(ledger))
    assert would_exceed(ledger[:-1], ledger[-1], DELTA, 3.0, "pld") is False


def test_event_round_trips_through_json():
    events = [
        poisson(1.2, 0.05, 7, adaptive=True, count_noise_std=5.0),
        fixed(0.9, 10, 1000, 3),
        everyone(2.0, 1),
    ]
    for event in events:
        row = json.loads(json.dumps(event.to_dict()))
        assert ClientDpEvent.from_dict(row) == event
    assert events[1].to_dict() == {
        "noise_multiplier": 0.9,
        "sampling": "fixed",
        "rounds": 3,
        "clip_norm": 1.0,
        "adaptive": False,
        "sampling_rate": None,
        "sample_size": 10,
        "population": 1000,
        "count_noise_std": None,
    }


def test_bad_ledger_rows_are_refused():
    row = poisson(1.0, 0.1, 2).to_dict()
    with pytest.raises(FedVaultError, match="unknown fields: epsilon"):
        ClientDpEvent.from_dict({**row, "epsilon": 1.0})
    with pytest.raises(FedVaultError, match="lacks fields: rounds"):
        ClientDpEvent.from_dict({k: v for k, v in row.items() if k != "rounds"})
    with pytest.raises(FedVaultError, match="sampling rate"):
        ClientDpEvent.from_dict({**row, "sampling_rate": 1.5})
    with pytest.raises(FedVaultError, match="adaptive must be true or false"):
        ClientDpEvent.from_dict({**row, "adaptive": "yes"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": -0.5}, "noise multiplier must be >= 0"),
        ({"clip_norm": 0.0}, "clip norm must be > 0"),
        ({"rounds": 0}, "number of rounds must be >= 1"),
        ({"rounds": 1.5}, "number of rounds must be an integer"),
        ({"sampling_rate": 0.0}, "sampling rate must be in"),
        ({"sampling_rate": None}, "poisson client sampling needs sampling_rate"),
        ({"sample_size": 3}, "sample_size does not apply to poisson"),
        ({"sampling": "uniform"}, "client sampling must be one of"),
        ({"adaptive": True}, "needs count_noise_std"),
        ({"adaptive": True, "count_noise_std": 0.4}, "must exceed half the noise multiplier"),
        ({"count_noise_std": 5.0}, "only meaningful with adaptive"),
    ],
)
def test_bad_event_settings_are_refused(kwargs, message):
    settings = {
        "noise_multiplier": 1.0,
        "sampling": "poisson",
        "rounds": 1,
        "clip_norm": 1.0,
        "sampling_rate": 0.1,
        **kwargs,
    }
    with pytest.raises(FedVaultError, match=message):
        ClientDpEvent(**settings)


def test_bad_fixed_size_and_accounting_arguments_are_refused():
    with pytest.raises(
        FedVaultError, match="cannot sample 11 clients per round from a population of 10"
    ):
        fixed(1.0, 11, 10, 1)
    with pytest.raises(FedVaultError, match="fixed client sampling needs population"):
        ClientDpEvent(1.0, "fixed", 1, 1.0, sample_size=3)
    with pytest.raises(FedVaultError, match="accountant must be one of"):
        client_level_epsilon([everyone(1.0, 1)], DELTA, "prv")
    for delta in (0.0, 1.0, -1e-5):
        with pytest.raises(FedVaultError, match="delta"):
            client_level_epsilon([everyone(1.0, 1)], delta)
    with pytest.raises(FedVaultError, match="maximum client-level epsilon"):
        would_exceed([], everyone(1.0, 1), DELTA, 0.0)
