"""Empirical privacy audit: a loss-threshold membership-inference attack and what it implies.

Accounting gives an upper bound on epsilon that is only as good as its assumptions (Poisson
sampling, the noise really added, no bug). An attack gives the other side: if an attacker can
tell training members from held-out records with true-positive rate TPR at false-positive
rate FPR, then any (epsilon, delta)-DP training must satisfy TPR <= e^epsilon * FPR + delta,
so epsilon >= ln((TPR - delta) / FPR).

Rates measured on finite samples are only estimates, and a threshold picked on the same
samples it is measured on flatters itself (on identical distributions, "the best threshold"
finds an epsilon above 0 in most trials). So the records are split at random: the threshold
for each target FPR is chosen on one half of the members and non-members, and measured on the
other half, where one-sided Clopper-Pearson bounds give a TPR that is at least, and an FPR
that is at most, what they claim. All the bounds hold together with probability at least
`confidence` (Bonferroni over every bound computed), so `eps_lb` = ln((TPR_lower - delta) /
FPR_upper) is a lower bound at that confidence, on the attack's rates over records like these.
It comes from one attack on one model, treating each record as a trial (the usual one-run
shortcut; Steinke, Nasr and Jagielski 2023 make it rigorous), and says nothing about records
the attack does not single out: a LOWER bound, never a guarantee.

The attack (Yeom et al. 2018) calls a record a member when the model's loss on it is at most
a threshold. Low FPRs matter (Carlini et al. 2022): AUC alone hides an attack that is
confident on a few records. AUC, best accuracy and the ROC describe the attack on all records;
only `eps_lb` is a bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import beta

from privacy.errors import FedVaultError

TARGET_FPRS = (0.01, 0.001)
CONFIDENCE = 0.95
ROC_POINTS = 200


def lower_bound_label(confidence: float) -> str:
    """What `eps_lb` is, in the words the report prints next to it."""
    return (
        f"empirical LOWER bound on epsilon at {confidence:.0%} confidence (one-sided "
        "Clopper-Pearson; threshold chosen on half of the records, measured on the other half) "
        "from one membership-inference attack; not a privacy guarantee"
    )


def _losses(name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size < 2:
        raise FedVaultError(f"{name} losses need at least 2 values (half to choose, half to test)")
    if not np.all(np.isfinite(array)):
        raise FedVaultError(f"{name} losses contain NaN or infinite values")
    return array


def _auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(member loss < non-member loss) + P(equal) / 2 (both arrays sorted)."""
    below = np.searchsorted(nonmembers, members, side="left")
    at_or_below = np.searchsorted(nonmembers, members, side="right")
    greater = nonmembers.size - at_or_below
    ties = at_or_below - below
    return float((greater.sum() + 0.5 * ties.sum()) / (members.size * nonmembers.size))


