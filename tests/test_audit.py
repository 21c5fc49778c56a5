"""The membership-inference audit: its statistics on known inputs, and a real attack.

The bound must be a bound: on identical member and non-member distributions (true epsilon 0)
it is 0 in at least 95 % of trials, and on distributions whose privacy loss is exactly known
it exceeds the truth in at most 5 %. The real attack trains a deliberately overfit,
non-private model on 200 digits and must tell its training records from held-out ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from scipy.stats import binomtest

from client.data import load_site_data
from client.site import resolve_site
from privacy.audit import clopper_pearson, loss_threshold_audit
from privacy.errors import FedVaultError
from simulations.audit import audit_model
from tasks.datasets import load_digits
from tasks.models import MLP
from tasks.settings import RunSettings


def test_perfect_separation_is_bounded_by_the_sample_size():
    result = loss_threshold_audit(np.zeros(2000), np.ones(2000), delta=1e-5, seed=0)
    assert result["auc"] == 1.0
    # 1000 measured records per side; 4 one-sided bounds share the 5 %: each fails w.p. 1.25 %.
    bound = 1 - 0.0125 ** (1 / 1000)
    for row in result["low_fpr"]:
        assert (row["tpr"], row["fpr_measured"]) == (1.0, 0.0)
        assert row["fpr_upper"] == pytest.approx(bound)
        assert row["tpr_lower"] == pytest.approx(1 - bound)
    assert result["eps_lb"] == pytest.approx(math.log((1 - bound - 1e-5) / bound))
    assert result["members"] == result["nonmembers"] == 2000
    assert result["confidence"] == 0.95
    assert "LOWER bound on epsilon at 95% confidence" in result["eps_lb_label"]
    assert "Clopper-Pearson" in result["eps_lb_label"]


def test_clopper_pearson_matches_scipy_exact_interval():
    for successes, trials in ((0, 50), (7, 50), (50, 50), (313, 1000)):
        lower, upper = clopper_pearson(successes, trials, 0.025)
        exact = binomtest(successes, trials).proportion_ci(0.95, method="exact")
        assert (lower, upper) == pytest.approx((exact.low, exact.high))


def test_auc_counts_ties_as_half():
    # pairs (m, n): 0.1<0.2 win, 0.1<0.3 win, 0.3=0.3 tie, 0.3>0.2 loss -> (2 + 0.5) / 4
    assert loss_threshold_audit([0.1, 0.3], [0.2, 0.3], 0.0)["auc"] == pytest.approx(0.625)


def test_identical_distributions_report_zero_in_at_least_95_percent_of_trials():
    """True epsilon is 0: a positive "lower bound" is a false claim (the review saw 81 %)."""
    positive = 0
    for trial in range(200):
        rng = np.random.default_rng(trial)
        members, nonmembers = rng.exponential(size=2000), rng.exponential(size=2000)
        result = loss_threshold_audit(members, nonmembers, 1e-5, seed=trial)
        assert abs(result["auc"] - 0.5) < 0.06
        positive += result["eps_lb"] > 0
    assert positive <= 10, f"eps_lb > 0 in {positive} of 200 trials"


def test_the_bound_rarely_exceeds_a_known_epsilon_and_still_finds_it():
    """Member losses Laplace(0, 1), non-members Laplace(2, 1): every threshold test has
    TPR <= e^2 FPR, with equality in the left tail, so epsilon = 2 exactly."""
    above, found = 0, []
    for trial in range(200):
        rng = np.random.default_rng(1000 + trial)
        members, nonmembers = rng.laplace(0, 1, 4000), rng.laplace(2, 1, 4000)
        eps = loss_threshold_audit(members, nonmembers, 0.0, seed=trial)["eps_lb"]
        above += eps > 2
        found.append(eps)
    assert above <= 10
    assert np.median(found) > 0.8, "the split must not cost all the power"


def test_delta_lowers_the_bound():
    rng = np.random.default_rng(3)
    members, nonmembers = rng.laplace(0, 1, 4000), rng.laplace(2, 1, 4000)
    loose = loss_threshold_audit(members, nonmembers, 0.0, seed=1)["eps_lb"]
    strict = loss_threshold_audit(members, nonmembers, 0.01, seed=1)["eps_lb"]
    assert 0 < strict < loose


def test_the_split_is_random_unless_seeded():
    rng = np.random.default_rng(4)
    members, nonmembers = rng.laplace(0, 1, 3000), rng.laplace(1, 1, 3000)
    first = loss_threshold_audit(members, nonmembers, 0.0, seed=7)
    assert first == loss_threshold_audit(members, nonmembers, 0.0, seed=7)
    tprs = {loss_threshold_audit(members, nonmembers, 0.0)["low_fpr"][0]["tpr"] for _ in range(5)}
    assert len(tprs) > 1


def test_low_fpr_needs_enough_nonmembers():
    result = loss_threshold_audit(np.zeros(100), np.ones(100), 1e-5)
    assert [row["resolvable"] for row in result["low_fpr"]] == [False, False]
    assert result["eps_lb"] is None
    result = loss_threshold_audit(np.zeros(200), np.ones(200), 1e-5)
    assert result["low_fpr"][0]["resolvable"] and not result["low_fpr"][1]["resolvable"]
    # Only two bounds share the 5 % now, each at 2.5 %, over 100 measured records.
    bound = 1 - 0.025 ** (1 / 100)
    assert result["eps_lb"] == pytest.approx(math.log((1 - bound - 1e-5) / bound))


@pytest.mark.parametrize(
    ("members", "nonmembers", "delta", "message"),
    [
        ([], [1.0, 2.0], 1e-5, "member losses need at least 2 values"),
        ([1.0, 2.0], [1.0], 1e-5, "non-member losses need at least 2 values"),
        ([1.0, 2.0], [1.0, float("nan")], 1e-5, "NaN or infinite"),
        ([1.0, 2.0], [2.0, 3.0], 1.5, "delta must be in"),
    ],
)
def test_bad_input_is_one_clear_error(members, nonmembers, delta, message):
    with pytest.raises(FedVaultError, match=message):
        loss_threshold_audit(members, nonmembers, delta)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1, True, "0.9"])
def test_confidence_must_be_a_probability(confidence):
    with pytest.raises(FedVaultError, match="confidence must be a number in"):
        loss_threshold_audit([1.0, 2.0], [2.0, 3.0], 0.0, confidence=confidence)


def _per_example_losses(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        return torch.nn.functional.cross_entropy(
            logits, torch.from_numpy(y), reduction="none"
        ).numpy()


def test_attack_separates_members_of_an_overfit_model():
    data = load_digits(seed=0)
    x_in, y_in = data.x_train[:200], data.y_train[:200]
    x_out, y_out = data.x_test[:200], data.y_test[:200]
    torch.manual_seed(0)
    model = MLP(64, 10, hidden=128)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(
            model(torch.from_numpy(x_in)), torch.from_numpy(y_in)
        ).backward()
        optimizer.step()
    result = loss_threshold_audit(
        _per_example_losses(model, x_in, y_in), _per_example_losses(model, x_out, y_out), 1e-5
    )
    assert result["auc"] > 0.6
    assert result["best_accuracy"] > 0.55


def test_simulation_audit_attacks_only_sites_that_trained_with_their_delta(tmp_path: Path):
    sites_root = tmp_path / "sites"
    deltas = [1e-5, 1e-6, 1e-4]
    for index, delta in enumerate(deltas):
        (sites_root / f"site-{index}").mkdir(parents=True)
        settings = {"delta": delta, "insecure-seed": index}
        (sites_root / f"site-{index}" / "site.toml").write_text(tomli_w.dumps(settings))
    settings = RunSettings.from_config({"task.name": "digits", "sites-root": str(sites_root)})
    torch.manual_seed(0)
    model = MLP(64, 10, hidden=16)

    def training_rows(index: int) -> int:
        site = resolve_site({"partition-id": index, "num-partitions": 3}, str(sites_root))
        return len(load_site_data(settings.task, site, settings.partition).y_train)

    only_one = audit_model(settings, 3, model, trained_sites=[1])
    assert only_one["members"] == training_rows(1)
    assert only_one["delta"] == 1e-6
    two = audit_model(settings, 3, model, trained_sites=[0, 2])
    assert two["members"] == training_rows(0) + training_rows(2)
    assert two["delta"] == 1e-4, "the largest delta of the sites that trained"
    everyone = audit_model(settings, 3, model)
    assert everyone["members"] == sum(training_rows(i) for i in range(3))
    assert audit_model(settings, 3, model, trained_sites=[]) is None
