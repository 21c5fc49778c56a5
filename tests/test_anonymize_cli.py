"""`fedvault anonymize`: outputs on success; one line, exit 2 and no file on every bad input."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pandas as pd
import pytest

from cli.main import main
from tasks.clinic import write_clinic_csv

SHIPPED = Path(__file__).resolve().parents[1] / "simulations" / "scenarios" / "clinic-policy.toml"


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    write_clinic_csv(600, 13, tmp_path / "in.csv")
    (tmp_path / "policy.toml").write_text(SHIPPED.read_text())
    return tmp_path


def run(work: Path, *extra: str, source: str = "in.csv", policy: str = "policy.toml") -> int:
    argv = ["anonymize", str(work / source), "--policy", str(work / policy)]
    argv += ["-o", str(work / "out.csv"), "--report", str(work / "out.json")]
    return main([*argv, "--state-dir", str(work / "state"), *extra])


def test_anonymize_writes_table_and_report(work: Path, capsys) -> None:
    assert run(work) == 0
    out = pd.read_csv(work / "out.csv", dtype=str)
    report = json.loads((work / "out.json").read_text())
    assert "name" not in out.columns and "email" not in out.columns
    assert report["targets"]["k"] == 5 and report["achieved"]["k"] >= 5
    assert report["achieved"]["l_distinct"]["diagnosis"] >= 2
    assert report["rows_out"] == len(out) == 600 - report["suppressed_records"]
    assert set(report["risk"]) == {"prosecutor_max", "prosecutor_average", "records_at_max_risk"}
    assert {"discernibility", "average_class_size", "normalized_certainty_penalty"} <= set(
        report["information_loss"]
    )
    assert report["columns"]["national_id"]["transformation"].startswith("pseudonymized")
    assert report["release"] == "pseudonymized" and report["cleaning"]["rows_dropped"] == 0
    printed = capsys.readouterr().out
    assert "wrote 600 of 600 rows" in printed and "in shuffled order" in printed
    assert "pseudonymized, not anonymized: national_id keeps one keyed pseudonym" in printed
    assert f"pseudonym key: {work / 'state' / 'pseudonym.key'}" in printed
    assert "cleaned:" not in printed


def test_detect_prints_a_policy(work: Path, capsys) -> None:
    assert main(["anonymize", "--detect", str(work / "in.csv")]) == 0
    printed = capsys.readouterr().out
    assert "[columns.email]" in printed and 'action = "drop"' in printed
    assert "# quasi: ages (known to anyone who knows the person)\n[columns.age]" in printed
    assert sorted(p.name for p in work.iterdir()) == ["in.csv", "policy.toml"]


def test_without_state_dir_the_key_lives_in_fedvault_home(
    work: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = work / "home"
    monkeypatch.setenv("FEDVAULT_HOME", str(home))
    argv = ["anonymize", str(work / "in.csv"), "--policy", str(work / "policy.toml")]
    assert main([*argv, "-o", str(work / "a.csv")]) == 0
    site = home / "site"
    assert stat.S_IMODE(site.stat().st_mode) == 0o700
    assert stat.S_IMODE((site / "pseudonym.key").stat().st_mode) == 0o600
    assert f"(site state directory {site})" in capsys.readouterr().out
    assert main([*argv, "-o", str(work / "b.csv")]) == 0
    first = pd.read_csv(work / "a.csv", dtype=str)["national_id"]
    second = pd.read_csv(work / "b.csv", dtype=str)["national_id"]
    assert sorted(first) == sorted(second), "the same site key both times"


def test_cleaning_is_reported(work: Path, capsys) -> None:
    lines = (work / "in.csv").read_text().splitlines()
    (work / "in.csv").write_text("\n".join([*lines, lines[1]]) + "\n")
    corrupt_cell(work / "in.csv", "bmi", "")
    policy = work / "policy.toml"
    policy.write_text(policy.read_text() + '\n[cleaning.columns.bmi]\nmissing = "median"\n')
    assert run(work) == 0
    assert "cleaned: dropped 1 of 601 rows (duplicates 1), imputed 1 cells" in (
        capsys.readouterr().out
    )
    cleaning = json.loads((work / "out.json").read_text())["cleaning"]
    assert cleaning["duplicates"] == {"rule": "drop", "found": 1}
    assert cleaning["columns"]["bmi"]["cells_imputed"] == 1


def replace_in(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def corrupt_cell(path: Path, column: str, value: str) -> None:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[7, column] = value
    table.to_csv(path, index=False)


BAD_INPUTS = {
    "unknown policy column": (
        lambda w: (w / "policy.toml").write_text(
            (w / "policy.toml").read_text() + '\n[columns.weight]\nrole = "keep"\n'
        ),
        "names column(s) not in the table: weight",
    ),
    "empty file": (lambda w: (w / "in.csv").write_bytes(b""), "in.csv is empty"),
    "header only": (
        lambda w: (w / "in.csv").write_text("name,email\n"),
        "has a header but no rows",
    ),
    "not utf-8": (
        lambda w: (w / "in.csv").write_bytes("name\nJos\xe9\n".encode("latin-1")),
        "is not valid UTF-8",
    ),
    "ragged csv": (
        lambda w: (w / "in.csv").write_text((w / "in.csv").read_text() + "a,b\n"),
        "is not valid CSV: record 602 has 2 fields",
    ),
    "binary file": (
        lambda w: (w / "in.csv").write_bytes(b"a,b\n\x00\x01,\x02\n"),
        "is not valid CSV",
    ),
    "text in a numeric quasi-identifier": (
        lambda w: corrupt_cell(w / "in.csv", "age", "forty"),
        "column 'age' mixes numbers and text: row 8 has 'forty'",
    ),
    "text in a numeric kept column": (
        lambda w: corrupt_cell(w / "in.csv", "bmi", "n/a"),
        "column 'bmi' mixes numbers and text: row 8 has 'n/a'",
    ),
    "empty quasi-identifier": (
        lambda w: corrupt_cell(w / "in.csv", "zip", ""),
        "column 'zip' has an empty cell at row 8 and the policy has no [cleaning] rule for it",
    ),
    "empty kept cell": (
        lambda w: corrupt_cell(w / "in.csv", "bmi", ""),
        "column 'bmi' has an empty cell at row 8 and the policy has no [cleaning] rule for it",
    ),
    "duplicate record": (
        lambda w: (
            replace_in(w / "policy.toml", 'duplicates = "drop"\n', ""),
            (w / "in.csv").write_text(
                (w / "in.csv").read_text() + (w / "in.csv").read_text().splitlines()[3] + "\n"
            ),
        ),
        "row 601 repeats row 3 exactly and the policy has no [cleaning] rule for duplicates",
    ),
    "bad cleaning rule": (
        lambda w: (w / "policy.toml").write_text(
            (w / "policy.toml").read_text() + '\n[cleaning.columns.bmi]\nmissing = "guess"\n'
        ),
        "cleaning.columns.bmi.missing must be one of drop, keep, median",
    ),
    "k larger than rows": (
        lambda w: replace_in(w / "policy.toml", "k = 5", "k = 601"),
        "k=601 is larger than the number of rows (600)",
    ),
    "unmeetable l": (
        lambda w: replace_in(w / "policy.toml", "l = 2", "l = 9"),
        "cannot meet k=5, l=9 (distinct)",
    ),
    "unmeetable within suppression": (
        lambda w: corrupt_cell(w / "in.csv", "sex", "X"),
        "within max_suppression=0.0%: 1 of 600 records",
    ),
    "unlisted identifier": (
        lambda w: replace_in(
            w / "policy.toml", '[columns.email]\nrole = "identifier"\naction = "drop"\n', ""
        ),
        "gives no role to column(s) 'email' (100% of sampled values are email addresses); "
        "every column needs one",
    ),
    "unlisted harmless-looking column": (
        lambda w: replace_in(w / "policy.toml", '[columns.bmi]\nrole = "keep"\n', ""),
        "gives no role to column(s) 'bmi'; every column needs one",
    ),
    "bad policy": (
        lambda w: replace_in(w / "policy.toml", 'l_kind = "distinct"', 'l_kind = "fuzzy"'),
        "l_kind must be one of distinct, entropy",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_cleanly_and_writes_nothing(work: Path, capsys, case: str) -> None:
    damage, message = BAD_INPUTS[case]
    if case == "unmeetable within suppression":
        replace_in(work / "policy.toml", "max_suppression = 0.05", "max_suppression = 0.0")
    damage(work)
    before = sorted(p.name for p in work.iterdir())
    assert run(work) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedvault: error: ") and err.count("\n") == 1, err
    assert message in err
    after = sorted(p.name for p in work.iterdir() if p.name != "state")
    assert after == [name for name in before if name != "state"]
    assert not (work / "out.csv").exists() and not (work / "out.json").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["anonymize", "{w}/in.csv", "-o", "{w}/out.csv"], "give IN.csv, --policy"),
        (
            [
                "anonymize",
                "{w}/missing.csv",
                "--policy",
                "{w}/policy.toml",
                "-o",
                "{w}/out.csv",
                "--state-dir",
                "{w}/s",
            ],
            "missing.csv does not exist",
        ),
        (
            ["anonymize", "{w}/in.csv", "--policy", "{w}/policy.toml", "-o", "{w}/in.csv"],
            "must be different files",
        ),
        (["anonymize", "--detect", "{w}/in.csv", "-o", "{w}/out.csv"], "--detect takes only"),
        (["anonymize", "--detect", "{w}/missing.csv"], "missing.csv does not exist"),
    ],
)
def test_bad_invocations(work: Path, capsys, argv: list[str], message: str) -> None:
    before = (work / "in.csv").read_bytes()
    assert main([arg.format(w=work) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedvault: error: ") and message in err and err.count("\n") == 1
    assert not (work / "out.csv").exists()
    assert (work / "in.csv").read_bytes() == before
