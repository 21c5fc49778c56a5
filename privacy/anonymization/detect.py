"""Find columns that identify people, from their headers and a sample of their values.

A site operator writing a policy can miss a column (a contact email added last month); the
anonymizer therefore scans every column the policy does not mention and refuses to release a
table with an unmentioned identifier. The same scan drafts a policy for a new table.

Value tests run on an evenly spaced sample of the non-empty cells and need a clear majority
(`MATCH_SHARE`) so that one odd cell does not flip a column. Clinical measurements (ages,
blood pressures, 0/1 labels) match none of the patterns.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from privacy.anonymization.values import looks_like_dates, numeric_share, text_values

SAMPLE_SIZE = 2000
MATCH_SHARE = 0.9
UNIQUE_SHARE = 0.95

_EMAIL = re.compile(r"^[A-Za-z0-9._%+'-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_SSN = re.compile(r"^\d{3}-\d{2}-\d{4}$")
_PHONE = re.compile(
    r"^(\+\d{1,3}[\s.-]?)?(\(\d{2,4}\)\s?|\d{2,4}[\s.-])\d{3,4}[\s.-]\d{3,4}"
    r"(\s*(x|ext\.?)\s*\d{1,6})?$"
)
_DIGITS = re.compile(r"^\d+$")
_CARD = re.compile(r"^\d(?:[ -]?\d){12,18}$")
_ZIP = re.compile(r"^\d{3,5}(-\d{4})?$")
_SEX_VALUES = {"f", "m", "female", "male", "w", "x", "u", "other", "unknown"}

_NAME_HEADERS = {
    "name",
    "fullname",
    "firstname",
    "lastname",
    "surname",
    "givenname",
    "familyname",
    "middlename",
    "maidenname",
    "patientname",
    "personname",
    "forename",
}
_NAME_LAST_WORDS = {"name", "surname", "forename"}
_NOT_PERSON_WORDS = {
    "file",
    "host",
    "hospital",
    "clinic",
    "site",
    "product",
    "company",
    "brand",
    "drug",
    "device",
    "column",
    "table",
    "field",
    "domain",
    "city",
    "street",
    "department",
    "ward",
    "test",
    "item",
    "model",
    "dataset",
}
_ID_HEADERS = {"ssn", "nationalid", "socialsecurity", "passport", "taxid", "nin", "sin", "nhs"}
_PHONE_WORDS = {"phone", "tel", "telephone", "mobile", "cell", "fax"}
_ZIP_WORDS = {"zip", "zipcode", "postal", "postcode", "postalcode", "plz"}
_BIRTH_WORDS = {"birth", "dob", "born", "birthday", "birthdate"}
_SEX_WORDS = {"sex", "gender"}
_KEY_WORDS = {"id", "uuid", "guid", "mrn", "key", "account", "record"}


@dataclass(frozen=True)
class Finding:
    """The detector's verdict on one column."""

    column: str
    role: str  # "identifier", "quasi" or "keep"
    kind: str  # e.g. "email", "zip"; "" for role "keep"
    reason: str


