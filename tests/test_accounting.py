"""Accounting checked against Google's dp-accounting, an independent implementation.

RDP: same orders as Opacus' RDPAccountant and the same RDP-to-DP conversion (Balle et al.
2020, Thm 21, also dp-accounting's `compute_epsilon`), so results agree to 1e-6 relative.
The parameter sets avoid large q / small sigma, where dp-accounting 0.6's series for
fractional orders stops early and returns a looser bound than Opacus' exact value.
PRV vs PLD: two numerical methods for the same privacy loss, within 2% (the PRV accountant
returns an upper bound with 0.01 additive epsilon error, so small epsilons are avoided).
"""

from __future__ import annotations

import json
import time

import dp_accounting
import opacus
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from opacus.accountants import RDPAccountant

from privacy.accounting import (
    ACCOUNTANTS,
    PRV_MAX_EPSILON,
    PrivacyEvent,
    accountant_info,
    compute_epsilon,
    sample_rate_and_steps,
    solve_noise_multiplier,
    validate_dp_params,
)
from privacy.errors import FedVaultError

DELTA = 1e-5
ADD_REMOVE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


def event(sigma: float, q: float, steps: int, clip: float = 1.0) -> PrivacyEvent:
    return PrivacyEvent(noise_multiplier=sigma, sample_rate=q, steps=steps, clip_norm=clip)


def google_epsilon(events: list[PrivacyEvent], accountant: str) -> float:
    if accountant == "rdp":
        acct = RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS, neighboring_relation=ADD_REMOVE)
    else:
        acct = PLDAccountant(neighboring_relation=ADD_REMOVE, value_discretization_interval=1e-4)
    for e in events:
        mechanism = dp_accounting.GaussianDpEvent(e.noise_multiplier)
        acct.compose(dp_accounting.PoissonSampledDpEvent(e.sample_rate, mechanism), e.steps)
    return acct.get_epsilon(DELTA)


MNIST_TF = event(1.1, 256 / 60000, 14062)
MNIST_OPACUS = event(1.3, 240 / 60000, 3750)
HETEROGENEOUS = [MNIST_TF, MNIST_OPACUS, event(2.0, 0.002, 500, clip=0.5)]

RDP_CASES = {
    "mnist-tf": [MNIST_TF],
    "mnist-opacus": [MNIST_OPACUS],
    "large-sigma": [event(2.0, 0.002, 500)],
    "few-steps": [event(4.0, 0.02, 100)],
    "many-steps": [event(1.0, 0.001, 20000)],
    "heterogeneous": HETEROGENEOUS,
}
PRV_CASES = {
    "mnist-tf": [MNIST_TF],
    "mnist-opacus": [MNIST_OPACUS],
    "many-steps": [event(1.0, 0.001, 20000)],
    "q-0.01": [event(1.5, 0.01, 2000)],
    "small-sigma": [event(0.8, 0.003, 3000)],
    "heterogeneous": HETEROGENEOUS,
}


@pytest.mark.parametrize("events", RDP_CASES.values(), ids=RDP_CASES.keys())
def test_rdp_matches_dp_accounting(events: list[PrivacyEvent]) -> None:
    ours = compute_epsilon(events, DELTA, "rdp")
    assert ours == pytest.approx(google_epsilon(events, "rdp"), rel=1e-6)


@pytest.mark.parametrize("events", PRV_CASES.values(), ids=PRV_CASES.keys())
def test_prv_matches_dp_accounting_pld(events: list[PrivacyEvent]) -> None:
    ours = compute_epsilon(events, DELTA, "prv")
    assert ours == pytest.approx(google_epsilon(events, "pld"), rel=0.02)


def test_prv_is_tighter_than_rdp() -> None:
    assert compute_epsilon(HETEROGENEOUS, DELTA, "prv") < compute_epsilon(
        HETEROGENEOUS, DELTA, "rdp"
    )


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_rounds_compose_cumulatively(accountant: str) -> None:
    per_round = event(1.2, 0.01, 300)
    first_run = [per_round, per_round]
    second_run = [per_round, per_round]
    four_rounds = compute_epsilon([per_round] * 4, DELTA, accountant)
    assert compute_epsilon(first_run + second_run, DELTA, accountant) == four_rounds
    assert four_rounds == pytest.approx(
        compute_epsilon([event(1.2, 0.01, 1200)], DELTA, accountant), rel=1e-9
    )
    assert compute_epsilon(first_run, DELTA, accountant) < four_rounds


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_order_of_events_does_not_matter(accountant: str) -> None:
    mixed = [event(1.0, 0.01, 200), event(2.0, 0.02, 100), event(1.0, 0.01, 200)]
    reordered = [mixed[1], mixed[0], mixed[2]]
    assert compute_epsilon(mixed, DELTA, accountant) == pytest.approx(
        compute_epsilon(reordered, DELTA, accountant), rel=1e-9
    )


