"""The report's numbers: every epsilon recomputed from the ledger events, claims checked.

Independent recomputation reads the site ledgers with raw sqlite3 (not the Ledger class) and
composes the events with Google's dp-accounting RDP accountant (on Opacus' order grid) and
with our `compute_epsilon`, per site and per round.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting import rdp
from opacus.accountants import RDPAccountant
from report_run import DELTA, make_run

from privacy.accounting import PrivacyEvent, compute_epsilon
from privacy.errors import FedVaultError
from privacy.report import build_report, write_report
from privacy.report.render_html import render_html
from privacy.report.render_md import render_md

ANONYMIZATION = {
    "policy": "clinic-policy.toml",
    "method": "mondrian",
    "targets": {"k": 5, "l": 2},
    "rows_in": 1000,
    "rows_out": 990,
    "suppressed_records": 10,
    "suppressed_share": 0.01,
    "achieved": {"k": 5, "l_distinct": 2, "l_entropy": 1.9, "t": 0.21},
    "equivalence_classes": 120,
    "risk": {"prosecutor_max": 0.2},
    "information_loss": {"normalized_certainty_penalty": 0.3},
    "columns": {"age": {"role": "quasi", "transformation": "ranges"}},
}


def _raw_events(ledger_path: Path) -> list[dict]:
    """The reserved events not cancelled, read with plain sqlite3 (not FedVault's reader)."""
    with sqlite3.connect(ledger_path) as conn:
        rows = conn.execute("SELECT kind, payload FROM rows ORDER BY seq").fetchall()
    cancelled = {json.loads(p)["id"] for kind, p in rows if kind == "dp_cancel"}
    return [
        json.loads(p)["event"]
        for kind, p in rows
        if kind == "dp_reserve" and json.loads(p)["id"] not in cancelled
    ]


def _dp_accounting_rdp(events: list[dict]) -> float:
    accountant = rdp.RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)  # Opacus' grid
    for e in events:
        accountant.compose(
            dp_accounting.PoissonSampledDpEvent(
                e["sample_rate"], dp_accounting.GaussianDpEvent(e["noise_multiplier"])
            ),
            e["steps"],
        )
    return accountant.get_epsilon(DELTA)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run = make_run(tmp_path_factory.mktemp("r") / "run", sites=2, rounds=3, prior_rounds=1)
    return run, build_report(run)


def test_epsilons_equal_independent_recomputation(report):
    run, r = report
    sites = r["sample_level_dp"]["sites"]
    assert [s["site"] for s in sites] == ["site-0", "site-1"]
    for site in sites:
        (ledger,) = (run / "sites" / site["site"]).glob("ledger-*.sqlite")
        raw = _raw_events(ledger)
        assert len(raw) == 4  # one from an earlier run, three from this one
        for k, record in enumerate(site["rounds"], start=2):
            events = raw[:k]
            assert record["round"] == k - 1
            # dp-accounting sums the fractional-order RDP series differently: ~1e-4 relative
            assert record["epsilon_cumulative_rdp"] == pytest.approx(
                _dp_accounting_rdp(events), rel=1e-3
            )
            rdp_ours = compute_epsilon([PrivacyEvent.from_dict(e) for e in events], DELTA, "rdp")
            assert record["epsilon_cumulative_rdp"] == pytest.approx(rdp_ours, rel=1e-12)
            prv = compute_epsilon([PrivacyEvent.from_dict(e) for e in events], DELTA, "prv")
            assert record["epsilon_cumulative"] == pytest.approx(prv, rel=1e-12)
            assert record["claim_matches"] is True
        before = compute_epsilon([PrivacyEvent.from_dict(raw[0])], DELTA, "prv")
        assert site["epsilon_before_run"] == pytest.approx(before)
        assert site["epsilon"] == site["rounds"][-1]["epsilon_cumulative"]
        assert site["epsilon_remaining"] == pytest.approx(8.0 - site["epsilon"])
    assert sites[0]["epsilon"] > sites[1]["epsilon"]  # site-1 adds more noise
    assert r["summary"]["verdict"] == "consistent"
    assert r["findings"] == []


