"""The rows the people-facing views show, formatted once, and sites grouped by them.

At 100 sites a report that gives every site its own row and its own per-round table is a
page nobody reads. Sites whose rows read the same (every cell as formatted, names aside) are
shown once with all their names. The cells are built here, once, for report.html, report.md
and the epsilon plot, so that what decides a group is exactly what a reviewer would see: two
sites share a row only when their separate rows would have been identical.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

MISSING = "\N{EN DASH}"
FOLD_ABOVE = 10
"""Sites beyond which per-site tables start folded: a reviewer scrolls groups, not sites."""


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def num(value: Any, digits: int = 2) -> str:
    if missing(value):
        return MISSING
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def eps(value: Any) -> str:
    return num(value, 2) if not isinstance(value, int) or isinstance(value, bool) else f"{value}"


def delta(value: Any) -> str:
    return MISSING if missing(value) else f"{value:g}".replace("e-0", "e-")


def pct(value: Any, digits: int = 1) -> str:
    return MISSING if missing(value) else f"{100 * value:.{digits}f}%"


def dash(value: Any) -> str:
    return MISSING if value is None else str(value)


def _refusals(site: dict[str, Any]) -> str:
    return (
        ", ".join(
            f"round {f['round']} ({f['reason']}" + (f": {f['floor']}" if f["floor"] else "") + ")"
            for f in site["refusals"]
        )
        or "none"
    )


def _person(site: dict[str, Any]) -> str:
    person = site.get("person_level")
    if person is None:
        bound = site.get("records_per_person")
        return "= per record" if bound == 1 else MISSING
    if person["delta"] is None:
        return f"{person['records_per_person']} records: none"
    records = person["records_per_person"]
    return f"({eps(person['epsilon'])}, {person['delta']:.2g}), {records} records"


def site_row(site: dict[str, Any]) -> dict[str, str]:
    """A site's row of the sample-level table, as it reads."""
    return {
        "epsilon": eps(site["epsilon"]),
        "epsilon_rdp": eps(site["epsilon_rdp"]),
        "mu": num(site["gdp_mu"]),
        "delta": delta(site["delta"]),
        "before": eps(site["epsilon_before_run"]),
        "releases_before": dash(site["releases_before_run"]),
        "runs_before": dash(site["runs_before_run"]),
        "limit": eps(site["max_epsilon"]),
        "left": eps(site["epsilon_remaining"]),
        "person": _person(site),
        "rounds": str(site["rounds_trained"]),
        "noise": _noise(site),
        "refusals": _refusals(site),
    }


def _noise(site: dict[str, Any]) -> str:
    """Where the noise came from, and for distributed steps the fallback epsilon."""
    rng = site["secure_rng"]
    source = "seeded: no guarantee" if rng is False else "site CSPRNG" if rng else "not reported"
    shared = site.get("distributed")
    if not shared:
        return source
    return f"{source}; a share of the noise (fallback epsilon {eps(shared['fallback_epsilon'])})"


def round_rows(site: dict[str, Any]) -> tuple[dict[str, str], ...]:
    """A site's per-round table, as it reads (where its events came from included)."""
    return tuple(
        {
            "round": str(x["round"]),
            "purpose": str(x["purpose"]),
            "sigma": num(x["noise_multiplier"]),
            "clip": num(x["clip_norm"]),
            "q": num(x["sample_rate"], 4),
            "steps": str(x["steps"]),
            "epochs": num(x["epochs"]),
            "epsilon_round": eps(x["epsilon_round"]),
            "epsilon_cumulative": eps(x["epsilon_cumulative"]),
            "epsilon_cumulative_rdp": eps(x["epsilon_cumulative_rdp"]),
            "claim": "matches" if x["claim_matches"] else f"claimed {eps(x['claimed_epsilon'])}",
            "source": "site ledger" if x["site_ledger"] else "as reported",
        }
        for x in site["rounds"]
    )


def floor_row(site: dict[str, Any]) -> dict[str, str]:
    """What a site decided for itself: its floor and whether its record count is public."""
    floor = site.get("floor")
    return {
        "floor": "; ".join(f"{k} = {v}" for k, v in floor.items()) if floor else "not reported",
        "record_count": "declared public" if site.get("record_count_public") else "kept private",
    }


def anonymization_row(site: dict[str, Any]) -> dict[str, str]:
    """A site's line of the anonymization table: its release, targets met, and cleansing."""
    achieved, cleaning = site["achieved"], site["cleaning"]
    release = site["release"] or "not recorded"
    dropped = person = imputed = "not recorded"
    if cleaning:
        steps = ", ".join(f"{k} {v}" for k, v in cleaning["rows_dropped_by_rule"].items() if v)
        dropped = str(cleaning["rows_dropped"]) + (f" ({steps})" if steps else "")
        per_person = cleaning["per_person"]
        person = (
            f"{per_person['rule']} on {per_person['column']}: "
            f"{per_person['people_with_several_records']} with several, "
            f"{per_person['records_removed']} removed; at most "
            f"{cleaning['max_records_per_person']}"
            if per_person
            else "no person column"
        )
        imputed = str(cleaning["cells_imputed"])
    return {
        "release": release,
        "k": dash(achieved.get("k")),
        "l": dash(achieved.get("l_distinct")),
        "t": num(achieved.get("t"), 3),
        "rows_in": dash(site["rows_in"]),
        "dropped": dropped,
        "person": person,
        "imputed": imputed,
        "suppressed": f"{dash(site['suppressed_records'])} ({pct(site['suppressed_share'])})",
        "rows_out": dash(site["rows_out"]),
    }


def column_rows(site: dict[str, Any]) -> tuple[dict[str, str], ...]:
    """A site's columns: role, transformation, and the cleansing rule and counts of each."""
    rules = (site["cleaning"] or {}).get("columns") or {}
    out = []
    for name, column in site["columns"].items():
        rule = rules.get(name) or {}
        out.append(
            {
                "column": name,
                "role": str(column.get("role")),
                "transformation": str(column.get("transformation", "")),
                "rules": ", ".join(f"{k} = {v}" for k, v in (rule.get("rules") or {}).items() if v),
                "counts": ", ".join(f"{k} {v}" for k, v in rule.items() if k != "rules"),
            }
        )
    return tuple(out)


def grouped(
    sites: Iterable[dict[str, Any]], row: Callable[[dict[str, Any]], Any]
) -> list[dict[str, Any]]:
    """Sites whose `row` reads the same, once each: {"names": [...], "row": the row}."""
    groups: dict[str, dict[str, Any]] = {}
    for site in sites:
        cells = row(site)
        group = groups.setdefault(repr(cells), {"names": [], "row": cells})
        group["names"].append(site["site"])
    return list(groups.values())


def join(names: list[str], everyone: list[str] | None = None) -> str:
    """'site-0', or 'site-0, site-1 and site-2'; 'all 100 sites' when `names` is `everyone`
    of a run with more than FOLD_ABOVE sites (the tables still name each of them)."""
    if everyone is not None and len(everyone) > FOLD_ABOVE and sorted(names) == sorted(everyone):
        return f"all {len(everyone)} sites"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def max_claimed_epsilon(report: dict[str, Any]) -> float | None:
    """The largest accounted sample-level epsilon of any site (what an audit is compared to)."""
    values = [s["epsilon"] for s in report["sample_level_dp"]["sites"] if s["epsilon"] is not None]
    return max(values) if values and report["sample_level_dp"]["enabled"] else None
