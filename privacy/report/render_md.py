"""report.md: the report as Markdown, for a ticket, a pull request or a terminal.

A shorter view of report.json than the HTML page: summary, per-site epsilon, secure
aggregation, anonymization, utility, audit and integrity, as plain tables.
"""

from __future__ import annotations

from typing import Any

from privacy.report.render_html import _delta, _eps, _num, _pct, max_claimed_epsilon


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


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
            ["site", "epsilon", "epsilon (RDP)", "delta", "limit", "left", "rounds", "refusals"],
            [
                [
                    s["site"],
                    _eps(s["epsilon"]),
                    _eps(s["epsilon_rdp"]),
                    _delta(s["delta"]),
                    _eps(s["max_epsilon"]),
                    _eps(s["epsilon_remaining"]),
                    s["rounds_trained"],
                    ", ".join(f"round {x['round']}" for x in s["refusals"]) or "none",
                ]
                for s in dp["sites"]
            ],
        )
        for s in dp["sites"]:
            if s["rounds"]:
                out += [
                    f"### {s['site']}",
                    "",
                    *_table(
                        [
                            "round",
                            "sigma",
                            "C",
                            "q",
                            "steps",
                            "epochs",
                            "eps round",
                            "eps cumulative",
                            "claim",
                        ],
                        [
                            [
                                x["round"],
                                _num(x["noise_multiplier"]),
                                _num(x["clip_norm"]),
                                _num(x["sample_rate"], 4),
                                x["steps"],
                                _num(x["epochs"]),
                                _eps(x["epsilon_round"]),
                                _eps(x["epsilon_cumulative"]),
                                "matches"
                                if x["claim_matches"]
                                else f"MISMATCH ({x['claimed_epsilon']})",
                            ]
                            for x in s["rounds"]
                        ],
                    ),
                ]
    else:
        out += ["No differential privacy requested.", ""]
    if dp["sites"]:
        out += ["### What each site decided for itself", ""]
        out += _table(
            ["site", "floor", "record count", "refusals"],
            [
                [
                    s["site"],
                    "; ".join(f"{k} = {v}" for k, v in (s.get("floor") or {}).items())
                    or "not reported",
                    "declared public" if s.get("record_count_public") else "kept private",
                    "; ".join(
                        f"round {f['round']}: {f['reason']}"
                        + (f" ({f['floor']})" if f.get("floor") else "")
                        for f in s["refusals"]
                    )
                    or "none",
                ]
                for s in dp["sites"]
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
        out += [
            "## Anonymization",
            "",
            *_table(
                ["site", "k", "l", "t", "suppressed"],
                [
                    [
                        a["site"],
                        a["achieved"].get("k"),
                        a["achieved"].get("l_distinct"),
                        _num(a["achieved"].get("t"), 3),
                        a["suppressed_records"],
                    ]
                    for a in r["anonymization"]
                ],
            ),
        ]
    out += [
        "## Model utility",
        "",
        *_table(
            ["round", "test accuracy", "site eval accuracy"],
            [
                [x["round"], _pct(x["test_accuracy"]), _pct(x["client_eval_accuracy"])]
                for x in r["utility"]["rounds"]
            ],
        ),
    ]
    audit = r["audit"]
    if audit:
        out += ["## Empirical audit", "", f"{audit['eps_lb_label']}.", ""]
        out += [
            f"- AUC {audit['auc']:.3f}; epsilon lower bound {_eps(audit['eps_lb'])} "
            f"(accounted upper bound {_eps(max_claimed_epsilon(r))})"
        ]
        out += [f"- TPR at {_pct(x['fpr'], 1)} FPR: {_pct(x['tpr'], 2)}" for x in audit["low_fpr"]]
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
