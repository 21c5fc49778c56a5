"""The released clinic table meets k, l and t, checked by implementations other than ours.

`independent_check` below is a deliberately plain re-implementation (dictionaries and loops,
no code from privacy/); pycanon checks again (a test dependency, never skipped). Every
generalized cell must also still contain the record's true value: released rows are shuffled,
so each is matched to its source row through its pseudonymized national id.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import date

import pandas as pd
import pytest
from pycanon import anonymity

from privacy.anonymization import anonymize_table, parse_policy
from privacy.anonymization.pseudonymize import pseudonym
from privacy.errors import FedVaultError
from tasks.clinic import CLINIC_COLUMNS, generate_clinic

QUASI = ["birth_date", "sex", "zip", "age"]
KEY = bytes(range(32))


@pytest.fixture(scope="module")
def clinic() -> pd.DataFrame:
    return generate_clinic(3000, 21).astype(str)


def policy(targets: dict, **column_changes: dict):
    columns = {
        "name": {"role": "identifier", "action": "drop"},
        "email": {"role": "identifier", "action": "drop"},
        "phone": {"role": "identifier", "action": "drop"},
        "national_id": {"role": "identifier", "action": "pseudonymize"},
        "birth_date": {"role": "quasi", "type": "date"},
        "sex": {"role": "quasi"},
        "zip": {"role": "quasi", "type": "zip"},
        "age": {"role": "quasi", "type": "numeric"},
        "diagnosis": {"role": "sensitive"},
    }
    columns.update(column_changes)
    kept = {name: {"role": "keep"} for name in CLINIC_COLUMNS if name not in columns}
    return parse_policy({"targets": targets, "columns": {**columns, **kept}})


def independent_check(table: pd.DataFrame, quasi: list[str], sensitive: str, ordered: bool):
    """(k, distinct l, entropy l, t) of `table`, computed from scratch."""
    classes: dict[tuple, list] = defaultdict(list)
    for row in table[[*quasi, sensitive]].itertuples(index=False):
        classes[tuple(row[:-1])].append(row[-1])
    overall = Counter(table[sensitive])
    total = len(table)
    domain = sorted(overall, key=float) if ordered else sorted(overall)

    def entropy_l(values: list) -> float:
        shares = [count / len(values) for count in Counter(values).values()]
        return math.exp(-sum(p * math.log(p) for p in shares))

    def distance(values: list) -> float:
        counts = Counter(values)
        diffs = [counts[v] / len(values) - overall[v] / total for v in domain]
        if not ordered:
            return sum(abs(d) for d in diffs) / 2
        running, moved = 0.0, 0.0
        for d in diffs:
            running += d
            moved += abs(running)
        return moved / (len(domain) - 1)

    groups = list(classes.values())
    return (
        min(len(g) for g in groups),
        min(len(set(g)) for g in groups),
        min(entropy_l(g) for g in groups),
        max(distance(g) for g in groups),
    )


def pycanon_check(table: pd.DataFrame, quasi: list[str], sensitive: str):
    data = table.reset_index(drop=True)
    return (
        anonymity.k_anonymity(data, quasi),
        anonymity.l_diversity(data, quasi, [sensitive]),
        anonymity.t_closeness(data, quasi, [sensitive]),
    )


def source_rows(released: pd.DataFrame, original: pd.DataFrame) -> pd.DataFrame:
    """The source record of each released row, found by its pseudonymized national id."""
    by_pseudonym = {pseudonym(v, KEY): i for i, v in enumerate(original["national_id"])}
    return original.iloc[[by_pseudonym[p] for p in released["national_id"]]]


def assert_cells_contain_truth(released: pd.DataFrame, original: pd.DataFrame) -> None:
    """Each generalized cell covers the original value of its record."""
    original = source_rows(released, original)
    assert len(released) == len(original)
    for cell, true in zip(released["zip"], original["zip"], strict=True):
        assert true.startswith(cell.rstrip("*")) and len(cell) == len(true)
    for cell, true in zip(released["age"], original["age"], strict=True):
        low, _, high = cell.partition("-")
        assert int(low) <= int(true) <= int(high or low), (cell, true)
    for cell, true in zip(released["birth_date"], original["birth_date"], strict=True):
        first, _, last = cell.strip("[]").partition("..")
        assert date.fromisoformat(first) <= date.fromisoformat(true)
        assert date.fromisoformat(true) <= date.fromisoformat(last or first)
    for cell, true in zip(released["sex"], original["sex"], strict=True):
        assert cell == true or cell == "*"


@pytest.mark.parametrize(
    "targets",
    [
        {"k": 5, "l": 2},
        {"k": 10, "l": 3, "l_kind": "entropy"},
        {"k": 4, "t": 0.25},
        {"k": 5, "l": 2, "t": 0.3},
    ],
)
def test_targets_met_on_clinic(clinic: pd.DataFrame, targets: dict) -> None:
    result = anonymize_table(clinic, policy(targets), KEY)
    released = result.table
    k, l_distinct, l_entropy, t = independent_check(released, QUASI, "diagnosis", False)
    assert k >= targets["k"]
    if targets.get("l_kind") == "entropy":
        assert l_entropy >= targets["l"] - 1e-9
    elif "l" in targets:
        assert l_distinct >= targets["l"]
    if "t" in targets:
        assert t <= targets["t"] + 1e-9
    report = result.report
    assert report["achieved"]["k"] == k
    assert report["achieved"]["l_distinct"]["diagnosis"] == l_distinct
    assert report["achieved"]["l_entropy"]["diagnosis"] == pytest.approx(l_entropy)
    assert report["achieved"]["t"]["diagnosis"] == pytest.approx(t)
    assert report["suppressed_records"] == 0
    assert_cells_contain_truth(released, clinic)
    assert list(released.columns) == [
        "national_id",
        *["birth_date", "sex", "zip", "hospital", "diagnosis", "age", "bmi", "systolic_bp"],
        *["cholesterol", "glucose", "smoker", "exercise_hours", "readmitted"],
    ]
    assert (released["bmi"].to_numpy() == source_rows(released, clinic)["bmi"].to_numpy()).all()
    pk, pl, pt = pycanon_check(released, QUASI, "diagnosis")
    assert pk >= targets["k"]
    assert pl >= targets.get("l", 1)  # entropy l-diversity implies as many distinct values
    assert pt <= targets.get("t", 1.0) + 1e-9


def test_ordered_distance_on_a_numeric_sensitive_column(clinic: pd.DataFrame) -> None:
    changes = {"diagnosis": {"role": "keep"}, "glucose": {"role": "sensitive"}}
    result = anonymize_table(clinic, policy({"k": 5, "t": 0.15}, **changes), KEY)
    k, _, _, t = independent_check(result.table, QUASI, "glucose", ordered=True)
    assert k >= 5 and t <= 0.15 + 1e-9
    assert result.report["achieved"]["t"]["glucose"] == pytest.approx(t)
    assert result.report["columns"]["glucose"]["distance"] == "ordered"


def test_policy_recoding_then_mondrian(clinic: pd.DataFrame) -> None:
    changes = {
        "birth_date": {"role": "quasi", "date": "year"},
        "zip": {"role": "quasi", "prefix": 3},
        "age": {"role": "quasi", "width": 5, "top": 85},
    }
    result = anonymize_table(clinic, policy({"k": 5, "l": 2}, **changes), KEY)
    released = result.table
    assert released["zip"].str.fullmatch(r"\d{0,3}\*+").all()
    assert released["birth_date"].str.fullmatch(r"\d{4}|\[\d{4}-\d{4}\]").all()
    assert released["age"].str.fullmatch(r"\d+-\d+|\d+\+").all()
    k, l_distinct, _, _ = independent_check(released, QUASI, "diagnosis", False)
    assert k >= 5 and l_distinct >= 2
    columns = result.report["columns"]
    assert columns["zip"]["transformation"].startswith("zip to 3-digit prefix")
    assert columns["age"]["distinct_after"] <= columns["age"]["distinct_before"]


def test_fixed_column_groups_are_suppressed_within_the_limit(clinic: pd.DataFrame) -> None:
    table = clinic.copy()
    table.loc[:2, "hospital"] = "Tiny Clinic"
    changes = {"hospital": {"role": "quasi", "fixed": True}}
    targets = {"k": 5, "l": 2, "max_suppression": 0.01}
    result = anonymize_table(table, policy(targets, **changes), KEY)
    assert result.report["suppressed_records"] == 3
    assert result.report["rows_out"] == len(table) - 3 == len(result.table)
    assert "Tiny Clinic" not in set(result.table["hospital"])
    k, l_distinct, _, _ = independent_check(result.table, [*QUASI, "hospital"], "diagnosis", False)
    assert k >= 5 and l_distinct >= 2
    info = result.report["information_loss"]
    assert info["discernibility"] >= 3 * len(table)
    with pytest.raises(FedVaultError, match=r"max_suppression=0\.0%.*hospital=Tiny Clinic"):
        anonymize_table(table, policy({**targets, "max_suppression": 0.0}, **changes), KEY)


def test_unreachable_targets_fail_instead_of_weakening(clinic: pd.DataFrame) -> None:
    with pytest.raises(FedVaultError, match="cannot meet k=5, l=9"):
        anonymize_table(clinic, policy({"k": 5, "l": 9}), KEY)
    with pytest.raises(FedVaultError, match="larger than the number of rows"):
        anonymize_table(clinic.head(4), policy({"k": 5}), KEY)


def test_k_equal_to_rows_gives_one_class(clinic: pd.DataFrame) -> None:
    small = clinic.head(40)
    result = anonymize_table(small, policy({"k": 40}), KEY)
    assert result.report["equivalence_classes"] == 1
    assert set(result.table["sex"]) == {"*"}
    assert result.report["risk"]["prosecutor_max"] == pytest.approx(1 / 40)


def test_metrics_report(clinic: pd.DataFrame) -> None:
    result = anonymize_table(clinic, policy({"k": 5, "l": 2}), KEY)
    report = result.report
    sizes = Counter(result.table[QUASI].itertuples(index=False))
    assert report["equivalence_classes"] == len(sizes)
    info = report["information_loss"]
    assert info["discernibility"] == sum(size**2 for size in sizes.values())
    assert info["average_class_size"] == pytest.approx(len(clinic) / len(sizes) / 5)
    assert report["risk"]["prosecutor_max"] == pytest.approx(1 / min(sizes.values()))
    assert report["risk"]["prosecutor_average"] == pytest.approx(len(sizes) / len(clinic))
    assert 0 < info["normalized_certainty_penalty"] < 0.5
    assert set(info["ncp_by_column"]) == set(QUASI)
    assert report["columns"]["name"] == {
        "role": "identifier",
        "transformation": "dropped",
        "linkable": False,
    }
    assert report["columns"]["national_id"]["linkable"] is True
    assert report["release"] == "pseudonymized"
    assert report["release_note"].startswith("pseudonymized, not anonymized: national_id keeps")
