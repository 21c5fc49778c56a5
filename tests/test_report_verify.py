"""Integrity: any edit to a ledger row or to report.json makes `--verify` fail and name it."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from report_run import make_run

from cli.main import main
from privacy.certs import CURVE
from privacy.errors import FedVaultError
from privacy.identity import Roster, write_roster
from privacy.ledger import Ledger, row_hash
from privacy.report import load_or_create_signing_key, verify_run, write_report
from privacy.report.model import build_report
from privacy.report.signing import public_key_path, sign, signer_record


@pytest.fixture(scope="module")
def signed_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("signed")
    make_run(base / "run", sites=2, rounds=2)
    write_report(base / "run", signing_key_path=base / "server" / "signing.key", formats=())
    return base


@pytest.fixture
def signed(signed_once: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A fresh copy of one signed run (building it once keeps the file fast)."""
    shutil.copytree(signed_once, tmp_path, dirs_exist_ok=True)
    return tmp_path / "run", public_key_path(tmp_path / "server" / "signing.key")


def _sql(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    for statement in ("DROP TRIGGER rows_no_update", "DROP TRIGGER rows_no_delete", *statements):
        conn.execute(statement)
    conn.commit()
    conn.close()


def test_untouched_run_verifies(signed):
    run, pub = signed
    assert verify_run(run, pub) == []
    assert verify_run(run) == []


def test_key_is_private_and_public_half_beside_it(tmp_path):
    key = tmp_path / "k" / "signing.key"
    load_or_create_signing_key(key)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert public_key_path(key).read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    key.write_text("not a key")
    with pytest.raises(FedVaultError, match="cannot read signing key"):
        load_or_create_signing_key(key)


def test_edited_run_ledger_row_is_named(signed):
    run, pub = signed
    with sqlite3.connect(run / "run-ledger.sqlite") as conn:
        (payload,) = conn.execute("SELECT payload FROM rows WHERE seq = 3").fetchone()
    edited = payload.replace('"epsilon":', '"epsilon": ', 1).replace(
        '"epsilon": ', '"epsilon":1', 1
    )
    assert edited != payload
    _sql(run / "run-ledger.sqlite", f"UPDATE rows SET payload = '{edited}' WHERE seq = 3")
    problems = verify_run(run, pub)
    assert problems[0] == (
        "run-ledger.sqlite: row 3 breaks the hash chain (edited, removed or reordered)"
    )


def test_edited_site_ledger_row_is_named(signed):
    run, pub = signed
    (ledger,) = (run / "sites" / "site-1").glob("ledger-*.sqlite")
    _sql(
        ledger,
        "UPDATE rows SET payload = replace(payload, '\"steps\":40', '\"steps\":4') WHERE seq = 2",
    )
    problems = verify_run(run, pub)
    assert problems == [
        f"sites/site-1/{ledger.name}: row 2 breaks the hash chain (edited, removed or reordered)"
    ]


def test_truncated_run_ledger_is_detected(signed):
    run, pub = signed
    _sql(run / "run-ledger.sqlite", "DELETE FROM rows WHERE seq = (SELECT MAX(seq) FROM rows)")
    problems = verify_run(run, pub)
    assert problems[0].startswith(
        "run-ledger.sqlite: has 6 rows, report.json records 7 (rows removed)"
    )


def test_truncated_site_ledger_is_detected(signed):
    run, pub = signed
    (ledger,) = (run / "sites" / "site-0").glob("ledger-*.sqlite")
    _sql(ledger, "DELETE FROM rows WHERE seq = (SELECT MAX(seq) FROM rows)")
    assert verify_run(run, pub)[0].startswith(f"sites/site-0/{ledger.name}: has 4 rows")


def test_any_edited_report_byte_breaks_the_signature(signed):
    run, pub = signed
    path = run / "report.json"
    original = path.read_bytes()
    for offset in (0, len(original) // 2, len(original) - 2):
        data = bytearray(original)
        data[offset] ^= 0x01
        path.write_bytes(bytes(data))
        problems = verify_run(run, pub)
        assert any(p.startswith(("report.sig: the signature", "report.json")) for p in problems)
    path.write_bytes(original)
    assert verify_run(run, pub) == []


def test_report_resigned_with_another_key_is_caught(signed, tmp_path):
    run, pub = signed
    report = json.loads((run / "report.json").read_text())
    recomputed = report["sample_level_dp"]["sites"][0]["epsilon"]
    report["sample_level_dp"]["sites"][0]["epsilon"] = 0.5
    other = load_or_create_signing_key(tmp_path / "other.key")
    forged = (json.dumps(report, indent=2) + "\n").encode()
    (run / "report.json").write_bytes(forged)
    (run / "report.sig").write_bytes(sign(other, forged))
    assert verify_run(run, pub) == [
        "report.sig: the signature does not match report.json (report edited)"
    ]
    # A forger who also swaps the embedded signer key: the pinned key and the rebuild catch it.
    report["integrity"]["signature"] = signer_record(other.public_key())
    forged = (json.dumps(report, indent=2) + "\n").encode()
    (run / "report.json").write_bytes(forged)
    (run / "report.sig").write_bytes(sign(other, forged))
    assert "not by the given public key" in verify_run(run, pub)[0]
    assert verify_run(run) == [
        "report.json differs from the ledgers: sample_level_dp.sites[0].epsilon is 0.5, the "
        f"ledgers give {json.dumps(recomputed)}"
    ]


def test_cli_verify_exit_codes(signed, capsys):
    run, pub = signed
    assert main(["report", "--verify", str(run), "--public-key", str(pub)]) == 0
    assert "report verified" in capsys.readouterr().out
    (run / "report.sig").write_text("AAAA\n")
    assert main(["report", "--verify", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("fedvault: error: ") and "report.sig: the signature" in err[0]


def test_cli_bad_inputs(tmp_path, capsys):
    assert main(["report", "--verify", str(tmp_path)]) == 2
    assert "no run-ledger.sqlite" in capsys.readouterr().err
    run = make_run(tmp_path / "run", sites=1, rounds=1)
    assert main(["report", "--verify", str(run)]) == 2
    assert "no report.json to verify" in capsys.readouterr().err
    _sql(run / "run-ledger.sqlite", "UPDATE rows SET kind = 'x' WHERE seq = 2")
    key = tmp_path / "k" / "signing.key"
    assert main(["report", str(run), "--signing-key", str(key)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "fedvault: error: run-ledger.sqlite: row 2 breaks the hash chain (edited, removed or "
        "reordered)"
    )
    assert not (run / "report.json").exists() and not (run / "report.html").exists()


def test_cli_writes_all_formats_and_keeps_a_verified_audit(tmp_path, capsys):
    run = make_run(tmp_path / "run", sites=1, rounds=1)
    key = tmp_path / "k" / "signing.key"
    audit = {
        "auc": 0.5,
        "eps_lb": 0.0,
        "low_fpr": [],
        "members": 1,
        "nonmembers": 1,
        "delta": 1e-5,
        "attack": "loss threshold",
        "best_accuracy": 0.5,
        "eps_lb_label": "empirical LOWER bound",
        "roc": None,
    }
    write_report(run, signing_key_path=key, audit=audit, formats=())
    assert main(["report", str(run), "--format", "all", "--signing-key", str(key)]) == 0
    assert "Each record at site-0" in capsys.readouterr().out
    for name in ("report.json", "report.sig", "report.html", "report.md", "plots/epsilon.png"):
        assert (run / name).is_file(), name
    assert json.loads((run / "report.json").read_text())["audit"] == audit
    assert verify_run(run, public_key_path(key)) == []


def _rechain(path: Path, drop_kind: str) -> None:
    """Rewrite a ledger as its owner's adversary would: drop rows, recompute every hash."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT seq, time, kind, payload FROM rows ORDER BY seq").fetchall()
    kept = [r for r in rows if r[2] != drop_kind or r[0] == rows[-1][0]]
    statements, prev = ["DELETE FROM rows"], "0" * 64
    for seq, (_, time, kind, payload) in enumerate(kept, start=1):
        digest = row_hash(prev, seq, time, kind, payload)
        statements.append(
            f"INSERT INTO rows VALUES ({seq}, '{time}', '{kind}', '{payload}', '{prev}', "
            f"'{digest}')"
        )
        prev = digest
    _sql(path, *statements)


def test_a_rechained_site_ledger_is_named_even_if_the_report_is_re_signed(signed):
    """The coordinator rewrites a site ledger so its chain holds, and writes and signs a new
    report over it with its own key: the heads the site signed are gone, and verify says so."""
    run, pub = signed
    (ledger,) = (run / "sites" / "site-0").glob("ledger-*.sqlite")
    _rechain(ledger, "dp_commit")
    with Ledger.open(ledger, "site") as reopened:
        assert reopened.verify() is None  # the rewritten chain itself holds
    write_report(run, signing_key_path=pub.with_suffix(""), formats=())
    problems = verify_run(run, pub)
    assert problems and problems[0].startswith(f"sites/site-0/{ledger.name}: does not hold")
    assert "site-0 signed after round 1" in problems[0]


def test_a_head_signed_by_anyone_but_the_site_is_an_error(signed, tmp_path):
    run, pub = signed
    impostor = ec.generate_private_key(CURVE())
    keys = Roster.load(run / "roster.toml").sites
    write_roster(tmp_path / "roster.toml", {**keys, "site-0": impostor.public_key()})
    report = build_report(run, roster=tmp_path / "roster.toml")
    assert any(
        f["severity"] == "error" and "no valid signature of site-0" in f["message"]
        for f in report["findings"]
    )
    assert verify_run(run, pub, tmp_path / "roster.toml")  # the reviewer's roster disagrees


def test_edited_html_swapped_plot_and_extra_plot_are_named(tmp_path):
    run = make_run(tmp_path / "run", sites=2, rounds=2)
    key = tmp_path / "server" / "signing.key"
    write_report(run, signing_key_path=key, formats=("html", "md"))
    pub = public_key_path(key)
    assert verify_run(run, pub) == []
    html = (run / "report.html").read_text()
    (run / "report.html").write_text(html.replace("site-0", "site-9", 1))
    assert verify_run(run, pub) == ["report.html: changed after the report was signed"]
    (run / "report.html").write_text(html)
    plots = sorted((run / "plots").glob("*.png"))
    first, second = plots[0].read_bytes(), plots[1].read_bytes()
    plots[0].write_bytes(second)
    assert verify_run(run, pub) == [f"plots/{plots[0].name}: changed after the report was signed"]
    plots[0].write_bytes(first)
    (run / "plots" / "extra.png").write_bytes(first)
    assert verify_run(run, pub) == ["plots/extra.png: not covered by the signed report"]
    (run / "plots" / "extra.png").unlink()
    (run / "report.md").unlink()
    assert verify_run(run, pub) == ["report.md: missing (report.json records its hash)"]
