"""Find columns that identify people, from their headers and a sample of their values.

The anonymizer denies by default (every column needs a role in the policy), so detection is a
drafting aid: `fedvault anonymize --detect` turns it into a complete draft policy with the
reason for every role, and a refused table names what detection sees in each column that
has no role. A pattern found wrongly costs a reviewer a minute; one missed costs nothing
more than the operator's own review, never a release.

Value tests run on an evenly spaced sample of the non-empty cells. Placeholders such as "n/a"
are set aside first, and a direct-identifier pattern needs only `IDENTIFIER_SHARE` of the
rest: a column that is 60 % email addresses still identifies 60 % of the people. Weaker
patterns (zip codes, sex, dates) need a clear majority (`MATCH_SHARE`) so that one odd cell
does not flip a column. Clinical measurements (blood pressures, 0/1 labels) match none.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from privacy.anonymization.values import looks_like_dates, numbers_or_nan, text_values

SAMPLE_SIZE = 2000
MATCH_SHARE = 0.9
IDENTIFIER_SHARE = 0.5
UNIQUE_SHARE = 0.95
MIN_VALUES_FOR_UNIQUENESS = 20
"""Below this many values, all-distinct says nothing about a column without an id header."""
FREE_TEXT_WORDS = 4
MAX_AGE = 130

_EMAIL = re.compile(r"^[A-Za-z0-9._%+'-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_SSN = re.compile(r"^\d{3}-\d{2}-\d{4}$")
_PHONE = re.compile(
    r"^(?P<plus>\+\d{1,3}[\s.-]?)?(?P<area>\(\d{1,5}\)[\s.-]?)?\d{1,5}"
    r"(?P<groups>(?:[\s.-]\d{1,8}){0,5})(\s*(x|ext\.?)\s*\d{1,6})?$"
)
_DATE_LIKE = re.compile(r"^\d{1,4}[./-]\d{1,2}[./-]\d{1,4}$")
_NUMBER_FIRST = (
    "street|st|avenue|ave|road|rd|lane|ln|drive|dr|boulevard|blvd|way|court|ct|place|pl|"
    "square|sq|terrace|highway|hwy|parkway|pkwy|circle|cir|close|crescent|rue|chemin"
)
_COMPOUND = "stra(?:ss|\u00df)e|str|weg|gasse|platz|allee|damm|straat|laan|gracht|gatan|vej|veien"
_NAME_FIRST = "via|viale|piazza|calle|avenida|plaza|carrer|rua|ulica"
_ADDRESS = re.compile(
    rf"^\d+[a-z]?,?\s+(\S+\s+){{0,4}}({_NUMBER_FIRST})\b"  # 12 Main Street, 8 rue Cler
    rf"|\b\w*({_COMPOUND})\b\.?\s*\d+[a-z]?\b"  # Hauptstrasse 5, Keizersgracht 12
    rf"|\b({_NAME_FIRST})\s+(\S+\s+){{0,4}}\d+[a-z]?\b",  # Via Roma 5, Calle Mayor 3
    re.IGNORECASE,
)
_NAME_PAIR = re.compile(r"\b[A-Z][a-z]+ [A-Z][a-z]+\b")
_DIGITS = re.compile(r"^\d+$")
_CARD = re.compile(r"^\d(?:[ -]?\d){12,18}$")
_ZIP = re.compile(r"^\d{3,5}(-\d{4})?$")
_SEX_VALUES = {"f", "m", "female", "male", "w", "x", "u", "other", "unknown"}
_PLACEHOLDERS = {
    "n/a",
    "na",
    "none",
    "null",
    "nil",
    "nan",
    "-",
    "--",
    "?",
    ".",
    "missing",
    "unknown",
    "not available",
    "not known",
}
_ETHNICITY_VALUES = {
    "white",
    "black",
    "asian",
    "hispanic",
    "latino",
    "latina",
    "latinx",
    "caucasian",
    "african american",
    "native american",
    "pacific islander",
    "american indian",
    "alaska native",
    "mixed",
    "multiracial",
    "arab",
    "middle eastern",
}

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
_PHONE_WORDS = {"phone", "tel", "telephone", "telefon", "mobile", "cell", "fax"}
_ZIP_WORDS = {"zip", "zipcode", "postal", "postcode", "postalcode", "plz"}
_BIRTH_WORDS = {"birth", "dob", "born", "birthday", "birthdate"}
_SEX_WORDS = {"sex", "gender"}
_KEY_WORDS = {"id", "uuid", "guid", "mrn", "key", "account", "record"}
_ADDRESS_WORDS = {"address", "addr", "street", "residence", "adresse", "anschrift", "domicile"}
_AGE_WORDS = {"age", "ages", "alter", "edad"}
_ETHNICITY_WORDS = {
    "race",
    "ethnicity",
    "ethnic",
    "ethnicgroup",
    "ancestry",
    "nationality",
    "ethnie",
}


@dataclass(frozen=True)
class Finding:
    """The detector's verdict on one column."""

    column: str
    role: str  # "identifier", "quasi" or "keep"
    kind: str  # e.g. "email", "zip", "age"; "" for role "keep"
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
    words = set(tokens)
    joined = "".join(tokens)
    sample = _sample(series)
    if sample.empty:
        return Finding(name, "keep", "", "no values")
    informative = sample[~sample.str.lower().isin(_PLACEHOLDERS)].reset_index(drop=True)
    if informative.empty:
        return Finding(name, "keep", "", "only placeholders such as 'n/a'")
    numbers = numbers_or_nan(informative)
    numeric = bool(np.isfinite(numbers).mean() >= MATCH_SHARE)
    if not numeric and _is_person_name_header(tokens):
        return Finding(name, "identifier", "person_name", "header names a person's name")
    value_tests = (
        ("email", "email addresses", lambda v: bool(_EMAIL.match(v))),
        ("national_id", "national id numbers (ddd-dd-dddd)", lambda v: bool(_SSN.match(v))),
        ("ip_address", "IP addresses", _is_ip),
        ("card_number", "card numbers passing the Luhn check", _is_card),
        ("phone", "phone numbers", _is_phone),
        ("address", "street addresses", lambda v: bool(_ADDRESS.search(v))),
    )
    for kind, what, test in value_tests:
        share = _share(informative, test)
        if share >= IDENTIFIER_SHARE:
            return Finding(name, "identifier", kind, f"{share:.0%} of sampled values are {what}")
    if joined in _ID_HEADERS or words & _ID_HEADERS:
        return Finding(name, "identifier", "national_id", "header names a national id")
    if words & _PHONE_WORDS and _share(informative, _is_phone_digits) >= MATCH_SHARE:
        return Finding(name, "identifier", "phone", "header names a phone number")
    if words & _KEY_WORDS and _unique_share(series) >= UNIQUE_SHARE:
        return Finding(name, "identifier", "record_id", "header names a key and values are unique")
    if (words & _ADDRESS_WORDS or joined in _ADDRESS_WORDS) and not numeric:
        return Finding(name, "identifier", "address", "header names an address")
    free_text = "" if numeric else _free_text(informative)
    if free_text:
        return Finding(name, "identifier", "free_text", free_text)
    if numeric and _is_unique_count(series, numbers):
        return Finding(
            name,
            "identifier",
            "record_id",
            "whole numbers, every one different: a record or person number",
        )
    if looks_like_dates(sample):
        if words & _BIRTH_WORDS or joined in _BIRTH_WORDS:
            return Finding(name, "quasi", "birth_date", "dates of birth")
        return Finding(name, "quasi", "date", "dates (any date can help single a record out)")
    if is_zip_header(name) and _share(sample, lambda v: bool(_ZIP.match(v))) >= MATCH_SHARE:
        return Finding(name, "quasi", "zip", "zip codes")
    if numeric and words & _AGE_WORDS and _within(numbers, 0, MAX_AGE):
        return Finding(name, "quasi", "age", "ages (known to anyone who knows the person)")
    if numeric and (words & _BIRTH_WORDS or joined in _BIRTH_WORDS):
        return Finding(name, "quasi", "birth_year", "years of birth")
    lowered = set(sample.str.lower())
    sex_values = lowered <= _SEX_VALUES and bool(lowered & {"f", "m", "female", "male"})
    if words & _SEX_WORDS or (len(lowered) >= 2 and sex_values):
        return Finding(name, "quasi", "sex", "sex or gender")
    ethnic = _share(informative, lambda v: v.lower() in _ETHNICITY_VALUES) >= MATCH_SHARE
    if words & _ETHNICITY_WORDS or joined in _ETHNICITY_WORDS or ethnic:
        return Finding(
            name,
            "quasi",
            "ethnicity",
            "ethnicity or race (recorded in registers, and special-category data)",
        )
    return Finding(
        name, "keep", "", "no identifying pattern in the header or the values (sensitive?)"
    )


