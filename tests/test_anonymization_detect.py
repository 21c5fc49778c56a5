"""PII detection: clinic identifiers found, clinical features left alone, policies enforced."""

from __future__ import annotations

import tomllib

import numpy as np
import pandas as pd
import pytest

from privacy.anonymization import (
    anonymize_table,
    detect_columns,
    parse_policy,
    suggest_policy,
)
from privacy.anonymization.detect import detect_column, luhn_valid
from privacy.errors import FedVaultError
from tasks.clinic import CLINICAL_FEATURES, generate_clinic

CLINICAL = [*CLINICAL_FEATURES, "readmitted", "hospital", "diagnosis"]


@pytest.fixture(scope="module")
def clinic() -> pd.DataFrame:
    return generate_clinic(3000, 8).astype(str)


def roles(findings) -> dict[str, str]:
    return {finding.column: finding.role for finding in findings}


def test_clinic_identifiers_and_quasi_identifiers(clinic: pd.DataFrame) -> None:
    found = {f.column: f for f in detect_columns(clinic)}
    assert [c for c, f in found.items() if f.role == "identifier"] == [
        "name",
        "email",
        "phone",
        "national_id",
    ]
    assert [c for c, f in found.items() if f.role == "quasi"] == ["birth_date", "sex", "zip"]
    assert found["email"].kind == "email" and found["phone"].kind == "phone"
    assert found["national_id"].kind == "national_id" and found["name"].kind == "person_name"
    assert found["birth_date"].kind == "birth_date" and found["zip"].kind == "zip"
    for column in CLINICAL:
        assert found[column].role == "keep", (column, found[column])


def test_clinical_features_stay_clean_as_numbers_too() -> None:
    typed = generate_clinic(500, 2)
    assert all(roles(detect_columns(typed[CLINICAL])).get(c) == "keep" for c in CLINICAL)


def test_suggested_policy_is_valid_and_usable(clinic: pd.DataFrame) -> None:
    text = suggest_policy(clinic, "clinic.csv")
    policy = parse_policy(tomllib.loads(text))
    assert policy.columns["email"].action == "drop"
    assert policy.columns["national_id"].action == "pseudonymize"
    assert policy.columns["zip"].prefix == 3
    assert policy.columns["birth_date"].date == "year"
    assert set(policy.columns) == set(clinic.columns)
    result = anonymize_table(clinic, policy, b"k" * 32)
    assert result.report["achieved"]["k"] >= 5
    assert "email" not in result.table.columns


@pytest.mark.parametrize(
    ("header", "values", "kind"),
    [
        ("contact", ["a.b@example.org", "x@y.co", "q@w.io", "z@z.net"], "email"),
        ("client", ["192.168.0.1", "10.0.0.7", "2001:db8::1", "172.16.4.4"], "ip_address"),
        (
            "payment",
            ["4111 1111 1111 1111", "5500-0000-0000-0004", "340000000000009"],
            "card_number",
        ),
        ("contact", ["(617) 555-0101", "+44 20 7946 0958", "617.555.0199"], "phone"),
        ("tel", ["6175550101", "6175550102", "6175550103"], "phone"),
        ("ssn", ["123456789", "987654321", "111223333"], "national_id"),
        ("first_name", ["Ann", "Bob", "Cy"], "person_name"),
        ("PatientName", ["Ann Lee", "Bob Ray", "Cy Ode"], "person_name"),
        ("record_id", ["r1", "r2", "r3", "r4"], "record_id"),
    ],
)
def test_identifier_patterns(header: str, values: list[str], kind: str) -> None:
    finding = detect_column(header, pd.Series(values))
    assert (finding.role, finding.kind) == ("identifier", kind)


@pytest.mark.parametrize(
    ("header", "values", "kind"),
    [
        ("dob", ["1980-01-02", "1975-12-31"], "birth_date"),
        ("visit", ["2023-01-02", "2023-02-03"], "date"),
        ("postal_code", ["02134", "60611", "10001"], "zip"),
        ("gender", ["female", "male", "female"], "sex"),
        ("s", ["F", "M", "M"], "sex"),
    ],
)
def test_quasi_identifier_patterns(header: str, values: list[str], kind: str) -> None:
    finding = detect_column(header, pd.Series(values))
    assert (finding.role, finding.kind) == ("quasi", kind)


@pytest.mark.parametrize(
    ("header", "values"),
    [
        ("hospital_name", ["General", "Riverside"]),
        ("amount", ["1234567890123456", "1234567890123457", "1234567890123458"]),
        ("score", ["27.5", "31.25", "19.0"]),
        ("status", ["unknown", "other"]),
        ("bp", ["120", "135", "142"]),
        ("record_id", ["a", "a", "b", "b"]),
        ("empty", ["", ""]),
    ],
)
def test_no_false_positives(header: str, values: list[str]) -> None:
    assert detect_column(header, pd.Series(values)).role == "keep"


def test_one_odd_value_does_not_hide_a_column() -> None:
    values = [f"user{i}@example.org" for i in range(40)] + ["n/a"]
    assert detect_column("contact", pd.Series(values)).kind == "email"


def test_luhn() -> None:
    assert luhn_valid("4111111111111111") and luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112")
    rng = np.random.default_rng(0)
    numbers = ["".join(map(str, rng.integers(0, 10, 16))) for _ in range(200)]
    assert 0.03 < np.mean([luhn_valid(n) for n in numbers]) < 0.2


def test_unlisted_identifier_stops_the_run(clinic: pd.DataFrame) -> None:
    policy = parse_policy(
        {
            "targets": {"k": 5},
            "columns": {
                "name": {"role": "identifier", "action": "drop"},
                "phone": {"role": "identifier", "action": "drop"},
                "national_id": {"role": "identifier", "action": "drop"},
                "birth_date": {"role": "quasi", "date": "year"},
                "sex": {"role": "quasi"},
                "zip": {"role": "quasi", "prefix": 3},
            },
        }
    )
    with pytest.raises(FedVaultError, match=r"'email' \(100% of sampled values are email"):
        anonymize_table(clinic, policy, None)
    keep_email = parse_policy(
        {
            "targets": {"k": 5},
            "columns": {
                **{n: {"role": "keep"} for n in ("email", "name", "phone", "national_id")},
                "birth_date": {"role": "keep"},
            },
        }
    )
    with pytest.raises(FedVaultError, match=r"'sex' \(sex or gender\), 'zip' \(zip codes\)"):
        anonymize_table(clinic, keep_email, None)
