"""Append-only, hash-chained SQLite ledger of privacy-relevant events.

A site keeps one per data source in its state directory, bound to the dataset identity the
site declares, so a new run on the same data continues from what was already spent; the
server keeps one per run. The first row (genesis) binds the ledger's kind and dataset
identity into the chain: there is no side table to edit. SQLite gives crash safety (a row
is committed whole or not at all) and triggers that refuse UPDATE and DELETE; the hash
chain makes an edit made around those triggers visible to `verify()` unless the editor
recomputes every later hash. Re-chaining and truncation are only visible against a head
kept elsewhere: a signed head (the site's, in the run ledger and the report) or a
checkpoint.

`exclusive()` runs a read-decide-append sequence as one exclusive SQLite transaction, so
two processes that check a budget against the same ledger are serialised: the second sees
the first's row before it decides.

The file uses SQLite's default rollback journal rather than WAL, so the database file alone
is always the complete ledger and can be copied by itself.

A site's process opens its ledger for every request, hundreds of times a run. It remembers,
per file, the stored rows it has already verified and parsed: a later open compares the
stored rows with those, field by field, and hashes and parses only the rows that differ or
are new. A row is trusted again only if it is byte for byte the row that was verified, at
the same place after the same rows, so the check gives what a full one would.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from privacy.errors import FedVaultError

SCHEMA_VERSION = 2
GENESIS = "genesis"
GENESIS_HASH = "0" * 64
LOCK_TIMEOUT_S = 300.0  # how long a writer waits for another process's transaction
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

_SCHEMA = (
    "CREATE TABLE rows (seq INTEGER PRIMARY KEY, time TEXT NOT NULL, kind TEXT NOT NULL,"
    " payload TEXT NOT NULL, prev_hash TEXT NOT NULL, row_hash TEXT NOT NULL)",
    *(
        f"CREATE TRIGGER rows_no_{action} BEFORE {action.upper()} ON rows "
        f"BEGIN SELECT RAISE(ABORT, 'ledger rows are append-only'); END"
        for action in ("update", "delete")
    ),
)
_SELECT = "SELECT seq, time, kind, payload, prev_hash, row_hash FROM rows"
_KNOWN_LEDGERS = 64  # files whose verified rows a process remembers


@dataclass(frozen=True)
class Row:
    """One ledger row; `payload` is the parsed form of the canonical JSON that was hashed.

    Rows read from a ledger are shared within a process (see the module docstring): read
    their payloads, never change them.
    """

    seq: int
    time: str
    kind: str
    payload: dict[str, Any]
    prev_hash: str
    row_hash: str


class _KnownRows:
    """The verified prefix of one ledger file: its stored rows and their parsed forms."""

    def __init__(self) -> None:
        self.stored: list[tuple[Any, ...]] = []
        self.parsed: list[Row] = []
        self.lock = threading.Lock()

    def verified_prefix(self, stored: list[tuple[Any, ...]]) -> int:
        """How many leading rows of `stored` are exactly rows verified before."""
        n = min(len(stored), len(self.stored))
        if stored[:n] == self.stored[:n]:
            return n
        return next(i for i in range(n) if stored[i] != self.stored[i])

    def parsed_row(self, raw: tuple[Any, ...]) -> Row | None:
        index = raw[0] - 1
        with self.lock:
            if 0 <= index < len(self.stored) and self.stored[index] == raw:
                return self.parsed[index]
        return None


@functools.lru_cache(maxsize=_KNOWN_LEDGERS)
def _known_rows(resolved_path: str) -> _KnownRows:
    """What this process verified of the ledger file at `resolved_path` (kept for 64 files)."""
    return _KnownRows()


def canonical_json(payload: dict[str, Any]) -> str:
    """The one text form of a payload that is stored and hashed (sorted keys, compact)."""
    if not isinstance(payload, dict):
        raise TypeError(f"ledger payload must be a dict, got {type(payload).__name__}")
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)


def row_hash(prev_hash: str, seq: int, time: str, kind: str, payload_json: str) -> str:
    """sha256 hex of the row's fields; none of them can contain a newline, the separator."""
    text = "\n".join((prev_hash, str(seq), time, kind, payload_json))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{what} must match {_NAME.pattern}, got {name!r}")
    return name


