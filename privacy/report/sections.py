"""The report sections other than sample-level DP: client-level DP, secure aggregation,
anonymization, model utility and provenance, each read from the run ledger and run files.

Each function returns plain JSON data laid out as docs/report-schema.md describes; the
renderers only present it.
"""

from __future__ import annotations

import math
import platform
from importlib import metadata
from typing import Any

from privacy.errors import FedVaultError
from privacy.report.inputs import RunInputs
from privacy.report.sample_dp import natural_key

SOFTWARE = ("fedvault", "flwr", "torch", "opacus", "dp-accounting", "cryptography", "numpy")
CLAIM_TOLERANCE = 1e-6


def software_versions() -> dict[str, str]:
    """Versions of the software that produced the numbers (Python included)."""
    versions = {"python": platform.python_version()}
    for name in SOFTWARE:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


_CLIENT_ROW_KEYS = ("round", "noise-multiplier", "clip-norm", "sampling", "epsilon", "event")


def client_level(inputs: RunInputs, findings: list[dict[str, str]]) -> dict[str, Any]:
    """Client-level DP ("client_dp_round" rows), recomputed when the rows carry their event.

    sigma, C and the sampling scheme come from the row's `event` (a `ClientDpEvent` dict), or
    from top-level "noise-multiplier" / "clip-norm" / "sampling" keys of rows without one.
    """
    rows = inputs.rows("client_dp_round")
    if not rows:
        return {"enabled": False}
    rounds = []
    for row in rows:
        p = row.payload
        event = p.get("event") if isinstance(p.get("event"), dict) else {}
        rounds.append(
            {
                "round": p.get("round"),
                "noise_multiplier": event.get("noise_multiplier", p.get("noise-multiplier")),
                "clip_norm": event.get("clip_norm", p.get("clip-norm")),
                "sampling": event.get("sampling", p.get("sampling")),
                "claimed_epsilon": p.get("epsilon"),
                "epsilon": None,
                "details": {k: v for k, v in p.items() if k not in _CLIENT_ROW_KEYS},
            }
        )
    accountant, delta = _client_accountant(rows, inputs)
    if all("event" in row.payload for row in rows):
        _recompute_client_level(rows, rounds, accountant, delta, findings)
    else:
        findings.append(
            {
                "severity": "warning",
                "message": "client-level epsilon is as claimed by the server: its ledger rows "
                "carry no event to recompute it from",
            }
        )
    return {
        "enabled": True,
        "unit_of_privacy": "one site (all of its records)",
        "accountant": {
            "name": accountant,
            "implementation": "dp-accounting",
            "version": _version("dp-accounting"),
        },
        "delta": delta,
        "max_epsilon": rows[-1].payload.get("max-epsilon"),
        "rounds": rounds,
        "stopped": [
            {"round": row.payload.get("round"), "reason": row.payload.get("reason")}
            for row in inputs.rows("client_dp_stop")
        ],
    }


def _client_accountant(rows: list, inputs: RunInputs) -> tuple[str, float]:
    last = rows[-1].payload
    return str(last.get("accountant", "rdp")), float(
        last.get("delta", inputs.config.get("delta", 1e-5))
    )