def detect_columns(table: pd.DataFrame) -> list[Finding]:
    """One finding per column, in table order."""
    return [detect_column(str(name), table[name]) for name in table.columns]


_DRAFT_KEYS = {
    "birth_date": ['date = "year"'],
    "date": ['date = "month"'],
    "zip": ["prefix = 3"],
    "age": ["width = 5"],
    "birth_year": ["width = 5"],
    "sex": ['type = "category"'],
    "ethnicity": ['type = "category"'],
}
_CATEGORY_KINDS = {"sex", "ethnicity"}


def suggest_policy(table: pd.DataFrame, source: str = "the table") -> str:
    """A complete draft policy TOML for `table`: every column a role, each with its reason.

    Identifiers are dropped (pseudonymizing one keeps a linkable key, so the draft leaves that
    choice to the operator), detected quasi-identifiers are generalized, everything else is
    kept, and every column with empty cells gets a [cleaning] rule to review.
    """
    lines = [
        f"# Draft anonymization policy for {source}, from `fedvault anonymize --detect`.",
        "# Review every role before use: mark the sensitive attribute (a diagnosis, a salary)",
        '# with role = "sensitive" and set targets.l; columns derived from a quasi-identifier',
        "# (an age next to a birth date) are quasi-identifiers too. Format: docs/anonymization.md",
        "",
        "[targets]",
        "k = 5",
        "# l = 2",
        "max_suppression = 0.05",
    ]
    findings = detect_columns(table)
    for finding in findings:
        lines += [
            "",
            f"# {finding.role}: {finding.reason}",
            f"[columns.{_toml_key(finding.column)}]",
        ]
        lines.append(f'role = "{finding.role}"')
        if finding.role == "identifier":
            lines.append('action = "drop"')
            if finding.kind in {"national_id", "record_id"}:
                lines += [
                    '# action = "pseudonymize" keeps a keyed key per person to link exports;',
                    "# the release is then pseudonymized, not anonymized",
                ]
        lines += _DRAFT_KEYS.get(finding.kind, [])
    return "\n".join(lines + _draft_cleaning(table, findings)) + "\n"


