"""A real public table, cleansed and anonymized with a written policy, checked by pycanon.

NHEFS (NHANES I Epidemiologic Follow-up Study; 1,629 respondents, 67 columns) ships in the
`causaldata` wheel, so it loads offline. It has empty cells in 19 columns. It has no
duplicates of its own, so the test adds what a site's export often holds: records exported
twice and respondents entered again with one value changed. The policy is
tests/data/nhefs-policy.toml; pycanon, an implementation independent of ours, confirms the k
and l the report claims.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from causaldata import nhefs
from pycanon import anonymity

from cli.main import main
from privacy.anonymization import detect_columns, parse_policy, read_table_csv, suggest_policy
from privacy.anonymization.pipeline import anonymize_table
from privacy.errors import FedVaultError

POLICY = Path(__file__).resolve().parent / "data" / "nhefs-policy.toml"
QUASI = ["age", "older", "sex", "race", "education", "school", "marital", "income", "birthplace"]
REPEATED = [3, 40, 41]  # exported twice
REENTERED = [100, 200]  # entered again, weight corrected


@pytest.fixture(scope="module")
def site_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = nhefs.load_pandas().data
    data = data.astype({"seqn": int, "id": int})
    corrected = data.iloc[REENTERED].assign(wt71=lambda rows: rows["wt71"] + 1.5)
    export = pd.concat([data, data.iloc[REPEATED], corrected], ignore_index=True)
    path = tmp_path_factory.mktemp("nhefs") / "nhefs.csv"
    export.to_csv(path, index=False)
    return path


def test_nhefs_is_cleaned_and_anonymized_and_pycanon_agrees(site_csv: Path, capsys) -> None:
    out, report_path = site_csv.with_name("out.csv"), site_csv.with_name("out.json")
    argv = ["anonymize", str(site_csv), "--policy", str(POLICY), "-o", str(out)]
    assert main([*argv, "--report", str(report_path)]) == 0
    printed = capsys.readouterr().out
    assert "cleaned: dropped 68 of 1634 rows (missing 63, duplicates 3, per_person 2)" in printed

    report = json.loads(report_path.read_text())
    cleaning = report["cleaning"]
    assert cleaning["duplicates"] == {"rule": "drop", "found": 3}
    assert cleaning["per_person"]["records_removed"] == 2
    assert cleaning["per_person"]["people"] == 1566 == cleaning["rows_out"]
    assert cleaning["max_records_per_person"] == 1
    assert cleaning["columns"]["wt82"]["rows_dropped"] == 63
    assert cleaning["columns"]["income"]["missing_cells"] == 62
    assert cleaning["columns"]["cholesterol"]["cells_clipped"] == 3
    assert report["release"] == "anonymized" and report["rows_out"] == 1566

    released = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(released) == report["rows_out"]
    assert not {"seqn", "id", "yrdth", "modth", "dadth"} & set(released.columns)
    assert (released[QUASI] != "").all().all(), "no quasi-identifier cell is left empty"
    assert released["income"].str.contains("missing").any(), "unanswered is a category"

    claimed = report["achieved"]
    k = anonymity.k_anonymity(released, QUASI)
    l_diversity = anonymity.l_diversity(released, QUASI, ["death"])
    assert k == claimed["k"] >= report["targets"]["k"] == 5
    assert l_diversity == claimed["l_distinct"]["death"] >= report["targets"]["l"] == 2


def test_without_cleaning_rules_nhefs_stops_at_its_first_empty_cell(site_csv: Path) -> None:
    data = tomllib.loads(POLICY.read_text())
    del data["cleaning"]
    # sbp is the first column (in table order) with an empty cell; rows count from 1.
    row = int(pd.read_csv(site_csv)["sbp"].isna().to_numpy().argmax()) + 1
    with pytest.raises(FedVaultError) as info:
        anonymize_table(read_table_csv(site_csv), parse_policy(data, "nhefs-policy.toml"))
    assert str(info.value) == (
        f"column 'sbp' has an empty cell at row {row} and the policy has no [cleaning] rule for it"
    )


def test_detection_drafts_a_complete_policy_for_nhefs(site_csv: Path) -> None:
    table = read_table_csv(site_csv)
    found = {finding.column: finding for finding in detect_columns(table)}
    assert (found["seqn"].role, found["seqn"].kind) == ("identifier", "record_id")
    assert (found["id"].role, found["id"].kind) == ("identifier", "record_id")
    assert (found["age"].kind, found["race"].kind, found["sex"].kind) == (
        "age",
        "ethnicity",
        "sex",
    )
    draft = parse_policy(tomllib.loads(suggest_policy(table, "nhefs.csv")))
    assert list(draft.columns) == list(table.columns)
    assert draft.cleaning.duplicates == "drop"
    assert draft.cleaning.columns["income"].missing == "keep"
    assert set(draft.cleaning.columns) == {c for c in table.columns if (table[c] == "").any()}
