"""The ledger keeps what was appended, refuses edits, and exposes edits made around SQLite."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from privacy.errors import FedVaultError
from privacy.ledger import GENESIS, GENESIS_HASH, Ledger, row_hash

FP = "/data/hospital-a/admissions.csv"
OTHER_FP = "/data/hospital-a/other.csv"


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
        (genesis,) = ledger.rows()
        assert genesis.kind == GENESIS and genesis.seq == 1
        assert genesis.payload == {"dataset": FP, "ledger": "site", "schema": 2}
        assert genesis.prev_hash == GENESIS_HASH and ledger.head() == genesis.row_hash
        assert len(ledger) == 0
        first = ledger.append("round", {"b": 2, "a": [1, 2.5, None]})
        second = ledger.append("refusal", {"reason": "budget"})
        assert (first.seq, second.seq) == (2, 3)
        assert first.prev_hash == genesis.row_hash
        assert second.prev_hash == first.row_hash
        assert first.row_hash == row_hash(
            genesis.row_hash, 2, first.time, "round", '{"a":[1,2.5,null],"b":2}'
        )
        head = ledger.head()
    with Ledger.open(path, "site", FP) as ledger:
        assert ledger.kind == "site"
        assert ledger.dataset == FP
        assert ledger.created == genesis.time
        assert ledger.head() == head == second.row_hash
        assert ledger.rows() == [genesis, first, second]
        assert ledger.rows("refusal") == [second]
        assert ledger.verify() is None
        third = ledger.append("round", {"round": 3})
        assert third.seq == 4
        assert third.prev_hash == head
        with pytest.raises(ValueError, match="genesis"):
            ledger.append(GENESIS, {})


def test_open_without_dataset_accepts_existing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, 2)
    with Ledger.open(path, "site") as ledger:
        assert ledger.dataset == FP
        assert len(ledger) == 2


def test_ledger_of_another_dataset_is_refused_never_reset(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, 1)
    with pytest.raises(FedVaultError, match=f"belongs to dataset '{FP}', not '{OTHER_FP}'"):
        Ledger.open(path, "site", OTHER_FP)
    with Ledger.open(path, "site", FP) as ledger:
        assert len(ledger) == 1


def test_genesis_binds_kind_and_dataset_into_the_chain(tmp_path: Path) -> None:
    """Relabelling a ledger (kind or dataset) breaks the chain: there is no side table."""
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, 2)
    relabel = '{"dataset":"' + OTHER_FP + '","ledger":"site","schema":2}'
    attacker(path, f"UPDATE rows SET payload = '{relabel}' WHERE seq = 1")
    with pytest.raises(FedVaultError, match="first bad row is seq 1"):
        Ledger.open(path, "site")


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
    with pytest.raises(
        FedVaultError, match=r"is not a FedVault ledger of schema 2 \(tables \['people'\]\)"
    ):
        Ledger.open(path, "site")


def test_wrong_schema_version_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, 1)
    attacker(path, """UPDATE rows SET payload = '{"schema":99}' WHERE seq = 1""")
    with pytest.raises(FedVaultError, match="schema 99, expected 2"):
        Ledger.open(path, "site")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE rows SET payload = '{}' WHERE seq = 2",
        "DELETE FROM rows WHERE seq = 2",
        "UPDATE rows SET payload = '{}' WHERE seq = 1",
        "DELETE FROM rows",
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
        (['UPDATE rows SET payload = \'{"note":"r3","round":99}\' WHERE seq = 4'], 4),
        (['UPDATE rows SET payload = \'{"note": "r2", "round": 2}\' WHERE seq = 3'], 3),
        (["UPDATE rows SET row_hash = '" + "a" * 64 + "' WHERE seq = 3"], 3),
        (["UPDATE rows SET kind = 'refusal' WHERE seq = 5"], 5),
        (["DELETE FROM rows WHERE seq = 3"], 3),
        (["DELETE FROM rows WHERE seq = 2"], 2),
        (
            [
                "UPDATE rows SET seq = -3 WHERE seq = 4",
                "UPDATE rows SET seq = 4 WHERE seq = 3",
                "UPDATE rows SET seq = 3 WHERE seq = -3",
            ],
            3,
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


def test_an_edit_to_rows_this_process_already_verified_is_still_detected(
    tmp_path: Path,
) -> None:
    """Rows verified by an earlier open are trusted again only if stored exactly as verified."""
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, 4)
    Ledger.open(path, "site", FP).close()  # every row verified and remembered
    attacker(path, 'UPDATE rows SET payload = \'{"note":"r2","round":7}\' WHERE seq = 3')
    with pytest.raises(FedVaultError, match="first bad row is seq 3"):
        Ledger.open(path, "site", FP)
    with Ledger.open(path, "site", FP, verify_chain=False) as ledger:
        assert ledger.rows()[2].payload == {"note": "r2", "round": 7}
        assert ledger.verify() == 3
    path.unlink()
    make_ledger(path, 2)  # a new file at the same path: verified afresh
    with Ledger.open(path, "site", FP) as ledger:
        assert [row.payload.get("round") for row in ledger.rows()] == [None, 1, 2]


def test_reopening_hashes_only_rows_not_verified_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A site opens its ledger at every step: the cost of a check must not grow with history."""
    import privacy.ledger as ledger_module

    path = tmp_path / "ledger.sqlite"
    make_ledger(path, 50)
    Ledger.open(path, "site", FP).close()
    hashed = []
    real = ledger_module.row_hash
    monkeypatch.setattr(
        ledger_module, "row_hash", lambda *fields: hashed.append(fields[1]) or real(*fields)
    )
    with Ledger.open(path, "site", FP) as ledger:
        assert hashed == []
        ledger.append("round", {"round": 51, "note": "r51"})
    hashed.clear()
    Ledger.open(path, "site", FP).close()
    assert hashed == [52]  # the new row only (the genesis row is seq 1)


