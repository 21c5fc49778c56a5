"""`verify_run`: does a run directory's signed report still match its ledgers?

Four checks, each naming what failed: every ledger's hash chain (the first bad row), the
ledger heads and row counts recorded in report.json (rows removed from the end keep a valid
chain, so only the recorded head reveals them), the Ed25519 signature over report.json's
exact bytes, and a fresh rebuild of the report from the ledgers compared field by field (an
edited report re-signed with another key). Pin the signer with `public_key`; without it the
signature is checked against the key report.json names, which proves integrity, not origin.
"""

from __future__ import annotations

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


def verify_run(run_dir: Path, public_key: Path | None = None) -> list[str]:
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
    if problems:
        return problems
    fresh = build_report(
        run_dir,
        audit=stored.get("audit"),
        software=(stored.get("provenance") or {}).get("software"),
        signer=integrity.get("signature"),
        site_limits={r["file"]: int(r["rows"]) for r in integrity.get("site_ledgers") or []},
    )
    differences = _differences(stored, fresh)
    return [f"report.json differs from the ledgers: {d}" for d in differences[:MAX_DIFFERENCES]]
