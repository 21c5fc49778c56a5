"""Sample-level DP per site, recomputed from the recorded privacy events, never copied.

A site tells the server its cumulative epsilon each round ("site_round" rows), but a report
that repeated those numbers would only certify the site's arithmetic. Here every epsilon is
derived again from the events with the named accountant, the events are taken from the site's
own ledger where the run directory holds it (simulations) and checked against what the site
reported, and any difference becomes a finding in the report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from importlib.metadata import version
from typing import Any

from privacy import gdp
from privacy.accounting import (
    GAUSSIAN,
    PrivacyEvent,
    accountant_info,
    compute_epsilon,
    merged,
)
from privacy.dp_ledger import PLAIN_RELEASE, Spending
from privacy.errors import FedVaultError
from privacy.identity import Roster, decode_signature, ledger_head_bytes, verify
from privacy.ledger import Row
from privacy.report.inputs import LedgerFile, RunInputs

UNIT = "one training record (example) of a site"
ADJACENCY = "add/remove one record"
DISTRIBUTED_TRUST_MODEL = (
    "distributed: each site adds a share of the noise (Skellam, from its own CSPRNG) to its "
    "clipped gradient sum, and the full noise exists only in the secure sum, so the guarantee "
    "holds against the server and the other sites while secure aggregation hides each site's "
    "vector and no more sites collude with the server than the run assumed; each site's "
    "fallback epsilon is what its own share alone gives"
)
DISTRIBUTED_ALGORITHM = (
    "distributed DP-SGD (docs/distributed-dp.md): one step per round, per-example clipping to "
    "norm C at each site, stochastic rounding, Skellam noise shares that sum to variance "
    "(sigma C)^2 inside secure aggregation; the server's momentum step and the released "
    "model (a moving average of the iterates, iterate-average) are post-processing of the sums"
)
TRUST_MODEL = (
    "local to each site: noise is added by the site's own DP-SGD, drawn from its own CSPRNG, "
    "before its update leaves it, so the guarantee holds against the server, other sites and "
    "anyone holding the model, and does not depend on secure aggregation"
)
TUNING = (
    "counted only where it spent from the same site ledgers: earlier runs on the same data "
    "(hyperparameter search included) appear in epsilon_before_run, releases_before_run and "
    "runs_before_run; choices made on other data are outside this guarantee"
)
GDP_DEFINITION = (
    "mu-Gaussian DP (Dong, Roth, Su 2022): telling whether a record took part is no easier "
    "than telling N(0, 1) from N(mu, 1); one number that compares across accountants and deltas"
)
PERSON_LEVEL_BOUND = (
    "group privacy over the k records a person may have (cleansing's max_records_per_person): "
    "(epsilon, delta)-DP per record gives (k * epsilon, delta * (e^(k*epsilon) - 1) / "
    "(e^epsilon - 1))-DP per person, at most (k * epsilon, k * e^((k-1)*epsilon) * delta) as in "
    "Dwork and Roth 2014, Sec. 2.3; applied to the site's own (epsilon, delta); delta null when "
    "it reaches 1 (no person-level guarantee)"
)
RUNS_UNKNOWN = (
    "not known: the site reported its events, which do not say which run made them (its own "
    "ledger is not in the run directory)"
)
OUTSIDE = (
    "each site's sampling rate q = 1/ceil(N/B) and number of steps, which reveal its number "
    "of records N to within one batch (standard for DP-SGD: hyperparameters are public)",
    "the record count itself, where a site declared it public (record_count_public)",
    "the model architecture, the round settings and which sites took part",
)
CLAIM_TOLERANCE = 1e-6  # relative; the site and the report run the same deterministic code


def _key(events: Sequence[PrivacyEvent]) -> tuple:
    return tuple(
        sorted(
            (e.mechanism, e.noise_multiplier, e.sample_rate, e.steps, e.dimension, e.scale)
            for e in merged(events)
        )
    )


class EpsilonCache:
    """compute_epsilon and gdp_mu, memoised: sites with equal histories cost one computation."""

    def __init__(self) -> None:
        self._values: dict[tuple, float | None] = {}
        self._mus: dict[tuple, float | None] = {}
        self.errors: dict[tuple, str] = {}

    def __call__(self, events: Sequence[PrivacyEvent], delta: float, accountant: str) -> float:
        key = (_key(events), delta, accountant)
        if key not in self._values:
            try:
                self._values[key] = compute_epsilon(list(events), delta, accountant)
            except FedVaultError as exc:
                self._values[key] = None
                self.errors[key] = str(exc)
        value = self._values[key]
        return math.inf if value is None else value

    def mu(self, events: Sequence[PrivacyEvent]) -> float | None:
        """The events' mu-GDP (privacy.gdp), or None (with an error) where it is not computed."""
        key = (_key(events), "gdp")
        if key not in self._mus:
            try:
                self._mus[key] = gdp.gdp_mu(list(events))
            except FedVaultError as exc:
                self._mus[key] = None
                self.errors[key] = str(exc)
        return self._mus[key]


