"""The site's budget guard: plan a release, reserve its cost atomically, or refuse it.

The site's ledger (one per dataset identity, in its state directory) holds every privacy
event its data has been through, across rounds and runs; epsilon is derived from those
events. Before a release (a round of DP-SGD, an evaluation) the site checks the request
against its floor, then reserves the cost in one exclusive ledger transaction that
re-checks the whole history against its own `max-epsilon`; only then is data touched.
Every way a budget can run out ends in a `Refused`, recorded in the site's ledger, never in
an error. Budget, delta and floor come from the site, never from the server.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from flwr.app import ConfigRecord, RecordDict

from client.dp_plan import DpSgd, poisson_plan
from client.site import Site, site_identity
from privacy.accounting import PrivacyEvent, compute_epsilon, merged, solve_noise_multiplier
from privacy.distributed_noise import NoiseShares
from privacy.dp_ledger import (
    PLAIN_RELEASE,
    Refused,
    Reservation,
    Spending,
    cancel,
    commit,
    record_refusal,
    reserve,
    spent_events,
)
from privacy.errors import FedVaultError
from privacy.identity import encode_signature, ledger_head_bytes
from privacy.ledger import Ledger
from tasks.settings import RunSettings

PLAN_KEY = "dp-plan"
RATE_SEARCH_STEPS = 30  # bisection steps for a distributed step's sampling rate
CHECK_KEY = "dp-check"
EVALUATION_COORDINATES = 3  # correct predictions, clipped loss, examples: sensitivity 1 each
LEDGER_KIND = "site"


def ledger_path_for(site: Site, task_name: str) -> tuple[Any, str]:
    """Where the ledger of this site's data lies, and the dataset identity it is bound to."""
    identity = site.dataset_identity(task_name)
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]
    return site.state_dir / f"ledger-{digest}.sqlite", identity


def evaluation_event(noise_multiplier: float) -> PrivacyEvent:
    """One DP evaluation: a Gaussian release of three sums, each of sensitivity 1."""
    return PrivacyEvent(
        noise_multiplier=noise_multiplier,
        sample_rate=1.0,
        steps=1,
        clip_norm=math.sqrt(EVALUATION_COORDINATES),
    )


