"""Sample-level privacy accounting: privacy events in, epsilon out.

A site records what its DP-SGD training did (noise multiplier, sampling rate, steps, clip
norm) as `PrivacyEvent`s, never an epsilon: epsilon is derived from the events by a named
Opacus accountant, so anyone holding the events can recompute and check it, under either
accountant. The same module calibrates sigma for a target epsilon, counting what was already
spent, and validates DP parameters with one-line errors a site operator can act on.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import numpy as np

from privacy.errors import FedVaultError

if TYPE_CHECKING:
    from opacus.accountants.accountant import IAccountant

MECHANISMS = ("poisson_subsampled_gaussian",)
ADJACENCIES = ("add_remove",)
ACCOUNTANTS = ("prv", "rdp")
SAMPLING_ASSUMPTION = "Poisson subsampling with rate q per step"
MAX_NOISE_MULTIPLIER = 100.0
# PRV's grid grows with epsilon (about 10 s and 1 GB near 50 for 14000 steps, out of memory
# near 5000), and beyond it epsilon means no protection anyway; RDP covers that range.
PRV_MAX_EPSILON = 50.0
SIGMA_STEPS_PER_UNIT = 1000  # solved sigmas lie on a 0.001 grid

# Opacus (and torch with it) is imported on first use, so importing this module stays cheap
# for the CLI and for code that only needs the event types and constants.
_OPACUS_CLASSES = {"prv": "PRVAccountant", "rdp": "RDPAccountant"}
_ACCOUNTANT_BOUNDS = {
    "prv": "upper bound of the numerical PRV composition (Gopi et al. 2021), "
    "eps_error 0.01, delta_error delta/1000",
    "rdp": "RDP composition over Opacus' default orders, converted with Balle et al. 2020, Thm 21",
}
_EVENT_FIELDS = ("mechanism", "noise_multiplier", "sample_rate", "steps", "clip_norm", "adjacency")


def _finite_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FedVaultError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise FedVaultError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _positive_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FedVaultError(f"{name} must be a whole number, got {value!r}")
    if value < 1:
        raise FedVaultError(f"{name} must be at least 1, got {value}")
    return value


def _check_delta(delta: Any, records: int | None) -> float:
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 < delta < 1:
        raise FedVaultError(f"delta must be in (0, 1), got {delta!r}")
    if records is not None and delta >= 1 / records:
        raise FedVaultError(
            f"delta must be below 1/records = {1 / records:.3g} (records = {records}): "
            f"delta = {delta:g} would allow leaking a whole record with that probability"
        )
    return float(delta)


def _check_sample_rate(sample_rate: Any) -> float:
    q = _finite_positive("sample rate q", sample_rate)
    if q > 1:
        raise FedVaultError(f"sample rate q must be in (0, 1], got {sample_rate!r}")
    return q


def validate_dp_params(
    *,
    noise_multiplier: float | None = None,
    clip_norm: float | None = None,
    target_epsilon: float | None = None,
    delta: float | None = None,
    sample_rate: float | None = None,
    steps: int | None = None,
    records: int | None = None,
) -> None:
    """Check the DP parameters that are given (None = not checked); raise FedVaultError.

    `records`, when given, is the size of the site's training set: delta must stay below
    1/records, or the guarantee allows releasing one whole record outright.
    """
    if records is not None:
        _positive_count("records", records)
    if noise_multiplier is not None:
        _finite_positive("noise multiplier (sigma)", noise_multiplier)
    if clip_norm is not None:
        _finite_positive("clip norm", clip_norm)
    if target_epsilon is not None:
        _finite_positive("target epsilon", target_epsilon)
    if delta is not None:
        _check_delta(delta, records)
    if sample_rate is not None:
        _check_sample_rate(sample_rate)
    if steps is not None:
        _positive_count("steps", steps)


def sample_rate_and_steps(records: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """Poisson sampling schedule of a local training: q = batch/records, steps = epochs/q.

    steps = round(epochs * records / batch_size), computed exactly (ties go to the even
    number, as Python's round does), e.g. 60 epochs of 60000 records in batches of 256: 14062.
    """
    _positive_count("records", records)
    _positive_count("batch size", batch_size)
    _positive_count("epochs", epochs)
    if batch_size > records:
        raise FedVaultError(f"batch size {batch_size} is larger than the {records} records")
    steps = round(Fraction(epochs * records, batch_size))
    return batch_size / records, steps


@dataclass(frozen=True, kw_only=True)
class PrivacyEvent:
    """One DP mechanism run: `steps` Poisson-subsampled Gaussian steps at rate q, noise sigma*C."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float
    mechanism: str = "poisson_subsampled_gaussian"
    adjacency: str = "add_remove"

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise FedVaultError(
                f"unknown privacy mechanism {self.mechanism!r}; known: {', '.join(MECHANISMS)}"
            )
        if self.adjacency not in ADJACENCIES:
            raise FedVaultError(
                f"unknown adjacency {self.adjacency!r}; known: {', '.join(ADJACENCIES)}"
            )
        sigma = _finite_positive("noise multiplier (sigma)", self.noise_multiplier)
        object.__setattr__(self, "noise_multiplier", sigma)
        object.__setattr__(self, "sample_rate", _check_sample_rate(self.sample_rate))
        object.__setattr__(self, "steps", _positive_count("steps", self.steps))
        object.__setattr__(self, "clip_norm", _finite_positive("clip norm", self.clip_norm))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict with every field; `from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyEvent:
        """Read `to_dict` output; missing or unknown keys and bad values raise FedVaultError."""
        if not isinstance(data, Mapping):
            raise FedVaultError(f"privacy event must be a JSON object, got {type(data).__name__}")
        missing = sorted(set(_EVENT_FIELDS) - set(data))
        unknown = sorted(set(data) - set(_EVENT_FIELDS))
        if missing or unknown:
            raise FedVaultError(
                f"privacy event has missing keys {missing} / unknown keys {unknown}"
            )
        return cls(**{key: data[key] for key in _EVENT_FIELDS})


def accountant_info(name: str) -> dict[str, str]:
    """What a report must say about an accountant: name, implementation, version, assumptions."""
    cls = _accountant_class(name)
    return {
        "name": name,
        "implementation": "opacus",
        "class": f"opacus.accountants.{cls.__name__}",
        "version": version("opacus"),
        "bound": _ACCOUNTANT_BOUNDS[name],
        "sampling": SAMPLING_ASSUMPTION,
        "adjacency": "add_remove",
    }


def _accountant_class(name: str) -> type[IAccountant]:
    if name not in _OPACUS_CLASSES:
        raise FedVaultError(f"unknown accountant {name!r}; choose one of {', '.join(ACCOUNTANTS)}")
    from opacus import accountants

    return getattr(accountants, _OPACUS_CLASSES[name])


def _history(events: Sequence[PrivacyEvent]) -> list[tuple[float, float, int]]:
    """Opacus history with one entry per distinct (sigma, q).

    Composition is commutative, so merging is exact; it keeps PRV fast, whose cost grows with
    the number of distinct entries, not with steps.
    """
    merged: dict[tuple[float, float], int] = {}
    for event in events:
        key = (event.noise_multiplier, event.sample_rate)
        merged[key] = merged.get(key, 0) + event.steps
    return [(sigma, q, steps) for (sigma, q), steps in merged.items()]


def compute_epsilon(events: Sequence[PrivacyEvent], delta: float, accountant: str = "prv") -> float:
    """Epsilon at `delta` of all `events` composed (any mix of sigma and q); 0.0 if none.

    The prv accountant raises FedVaultError when the rdp epsilon exceeds PRV_MAX_EPSILON.
    """
    cls = _accountant_class(accountant)
    delta = _check_delta(delta, None)
    for event in events:
        if not isinstance(event, PrivacyEvent):
            raise TypeError(f"expected PrivacyEvent, got {type(event).__name__}")
    if not events:
        return 0.0
    history = _history(events)
    if accountant == "prv":
        rdp_epsilon = _opacus_epsilon(_accountant_class("rdp"), history, delta)
        if rdp_epsilon > PRV_MAX_EPSILON:
            raise FedVaultError(
                f"epsilon is {rdp_epsilon:.4g} under rdp, above {PRV_MAX_EPSILON:g} where the "
                "prv accountant is not run (its cost grows with epsilon): add noise, train "
                "less, or use the rdp accountant"
            )
    return _opacus_epsilon(cls, history, delta)


def _opacus_epsilon(
    cls: type[IAccountant], history: list[tuple[float, float, int]], delta: float
) -> float:
    acct = cls()
    acct.history = history
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        # RDP warns when the best order is at the edge of its grid (the bound stays valid);
        # PRV takes log(1 - q) = -inf when q = 1, which it handles.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        return float(acct.get_epsilon(delta=delta))


def _smallest_passing(passes: Callable[[int], bool], lo: int, hi: int) -> int:
    """Smallest k in (lo, hi] with passes(k), given not passes(lo) (or lo = 0) and passes(hi)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi


def solve_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "prv",
    prior_events: Sequence[PrivacyEvent] = (),
) -> float:
    """Smallest sigma, on a 0.001 grid, keeping prior_events + this run within target_epsilon.

    The result is exact on its grid: epsilon(sigma) <= target and epsilon(sigma - 0.001) >
    target, both computed by `accountant` (for prv, a sigma whose rdp epsilon is above
    PRV_MAX_EPSILON counts as exceeding). The clip norm does not affect epsilon, so the
    candidate event uses C = 1. Raises FedVaultError if even sigma = 100 does not fit.
    """
    _accountant_class(accountant)
    validate_dp_params(
        target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=steps
    )
    if accountant == "prv" and target_epsilon > PRV_MAX_EPSILON:
        raise FedVaultError(
            f"target epsilon {target_epsilon:g} is above {PRV_MAX_EPSILON:g}, the largest the "
            "prv accountant is run for; use the rdp accountant"
        )
    prior = list(prior_events)
    cache: dict[int, bool] = {}

    def passes(k: int) -> bool:
        if k not in cache:
            event = PrivacyEvent(
                noise_multiplier=k / SIGMA_STEPS_PER_UNIT,
                sample_rate=sample_rate,
                steps=steps,
                clip_norm=1.0,
            )
            events = [*prior, event]
            cache[k] = (
                accountant == "rdp" or compute_epsilon(events, delta, "rdp") <= PRV_MAX_EPSILON
            ) and compute_epsilon(events, delta, accountant) <= target_epsilon
        return cache[k]

    k_max = round(MAX_NOISE_MULTIPLIER * SIGMA_STEPS_PER_UNIT)
    if not passes(k_max):
        spent = compute_epsilon(prior, delta, accountant)
        if spent >= target_epsilon:
            raise FedVaultError(
                f"earlier training already spent epsilon {spent:.4g} ({accountant}) of the "
                f"target {target_epsilon:g}: no noise level allows more training"
            )
        raise FedVaultError(
            f"target epsilon {target_epsilon:g} is out of reach: even noise multiplier "
            f"{MAX_NOISE_MULTIPLIER:g} exceeds it ({accountant}, q = {sample_rate:.4g}, "
            f"{steps} steps); train fewer steps, use larger data, or allow a larger epsilon"
        )
    if accountant == "rdp":
        return _smallest_passing(passes, 0, k_max) / SIGMA_STEPS_PER_UNIT
    # RDP is looser than PRV, so its cheap solution brackets the PRV one from above.
    rdp_sigma = solve_noise_multiplier(target_epsilon, delta, sample_rate, steps, "rdp", prior)
    hi = round(rdp_sigma * SIGMA_STEPS_PER_UNIT)
    if not passes(hi):
        hi = _smallest_passing(passes, hi, k_max)
    lo = hi
    while lo > 0 and passes(lo):
        hi, lo = lo, math.floor(lo * 0.9)
    return _smallest_passing(passes, lo, hi) / SIGMA_STEPS_PER_UNIT
