"""Everything a report is built from, read from a run directory and checked on the way in.

The report must be reproducible from the run directory alone, so this is the one place that
knows its layout: config.json, status.json, metrics.json, the run ledger, and (in
simulations, where the sites' state directories lie under the run directory) each site's
ledgers. Ledgers are opened without trusting them: a broken hash chain stops the report with
the file and the first bad row named.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privacy.errors import FedVaultError
from privacy.identity import ROSTER_FILE, Roster
from privacy.ledger import GENESIS_HASH, Ledger, Row

RUN_LEDGER = "run-ledger.sqlite"
SITES_DIR = "sites"


@dataclass(frozen=True)
class LedgerFile:
    """One ledger's rows (possibly only its first `len(rows)`), with where it lies."""

    file: str
    kind: str
    dataset: str | None
    created: str
    rows: list[Row]

    @property
    def dataset_sha256(self) -> str | None:
        """The dataset identity the ledger is bound to, hashed (it may be a local path)."""
        if self.dataset is None:
            return None
        return hashlib.sha256(self.dataset.encode("utf-8")).hexdigest()

    @property
    def head(self) -> str:
        return self.rows[-1].row_hash if self.rows else GENESIS_HASH

    def summary(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "rows": len(self.rows),
            "head": self.head,
            "created": self.created,
        }


@dataclass(frozen=True)
class RunInputs:
    """A run directory's contents, parsed."""

    run_dir: Path
    config: dict[str, Any]
    config_sha256: str
    status: dict[str, Any]
    metrics: list[dict[str, Any]]
    run_ledger: LedgerFile
    site_ledgers: dict[str, list[LedgerFile]] = field(default_factory=dict)
    roster: Roster | None = None
    roster_file: str | None = None
    roster_sha256: str | None = None

    def rows(self, kind: str) -> list[Row]:
        return [row for row in self.run_ledger.rows if row.kind == kind]


def display_path(path: Path, run_dir: Path) -> str:
    """`path` relative to the run directory when inside it (reports survive a move)."""
    try:
        return path.resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return str(path)


def chain_problem(path: Path, run_dir: Path, kind: str) -> str | None:
    """One line naming the first bad row of the ledger at `path`, or None if its chain holds."""
    name = display_path(path, run_dir)
    try:
        ledger = Ledger.open(path, kind, create=False, verify_chain=False)
    except FedVaultError as exc:
        return f"{name}: {exc}"
    with ledger:
        bad = ledger.verify()
    if bad is None:
        return None
    return f"{name}: row {bad} breaks the hash chain (edited, removed or reordered)"


def read_ledger(path: Path, run_dir: Path, kind: str, limit: int | None = None) -> LedgerFile:
    """A ledger whose chain holds, all rows or the first `limit`; FedVaultError otherwise."""
    problem = chain_problem(path, run_dir, kind)
    if problem:
        raise FedVaultError(problem)
    with Ledger.open(path, kind, create=False, verify_chain=False) as ledger:
        rows = ledger.rows()
        meta = (ledger.kind, ledger.dataset, ledger.created)
    if limit is not None:
        if limit > len(rows):
            raise FedVaultError(
                f"{display_path(path, run_dir)}: has {len(rows)} rows, the report recorded "
                f"{limit} (rows were removed)"
            )
        rows = rows[:limit]
    return LedgerFile(display_path(path, run_dir), meta[0], meta[1], meta[2], rows)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FedVaultError(f"{path.parent}: no {path.name} ({what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FedVaultError(f"cannot read {path}: {exc}") from None


def sites_root(run_dir: Path, config: dict[str, Any]) -> Path | None:
    """Where the simulated sites' state lies: <run>/sites, else the run's `sites-root`."""
    inside = run_dir / SITES_DIR
    if inside.is_dir():
        return inside
    configured = str(config.get("sites-root") or "")
    if configured and Path(configured).is_dir():
        return Path(configured)
    return None


def read_run(
    run_dir: str | Path,
    site_limits: dict[str, int] | None = None,
    roster: str | Path | None = None,
) -> RunInputs:
    """Parse the run directory. `site_limits` maps a site ledger file to the rows to read.

    A site ledger keeps growing after the run (later runs on the same data); a report
    regenerated for verification reads only the rows the original report saw. The sites'
    signed ledger heads are checked against `roster` (default: the run's roster.toml).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FedVaultError(f"{run_dir} is not a directory")
    ledger_path = run_dir / RUN_LEDGER
    if not ledger_path.is_file():
        raise FedVaultError(f"{run_dir}: no {RUN_LEDGER}: not a FedVault run directory")
    config_path = run_dir / "config.json"
    config = _read_json(config_path, "the run's settings")
    if not isinstance(config, dict):
        raise FedVaultError(f"{config_path}: expected a JSON object")
    status = _read_json(run_dir / "status.json", "the run's status")
    metrics_path = run_dir / "metrics.json"
    metrics = _read_json(metrics_path, "per-round metrics") if metrics_path.exists() else []
    run_ledger = read_ledger(ledger_path, run_dir, "run")
    site_ledgers: dict[str, list[LedgerFile]] = {}
    root = sites_root(run_dir, config)
    if root is not None:
        limits = site_limits or {}
        for site_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            files = []
            for path in sorted(site_dir.glob("ledger-*.sqlite")):
                name = display_path(path, run_dir)
                if site_limits is not None and name not in limits:
                    continue
                files.append(read_ledger(path, run_dir, "site", limits.get(name)))
            site_ledgers[site_dir.name] = files
    roster_path = Path(roster) if roster is not None else run_dir / ROSTER_FILE
    loaded = Roster.load(roster_path) if roster is not None or roster_path.exists() else None
    return RunInputs(
        roster=loaded,
        roster_file=display_path(roster_path, run_dir) if loaded else None,
        roster_sha256=hashlib.sha256(roster_path.read_bytes()).hexdigest() if loaded else None,
        run_dir=run_dir,
        config=config,
        config_sha256=hashlib.sha256(config_path.read_bytes()).hexdigest(),
        status=status if isinstance(status, dict) else {},
        metrics=metrics if isinstance(metrics, list) else [],
        run_ledger=run_ledger,
        site_ledgers=site_ledgers,
    )