def _draft_cleaning(table: pd.DataFrame, findings: list[Finding]) -> list[str]:
    """[cleaning] lines for the duplicates and empty cells of `table` (none if it has none)."""
    lines = []
    duplicates = int(table.duplicated().sum())
    if duplicates:
        lines += [
            f"# {duplicates} record(s) repeat an earlier record exactly",
            'duplicates = "drop"',
        ]
    rows = len(table)
    for finding in findings:
        if finding.role == "identifier":
            continue
        empty = int((text_values(table[finding.column]) == "").sum())
        if not empty:
            continue
        if finding.role == "keep":
            rule = "keep"
        else:
            rule = "category" if finding.kind in _CATEGORY_KINDS else "drop"
        lines += [
            "",
            f"# {empty} of {rows} cells are empty; missing = drop | keep | median | mean | mode "
            "| constant | category",
            f"[cleaning.columns.{_toml_key(finding.column)}]",
            f'missing = "{rule}"',
        ]
    if not lines:
        return []
    return ["", "# How the raw table is cleansed before anonymization.", "[cleaning]", *lines]


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
    """Share of `sample` passing `test`, each distinct value tested once."""
    counts = sample.value_counts()
    if counts.empty:
        return 0.0
    passed = np.array([test(value) for value in counts.index], dtype=bool)
    return float(counts.to_numpy()[passed].sum() / counts.sum())


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


def _is_phone(value: str) -> bool:
    """International and national formats: "+49 30 1234567", "(617) 555-0101", "030 1234567".

    Numbers ("12345.678"), dates ("03.04.1980") and zip+4 codes ("02134-1234") are not phones:
    a phone has a leading "+" or "(", or two separators, or one separator and 10+ digits.
    """
    match = _PHONE.match(value)
    if not match or _DATE_LIKE.match(value) or math.isfinite(_float(value)):
        return False
    digits = sum(char.isdigit() for char in value)
    separators = len(re.findall(r"[\s.-]\d", match.group("groups") or ""))
    marked = bool(match.group("plus") or match.group("area"))
    long_national = digits >= 10 and separators == 1
    return 7 <= digits <= 15 and (marked or separators >= 2 or long_national)


def _float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan


def _free_text(sample: pd.Series) -> str:
    """Why the values look like free text (several words, mostly distinct), or ""."""
    wordy = sample.str.split().str.len() >= FREE_TEXT_WORDS
    if wordy.mean() < IDENTIFIER_SHARE or sample.nunique() < IDENTIFIER_SHARE * len(sample):
        return ""
    named = sample[wordy].map(lambda v: bool(_NAME_PAIR.search(v))).mean()
    names = f"; {named:.0%} mention capitalised name pairs such as 'Anna Schmidt'" if named else ""
    return f"free text ({wordy.mean():.0%} of sampled values have {FREE_TEXT_WORDS}+ words{names})"


def _is_unique_count(series: pd.Series, numbers: np.ndarray) -> bool:
    """Whole numbers, each value different: a record number whatever the header says."""
    finite = numbers[np.isfinite(numbers)]
    return (
        finite.size >= MIN_VALUES_FOR_UNIQUENESS
        and bool(np.all(finite == np.floor(finite)))
        and _unique_share(series) >= UNIQUE_SHARE
    )


def _within(numbers: np.ndarray, low: float, high: float) -> bool:
    finite = numbers[np.isfinite(numbers)]
    return finite.size > 0 and bool(((finite >= low) & (finite <= high)).mean() >= MATCH_SHARE)


def _is_phone_digits(value: str) -> bool:
    digits = re.sub(r"[\s().+-]", "", value)
    return bool(_DIGITS.match(digits)) and 7 <= len(digits) <= 15