def _differs(claimed: Any, recomputed: float) -> bool:
    if not isinstance(claimed, int | float) or isinstance(claimed, bool):
        return True
    return abs(claimed - recomputed) > CLAIM_TOLERANCE * max(1.0, abs(recomputed))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class _Prefixes:
    """A site's ledgers read once: the spending up to each head the site reported.

    Heads come in ledger order, round after round, so each lookup continues where the last
    one stopped; an earlier head starts that ledger again. The spending returned is valid
    until the next lookup.
    """

    def __init__(self, files: list[LedgerFile]) -> None:
        self._where = {
            row.row_hash: (ledger, index)
            for ledger in files
            for index, row in enumerate(ledger.rows)
        }
        self._ledger: LedgerFile | None = None
        self._next = 0
        self._spending = Spending()

    def find(self, head: str) -> tuple[LedgerFile, Row, Spending] | None:
        found = self._where.get(head)
        if found is None:
            return None
        ledger, index = found
        if ledger is not self._ledger or index < self._next - 1:
            self._ledger, self._next, self._spending = ledger, 0, Spending()
        for row in ledger.rows[self._next : index + 1]:
            self._spending.add(row)
        self._next = max(self._next, index + 1)
        return ledger, ledger.rows[index], self._spending


def _head_signature(
    site: str, p: dict, roster: Roster | None, where: str, findings: list[dict[str, str]]
) -> str:
    """`valid`, `invalid`, `unsigned` or `unchecked` (no roster) for one signed ledger head."""
    signature = p.get("head-signature")
    if not isinstance(signature, str):
        findings.append(_finding("warning", f"{where}: the site did not sign its ledger head"))
        return "unsigned"
    if roster is None:
        return "unchecked"
    key = roster.key_of(site)
    if key is None:
        findings.append(_finding("error", f"{where}: {site} is not on the roster"))
        return "invalid"
    statement = ledger_head_bytes(
        site, str(p.get("dataset-sha256")), str(p.get("ledger-head")), int(p.get("ledger-rows", -1))
    )
    if not verify(key, statement, decode_signature(signature)):
        findings.append(
            _finding("error", f"{where}: the ledger head carries no valid signature of {site}")
        )
        return "invalid"
    return "valid"


