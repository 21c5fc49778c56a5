"""The report as data: one JSON-ready dict built from a run directory alone.

Everything in it is derived from the run's files and ledgers, so `verify` can rebuild it and
compare. Three inputs are not derivable and are carried over when rebuilding: the software
versions of the machine that wrote it, the empirical audit (it needs the model and data),
and the signer. The layout is documented field by field in docs/report-schema.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from privacy.report import rows, sections
from privacy.report.inputs import RunInputs, read_run
from privacy.report.sample_dp import EpsilonCache, sample_level, site_names

SCHEMA = "fedvault-privacy-report"
SCHEMA_VERSION = "1.1"


def build_report(
    run_dir: str | Path,
    *,
    audit: dict[str, Any] | None = None,
    software: dict[str, str] | None = None,
    signer: dict[str, str] | None = None,
    site_limits: dict[str, int] | None = None,
    roster: str | Path | None = None,
    files: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The report of the run in `run_dir`; FedVaultError if it lacks a ledger or one is broken.

    `software` defaults to this machine's versions; `site_limits` (site ledger file -> rows)
    restricts site ledgers to the rows an earlier report saw (see `inputs.read_run`);
    `roster` checks the sites' signed heads against another copy than the run's; `files`
    are the hashes of the rendered report files the signature covers.
    """
    inputs = read_run(run_dir, site_limits, roster)
    findings: list[dict[str, str]] = []
    anonymization = sections.anonymization(inputs)
    sample = sample_level(
        inputs, findings, EpsilonCache(), sections.records_per_person(anonymization)
    )
    client = sections.client_level(inputs, findings)
    secagg = sections.secure_aggregation(inputs)
    utility = sections.utility(inputs)
    run_ids = sorted(
        {r["run_id"] for s in sample["sites"] for r in s["rounds"] if r["run_id"] is not None}
    )
    software = software or sections.software_versions()
    report = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "run": _run(inputs),
        "summary": {},
        "sample_level_dp": sample,
        "client_level_dp": client,
        "secure_aggregation": secagg,
        "anonymization": anonymization,
        "utility": utility,
        "audit": audit,
        "provenance": sections.provenance(inputs, software, run_ids),
        "integrity": _integrity(inputs, signer, files),
        "findings": findings,
    }
    report["summary"] = _summary(report, inputs)
    return report


def _run(inputs: RunInputs) -> dict[str, Any]:
    config = inputs.config
    trained = [m for m in inputs.metrics if isinstance(m, dict) and m.get("round", 0) > 0]
    return {
        "directory": inputs.run_dir.resolve().name,
        "status": inputs.status.get("status"),
        "task": config.get("task.name"),
        "rounds_planned": config.get("num-rounds"),
        "rounds_completed": len(trained),
        "sites": site_names(inputs),
        "strategy": config.get("strategy"),
    }


def _integrity(
    inputs: RunInputs, signer: dict[str, str] | None, files: dict[str, str] | None
) -> dict[str, Any]:
    return {
        "roster": {"file": inputs.roster_file, "sha256": inputs.roster_sha256}
        if inputs.roster
        else None,
        "files_sha256": files or {},
        "hash_chain": "sha256 over (previous hash, seq, time, kind, canonical JSON payload)",
        "run_ledger": inputs.run_ledger.summary(),
        "site_ledgers": [
            {"site": site, **ledger.summary(), "dataset_sha256": ledger.dataset_sha256}
            for site, files in inputs.site_ledgers.items()
            for ledger in files
        ],
        "signature": signer,
    }


def _fmt(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.2f}"


def _count(number: int, word: str) -> str:
    """'1 earlier run', '2 earlier runs'."""
    return f"{number} {word}" + ("" if number == 1 else "s")


