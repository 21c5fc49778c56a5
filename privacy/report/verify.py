"""`verify_run`: does a run directory's signed report still match its ledgers?

The checks, each naming what failed: every ledger's hash chain (the first bad row); the
ledger heads and row counts recorded in report.json (rows removed from the end keep a valid
chain, so only the recorded head reveals them); the Ed25519 signature over report.json's
exact bytes; the SHA-256 report.json records for report.html, report.md and every plot;
the ledger heads each site signed with its roster key, against the site ledgers in the run
directory (the coordinator can re-chain a ledger and re-sign the report, but cannot sign
as a site); and a fresh rebuild of the report from the ledgers compared field by field.
Pin the signer with `public_key` and the roster with `roster`; without them the signature
is checked against the key report.json names and the heads against the run's roster.toml,
which proves integrity, not origin.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from privacy.errors import FedVaultError
from privacy.ledger import Ledger
from privacy.report.inputs import RUN_LEDGER, chain_problem, sites_root
from privacy.report.model import build_report
from privacy.report.signing import (
    fingerprint,
    load_public_key,
    public_key_from_record,
    signature_valid,
)

FLOAT_TOLERANCE = 1e-9  # relative; a rebuild on another machine may differ in the last bits
MAX_DIFFERENCES = 3


def _ledger_files(run_dir: Path, config: dict[str, Any]) -> list[tuple[Path, str]]:
    files = [(run_dir / RUN_LEDGER, "run")]
    root = sites_root(run_dir, config)
    if root is not None:
        files += [(path, "site") for path in sorted(root.glob("*/ledger-*.sqlite"))]
    return files


def _recorded_prefix(run_dir: Path, record: dict[str, Any], kind: str, exact: bool) -> str | None:
    """Problem if the ledger lacks the recorded rows/head (or, `exact`, has more rows)."""
    name = str(record.get("file"))
    path = run_dir / name
    if not path.is_file():
        return f"{name}: missing (report.json records {record.get('rows')} rows)"
    try:
        with Ledger.open(path, kind, create=False, verify_chain=False) as ledger:
            rows = ledger.rows()
        recorded = int(record.get("rows", -1))
    except (FedVaultError, TypeError, ValueError) as exc:
        return f"{name}: cannot check the recorded rows ({exc})"
    if len(rows) < recorded or (exact and len(rows) != recorded):
        return (
            f"{name}: has {len(rows)} rows, report.json records {recorded} "
            f"({'rows removed' if len(rows) < recorded else 'rows added after the report'})"
        )
    head = rows[recorded - 1].row_hash if recorded > 0 else "0" * 64
    if head != record.get("head"):
        return f"{name}: row {recorded} is not the chain head report.json records"
    return None


def _differences(stored: Any, fresh: Any, path: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(fresh, dict):
        out = []
        for key in list(stored) + [k for k in fresh if k not in stored]:
            where = f"{path}.{key}" if path else str(key)
            if key not in fresh or key not in stored:
                out.append(f"{where} is {'extra' if key not in fresh else 'missing'}")
            else:
                out += _differences(stored[key], fresh[key], where)
        return out
    if isinstance(stored, list) and isinstance(fresh, list):
        if len(stored) != len(fresh):
            return [f"{path} has {len(stored)} entries, the ledgers give {len(fresh)}"]
        return [
            d
            for i, (a, b) in enumerate(zip(stored, fresh, strict=True))
            for d in _differences(a, b, f"{path}[{i}]")
        ]
    numbers = (int, float)
    if (
        isinstance(stored, numbers)
        and isinstance(fresh, numbers)
        and not isinstance(stored, bool)
        and not isinstance(fresh, bool)
    ):
        if math.isclose(stored, fresh, rel_tol=FLOAT_TOLERANCE, abs_tol=1e-12):
            return []
    elif stored == fresh:
        return []
    return [f"{path} is {json.dumps(stored)[:60]}, the ledgers give {json.dumps(fresh)[:60]}"]


def _signature_problems(
    run_dir: Path, data: bytes, stored: dict, public_key: Path | None
) -> list[str]:
    record = (stored.get("integrity") or {}).get("signature")
    if not record:
        return ["report.json is not signed (no integrity.signature)"]
    sig_path = run_dir / "report.sig"
    if not sig_path.is_file():
        return ["report.sig: missing"]
    problems = []
    key = public_key_from_record(record)
    if fingerprint(key) != record.get("public_key_sha256"):
        problems.append("report.json: the signer fingerprint does not match its public key")
    if public_key is not None:
        pinned = load_public_key(public_key)
        if fingerprint(pinned) != fingerprint(key):
            problems.append(
                f"report.json: signed by key {fingerprint(key)[:16]}..., not by the given "
                f"public key {fingerprint(pinned)[:16]}..."
            )
        key = pinned
    if not signature_valid(key, data, sig_path.read_bytes()):
        problems.append("report.sig: the signature does not match report.json (report edited)")
    return problems


def _file_problems(run_dir: Path, stored: dict) -> list[str]:
    """Rendered files edited, swapped or added after signing."""
    listed = (stored.get("integrity") or {}).get("files_sha256") or {}
    problems = []
    for name, digest in sorted(listed.items()):
        path = run_dir / name
        if not path.is_file():
            problems.append(f"{name}: missing (report.json records its hash)")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"{name}: changed after the report was signed")
    for path in sorted((run_dir / "plots").glob("*")) if (run_dir / "plots").is_dir() else []:
        name = path.relative_to(run_dir).as_posix()
        if name not in listed:
            problems.append(f"{name}: not covered by the signed report")
    return problems


def _signed_head_problems(fresh: dict) -> list[str]:
    """Site ledgers that no longer hold the heads their sites signed."""
    held = {s["site"]: s for s in (fresh.get("integrity") or {}).get("site_ledgers") or []}
    problems = []
    for site in fresh["sample_level_dp"]["sites"]:
        if site["site"] not in held:
            continue
        for entry in site["rounds"]:
            if entry["head_signature"] == "valid" and entry["site_ledger"] is None:
                problems.append(
                    f"{held[site['site']]['file']}: does not hold the ledger head "
                    f"{site['site']} signed after round {entry['round']} (the ledger was "
                    "rewritten)"
                )
                break
    return problems


def verify_run(
    run_dir: Path, public_key: Path | None = None, roster: Path | None = None
) -> list[str]:
    """Problems found in the run directory's report and ledgers; empty when all checks pass.

    FedVaultError when there is nothing to verify (no run ledger, no report.json) or the
    given public key cannot be read.
    """
    run_dir = Path(run_dir)
    if not (run_dir / RUN_LEDGER).is_file():
        raise FedVaultError(f"{run_dir}: no {RUN_LEDGER}: not a FedVault run directory")
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        raise FedVaultError(f"{run_dir}: no report.json to verify (run `fedvault report` first)")
    if public_key is not None:
        load_public_key(public_key)
    data = report_path.read_bytes()
    try:
        stored = json.loads(data)
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"report.json or config.json is unreadable or not valid JSON ({exc})"]
    if not isinstance(stored, dict):
        return ["report.json: not a JSON object"]
    problems = [
        p
        for path, kind in _ledger_files(run_dir, config)
        if (p := chain_problem(path, run_dir, kind))
    ]
    integrity = stored.get("integrity") or {}
    if not problems:
        recorded = [(integrity.get("run_ledger") or {}, "run", True)]
        recorded += [(r, "site", False) for r in integrity.get("site_ledgers") or []]
        problems += [
            p for rec, kind, exact in recorded if (p := _recorded_prefix(run_dir, rec, kind, exact))
        ]
    try:
        problems += _signature_problems(run_dir, data, stored, public_key)
    except FedVaultError as exc:
        problems.append(str(exc))
    problems += _file_problems(run_dir, stored)
    if problems:
        return problems
    fresh = build_report(
        run_dir,
        audit=stored.get("audit"),
        software=(stored.get("provenance") or {}).get("software"),
        signer=integrity.get("signature"),
        site_limits={r["file"]: int(r["rows"]) for r in integrity.get("site_ledgers") or []},
        roster=roster,
        files=integrity.get("files_sha256"),
    )
    problems = _signed_head_problems(fresh)
    differences = _differences(stored, fresh)
    return problems + [
        f"report.json differs from the ledgers: {d}" for d in differences[:MAX_DIFFERENCES]
    ]