@dataclass
class SiteBudget:
    """A site's ledger plus the request's mechanism settings and the site's own limits."""

    site: Site
    settings: RunSettings
    ledger: Ledger
    state: RecordDict

    @classmethod
    def open(cls, site: Site, settings: RunSettings, state: RecordDict) -> SiteBudget:
        """The site's budget for the data this request is about (its ledger, opened)."""
        path, identity = ledger_path_for(site, settings.task.name)
        ledger = Ledger.open(path, LEDGER_KIND, dataset=identity)
        return cls(site, settings, ledger, state)

    # -- planning ---------------------------------------------------------------------------

    def plan_training(self, server_round: int, num_records: int) -> tuple[DpSgd, PrivacyEvent]:
        """This round's DP-SGD and its event: the requested noise, or the noise planned for
        the rounds left, never below the site's floor (more privacy than asked is allowed).
        """
        site, s = self.site, self.settings
        self._check_delta(num_records)
        q, steps = poisson_plan(num_records, s.batch_size, s.local_epochs)
        sigma = s.noise_multiplier or self._planned_sigma(server_round, q, steps)
        sigma = max(sigma, site.floor.min_noise_multiplier)
        dp = DpSgd(sigma, s.clip_norm, q, s.grad_sample_mode)
        event = PrivacyEvent(
            noise_multiplier=sigma, sample_rate=q, steps=steps, clip_norm=s.clip_norm
        )
        return dp, event

    def plan_step(
        self, server_round: int, num_records: int, threshold: int, dimension: int
    ) -> tuple[NoiseShares, PrivacyEvent, PrivacyEvent]:
        """A distributed DP-SGD step: the noise shares, the step's event and its fallback.

        The noise is the run's (every site adds the same share, or none could count on the
        others'); the sampling rate is the site's own: batch-size / records, lowered where
        needed so that the rounds left stay within the run's target and the site's budget.
        """
        s = self.settings
        self._check_delta(num_records)
        try:
            shares = NoiseShares(
                s.noise_multiplier, s.clip_norm, threshold, s.dp_colluders, dimension
            )
        except FedVaultError as exc:
            raise self._below_floor("tolerated-colluders", str(exc), server_round) from None
        q = self._planned_rate(server_round, num_records, shares)
        return shares, shares.event(q), shares.fallback_event(q)

    def _planned_rate(self, server_round: int, num_records: int, shares: NoiseShares) -> float:
        """The largest rate <= batch/records keeping the rounds left within target, per run."""
        cached = self.state.get(PLAN_KEY)
        if cached is not None and "sample-rate" in cached:
            return float(cached["sample-rate"])
        s = self.settings
        rounds_left = s.num_rounds - server_round + 1
        target = min(s.target_epsilon or self.site.max_epsilon, self.site.max_epsilon)
        history = spent_events(self.ledger)

        def fits(q: float) -> bool:
            event = replace(shares.event(q), steps=rounds_left)
            return self._epsilon([*history, event]) <= target

        high = min(1.0, s.batch_size / num_records)
        if not fits(high):
            low = 0.0
            for _ in range(RATE_SEARCH_STEPS):
                middle = (low + high) / 2
                low, high = (middle, high) if fits(middle) else (low, middle)
            if low * num_records < 1:
                raise self._exhausted(
                    f"{rounds_left} distributed steps at noise multiplier "
                    f"{s.noise_multiplier:g} exceed epsilon {target:g} even at a batch of one "
                    "record: raise the noise or run fewer rounds",
                    server_round,
                    history,
                )
            high = low
        self.state[PLAN_KEY] = ConfigRecord({"sample-rate": high, "from-round": server_round})
        return high

    def _check_delta(self, num_records: int) -> None:
        if self.site.delta * num_records >= 1:
            raise FedVaultError(
                f"{self.site.name}: delta {self.site.delta:g} must be below 1/records = "
                f"{1 / num_records:.2e} (otherwise a record may leak with probability delta)"
            )

    def _planned_sigma(self, server_round: int, q: float, steps: int) -> float:
        """Sigma reaching the request's target over the rounds left, solved once per run."""
        cached = self.state.get(PLAN_KEY)
        if cached is not None:
            return float(cached["noise-multiplier"])
        s = self.settings
        rounds_left = s.num_rounds - server_round + 1
        target = min(s.target_epsilon, self.site.max_epsilon)
        history = spent_events(self.ledger)
        try:
            sigma = solve_noise_multiplier(
                target, self.site.delta, q, steps * rounds_left, s.accountant, prior_events=history
            )
        except FedVaultError as exc:
            raise self._exhausted(str(exc), server_round, history) from None
        self.state[PLAN_KEY] = ConfigRecord({"noise-multiplier": sigma, "from-round": server_round})
        return sigma

    # -- checking and reserving -------------------------------------------------------------

    def check(self, event: PrivacyEvent, server_round: int) -> Callable[[list], dict[str, Any]]:
        """The budget check `reserve` runs on the history it reads under its lock."""

        def against(history: list[PrivacyEvent]) -> dict[str, Any]:
            per_round = self.site.floor.max_epsilon_per_round
            if per_round > 0:
                alone = self._epsilon([event])
                if alone > per_round:
                    raise self._below_floor(
                        "max-epsilon-per-round",
                        f"this release alone costs epsilon {alone:.3f}, above the site's "
                        f"per-round limit {per_round:g}",
                        server_round,
                    )
            after = self._epsilon_after(history, event)
            if after > self.site.max_epsilon:
                raise self._exhausted(
                    f"epsilon {self._epsilon(history):.3f} spent, this release would reach "
                    f"{after:.3f} > max {self.site.max_epsilon:g}",
                    server_round,
                    history,
                    after,
                )
            return {"epsilon-after": after}

        return against

    def dry_run(self, event: PrivacyEvent, server_round: int) -> None:
        """Refuse now if the release would be refused at reservation (nothing is recorded)."""
        self.check(event, server_round)(spent_events(self.ledger))

    def reserve(self, reservation: Reservation) -> float:
        """Reserve the release's cost in the ledger; its epsilon after, or `Refused`."""
        row = reserve(self.ledger, reservation, self.check(reservation.event, reservation.round))
        return float(row.payload["epsilon-after"])

    def record(self, refusal: Refused) -> None:
        """Keep a refusal in the site's own ledger."""
        record_refusal(self.ledger, refusal)

    def commit(self, reservation: Reservation) -> None:
        commit(self.ledger, reservation)

    def cancel(self, reservation: Reservation, reason: str) -> None:
        cancel(self.ledger, reservation, reason)

    def record_plain_release(self, run_id: str, server_round: int, purpose: str) -> None:
        """A release without DP, allowed by the site's floor: its epsilon is unbounded."""
        self.ledger.append(
            PLAIN_RELEASE, {"run_id": run_id, "round": server_round, "purpose": purpose}
        )

    def summary(self, reservation: Reservation, epsilon: float) -> dict[str, Any]:
        """What the site tells the server about its spending (events, not just epsilon)."""
        all_rows = self.ledger.rows()
        spending = Spending.of(all_rows)
        history = spending.events
        head, rows = self.ledger.head(), len(all_rows)
        dataset = hashlib.sha256(str(self.ledger.dataset).encode("utf-8")).hexdigest()
        extra: dict[str, Any] = {}
        fallback = spending.fallback_events
        if fallback != history:
            extra["fallback-epsilon"] = compute_epsilon(fallback, self.site.delta, "rdp")
        identity = site_identity(self.site)
        if identity is not None:
            statement = ledger_head_bytes(identity.name, dataset, head, rows)
            extra["head-signature"] = encode_signature(identity.sign(statement))
        return {
            "site": self.site.name,
            "purpose": reservation.purpose,
            "delta": self.site.delta,
            "max-epsilon": self.site.max_epsilon,
            "epsilon": epsilon,
            "epsilon-rdp": compute_epsilon(history, self.site.delta, "rdp"),
            "accountant": self.settings.accountant,
            "event": reservation.event.to_dict(),
            "events": [e.to_dict() for e in merged(history)],
            "releases": len(history),
            "ledger-head": head,
            "ledger-rows": rows,
            "dataset-sha256": dataset,
            **extra,
            **reservation.details,
        }

    # -- helpers ----------------------------------------------------------------------------

    def _epsilon(self, events: list[PrivacyEvent]) -> float:
        try:
            return compute_epsilon(events, self.site.delta, self.settings.accountant)
        except FedVaultError:
            return math.inf  # beyond what the accountant computes: no budget covers it

    def _epsilon_after(self, history: list[PrivacyEvent], event: PrivacyEvent) -> float:
        """Epsilon once `event` is spent; computed once per history (it is costly).

        Under secure aggregation a site checks at setup and again when it reserves; the
        value is reused only for the same history and event.
        """
        folded = merged([*history, event])  # same epsilon, a few events instead of hundreds
        key = hashlib.sha256(
            json.dumps([e.to_dict() for e in folded], sort_keys=True).encode()
        ).hexdigest()
        cached = self.state.get(CHECK_KEY)
        if cached is not None and cached.get("key") == key:
            return float(cached["epsilon-after"])
        after = self._epsilon([*history, event])
        if math.isfinite(after):
            self.state[CHECK_KEY] = ConfigRecord({"key": key, "epsilon-after": after})
        return after

    def _below_floor(self, key: str, message: str, server_round: int) -> Refused:
        return Refused(
            "below-floor",
            f"{self.site.name}: {message}",
            site=self.site.name,
            floor=key,
            round=server_round,
        )

    def _exhausted(
        self,
        message: str,
        server_round: int,
        history: list[PrivacyEvent],
        after: float | None = None,
    ) -> Refused:
        details: dict[str, Any] = {
            "site": self.site.name,
            "round": server_round,
            "epsilon-spent": _finite(self._epsilon(history)),
            "max-epsilon": self.site.max_epsilon,
        }
        if after is not None:
            details["epsilon-after-round"] = _finite(after)
        return Refused(
            "budget-exhausted", f"{self.site.name}: budget exhausted: {message}", **details
        )

    def __enter__(self) -> SiteBudget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.ledger.close()


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
