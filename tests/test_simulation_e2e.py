"""End-to-end simulations on Flower's real simulation engine (Ray), kept small."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time

import dp_accounting
import psutil
import pytest
import torch
from safetensors.torch import load_file

from client.dp_plan import poisson_plan
from privacy.accounting import PrivacyEvent, compute_epsilon
from privacy.errors import FedVaultError
from server import federation
from server.checkpoint import save_checkpoint
from simulations import runner
from simulations.runner import simulate
from simulations.scenario import Scenario, load_scenario

SMALL = {
    "task.name": "mnist1d",
    "task.num-train": 3000,
    "task.num-test": 600,
    "local-epochs": 2,
    "batch-size": 32,
    "learning-rate": 0.05,
    "momentum": 0.9,
}


def live_children(grace_s: float = 10.0) -> list[str]:
    """Processes this test process started that are still running after a short grace.

    The grace lets short helpers finish (Flower's telemetry thread runs `file -b` via
    platform.architecture even when telemetry is off); Ray's daemons would stay.
    """
    deadline = time.monotonic() + grace_s
    while True:
        running = []
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.status() != psutil.STATUS_ZOMBIE:
                    running.append(" ".join(child.cmdline()[:2]))
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.2)


# Sites that allow training without DP-SGD; SEEDED ones also draw their randomness from a
# seed (a simulation research mode), so that runs can be compared model for model.
NON_PRIVATE = {"require-dp": False}
SEEDED = {**NON_PRIVATE, "insecure-seed": 7}


def metrics(run_dir) -> list[dict]:
    return json.loads((run_dir / "metrics.json").read_text())


def ledger_payloads(run_dir, kind: str) -> list[dict]:
    with sqlite3.connect(run_dir / "run-ledger.sqlite") as db:
        rows = db.execute("SELECT payload FROM rows WHERE kind = ?", (kind,)).fetchall()
    return [json.loads(p) for (p,) in rows]


def test_three_sites_two_rounds_learn_and_write_a_complete_run_directory(tmp_path):
    out = tmp_path / "run"
    scenario = Scenario(
        "small",
        run={**SMALL, "num-rounds": 2, "fraction-evaluate": 1.0},
        num_sites=3,
        sites={**NON_PRIVATE, "allow-evaluation": True, "evaluation-noise-multiplier": 2.0},
    )
    seen = []
    final = simulate(scenario, out, progress=seen.append)
    rounds = metrics(out)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert [r["round"] for r in seen if r.get("kind") != "stage"] == [1, 2]
    stages = [(r["round"], r["stage"], r["answered"]) for r in seen if r.get("kind") == "stage"]
    assert stages[:5] == [
        (1, stage, 3) for stage in ("setup", "share-keys", "masked-input", "consistency", "unmask")
    ]
    # Round 1's consistency and unmask carried round 2's setup and share-keys: round 2
    # starts at masked input.
    assert [(s, n) for r, s, n in stages if r == 2] == [
        (stage, 3) for stage in ("masked-input", "consistency", "unmask")
    ]
    assert [r["session"].split("/", 1)[1] for r in ledger_payloads(out, "secagg_round")] == [
        "1",
        "2/early",
    ]
    assert rounds[2]["test-accuracy"] > rounds[0]["test-accuracy"] + 0.2
    # The sites' evaluation comes back as DP-noised sums: accuracy within a few points.
    assert final["sites-trained"] == 3 and final["sites-evaluated"] == 3
    assert abs(final["client-eval-accuracy"] - final["test-accuracy"]) < 0.15
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    assert json.loads((out / "config.json").read_text())["num-rounds"] == 2
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("round,")
    weights = torch.load(out / "model.pt", weights_only=True)
    assert set(weights) == set(load_file(out / "model.safetensors"))
    assert not live_children()


def test_bad_run_leaves_no_directory_that_looks_complete(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FedVaultError, match=r"only 5 training records|sites"):
        simulate(
            Scenario("bad", run={**SMALL, "task.num-train": 5}, num_sites=6, sites=NON_PRIVATE),
            out,
        )
    assert not out.exists()


def site_epsilons(run_dir) -> dict[str, float]:
    with sqlite3.connect(run_dir / "run-ledger.sqlite") as db:
        rows = db.execute("SELECT payload FROM rows WHERE kind = 'site_round'").fetchall()
    latest: dict[str, float] = {}
    for (payload,) in rows:
        row = json.loads(payload)
        latest[row["site"]] = row["epsilon"]
    return latest


DP = {**SMALL, "dp": True, "noise-multiplier": 1.0, "clip-norm": 1.0, "batch-size": 64}


def test_epsilon_accumulates_across_runs_like_one_longer_run(tmp_path):
    # Seeded sites: the same split in every site directory, so the runs' sampling rates match.
    seeded = {"insecure-seed": 5}
    shared_sites = tmp_path / "sites"
    for name in ("first", "second"):
        simulate(
            Scenario(name, run={**DP, "num-rounds": 1}, num_sites=2, sites=seeded),
            tmp_path / name,
            sites_root=shared_sites,
        )
    long = Scenario("long", run={**DP, "num-rounds": 2}, num_sites=2, sites=seeded)
    simulate(long, tmp_path / "long")
    two_runs = site_epsilons(tmp_path / "second")
    one_run = site_epsilons(tmp_path / "long")
    assert set(two_runs) == {"site-0", "site-1"}
    for site, epsilon in one_run.items():
        assert two_runs[site] == pytest.approx(epsilon, rel=1e-9)
    assert site_epsilons(tmp_path / "first")["site-0"] < one_run["site-0"]
    assert_report_epsilons_match_site_ledgers(tmp_path / "second", shared_sites)


OPACUS_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def assert_report_epsilons_match_site_ledgers(run_dir, sites_root) -> None:
    """The report's per-round epsilons, recomputed from the raw site ledgers by dp-accounting."""
    report = json.loads((run_dir / "report.json").read_text())
    checked = 0
    for site in report["sample_level_dp"]["sites"]:
        (ledger,) = (sites_root / site["site"]).glob("ledger-*.sqlite")
        with sqlite3.connect(ledger) as db:
            rows = [
                json.loads(p)
                for (p,) in db.execute(
                    "SELECT payload FROM rows WHERE kind = 'dp_reserve' ORDER BY seq"
                )
            ]
        for entry in site["rounds"]:
            upto = rows[: entry["events_total"]]
            assert upto[-1]["round"] == entry["round"]
            accountant = dp_accounting.rdp.RdpAccountant(OPACUS_ORDERS)
            for row in upto:
                event = row["event"]
                accountant.compose(
                    dp_accounting.PoissonSampledDpEvent(
                        event["sample_rate"],
                        dp_accounting.GaussianDpEvent(event["noise_multiplier"]),
                    ),
                    event["steps"],
                )
            expected = accountant.get_epsilon(site["delta"])
            assert entry["epsilon_cumulative_rdp"] == pytest.approx(expected, rel=1e-3)
            checked += 1
    assert checked == 2  # 2 sites x 1 round of this run, on top of the first run's events