def _group(items: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> dict:
    """Site names by `key`, in first-seen order: one statement per group, not per site."""
    groups: dict[Any, list[str]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(str(item["site"]))
    return groups


def _tuning_statements(sample: dict[str, Any], everyone: list[str]) -> list[str]:
    """Earlier runs on the same data (hyperparameter search), as the site ledgers show them."""
    statements = []
    groups = _group(
        (s for s in sample["sites"] if s["rounds"]),
        lambda s: (s["runs_before_run"], s["releases_before_run"]),
    )
    for (runs, releases), names in groups.items():
        who, each = rows.join(names, everyone), " each" if len(names) > 1 else ""
        ledgers = "their own ledgers" if len(names) > 1 else "its own ledger"
        if runs is None and not releases:
            statements.append(
                f"{who} reported no earlier release from the same data before this run."
            )
        elif runs is None:
            statements.append(
                f"{who}{each} had made {_count(releases, 'release')} from the same "
                "data before this run (counted in the epsilon above); how many runs they came "
                "from is not known: the sites report their events, not the runs that made them."
            )
        elif runs == 0:
            statements.append(
                f"No earlier run had released from the data of {who} ({ledgers}): no "
                "hyperparameter search or other run preceded this one there."
            )
        else:
            statements.append(
                f"Before this run, {who}{each} had released from the same data in "
                f"{_count(runs, 'earlier run')} ({_count(releases, 'release')}), "
                f"hyperparameter search included, as {ledgers} {'show' if each else 'shows'}; "
                "the epsilon above counts them."
            )
    return statements


def _person_statements(sample: dict[str, Any], everyone: list[str]) -> list[str]:
    """The person-level guarantee where cleansing let a person keep several records."""
    groups = _group(
        (s for s in sample["sites"] if s["person_level"]),
        lambda s: tuple(s["person_level"].values()),
    )
    statements = []
    for (records, epsilon, delta), names in groups.items():
        who = rows.join(names, everyone)
        head = (
            f"A person at {who} may have up to {records} records (cleansing: "
            'per_person = "bound"), and the guarantee above is per record: '
        )
        statements.append(
            head + f"by group privacy each person is protected by ({_fmt(epsilon)}, "
            f"{delta:.2g})-DP."
            if delta is not None
            else head + "group privacy leaves no person-level guarantee (its delta reaches 1)."
        )
    return statements


def _dp_statements(report: dict[str, Any]) -> list[str]:
    sample = report["sample_level_dp"]
    acct = sample["accountant"]
    everyone = report["run"]["sites"]
    if not sample["enabled"]:
        trained = [s["site"] for s in sample["sites"] if s["rounds_trained"]]
        return [
            "The run asked the sites to train without DP-SGD: whatever a site trained carries "
            "no formal limit on what it reveals about any one record.",
            *_refusal_statements(sample),
        ] + (
            []
            if trained or not sample["sites"]
            else ["No site trained: every site that was asked refused."]
        )
    floor = rows.delta(sample["gdp"]["delta_floor"])
    groups = _group(
        (s for s in sample["sites"] if s["rounds"]),
        lambda s: (_fmt(s["epsilon"]), s["delta"], _fmt(s["gdp_mu"])),
    )
    statements = [
        f"Each record at {rows.join(names, everyone)} is protected by ({eps}, "
        f"{rows.delta(delta)})-DP at example level, add/remove adjacency, over every release "
        "recorded in the ledger the site keeps for its data source, this run and earlier ones "
        f"({acct['name'].upper()} accountant, opacus {acct['version']})"
        + (
            f"; as Gaussian DP, mu = {mu} (its curve holds at every delta >= {floor}; "
            "dp-accounting)."
            if mu != "unknown"
            else "."
        )
        for (eps, delta, mu), names in groups.items()
    ]
    statements += _distributed_statements(sample, everyone)
    statements += _tuning_statements(sample, everyone)
    statements += _person_statements(sample, everyone)
    seeded = [site["site"] for site in sample["sites"] if site.get("secure_rng") is False]
    if seeded:
        statements.append(
            f"{rows.join(seeded)} drew DP noise from a seed (insecure-seed, a simulation "
            "research mode): the noise is predictable and no DP guarantee holds for them."
        )
    budgets = _group(
        (s for s in sample["sites"] if s["rounds"] and s["max_epsilon"] is not None),
        lambda s: (_fmt(s["epsilon"]), f"{s['max_epsilon']:g}", _fmt(s["epsilon_remaining"])),
    )
    for (spent, limit, left), names in budgets.items():
        who, each = rows.join(names, everyone), " each" if len(names) > 1 else ""
        statements.append(f"{who}{each} spent {spent} of a site limit of {limit}: {left} left.")
    statements += _refusal_statements(sample)
    public = [site["site"] for site in sample["sites"] if site.get("record_count_public")]
    if public:
        statements.append(
            f"{rows.join(public)} declared their record counts public: they are sent to the "
            "server and are outside the guarantee."
        )
    return statements


def _distributed_statements(sample: dict[str, Any], everyone: list[str]) -> list[str]:
    """The trust the distributed steps rest on, and the epsilon if it were broken."""
    groups = _group(
        (s for s in sample["sites"] if s.get("distributed")),
        lambda s: (
            s["distributed"]["colluders"],
            s["distributed"]["threshold"],
            s["distributed"]["honest"],
            _fmt(s["distributed"]["fallback_epsilon"]),
        ),
    )
    return [
        f"{rows.join(names, everyone)} took distributed DP-SGD steps: each added only its "
        "share of the noise, so the epsilon above holds while secure aggregation hides each "
        f"site's vector and {_collusion(colluders, threshold, honest)}. Should secure "
        f"aggregation fail, each site's own share alone would give epsilon {fallback} (the "
        "fallback epsilon, RDP)."
        for (colluders, threshold, honest, fallback), names in groups.items()
    ]


def _collusion(colluders: int, threshold: int, honest: int) -> str:
    if not colluders:
        return (
            f"no site colludes with the server (every released sum holds at least {threshold} "
            f"shares, each of 1/{honest} of the noise variance)"
        )
    return (
        f"at most {colluders} of the {threshold} or more sites in every released sum collude "
        f"with the server (the {honest} honest shares left carry the full noise)"
    )


def _refusal_statements(sample: dict[str, Any]) -> list[str]:
    """One line per kind of refusal (and floor key), naming the sites and rounds."""
    refused: dict[str, list[str]] = {}
    for site in sample["sites"]:
        for refusal in site["refusals"]:
            kind = str(refusal["reason"])
            if refusal.get("floor"):
                kind += f": {refusal['floor']}"
            refused.setdefault(kind, []).append(f"{site['site']} (round {refusal['round']})")
    return [f"Refused by the site ({kind}): {rows.join(where)}." for kind, where in refused.items()]


def _least(values: list[Any], pick: Callable, fmt: Callable[[Any], str] = str) -> str:
    """A group's values as one: '= v' when all agree, else the weakest as '>= v' or '<= v'."""
    known = [v for v in values if v is not None]
    if not known:
        return "= unknown"
    weakest = pick(known)
    if all(v == weakest for v in known):
        return f"= {fmt(weakest)}"
    return f"{'>=' if pick is min else '<='} {fmt(weakest)}"


def _anonymization_statements(sites: list[dict[str, Any]], everyone: list[str]) -> list[str]:
    """What the anonymizing sites released and what their cleansing changed, per kind.

    A release is called anonymized only when the site reported `release = "anonymized"`: a
    pseudonymized one keeps a per-person key, and an old row without `release` is unknown.
    """
    statements = []
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for site in sites:
        cleaning = site["cleaning"] or {}
        person = cleaning.get("per_person") or {}
        linkable = tuple(n for n, c in site["columns"].items() if c.get("linkable"))
        key = (
            site["release"],
            linkable,
            person.get("column"),
            person.get("rule"),
            cleaning.get("max_records_per_person"),
        )
        groups.setdefault(key, []).append(site)
    for (release, linkable, column, rule, bound), members in groups.items():
        names = rows.join([str(m["site"]) for m in members], everyone)
        achieved = [m["achieved"] for m in members]
        targets = (
            f"k {_least([a.get('k') for a in achieved], min)}, "
            f"l {_least([a.get('l_distinct') for a in achieved], min)}, "
            f"t {_least([a.get('t') for a in achieved], max, _fmt)}, "
            f"{sum(m['suppressed_records'] or 0 for m in members)} records suppressed"
        )
        if release == "anonymized":
            what = "anonymized their records before training (no column keeps a per-person key)"
        elif release == "pseudonymized":
            what = (
                f"pseudonymized their records before training, which is not anonymization: "
                f"{', '.join(linkable)} {'keeps' if len(linkable) == 1 else 'keep'} one keyed "
                "pseudonym per person, linking that person's records across the site's exports"
            )
        else:
            what = (
                "applied an anonymization policy before training (whether the release was "
                "anonymized or pseudonymized was not recorded)"
            )
        statements.append(f"{names} {what}: {targets}.")
        cleanings = [m["cleaning"] for m in members if m["cleaning"]]
        if cleanings:
            statements.append(_cleaning_statement(names, cleanings, column, rule, bound))
    return statements


def _cleaning_statement(
    names: str, cleanings: list[dict[str, Any]], column: str | None, rule: str | None, bound: Any
) -> str:
    """Cleansing counts summed over a group of sites, and what it means per person."""

    def total(*path: str) -> int:
        values = []
        for cleaning in cleanings:
            value: Any = cleaning
            for key in path:
                value = (value or {}).get(key)
            values.append(int(value or 0))
        return sum(values)

    by_rule = ", ".join(
        f"{step} {count}"
        for step in cleanings[0]["rows_dropped_by_rule"]
        if (count := total("rows_dropped_by_rule", step))
    )
    changes = (
        f"dropped {total('rows_dropped')} of {total('rows_in')} rows"
        + (f" ({by_rule})" if by_rule else "")
        + f", imputed {total('cells_imputed')} cells, clipped {total('cells_clipped')}, "
        f"recoded {total('cells_recoded')}"
    )
    several = total("per_person", "people_with_several_records")
    removed = total("per_person", "records_removed")
    if column is None:
        person = (
            "no person column was declared, so one person's several records were not merged: "
            "a guarantee per record is not one per person"
        )
    elif bound == 1:
        done = "merged into one" if rule == "merge" else "kept the first"
        person = (
            f"one record per person on {column} ({several} people had several records; "
            f'per_person = "{rule}": {done}, {removed} records removed)'
        )
    else:
        person = (
            f"at most {bound} records per person on {column} ({removed} records removed beyond "
            "the bound)"
        )
    return f"Cleansing at {names} (before anonymization and training) {changes}; {person}."


def _audit_statement(audit: dict[str, Any]) -> str:
    """The audit's number with what it is: a bound at its confidence only when it is one.

    Audits that carry a `confidence` measured their rates on records the threshold was not
    chosen on, with Clopper-Pearson bounds (privacy.audit); older ones are point estimates.
    """
    head = f"A membership-inference attack on the final model reached AUC {audit['auc']:.3f}; "
    eps, confidence = audit.get("eps_lb"), audit.get("confidence")
    if eps is None:
        return head + (
            f"with {audit['nonmembers']} non-members no false-positive rate of 1% or less could "
            "be measured, so it bounds no epsilon."
        )
    if isinstance(confidence, int | float) and not isinstance(confidence, bool):
        return head + (
            f"with {confidence:.0%} confidence, epsilon is at least {_fmt(eps)} (one-sided "
            "Clopper-Pearson bounds on its rates, measured on records the threshold was not "
            "chosen on): an empirical LOWER bound from one attack, not a guarantee."
        )
    return head + (
        f"the epsilon it implies is {_fmt(eps)}, a point estimate without a confidence level: "
        "neither a bound nor a guarantee."
    )


def _client_statement(client: dict[str, Any], eps: float | None, inputs: RunInputs) -> str:
    """What the client-level epsilon covers, and whom it holds against."""
    last = client["rounds"][-1]
    if last["details"].get("noise-mode") == "distributed":
        colluders = int(inputs.config.get("dp-colluders", 0))
        trust = (
            "the sites added the noise as shares inside secure aggregation, each share sized "
            "by the site for the honest contributions any released sum holds, so it holds "
            f"against a server colluding with up to {colluders} site(s)"
        )
    else:
        trust = "the server added the noise, so it holds only if the server did"
    sampled = any(r["sampling"] in ("poisson", "fixed") for r in client["rounds"])
    return (
        f"In this run, each site as a whole is protected by ({_fmt(eps)}, "
        f"{rows.delta(client['delta'])})-DP at client level "
        f"({client['accountant']['name'].upper()} accountant): {trust}. "
        + (
            "The amplification by sampling assumes the server sampled the sites as it "
            "recorded: the server chose them. "
            if sampled
            else ""
        )
        + "The bound covers this run's rounds only; other runs on the same sites add to it."
    )


def _summary(report: dict[str, Any], inputs: RunInputs) -> dict[str, Any]:
    statements = _dp_statements(report)
    client = report["client_level_dp"]
    if client["enabled"] and client["rounds"]:
        last = client["rounds"][-1]
        eps = last["epsilon"] if last["epsilon"] is not None else last["claimed_epsilon"]
        statements.append(_client_statement(client, eps, inputs))
    secagg = report["secure_aggregation"]
    if secagg["enabled"]:
        totals = secagg["totals"]
        statements.append(
            (
                "Secure aggregation (SecAgg+, authenticated: keys and survivor sets signed by "
                "the sites, so it holds against a server that deviates from the protocol) hid "
                "each site's update from the server: "
                if secagg["mode"] == "authenticated"
                else "Secure aggregation (SecAgg+, semi-honest: it holds only while the server "
                "follows the protocol) hid each site's update from the server: "
            )
            + f"{totals['rounds'] - totals['aborted']} of {totals['rounds']} rounds aggregated, "
            f"{totals['aborted']} aborted, {totals['dropouts']} dropouts."
        )
    else:
        statements.append("Secure aggregation was off: the server saw each site's update.")
    statements += _anonymization_statements(report["anonymization"], report["run"]["sites"])
    if report["audit"]:
        statements.append(_audit_statement(report["audit"]))
    errors = [f for f in report["findings"] if f["severity"] == "error"]
    verdict = "attention" if errors else "consistent"
    if errors:
        statements.append(
            f"{len(errors)} problem(s) found: " + "; ".join(f["message"] for f in errors)
        )
    elif inputs.site_ledgers:
        statements.append(
            "Every epsilon above was recomputed from the privacy events in the sites' own "
            "ledgers, which match what the sites reported; every ledger's hash chain is intact."
        )
    else:
        statements.append(
            "Every epsilon above was recomputed from the privacy events the sites reported; "
            "the sites' own ledgers were not available to this report, so those events are "
            "as the sites sent them."
        )
    return {"verdict": verdict, "headline": statements[0], "statements": statements}
