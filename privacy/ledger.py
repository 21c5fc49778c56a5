"""Append-only, hash-chained SQLite ledger of privacy-relevant events.

A site keeps one in its state directory, bound to the fingerprint of its training data, so a
new run on the same data continues from what was already spent; the server keeps one per
run. SQLite gives crash safety (a row is committed whole or not at all) and triggers that
refuse UPDATE and DELETE; the hash chain makes any edit made around those triggers (editing
the file directly) visible to `verify()`. Truncating the newest rows is only visible against
a head hash kept elsewhere (a checkpoint or a signed report).

The file uses SQLite's default rollback journal rather than WAL, so the database file alone
is always the complete ledger and can be copied or checkpointed by itself.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from privacy.atomic import atomic_path
from privacy.errors import FedVaultError

SCHEMA_VERSION = "1"
GENESIS_HASH = "0" * 64
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE rows (seq INTEGER PRIMARY KEY, time TEXT NOT NULL, kind TEXT NOT NULL,"
    " payload TEXT NOT NULL, prev_hash TEXT NOT NULL, row_hash TEXT NOT NULL)",
    *(
        f"CREATE TRIGGER {table}_no_{action} BEFORE {action.upper()} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, 'ledger {table} are append-only'); END"
        for table in ("rows", "meta")
        for action in ("update", "delete")
    ),
)
_TABLES = {"meta", "rows"}


@dataclass(frozen=True)
class Row:
    """One ledger row; `payload` is the parsed form of the canonical JSON that was hashed."""

    seq: int
    time: str
    kind: str
    payload: dict[str, Any]
    prev_hash: str
    row_hash: str


def canonical_json(payload: dict[str, Any]) -> str:
    """The one text form of a payload that is stored and hashed (sorted keys, compact)."""
    if not isinstance(payload, dict):
        raise TypeError(f"ledger payload must be a dict, got {type(payload).__name__}")
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)


def row_hash(prev_hash: str, seq: int, time: str, kind: str, payload_json: str) -> str:
    """sha256 hex of the row's fields; none of them can contain a newline, the separator."""
    text = "\n".join((prev_hash, str(seq), time, kind, payload_json))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dataset_fingerprint(data: bytes | np.ndarray | Iterable[bytes | np.ndarray]) -> str:
    """sha256 hex over training data: bytes, an array, or a sequence of them (e.g. X, y).

    Arrays contribute dtype, shape and contents, so the same data gives the same fingerprint
    whatever its memory layout, and a reshaped or retyped copy gives another.
    """
    parts = [data] if isinstance(data, bytes | np.ndarray) else list(data)
    digest = hashlib.sha256(b"fedvault-dataset-v1\n")
    for part in parts:
        if isinstance(part, bytes):
            header, body = f"bytes {len(part)}\n", part
        else:
            array = np.asarray(part)
            if array.dtype.hasobject:
                raise TypeError("object arrays have no stable bytes; fingerprint encoded data")
            header = f"array {array.dtype.str} {list(array.shape)}\n"
            body = np.ascontiguousarray(array).tobytes()
        digest.update(header.encode("ascii"))
        digest.update(body)
    return digest.hexdigest()


def _check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{what} must match {_NAME.pattern}, got {name!r}")
    return name


