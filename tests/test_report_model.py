"""The report's numbers: every epsilon recomputed from the ledger events, claims checked.

Independent recomputation reads the site ledgers with raw sqlite3 (not the Ledger class) and
composes the events with Google's dp-accounting RDP accountant (on Opacus' order grid) and
with our `compute_epsilon`, per site and per round.
"""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting import rdp
from opacus.accountants import RDPAccountant
from report_run import DELTA, REPEATED, RUN_ID, clinic_anonymization, make_run

from privacy.accounting import PrivacyEvent, compute_epsilon
from privacy.audit import loss_threshold_audit
from privacy.errors import FedVaultError
from privacy.gdp import gdp_delta, gdp_mu
from privacy.report import build_report, write_report
from privacy.report.render_html import render_html
from privacy.report.render_md import render_md
from privacy.report.sample_dp import group_privacy

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
    (claim,) = [s for s in r["summary"]["statements"] if "at client level" in s]
    assert claim.startswith("In this run, each site as a whole is protected by")
    assert "holds only if the server did" in claim and "this run's rounds only" in claim
    assert [a["site"] for a in r["anonymization"]] == ["site-0", "site-1"]
    assert r["anonymization"][0]["achieved"]["k"] == 5
    assert any("k = 5" in s for s in r["summary"]["statements"])
    html, md = render_html(r, {}), render_md(r)
    assert "Client-level differential privacy" in html and "mondrian" in html
    assert "| site-0 and site-1 | not recorded | 5 | 2 | 0.210 | 10 (1.0%) | not recorded |" in md


def test_bad_run_directories_are_one_clear_error(tmp_path):
    with pytest.raises(FedVaultError, match=r"no run-ledger\.sqlite"):
        build_report(tmp_path)
    run = make_run(tmp_path / "run", sites=1, rounds=1)
    (run / "config.json").unlink()
    with pytest.raises(FedVaultError, match=r"no config\.json"):
        write_report(run, signing_key_path=tmp_path / "k" / "signing.key")
    assert not (run / "report.json").exists()


def _ledger_rows(ledger_path: Path) -> list[tuple[str, dict]]:
    with sqlite3.connect(ledger_path) as conn:
        rows = conn.execute("SELECT kind, payload FROM rows ORDER BY seq").fetchall()
    return [(kind, json.loads(payload)) for kind, payload in rows]


def test_each_guarantee_has_its_mu_and_the_runs_before_it(tmp_path):
    run = make_run(tmp_path / "run", sites=2, rounds=2, prior_rounds=2, prior_runs=2)
    r = build_report(run)
    statements = r["summary"]["statements"]
    for site in r["sample_level_dp"]["sites"]:
        (ledger,) = (run / "sites" / site["site"]).glob("ledger-*.sqlite")
        events = [PrivacyEvent.from_dict(e) for e in _raw_events(ledger)]
        assert len(events) == 6
        assert site["gdp_mu"] == gdp_mu(events)
        # the mu curve covers the site's own (epsilon, delta), within PRV's error interval
        assert float(gdp_delta(site["gdp_mu"], site["epsilon"] - 0.02)) >= DELTA
        earlier = {p["run_id"] for kind, p in _ledger_rows(ledger) if kind == "dp_reserve"}
        assert earlier - {RUN_ID} == {"earlier-0", "earlier-1"}
        assert site["runs_before_run"] == 2 and site["releases_before_run"] == 4
    mu = r["sample_level_dp"]["sites"][0]["gdp_mu"]
    assert f"as Gaussian DP, mu = {mu:.2f}" in r["summary"]["headline"]
    assert any("in 2 earlier runs (4 releases), hyperparameter search" in s for s in statements)

    shutil.rmtree(run / "sites")  # as in deployment: only what the sites reported
    r = build_report(run)
    site = r["sample_level_dp"]["sites"][0]
    assert site["runs_before_run"] is None and site["releases_before_run"] == 4
    assert site["gdp_mu"] == pytest.approx(mu)
    assert any("how many runs they came from is not known" in s for s in r["summary"]["statements"])

    first = build_report(make_run(tmp_path / "first", sites=1, rounds=1))
    assert first["sample_level_dp"]["sites"][0]["runs_before_run"] == 0
    assert any("No earlier run had released" in s for s in first["summary"]["statements"])


