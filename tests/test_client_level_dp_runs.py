"""Client-level DP wired into runs: clipping before masking, noise on the sum, accounting."""

from __future__ import annotations

import json
import sqlite3

import dp_accounting
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from privacy.randomness import SecureRandom
from server.client_dp import ClientLevelDp
from simulations.runner import simulate
from simulations.scenario import Scenario
from tasks.settings import RunSettings

BASE = {
    "task.name": "mnist1d",
    "task.num-train": 1600,
    "task.num-test": 400,
    "local-epochs": 1,
    "batch-size": 32,
    "learning-rate": 0.05,
    "momentum": 0.9,
    "client-dp": True,
}


def ledger_rows(run_dir, kind: str) -> list[dict]:
    with sqlite3.connect(run_dir / "run-ledger.sqlite") as db:
        rows = db.execute("SELECT payload FROM rows WHERE kind = ?", (kind,)).fetchall()
    return [json.loads(payload) for (payload,) in rows]


def run(tmp_path, name: str, sites: int = 4, **settings) -> object:
    out = tmp_path / name
    # Client-level DP alone: the sites allow training without DP-SGD, and seed their
    # randomness so that runs can be compared model for model.
    sites_settings = {"require-dp": False, "insecure-seed": 3}
    simulate(Scenario(name, run={**BASE, **settings}, num_sites=sites, sites=sites_settings), out)
    return out


def test_clipping_before_masking_matches_server_side_clipping(tmp_path):
    """Noise off, tight clip: the secure sum of site-clipped deltas = server-clipped sum."""
    common = {"num-rounds": 1, "client-dp-noise": 0.0, "client-dp-clip": 0.05}
    secure = load_file(run(tmp_path, "secure", secagg=True, **common) / "model.safetensors")
    plain = load_file(run(tmp_path, "plain", secagg=False, **common) / "model.safetensors")
    unclipped = load_file(
        run(tmp_path, "free", secagg=False, **{**common, "client-dp": False}) / "model.safetensors"
    )
    for key in plain:
        torch.testing.assert_close(secure[key], plain[key], atol=2e-5, rtol=0)
    moved = sum(float((plain[k] - unclipped[k]).abs().max()) for k in plain)
    assert moved > 1e-3  # clipping really changed the update


def test_server_adds_noise_once_to_the_sum():
    settings = RunSettings(client_dp=True, client_dp_noise=2.0, client_dp_clip=0.5)
    client_dp = ClientLevelDp(settings, SecureRandom(insecure_seed=1))
    plan = client_dp.plan(list(range(1, 11)), list(range(1, 11)))
    assert plan.expected_sites == 10
    total = np.full(200_000, 3.0)
    mean = client_dp.release(plan, total, fitted_count=10, reporting=10)
    noise = mean * plan.expected_sites - total
    assert np.std(noise) == pytest.approx(2.0 * 0.5, rel=0.01)
    assert abs(np.mean(noise)) < 0.01
    assert len(client_dp.events) == 1


def independent_epsilon(events: list[dict], delta: float) -> float:
    accountant = dp_accounting.rdp.RdpAccountant()
    for event in events:
        gaussian = dp_accounting.GaussianDpEvent(event["noise_multiplier"])
        if event["sampling"] == "poisson":
            accountant.compose(
                dp_accounting.PoissonSampledDpEvent(event["sampling_rate"], gaussian)
            )
        else:
            accountant.compose(gaussian)
    return accountant.get_epsilon(delta)


def assert_epsilons_match_dp_accounting(rows: list[dict]) -> None:
    for index, row in enumerate(rows):
        events = [r["event"] for r in rows[: index + 1]]
        assert row["epsilon"] == pytest.approx(independent_epsilon(events, 1e-5), rel=1e-6)


