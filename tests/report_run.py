"""Builds small run directories laid out as a FedVault run writes them, for the report tests.

Site ledgers get reserved and committed spending through `privacy.dp_ledger`, and the run
ledger gets the "site_round" summaries a site sends (epsilon computed from its whole history,
as client/budget.py does), so the report sees exactly the formats of a real run, in seconds.
With `schedules`, sites share noise levels (site i trains like site i % schedules), which is
how a 100-site run stays fast to build: equal histories are accounted once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import tomllib
from pathlib import Path

import pandas as pd
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from privacy.accounting import PrivacyEvent, compute_epsilon
from privacy.anonymization import anonymize_table, parse_policy
from privacy.certs import CURVE
from privacy.dp_ledger import Reservation, commit, reserve, spent_events
from privacy.identity import ROSTER_FILE, encode_signature, ledger_head_bytes, write_roster
from privacy.ledger import Ledger
from tasks.settings import RunSettings

POLICY = Path(__file__).resolve().parents[1] / "simulations/scenarios/clinic-policy.toml"
DELTA = 1e-5
MAX_EPSILON = 8.0
RUN_ID = "4242"


def site_sigma(index: int) -> float:
    return 1.0 + 0.3 * index


def make_run(
    run_dir: Path,
    *,
    sites: int = 2,
    rounds: int = 2,
    dp: bool = True,
    prior_rounds: int = 0,
    prior_runs: int = 1,
    claim_offset: float = 0.0,
    refuse_round: int | None = None,
    anonymization: dict | None = None,
    client_dp: bool = False,
    schedules: int | None = None,
) -> Path:
    """A completed run; `claim_offset` makes site-0 claim a wrong epsilon in its last round.

    Before it, each site ledger holds `prior_runs` earlier runs of `prior_rounds` rounds each
    (run ids "earlier-0", ...). `schedules` gives site i the noise of site i % schedules
    (default: every site its own).
    """
    kinds = schedules or sites
    settings = RunSettings(
        num_rounds=rounds,
        dp=dp,
        noise_multiplier=1.0 if dp else 0.0,
        out=str(run_dir),
        sites_root=str(run_dir / "sites"),
    )
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(settings.to_config(), indent=2, sort_keys=True))
    (run_dir / "status.json").write_text(
        json.dumps({"status": "completed", "time": "2026-01-01T00:00:00Z"})
    )
    metrics = [{"round": 0, "test-accuracy": 0.1, "test-loss": 2.3}]
    run_ledger = Ledger.open(run_dir / "run-ledger.sqlite", kind="run")
    keys = {f"site-{i}": ec.generate_private_key(CURVE()) for i in range(sites)}
    write_roster(run_dir / ROSTER_FILE, {name: key.public_key() for name, key in keys.items()})
    site_ledgers = []
    for i in range(sites):
        ledger = Ledger.open(
            run_dir / "sites" / f"site-{i}" / f"ledger-site-{i}.sqlite",
            kind="site",
            dataset=f"/data/site-{i}.csv",
        )
        for run in range(prior_runs if prior_rounds else 0):
            for r in range(1, prior_rounds + 1):
                _spend(ledger, _event(i % kinds), f"earlier-{run}", r)
        site_ledgers.append(ledger)
    for r in range(1, rounds + 1):
        run_ledger.append(
            "secagg_round",
            {
                "round": r,
                "session": f"s/{r}",
                "sampled": sites,
                "contributors": sites,
                "dropped": {},
                "rejections": [],
                "aborted": "",
                "out-of-range": 0,
            },
        )
        for i, ledger in enumerate(site_ledgers):
            if anonymization and r == 1:
                run_ledger.append(
                    "anonymization", {"site": f"site-{i}", "round": r, **anonymization}
                )
            if not dp:
                continue
            if refuse_round is not None and i == 1 and r >= refuse_round:
                run_ledger.append(
                    "refusal",
                    {
                        "reason": "budget-exhausted",
                        "site": "site-1",
                        "epsilon-spent": 7.5,
                        "epsilon-after-round": 8.4,
                        "max-epsilon": MAX_EPSILON,
                        "round": r,
                    },
                )
                continue
            row = _spend(ledger, _event(i % kinds), RUN_ID, r)
            history = spent_events(ledger)
            epsilon = _epsilon(tuple(history), "prv")
            if i == 0 and r == rounds:
                epsilon += claim_offset
            dataset = hashlib.sha256(f"/data/site-{i}.csv".encode()).hexdigest()
            rows = len(ledger.rows())
            statement = ledger_head_bytes(f"site-{i}", dataset, row.row_hash, rows)
            signature = keys[f"site-{i}"].sign(statement, ec.ECDSA(hashes.SHA384()))
            run_ledger.append(
                "site_round",
                {
                    "head-signature": encode_signature(signature),
                    "ledger-rows": rows,
                    "dataset-sha256": dataset,
                    "site": f"site-{i}",
                    "delta": DELTA,
                    "max-epsilon": MAX_EPSILON,
                    "epsilon": epsilon,
                    "epsilon-rdp": _epsilon(tuple(history), "rdp"),
                    "accountant": "prv",
                    "event": _event(i % kinds).to_dict(),
                    "events": [e.to_dict() for e in history],
                    "ledger-head": row.row_hash,
                    "round": r,
                    "purpose": "train",
                    "noise-source": "os.urandom",
                    "secure-rng": True,
                    "floor": {"require-dp": True, "min-noise-multiplier": 0.0},
                },
            )
        if client_dp:
            event = {
                "noise_multiplier": 1.5,
                "sampling": "none",
                "rounds": 1,
                "clip_norm": 0.5,
                "adaptive": False,
                "sampling_rate": None,
                "sample_size": None,
                "population": None,
                "count_noise_std": None,
            }
            from privacy.client_dp import ClientDpEvent, client_level_epsilon

            events = [ClientDpEvent.from_dict(event)] * r
            run_ledger.append(
                "client_dp_round",
                {
                    "round": r,
                    "event": event,
                    "epsilon": client_level_epsilon(events, DELTA, "rdp"),
                    "accountant": "rdp",
                    "delta": DELTA,
                    "max-epsilon": 20.0,
                    "noise-mode": "central",
                },
            )
        metrics.append(
            {
                "round": r,
                "test-accuracy": 0.1 + 0.2 * r,
                "test-loss": 2.0 / r,
                "client-eval-accuracy": 0.1 + 0.15 * r,
                "client-eval-loss": 2.1 / r,
                "sites-trained": sites,
                "sites-refused": 0,
                "sites-failed": 0,
            }
        )
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    run_ledger.close()
    for ledger in site_ledgers:
        ledger.close()
    return run_dir


@functools.cache
def _epsilon(history: tuple[PrivacyEvent, ...], accountant: str) -> float:
    return compute_epsilon(list(history), DELTA, accountant)


def _spend(ledger: Ledger, event: PrivacyEvent, run_id: str, server_round: int):
    reservation = Reservation(run_id, server_round, "train", event)
    reserve(ledger, reservation, lambda history: {"epsilon-after": 0.0})
    return commit(ledger, reservation)


def _event(index: int) -> PrivacyEvent:
    return PrivacyEvent(
        noise_multiplier=site_sigma(index), sample_rate=0.05, steps=40, clip_norm=1.0
    )


REPEATED = 30  # patients entered twice (the second time with their national id retyped)


def clinic_anonymization(cleaning: dict) -> dict:
    """The anonymization report of 600 clinic rows under the shipped policy with `cleaning`.

    The table repeats one row exactly, repeats REPEATED patients with their national id
    written without dashes and an empty bmi, and has 5 other empty bmi cells: what a site's
    cleansing report looks like when it has work to do.
    """
    from tasks.clinic import generate_clinic

    table = generate_clinic(600, 7).astype(str)
    again = table.iloc[:REPEATED].copy()
    again["national_id"] = again["national_id"].str.replace("-", "")
    again["bmi"] = ""
    table.loc[100:104, "bmi"] = ""
    table = pd.concat([table, table.iloc[[200]], again], ignore_index=True)
    spec = tomllib.loads(POLICY.read_text())
    spec["cleaning"] = {"duplicates": "drop", **cleaning, "columns": {"bmi": {"missing": "median"}}}
    return anonymize_table(table, parse_policy(spec, POLICY.name), bytes(32)).report
