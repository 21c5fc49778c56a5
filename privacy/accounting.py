"""Sample-level privacy accounting: privacy events in, epsilon out.

A site records what its DP-SGD training did (noise multiplier, sampling rate, steps, clip
norm) as `PrivacyEvent`s, never an epsilon: epsilon is derived from the events by a named
Opacus accountant, so anyone holding the events can recompute and check it, under either
accountant. The same module calibrates sigma for a target epsilon, counting what was already
spent, and validates DP parameters with one-line errors a site operator can act on.

Two mechanisms. `poisson_subsampled_gaussian` is local DP-SGD (Opacus' accountants, exact
for the Gaussian). `poisson_subsampled_skellam` is one step of distributed DP-SGD
(privacy/distributed_noise.py): the integer sum of the sites' rounded gradient sums plus
Skellam noise whose variance is guaranteed by the honest shares. Its per-step RDP is
Agarwal, Kairouz and Liu (NeurIPS 2021, Cor. 3.6) at the L2 and L1 sensitivities that
stochastic rounding leaves (each coordinate moves by less than one more unit); Poisson
subsampling is the binomial expansion of Mironov, Talwar and Zhang (2019, Sec. 3.3), which
is exact for the removal neighbour and, for the addition neighbour, proven for the Gaussian;
for the Skellam it is checked numerically (tests/test_distributed_accounting.py) and stated
in the report as the accounting's assumption. Histories with Skellam steps compose under
RDP on integer orders (Opacus' RDP of the Gaussian steps at the same orders, Opacus'
conversion to epsilon); the PRV accountant refuses them with one line.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import numpy as np

from privacy.errors import FedVaultError

if TYPE_CHECKING:
    from opacus.accountants.accountant import IAccountant

GAUSSIAN = "poisson_subsampled_gaussian"
SKELLAM = "poisson_subsampled_skellam"
MECHANISMS = (GAUSSIAN, SKELLAM)
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
_SKELLAM_FIELDS = ("dimension", "scale")
# Integer orders: the subsampled bound for a general mechanism is a finite binomial sum.
SKELLAM_ORDERS = tuple(range(2, 257))


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
    """One DP mechanism run: `steps` Poisson-subsampled steps at rate q, noise std sigma*C.

    A Skellam step also names the vector's `dimension` and the `scale` (integer units per
    unit of gradient) it was rounded at: both set its sensitivity after rounding.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float
    mechanism: str = GAUSSIAN
    adjacency: str = "add_remove"
    dimension: int = 0
    scale: float = 0.0

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
        if self.mechanism == SKELLAM:
            object.__setattr__(self, "dimension", _positive_count("dimension", self.dimension))
            object.__setattr__(self, "scale", _finite_positive("scale", self.scale))
        elif self.dimension or self.scale:
            raise FedVaultError("dimension and scale belong to Skellam events only")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict with every field of its mechanism; `from_dict` reads it back."""
        data = asdict(self)
        if self.mechanism != SKELLAM:
            for key in _SKELLAM_FIELDS:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyEvent:
        """Read `to_dict` output; missing or unknown keys and bad values raise FedVaultError.

        Memoised on the dict's items: a ledger holds the same event hundreds of times.
        """
        if not isinstance(data, Mapping):
            raise FedVaultError(f"privacy event must be a JSON object, got {type(data).__name__}")
        try:
            items = tuple(sorted(data.items()))
            hash(items)
        except TypeError:
            return _event_from_items(cls, tuple(data.items()))
        return _cached_event(cls, items)


def _event_from_items(cls: type[PrivacyEvent], items: tuple) -> PrivacyEvent:
    data = dict(items)
    fields = _EVENT_FIELDS + (_SKELLAM_FIELDS if data.get("mechanism") == SKELLAM else ())
    missing = sorted(set(fields) - set(data))
    unknown = sorted(set(data) - set(fields))
    if missing or unknown:
        raise FedVaultError(f"privacy event has missing keys {missing} / unknown keys {unknown}")
    return cls(**{key: data[key] for key in fields})


_cached_event = functools.lru_cache(maxsize=4096)(_event_from_items)


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


def skellam_step_rdp(event: PrivacyEvent, orders: Sequence[int] = SKELLAM_ORDERS) -> np.ndarray:
    """RDP of ONE Poisson-subsampled Skellam step of `event`, at integer `orders`."""
    return np.array(_skellam_step_rdp(replace(event, steps=1), tuple(orders)))


@functools.lru_cache(maxsize=256)
def _skellam_step_rdp(event: PrivacyEvent, orders: tuple[int, ...]) -> tuple[float, ...]:
    """The curve, memoised: a site accounts the same step every round of a run."""
    if event.mechanism != SKELLAM:
        raise FedVaultError(f"not a Skellam event: {event.mechanism}")
    scaled_clip = event.scale * event.clip_norm
    l2 = scaled_clip + math.sqrt(event.dimension)
    l1 = math.sqrt(event.dimension) * scaled_clip + event.dimension
    variance = (event.noise_multiplier * scaled_clip) ** 2
    alphas = np.arange(2, max(orders) + 1, dtype=np.float64)
    base = alphas * l2**2 / (2 * variance) + np.minimum(
        ((2 * alphas - 1) * l2**2 + 6 * l1) / (4 * variance**2), 3 * l1 / (2 * variance)
    )
    return tuple(_subsampled_rdp(event.sample_rate, base, int(a)) for a in orders)


def _subsampled_rdp(q: float, base: np.ndarray, alpha: int) -> float:
    """(1/(alpha-1)) log of sum_j C(alpha, j) (1-q)^(alpha-j) q^j e^((j-1) eps(j)).

    `base[j - 2]` is the unsampled RDP at order j; terms j = 0 and 1 fold into
    (1-q)^(alpha-1) (1 + (alpha-1) q).
    """
    if q == 1.0:
        return float(base[alpha - 2])
    from scipy.special import gammaln, logsumexp

    j = np.arange(2, alpha + 1, dtype=np.float64)
    log_binom = gammaln(alpha + 1) - gammaln(j + 1) - gammaln(alpha - j + 1)
    terms = log_binom + j * math.log(q) + (alpha - j) * math.log1p(-q) + (j - 1) * base[: alpha - 1]
    first = (alpha - 1) * math.log1p(-q) + math.log1p((alpha - 1) * q)
    return float(logsumexp(np.append(terms, first)) / (alpha - 1))


def merged(events: Sequence[PrivacyEvent]) -> list[PrivacyEvent]:
    """The events with repeats folded into one (steps summed), in order of first use.

    Composition is commutative, so every epsilon is unchanged; a history of hundreds of equal
    distributed steps travels and composes as one event.
    """
    first: dict[tuple, PrivacyEvent] = {}
    steps: dict[tuple, int] = {}
    for event in events:
        key = (
            event.mechanism,
            event.noise_multiplier,
            event.sample_rate,
            event.clip_norm,
            event.adjacency,
            event.dimension,
            event.scale,
        )
        first.setdefault(key, event)
        steps[key] = steps.get(key, 0) + event.steps
    return [
        first[key] if first[key].steps == count else replace(first[key], steps=count)
        for key, count in steps.items()
    ]


def _integer_order_epsilon(events: Sequence[PrivacyEvent], delta: float) -> float:
    """RDP composition of Gaussian and Skellam steps on SKELLAM_ORDERS, then epsilon."""
    from opacus.accountants.analysis import rdp as opacus_rdp

    orders = list(SKELLAM_ORDERS)
    total = np.zeros(len(orders))
    for event in merged(events):
        if event.mechanism == SKELLAM:
            total += event.steps * skellam_step_rdp(event, orders)
        else:
            total += np.asarray(
                opacus_rdp.compute_rdp(
                    q=event.sample_rate,
                    noise_multiplier=event.noise_multiplier,
                    steps=event.steps,
                    orders=orders,
                )
            )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        epsilon, _ = opacus_rdp.get_privacy_spent(orders=orders, rdp=total, delta=delta)
    return float(epsilon)


def _history(events: Sequence[PrivacyEvent]) -> tuple[tuple[float, float, int], ...]:
    """Opacus history with one entry per distinct (sigma, q) (the clip norm does not count).

    Composition is commutative, so merging is exact; it keeps PRV fast, whose cost grows with
    the number of distinct entries, not with steps.
    """
    unit_clip = [replace(event, clip_norm=1.0) for event in events]
    return tuple((e.noise_multiplier, e.sample_rate, e.steps) for e in merged(unit_clip))


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
    if any(event.mechanism == SKELLAM for event in events):
        if accountant != "rdp":
            raise FedVaultError(
                f"distributed (Skellam) steps are composed by the rdp accountant only, "
                f"not {accountant}: set accountant = rdp"
            )
        return _integer_order_epsilon(events, delta)
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


@functools.lru_cache(maxsize=256)
def _opacus_epsilon(
    cls: type[IAccountant], history: tuple[tuple[float, float, int], ...], delta: float
) -> float:
    """Memoised: a site composes the same history more than once a round (the prv guard's
    rdp bound, then the rdp epsilon it reports), each a fraction of a second."""
    acct = cls()
    acct.history = list(history)
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