def test_client_epsilon_with_poisson_sampling_matches_dp_accounting(tmp_path):
    settings = {
        "num-rounds": 3,
        "secagg": False,
        "client-dp-noise": 1.5,
        "client-sampling": "poisson",
        "client-sampling-rate": 0.6,
    }
    rows = ledger_rows(run(tmp_path, "poisson", sites=5, **settings), "client_dp_round")
    assert len(rows) == 3 and all(r["event"]["sampling"] == "poisson" for r in rows)
    assert_epsilons_match_dp_accounting(rows)


@pytest.mark.parametrize("secagg", [False, True])
def test_a_round_whose_poisson_sample_is_empty_releases_noise_and_is_accounted(tmp_path, secagg):
    """At q = 1e-9 no site is sampled (odds 3e-9 a round): the run goes on, noise alone."""
    settings = {
        "num-rounds": 2,
        "secagg": secagg,
        "client-dp-noise": 1.0,
        "client-sampling": "poisson",
        "client-sampling-rate": 1e-9,
    }
    out = run(tmp_path, "empty", sites=3, **settings)
    rows = ledger_rows(out, "client_dp_round")
    assert [r["round"] for r in rows] == [1, 2]
    assert_epsilons_match_dp_accounting(rows)
    rounds = json.loads((out / "metrics.json").read_text())
    assert [r.get("sites-trained") for r in rounds[1:]] == [0, 0]
    assert not ledger_rows(out, "site_round")  # no site trained or spent anything
    accuracies = [r["test-accuracy"] for r in rounds]
    assert len(set(accuracies)) > 1  # the released noise moved the model


def test_run_stops_before_the_release_that_would_pass_the_max(tmp_path):
    settings = {"client-dp-noise": 2.0, "client-sampling": "fixed", "secagg": False}
    two_rounds = ClientLevelDp(RunSettings(client_dp=True, client_dp_noise=2.0))
    plan = two_rounds.plan([1, 2, 3], [1, 2, 3])
    limit = two_rounds.epsilon([plan.event] * 2) + 0.01
    out = run(
        tmp_path, "stop", sites=3, **{**settings, "num-rounds": 5, "client-max-epsilon": limit}
    )
    rows = ledger_rows(out, "client_dp_round")
    assert len(rows) == 2 and rows[-1]["epsilon"] <= limit
    assert all(r["event"]["sampling"] == "none" for r in rows)  # every site, every round
    assert_epsilons_match_dp_accounting(rows)
    stops = ledger_rows(out, "client_dp_stop")
    assert len(stops) == 1 and stops[0]["round"] == 3
    assert len(json.loads((out / "metrics.json").read_text())) == 3  # round 0, 1, 2


def test_adaptive_clipping_records_its_budget_share_and_moves_c(tmp_path):
    """Distributed noise: the sites noise the update and the count; the server adds none."""
    out = run(
        tmp_path,
        "adaptive",
        **{
            "num-rounds": 3,
            "secagg": True,
            "client-dp-noise-mode": "distributed",
            "client-dp-adaptive": True,
            "client-dp-clip": 0.01,
            "client-dp-noise": 1.0,
            # sigma_b = 0.8 in shares over 3 of 4 sites (threshold 3): the count carries std
            # 0.8 sqrt(4/3), the unclipped fraction 0.23, so three rounds of "none fit" move
            # C down only with probability about 1e-4.
            "client-dp-count-noise": 0.8,
        },
    )
    rows = ledger_rows(out, "client_dp_round")
    assert len(rows) == 3 and all(r["noise-mode"] == "distributed" for r in rows)
    assert all(r["quantile-budget-share"] == pytest.approx(1 / 2.56) for r in rows)
    # No delta fits in C = 0.01: the count is 0 plus the sites' noise, never a whole number.
    assert all(r["fitted-sites"] != round(r["fitted-sites"]) for r in rows)
    clip_norms = [r["event"]["clip_norm"] for r in rows] + [rows[-1]["next-clip-norm"]]
    assert clip_norms[-1] > clip_norms[0]  # deltas far above 0.01: C grows toward the median
    statements = json.loads((out / "report.json").read_text())["summary"]["statements"]
    (claim,) = [s for s in statements if "at client level" in s]
    assert "against a server colluding with up to 0 site(s)" in claim