def _roc(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds and the TPR and FPR of `loss <= t` for t = -inf and every distinct loss."""
    thresholds = np.unique(np.concatenate([members, nonmembers]))
    tpr = np.searchsorted(members, thresholds, side="right") / members.size
    fpr = np.searchsorted(nonmembers, thresholds, side="right") / nonmembers.size
    return (
        np.concatenate([[-np.inf], thresholds]),
        np.concatenate([[0.0], tpr]),
        np.concatenate([[0.0], fpr]),
    )


def _downsample(tpr: np.ndarray, fpr: np.ndarray) -> dict[str, list[float]]:
    if tpr.size > ROC_POINTS:
        index = np.unique(np.geomspace(1, tpr.size, ROC_POINTS).round().astype(int) - 1)
        tpr, fpr = tpr[index], fpr[index]
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}


def _halves(values: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random split into a selection half and a measurement half, each sorted."""
    shuffled = rng.permutation(values)
    half = shuffled.size // 2
    return np.sort(shuffled[:half]), np.sort(shuffled[half:])


def clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """One-sided Clopper-Pearson bounds (lower, upper), each failing with probability alpha."""
    lower = 0.0 if successes == 0 else float(beta.ppf(alpha, successes, trials - successes + 1))
    upper = (
        1.0
        if successes == trials
        else float(beta.ppf(1 - alpha, successes + 1, trials - successes))
    )
    return lower, upper


def _eps_lower_bound(tpr_lower: float, fpr_upper: float, delta: float) -> float:
    if tpr_lower <= delta:
        return 0.0
    return max(0.0, math.log((tpr_lower - delta) / fpr_upper))


def loss_threshold_audit(
    member_losses: Sequence[float] | np.ndarray,
    nonmember_losses: Sequence[float] | np.ndarray,
    delta: float,
    confidence: float = CONFIDENCE,
    seed: int | None = None,
) -> dict[str, Any]:
    """Attack members vs non-members by loss: AUC, TPR at low FPR, and an epsilon lower bound.

    For each target FPR alpha in TARGET_FPRS that the measurement half can resolve (at least
    one expected false positive), the threshold is the largest one whose FPR on the selection
    half is at most alpha; on the measurement half its TPR gets a one-sided lower bound and
    its FPR an upper bound. Every such bound is taken at 1 - (1 - confidence) / (number of
    bounds), so all hold together at `confidence`, and `eps_lb`, the largest row's
    ln((TPR_lower - delta) / FPR_upper) floored at 0, is a lower bound at that confidence.
    `seed` fixes the random split (reproducible research); by default it is fresh.
    """
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 <= delta < 1:
        raise FedVaultError(f"delta must be in [0, 1), got {delta!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, float) or not 0 < confidence < 1:
        raise FedVaultError(f"confidence must be a number in (0, 1), got {confidence!r}")
    members = _losses("member", member_losses)
    nonmembers = _losses("non-member", nonmember_losses)
    rng = np.random.default_rng(seed)
    members_choose, members_test = _halves(members, rng)
    nonmembers_choose, nonmembers_test = _halves(nonmembers, rng)
    thresholds, _, choose_fpr = _roc(members_choose, nonmembers_choose)
    resolvable = [alpha * nonmembers_test.size >= 1 for alpha in TARGET_FPRS]
    alpha_each = (1 - confidence) / max(2 * sum(resolvable), 1)
    low_fpr = []
    for alpha, measurable in zip(TARGET_FPRS, resolvable, strict=True):
        row: dict[str, Any] = {"fpr": alpha, "resolvable": measurable}
        if measurable:
            threshold = thresholds[np.flatnonzero(choose_fpr <= alpha)[-1]]
            true_pos = int(np.searchsorted(members_test, threshold, side="right"))
            false_pos = int(np.searchsorted(nonmembers_test, threshold, side="right"))
            tpr_lower, _ = clopper_pearson(true_pos, members_test.size, alpha_each)
            _, fpr_upper = clopper_pearson(false_pos, nonmembers_test.size, alpha_each)
            row.update(
                tpr=true_pos / members_test.size,
                fpr_measured=false_pos / nonmembers_test.size,
                tpr_lower=tpr_lower,
                fpr_upper=fpr_upper,
                eps_lb=_eps_lower_bound(tpr_lower, fpr_upper, delta),
            )
        else:
            row.update(tpr=None, fpr_measured=None, tpr_lower=None, fpr_upper=None, eps_lb=None)
        low_fpr.append(row)
    bounds = [row["eps_lb"] for row in low_fpr if row["eps_lb"] is not None]
    members, nonmembers = np.sort(members), np.sort(nonmembers)
    _, tpr, fpr = _roc(members, nonmembers)
    return {
        "attack": "loss threshold (Yeom et al. 2018): a record is called a member when the "
        "model's loss on it is at most a threshold, chosen on a random half of the records "
        "for each target FPR and measured on the other half",
        "members": int(members.size),
        "nonmembers": int(nonmembers.size),
        "delta": float(delta),
        "confidence": confidence,
        "auc": _auc(members, nonmembers),
        "best_accuracy": float(np.max((tpr + 1 - fpr) / 2)),
        "low_fpr": low_fpr,
        "eps_lb": max(bounds) if bounds else None,
        "eps_lb_label": lower_bound_label(confidence),
        "roc": _downsample(tpr, fpr),
    }