def _recompute_client_level(
    rows: list, rounds: list[dict], accountant: str, delta: float, findings: list
) -> None:
    """Fill `epsilon` of each round (null when unbounded: no noise) and flag wrong claims."""
    from privacy.client_dp import ClientDpEvent, client_level_epsilon

    events = []
    for row, record in zip(rows, rounds, strict=True):
        try:
            events.append(ClientDpEvent.from_dict(row.payload["event"]))
            value = client_level_epsilon(events, delta, accountant)
        except (FedVaultError, TypeError) as exc:
            raise FedVaultError(
                f"run ledger row {row.seq} (client DP) is malformed: {exc}"
            ) from None
        record["epsilon"] = value if math.isfinite(value) else None
        claimed = record["claimed_epsilon"]
        if claimed is None and record["epsilon"] is None:
            continue
        if (
            not isinstance(claimed, int | float)
            or record["epsilon"] is None
            or abs(claimed - value) > CLAIM_TOLERANCE * max(1.0, value)
        ):
            findings.append(
                {
                    "severity": "error",
                    "message": f"client-level DP round {record['round']}: claimed epsilon "
                    f"{claimed} but the events give {value:.6g}",
                }
            )


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def secure_aggregation(inputs: RunInputs) -> dict[str, Any]:
    """Protocol, parameters and per-round participation of secure aggregation."""
    config = inputs.config
    enabled = bool(config.get("secagg"))
    neighbours = config.get("secagg-neighbours", 0)
    rounds = []
    for row in inputs.rows("secagg_round"):
        p = row.payload
        dropped = p.get("dropped") or {}
        rounds.append(
            {
                "round": p.get("round"),
                "session": p.get("session"),
                "sampled": p.get("sampled"),
                "contributors": p.get("contributors"),
                "dropped": dropped,
                "dropouts": len(dropped),
                "rejections": p.get("rejections") or [],
                "aborted": p.get("aborted") or "",
                "out_of_range": p.get("out-of-range", 0),
            }
        )
    return {
        "enabled": enabled,
        **_threat_model(bool(config.get("secagg-authenticated"))),
        "parameters": {
            "neighbours": neighbours if neighbours else "O(log n) default",
            "reconstruction_threshold": config.get("secagg-threshold"),
            "clipping_range": config.get("secagg-clip-range"),
            "quantization_bits": config.get("secagg-bits"),
            "stage_timeout_s": config.get("secagg-timeout"),
        },
        "rounds": rounds,
        "totals": {
            "rounds": len(rounds),
            "aborted": sum(1 for r in rounds if r["aborted"]),
            "dropouts": sum(r["dropouts"] for r in rounds),
            "out_of_range": sum(int(r["out_of_range"] or 0) for r in rounds),
        },
        "transport": _transport(inputs),
    }


def _threat_model(authenticated: bool) -> dict[str, Any]:
    """What the run's secure aggregation hides, and from whom; docs/secure-aggregation.md."""
    protocol = (
        "SecAgg+ (Bell et al. 2020): pairwise masks on a random neighbour graph, Shamir "
        "shares for dropout recovery"
    )
    if authenticated:
        return {
            "mode": "authenticated",
            "protocol": protocol + "; keys and survivor sets signed with the sites' roster "
            "identities, with a consistency stage (Bonawitz et al. 2017, malicious model)",
            "protects": "each site's update against a server that deviates from the protocol: "
            "it sees only the sum, also if it substitutes keys, invents sites or tells sites "
            "different dropout stories",
            "does_not_protect": "a site whose neighbours collude with the server beyond the "
            "threshold; the integrity of the sum against a malicious site; traffic analysis",
        }
    return {
        "mode": "semi-honest",
        "protocol": protocol,
        "protects": "each site's update against a server that follows the protocol: it sees "
        "only the sum",
        "does_not_protect": "a server that substitutes the sites' keys or lies about who "
        "dropped out: peer keys are not authenticated in this mode",
    }


def _transport(inputs: RunInputs) -> dict[str, Any]:
    """What the run recorded about its transport; nothing is assumed that was not recorded."""
    if inputs.config.get("sites-root"):
        return {
            "mode": "simulation",
            "tls": None,
            "node_authentication": None,
            "note": "simulated sites run inside one process: no network transport",
        }
    recorded = [row.payload for row in inputs.rows("transport")]
    if not recorded:
        return {
            "mode": "deployment",
            "tls": None,
            "node_authentication": None,
            "note": "not recorded: the run was not started by `fedvault server`",
        }
    last = recorded[-1]
    return {
        "mode": "deployment",
        "tls": last.get("tls"),
        "node_authentication": last.get("node-authentication"),
        "note": str(last.get("source", "")),
    }


