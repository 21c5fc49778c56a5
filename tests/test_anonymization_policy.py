"""Policy parsing: the shipped policy loads, every malformed key is one clear error."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from privacy.anonymization import load_policy, parse_policy
from privacy.errors import FedVaultError

SHIPPED = Path(__file__).resolve().parents[1] / "simulations" / "scenarios" / "clinic-policy.toml"

BASE = {
    "targets": {"k": 5, "l": 2, "max_suppression": 0.05},
    "columns": {
        "email": {"role": "identifier", "action": "drop"},
        "age": {"role": "quasi", "width": 10, "top": 90},
        "zip": {"role": "quasi", "prefix": 3},
        "diagnosis": {"role": "sensitive"},
        "bmi": {"role": "keep"},
    },
}


def with_change(path: str, value: object) -> dict:
    """BASE with one key (dotted path) set; value None deletes it."""
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    if value is None:
        node.pop(last)
    else:
        node[last] = value
    return data


def test_shipped_clinic_policy_loads() -> None:
    policy = load_policy(SHIPPED)
    assert policy.targets.k == 5 and policy.targets.l == 2
    assert policy.names("identifier") == ["name", "email", "phone", "national_id"]
    assert set(policy.names("quasi")) == {"birth_date", "zip", "age", "sex"}
    assert policy.names("sensitive") == ["diagnosis"]
    assert policy.columns["sex"].fixed
    assert policy.columns["birth_date"].type == "date"
    assert (policy.cleaning.person, policy.cleaning.per_person) == ("national_id", "first")
    assert policy.cleaning.duplicates == "drop"


def test_base_policy_parses_with_inferred_types() -> None:
    policy = parse_policy(BASE)
    assert policy.columns["age"].type == "numeric"
    assert policy.columns["zip"].type == "zip"
    assert policy.targets.l_kind == "distinct"
    assert policy.targets.describe() == "k=5, l=2 (distinct)"


def test_hierarchy_is_parsed() -> None:
    data = with_change(
        "columns.region",
        {"role": "quasi", "hierarchy": {"north": ["a", "b"], "all": ["north", "c"]}},
    )
    rule = parse_policy(data).columns["region"]
    assert rule.type == "category"
    assert rule.hierarchy["all"] == ("north", "c")


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("extra", 1, "unknown key 'extra'"),
        ("targets", None, "missing [targets]"),
        ("columns", None, "missing or empty [columns]"),
        ("targets.k", None, "k is required"),
        ("targets.k", 0, "k must be at least 1"),
        ("targets.k", "5", "k must be an integer"),
        ("targets.k", True, "k must be an integer"),
        ("targets.l", 0, "l must be at least 1"),
        ("targets.l_kind", "recursive", "l_kind must be one of distinct, entropy"),
        ("targets.t", 1.5, "t must be between 0 and 1"),
        ("targets.max_suppression", 1.0, "max_suppression must be in [0, 1)"),
        ("targets.max_suppression", -0.1, "max_suppression must be in [0, 1)"),
        ("targets.beta", 2, "unknown key 'beta'"),
        ("columns.email.role", "secret", "role must be one of"),
        ("columns.email.role", None, "role is required"),
        ("columns.email.action", None, "identifiers need action"),
        ("columns.email.action", "hash", "action must be one of drop, pseudonymize"),
        ("columns.email.width", 3, "key 'width' is not allowed for role 'identifier'"),
        ("columns.bmi.prefix", 3, "key 'prefix' is not allowed for role 'keep'"),
        ("columns.diagnosis.fixed", True, "key 'fixed' is not allowed for role 'sensitive'"),
        ("columns.age.width", 0, "width must be positive"),
        ("columns.age.bins", [0, 10], "give either width or bins"),
        ("columns.age.top", 95, "top (95) must fall on a bin edge"),
        ("columns.age.bottom", 100, "bottom (100) must be below top (90)"),
        ("columns.age.date", "year", "belong to different column types"),
        ("columns.age.type", "zip", "belong to different column types"),
        ("columns.zip.prefix", -1, "prefix must be at least 0"),
        ("columns.zip.fixed", "yes", "fixed must be true or false"),
        ("columns.diagnosis.distance", "hamming", "distance must be one of equal, ordered"),
        ("columns.diagnosis.type", "text", "type must be one of numeric, category"),
        ("columns.bmi", "keep", "columns.bmi must be a table"),
    ],
)
def test_bad_policy_is_one_clear_error(path: str, value: object, message: str) -> None:
    with pytest.raises(FedVaultError) as info:
        parse_policy(with_change(path, value), "p.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("p.toml")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"role": "quasi", "bins": [10, 5]}, "strictly increasing"),
        ({"role": "quasi", "bins": [10]}, "at least 2 bin edges"),
        ({"role": "quasi", "date": "week"}, "date must be one of day, month, year"),
        ({"role": "quasi", "hierarchy": {"g": ["a"]}, "min_count": 3}, "either hierarchy or"),
        ({"role": "quasi", "hierarchy": {"g": ["a"], "h": ["a"]}}, "belongs to both"),
        ({"role": "quasi", "hierarchy": {"g": ["h"], "h": ["g"]}}, "cycle"),
        ({"role": "quasi", "hierarchy": {"g": []}}, "has no members"),
        ({"role": "quasi", "min_count": 1}, "min_count must be at least 2"),
        ({"role": "sensitive", "order": ["a", "a"]}, "lists a value twice"),
        ({"role": "sensitive", "order": ["a"], "distance": "equal"}, "order only applies"),
    ],
)
def test_bad_column_options(spec: dict, message: str) -> None:
    with pytest.raises(FedVaultError, match=message.replace("(", r"\(")):
        parse_policy(with_change("columns.extra", spec))


def test_l_or_t_need_a_sensitive_column() -> None:
    data = with_change("columns.diagnosis", None)
    with pytest.raises(FedVaultError, match='role = "sensitive"'):
        parse_policy(data)
    data["targets"].pop("l")
    assert parse_policy(data).targets.l is None


def test_policy_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FedVaultError, match="does not exist"):
        load_policy(tmp_path / "missing.toml")
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[targets\nk = 5\n")
    with pytest.raises(FedVaultError, match="not valid TOML"):
        load_policy(bad_toml)
    latin = tmp_path / "latin.toml"
    latin.write_bytes("[targets]\nk = 5 # caf\xe9\n".encode("latin-1"))
    with pytest.raises(FedVaultError, match="not valid UTF-8"):
        load_policy(latin)


def test_cleaning_is_parsed() -> None:
    data = copy.deepcopy(BASE)
    data["cleaning"] = {
        "missing_values": [" n/a "],
        "duplicates": "drop",
        "person": "email",
        "per_person": "bound",
        "max_records_per_person": 3,
        "columns": {
            "bmi": {"missing": "median", "min": 10, "max": 80, "outside": "clip"},
            "diagnosis": {"missing": "category", "fill": "unknown"},
            "email": {"missing": "drop"},
        },
    }
    cleaning = parse_policy(data).cleaning
    assert cleaning.declared and cleaning.missing_values == ("n/a",)
    assert (cleaning.person, cleaning.per_person, cleaning.max_records_per_person) == (
        "email",
        "bound",
        3,
    )
    bmi = cleaning.columns["bmi"]
    assert bmi.numeric and (bmi.minimum, bmi.maximum, bmi.outside) == (10.0, 80.0, "clip")
    assert cleaning.columns["diagnosis"].fill == "unknown"
    assert not cleaning.columns["diagnosis"].numeric
    assert not parse_policy(BASE).cleaning.declared
    data["cleaning"]["per_person"] = "first"
    del data["cleaning"]["max_records_per_person"]
    assert parse_policy(data).cleaning.max_records_per_person == 1


@pytest.mark.parametrize(
    ("cleaning", "message"),
    [
        ({"dedupe": True}, "unknown key 'dedupe' in [cleaning]"),
        ({"duplicates": "merge"}, "cleaning.duplicates must be one of drop, keep"),
        ({"missing_values": [""]}, "empty cells are always missing"),
        ({"columns": {"weight": {"missing": "drop"}}}, "column 'weight' has no role in [columns]"),
        ({"columns": {"bmi": {"missing": "guess"}}}, "cleaning.columns.bmi.missing must be one"),
        ({"columns": {"bmi": {"impute": 1}}}, "unknown key 'impute' in [cleaning.columns.bmi]"),
        ({"columns": {"bmi": {"missing": "constant"}}}, 'missing = "constant" needs fill'),
        ({"columns": {"bmi": {"missing": "drop", "fill": 0}}}, "fill only applies"),
        ({"columns": {"bmi": {"min": 5}}}, 'range needs outside = "drop" or "clip"'),
        ({"columns": {"bmi": {"min": 5, "max": 1, "outside": "drop"}}}, "min (5) is above max"),
        (
            {"columns": {"bmi": {"min": 5, "outside": "other"}}},
            'outside = "other" needs categories',
        ),
        ({"columns": {"bmi": {"categories": ["a"], "outside": "clip"}}}, '"clip" needs min or max'),
        ({"columns": {"bmi": {"outside": "drop"}}}, "outside needs min, max or categories"),
        ({"columns": {"bmi": {"malformed": "drop"}}}, "malformed needs a numeric rule"),
        (
            {"columns": {"bmi": {"min": 0, "outside": "drop", "malformed": "missing"}}},
            'malformed = "missing" needs a missing rule',
        ),
        (
            {"columns": {"bmi": {"missing": "median", "categories": ["a"], "outside": "drop"}}},
            "a numeric rule (min, max, median, mean) cannot add text",
        ),
        ({"columns": {"age": {"missing": "category"}}}, "would put text into a numeric column"),
        ({"columns": {"zip": {"missing": "mean"}}}, "treats 'zip' as numbers"),
        ({"columns": {"zip": {"missing": "keep"}}}, 'missing = "keep" leaves cells empty'),
        ({"columns": {"diagnosis": {"missing": "keep"}}}, "which a sensitive column cannot"),
        ({"columns": {"email": {"missing": "median"}}}, "an identifier can only have missing"),
        ({"person": "email"}, "person and per_person go together"),
        ({"person": "nobody", "per_person": "first"}, "person must name a column with a role"),
        ({"person": "email", "per_person": "all"}, "per_person must be one of first, merge"),
        ({"person": "email", "per_person": "bound"}, "max_records_per_person go together"),
        ({"max_records_per_person": 2}, 'needs per_person = "bound"'),
        (
            {"person": "email", "per_person": "bound", "max_records_per_person": 0},
            "max_records_per_person must be at least 1",
        ),
        (
            {"person": "email", "per_person": "first", "columns": {"email": {"missing": "keep"}}},
            'the person column can only have missing = "drop"',
        ),
    ],
)
def test_bad_cleaning_is_one_clear_error(cleaning: dict, message: str) -> None:
    with pytest.raises(FedVaultError) as info:
        parse_policy({**BASE, "cleaning": cleaning}, "p.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("p.toml")
    assert "\n" not in str(info.value)
