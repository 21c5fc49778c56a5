"""A tabular site cleanses its rows under its own policy before DP-SGD sees them.

The site here is a deployed one (its own CSV, its own state directory), loaded the way a
training round loads it (`client.data.released_table`, then `load_site_data`): what the
arrays DP-SGD trains on hold is what the test checks, not a flag in a report.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from flwr.app import RecordDict
from report_run import POLICY

from client.data import load_site_data, released_table, training_records
from client.site import Site
from privacy.errors import FedVaultError
from tasks.clinic import generate_clinic
from tasks.registry import TaskSettings

SCHEMA = POLICY.with_name("clinic-schema.toml")
PATIENTS = 400


def write_site(tmp_path: Path, table: pd.DataFrame, cleaning: str | None) -> tuple:
    """A deployed site with `table` as its CSV and the shipped policy, [cleaning] replaced."""
    csv, policy = tmp_path / "site.csv", tmp_path / "policy.toml"
    table.to_csv(csv, index=False)
    text = POLICY.read_text().split("[cleaning]")[0]
    policy.write_text(text + (cleaning or ""))
    task = TaskSettings(name="tabular", csv=str(csv), schema=SCHEMA.read_text())
    site = Site(
        name="site-7", state_dir=tmp_path / "state", data_path=str(csv), policy_path=str(policy)
    )
    return task, site


def patients_entered_twice(extra: int) -> pd.DataFrame:
    """PATIENTS patients; `extra` of them entered again under a retyped national id, and one
    row repeated exactly."""
    table = generate_clinic(PATIENTS, 5).astype(str)
    again = table.iloc[:extra].copy()
    again["national_id"] = again["national_id"].str.replace("-", " ")
    again["systolic_bp"] = "150"
    return pd.concat([table, again, table.iloc[[50]]], ignore_index=True)


def test_a_person_entered_twice_trains_as_one_record(tmp_path):
    table = patients_entered_twice(25)
    cleaning = '[cleaning]\nduplicates = "drop"\nperson = "national_id"\nper_person = "merge"\n'
    task, site = write_site(tmp_path, table, cleaning)
    released, report = released_table(task, site, "iid")
    assert len(table) == PATIENTS + 26
    assert len(released) == PATIENTS
    assert released["national_id"].nunique() == PATIENTS  # one pseudonym, one record each
    data = load_site_data(task, site, "iid", released)
    assert len(data.y_train) + len(data.y_val) == PATIENTS  # what DP-SGD and evaluation see
    counts = report["cleaning"]
    assert counts["rows_dropped_by_rule"]["duplicates"] == 1
    assert counts["per_person"]["people_with_several_records"] == 25
    assert counts["per_person"]["records_removed"] == 25
    assert counts["max_records_per_person"] == 1
    assert report["release"] == "pseudonymized"


def test_a_table_edited_while_the_site_runs_is_read_afresh(tmp_path):
    """A deployed site's ClientApp process outlives runs; it must not train on a stale copy."""
    from client.data import prepare

    table = generate_clinic(PATIENTS, 5).astype(str)
    task, site = write_site(tmp_path, table, '[cleaning]\nduplicates = "drop"\n')
    request = SimpleNamespace(settings=SimpleNamespace(task=task, partition="iid"))
    before = prepare(request, site)
    grown = pd.concat([table, generate_clinic(100, 6).astype(str)], ignore_index=True)
    grown.to_csv(site.data_path, index=False)
    after = prepare(request, site)
    total = len(after.data.y_train) + len(after.data.y_val)
    assert total == PATIENTS + 100 and len(before.data.y_train) < len(after.data.y_train)


def test_a_declared_bound_keeps_at_most_that_many_records_per_person(tmp_path):
    table = patients_entered_twice(10)
    third = table.iloc[:10].assign(systolic_bp="160")  # the same 10 patients a third time
    table = pd.concat([table, third], ignore_index=True)
    cleaning = (
        '[cleaning]\nduplicates = "drop"\nperson = "national_id"\nper_person = "bound"\n'
        "max_records_per_person = 2\n"
    )
    task, site = write_site(tmp_path, table, cleaning)
    released, report = released_table(task, site, "iid")
    assert len(released) == PATIENTS + 10
    assert released["national_id"].value_counts().max() == 2
    assert report["cleaning"]["max_records_per_person"] == 2
    assert report["cleaning"]["per_person"]["records_removed"] == 10
    assert report["cleaning"]["rows_dropped_by_rule"]["duplicates"] == 1


def test_rows_that_need_undeclared_cleansing_stop_the_site_with_one_line(tmp_path):
    table = generate_clinic(200, 3).astype(str)
    table.loc[[11, 40], "national_id"] = ""
    task, site = write_site(tmp_path, table, None)
    assert "[cleaning]" not in Path(site.policy_path).read_text()
    with pytest.raises(FedVaultError) as error:
        released_table(task, site, "iid")
    message = str(error.value)
    assert message == (
        "site-7: column 'national_id' has an empty cell at row 12 and the policy has no "
        "[cleaning] rule for it"
    )
    assert "\n" not in message


def test_setup_counts_the_rows_once_per_run_and_again_when_a_source_changes(tmp_path, monkeypatch):
    import client.data

    cleaning = '[cleaning]\nduplicates = "drop"\nperson = "national_id"\nper_person = "merge"\n'
    task, site = write_site(tmp_path, generate_clinic(PATIENTS, 5).astype(str), cleaning)
    request = SimpleNamespace(settings=SimpleNamespace(task=task, partition="iid"))
    loads = []
    real = client.data.prepare
    monkeypatch.setattr(client.data, "prepare", lambda *args: loads.append(1) or real(*args))
    state = RecordDict()
    first = training_records(request, site, state)
    assert first == len(real(request, site).data.y_train) > 0 and len(loads) == 1
    assert training_records(request, site, state) == first and len(loads) == 1
    # One more patient in the CSV: the next setup reads the table again and counts them.
    generate_clinic(PATIENTS + 40, 5).astype(str).to_csv(site.data_path, index=False)
    released_table.cache_clear()
    assert training_records(request, site, state) > first and len(loads) == 2
    # Another site's context starts from nothing.
    assert training_records(request, site, RecordDict()) > first and len(loads) == 3