def test_summary_states_the_guarantee(report):
    _, r = report
    eps0 = r["sample_level_dp"]["sites"][0]["epsilon"]
    headline = r["summary"]["headline"]
    assert headline.startswith(f"Each record at site-0 is protected by ({eps0:.2f}, 1e-5)-DP")
    assert "example level, add/remove adjacency" in headline
    assert "PRV accountant, opacus 1.6.0" in headline
    assert any("SecAgg+" in s for s in r["summary"]["statements"])
    assert r["provenance"]["run_ids"] == ["4242"]
    assert r["provenance"]["software"]["opacus"] == "1.6.0"
    assert len(r["provenance"]["config_sha256"]) == 64
    assert r["client_level_dp"] == {"enabled": False}


def test_wrong_claim_is_flagged_and_not_repeated(tmp_path):
    run = make_run(tmp_path / "run", sites=2, rounds=2, claim_offset=-0.5)
    r = build_report(run)
    last = r["sample_level_dp"]["sites"][0]["rounds"][-1]
    assert last["claim_matches"] is False
    assert last["epsilon_cumulative"] == pytest.approx(last["claimed_epsilon"] + 0.5)
    assert r["summary"]["verdict"] == "attention"
    assert any("site-0 round 2: the site claimed epsilon" in f["message"] for f in r["findings"])


def test_events_reported_differently_from_the_site_ledger_are_flagged(tmp_path):
    run = make_run(tmp_path / "run", sites=1, rounds=2)
    (ledger,) = (run / "sites" / "site-0").glob("ledger-*.sqlite")
    ledger.unlink()
    r = build_report(run)  # no site ledger: events as the site reported them
    assert r["sample_level_dp"]["sites"][0]["rounds"][0]["events_source"].startswith("run ledger")
    make_run(tmp_path / "other", sites=1, rounds=2)
    (other,) = (tmp_path / "other" / "sites" / "site-0").glob("ledger-*.sqlite")
    other.rename(run / "sites" / "site-0" / other.name)
    r = build_report(run)
    assert r["summary"]["verdict"] == "attention"
    assert any("not in its ledger" in f["message"] for f in r["findings"])


def test_dp_off_says_so(tmp_path):
    r = build_report(make_run(tmp_path / "run", dp=False))
    assert r["summary"]["headline"].startswith("The run asked the sites to train without DP-SGD")
    assert r["sample_level_dp"]["enabled"] is False
    assert r["sample_level_dp"]["sites"] == []


def test_refusals_and_client_dp_and_anonymization(tmp_path):
    run = make_run(
        tmp_path / "run",
        sites=2,
        rounds=2,
        refuse_round=2,
        client_dp=True,
        anonymization=ANONYMIZATION,
    )
    r = build_report(run)
    site1 = r["sample_level_dp"]["sites"][1]
    assert site1["rounds_trained"] == 1
    assert site1["refusals"][0]["round"] == 2
    assert any(
        "Refused by the site (budget-exhausted): site-1 (round 2)" in s
        for s in r["summary"]["statements"]
    )
    client = r["client_level_dp"]
    assert client["enabled"] is True
    assert [x["epsilon"] for x in client["rounds"]] == pytest.approx(
        [x["claimed_epsilon"] for x in client["rounds"]]
    )
    assert client["rounds"][1]["epsilon"] > client["rounds"][0]["epsilon"]
    assert client["rounds"][0]["noise_multiplier"] == 1.5
    assert client["rounds"][0]["details"] == {
        "accountant": "rdp",
        "delta": DELTA,
        "max-epsilon": 20.0,
        "noise-mode": "central",
    }
    assert [a["site"] for a in r["anonymization"]] == ["site-0", "site-1"]
    assert r["anonymization"][0]["achieved"]["k"] == 5
    assert any("k = 5" in s for s in r["summary"]["statements"])
    html, md = render_html(r, {}), render_md(r)
    assert "Client-level differential privacy" in html and "mondrian" in html
    assert "| site-0 | 5 | 2 | 0.210 | 10 |" in md


def test_bad_run_directories_are_one_clear_error(tmp_path):
    with pytest.raises(FedVaultError, match=r"no run-ledger\.sqlite"):
        build_report(tmp_path)
    run = make_run(tmp_path / "run", sites=1, rounds=1)
    (run / "config.json").unlink()
    with pytest.raises(FedVaultError, match=r"no config\.json"):
        write_report(run, signing_key_path=tmp_path / "k" / "signing.key")
    assert not (run / "report.json").exists()