def test_no_events_cost_nothing() -> None:
    assert compute_epsilon([], DELTA, "prv") == 0.0
    assert compute_epsilon([], DELTA, "rdp") == 0.0


def test_many_rounds_cost_as_much_as_their_distinct_settings() -> None:
    # A site's ledger after 48 rounds of two runs with different sigma: as cheap as 2 events.
    rounds = [event(1.1, 0.004, 250)] * 24 + [event(0.9, 0.004, 250)] * 24
    merged = [event(1.1, 0.004, 6000), event(0.9, 0.004, 6000)]
    start = time.perf_counter()
    expected = compute_epsilon(merged, DELTA, "prv")
    merged_seconds = time.perf_counter() - start
    start = time.perf_counter()
    assert compute_epsilon(rounds, DELTA, "prv") == pytest.approx(expected, rel=1e-12)
    assert time.perf_counter() - start < 3 * merged_seconds + 0.5


def test_prv_is_not_run_for_meaningless_epsilons() -> None:
    huge = [event(0.1, 0.004, 234)]
    assert compute_epsilon(huge, DELTA, "rdp") > PRV_MAX_EPSILON
    with pytest.raises(FedVaultError, match=r"epsilon is 1151 under rdp, above 50 where the prv"):
        compute_epsilon(huge, DELTA, "prv")
    with pytest.raises(FedVaultError, match="target epsilon 60 is above 50"):
        solve_noise_multiplier(60.0, DELTA, 0.004, 234, "prv")
    assert solve_noise_multiplier(1300, DELTA, 0.004, 234, "rdp") <= 0.1


def test_unknown_accountant() -> None:
    with pytest.raises(FedVaultError, match="unknown accountant 'gdp'"):
        compute_epsilon([MNIST_TF], DELTA, "gdp")
    with pytest.raises(FedVaultError, match="unknown accountant"):
        accountant_info("pld")


@pytest.mark.parametrize("name", ACCOUNTANTS)
def test_accountant_info_names_what_a_report_needs(name: str) -> None:
    info = accountant_info(name)
    assert info["name"] == name
    assert info["implementation"] == "opacus"
    assert info["version"] == opacus.__version__
    assert info["sampling"] == "Poisson subsampling with rate q per step"
    assert info["adjacency"] == "add_remove"
    assert info["class"] == f"opacus.accountants.{name.upper()}Accountant"


@pytest.mark.parametrize(("accountant", "target"), [("rdp", 1.0), ("prv", 2.0)])
def test_solver_is_tight_on_its_grid(accountant: str, target: float) -> None:
    q, steps = 0.004, 3000
    prior = [event(1.5, 0.004, 1500)]
    sigma = solve_noise_multiplier(target, DELTA, q, steps, accountant, prior_events=prior)
    assert sigma == round(sigma, 3)
    assert compute_epsilon([*prior, event(sigma, q, steps)], DELTA, accountant) <= target
    too_small = round(sigma - 0.001, 3)
    assert compute_epsilon([*prior, event(too_small, q, steps)], DELTA, accountant) > target


def test_solver_adds_noise_for_prior_spending() -> None:
    prior = [event(1.5, 0.004, 1500)]
    alone = solve_noise_multiplier(1.0, DELTA, 0.004, 3000, "rdp")
    assert solve_noise_multiplier(1.0, DELTA, 0.004, 3000, "rdp", prior_events=prior) > alone


def test_solver_matches_mnist_row() -> None:
    # sigma 1.3 gives 0.92 under RDP (privacy-facts.md), so RDP needs just about 1.3 for 0.922.
    assert solve_noise_multiplier(0.922, DELTA, 0.004, 3750, "rdp") == pytest.approx(1.3, abs=2e-3)


def test_solver_rejects_unreachable_target() -> None:
    with pytest.raises(FedVaultError, match="out of reach: even noise multiplier 100"):
        solve_noise_multiplier(1e-4, DELTA, 1.0, 100000, "rdp")