def test_site_with_small_budget_declines_and_the_run_finishes(tmp_path):
    out = tmp_path / "run"
    # 3000 records over 3 sites, about 10% held back for validation: ~900 training rows
    # per site; a limit that fits two rounds of 900 rows, and fewer of a smaller site's.
    q, steps = poisson_plan(900, DP["batch-size"], DP["local-epochs"])
    one_round = PrivacyEvent(noise_multiplier=1.0, sample_rate=q, steps=steps, clip_norm=1.0)
    limit = round(compute_epsilon([one_round] * 2, 1e-5) + 0.05, 3)
    scenario = Scenario(
        "budget",
        run={**DP, "num-rounds": 4},
        num_sites=3,
        sites={"max-epsilon": 50.0, "delta": 1e-5},
        site_overrides={"site-1": {"max-epsilon": limit}},
    )
    simulate(scenario, out)
    rounds = metrics(out)[1:]
    assert all(r["sites-trained"] >= 2 for r in rounds)
    assert sum(r["sites-refused"] for r in rounds) >= 1
    epsilons = site_epsilons(out)
    assert epsilons["site-1"] <= limit
    assert epsilons["site-0"] > limit
    with sqlite3.connect(out / "run-ledger.sqlite") as db:
        refusals = [
            json.loads(p) for (p,) in db.execute("SELECT payload FROM rows WHERE kind = 'refusal'")
        ]
    assert refusals and all(r["site"] == "site-1" for r in refusals)
    with sqlite3.connect(out / "run-ledger.sqlite") as db:
        trained = [
            json.loads(p)
            for (p,) in db.execute("SELECT payload FROM rows WHERE kind = 'site_round'")
        ]
    event = PrivacyEvent.from_dict(next(t for t in trained if t["site"] == "site-1")["event"])
    fits = max(k for k in range(1, 5) if compute_epsilon([event] * k, 1e-5) <= limit)
    assert len(refusals) == 4 - fits  # it trained every round that fitted, then declined
    assert all(r["epsilon-after-round"] > limit for r in refusals)
    assert json.loads((out / "status.json").read_text())["status"] == "completed"