def test_a_bound_above_one_record_per_person_is_stated_per_person(tmp_path):
    bound = clinic_anonymization(
        {"person": "national_id", "per_person": "bound", "max_records_per_person": 3}
    )
    r = build_report(make_run(tmp_path / "run", sites=1, rounds=2, anonymization=bound))
    site = r["sample_level_dp"]["sites"][0]
    eps, person = site["epsilon"], site["person_level"]
    assert site["records_per_person"] == 3
    assert person["epsilon"] == pytest.approx(3 * eps)
    # chaining (eps, delta) over 3 records: delta (1 + e^eps + e^(2 eps)) <= 3 e^(2 eps) delta
    assert person["delta"] == pytest.approx(DELTA * sum(math.exp(i * eps) for i in range(3)))
    assert person["delta"] <= 3 * math.exp(2 * eps) * DELTA
    assert any(
        f"each person is protected by ({3 * eps:.2f}, {person['delta']:.2g})-DP" in s
        for s in r["summary"]["statements"]
    )
    assert group_privacy(8.0, DELTA, 3)["delta"] is None  # 1e-5 * e^16: nothing left to claim
    assert group_privacy(0.0, DELTA, 4)["delta"] == pytest.approx(4 * DELTA)


def test_the_release_and_its_cleansing_are_stated_and_pseudonyms_never_anonymized(tmp_path):
    merged = clinic_anonymization({"person": "national_id", "per_person": "merge"})
    r = build_report(make_run(tmp_path / "run", sites=2, rounds=1, anonymization=merged))
    section = r["anonymization"][0]
    assert section["release"] == "pseudonymized"
    assert section["release_note"] == merged["release_note"]
    assert section["cleaning"] == merged["cleaning"]
    text = " ".join(r["summary"]["statements"])
    assert "anonymized their records" not in text
    assert "pseudonymized their records before training, which is not anonymization" in text
    assert (
        f"Cleansing at site-0 and site-1 (before anonymization and training) dropped "
        f"{2 * (REPEATED + 1)} of {2 * (600 + REPEATED + 1)} rows (duplicates 2, per_person "
        f"{2 * REPEATED}), imputed 10 cells" in text
    )
    assert (
        f"one record per person on national_id ({2 * REPEATED} people had several records; "
        f'per_person = "merge": merged into one, {2 * REPEATED} records removed)' in text
    )
    html, md = render_html(r, {}), render_md(r)
    assert "pseudonymized</span> (not anonymized)" in html
    assert "| site-0 and site-1 | pseudonymized | 5 |" in md

    dropped = {**merged, "release": "anonymized", "columns": {"age": {"role": "quasi"}}}
    r = build_report(make_run(tmp_path / "anon", sites=1, rounds=1, anonymization=dropped))
    assert any("site-0 anonymized their records" in s for s in r["summary"]["statements"])

    unchecked = clinic_anonymization({})
    r = build_report(make_run(tmp_path / "none", sites=1, rounds=1, anonymization=unchecked))
    assert any("no person column was declared" in s for s in r["summary"]["statements"])


def test_the_audit_is_called_a_bound_at_its_confidence_only_when_it_is_one(tmp_path):
    run = make_run(tmp_path / "run", sites=1, rounds=1)
    members, nonmembers = [0.1] * 150 + [0.9] * 50, [0.5] * 100 + [1.0] * 100

    def audit_statement(audit: dict) -> str:
        (line,) = [s for s in build_report(run, audit=audit)["summary"]["statements"] if "AUC" in s]
        return line

    bound = loss_threshold_audit(members, nonmembers, DELTA)
    assert bound["confidence"] == 0.95
    assert f"with 95% confidence, epsilon is at least {bound['eps_lb']:.2f}" in audit_statement(
        bound
    )
    estimate = {k: v for k, v in bound.items() if k != "confidence"}  # an older audit
    line = audit_statement(estimate)
    assert "a point estimate without a confidence level" in line and "confidence," not in line
    few = loss_threshold_audit(members, nonmembers[:40], DELTA)  # 20 to measure: no 1% FPR
    assert few["eps_lb"] is None
    assert "bounds no epsilon" in audit_statement(few)
