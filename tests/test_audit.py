"""The membership-inference audit: its statistics on known inputs, and a real attack.

The real attack trains a deliberately overfit, non-private model on 200 digits and must tell
its training records from held-out ones; on identical distributions it must not.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from privacy.audit import loss_threshold_audit
from privacy.errors import FedVaultError
from tasks.datasets import load_digits
from tasks.models import MLP


def test_perfect_separation_gives_the_largest_bound():
    result = loss_threshold_audit(np.zeros(2000), np.ones(2000), delta=1e-5)
    assert result["auc"] == 1.0
    assert [row["tpr"] for row in result["low_fpr"]] == [1.0, 1.0]
    assert result["eps_lb"] == pytest.approx(math.log((1 - 1e-5) / 0.001))
    assert result["members"] == result["nonmembers"] == 2000
    assert "LOWER bound" in result["eps_lb_label"]


def test_auc_counts_ties_as_half():
    # pairs (m, n): 0.1<0.2 win, 0.1<0.3 win, 0.3=0.3 tie, 0.3>0.2 loss -> (2 + 0.5) / 4
    assert loss_threshold_audit([0.1, 0.3], [0.2, 0.3], 0.0)["auc"] == pytest.approx(0.625)


def test_identical_distributions_give_chance():
    rng = np.random.default_rng(0)
    result = loss_threshold_audit(rng.exponential(size=5000), rng.exponential(size=5000), 1e-5)
    assert abs(result["auc"] - 0.5) < 0.03
    assert result["eps_lb"] < 1.0
    for row in result["low_fpr"]:
        assert row["tpr"] < 5 * row["fpr"]


def test_low_fpr_needs_enough_nonmembers():
    result = loss_threshold_audit(np.zeros(50), np.ones(50), 1e-5)
    assert [row["resolvable"] for row in result["low_fpr"]] == [False, False]
    assert result["eps_lb"] is None
    result = loss_threshold_audit(np.zeros(100), np.ones(100), 1e-5)
    assert result["low_fpr"][0]["eps_lb"] == pytest.approx(math.log((1 - 1e-5) / 0.01))
    assert result["low_fpr"][1]["resolvable"] is False


@pytest.mark.parametrize(
    ("members", "nonmembers", "delta", "message"),
    [
        ([], [1.0], 1e-5, "member losses are empty"),
        ([1.0], [float("nan")], 1e-5, "NaN or infinite"),
        ([1.0], [2.0], 1.5, "delta must be in"),
    ],
)
def test_bad_input_is_one_clear_error(members, nonmembers, delta, message):
    with pytest.raises(FedVaultError, match=message):
        loss_threshold_audit(members, nonmembers, delta)


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