def _site_round(
    site: str,
    row: Row,
    ledgers: _Prefixes,
    has_ledgers: bool,
    epsilon: EpsilonCache,
    findings: list[dict[str, str]],
    roster: Roster | None,
) -> tuple[dict[str, Any], list[PrivacyEvent], list[PrivacyEvent], int]:
    """One round of one site: its mechanism, recomputed epsilons, and the checks made.

    Also the events before this round's, and how many releases they were. The site reports
    its history merged (`accounting.merged`: equal events folded, steps summed), so the
    comparison with its ledger is made merged too.
    """
    p = row.payload
    server_round = p.get("round")
    where = f"{site} round {server_round}"
    try:
        event = PrivacyEvent.from_dict(p["event"])
        claimed_events = merged([PrivacyEvent.from_dict(e) for e in p["events"]])
        releases = int(p.get("releases", len(p["events"])))
        delta, accountant = float(p["delta"]), str(p["accountant"])
    except (KeyError, TypeError, ValueError, FedVaultError) as exc:
        raise FedVaultError(f"run ledger row {row.seq} ({where}) is malformed: {exc}") from None
    events, source, run_id, site_ledger = (
        claimed_events,
        "run ledger (as reported by the site)",
        None,
        None,
    )
    fallback_events = None
    found = ledgers.find(str(p.get("ledger-head", "")))
    if found is not None:
        ledger, _, spending = found
        events = spending.events
        fallback_events = merged(spending.fallback_events)
        last_reserved = list(spending.reserved.values())[-1] if spending.reserved else None
        source, run_id, site_ledger = (
            f"site ledger {ledger.file}",
            last_reserved.payload.get("run_id") if last_reserved else None,
            ledger.file,
        )
        if merged(events) != claimed_events:
            findings.append(
                _finding("error", f"{where}: the events the site reported differ from its ledger")
            )
    elif has_ledgers:
        findings.append(
            _finding(
                "error",
                f"{where}: the site ledger head {str(p.get('ledger-head'))[:16]}... the site "
                "reported is not in its ledger (rewritten or replaced)",
            )
        )
    if site_ledger is not None:
        before, releases_before = events[:-1], len(events) - 1
        recorded = bool(events) and events[-1] == event
    else:
        before, releases_before = _without(events, event), releases - 1
        recorded = before is not None
    if not recorded:
        findings.append(_finding("error", f"{where}: the round's event is not the last recorded"))
    head_signature = _head_signature(site, p, roster, where, findings)
    folded = merged(events)
    cumulative = epsilon(folded, delta, accountant)
    cumulative_rdp = epsilon(folded, delta, "rdp")
    claim_matches = True
    for name, claimed, value in (
        (accountant, p.get("epsilon"), cumulative),
        ("rdp", p.get("epsilon-rdp"), cumulative_rdp),
    ):
        if _differs(claimed, value):
            claim_matches = False
            findings.append(
                _finding(
                    "error",
                    f"{where}: the site claimed epsilon {claimed} ({name}) but its events give "
                    f"{value:.6g}",
                )
            )
    record = {
        "round": server_round,
        "purpose": p.get("purpose", "train"),
        "noise_multiplier": event.noise_multiplier,
        "clip_norm": event.clip_norm,
        "sample_rate": event.sample_rate,
        "steps": event.steps,
        "epochs": round(event.steps * event.sample_rate, 6),
        "mechanism": event.mechanism,
        "epsilon_round": _finite(epsilon([event], delta, accountant)),
        "epsilon_cumulative": _finite(cumulative),
        "epsilon_cumulative_rdp": _finite(cumulative_rdp),
        "claimed_epsilon": p.get("epsilon"),
        "claimed_epsilon_rdp": p.get("epsilon-rdp"),
        "claim_matches": claim_matches,
        "events_total": len(events),
        "events_source": source,
        "site_ledger": site_ledger,
        "site_ledger_head": p.get("ledger-head"),
        "site_ledger_rows": p.get("ledger-rows"),
        "head_signature": head_signature,
        "run_id": run_id,
        "noise_source": p.get("noise-source"),
        "secure_rng": p.get("secure-rng"),
    }
    if "noise-shares" in p:
        record["distributed"] = _distributed(p, fallback_events, delta, epsilon, where, findings)
    if p.get("secure-rng") is False:
        findings.append(
            _finding(
                "error",
                f"{where}: the site drew its noise from a seed (insecure-seed): the noise "
                "is predictable and the DP guarantee does not hold",
            )
        )
    return record, events, before or [], releases_before


def _without(events: list[PrivacyEvent], event: PrivacyEvent) -> list[PrivacyEvent] | None:
    """A merged history less one `event`; None if it does not hold that event."""
    out = []
    found = False
    for e in events:
        if not found and replace(e, steps=event.steps) == event and e.steps >= event.steps:
            found = True
            if e.steps > event.steps:
                out.append(replace(e, steps=e.steps - event.steps))
            continue
        out.append(e)
    return out if found else None


def _distributed(
    p: dict[str, Any],
    fallback_events: list[PrivacyEvent] | None,
    delta: float,
    epsilon: EpsilonCache,
    where: str,
    findings: list[dict[str, str]],
) -> dict[str, Any]:
    """A distributed step: the honest shares its noise rests on, and the fallback epsilon."""
    shares = p["noise-shares"]
    claimed = p.get("fallback-epsilon")
    fallback = None
    if fallback_events is not None:
        fallback = epsilon(fallback_events, delta, "rdp")
        if _differs(claimed, fallback):
            findings.append(
                _finding(
                    "error",
                    f"{where}: the site claimed fallback epsilon {claimed} but its events give "
                    f"{fallback:.6g}",
                )
            )
    return {
        "threshold": shares.get("threshold"),
        "colluders": shares.get("colluders"),
        "honest": shares.get("honest"),
        "fallback_epsilon": _finite(fallback) if fallback is not None else None,
        "claimed_fallback_epsilon": claimed,
    }