def test_cli_digits_with_dirichlet_partition_runs_end_to_end(tmp_path, capsys):
    from cli.main import main

    out = tmp_path / "digits"
    code = main(
        [
            "simulate",
            "digits",
            "--clients",
            "3",
            "--rounds",
            "2",
            "--partition",
            "dirichlet:0.3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "round   2/2" in printed and "test-acc" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["partition"] == "dirichlet:0.3" and config["task.name"] == "digits"
    assert metrics(out)[-1]["test-accuracy"] > 0.5


def test_tabular_clinic_with_site_anonymization_learns(tmp_path):
    from tasks.clinic import write_clinic_csv

    csv = tmp_path / "clinic.csv"
    table = write_clinic_csv(4000, 3, csv)
    majority = table["readmitted"].astype(int).mean()
    majority = max(majority, 1 - majority)
    scenario = load_scenario("clinic")
    scenario.run.update({"task.csv": str(csv), "num-rounds": 3})
    out = tmp_path / "run"
    simulate(scenario, out)
    assert metrics(out)[-1]["test-accuracy"] > majority + 0.1
    with sqlite3.connect(out / "run-ledger.sqlite") as db:
        reports = [
            json.loads(p)
            for (p,) in db.execute("SELECT payload FROM rows WHERE kind = 'anonymization'")
        ]
    assert sorted(r["site"] for r in reports) == [f"site-{i}" for i in range(5)]
    assert all(r["achieved"]["k"] >= 5 for r in reports)
    assert all((out / "sites" / f"site-{i}" / "pseudonym.key").exists() for i in range(5))


# One round: later rounds would amplify the (bounded) quantization error through training.
TINY = {**SMALL, "task.num-train": 1600, "task.num-test": 400, "num-rounds": 1}


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")


def run_with_dropout(tmp_path, name: str, secagg: bool, stage: str, num_sites: int = 4):
    overrides = {"site-2": {"dropout-stage": stage}} if stage else {}
    out = tmp_path / name
    simulate(
        Scenario(
            name,
            run={**TINY, "secagg": secagg},
            num_sites=num_sites,
            sites=SEEDED,
            site_overrides=overrides,
        ),
        out,
    )
    return out


@pytest.fixture(scope="module")
def plain_baselines(tmp_path_factory):
    """FedAvg in the clear: all four sites, and site-2 failing every round."""
    base = tmp_path_factory.mktemp("plain")
    return {
        "all": final_weights(run_with_dropout(base, "all", False, "")),
        "without-site-2": final_weights(run_with_dropout(base, "without", False, "train")),
    }


@pytest.mark.parametrize("stage", ["setup", "share-keys", "masked-input", "unmask"])
def test_secure_aggregate_with_a_dropout_equals_the_survivors_plain_average(
    tmp_path, plain_baselines, stage
):
    out = run_with_dropout(tmp_path, stage, True, stage)
    rounds = metrics(out)[1:]
    assert all(r["secagg-aborted"] == 0 for r in rounds)
    # A site leaving during unmask has already sent its masked input: it is in the sum.
    expected = plain_baselines["all" if stage == "unmask" else "without-site-2"]
    got = final_weights(out)
    for key, tensor in expected.items():
        torch.testing.assert_close(got[key], tensor, atol=2e-5, rtol=0)
    with sqlite3.connect(out / "run-ledger.sqlite") as db:
        records = [
            json.loads(p)
            for (p,) in db.execute("SELECT payload FROM rows WHERE kind = 'secagg_round'")
        ]
    assert len(records) == 1
    assert all(any(stage in reason for reason in r["dropped"].values()) for r in records)


def test_semi_honest_rounds_agree_the_next_keys_on_masked_input_and_unmask(tmp_path):
    """Without the consistency stage, the next round's setup rides on masked input: a
    round after the first is two exchanges, and every site's update is in each sum."""
    out = tmp_path / "semi-honest"
    scenario = Scenario(
        "semi-honest",
        run={**TINY, "secagg": True, "secagg-authenticated": False, "num-rounds": 2},
        num_sites=3,
        sites=NON_PRIVATE,
    )
    seen = []
    simulate(scenario, out, progress=seen.append)
    stages = [(r["round"], r["stage"], r["answered"]) for r in seen if r.get("kind") == "stage"]
    assert stages == [
        (1, stage, 3) for stage in ("setup", "share-keys", "masked-input", "unmask")
    ] + [(2, stage, 3) for stage in ("masked-input", "unmask")]
    records = ledger_payloads(out, "secagg_round")
    assert [r["session"].split("/", 1)[1] for r in records] == ["1", "2/early"]
    assert [(r["contributors"], r["dropped"], r["rejections"]) for r in records] == [
        (3, {}, []),
        (3, {}, []),
    ]
    rounds = metrics(out)
    assert rounds[2]["test-accuracy"] > rounds[0]["test-accuracy"] + 0.1


def test_after_a_dropout_the_next_round_agrees_keys_with_every_site_again(tmp_path):
    """A site that left at unmask answered no setup for the next round: that round asks
    every site for keys in a setup of its own, and the site is back in it."""
    out = tmp_path / "rekey"
    scenario = Scenario(
        "rekey",
        run={**TINY, "secagg": True, "num-rounds": 3},
        num_sites=4,
        sites=NON_PRIVATE,
        site_overrides={"site-2": {"dropout-stage": "unmask"}},
    )
    simulate(scenario, out)
    records = ledger_payloads(out, "secagg_round")
    assert [r["session"].split("/", 1)[1] for r in records] == ["1", "2", "3"]
    assert all("setup" in r["stage-seconds"] for r in records)
    assert [r["contributors"] for r in records] == [4, 4, 4]  # its masked input, each round
    assert [len(r["dropped"]) for r in records] == [1, 1, 1]
    assert all(r["dropped"] == records[0]["dropped"] for r in records)  # the same site


def test_one_dropout_too_many_aborts_rounds_cleanly_and_keeps_the_model(tmp_path):
    out = tmp_path / "abort"
    scenario = Scenario(
        "abort",
        run={**TINY, "secagg": True, "num-rounds": 2},
        num_sites=3,
        sites=NON_PRIVATE,
        site_overrides={
            "site-1": {"dropout-stage": "masked-input"},
            "site-2": {"dropout-stage": "masked-input"},
        },
    )
    simulate(scenario, out)
    rounds = metrics(out)
    assert [r.get("secagg-aborted") for r in rounds[1:]] == [1, 1]
    assert rounds[-1]["test-accuracy"] == rounds[0]["test-accuracy"]
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    with sqlite3.connect(out / "run-ledger.sqlite") as db:
        records = [
            json.loads(p)
            for (p,) in db.execute("SELECT payload FROM rows WHERE kind = 'secagg_round'")
        ]
    assert all(r["aborted"] and r["contributors"] == 0 for r in records)


class Crash(Exception):
    """Stands for the server process dying after a round completed."""


def test_interrupted_run_resumes_to_the_same_model_counting_each_round_once(tmp_path, monkeypatch):
    run = {**TINY, "num-rounds": 3, "secagg": False}  # exact arithmetic: models comparable

    def checkpoint_then_crash(run_dir, checkpoint) -> None:
        """The server dies after round 1's checkpoint, before its ledger row: the worst time."""
        save_checkpoint(run_dir, checkpoint)
        if checkpoint.round == 1:
            raise Crash

    monkeypatch.setattr(federation, "save_checkpoint", checkpoint_then_crash)
    interrupted = tmp_path / "interrupted"
    with pytest.raises(Crash):
        simulate(Scenario("r", run=dict(run), num_sites=3, sites=SEEDED), interrupted)
    monkeypatch.undo()
    assert json.loads((interrupted / "status.json").read_text())["status"] == "failed"
    simulate(Scenario("r", run=dict(run), num_sites=3, sites=SEEDED), interrupted, resume=True)
    straight = tmp_path / "straight"
    simulate(Scenario("r", run=dict(run), num_sites=3, sites=SEEDED), straight)

    assert [r["round"] for r in metrics(interrupted)] == [0, 1, 2, 3]
    for key, tensor in final_weights(straight).items():
        torch.testing.assert_close(final_weights(interrupted)[key], tensor, atol=1e-5, rtol=0)
    with sqlite3.connect(interrupted / "run-ledger.sqlite") as db:
        kinds = [k for (k,) in db.execute("SELECT kind FROM rows ORDER BY seq")]
        completed = [
            json.loads(p)["round"]
            for (p,) in db.execute("SELECT payload FROM rows WHERE kind = 'round_complete'")
        ]
    assert completed == [1, 2, 3] and kinds.count("resume") == 1
    assert kinds[: kinds.index("resume")].count("round_complete") == 1
    assert json.loads((interrupted / "status.json").read_text())["status"] == "completed"


def test_resume_refuses_a_completed_run_and_changed_settings(tmp_path, monkeypatch):
    out = tmp_path / "done"
    done = Scenario("d", run={**TINY, "secagg": False}, num_sites=2, sites=NON_PRIVATE)
    simulate(done, out)

    def no_engine(cluster):
        raise AssertionError("Ray started for a resume that is refused")

    monkeypatch.setattr(runner, "_start_ray", no_engine)  # refused before any engine starts
    untouched = (out / "status.json").read_text()
    with pytest.raises(FedVaultError, match="already completed"):
        simulate(done, out, resume=True)
    assert (out / "status.json").read_text() == untouched
    status = json.loads(untouched)
    (out / "status.json").write_text(json.dumps({**status, "status": "failed"}))
    changed = Scenario("d", run={**TINY, "secagg": False, "learning-rate": 0.5}, num_sites=2)
    with pytest.raises(FedVaultError, match=r"settings differ .*: learning-rate$"):
        simulate(changed, out, resume=True)
    with pytest.raises(FedVaultError, match="not a run directory"):
        simulate(Scenario("d", run=dict(TINY), num_sites=2), tmp_path / "nothing", resume=True)
