"""Client-level privacy accounting: recorded events in, epsilon out, via Google's dp-accounting.

The ledger records mechanisms (`ClientDpEvent`), never epsilons; epsilon is derived by a named
accountant, so anyone can recompute it. The unit of privacy is one client (a whole site):
neighbouring federations differ in one client's entire data.

How each recorded sampling scheme is analysed (it must be the scheme that actually ran):

| sampling | dp-accounting event                                  | adjacency         | RDP | PLD |
|----------|------------------------------------------------------|-------------------|-----|-----|
| poisson  | PoissonSampledDpEvent(q, GaussianDpEvent(sigma))     | add/remove one    | yes | yes |
| none     | GaussianDpEvent(sigma)                               | add/remove one    | yes | yes |
| fixed    | SampledWithoutReplacementDpEvent(N, m, Gaussian(sigma / 2)) | replace one | yes | no  |

dp-accounting analyses sampling without replacement only under replace-one adjacency (N is
public; one client's data is swapped for another's). Swapping moves the sum of clipped
updates by up to 2C, not C, so the multiplier given to the accountant is sigma / 2 (its
`noise_multiplier` is the noise std over the l2-sensitivity). A ledger holding fixed-size
rounds is accounted under replace-one throughout: its `none` rounds become
GaussianDpEvent(sigma / 2) too. Poisson and fixed-size rounds cannot share one ledger (no
dp-accounting accountant handles both under one adjacency): that is refused. dp-accounting
0.6's PLD accountant has no sampling-without-replacement support; asking it is refused
with a message naming the RDP accountant.

Adaptive clipping is accounted with the total sigma it was configured with (see
`privacy.client_dp.adaptive`): the update noise and the count noise together form one
Gaussian mechanism with that sigma, under either adjacency.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import dp_accounting
from dp_accounting import pld, rdp

from privacy.client_dp import adaptive, checks
from privacy.errors import FedVaultError

Sampling = Literal["poisson", "fixed", "none"]
Accountant = Literal["rdp", "pld"]
Adjacency = Literal["add_or_remove_one", "replace_one"]

SAMPLINGS: tuple[str, ...] = ("poisson", "fixed", "none")
ACCOUNTANTS: tuple[str, ...] = ("rdp", "pld")


@dataclass(frozen=True)
class ClientDpEvent:
    """`rounds` rounds of DP-FedAvg with the same settings, as one ledger row.

    noise_multiplier: sigma, the noise std on the SUM of clipped updates divided by C; for
        adaptive clipping the total sigma the accountant is charged (update noise and count
        noise together).
    sampling: "poisson" (rate `sampling_rate`), "fixed" (`sample_size` of `population`) or
        "none" (every client every round).
    clip_norm: C used (for adaptive clipping: the clip norm of the first of these rounds;
        record one row per round to keep every value). It does not enter epsilon.
    adaptive: whether the clip norm was estimated privately; then `count_noise_std` is the
        std sigma_b of the noise on the clipped count.
    """

    noise_multiplier: float
    sampling: Sampling
    rounds: int
    clip_norm: float
    adaptive: bool = False
    sampling_rate: float | None = None
    sample_size: int | None = None
    population: int | None = None
    count_noise_std: float | None = None

    def __post_init__(self) -> None:
        fix = object.__setattr__
        fix(self, "noise_multiplier", checks.noise_multiplier(self.noise_multiplier))
        fix(self, "rounds", checks.count("number of rounds", self.rounds))
        fix(self, "clip_norm", checks.clip_norm(self.clip_norm))
        if self.sampling not in SAMPLINGS:
            raise FedVaultError(
                f"client sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}"
            )
        self._check_sampling_fields()
        if not isinstance(self.adaptive, bool):
            raise FedVaultError(f"adaptive must be true or false, got {self.adaptive!r}")
        if self.adaptive:
            if self.count_noise_std is None:
                raise FedVaultError("an adaptive-clipping event needs count_noise_std")
            adaptive.update_noise_multiplier(self.noise_multiplier, self.count_noise_std)
            fix(self, "count_noise_std", float(self.count_noise_std))
        elif self.count_noise_std is not None:
            raise FedVaultError("count_noise_std is only meaningful with adaptive clipping")

    def _check_sampling_fields(self) -> None:
        given = {
            "sampling_rate": self.sampling_rate,
            "sample_size": self.sample_size,
            "population": self.population,
        }
        needed = {
            "poisson": {"sampling_rate"},
            "fixed": {"sample_size", "population"},
            "none": set(),
        }[self.sampling]
        for name, value in given.items():
            if name in needed and value is None:
                raise FedVaultError(f"{self.sampling} client sampling needs {name}")
            if name not in needed and value is not None:
                raise FedVaultError(f"{name} does not apply to {self.sampling} client sampling")
        if self.sampling == "poisson":
            object.__setattr__(self, "sampling_rate", checks.sampling_rate(self.sampling_rate))
        if self.sampling == "fixed":
            population = checks.count("client population", self.population)
            size = checks.count("number of sampled clients", self.sample_size)
            if size > population:
                raise FedVaultError(
                    f"cannot sample {size} clients per round from a population of {population}"
                )
            object.__setattr__(self, "population", population)
            object.__setattr__(self, "sample_size", size)

    @property
    def quantile_budget_share(self) -> float:
        """Part of each round's budget spent on the clip-norm quantile (0 if not adaptive)."""
        if not self.adaptive:
            return 0.0
        return adaptive.quantile_budget_share(self.noise_multiplier, self.count_noise_std)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready ledger row with every field (unused ones as None)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> ClientDpEvent:
        """Rebuild an event from `to_dict` output; unknown or missing keys are refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(row) - names)
        if unknown:
            raise FedVaultError(f"client DP ledger row has unknown fields: {', '.join(unknown)}")
        required = ("noise_multiplier", "sampling", "rounds", "clip_norm")
        missing = [name for name in required if name not in row]
        if missing:
            raise FedVaultError(f"client DP ledger row lacks fields: {', '.join(missing)}")
        return cls(**dict(row))


def ledger_adjacency(events: Iterable[ClientDpEvent]) -> Adjacency:
    """The neighbouring relation the ledger is accounted under (see the module docstring)."""
    samplings = {event.sampling for event in events}
    if {"poisson", "fixed"} <= samplings:
        raise FedVaultError(
            "a client DP ledger cannot mix Poisson and fixed-size client sampling: they are "
            "accounted under different adjacency relations"
        )
    return "replace_one" if "fixed" in samplings else "add_or_remove_one"


def to_dp_event(events: Iterable[ClientDpEvent]) -> dp_accounting.DpEvent:
    """The whole ledger as one dp-accounting event, rounds of equal settings batched.

    Rows whose dp-accounting event is identical (same sigma and sampling) are merged into one
    SelfComposedDpEvent with the summed round count; composition order does not matter.
    """
    events = list(events)
    adjacency = ledger_adjacency(events)
    rounds_by_event: dict[dp_accounting.DpEvent, int] = {}
    for event in events:
        single = _single_round_event(event, adjacency)
        rounds_by_event[single] = rounds_by_event.get(single, 0) + event.rounds
    return dp_accounting.ComposedDpEvent(
        [dp_accounting.SelfComposedDpEvent(e, n) for e, n in rounds_by_event.items()]
    )


def client_level_epsilon(
    events: Iterable[ClientDpEvent], delta: float, accountant: Accountant = "rdp"
) -> float:
    """Client-level epsilon at `delta` of all `events` composed (0.0 for no events)."""
    events = list(events)
    delta = checks.delta(delta)
    if accountant not in ACCOUNTANTS:
        raise FedVaultError(
            f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}"
        )
    if not events:
        return 0.0
    adjacency = ledger_adjacency(events)
    if accountant == "pld" and adjacency == "replace_one":
        raise FedVaultError(
            "the PLD accountant of dp-accounting does not support fixed-size client sampling "
            "(sampling without replacement); use the rdp accountant"
        )
    relation = {
        "add_or_remove_one": dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
        "replace_one": dp_accounting.NeighboringRelation.REPLACE_ONE,
    }[adjacency]
    if accountant == "rdp":
        engine: dp_accounting.PrivacyAccountant = rdp.RdpAccountant(neighboring_relation=relation)
    else:
        engine = pld.PLDAccountant(neighboring_relation=relation)
    engine.compose(to_dp_event(events))
    return float(engine.get_epsilon(delta))


def would_exceed(
    events: Iterable[ClientDpEvent],
    next_event: ClientDpEvent,
    delta: float,
    max_epsilon: float,
    accountant: Accountant = "rdp",
) -> bool:
    """True when releasing `next_event` after `events` would push epsilon above `max_epsilon`.

    Ask before the round's release: when it returns True, do not release, and stop.
    """
    max_epsilon = checks.positive("maximum client-level epsilon", max_epsilon)
    epsilon = client_level_epsilon([*events, next_event], delta, accountant)
    return not epsilon <= max_epsilon


def _single_round_event(event: ClientDpEvent, adjacency: Adjacency) -> dp_accounting.DpEvent:
    if event.noise_multiplier == 0:
        return dp_accounting.NonPrivateDpEvent()
    # Under replace-one the sum of clipped updates moves by up to 2C.
    scale = 2.0 if adjacency == "replace_one" else 1.0
    gaussian = dp_accounting.GaussianDpEvent(event.noise_multiplier / scale)
    if event.sampling == "poisson":
        return dp_accounting.PoissonSampledDpEvent(event.sampling_rate, gaussian)
    if event.sampling == "fixed":
        return dp_accounting.SampledWithoutReplacementDpEvent(
            event.population, event.sample_size, gaussian
        )
    return gaussian
