"""report.md: the report as Markdown, for a ticket, a pull request or a terminal.

A shorter view of report.json than the HTML page: summary, epsilon per group of sites whose
rows read the same (privacy.report.rows), secure aggregation, anonymization and cleansing,
utility, audit and integrity, as plain tables.
"""

from __future__ import annotations

from typing import Any

from privacy.report import rows


def _table(header: list[str], body: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in body]
    return [*lines, ""]


ROUND_HEADER = ["round", "sigma", "C", "q", "steps", "epochs", "eps round", "eps total", "claim"]


def _site_cells(group: dict[str, Any]) -> list[str]:
    x = group["row"]
    return [
        rows.join(group["names"]),
        x["epsilon"],
        x["epsilon_rdp"],
        x["mu"],
        x["delta"],
        f"{x['releases_before']} / {x['runs_before']}",
        x["limit"],
        x["left"],
        x["person"],
        x["rounds"],
        x["refusals"],
    ]


def render_md(report: dict[str, Any]) -> str:
    """Markdown text of `report`."""
    r = report
    out = [f"# Privacy report: run `{r['run']['directory']}` ({r['summary']['verdict']})", ""]
    out += [f"**{r['summary']['headline']}**", ""]
    out += [f"- {s}" for s in r["summary"]["statements"][1:]] + [""]
    if r["findings"]:
        out += ["## Findings", ""] + [f"- {f['severity']}: {f['message']}" for f in r["findings"]]
        out.append("")
    dp = r["sample_level_dp"]
    out += ["## Sample-level differential privacy", ""]
    if dp["enabled"]:
        acct = dp["accountant"]
        out += [
            f"Unit of privacy: {dp['unit_of_privacy']}; adjacency: {dp['adjacency']}; "
            f"accountant {acct['name'].upper()} (opacus {acct['version']}); "
            f"sampling: {acct['sampling']}.",
            "",
        ]
        out += _table(
            [
                "sites",
                "epsilon",
                "epsilon (RDP)",
                "mu (GDP)",
                "delta",
                "earlier releases / runs",
                "limit",
                "left",
                "per person",
                "rounds",
                "refusals",
            ],
            [_site_cells(g) for g in rows.grouped(dp["sites"], rows.site_row)],
        )
        out += [
            f"mu: mu-Gaussian DP, one curve for every delta >= "
            f"{rows.delta(dp['gdp']['delta_floor'])} ({dp['gdp']['implementation']}).",
            "",
        ]
        for g in rows.grouped([s for s in dp["sites"] if s["rounds"]], rows.round_rows):
            out += [
                f"### {rows.join(g['names'])}",
                "",
                *_table(
                    ROUND_HEADER,
                    [
                        [
                            x["round"],
                            x["sigma"],
                            x["clip"],
                            x["q"],
                            x["steps"],
                            x["epochs"],
                            x["epsilon_round"],
                            x["epsilon_cumulative"],
                            x["claim"],
                        ]
                        for x in g["row"]
                    ],
                ),
            ]
    else:
        out += ["No differential privacy requested.", ""]
    if dp["sites"]:
        out += ["### What each site decided for itself", ""]
        out += _table(
            ["sites", "floor", "record count"],
            [
                [rows.join(g["names"]), g["row"]["floor"], g["row"]["record_count"]]
                for g in rows.grouped(dp["sites"], rows.floor_row)
            ],
        )
    sa = r["secure_aggregation"]
    out += ["## Secure aggregation", ""]
    if sa["enabled"]:
        out += _table(
            ["round", "sampled", "contributors", "dropouts", "aborted", "out of range"],
            [
                [
                    x["round"],
                    x["sampled"],
                    x["contributors"],
                    x["dropouts"],
                    x["aborted"] or "no",
                    x["out_of_range"],
                ]
                for x in sa["rounds"]
            ],
        )
    else:
        out += ["Off: the server saw each site's update.", ""]
    if r["anonymization"]:
        columns = ["release", "k", "l", "t", "suppressed", "dropped", "person", "imputed"]
        out += [
            "## Anonymization and cleansing",
            "",
            *_table(
                ["sites", *columns[:5], "cleansing dropped", "per person", "cells imputed"],
                [
                    [rows.join(g["names"]), *(g["row"][c] for c in columns)]
                    for g in rows.grouped(r["anonymization"], rows.anonymization_row)
                ],
            ),
        ]
    out += [
        "## Model utility",
        "",
        *_table(
            ["round", "test accuracy", "site eval accuracy"],
            [
                [x["round"], rows.pct(x["test_accuracy"]), rows.pct(x["client_eval_accuracy"])]
                for x in r["utility"]["rounds"]
            ],
        ),
    ]
    audit = r["audit"]
    if audit:
        confidence = audit.get("confidence")
        value = rows.eps(audit["eps_lb"])
        bound = (
            f"epsilon lower bound {value} at {rows.pct(confidence, 0)} confidence"
            if confidence
            else f"implied epsilon {value} (a point estimate, no confidence level)"
        )
        out += ["## Empirical audit", "", f"{audit['eps_lb_label']}.", ""]
        out += [
            f"- AUC {audit['auc']:.3f}; {bound} (accounted upper bound "
            f"{rows.eps(rows.max_claimed_epsilon(r))})"
        ]
        for x in audit["low_fpr"]:
            if x.get("tpr_lower") is not None:
                out.append(
                    f"- at {rows.pct(x['fpr'], 1)} FPR: TPR {rows.pct(x['tpr'], 2)} (>= "
                    f"{rows.pct(x['tpr_lower'], 2)}), FPR {rows.pct(x['fpr_measured'], 2)} (<= "
                    f"{rows.pct(x['fpr_upper'], 2)}): epsilon >= {rows.eps(x['eps_lb'])}"
                )
            else:
                out.append(f"- at {rows.pct(x['fpr'], 1)} FPR: TPR {rows.pct(x['tpr'], 2)}")
        out.append("")
    integrity = r["integrity"]
    out += [
        "## Integrity",
        "",
        f"- run ledger: {integrity['run_ledger']['rows']} rows, head "
        f"`{integrity['run_ledger']['head']}`",
    ]
    out += [
        f"- {x['file']}: {x['rows']} rows, head `{x['head']}`" for x in integrity["site_ledgers"]
    ]
    if integrity["signature"]:
        out.append(
            f"- signed {integrity['signature']['algorithm']}, key sha256 "
            f"`{integrity['signature']['public_key_sha256']}`"
        )
    return "\n".join(out) + "\n"
