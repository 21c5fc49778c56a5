"""The site's own floor and budget, end to end on the simulation engine through the CLI.

Three runs on the same simulated sites (`--sites DIR`): a DP run; a second run with another
`--seed`, which continues the same budget and stops at the site's limit; and a run that asks
for no DP at all, which trains no site. Each report says what the sites' ledgers hold.
"""

from __future__ import annotations

import json
import tomllib

import pytest
import tomli_w

from cli.main import main

RUN = [
    "--clients", "3", "--rounds", "2",
    "--set", "task.num-train=3000", "--set", "task.num-test=600",
    "--set", "local-epochs=1", "--set", "batch-size=64", "--set", "learning-rate=0.1",
    "--set", "dp=true", "--set", "noise-multiplier=1.0", "--set", "target-epsilon=0",
    "--set", "secagg=false", "--set", "dp-mode=local", "--set", "accountant=prv",
]  # fmt: skip


def report(run_dir) -> dict:
    return json.loads((run_dir / "report.json").read_text())


def site(rep: dict, name: str) -> dict:
    return next(s for s in rep["sample_level_dp"]["sites"] if s["site"] == name)


def test_budget_follows_the_data_source_and_dp_cannot_be_switched_off(tmp_path, capsys):
    sites = tmp_path / "sites"
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    assert main(["simulate", *RUN, "--sites", str(sites), "--out", str(first)]) == 0
    spent = {s["site"]: s for s in report(first)["sample_level_dp"]["sites"]}
    assert all(s["rounds_trained"] == 2 and s["epsilon_before_run"] == 0 for s in spent.values())

    # site-1 lowers its own limit to one more round's worth; site-0 and site-2 keep theirs.
    rounds = spent["site-1"]["rounds"]
    step = rounds[1]["epsilon_cumulative"] - rounds[0]["epsilon_cumulative"]
    limit = round(spent["site-1"]["epsilon"] + step, 6)
    settings_file = sites / "site-1" / "site.toml"
    settings = tomllib.loads(settings_file.read_text())
    settings_file.write_text(tomli_w.dumps({**settings, "max-epsilon": limit}))

    args = ["simulate", *RUN, "--seed", "1", "--sites", str(sites), "--out", str(second)]
    assert main(args) == 0
    again = report(second)
    for name in ("site-0", "site-1", "site-2"):
        assert site(again, name)["epsilon_before_run"] == pytest.approx(spent[name]["epsilon"])
    assert site(again, "site-0")["rounds_trained"] == 2
    limited = site(again, "site-1")
    assert limited["rounds_trained"] == 1 and limited["epsilon"] <= limit
    assert [r["reason"] for r in limited["refusals"]] == ["budget-exhausted"]
    assert all(len(list((sites / f"site-{i}").glob("ledger-*.sqlite"))) == 1 for i in range(3))

    capsys.readouterr()
    args = ["simulate", *RUN, "--set", "dp=false", "--sites", str(sites), "--out", str(third)]
    assert main(args) == 0
    metrics = json.loads((third / "metrics.json").read_text())
    assert [m["sites-trained"] for m in metrics[1:]] == [0, 0]
    assert metrics[-1]["test-accuracy"] == metrics[0]["test-accuracy"]  # nothing learned
    refusals = [r for s in report(third)["sample_level_dp"]["sites"] for r in s["refusals"]]
    assert len(refusals) == 6 and {r["floor"] for r in refusals} == {"require-dp"}
    assert any("require-dp" in s for s in report(third)["summary"]["statements"])
    assert main(["report", "--verify", str(third)]) == 0
