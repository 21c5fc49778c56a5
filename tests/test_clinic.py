"""The synthetic clinic table: exact schema, realistic values, determinism, learnability, CLI."""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from cli.main import main
from privacy.anonymization import anonymize_table, load_policy
from privacy.errors import FedVaultError
from tasks.clinic import (
    CLINIC_COLUMNS,
    DIAGNOSES,
    HOSPITALS,
    REFERENCE_DATE,
    generate_clinic,
    write_clinic_csv,
)

EXPECTED_COLUMNS = [
    "name",
    "email",
    "phone",
    "national_id",
    "birth_date",
    "sex",
    "zip",
    "hospital",
    "diagnosis",
    "age",
    "bmi",
    "systolic_bp",
    "cholesterol",
    "glucose",
    "smoker",
    "exercise_hours",
    "readmitted",
]


SHIPPED_POLICY = Path(__file__).resolve().parents[1] / "simulations/scenarios/clinic-policy.toml"


@pytest.fixture(scope="module")
def clinic() -> pd.DataFrame:
    return generate_clinic(20_000, 11)


def test_columns_are_exactly_the_schema(clinic: pd.DataFrame) -> None:
    assert list(clinic.columns) == EXPECTED_COLUMNS == list(CLINIC_COLUMNS)
    assert len(clinic) == 20_000


def test_identifier_formats(clinic: pd.DataFrame) -> None:
    assert clinic["email"].str.fullmatch(r"[a-z.]+\d*@[a-z0-9.-]+\.[a-z]+").all()
    assert clinic["national_id"].str.fullmatch(r"\d{3}-\d{2}-\d{4}").all()
    assert not clinic["national_id"].str.startswith(("000", "666")).any()
    digits = clinic["phone"].str.replace(r"\D", "", regex=True)
    assert digits.str.len().isin([10, 11]).all()
    assert clinic["name"].str.fullmatch(r"\S+ \S+").all()
    for column in ("email", "phone", "national_id"):
        assert clinic[column].nunique() / len(clinic) > 0.999, column


def test_quasi_identifiers_are_realistic(clinic: pd.DataFrame) -> None:
    assert set(clinic["sex"]) == {"F", "M"}
    zips = clinic["zip"]
    assert zips.str.fullmatch(r"\d{5}").all()
    assert zips.str.startswith("0").any(), "leading zeros must survive"
    assert 50 <= zips.nunique() <= 200
    births = pd.to_datetime(clinic["birth_date"], format="%Y-%m-%d")
    ref = REFERENCE_DATE.date()
    ages = [ref.year - b.year - ((b.month, b.day) > (ref.month, ref.day)) for b in births.dt.date]
    assert (clinic["age"].to_numpy() == np.array(ages)).all()
    assert clinic["age"].between(18, 90).all()
    assert ref == date(2024, 1, 1)


def test_hospitals_and_diagnoses(clinic: pd.DataFrame) -> None:
    sizes = clinic["hospital"].value_counts()
    assert set(sizes.index) == set(HOSPITALS)
    assert sizes.max() > 2.5 * sizes.min(), "hospitals must differ in size"
    assert set(clinic["diagnosis"]) == set(DIAGNOSES)
    assert set(clinic["smoker"]) == {"no", "yes"}
    assert set(clinic["readmitted"]) == {0, 1}
    assert 0.30 <= clinic["readmitted"].mean() <= 0.50


def test_same_seed_same_table_other_seed_other_table() -> None:
    first = generate_clinic(300, 5)
    pd.testing.assert_frame_equal(first, generate_clinic(300, 5))
    other = generate_clinic(300, 6)
    assert not first["national_id"].equals(other["national_id"])
    assert not first["readmitted"].equals(other["readmitted"])


def test_label_is_learnable_from_clinical_features(clinic: pd.DataFrame) -> None:
    features = clinic[["age", "bmi", "systolic_bp", "cholesterol", "glucose", "exercise_hours"]]
    x = features.astype(float).assign(smoker=(clinic["smoker"] == "yes").astype(float))
    x = pd.concat([x, pd.get_dummies(clinic["diagnosis"], dtype=float)], axis=1).to_numpy()
    y = clinic["readmitted"].to_numpy()
    x = StandardScaler().fit_transform(x)
    model = LogisticRegression(max_iter=500).fit(x[:15_000], y[:15_000])
    accuracy = model.score(x[15_000:], y[15_000:])
    majority = max(y[15_000:].mean(), 1 - y[15_000:].mean())
    assert accuracy > majority + 0.10, (accuracy, majority)


def test_generation_is_fast() -> None:
    start = time.perf_counter()
    generate_clinic(100_000, 0)
    assert time.perf_counter() - start < 20


@pytest.mark.parametrize("rows", [0, -3, True, 2.5])
def test_rows_must_be_a_positive_integer(rows: object) -> None:
    with pytest.raises(FedVaultError, match="positive integer"):
        generate_clinic(rows, 0)  # type: ignore[arg-type]


def test_write_clinic_csv_round_trips(tmp_path) -> None:
    path = tmp_path / "c.csv"
    table = write_clinic_csv(200, 3, path)
    back = pd.read_csv(path, dtype=str)
    assert list(back.columns) == EXPECTED_COLUMNS
    assert back["zip"].tolist() == table["zip"].tolist()
    assert [p.name for p in tmp_path.iterdir()] == ["c.csv"]


def test_cli_synth_writes_the_same_table(tmp_path, capsys) -> None:
    out = tmp_path / "sub" / "clinic.csv"
    assert main(["data", "synth", "clinic", "--rows", "150", "--seed", "9", "-o", str(out)]) == 0
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    expected = generate_clinic(150, 9).astype(str)
    assert written["national_id"].tolist() == expected["national_id"].tolist()
    assert written["birth_date"].tolist() == expected["birth_date"].tolist()
    assert "wrote 150 clinic rows" in capsys.readouterr().out


@pytest.mark.parametrize("rows", ["0", "-5"])
def test_cli_synth_refuses_non_positive_rows(tmp_path, capsys, rows: str) -> None:
    out = tmp_path / "clinic.csv"
    assert main(["data", "synth", "clinic", "--rows", rows, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedvault: error:") and "--rows" in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_cli_synth_unwritable_output_leaves_nothing(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["data", "synth", "clinic", "--rows", "10", "-o", str(blocker / "c.csv")]) == 2
    assert capsys.readouterr().err.startswith("fedvault: error: cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_shipped_policy_keeps_one_record_per_patient() -> None:
    """A patient re-entered (id typed without dashes) and a row exported twice are removed
    before anything else sees the table, and the report says how many."""
    table = generate_clinic(600, 4).astype(str)
    again = table.iloc[[10, 20]].assign(
        national_id=lambda rows: rows["national_id"].str.replace("-", ""), bmi="30.0"
    )
    doubled = pd.concat([table, again, table.iloc[[30]]], ignore_index=True)
    report = anonymize_table(doubled, load_policy(SHIPPED_POLICY), b"k" * 32).report
    cleaning = report["cleaning"]
    assert cleaning["duplicates"] == {"rule": "drop", "found": 1}
    assert cleaning["per_person"]["records_removed"] == 2
    assert cleaning["max_records_per_person"] == 1
    assert report["rows_in"] == 603 and report["rows_after_cleaning"] == 600
