"""A site's spending in its ledger: reserve before any data is touched, then commit or cancel.

The one place that knows how privacy spending is laid out in a ledger. Every release a site
makes (a round of training, an evaluation) is first a "dp_reserve" row, appended inside one
exclusive transaction that re-reads the whole history and re-checks the budget, so two runs
on one site are serialised and never overspend together. After the release it is confirmed
("dp_commit"); if nothing left the site it is voided ("dp_cancel"). A reservation that was
never confirmed nor voided (a crash in between) still counts: a crash over-counts, it never
under-counts.

A reservation is named by (run, round, purpose), and within one run and purpose the rounds
must increase: a replayed or out-of-order request is refused before anything is spent.

Payloads:
- dp_reserve: {"id", "run_id", "round", "purpose", "event": PrivacyEvent.to_dict(), ...};
  a distributed DP-SGD step also holds "fallback-event": what the site's own noise share
  alone would give if secure aggregation failed to hide its vector.
- dp_commit / dp_cancel: {"id", ...}
- refusal: {"reason", "message", "run_id", "round", ...}
- plain_release: {"run_id", "round", "purpose"}: a release without DP, which a site allows
  only by setting require-dp = false; from then on its data has no finite epsilon.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from privacy.accounting import PrivacyEvent
from privacy.errors import FedVaultError
from privacy.ledger import Ledger, Row

RESERVE = "dp_reserve"
COMMIT = "dp_commit"
CANCEL = "dp_cancel"
REFUSAL = "refusal"
PLAIN_RELEASE = "plain_release"
PURPOSES = ("train", "evaluate")


class Refused(FedVaultError):
    """A request the site declines; `reason` is a stable tag, `details` go on the record."""

    def __init__(self, reason: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.reason = reason
        self.details = details

    def to_record(self) -> dict[str, Any]:
        return {"reason": self.reason, "message": str(self), **self.details}


@dataclass(frozen=True)
class Reservation:
    """One release a site is about to make, and the privacy event it costs."""

    run_id: str
    round: int
    purpose: str
    event: PrivacyEvent
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.run_id, str) or not self.run_id:
            raise ValueError(f"run_id must be a non-empty string, got {self.run_id!r}")
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            raise ValueError(f"round must be an int >= 0, got {self.round!r}")
        if self.purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}, got {self.purpose!r}")

    @property
    def id(self) -> str:
        return f"{self.run_id}/{self.round}/{self.purpose}"


@dataclass
class Spending:
    """A ledger's spending, read from its rows."""

    reserved: dict[str, Row] = field(default_factory=dict)
    committed: set[str] = field(default_factory=set)
    cancelled: set[str] = field(default_factory=set)
    # the events of each reserve row held, read once: a report asks at every round
    _parsed: dict[str, dict[str, PrivacyEvent]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @classmethod
    def of(cls, rows: Sequence[Row]) -> Spending:
        spending = cls()
        for row in rows:
            spending.add(row)
        return spending

    def add(self, row: Row) -> None:
        """Take the next row of the ledger into account."""
        if row.kind == RESERVE:
            spend_id = str(row.payload["id"])
            self.reserved[spend_id] = row
            self._parsed.pop(spend_id, None)
        elif row.kind == COMMIT:
            self.committed.add(str(row.payload["id"]))
        elif row.kind == CANCEL:
            self.cancelled.add(str(row.payload["id"]))

    @property
    def events(self) -> list[PrivacyEvent]:
        """Every event that counts: committed, and pending (not cancelled), in order."""
        return self._events("event")

    @property
    def fallback_events(self) -> list[PrivacyEvent]:
        """The same, with each distributed step as the site's own share alone would give it."""
        return self._events("fallback-event")

    def _events(self, key: str) -> list[PrivacyEvent]:
        events = []
        for spend_id, row in self.reserved.items():
            if spend_id in self.cancelled:
                continue
            parsed = self._parsed.setdefault(spend_id, {})
            if key not in parsed:
                if "event" not in row.payload:
                    raise FedVaultError(f"ledger row {row.seq} reserves no privacy event")
                parsed[key] = PrivacyEvent.from_dict(row.payload.get(key, row.payload["event"]))
            events.append(parsed[key])
        return events

    @property
    def pending(self) -> list[str]:
        """Reservations neither committed nor cancelled (counted as spent)."""
        done = self.committed | self.cancelled
        return [spend_id for spend_id in self.reserved if spend_id not in done]

    def last_round(self, run_id: str, purpose: str) -> int | None:
        rounds = [
            int(row.payload["round"])
            for row in self.reserved.values()
            if row.payload.get("run_id") == run_id and row.payload.get("purpose") == purpose
        ]
        return max(rounds) if rounds else None


def spent_events(ledger: Ledger) -> list[PrivacyEvent]:
    """Every privacy event that counts against the ledger's budget, in order."""
    return Spending.of(ledger.rows()).events


def reserve(
    ledger: Ledger,
    reservation: Reservation,
    check: Callable[[list[PrivacyEvent]], dict[str, Any]],
) -> Row:
    """Append the reservation if `check(history)` passes, all in one exclusive transaction.

    `check` receives every event that counts so far and raises `Refused` to decline; what it
    returns is stored on the reservation row. A replayed or out-of-order request is refused
    here, before `check` runs.
    """
    with ledger.exclusive() as tx:
        spending = Spending.of(tx.rows())
        where = {"run_id": reservation.run_id, "round": reservation.round}
        if reservation.id in spending.reserved:
            raise Refused(
                "replayed-request",
                f"{reservation.purpose} for round {reservation.round} of run "
                f"{reservation.run_id} was already answered once",
                **where,
            )
        last = spending.last_round(reservation.run_id, reservation.purpose)
        if last is not None and reservation.round < last:
            raise Refused(
                "out-of-order-request",
                f"{reservation.purpose} request for round {reservation.round} after round "
                f"{last} of run {reservation.run_id}",
                **where,
            )
        extra = check(spending.events)
        payload = {
            **reservation.details,
            **extra,
            "id": reservation.id,
            "run_id": reservation.run_id,
            "round": reservation.round,
            "purpose": reservation.purpose,
            "event": reservation.event.to_dict(),
        }
        return tx.append(RESERVE, payload)


def commit(ledger: Ledger, reservation: Reservation) -> Row:
    """The reserved release left the site."""
    return ledger.append(COMMIT, {"id": reservation.id})


def cancel(ledger: Ledger, reservation: Reservation, reason: str) -> Row:
    """Nothing of the reserved release left the site; its cost no longer counts."""
    return ledger.append(CANCEL, {"id": reservation.id, "reason": reason})


def record_refusal(ledger: Ledger, refusal: Refused) -> Row:
    """A declined request, kept in the site's own ledger."""
    return ledger.append(REFUSAL, refusal.to_record())
