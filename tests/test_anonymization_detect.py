"""PII detection: identifiers and quasi-identifiers found, clinical features left alone, and a
complete draft policy that the anonymizer accepts."""

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
from tasks.clinic import CLINICAL_FEATURES, generate_clinic

CLINICAL = [c for c in (*CLINICAL_FEATURES, "readmitted", "hospital", "diagnosis") if c != "age"]


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
    assert [c for c, f in found.items() if f.role == "quasi"] == ["birth_date", "sex", "zip", "age"]
    assert found["email"].kind == "email" and found["phone"].kind == "phone"
    assert found["age"].kind == "age"
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
    assert policy.columns["national_id"].action == "drop", "pseudonymizing is the operator's call"
    assert 'action = "pseudonymize" keeps a keyed key per person' in text
    assert policy.columns["zip"].prefix == 3
    assert policy.columns["birth_date"].date == "year"
    assert policy.columns["age"].width == 5
    assert list(policy.columns) == list(clinic.columns)
    assert not policy.cleaning.declared, "nothing to clean in the clinic table"
    for column in clinic.columns:
        assert f"[columns.{column}]" in text
    assert text.count("# keep: no identifying pattern") == len(CLINICAL)
    result = anonymize_table(clinic, policy)
    assert result.report["achieved"]["k"] >= 5
    assert result.report["release"] == "anonymized"
    assert "email" not in result.table.columns


STREETS = ["12 Main Street", "221B Baker St.", "1600 Pennsylvania Ave NW", "Hauptstrasse 5"]
NOTES = [
    "Patient Anna Schmidt reported chest pain after the visit",
    "Seen with her daughter Maria Lopez, follow-up in two weeks",
    "Called back by John Miller about the new prescription",
    "No complaints today, blood pressure normal and stable",
]


@pytest.mark.parametrize(
    ("header", "values", "kind"),
    [
        ("contact", ["a.b@example.org", "x@y.co", "q@w.io", "z@z.net"], "email"),
        ("contact", [f"u{i}@example.org" for i in range(86)] + ["n/a"] * 14, "email"),
        ("contact", [f"u{i}@example.org" for i in range(60)] + ["none", "-"] * 20, "email"),
        ("client", ["192.168.0.1", "10.0.0.7", "2001:db8::1", "172.16.4.4"], "ip_address"),
        (
            "payment",
            ["4111 1111 1111 1111", "5500-0000-0000-0004", "340000000000009"],
            "card_number",
        ),
        ("contact", ["(617) 555-0101", "+44 20 7946 0958", "617.555.0199"], "phone"),
        ("Telefon", ["+49 30 1234567", "+49 89 7654321", "+33 1 23 45 67 89"], "phone"),
        ("number", ["030 1234567", "0221 9876543", "040 55501234"], "phone"),
        ("tel", ["6175550101", "6175550102", "6175550103"], "phone"),
        ("ssn", ["123456789", "987654321", "111223333"], "national_id"),
        ("first_name", ["Ann", "Bob", "Cy"], "person_name"),
        ("PatientName", ["Ann Lee", "Bob Ray", "Cy Ode"], "person_name"),
        ("record_id", ["r1", "r2", "r3", "r4"], "record_id"),
        ("lives_at", STREETS, "address"),
        ("home", ["Via Roma 5", "Calle Mayor 3", "8 rue Cler", "Keizersgracht 12"], "address"),
        ("address", ["Flat 2", "Rose Cottage", "The Old Mill"], "address"),
        ("notes", NOTES, "free_text"),
        ("patient", [str(100_000 + 7 * i) for i in range(40)], "record_id"),
        ("seqn", [f"{233 + 3 * i}.0" for i in range(40)], "record_id"),
    ],
)
def test_identifier_patterns(header: str, values: list[str], kind: str) -> None:
    finding = detect_column(header, pd.Series(values))
    assert (finding.role, finding.kind) == ("identifier", kind), finding


def test_free_text_reason_mentions_names() -> None:
    finding = detect_column("notes", pd.Series(NOTES))
    assert "75% mention capitalised name pairs" in finding.reason


@pytest.mark.parametrize(
    ("header", "values", "kind"),
    [
        ("dob", ["1980-01-02", "1975-12-31"], "birth_date"),
        ("visit", ["2023-01-02", "2023-02-03"], "date"),
        ("postal_code", ["02134", "60611", "10001"], "zip"),
        ("gender", ["female", "male", "female"], "sex"),
        ("s", ["F", "M", "M"], "sex"),
        ("age", ["34", "51", "67", "29"], "age"),
        ("AgeAtVisit", ["34.5", "51", "", "29"], "age"),
        ("year_of_birth", ["1950", "1972", "1981"], "birth_year"),
        ("race", ["0", "1", "1"], "ethnicity"),
        ("Ethnicity", ["Hispanic", "Not Hispanic"], "ethnicity"),
        ("group", ["White", "Black", "Asian", "Hispanic", "white"], "ethnicity"),
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
        ("placeholders", ["n/a", "n/a", "-"]),
        ("stage", ["2", "3", "4"]),
        ("dosage", ["120", "500", "250"]),
        ("weight", ["12345.678", "23456.789", "34567.891"]),
        ("visit_code", ["03.04.1980", "2023-01-02", "12.11.2001"]),
        ("zip4", ["02134-1234", "60611-0001", "10001-9999"]),
        ("bp", [str(100 + i) for i in range(19)]),
        ("weight_kg", [f"{60 + i * 0.37:.2f}" for i in range(40)]),
        ("summary", ["heart failure with reduced ejection fraction"] * 10),
        ("course", ["first 2", "Test 1", "3 times a day"]),
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
