"""Keyed pseudonyms: stable under one key, different under another, one per person however the
identifier is typed, key kept private."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from cli.main import main
from privacy.anonymization import anonymize_table, load_or_create_key, parse_policy
from privacy.anonymization.pseudonymize import normalize_identifier, pseudonym, pseudonymize_series
from privacy.errors import FedVaultError
from tasks.clinic import CLINIC_COLUMNS, write_clinic_csv

POLICY = """
[targets]
k = 3

[columns.name]
role = "identifier"
action = "pseudonymize"

[columns.email]
role = "identifier"
action = "pseudonymize"

[columns.phone]
role = "identifier"
action = "pseudonymize"

[columns.national_id]
role = "identifier"
action = "pseudonymize"

[columns.birth_date]
role = "quasi"
date = "year"

[columns.zip]
role = "quasi"
prefix = 3

[columns.sex]
role = "quasi"
"""
POLICY += "".join(
    f'\n[columns.{name}]\nrole = "keep"\n'
    for name in CLINIC_COLUMNS
    if f"[columns.{name}]" not in POLICY
)


def test_key_is_created_once_with_private_permissions(tmp_path: Path) -> None:
    state = tmp_path / "state"
    key = load_or_create_key(state)
    path = state / "pseudonym.key"
    assert len(key) == 32 and path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert load_or_create_key(state) == key
    assert load_or_create_key(tmp_path / "other") != key
    assert sorted(p.name for p in state.iterdir()) == ["pseudonym.key"]


def test_bad_key_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(FedVaultError, match="not a 32-byte key"):
        load_or_create_key(tmp_path)
    path.write_bytes(os.urandom(32))
    path.chmod(0o644)
    with pytest.raises(FedVaultError, match=r"readable by others.*chmod 600"):
        load_or_create_key(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FedVaultError, match="cannot create directory"):
        load_or_create_key(blocker / "state")


def test_pseudonyms_are_stable_per_key_and_differ_across_keys() -> None:
    key, other = b"a" * 32, b"b" * 32
    first = pseudonymize_series(pd.Series(["123-45-6789", "987-65-4321", "", None]), key)
    again = pseudonymize_series(pd.Series([" 987-65-4321", "123-45-6789"]), key)
    assert first[0] == again[1] and first[1] == again[0]
    assert first[0] != first[1]
    assert first[2] == "" and first[3] == ""
    assert first[0] == pseudonym("123-45-6789", key)
    assert len(first[0]) == 24 and int(first[0], 16) >= 0
    assert pseudonym("123-45-6789", other) != first[0]
    with pytest.raises(FedVaultError, match="at least 16 bytes"):
        pseudonymize_series(pd.Series(["x"]), b"short")


@pytest.mark.parametrize(
    "spelling",
    [
        "123-45-6789",
        "123456789",
        " 123 45 6789 ",
        "123.45.6789",
        "(123) 45-6789",
        "123\u201345\u20136789",
    ],
)
def test_one_identifier_typed_several_ways_is_one_pseudonym(spelling: str) -> None:
    key = b"a" * 32
    assert normalize_identifier(spelling) == "123456789"
    assert pseudonym(spelling, key) == pseudonym("123456789", key)


def test_normalisation_keeps_what_tells_values_apart() -> None:
    assert normalize_identifier("John.Smith@Example.COM") == "johnsmith@examplecom"
    assert normalize_identifier("+1 617 555 0101") == "+16175550101"
    assert normalize_identifier("\uff21\uff22\uff11\uff12") == "ab12", (
        "full-width forms fold (NFKC)"
    )
    key = b"a" * 32
    assert pseudonym("123-45-6789", key) != pseudonym("123-45-6780", key)
    assert pseudonymize_series(pd.Series(["--", " . "]), key).tolist() == ["", ""]


def test_anonymize_needs_a_key_when_pseudonymizing() -> None:
    policy = parse_policy(
        {
            "targets": {"k": 1},
            "columns": {"id": {"role": "identifier", "action": "pseudonymize"}},
        }
    )
    with pytest.raises(FedVaultError, match="pseudonymizes id but no key was given"):
        anonymize_table(pd.DataFrame({"id": ["1", "2"]}), policy, None)


def test_same_value_same_pseudonym_across_files_and_key_never_output(
    tmp_path: Path, capsys
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    state = tmp_path / "state"
    table = write_clinic_csv(400, 4, tmp_path / "in.csv")
    (tmp_path / "second.csv").write_text(
        pd.read_csv(tmp_path / "in.csv", dtype=str).iloc[::-1].to_csv(index=False)
    )
    outputs = []
    for name in ("in", "second"):
        out, report = tmp_path / f"{name}-out.csv", tmp_path / f"{name}-report.json"
        argv = ["anonymize", str(tmp_path / f"{name}.csv"), "--policy", str(policy)]
        argv += ["-o", str(out), "--report", str(report), "--state-dir", str(state)]
        assert main(argv) == 0
        outputs += [out, report]
    stdout = capsys.readouterr()
    first = pd.read_csv(outputs[0], dtype=str)
    second = pd.read_csv(outputs[2], dtype=str)
    key = (state / "pseudonym.key").read_bytes()
    assert sorted(first["national_id"]) == sorted(second["national_id"])
    assert sorted(first["national_id"]) == sorted(pseudonym(v, key) for v in table["national_id"])
    assert not set(first["email"]) & set(table["email"])
    forms = [key, key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key)]
    for path in outputs:
        data = path.read_bytes()
        assert not any(form in data for form in forms), path
    printed = (stdout.out + stdout.err).encode()
    assert not any(form in printed for form in forms)