class Transaction:
    """Reads and appends inside one exclusive transaction (see `Ledger.exclusive`)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def rows(self, kind: str | None = None) -> list[Row]:
        return self._ledger._parse(self._ledger._select(kind))

    def append(self, kind: str, payload: dict[str, Any]) -> Row:
        _check_name("row kind", kind)
        if kind == GENESIS:
            raise ValueError("only a new ledger has a genesis row")
        return _insert(self._ledger._conn, kind, canonical_json(payload))


class Ledger:
    """An open ledger file. Use `Ledger.open`; one connection, safe to share between threads."""

    def __init__(self, path: Path, conn: sqlite3.Connection, genesis: Row) -> None:
        self.path = path
        self.kind: str = str(genesis.payload.get("ledger", ""))
        self.dataset: str | None = genesis.payload.get("dataset")
        self.created: str = genesis.time
        self._conn = conn
        self._lock = threading.Lock()
        self._known = _known_rows(str(path.resolve()))

    @classmethod
    def open(
        cls,
        path: str | Path,
        kind: str,
        dataset: str | None = None,
        *,
        create: bool = True,
        verify_chain: bool = True,
    ) -> Ledger:
        """Open the ledger at `path` (creating it if missing and `create`).

        `kind` (e.g. "site", "run") and `dataset` (the identity of the data whose privacy
        the ledger accounts for) must match those in its genesis row; dataset None accepts
        any when opening an existing ledger. With `verify_chain`, a broken hash chain
        raises FedVaultError; pass False to open a damaged ledger and inspect it with
        `verify()`.
        """
        _check_name("ledger kind", kind)
        path = Path(path)
        if not path.exists():
            if not create:
                raise FedVaultError(f"no ledger at {path}")
            path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not path.is_file():
            raise FedVaultError(f"ledger path {path} is not a file")
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=LOCK_TIMEOUT_S
        )
        try:
            genesis = _initialize(conn, path, kind, dataset)
        except BaseException:
            conn.close()
            raise
        ledger = cls(path, conn, genesis)
        problem = None
        if ledger.kind != kind:
            problem = f"ledger at {path} is a {ledger.kind!r} ledger, not {kind!r}"
        elif dataset is not None and ledger.dataset != dataset:
            problem = (
                f"ledger at {path} belongs to dataset {ledger.dataset!r}, not {dataset!r}; "
                "it is refused, never reset"
            )
        elif verify_chain and (bad := ledger.verify()) is not None:
            problem = (
                f"ledger at {path} has been tampered with or damaged: first bad row is seq {bad}"
            )
        if problem:
            ledger.close()
            raise FedVaultError(problem)
        return ledger

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[Transaction]:
        """One exclusive transaction: what is read inside it stays true until it commits.

        Rows appended inside are committed together when the block ends, and none of them
        if it raises.
        """
        with self._lock:
            self._conn.execute("BEGIN EXCLUSIVE")
            try:
                yield Transaction(self)
                self._conn.execute("COMMIT")
            finally:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")

    def append(self, kind: str, payload: dict[str, Any]) -> Row:
        """Add one row after the current head, atomically; return it."""
        with self.exclusive() as tx:
            return tx.append(kind, payload)

    def rows(self, kind: str | None = None) -> list[Row]:
        """All rows in order (the genesis row first), or only those of `kind`."""
        with self._lock:
            return self._parse(self._select(kind))

    def head(self) -> str:
        """Hash of the newest row: commits to the whole history, genesis included."""
        with self._lock:
            last = self._conn.execute(
                "SELECT row_hash FROM rows ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        return last[0] if last else GENESIS_HASH

    def __len__(self) -> int:
        """Number of rows after the genesis row."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM rows").fetchone()[0]) - 1

    def verify(self) -> int | None:
        """Seq of the first row that breaks the chain (edited, missing, moved), None if intact."""
        with self._lock:
            stored = self._select(None)
        known = self._known
        with known.lock:
            start = known.verified_prefix(stored)
            expected_seq, prev = (start + 1, stored[start - 1][5]) if start else (1, GENESIS_HASH)
            del known.stored[start:], known.parsed[start:]
            for raw in stored[start:]:
                seq, time, kind, payload_json, stored_prev, digest = raw
                if seq != expected_seq or stored_prev != prev:
                    return expected_seq
                if digest != row_hash(prev, seq, time, kind, payload_json):
                    return expected_seq
                if (seq == 1) != (kind == GENESIS):
                    return expected_seq
                try:
                    payload = json.loads(payload_json)
                    if canonical_json(payload) != payload_json:
                        return expected_seq
                except (ValueError, TypeError):
                    return expected_seq
                known.stored.append(raw)
                known.parsed.append(Row(seq, time, kind, payload, stored_prev, digest))
                expected_seq, prev = seq + 1, digest
        return None if expected_seq > 1 else 1

    def close(self) -> None:
        """Close the connection; the object is unusable afterwards."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals: callers hold self._lock ------------------------------------------------

    def _select(self, kind: str | None) -> list[tuple[Any, ...]]:
        if kind is None:
            return self._conn.execute(f"{_SELECT} ORDER BY seq").fetchall()
        return self._conn.execute(f"{_SELECT} WHERE kind = ? ORDER BY seq", (kind,)).fetchall()

    def _parse(self, stored: list[tuple[Any, ...]]) -> list[Row]:
        rows = []
        for raw in stored:
            known = self._known.parsed_row(raw)
            if known is not None:
                rows.append(known)
                continue
            seq, time, kind, payload_json, prev, digest = raw
            try:
                payload = json.loads(payload_json)
            except json.JSONDecodeError as exc:
                raise FedVaultError(
                    f"ledger at {self.path} row {seq} has a corrupt payload"
                ) from exc
            rows.append(Row(seq, time, kind, payload, prev, digest))
        return rows


def _insert(conn: sqlite3.Connection, kind: str, payload_json: str) -> Row:
    """Append a row inside the caller's transaction."""
    last = conn.execute("SELECT seq, row_hash FROM rows ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
    time = datetime.now(UTC).isoformat(timespec="microseconds")
    digest = row_hash(prev, seq, time, kind, payload_json)
    conn.execute(
        "INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?)",
        (seq, time, kind, payload_json, prev, digest),
    )
    return Row(seq, time, kind, json.loads(payload_json), prev, digest)


def _initialize(conn: sqlite3.Connection, path: Path, kind: str, dataset: str | None) -> Row:
    """Create the table and the genesis row in an empty database; return the genesis row."""
    try:
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN EXCLUSIVE")
        try:
            tables = {
                name
                for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if not tables:
                for statement in _SCHEMA:
                    conn.execute(statement)
                genesis = {"ledger": kind, "dataset": dataset, "schema": SCHEMA_VERSION}
                _insert(conn, GENESIS, canonical_json(genesis))
                tables = {"rows"}
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        if tables != {"rows"}:
            raise FedVaultError(
                f"{path} is not a FedVault ledger of schema {SCHEMA_VERSION} "
                f"(tables {sorted(tables)})"
            )
        first = conn.execute(f"{_SELECT} WHERE seq = 1").fetchone()
    except sqlite3.DatabaseError as exc:
        raise FedVaultError(f"{path} is not a FedVault ledger ({exc})") from exc
    if first is None or first[2] != GENESIS:
        raise FedVaultError(f"{path} has no genesis row: not a FedVault ledger, or damaged")
    seq, time, row_kind, payload_json, prev, digest = first
    try:
        payload = json.loads(payload_json)
    except json.JSONDecodeError:
        raise FedVaultError(f"{path}: its genesis row is corrupt") from None
    if payload.get("schema") != SCHEMA_VERSION:
        raise FedVaultError(
            f"{path} has ledger schema {payload.get('schema')!r}, expected {SCHEMA_VERSION}"
        )
    return Row(seq, time, row_kind, payload, prev, digest)
