"""Distributed DP-SGD on Flower's simulation engine: learning, both epsilons, and no release
(and no spend) when the noise could not be complete."""

from __future__ import annotations

import json
import sqlite3

import dp_accounting
import pytest
import torch
from dp_accounting.rdp import rdp_privacy_accountant as rdp
from safetensors.torch import load_file

from privacy.accounting import SKELLAM, SKELLAM_ORDERS, PrivacyEvent
from privacy.report.verify import verify_run
from server.checkpoint import load_checkpoint, restore_strategy
from server.distributed_sgd import DistributedSgd
from simulations.runner import simulate
from simulations.scenario import Scenario
from tasks.registry import build_model
from tasks.settings import RunSettings

DISTRIBUTED = {
    "task.name": "mnist1d",
    "task.num-train": 4000,
    "task.num-test": 600,
    "dp": True,
    "dp-mode": "distributed",
    "noise-multiplier": 1.0,
    "accountant": "rdp",
    "batch-size": 128,
    "learning-rate": 2.0,
    "momentum": 0.9,
    "clip-norm": 1.0,
    "secagg": True,
}


def site_rows(run_dir, site: str, kind: str) -> list[dict]:
    (path,) = (run_dir / "sites" / site).glob("ledger-*.sqlite")
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT payload FROM rows WHERE kind = ?", (kind,)).fetchall()
    return [json.loads(payload) for (payload,) in rows]


def run_rows(run_dir, kind: str) -> list[dict]:
    with sqlite3.connect(run_dir / "run-ledger.sqlite") as db:
        rows = db.execute("SELECT payload FROM rows WHERE kind = ?", (kind,)).fetchall()
    return [json.loads(payload) for (payload,) in rows]


def independent_epsilon(events: list[dict], delta: float) -> float:
    """dp-accounting's subsampled Gaussian at each step's sigma: a lower bound on Skellam."""
    accountant = rdp.RdpAccountant(list(SKELLAM_ORDERS))
    for event in events:
        assert event["mechanism"] == SKELLAM
        gaussian = dp_accounting.GaussianDpEvent(event["noise_multiplier"])
        accountant.compose(
            dp_accounting.PoissonSampledDpEvent(event["sample_rate"], gaussian), event["steps"]
        )
    return accountant.get_epsilon(delta)


def test_a_distributed_run_learns_and_reports_both_epsilons_checked_independently(tmp_path):
    out, final = run(tmp_path, "distributed", 4, 20)
    rounds = json.loads((out / "metrics.json").read_text())
    assert final["sites-trained"] == 4
    # 20 noisy steps: the gain varies with the fresh noise (+0.12 to +0.3 seen); an
    # untrained or noise-drowned model stays near chance (0.1).
    assert rounds[-1]["test-accuracy"] > rounds[0]["test-accuracy"] + 0.08
    assert all(r["secagg-aborted"] == 0 for r in rounds[1:])
    # The released model is the server's average of the iterates, not the last iterate
    # (which the checkpoint keeps for the sites to train at).
    run_id = json.loads((out / "checkpoint" / "state.json").read_text())["run-id"]
    checkpoint, released = load_checkpoint(out, run_id), load_file(out / "model.safetensors")
    model = build_model("mnist1d", 40, 10, private=True)
    model.load_state_dict(checkpoint.model)
    sgd = DistributedSgd(RunSettings())
    restore_strategy(object(), checkpoint.strategy, sgd)
    for key, value in sgd.released(model.state_dict()).items():
        torch.testing.assert_close(released[key], value)
    assert not all(torch.equal(released[k], checkpoint.model[k]) for k in released)

    report = json.loads((out / "report.json").read_text())
    assert verify_run(out) == []
    for site in report["sample_level_dp"]["sites"]:
        reserved = site_rows(out, site["site"], "dp_reserve")
        assert len(reserved) == 20
        events = [row["event"] for row in reserved]
        # Ledger epsilon: above dp-accounting's Gaussian of the same steps, within 1 %.
        lower = independent_epsilon(events, site["delta"])
        assert lower <= site["epsilon"] <= lower * 1.01
        # Fallback: the site's own share alone (sigma / sqrt(honest)).
        honest = site["distributed"]["honest"]
        fallback = [row["fallback-event"] for row in reserved]
        assert all(
            f["noise_multiplier"] == pytest.approx(e["noise_multiplier"] / honest**0.5)
            for f, e in zip(fallback, events, strict=True)
        )
        assert site["distributed"]["fallback_epsilon"] == pytest.approx(
            independent_epsilon(fallback, site["delta"]), rel=0.01
        )
        assert site["distributed"]["fallback_epsilon"] > site["epsilon"]
        # The membership-inference audit finds no more than the claim.
        assert report["audit"]["eps_lb"] <= site["epsilon"]
    assert report["sample_level_dp"]["trust_model"].startswith("distributed: each site adds")
    summary = " ".join(report["summary"]["statements"])
    assert "took distributed DP-SGD steps" in summary and "fallback epsilon" in summary
    # Each round's released sum held every site; no site's vector was ever alone.
    assert all(r["contributors"] == 4 for r in run_rows(out, "secagg_round"))