def test_recomputed_hash_of_one_edited_row_breaks_the_next_link(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, 3)
    with Ledger.open(path, "site", FP) as ledger:
        row = ledger.rows()[2]
    forged = '{"note":"r2","round":0}'
    new_hash = row_hash(row.prev_hash, row.seq, row.time, row.kind, forged)
    attacker(path, f"UPDATE rows SET payload = '{forged}', row_hash = '{new_hash}' WHERE seq = 3")
    with Ledger.open(path, "site", FP, verify_chain=False) as ledger:
        assert ledger.verify() == 4


def test_a_fully_rechained_ledger_passes_verify_and_only_a_kept_head_reveals_it(
    tmp_path: Path,
) -> None:
    """The chain is unkeyed: whoever can write the file can re-chain it. What detects that
    is a head kept outside the file (signed by the site, in the run ledger and the report)."""
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, 4)
    with Ledger.open(path, "site", FP) as ledger:
        kept_head = ledger.head()
        rows = ledger.rows()
    statements, prev = ["DELETE FROM rows WHERE seq > 1"], rows[0].row_hash
    for seq, row in enumerate([rows[1], rows[3], rows[4]], start=2):
        payload = json.dumps(row.payload, sort_keys=True, separators=(",", ":"))
        digest = row_hash(prev, seq, row.time, row.kind, payload)
        statements.append(
            f"INSERT INTO rows VALUES ({seq}, '{row.time}', '{row.kind}', '{payload}', "
            f"'{prev}', '{digest}')"
        )
        prev = digest
    attacker(path, *statements)
    with Ledger.open(path, "site", FP) as ledger:
        assert ledger.verify() is None
        assert len(ledger) == 3
        assert ledger.head() != kept_head


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
        assert [row.seq for row in ledger.rows()] == list(range(1, 42))
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


def test_exclusive_transaction_serialises_read_decide_append(tmp_path: Path) -> None:
    """Four processes each append only if fewer than 3 rows exist: exactly 3 get in."""
    path = tmp_path / "ledger.sqlite"
    Ledger.open(path, "site", FP).close()
    worker = (
        "import sys, time\n"
        "from privacy.ledger import Ledger\n"
        "with Ledger.open(sys.argv[1], 'site') as ledger:\n"
        "    for _ in range(5):\n"
        "        with ledger.exclusive() as tx:\n"
        "            if len(tx.rows('slot')) < 3:\n"
        "                time.sleep(0.05)\n"
        "                tx.append('slot', {})\n"
    )
    workers = [subprocess.Popen([sys.executable, "-c", worker, str(path)]) for _ in range(4)]
    assert all(w.wait(timeout=60) == 0 for w in workers)
    with Ledger.open(path, "site", FP) as ledger:
        assert len(ledger.rows("slot")) == 3
        assert ledger.verify() is None


def test_a_failed_transaction_appends_nothing(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "ledger.sqlite", "site", FP) as ledger:
        with pytest.raises(RuntimeError), ledger.exclusive() as tx:
            tx.append("slot", {"a": 1})
            raise RuntimeError("decided against it")
        assert ledger.rows("slot") == []
        assert len(ledger) == 0


def test_crash_mid_append_leaves_no_partial_row(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    make_ledger(path, 2)
    dies_mid_insert = (
        "import os, sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "conn.execute('BEGIN IMMEDIATE')\n"
        "conn.execute(\"INSERT INTO rows VALUES (4, 't', 'round', '{}', 'x', 'y')\")\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", dies_mid_insert, str(path)], check=True)
    with Ledger.open(path, "site", FP) as ledger:
        assert len(ledger) == 2
        assert ledger.append("round", {}).seq == 4
