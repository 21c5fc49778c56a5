"""The ledger keeps what was appended, refuses edits, and exposes edits made around SQLite."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from privacy.accounting import PrivacyEvent
from privacy.dp_ledger import dp_events, record_dp_event
from privacy.errors import FedVaultError
from privacy.ledger import GENESIS_HASH, Ledger, dataset_fingerprint, row_hash

FP = dataset_fingerprint(b"site data")
OTHER_FP = dataset_fingerprint(b"other data")


def event(sigma: float = 1.1, steps: int = 100) -> PrivacyEvent:
    return PrivacyEvent(noise_multiplier=sigma, sample_rate=0.01, steps=steps, clip_norm=1.0)


def make_ledger(path: Path, n: int = 4) -> None:
    with Ledger.open(path, "site", FP) as ledger:
        for i in range(1, n + 1):
            ledger.append("round", {"round": i, "note": f"r{i}"})


def attacker(path: Path, *statements: str) -> None:
    """Edit the file directly, as someone with write access could: triggers dropped first."""
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER rows_no_update")
    conn.execute("DROP TRIGGER rows_no_delete")
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


def test_append_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.sqlite"
    with Ledger.open(path, "site", FP) as ledger:
        assert ledger.head() == GENESIS_HASH
        assert len(ledger) == 0
        first = ledger.append("round", {"b": 2, "a": [1, 2.5, None]})
        second = ledger.append("refusal", {"reason": "budget"})
        assert (first.seq, second.seq) == (1, 2)
        assert first.prev_hash == GENESIS_HASH
        assert second.prev_hash == first.row_hash
        assert first.row_hash == row_hash(
            GENESIS_HASH, 1, first.time, "round", '{"a":[1,2.5,null],"b":2}'
        )
        head = ledger.head()
    with Ledger.open(path, "site", FP) as ledger:
        assert ledger.kind == "site"
        assert ledger.fingerprint == FP
        assert ledger.head() == head == second.row_hash
        assert ledger.rows() == [first, second]
        assert ledger.rows("refusal") == [second]
        assert ledger.verify() is None
        third = ledger.append("round", {"round": 3})
        assert third.seq == 3
        assert third.prev_hash == head


def test_open_without_fingerprint_accepts_existing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, 2)
    with Ledger.open(path, "site") as ledger:
        assert ledger.fingerprint == FP
        assert len(ledger) == 2


def test_fingerprint_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, 1)
    with pytest.raises(FedVaultError, match=f"belongs to dataset fingerprint {FP[:16]}"):
        Ledger.open(path, "site", OTHER_FP)
    with Ledger.open(path, "site", FP) as ledger:
        assert len(ledger) == 1


def test_kind_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, 1)
    with pytest.raises(FedVaultError, match="is a 'site' ledger, not 'server'"):
        Ledger.open(path, "server")


def test_missing_ledger_without_create(tmp_path: Path) -> None:
    path = tmp_path / "none.sqlite"
    with pytest.raises(FedVaultError, match="no ledger at"):
        Ledger.open(path, "server", create=False)
    assert not path.exists()


def test_random_bytes_file_is_rejected_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    junk = np.random.default_rng(0).bytes(4096)
    path.write_bytes(junk)
    with pytest.raises(FedVaultError, match="is not a FedVault ledger"):
        Ledger.open(path, "site", FP)
    assert path.read_bytes() == junk


def test_foreign_sqlite_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE people (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(FedVaultError, match=r"is not a FedVault ledger \(tables \['people'\]\)"):
        Ledger.open(path, "site")


def test_wrong_schema_version_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, 1)
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER meta_no_update")
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(FedVaultError, match="schema version '99', expected '1'"):
        Ledger.open(path, "site")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE rows SET payload = '{}' WHERE seq = 1",
        "DELETE FROM rows WHERE seq = 2",
        "UPDATE meta SET value = 'x' WHERE key = 'fingerprint'",
        "DELETE FROM meta",
    ],
)
def test_update_and_delete_are_blocked(tmp_path: Path, statement: str) -> None:
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, 3)
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute(statement)
    conn.close()
    with Ledger.open(path, "site", FP) as ledger:
        assert len(ledger) == 3
        assert ledger.verify() is None


@pytest.mark.parametrize(
    ("statements", "first_bad"),
    [
        (['UPDATE rows SET payload = \'{"note":"r3","round":99}\' WHERE seq = 3'], 3),
        (['UPDATE rows SET payload = \'{"note": "r2", "round": 2}\' WHERE seq = 2'], 2),
        (["UPDATE rows SET row_hash = '" + "a" * 64 + "' WHERE seq = 2"], 2),
        (["UPDATE rows SET kind = 'refusal' WHERE seq = 4"], 4),
        (["DELETE FROM rows WHERE seq = 2"], 2),
        (["DELETE FROM rows WHERE seq = 1"], 1),
        (
            [
                "UPDATE rows SET seq = -3 WHERE seq = 3",
                "UPDATE rows SET seq = 3 WHERE seq = 2",
                "UPDATE rows SET seq = 2 WHERE seq = -3",
            ],
            2,
        ),
    ],
    ids=[
        "edit-payload",
        "reformat-payload",
        "edit-hash",
        "edit-kind",
        "delete-middle",
        "delete-first",
        "swap-rows",
    ],
)
def test_tampering_is_detected(tmp_path: Path, statements: list[str], first_bad: int) -> None:
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, 4)
    attacker(path, *statements)
    with pytest.raises(
        FedVaultError, match=f"tampered with or damaged: first bad row is seq {first_bad}"
    ):
        Ledger.open(path, "site", FP)
    with Ledger.open(path, "site", FP, verify_chain=False) as ledger:
        assert ledger.verify() == first_bad


def test_recomputed_hash_of_edited_row_still_breaks_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, 3)
    with Ledger.open(path, "site", FP) as ledger:
        row = ledger.rows()[1]
    forged = '{"note":"r2","round":0}'
    new_hash = row_hash(row.prev_hash, row.seq, row.time, row.kind, forged)
    attacker(path, f"UPDATE rows SET payload = '{forged}', row_hash = '{new_hash}' WHERE seq = 2")
    with Ledger.open(path, "site", FP, verify_chain=False) as ledger:
        assert ledger.verify() == 3


def test_concurrent_appends_keep_the_chain(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "ledger.sqlite", "server") as ledger:
        threads = [
            threading.Thread(
                target=lambda i=i: [ledger.append("round", {"t": i}) for _ in range(10)]
            )
            for i in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [row.seq for row in ledger.rows()] == list(range(1, 41))
        assert ledger.verify() is None


def test_bad_payloads_and_kinds_are_refused(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "ledger.sqlite", "server") as ledger:
        with pytest.raises(ValueError, match="Out of range float"):
            ledger.append("round", {"x": float("nan")})
        with pytest.raises(TypeError, match="must be a dict"):
            ledger.append("round", [1, 2])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="row kind must match"):
            ledger.append("Bad Kind\n", {})
        assert len(ledger) == 0


def test_snapshot_is_a_complete_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, 3)
    copy = tmp_path / "checkpoint" / "ledger.sqlite"
    with Ledger.open(path, "site", FP) as ledger:
        ledger.snapshot(copy)
        head = ledger.head()
    with Ledger.open(copy, "site", FP, create=False) as restored:
        assert restored.head() == head
        assert len(restored) == 3
    assert [p.name for p in copy.parent.iterdir()] == ["ledger.sqlite"]


def test_dp_events_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger.open(path, "site", FP) as ledger:
        record_dp_event(ledger, event(1.1), run_id="run-a", server_round=1)
        ledger.append("refusal", {"reason": "budget"})
        record_dp_event(ledger, event(0.9, 50), run_id="run-b", server_round=1)
    with Ledger.open(path, "site", FP) as ledger:
        assert dp_events(ledger) == [event(1.1), event(0.9, 50)]
        assert dp_events(ledger, run_id="run-b") == [event(0.9, 50)]
        row = ledger.rows("dp_event")[0]
        assert row.payload == {"event": event(1.1).to_dict(), "run_id": "run-a", "round": 1}


def test_dp_events_reject_malformed_rows(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "ledger.sqlite", "site", FP) as ledger:
        ledger.append("dp_event", {"event": {**event().to_dict(), "noise_multiplier": -1}})
        with pytest.raises(FedVaultError, match="noise multiplier"):
            dp_events(ledger)


def test_dataset_fingerprint() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = np.array([0, 1, 0])
    fp = dataset_fingerprint([x, y])
    assert len(fp) == 64
    assert fp == dataset_fingerprint([x.copy(order="F"), y.copy()])
    assert fp != dataset_fingerprint([x.reshape(4, 3), y])
    assert fp != dataset_fingerprint([x.astype(np.float64), y])
    assert fp != dataset_fingerprint([y, x])
    changed = x.copy()
    changed[2, 3] += 1
    assert fp != dataset_fingerprint([changed, y])
    assert dataset_fingerprint(b"abc") == dataset_fingerprint([b"abc"])
    assert dataset_fingerprint([b"ab", b"c"]) != dataset_fingerprint([b"a", b"bc"])
    with pytest.raises(TypeError, match="object arrays"):
        dataset_fingerprint(np.array(["a", None], dtype=object))


def test_crash_mid_append_leaves_no_partial_row(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, 2)
    dies_mid_insert = (
        "import os, sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "conn.execute('BEGIN IMMEDIATE')\n"
        "conn.execute(\"INSERT INTO rows VALUES (3, 't', 'round', '{}', 'x', 'y')\")\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", dies_mid_insert, str(path)], check=True)
    with Ledger.open(path, "site", FP) as ledger:
        assert len(ledger) == 2
        assert ledger.append("round", {}).seq == 3
