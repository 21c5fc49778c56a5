"""Cleansing: every declared rule does what it says and is counted; anything undeclared stops.

The tables are small and written out by hand, so each expected cell and count can be checked
by reading the test.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from privacy.anonymization import anonymize_table, clean_table, parse_policy
from privacy.errors import FedVaultError


def table(**columns: list) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()})


def policy(frame: pd.DataFrame, cleaning: dict | None = None, **roles: dict):
    """Every column of `frame` kept unless `roles` says otherwise; k = 1."""
    columns = {name: roles.get(name, {"role": "keep"}) for name in frame.columns}
    data = {"targets": {"k": 1}, "columns": columns}
    if cleaning is not None:
        data["cleaning"] = cleaning
    return parse_policy(data, "p.toml")


def refused(frame: pd.DataFrame, pol) -> str:
    with pytest.raises(FedVaultError) as info:
        clean_table(frame, pol)
    message = str(info.value)
    assert "\n" not in message
    return message


INCOME = table(income=["10", "", "30", "40"], age=["30", "40", "50", "60"])


def test_an_empty_cell_without_a_rule_names_column_and_row() -> None:
    incomes = [str(v) for v in range(20)]
    incomes[13] = ""
    frame = table(income=incomes, age=["1"] * 20)
    expected = "column 'income' has an empty cell at row 14 and the policy has no [cleaning] rule"
    assert refused(frame, policy(frame)) == expected + " for it"
    with pytest.raises(FedVaultError, match=r"row 14 and the policy has no \[cleaning\]"):
        anonymize_table(frame, policy(frame))


def test_a_declared_placeholder_is_missing_too() -> None:
    frame = table(contact=["a", "b", "n/a"], age=["1", "2", "3"])
    pol = policy(frame, {"missing_values": ["n/a"]})
    assert "has a missing value ('n/a') at row 3" in refused(frame, pol)
    kept = clean_table(
        frame,
        policy(frame, {"missing_values": ["n/a"], "columns": {"contact": {"missing": "keep"}}}),
    )
    assert kept.table["contact"].tolist() == ["a", "b", ""]
    assert kept.report["columns"]["contact"]["cells_left_empty"] == 1


def test_a_non_number_under_a_numeric_rule_needs_malformed() -> None:
    frame = table(sbp=["120", "abc", "130"])
    pol = policy(frame, {"columns": {"sbp": {"min": 50, "max": 250, "outside": "drop"}}})
    assert refused(frame, pol) == (
        "column 'sbp' has 'abc' at row 2, which is not a number, and the policy has no "
        '[cleaning] rule for it (malformed = "drop" or "missing")'
    )


def test_exact_duplicates_need_a_rule() -> None:
    frame = table(a=["1", "2", "3", "2"], b=["x", "y", "z", "y"])
    assert refused(frame, policy(frame)) == (
        "row 4 repeats row 2 exactly and the policy has no [cleaning] rule for duplicates "
        '(duplicates = "drop" or "keep")'
    )
    kept = clean_table(frame, policy(frame, {"duplicates": "keep"}))
    assert len(kept.table) == 4 and kept.report["duplicates"] == {"rule": "keep", "found": 1}
    dropped = clean_table(frame, policy(frame, {"duplicates": "drop"}))
    assert dropped.table["a"].tolist() == ["1", "2", "3"]
    assert dropped.report["rows_dropped_by_rule"]["duplicates"] == 1


def test_dropped_identifiers_need_no_rule_but_the_person_column_does() -> None:
    frame = table(name=["Ann", "", "Cy"], mrn=["1", "", "3"], age=["1", "2", "3"])
    roles = {
        "name": {"role": "identifier", "action": "drop"},
        "mrn": {"role": "identifier", "action": "drop"},
    }
    assert len(clean_table(frame, policy(frame, **roles)).table) == 3
    person = {"person": "mrn", "per_person": "first"}
    assert "column 'mrn' has an empty cell at row 2" in refused(
        frame, policy(frame, person, **roles)
    )
    rules = {**person, "columns": {"mrn": {"missing": "drop"}}}
    assert clean_table(frame, policy(frame, rules, **roles)).table["age"].tolist() == ["1", "3"]


@pytest.mark.parametrize(
    ("rule", "cells", "imputed"),
    [
        ({"missing": "median"}, ["10", "30", "30", "40"], 1),
        ({"missing": "mean"}, ["10", "26.66666667", "30", "40"], 1),
        ({"missing": "constant", "fill": 0}, ["10", "0", "30", "40"], 1),
        ({"missing": "constant", "fill": "unknown"}, ["10", "unknown", "30", "40"], 1),
        ({"missing": "category"}, ["10", "missing", "30", "40"], 1),
        ({"missing": "category", "fill": "not asked"}, ["10", "not asked", "30", "40"], 1),
        ({"missing": "keep"}, ["10", "", "30", "40"], 0),
    ],
)
def test_missing_value_rules(rule: dict, cells: list[str], imputed: int) -> None:
    result = clean_table(INCOME, policy(INCOME, {"columns": {"income": rule}}))
    assert result.table["income"].tolist() == cells
    report = result.report
    assert report["cells_imputed"] == imputed and report["rows_dropped"] == 0
    assert report["columns"]["income"]["missing_cells"] == 1
    assert report["columns"]["income"]["rules"]["missing"] == rule["missing"]


def test_drop_and_mode() -> None:
    dropped = clean_table(INCOME, policy(INCOME, {"columns": {"income": {"missing": "drop"}}}))
    assert dropped.table["age"].tolist() == ["30", "50", "60"]
    assert dropped.table.index.tolist() == [0, 2, 3], "the index keeps the input positions"
    assert dropped.report["rows_dropped_by_rule"]["missing"] == 1
    assert dropped.report["columns"]["income"]["rows_dropped"] == 1
    frame = table(colour=["red", "", "blue", "red", "blue"], visit=["1", "2", "3", "4", "5"])
    mode = clean_table(frame, policy(frame, {"columns": {"colour": {"missing": "mode"}}}))
    assert mode.table["colour"].tolist() == ["red", "blue", "blue", "red", "blue"], "ties: first"


def test_statistics_are_taken_after_deduplication() -> None:
    """A person entered three times must not pull the median towards their value."""
    frame = table(
        mrn=["1", "1", "1", "2", "3", "4"],
        visit=["1", "2", "3", "4", "5", "6"],
        income=["90", "90", "90", "10", "20", ""],
    )
    rules = {"person": "mrn", "per_person": "first", "columns": {"income": {"missing": "median"}}}
    result = clean_table(frame, policy(frame, rules, mrn={"role": "identifier", "action": "drop"}))
    assert result.table["income"].tolist() == ["90", "10", "20", "20"]


def test_values_outside_the_domain() -> None:
    frame = table(sbp=["120", "400", "-5", "", "130"], colour=["red", "teal", "blue", "red", "red"])
    rules = {
        "columns": {
            "sbp": {"min": 50, "max": 250, "outside": "clip", "missing": "median"},
            "colour": {"categories": ["red", "blue"], "outside": "other"},
        }
    }
    result = clean_table(frame, policy(frame, rules))
    assert result.table["sbp"].tolist() == ["120", "250", "50", "125", "130"]
    assert result.table["colour"].tolist() == ["red", "other", "blue", "red", "red"]
    assert result.report["cells_clipped"] == 2 and result.report["cells_recoded"] == 1
    assert result.report["columns"]["sbp"]["outside_cells"] == 2
    drop = {"columns": {"sbp": {"min": 50, "max": 250, "outside": "drop", "missing": "drop"}}}
    result = clean_table(frame, policy(frame, drop))
    assert result.table["sbp"].tolist() == ["120", "130"]
    assert result.report["rows_dropped_by_rule"] == {
        "malformed": 0,
        "outside": 2,
        "missing": 1,
        "duplicates": 0,
        "per_person": 0,
    }


def test_malformed_numbers_are_dropped_or_treated_as_missing() -> None:
    frame = table(sbp=["120", "high", "140"])
    rule = {"min": 0, "outside": "drop"}
    dropped = clean_table(frame, policy(frame, {"columns": {"sbp": {**rule, "malformed": "drop"}}}))
    assert dropped.table["sbp"].tolist() == ["120", "140"]
    assert dropped.report["columns"]["sbp"]["malformed_cells"] == 1
    assert dropped.report["rows_dropped_by_rule"]["malformed"] == 1
    imputed = {**rule, "malformed": "missing", "missing": "median"}
    result = clean_table(frame, policy(frame, {"columns": {"sbp": imputed}}))
    assert result.table["sbp"].tolist() == ["120", "130", "140"]
    assert result.report["cells_imputed"] == 1 and result.report["rows_dropped"] == 0


PEOPLE = table(
    national_id=["123-45-6789", "555-00-1111", "123456789", " 123 45 6789", "555001111"],
    visit=["1", "2", "3", "4", "5"],
    weight=["", "70", "81", "82", "71"],
)
PEOPLE_ROLES = {"national_id": {"role": "identifier", "action": "pseudonymize"}}
KEEP_WEIGHT = {"weight": {"missing": "keep"}}


def test_one_person_one_record_after_normalisation() -> None:
    rules = {"person": "national_id", "per_person": "first", "columns": KEEP_WEIGHT}
    result = clean_table(PEOPLE, policy(PEOPLE, rules, **PEOPLE_ROLES))
    assert result.table["visit"].tolist() == ["1", "2"]
    assert result.report["per_person"] == {
        "column": "national_id",
        "rule": "first",
        "people": 2,
        "people_with_several_records": 2,
        "records_removed": 3,
    }
    assert result.report["max_records_per_person"] == 1
    assert result.report["rows_dropped_by_rule"]["per_person"] == 3


def test_merge_fills_the_first_record_and_counts_conflicts() -> None:
    rules = {"person": "national_id", "per_person": "merge", "columns": KEEP_WEIGHT}
    result = clean_table(PEOPLE, policy(PEOPLE, rules, **PEOPLE_ROLES))
    assert result.table["weight"].tolist() == ["81", "70"]
    per_person = result.report["per_person"]
    assert per_person["cells_filled"] == 1
    # conflicts: national_id (spelled differently), visit for both people, weight 81/82, 70/71
    assert per_person["conflicting_cells"] == 6
    assert per_person["records_removed"] == 3


def test_a_contribution_bound_keeps_the_first_records_of_each_person() -> None:
    rules = {
        "person": "national_id",
        "per_person": "bound",
        "max_records_per_person": 2,
        "columns": KEEP_WEIGHT,
    }
    result = clean_table(PEOPLE, policy(PEOPLE, rules, **PEOPLE_ROLES))
    assert result.table["visit"].tolist() == ["1", "2", "3", "5"]
    assert result.report["max_records_per_person"] == 2
    assert result.report["per_person"]["records_removed"] == 1


def test_later_errors_name_the_input_row() -> None:
    """After cleansing dropped rows, a type error still names the row of the input file."""
    frame = table(income=["", "", "1", "2", "3", "4"], age=["1", "2", "3", "4", "old", "6"])
    pol = policy(
        frame,
        {"columns": {"income": {"missing": "drop"}}},
        age={"role": "quasi", "type": "numeric"},
    )
    with pytest.raises(FedVaultError, match="column 'age' mixes numbers and text: row 5 has 'old'"):
        anonymize_table(frame, pol)


def test_typed_columns_stay_numeric() -> None:
    frame = pd.DataFrame({"sbp": [120.0, np.nan, 140.0, 400.0], "note": ["a", "b", "c", "d"]})
    rules = {"columns": {"sbp": {"missing": "mean", "max": 250, "outside": "clip"}}}
    result = clean_table(frame, policy(frame, rules))
    assert result.table["sbp"].dtype == float
    assert result.table["sbp"].tolist() == [120.0, 170.0, 140.0, 250.0]


def test_imputing_a_column_with_no_values_is_refused() -> None:
    frame = table(sbp=["", ""], b=["1", "2"])
    with pytest.raises(FedVaultError, match="every kept value is missing, so the median"):
        clean_table(frame, policy(frame, {"columns": {"sbp": {"missing": "median"}}}))


def test_the_report_is_json_safe_and_in_the_anonymization_report() -> None:
    rules = {"person": "national_id", "per_person": "merge", "columns": KEEP_WEIGHT}
    result = anonymize_table(PEOPLE, policy(PEOPLE, rules, **PEOPLE_ROLES), b"k" * 32)
    cleaning = result.report["cleaning"]
    assert cleaning == json.loads(json.dumps(cleaning, allow_nan=False))
    assert cleaning["declared"] is True and cleaning["rows_in"] == 5 and cleaning["rows_out"] == 2
    assert result.report["rows_in"] == 5 and result.report["rows_out"] == 2
    plain = table(a=["1", "2"])
    undeclared = anonymize_table(plain, policy(plain)).report["cleaning"]
    assert undeclared["declared"] is False and undeclared["columns"] == {}
    assert undeclared["rows_dropped"] == 0 and undeclared["max_records_per_person"] is None
