"""What a release promises: every column has a role, rows are shuffled, pseudonyms are
reported as linkable, and t-closeness is measured against the whole table."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from privacy.anonymization import anonymize_table, parse_policy
from privacy.anonymization.pseudonymize import pseudonym
from privacy.errors import FedVaultError
from tasks.clinic import CLINIC_COLUMNS, generate_clinic

KEY = bytes(range(32))
ROLES = {
    "name": {"role": "identifier", "action": "drop"},
    "email": {"role": "identifier", "action": "drop"},
    "phone": {"role": "identifier", "action": "drop"},
    "national_id": {"role": "identifier", "action": "pseudonymize"},
    "birth_date": {"role": "quasi", "date": "year"},
    "sex": {"role": "quasi"},
    "zip": {"role": "quasi", "prefix": 3},
    "age": {"role": "quasi", "width": 5},
    "diagnosis": {"role": "sensitive"},
}


@pytest.fixture(scope="module")
def clinic() -> pd.DataFrame:
    return generate_clinic(1500, 5).astype(str)


def full_policy(targets: dict | None = None, **changes: dict):
    roles = {**ROLES, **changes}
    columns = {name: roles.get(name, {"role": "keep"}) for name in CLINIC_COLUMNS}
    return parse_policy({"targets": targets or {"k": 5, "l": 2}, "columns": columns}, "p.toml")


@pytest.mark.parametrize("column", ["age", "hospital", "notes"])
def test_a_column_without_a_role_is_refused(clinic: pd.DataFrame, column: str) -> None:
    table = clinic.assign(notes="called back, all fine and well")
    columns = {name: ROLES.get(name, {"role": "keep"}) for name in table.columns}
    columns.pop(column)
    policy = parse_policy({"targets": {"k": 5}, "columns": columns}, "p.toml")
    with pytest.raises(FedVaultError) as info:
        anonymize_table(table, policy, KEY)
    message = str(info.value)
    assert message.startswith(f"p.toml gives no role to column(s) '{column}'")
    assert "every column needs one" in message and "\n" not in message


def test_the_refusal_says_what_detection_sees(clinic: pd.DataFrame) -> None:
    columns = {name: {"role": "keep"} for name in ("hospital", "bmi")}
    policy = parse_policy({"targets": {"k": 1}, "columns": columns}, "p.toml")
    with pytest.raises(FedVaultError) as info:
        anonymize_table(clinic[["hospital", "bmi", "email", "age", "glucose"]], policy)
    assert str(info.value).startswith(
        "p.toml gives no role to column(s) 'email' (100% of sampled values are email "
        "addresses), 'age' (ages (known to anyone who knows the person)), 'glucose'; "
    )


def test_rows_are_shuffled_and_not_in_source_order(clinic: pd.DataFrame) -> None:
    source = {pseudonym(v, KEY): i for i, v in enumerate(clinic["national_id"])}
    orders = []
    for _ in range(2):
        released = anonymize_table(clinic, full_policy(), KEY).table
        orders.append([source[p] for p in released["national_id"]])
    assert sorted(orders[0]) == list(range(len(clinic)))
    assert orders[0] != orders[1]
    # In source order the rank correlation would be 1; a shuffle leaves it near 0.
    for order in orders:
        assert abs(np.corrcoef(order, np.arange(len(order)))[0, 1]) < 0.15
    report = anonymize_table(clinic, full_policy(), KEY).report
    assert report["row_order"].startswith("shuffled")


def test_pseudonymized_columns_make_the_release_pseudonymized(clinic: pd.DataFrame) -> None:
    report = anonymize_table(clinic, full_policy(), KEY).report
    assert report["release"] == "pseudonymized"
    assert report["columns"]["national_id"]["linkable"] is True
    assert "not anonymized" in report["release_note"]
    dropped = full_policy(national_id={"role": "identifier", "action": "drop"})
    report = anonymize_table(clinic, dropped).report
    assert report["release"] == "anonymized"
    assert not any(column.get("linkable") for column in report["columns"].values())


def test_t_is_measured_against_the_whole_table_not_the_released_rows(
    clinic: pd.DataFrame,
) -> None:
    """Suppress a stratum rich in one diagnosis: the released rows' own distribution shifts,
    and t must still be measured against the whole table's."""
    table = clinic.copy()
    small = table.index[:40]
    table.loc[small, "hospital"] = "Tiny Clinic"
    table.loc[small, "diagnosis"] = "copd"
    policy = full_policy(
        {"k": 5, "t": 0.45, "max_suppression": 0.05}, hospital={"role": "quasi", "fixed": True}
    )
    result = anonymize_table(table, policy, KEY)
    assert result.report["suppressed_records"] == 40
    whole = Counter(table["diagnosis"])
    released = result.table
    quasi = ["birth_date", "sex", "zip", "age", "hospital"]

    def largest_distance(reference: Counter, total: int) -> float:
        largest = 0.0
        for _, group in released.groupby(quasi):
            counts = Counter(group["diagnosis"])
            distance = sum(abs(counts[v] / len(group) - reference[v] / total) for v in reference)
            largest = max(largest, distance / 2)
        return largest

    against_whole = largest_distance(whole, len(table))
    against_released = largest_distance(Counter(released["diagnosis"]), len(released))
    assert against_whole != pytest.approx(against_released)
    assert result.report["achieved"]["t"]["diagnosis"] == pytest.approx(against_whole)
    assert against_whole <= 0.45 + 1e-9