def _finding(severity: str, message: str) -> dict[str, str]:
    return {"severity": severity, "message": message}


def _refusal(row: Row) -> dict[str, Any]:
    p = row.payload
    return {
        "round": p.get("round"),
        "reason": p.get("reason"),
        "message": p.get("message"),
        "floor": p.get("floor"),
        "epsilon_spent_claimed": p.get("epsilon-spent"),
        "epsilon_after_round_claimed": p.get("epsilon-after-round"),
        "max_epsilon": p.get("max-epsilon"),
    }


def _floor(rows: list[Row], refusals: list[Row]) -> dict[str, Any] | None:
    """The floor the site last reported: with a release, or with a refusal (as JSON)."""
    latest = max([*rows, *refusals], key=lambda row: row.seq, default=None)
    if latest is None:
        return None
    floor = latest.payload.get("floor") if latest.kind == "site_round" else None
    if floor is None and isinstance(latest.payload.get("site-floor"), str):
        try:
            floor = json.loads(latest.payload["site-floor"])
        except json.JSONDecodeError:
            floor = None
    return floor if isinstance(floor, dict) else None


def site_names(inputs: RunInputs) -> list[str]:
    """Every site the run heard of: ledger rows first, then the sites' state directories."""
    names: list[str] = []
    for row in inputs.run_ledger.rows:
        site = row.payload.get("site")
        if isinstance(site, str) and site not in names:
            names.append(site)
    names.extend(s for s in inputs.site_ledgers if s not in names)
    return sorted(names, key=natural_key)


def natural_key(name: str) -> tuple:
    """site-2 before site-10: sites sort as people count them."""
    head, _, tail = name.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (name, 0)


def _runs_before(ledgers: list[LedgerFile], head: str, run_id: str | None) -> int | None:
    """Distinct earlier runs whose releases count in the site ledger before this run's first.

    Read from the ledger up to the head the site reported after this run's first release:
    every run id with a reservation that was not cancelled, or with a release without DP,
    except this run's own. None where the site ledger is not in the run directory.
    """
    found = _Prefixes(ledgers).find(head)
    if found is None or run_id is None:
        return None
    ledger, head_row, spending = found
    prefix = [row for row in ledger.rows if row.seq <= head_row.seq]
    runs = {
        str(row.payload.get("run_id"))
        for spend_id, row in spending.reserved.items()
        if spend_id not in spending.cancelled
    }
    runs |= {str(row.payload.get("run_id")) for row in prefix if row.kind == PLAIN_RELEASE}
    runs.discard(run_id)
    return len(runs)


def group_privacy(epsilon: float, delta: float, records: int) -> dict[str, Any]:
    """A person's guarantee from the per-record (epsilon, delta) when they have `records`.

    Chaining the (epsilon, delta) inequality over the k records that separate two datasets
    gives P[M(D) in S] <= e^(k eps) P[M(D') in S] + delta * sum_{i<k} e^(i eps), so the person
    is (k eps, delta (e^(k eps) - 1) / (e^eps - 1))-DP; the sum is at most k e^((k-1) eps)
    delta, the form Dwork and Roth (2014, Sec. 2.3) state. Computed in log space; a delta
    that reaches 1 is null: there is no person-level guarantee left to state.
    """
    if epsilon > 0:
        log_sum = records * epsilon + math.log(-math.expm1(-records * epsilon))
        log_sum -= epsilon + math.log(-math.expm1(-epsilon))
    else:
        log_sum = math.log(records)
    log_delta = math.log(delta) + log_sum
    return {
        "records_per_person": records,
        "epsilon": records * epsilon,
        "delta": math.exp(log_delta) if log_delta < 0 else None,
    }


