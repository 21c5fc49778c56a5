"""The report as data: one JSON-ready dict built from a run directory alone.

Everything in it is derived from the run's files and ledgers, so `verify` can rebuild it and
compare. Three inputs are not derivable and are carried over when rebuilding: the software
versions of the machine that wrote it, the empirical audit (it needs the model and data),
and the signer. The layout is documented field by field in docs/report-schema.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from privacy.report import sections
from privacy.report.inputs import RunInputs, read_run
from privacy.report.sample_dp import EpsilonCache, sample_level, site_names

SCHEMA = "fedvault-privacy-report"
SCHEMA_VERSION = "1.0"


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
    sample = sample_level(inputs, findings, EpsilonCache())
    client = sections.client_level(inputs, findings)
    secagg = sections.secure_aggregation(inputs)
    anonymization = sections.anonymization(inputs)
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


def _delta(value: float) -> str:
    """1e-05 -> 1e-5: how deltas are written in the DP literature."""
    return f"{value:g}".replace("e-0", "e-")


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _dp_statements(report: dict[str, Any]) -> list[str]:
    sample = report["sample_level_dp"]
    acct = sample["accountant"]
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
    groups: dict[tuple[str, float], list[str]] = {}
    for site in sample["sites"]:
        if site["rounds"]:
            groups.setdefault((_fmt(site["epsilon"]), site["delta"]), []).append(site["site"])
    statements = [
        f"Each record at {_join(names)} is protected by ({eps}, {_delta(delta)})-DP at example "
        "level, add/remove adjacency, over every release recorded in the ledger the site keeps for "
        f"its data source, this run and earlier ones ({acct['name'].upper()} accountant, "
        f"opacus {acct['version']})."
        for (eps, delta), names in groups.items()
    ]
    seeded = [site["site"] for site in sample["sites"] if site.get("secure_rng") is False]
    if seeded:
        statements.append(
            f"{_join(seeded)} drew DP noise from a seed (insecure-seed, a simulation "
            "research mode): the noise is predictable and no DP guarantee holds for them."
        )
    budgets: dict[tuple[str, str, str], list[str]] = {}
    for site in sample["sites"]:
        if site["rounds"] and site["max_epsilon"] is not None:
            key = (
                _fmt(site["epsilon"]),
                f"{site['max_epsilon']:g}",
                _fmt(site["epsilon_remaining"]),
            )
            budgets.setdefault(key, []).append(site["site"])
    for (spent, limit, left), names in budgets.items():
        each = " each" if len(names) > 1 else ""
        statements.append(
            f"{_join(names)}{each} spent {spent} of a site limit of {limit}: {left} left."
        )
    statements += _refusal_statements(sample)
    public = [site["site"] for site in sample["sites"] if site.get("record_count_public")]
    if public:
        statements.append(
            f"{_join(public)} declared their record counts public: they are sent to the "
            "server and are outside the guarantee."
        )
    return statements


def _refusal_statements(sample: dict[str, Any]) -> list[str]:
    """One line per kind of refusal (and floor key), naming the sites and rounds."""
    refused: dict[str, list[str]] = {}
    for site in sample["sites"]:
        for refusal in site["refusals"]:
            kind = str(refusal["reason"])
            if refusal.get("floor"):
                kind += f": {refusal['floor']}"
            refused.setdefault(kind, []).append(f"{site['site']} (round {refusal['round']})")
    return [f"Refused by the site ({kind}): {_join(where)}." for kind, where in refused.items()]


def _summary(report: dict[str, Any], inputs: RunInputs) -> dict[str, Any]:
    statements = _dp_statements(report)
    client = report["client_level_dp"]
    if client["enabled"] and client["rounds"]:
        last = client["rounds"][-1]
        eps = last["epsilon"] if last["epsilon"] is not None else last["claimed_epsilon"]
        statements.append(
            f"Each site as a whole is protected by ({_fmt(eps)}, {_delta(client['delta'])})-DP at "
            f"client level ({client['accountant']['name'].upper()} accountant)."
        )
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
    for site in report["anonymization"]:
        achieved = site["achieved"]
        statements.append(
            f"{site['site']} anonymized its records before training: k = {achieved.get('k')}, "
            f"l = {achieved.get('l_distinct')}, t = {_fmt(achieved.get('t'))}, "
            f"{site['suppressed_records']} records suppressed."
        )
    audit = report["audit"]
    if audit:
        statements.append(
            f"A membership-inference attack on the final model reached AUC "
            f"{audit['auc']:.3f}; the epsilon it implies is {_fmt(audit.get('eps_lb'))}, an "
            "empirical LOWER bound, not a guarantee."
        )
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