class Ledger:
    """An open ledger file. Use `Ledger.open`; one connection, safe to share between threads."""

    def __init__(self, path: Path, conn: sqlite3.Connection, meta: dict[str, str | None]):
        self.path = path
        self.kind: str = meta["kind"] or ""
        self.fingerprint: str | None = meta["fingerprint"]
        self.created: str = meta["created"] or ""
        self._conn = conn
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        path: str | Path,
        kind: str,
        fingerprint: str | None = None,
        *,
        create: bool = True,
        verify_chain: bool = True,
    ) -> Ledger:
        """Open the ledger at `path` (creating it if missing and `create`).

        `kind` (e.g. "site", "server") and `fingerprint` must match those it was created
        with; fingerprint None accepts any when opening an existing ledger. With
        `verify_chain`, a broken hash chain raises FedVaultError; pass False to open a
        damaged ledger and inspect it with `verify()`.
        """
        _check_name("ledger kind", kind)
        path = Path(path)
        if not path.exists():
            if not create:
                raise FedVaultError(f"no ledger at {path}")
            path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not path.is_file():
            raise FedVaultError(f"ledger path {path} is not a file")
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            meta = _initialize(conn, path, kind, fingerprint)
        except BaseException:
            conn.close()
            raise
        if meta["kind"] != kind:
            conn.close()
            raise FedVaultError(f"ledger at {path} is a {meta['kind']!r} ledger, not {kind!r}")
        if fingerprint is not None and meta["fingerprint"] != fingerprint:
            conn.close()
            raise FedVaultError(
                f"ledger at {path} belongs to dataset fingerprint "
                f"{(meta['fingerprint'] or 'none')[:16]}..., not {fingerprint[:16]}..."
            )
        ledger = cls(path, conn, meta)
        if verify_chain:
            bad = ledger.verify()
            if bad is not None:
                ledger.close()
                raise FedVaultError(
                    f"ledger at {path} has been tampered with or damaged: "
                    f"first bad row is seq {bad}"
                )
        return ledger

    def append(self, kind: str, payload: dict[str, Any]) -> Row:
        """Add one row after the current head, atomically; return it."""
        _check_name("row kind", kind)
        payload_json = canonical_json(payload)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                last = self._conn.execute(
                    "SELECT seq, row_hash FROM rows ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
                time = datetime.now(UTC).isoformat(timespec="microseconds")
                digest = row_hash(prev, seq, time, kind, payload_json)
                self._conn.execute(
                    "INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?)",
                    (seq, time, kind, payload_json, prev, digest),
                )
                self._conn.execute("COMMIT")
            finally:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
        return Row(seq, time, kind, json.loads(payload_json), prev, digest)

    def rows(self, kind: str | None = None) -> list[Row]:
        """All rows in order, or only those of `kind`."""
        rows = []
        for seq, time, row_kind, payload_json, prev, digest in self._select(kind):
            try:
                payload = json.loads(payload_json)
            except json.JSONDecodeError as exc:
                raise FedVaultError(
                    f"ledger at {self.path} row {seq} has a corrupt payload"
                ) from exc
            rows.append(Row(seq, time, row_kind, payload, prev, digest))
        return rows

    def head(self) -> str:
        """Hash of the newest row (GENESIS_HASH when empty): commits to the whole history."""
        with self._lock:
            last = self._conn.execute(
                "SELECT row_hash FROM rows ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        return last[0] if last else GENESIS_HASH

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM rows").fetchone()[0])

    def verify(self) -> int | None:
        """Seq of the first row that breaks the chain (edited, missing, moved), None if intact."""
        expected_seq, prev = 1, GENESIS_HASH
        for seq, time, kind, payload_json, stored_prev, digest in self._select(None):
            if seq != expected_seq or stored_prev != prev:
                return expected_seq
            if digest != row_hash(prev, seq, time, kind, payload_json):
                return expected_seq
            try:
                if canonical_json(json.loads(payload_json)) != payload_json:
                    return expected_seq
            except (ValueError, TypeError):
                return expected_seq
            expected_seq, prev = seq + 1, digest
        return None

    def snapshot(self, dest: str | Path) -> None:
        """Write a consistent copy of the ledger to `dest` atomically (for checkpoints)."""
        with self._lock, atomic_path(dest) as tmp:
            target = sqlite3.connect(tmp)
            try:
                self._conn.backup(target)
            finally:
                target.close()

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

    def _select(self, kind: str | None) -> list[tuple[Any, ...]]:
        query = "SELECT seq, time, kind, payload, prev_hash, row_hash FROM rows"
        with self._lock:
            if kind is None:
                return self._conn.execute(f"{query} ORDER BY seq").fetchall()
            return self._conn.execute(f"{query} WHERE kind = ? ORDER BY seq", (kind,)).fetchall()


def _initialize(
    conn: sqlite3.Connection, path: Path, kind: str, fingerprint: str | None
) -> dict[str, str | None]:
    """Create the schema in an empty database, or read the meta of an existing ledger."""
    try:
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = {
                name
                for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if not tables:
                for statement in _SCHEMA:
                    conn.execute(statement)
                created = datetime.now(UTC).isoformat(timespec="seconds")
                conn.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [
                        ("schema_version", SCHEMA_VERSION),
                        ("kind", kind),
                        ("fingerprint", fingerprint),
                        ("created", created),
                    ],
                )
                tables = set(_TABLES)
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        if tables != _TABLES:
            raise FedVaultError(f"{path} is not a FedVault ledger (tables {sorted(tables)})")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as exc:
        raise FedVaultError(f"{path} is not a FedVault ledger ({exc})") from exc
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise FedVaultError(
            f"{path} has ledger schema version {meta.get('schema_version')!r}, "
            f"expected {SCHEMA_VERSION!r}"
        )
    return {key: meta.get(key) for key in ("kind", "fingerprint", "created")}