def header_tokens(header: str) -> list[str]:
    """Lower-case words of a header: 'PatientName' and 'patient_name' give patient, name."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", header)
    return [token for token in re.split(r"[^a-z0-9]+", spaced.lower()) if token]


def is_zip_header(header: str) -> bool:
    """True for headers such as 'zip', 'postal_code', 'ZipCode'."""
    tokens = header_tokens(header)
    return bool(set(tokens) & _ZIP_WORDS) or "".join(tokens) in _ZIP_WORDS


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum used by payment card numbers."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def detect_column(name: str, series: pd.Series) -> Finding:
    """Classify one column as a direct identifier, a quasi-identifier, or neither."""
    tokens = header_tokens(name)
    joined = "".join(tokens)
    sample = _sample(series)
    if sample.empty:
        return Finding(name, "keep", "", "no values")
    numeric = numeric_share(sample) >= MATCH_SHARE
    if not numeric and _is_person_name_header(tokens):
        return Finding(name, "identifier", "person_name", "header names a person's name")
    value_tests = (
        ("email", "email addresses", lambda v: bool(_EMAIL.match(v))),
        ("national_id", "national id numbers (ddd-dd-dddd)", lambda v: bool(_SSN.match(v))),
        ("ip_address", "IP addresses", _is_ip),
        ("card_number", "card numbers passing the Luhn check", _is_card),
        ("phone", "phone numbers", lambda v: bool(_PHONE.match(v))),
    )
    for kind, what, test in value_tests:
        share = _share(sample, test)
        if share >= MATCH_SHARE:
            return Finding(name, "identifier", kind, f"{share:.0%} of sampled values are {what}")
    if joined in _ID_HEADERS or set(tokens) & _ID_HEADERS:
        return Finding(name, "identifier", "national_id", "header names a national id")
    if set(tokens) & _PHONE_WORDS and _share(sample, _is_phone_digits) >= MATCH_SHARE:
        return Finding(name, "identifier", "phone", "header names a phone number")
    if set(tokens) & _KEY_WORDS and _unique_share(series) >= UNIQUE_SHARE:
        return Finding(name, "identifier", "record_id", "header names a key and values are unique")
    if looks_like_dates(sample):
        if set(tokens) & _BIRTH_WORDS or joined in _BIRTH_WORDS:
            return Finding(name, "quasi", "birth_date", "dates of birth")
        return Finding(name, "quasi", "date", "dates (any date can help single a record out)")
    if is_zip_header(name) and _share(sample, lambda v: bool(_ZIP.match(v))) >= MATCH_SHARE:
        return Finding(name, "quasi", "zip", "zip codes")
    lowered = set(sample.str.lower())
    sex_values = lowered <= _SEX_VALUES and bool(lowered & {"f", "m", "female", "male"})
    if set(tokens) & _SEX_WORDS or (len(lowered) >= 2 and sex_values):
        return Finding(name, "quasi", "sex", "sex or gender")
    return Finding(name, "keep", "", "no identifying pattern found")


def detect_columns(table: pd.DataFrame) -> list[Finding]:
    """One finding per column, in table order."""
    return [detect_column(str(name), table[name]) for name in table.columns]


def suggest_policy(table: pd.DataFrame, source: str = "the table") -> str:
    """A draft policy TOML for `table`: identifiers dropped, quasi-identifiers generalized."""
    lines = [
        f"# Draft anonymization policy for {source}, from `fedvault anonymize --detect`.",
        "# Review every role before use: mark the sensitive attribute (a diagnosis, a salary)",
        '# with role = "sensitive" and set targets.l; columns derived from a quasi-identifier',
        "# (an age next to a birth date) are quasi-identifiers too.",
        "",
        "[targets]",
        "k = 5",
        "# l = 2",
        "max_suppression = 0.05",
    ]
    for finding in detect_columns(table):
        lines += ["", f"# {finding.reason}", f"[columns.{_toml_key(finding.column)}]"]
        lines.append(f'role = "{finding.role}"')
        if finding.role == "identifier":
            action = "pseudonymize" if finding.kind in {"national_id", "record_id"} else "drop"
            lines.append(f'action = "{action}"')
        elif finding.kind == "birth_date":
            lines.append('date = "year"')
        elif finding.kind == "date":
            lines.append('date = "month"')
        elif finding.kind == "zip":
            lines.append("prefix = 3")
        elif finding.kind == "sex":
            lines.append('type = "category"')
    return "\n".join(lines) + "\n"


def _is_person_name_header(tokens: list[str]) -> bool:
    if "".join(tokens) in _NAME_HEADERS:
        return True
    return bool(tokens) and tokens[-1] in _NAME_LAST_WORDS and not set(tokens) & _NOT_PERSON_WORDS


def _toml_key(name: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return name
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _sample(series: pd.Series) -> pd.Series:
    text = text_values(series)
    filled = text[text != ""]
    if len(filled) > SAMPLE_SIZE:
        positions = np.linspace(0, len(filled) - 1, SAMPLE_SIZE).astype(int)
        filled = filled.iloc[positions]
    return filled.reset_index(drop=True)


def _share(sample: pd.Series, test) -> float:
    return float(np.mean([test(value) for value in sample]))


def _unique_share(series: pd.Series) -> float:
    text = text_values(series)
    filled = text[text != ""]
    return filled.nunique() / len(filled) if len(filled) else 0.0


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_card(value: str) -> bool:
    if not _CARD.match(value):
        return False
    return luhn_valid(re.sub(r"[ -]", "", value))


def _is_phone_digits(value: str) -> bool:
    digits = re.sub(r"[\s().+-]", "", value)
    return bool(_DIGITS.match(digits)) and 7 <= len(digits) <= 15