def sample_level(
    inputs: RunInputs,
    findings: list[dict[str, str]],
    epsilon: EpsilonCache,
    records_per_person: Mapping[str, int | None],
) -> dict[str, Any]:
    """The `sample_level_dp` section: per site, per round, recomputed.

    `records_per_person` is each site's per-person contribution bound from its cleansing
    (absent: unknown); a bound above 1 adds the person-level guarantee by group privacy.
    """
    enabled = bool(inputs.config.get("dp"))
    distributed_run = enabled and inputs.config.get("dp-mode") == "distributed"
    accountant = str(inputs.config.get("accountant", "prv"))
    by_site: dict[str, list[Row]] = {}
    for row in inputs.rows("site_round"):
        by_site.setdefault(str(row.payload.get("site")), []).append(row)
    refusals: dict[str, list[Row]] = {}
    for row in inputs.rows("refusal"):
        refusals.setdefault(str(row.payload.get("site")), []).append(row)
    sites = []
    for site in site_names(inputs):
        rows = by_site.get(site, [])
        if not rows and site not in refusals:
            continue
        ledgers = inputs.site_ledgers.get(site, [])
        prefixes = _Prefixes(ledgers)
        records, events = [], []
        first_events: list[PrivacyEvent] | None = None
        releases_before: int | None = None
        for row in rows:
            record, events, before, count = _site_round(
                site, row, prefixes, bool(ledgers), epsilon, findings, inputs.roster
            )
            records.append(record)
            if first_events is None:
                first_events, releases_before = before, count
        payload = rows[-1].payload if rows else refusals[site][-1].payload
        delta = float(payload.get("delta", inputs.config.get("delta", 1e-5)))
        limit = payload.get("max-epsilon")
        final = records[-1]["epsilon_cumulative"] if records else None
        trained = [r for r in records if r["purpose"] == "train"]
        runs_before = (
            _runs_before(
                ledgers,
                str(rows[0].payload.get("ledger-head", "")),
                records[0]["run_id"],
            )
            if records
            else None
        )
        bound = records_per_person.get(site)
        distributed = [r["distributed"] for r in records if "distributed" in r]
        sites.append(
            {
                "site": site,
                "delta": delta,
                "max_epsilon": limit,
                "floor": _floor(rows, refusals.get(site, [])),
                "noise_source": payload.get("noise-source"),
                "secure_rng": payload.get("secure-rng"),
                "record_count_public": payload.get("public-record-count"),
                "epsilon": final,
                "epsilon_rdp": records[-1]["epsilon_cumulative_rdp"] if records else None,
                "gdp_mu": epsilon.mu(events)
                if records and all(e.mechanism == GAUSSIAN for e in events)
                else None,
                "epsilon_before_run": _finite(epsilon(first_events, delta, accountant))
                if first_events is not None
                else None,
                "releases_before_run": releases_before,
                "runs_before_run": runs_before,
                "runs_before_run_source": (
                    "no release in this run"
                    if not records
                    else f"site ledger {records[0]['site_ledger']}"
                    if runs_before is not None
                    else RUNS_UNKNOWN
                ),
                "epsilon_remaining": (
                    round(limit - final, 12)
                    if isinstance(limit, int | float) and final is not None
                    else None
                ),
                "distributed": distributed[-1] if distributed else None,
                "records_per_person": bound,
                "person_level": group_privacy(final, delta, bound)
                if final is not None and bound is not None and bound > 1
                else None,
                "rounds_trained": len(trained),
                "evaluations": len(records) - len(trained),
                "rounds": records,
                "refusals": [_refusal(r) for r in refusals.get(site, [])],
            }
        )
    for message in epsilon.errors.values():
        findings.append(_finding("warning", f"not computed for one history: {message}"))
    return {
        "enabled": enabled,
        "unit_of_privacy": UNIT,
        "adjacency": ADJACENCY,
        "dp_variant": "approximate (epsilon, delta)-DP",
        "trust_model": DISTRIBUTED_TRUST_MODEL if distributed_run else TRUST_MODEL,
        "algorithm": DISTRIBUTED_ALGORITHM
        if distributed_run
        else "DP-SGD (Opacus): per-example clipping to norm C, Gaussian noise sigma*C",
        "scope": "all rounds of all runs on the same data at each site (the site ledger)",
        "hyperparameter_tuning": TUNING,
        "outside_guarantee": list(OUTSIDE),
        "accountant": accountant_info(accountant),
        "cross_check_accountant": accountant_info("rdp"),
        "gdp": {
            "definition": GDP_DEFINITION,
            "method": gdp.METHOD,
            "delta_floor": gdp.DELTA_FLOOR,
            "implementation": f"dp-accounting {version('dp-accounting')}",
        },
        "person_level_bound": PERSON_LEVEL_BOUND,
        "sites": sites,
    }
