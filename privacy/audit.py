"""Empirical privacy audit: a loss-threshold membership-inference attack and what it implies.

Accounting gives an upper bound on epsilon that is only as good as its assumptions (Poisson
sampling, the noise really added, no bug). An attack gives the other side: if an attacker can
tell training members from held-out records with true-positive rate TPR at false-positive
rate FPR, then any (epsilon, delta)-DP training must satisfy TPR <= e^epsilon * FPR + delta,
so epsilon >= ln((TPR - delta) / FPR). That is a LOWER bound, from one attack, and it says
nothing about records the attack does not single out; reports must label it so.

The attack (Yeom et al. 2018) calls a record a member when the model's loss on it is at most
a threshold; every threshold is tried. Low FPRs matter (Carlini et al. 2022): AUC alone hides
an attack that is confident on a few records. Plain NumPy, so it runs wherever losses do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from privacy.errors import FedVaultError

TARGET_FPRS = (0.01, 0.001)
ROC_POINTS = 200
LOWER_BOUND_LABEL = (
    "empirical LOWER bound on epsilon from one membership-inference attack (point estimate); "
    "not a privacy guarantee"
)


def _losses(name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise FedVaultError(f"{name} losses are empty")
    if not np.all(np.isfinite(array)):
        raise FedVaultError(f"{name} losses contain NaN or infinite values")
    return np.sort(array)


def _auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(member loss < non-member loss) + P(equal) / 2 (both arrays sorted)."""
    below = np.searchsorted(nonmembers, members, side="left")
    at_or_below = np.searchsorted(nonmembers, members, side="right")
    greater = nonmembers.size - at_or_below
    ties = at_or_below - below
    return float((greater.sum() + 0.5 * ties.sum()) / (members.size * nonmembers.size))


def _roc(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TPR and FPR of the rule `loss <= t` for t = -inf and every distinct loss."""
    thresholds = np.unique(np.concatenate([members, nonmembers]))
    tpr = np.searchsorted(members, thresholds, side="right") / members.size
    fpr = np.searchsorted(nonmembers, thresholds, side="right") / nonmembers.size
    return np.concatenate([[0.0], tpr]), np.concatenate([[0.0], fpr])


def _eps_lower_bound(tpr: float, fpr: float, delta: float) -> float:
    if tpr <= delta:
        return 0.0
    return max(0.0, math.log((tpr - delta) / fpr))


def _downsample(tpr: np.ndarray, fpr: np.ndarray) -> dict[str, list[float]]:
    if tpr.size > ROC_POINTS:
        index = np.unique(np.geomspace(1, tpr.size, ROC_POINTS).round().astype(int) - 1)
        tpr, fpr = tpr[index], fpr[index]
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}


def loss_threshold_audit(
    member_losses: Sequence[float] | np.ndarray,
    nonmember_losses: Sequence[float] | np.ndarray,
    delta: float,
) -> dict[str, Any]:
    """Attack members vs non-members by loss; AUC, TPR at low FPR and the epsilon lower bound.

    For each target FPR alpha in TARGET_FPRS: TPR is the best over thresholds whose measured
    FPR is at most alpha, and eps_lb = ln((TPR - delta) / alpha) (alpha >= the measured FPR
    keeps it conservative and finite), floored at 0. A target below 1 / non-members cannot be
    measured and is reported with `resolvable` false and no value. `eps_lb` is the largest.
    """
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 <= delta < 1:
        raise FedVaultError(f"delta must be in [0, 1), got {delta!r}")
    members = _losses("member", member_losses)
    nonmembers = _losses("non-member", nonmember_losses)
    tpr, fpr = _roc(members, nonmembers)
    low_fpr = []
    for alpha in TARGET_FPRS:
        resolvable = alpha * nonmembers.size >= 1
        best = float(tpr[fpr <= alpha].max()) if resolvable else None
        low_fpr.append(
            {
                "fpr": alpha,
                "resolvable": resolvable,
                "tpr": best,
                "eps_lb": _eps_lower_bound(best, alpha, delta) if best is not None else None,
            }
        )
    bounds = [row["eps_lb"] for row in low_fpr if row["eps_lb"] is not None]
    return {
        "attack": "loss threshold (Yeom et al. 2018): a record is called a member when the "
        "model's loss on it is at most a threshold; every threshold tried",
        "members": int(members.size),
        "nonmembers": int(nonmembers.size),
        "delta": float(delta),
        "auc": _auc(members, nonmembers),
        "best_accuracy": float(np.max((tpr + 1 - fpr) / 2)),
        "low_fpr": low_fpr,
        "eps_lb": max(bounds) if bounds else None,
        "eps_lb_label": LOWER_BOUND_LABEL,
        "roc": _downsample(tpr, fpr),
    }