def run(tmp_path, name: str, sites: int, rounds: int, overrides=None, **settings) -> tuple:
    """Simulate `sites` sites for `rounds` distributed steps; (run directory, final metrics)."""
    out = tmp_path / name
    scenario = Scenario(
        name,
        run={**DISTRIBUTED, "num-rounds": rounds, **settings},
        num_sites=sites,
        site_overrides=overrides or {},
    )
    return out, simulate(scenario, out)


def _nothing_spent(out, sites: int) -> None:
    for index in range(sites):
        assert site_rows(out, f"site-{index}", "dp_reserve") == []


def test_too_many_tolerated_colluders_for_the_sum_releases_and_spends_nothing(tmp_path):
    # A session's sum holds all 4 sites; 4 colluders would leave no honest share.
    out, final = run(tmp_path, "colluders", 4, 1, **{"dp-colluders": 4})
    assert final["sites-trained"] == 0
    _nothing_spent(out, 4)
    refusals = [site_rows(out, f"site-{i}", "refusal") for i in range(4)]
    assert all(r and "no honest share" in r[0]["message"] for r in refusals)


def test_too_many_dropouts_release_nothing_and_spend_nothing(tmp_path):
    leave = {"dropout-stage": "setup"}
    out, final = run(tmp_path, "dropouts", 3, 1, {"site-1": leave, "site-2": leave})
    assert final["sites-trained"] == 0
    _nothing_spent(out, 3)
    (secure,) = run_rows(out, "secagg_round")
    assert secure["aborted"] and secure["contributors"] == 0


def test_refusals_and_dropouts_between_steps_rekey_without_the_site(tmp_path):
    """site-0 asks for more colluders than the run assumes; site-3 fails at every step."""
    overrides = {"site-0": {"tolerated-colluders": 1}, "site-3": {"dropout-stage": "step"}}
    out, _ = run(tmp_path, "rekey", 4, 3, overrides)
    (refusal,) = site_rows(out, "site-0", "refusal")
    assert refusal["floor"] == "tolerated-colluders"
    for site in ("site-0", "site-3"):
        assert site_rows(out, site, "dp_reserve") == []
    steps = run_rows(out, "secagg_round")
    # Step 1 held site-3, which did not answer: nothing was unmasked, the round released
    # nothing. Later steps ran in a new session of the two others, each sum holding both.
    assert steps[0]["aborted"] and steps[0]["contributors"] == 0
    assert [s["contributors"] for s in steps[1:]] == [2, 2]
    rounds = json.loads((out / "metrics.json").read_text())
    assert rounds[1]["secagg-aborted"] == 1
    assert rounds[1]["test-accuracy"] == rounds[0]["test-accuracy"]  # no step was taken
    for site in ("site-1", "site-2"):
        reserved = site_rows(out, site, "dp_reserve")
        # Step 1 is counted by the sites that sent it (an over-count, never an under-count).
        assert [r["round"] for r in reserved] == [1, 2, 3]
        event = PrivacyEvent.from_dict(reserved[-1]["event"])
        assert event.mechanism == SKELLAM
        assert reserved[-1]["noise-shares"] == {"threshold": 2, "colluders": 0, "honest": 2}