def anonymization(inputs: RunInputs) -> list[dict[str, Any]]:
    """Per site in site order, the anonymization report its policy produced (first in the run).

    `release` and `cleaning` are null in rows written before sites reported them: the
    summary then says the release kind is unknown rather than calling it anonymized.
    """
    sites = []
    for row in inputs.rows("anonymization"):
        p = row.payload
        sites.append(
            {
                "site": p.get("site"),
                "round": p.get("round"),
                "policy": p.get("policy"),
                "method": p.get("method"),
                "release": p.get("release"),
                "release_note": p.get("release_note"),
                "targets": p.get("targets"),
                "achieved": _weakest(p.get("achieved") or {}),
                "cleaning": p.get("cleaning"),
                "rows_in": p.get("rows_in"),
                "rows_after_cleaning": p.get("rows_after_cleaning"),
                "rows_out": p.get("rows_out"),
                "suppressed_records": p.get("suppressed_records"),
                "suppressed_share": p.get("suppressed_share"),
                "equivalence_classes": p.get("equivalence_classes"),
                "risk": p.get("risk") or {},
                "information_loss": p.get("information_loss") or {},
                "columns": p.get("columns") or {},
            }
        )
    return sorted(sites, key=lambda site: natural_key(str(site["site"])))


def records_per_person(anonymization: list[dict[str, Any]]) -> dict[str, int | None]:
    """Each anonymizing site's per-person bound from its cleansing (None: nobody checked)."""
    return {
        str(site["site"]): (site["cleaning"] or {}).get("max_records_per_person")
        for site in anonymization
    }


def _weakest(achieved: dict[str, Any]) -> dict[str, Any]:
    """k, and l and t of the weakest sensitive column (l and t are per column)."""
    out: dict[str, Any] = {"k": achieved.get("k"), "by_column": {}}
    for key, pick in (("l_distinct", min), ("l_entropy", min), ("t", max)):
        value = achieved.get(key)
        if isinstance(value, dict):
            out["by_column"][key] = value
            value = pick(value.values()) if value else None
        out[key] = value
    return out


UTILITY_COLUMNS = {
    "round": "round",
    "test-accuracy": "test_accuracy",
    "test-loss": "test_loss",
    "client-eval-accuracy": "client_eval_accuracy",
    "client-eval-loss": "client_eval_loss",
    "sites-trained": "sites_trained",
    "sites-refused": "sites_refused",
    "sites-failed": "sites_failed",
}


def utility(inputs: RunInputs) -> dict[str, Any]:
    """Global test metrics and the sites' own evaluation, per round (round 0 = initial)."""
    rounds = [
        {name: row.get(key) for key, name in UTILITY_COLUMNS.items()}
        for row in inputs.metrics
        if isinstance(row, dict)
    ]
    final = rounds[-1] if rounds else {}
    return {
        "test_set": "the task's held-out test set, at the server",
        "client_eval": "pooled over the validation rows of the sites that allow evaluation, "
        "from DP-noised sums each site accounted in its own ledger",
        "final_test_accuracy": final.get("test_accuracy"),
        "rounds": rounds,
    }


def provenance(inputs: RunInputs, software: dict[str, str], run_ids: list[str]) -> dict[str, Any]:
    """What produced the run: software, configuration and its hash, data, ids and times."""
    datasets = []
    for site, files in inputs.site_ledgers.items():
        for ledger in files:
            datasets.append(
                {"site": site, "dataset_sha256": ledger.dataset_sha256, "ledger": ledger.file}
            )
    rows = inputs.run_ledger.rows
    return {
        "software": software,
        "config": inputs.config,
        "config_sha256": inputs.config_sha256,
        "task": inputs.config.get("task.name"),
        "datasets": datasets,
        "run_ids": run_ids,
        "status": inputs.status.get("status"),
        "status_time": inputs.status.get("time"),
        "ledger_created": inputs.run_ledger.created,
        "first_event": rows[0].time if rows else None,
        "last_event": rows[-1].time if rows else None,
    }