def test_solver_rejects_budget_already_spent() -> None:
    spent = [event(0.8, 0.01, 5000)]
    with pytest.raises(FedVaultError, match="already spent epsilon"):
        solve_noise_multiplier(1.0, DELTA, 0.01, 100, "rdp", prior_events=spent)


def test_event_round_trips_through_json() -> None:
    original = event(1.1, 0.25, 7, clip=0.7)
    restored = PrivacyEvent.from_dict(json.loads(json.dumps(original.to_dict())))
    assert restored == original
    assert original.to_dict() == {
        "mechanism": "poisson_subsampled_gaussian",
        "noise_multiplier": 1.1,
        "sample_rate": 0.25,
        "steps": 7,
        "clip_norm": 0.7,
        "adjacency": "add_remove",
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mechanism": "laplace"}, "unknown privacy mechanism 'laplace'"),
        ({"adjacency": "replace_one"}, "unknown adjacency"),
        ({"noise_multiplier": 0.0}, "noise multiplier"),
        ({"noise_multiplier": "1.0"}, "must be a number"),
        ({"noise_multiplier": float("nan")}, "finite number > 0"),
        ({"sample_rate": 1.5}, r"q must be in \(0, 1\]"),
        ({"sample_rate": 0}, "sample rate"),
        ({"steps": 0}, "steps must be at least 1"),
        ({"steps": 2.5}, "steps must be a whole number"),
        ({"steps": True}, "steps must be a whole number"),
        ({"clip_norm": -1.0}, "clip norm"),
        ({"round": 3}, "unknown keys"),
    ],
)
def test_event_from_dict_rejects_bad_values(change: dict, message: str) -> None:
    data = {**MNIST_TF.to_dict(), **change}
    with pytest.raises(FedVaultError, match=message):
        PrivacyEvent.from_dict(data)


def test_event_from_dict_rejects_missing_keys() -> None:
    data = MNIST_TF.to_dict()
    del data["clip_norm"]
    with pytest.raises(FedVaultError, match=r"missing keys \['clip_norm'\]"):
        PrivacyEvent.from_dict(data)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"noise_multiplier": 0}, r"noise multiplier \(sigma\) must be a finite number > 0"),
        ({"noise_multiplier": -1.0}, "noise multiplier"),
        ({"clip_norm": 0.0}, "clip norm must be a finite number > 0"),
        ({"target_epsilon": 0.0}, "target epsilon must be a finite number > 0"),
        ({"target_epsilon": float("inf")}, "target epsilon"),
        ({"delta": 0.0}, r"delta must be in \(0, 1\)"),
        ({"delta": 1.0}, r"delta must be in \(0, 1\)"),
        ({"delta": 1e-3, "records": 1000}, r"delta must be below 1/records = 0.001"),
        ({"sample_rate": 0.0}, "sample rate"),
        ({"sample_rate": 1.01}, r"q must be in \(0, 1\]"),
        ({"steps": 0}, "steps must be at least 1"),
        ({"records": 0}, "records must be at least 1"),
    ],
)
def test_validate_dp_params_rejects(params: dict, message: str) -> None:
    with pytest.raises(FedVaultError, match=message) as info:
        validate_dp_params(**params)
    assert "\n" not in str(info.value)


def test_validate_dp_params_accepts_good_values() -> None:
    validate_dp_params(
        noise_multiplier=1.1,
        clip_norm=1.0,
        target_epsilon=3.0,
        delta=1e-5,
        sample_rate=1.0,
        steps=1,
        records=60000,
    )


def test_sample_rate_and_steps() -> None:
    assert sample_rate_and_steps(60000, 256, 60) == (256 / 60000, 14062)
    assert sample_rate_and_steps(60000, 240, 15) == (0.004, 3750)
    assert sample_rate_and_steps(10, 10, 3) == (1.0, 3)
    assert sample_rate_and_steps(1000, 3, 1) == (0.003, 333)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((100, 101, 1), "batch size 101 is larger than the 100 records"),
        ((0, 1, 1), "records must be at least 1"),
        ((100, 0, 1), "batch size must be at least 1"),
        ((100, 10, 0), "epochs must be at least 1"),
    ],
)
def test_sample_rate_and_steps_rejects(args: tuple[int, int, int], message: str) -> None:
    with pytest.raises(FedVaultError, match=message):
        sample_rate_and_steps(*args)
