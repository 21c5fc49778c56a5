"""A hostile coordinator against real sites: every attack is refused or has no effect.

Each test crafts the Flower Messages a coordinator could send (it controls every setting,
round number, run id and model) and delivers them to FedVault's real ClientApp; it judges
the outcome by what the coordinator gets back and by what the site's own ledger holds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from coordinator import (
    Site,
    flat_weights,
    initial_arrays,
    message,
    refusal,
    run_config,
    secure_round,
    train_request,
)
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from client.app import app as site_app
from client.budget import ledger_path_for
from client.site import resolve_site
from privacy.accounting import PrivacyEvent, compute_epsilon
from privacy.dp_ledger import Reservation, commit, reserve
from privacy.ledger import Ledger
from tasks.wire import PACKED, SEALED, pack_model, seal, unpack_model, unseal


@pytest.fixture
def site(tmp_path) -> Site:
    site = Site(tmp_path / "sites")
    site.configure(max_epsilon=8.0)
    return site


def resolve(site: Site):
    """The site as its ClientApp sees it (its own settings)."""
    return resolve_site(site.context(0).node_config, str(site.root))


def spent(site: Site) -> list[dict]:
    """The reservations in the site's ledger (what counts against its budget)."""
    return site.ledger_rows("dp_reserve")


def test_dp_false_is_refused_and_recorded(site):
    reply = train_request(site, run_config(site.root, dp=False))
    record = refusal(reply)
    assert record["reason"] == "below-floor" and record["floor"] == "require-dp"
    assert "arrays" not in reply.content  # the coordinator gets no weights at all
    assert spent(site) == []
    (logged,) = site.ledger_rows("refusal")
    assert logged["floor"] == "require-dp" and logged["round"] == 1


def test_noise_below_the_floor_is_refused_and_a_planned_noise_is_raised_to_it(site):
    site.configure(max_epsilon=50.0, min_noise_multiplier=1.5)
    record = refusal(train_request(site, run_config(site.root, **{"noise-multiplier": 0.5})))
    assert (record["reason"], record["floor"]) == ("below-floor", "min-noise-multiplier")
    assert spent(site) == []
    # A target epsilon that would need less noise than the floor trains at the floor.
    loose = run_config(site.root, **{"noise-multiplier": 0.0, "target-epsilon": 40.0})
    reply = train_request(site, loose, run_id=2)
    assert refusal(reply) is None
    (reserved,) = spent(site)
    assert reserved["event"]["noise_multiplier"] == 1.5


def test_plain_train_is_refused_where_the_site_requires_secure_aggregation(site):
    site.configure(max_epsilon=8.0, require_secagg=True)
    record = refusal(train_request(site, run_config(site.root)))
    assert (record["reason"], record["floor"]) == ("below-floor", "require-secagg")
    assert spent(site) == []


def test_per_round_epsilon_cap_refuses_a_costly_round(site):
    site.configure(max_epsilon=50.0, max_epsilon_per_round=0.5)
    record = refusal(train_request(site, run_config(site.root, **{"noise-multiplier": 0.6})))
    assert (record["reason"], record["floor"]) == ("below-floor", "max-epsilon-per-round")
    assert spent(site) == []


def test_identical_requests_give_different_models_whose_noise_no_seed_predicts(tmp_path):
    """Two sites with the same rows get the same request: one noisy step each.

    Noise dominates (sigma 200, one step over every record), so each released delta is
    essentially its noise. The deltas are uncorrelated with each other, and with the noise
    torch would draw from any seed the coordinator knows (the run's settings, round, run id).
    """
    deltas = []
    for name in ("a", "b"):
        twin = Site(tmp_path / name)
        twin.configure(max_epsilon=1e6, delta=1e-9)
        config = run_config(
            twin.root,
            **{"noise-multiplier": 200.0, "batch-size": 10_000, "learning-rate": 1.0},
        )
        arrays = initial_arrays(config)
        reply = train_request(twin, config, arrays=arrays)
        assert refusal(reply) is None
        deltas.append(flat_weights(reply.content["arrays"]) - flat_weights(arrays))
    a, b = deltas
    assert np.abs(a).mean() > 1e-3 and not np.allclose(a, b)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.1
    config_seed, server_round, run_id = 0, 1, 1
    for seed in (config_seed * 1000 + server_round, config_seed, server_round, run_id):
        torch.manual_seed(seed)
        predicted = torch.normal(0.0, 1.0, size=(len(a),)).double().numpy()
        assert abs(np.corrcoef(a, predicted)[0, 1]) < 0.1
        assert np.linalg.norm(a + predicted) > 0.5 * np.linalg.norm(a)  # subtracting fails


def test_a_new_seed_or_more_data_continues_the_same_budget(site):
    first = run_config(site.root)
    assert refusal(train_request(site, first, run_id=1)) is None
    changed = run_config(site.root, **{"task.seed": 5, "task.num-train": 1300})
    assert refusal(train_request(site, changed, run_id=2)) is None
    ledgers = list(site.state_dir.glob("ledger-*.sqlite"))
    assert len(ledgers) == 1
    events = [PrivacyEvent.from_dict(r["event"]) for r in spent(site)]
    assert len(events) == 2
    reserved = spent(site)
    assert reserved[1]["epsilon-after"] == pytest.approx(compute_epsilon(events, 1e-5))
    assert reserved[1]["epsilon-after"] > reserved[0]["epsilon-after"]


def test_replayed_and_out_of_order_train_requests_spend_nothing(site):
    config = run_config(site.root, **{"server-round": 2})
    assert refusal(train_request(site, config, run_id=7)) is None
    again = refusal(train_request(site, config, run_id=7))
    assert again["reason"] == "replayed-request"
    earlier = refusal(train_request(site, run_config(site.root, **{"server-round": 1}), run_id=7))
    assert earlier["reason"] == "out-of-order-request"
    assert len(spent(site)) == 1


@pytest.mark.parametrize(
    "tamper",
    [
        "no-config",
        "round-beyond-the-run",
        "round-not-a-number",
        "wrong-model",
        "nan-model",
        "unpacked-model",
        "garbage-model",
    ],
)
def test_malformed_requests_are_refused_before_any_spending(site, tamper):
    config = run_config(site.root)
    arrays = initial_arrays(config)
    if tamper == "round-beyond-the-run":
        config["server-round"] = 99
    elif tamper == "round-not-a-number":
        config["server-round"] = "2"
    elif tamper == "wrong-model":
        state = unpack_model(arrays)
        state[next(iter(state))] = torch.zeros(3)
        arrays = pack_model(state)
    elif tamper == "nan-model":
        state = unpack_model(arrays)
        first = next(iter(state))
        state[first] = torch.full_like(state[first], float("nan"))
        arrays = pack_model(state)
    elif tamper == "unpacked-model":  # Flower's own layout, one Array per tensor
        arrays = ArrayRecord(unpack_model(arrays))
    elif tamper == "garbage-model":
        arrays = ArrayRecord({PACKED: Array(np.frombuffer(b"\xff" * 64, dtype=np.uint8))})
    msg = message("train", config, 1, site.node_id, arrays)
    if tamper == "no-config":
        del msg.content["config"]
    record = refusal(site.ask(msg, 1))
    assert record["reason"] == "malformed-request"
    if tamper != "no-config":
        assert spent(site) == []


@pytest.mark.parametrize("envelope", ["not-sealed", "garbage", "config-outside", "model-twice"])
def test_requests_whose_records_do_not_open_are_refused_before_any_spending(site, envelope):
    """The site opens what the coordinator sealed itself, and answers nothing else."""
    config = run_config(site.root)
    msg = message("train", config, 1, site.node_id, initial_arrays(config))
    sealed = seal(msg.content)
    msg.content = {
        "not-sealed": lambda: msg.content,
        "garbage": lambda: RecordDict({SEALED: ConfigRecord({"c:config": b"\xff" * 32})}),
        "config-outside": lambda: RecordDict({**sealed, "config": ConfigRecord(config)}),
        "model-twice": lambda: RecordDict({**sealed, "arrays": initial_arrays(config)}),
    }[envelope]()
    reply = site_app(msg, site.context(1))
    assert not reply.has_error()
    assert dict(unseal(reply.content)["refusal"])["reason"] == "malformed-request"
    assert spent(site) == []
    assert refusal(train_request(site, config)) is None  # sealed, the same request is served
    assert len(spent(site)) == 1


def test_crafted_evaluation_models_get_nothing_by_default_and_noise_when_allowed(site):
    config = run_config(site.root)
    crafted = initial_arrays(config, seed=3)
    evaluate = message("evaluate", config, 1, site.node_id, crafted)
    record = refusal(site.ask(evaluate, 1))
    assert record["reason"] == "evaluation-off"
    assert spent(site) == []

    site.configure(max_epsilon=2.0, allow_evaluation=True, evaluation_noise_multiplier=5.0)
    answers = []
    for server_round in (1, 2, 3):
        config = run_config(site.root, **{"server-round": server_round})
        reply = site.ask(message("evaluate", config, 1, site.node_id, crafted), 1)
        if refusal(reply) is not None:
            answers.append(refusal(reply))
            continue
        answers.append(dict(reply.content["metrics"]))
    served = [a for a in answers if "eval-correct" in a]
    assert len(served) >= 2
    counts = [a["eval-count"] for a in served]
    assert len(set(counts)) == len(counts)  # the same rows, answered with fresh noise
    assert not any(float(c).is_integer() for c in counts)
    reserved = [r for r in spent(site) if r["purpose"] == "evaluate"]
    assert len(reserved) == len(served)
    # Evaluation spends the same budget: once it is gone, the answer is a refusal.
    config = run_config(site.root, **{"server-round": 3})
    for run_id in range(2, 40):
        reply = site.ask(message("evaluate", config, run_id, site.node_id, crafted), run_id)
        if refusal(reply) is not None:
            assert refusal(reply)["reason"] == "budget-exhausted"
            break
    else:
        pytest.fail("evaluations never exhausted the budget")


def test_replayed_and_out_of_order_secure_aggregation_requests_spend_nothing(tmp_path):
    sites = [Site(tmp_path / "sites", index=i, of=3, node_id=21 + i) for i in range(3)]
    for s in sites:
        s.configure(max_epsilon=20.0)
    config = run_config(tmp_path / "sites", secagg=True)
    arrays = initial_arrays(config)
    masked, replayed, _ = secure_round(sites, config, 5, arrays, replay="masked-input")
    assert all(refusal(r) is None for r in masked)
    assert len(replayed) == 3
    for reply in replayed:
        record = refusal(reply)
        assert record["reason"] == "protocol-violation"
    for s in sites:
        assert len(spent(s)) == 1  # one round trained, whatever was replayed
        assert s.ledger_rows("refusal")[-1]["reason"] == "protocol-violation"
    # A fresh session for the same round (a second try at the same gradients) is refused
    # before training: the round was already answered.
    masked, _, _ = secure_round(sites, config, 5, arrays, session="s/1-again")
    assert all(refusal(r)["reason"] == "replayed-request" for r in masked)
    assert all(len(spent(s)) == 1 for s in sites)


def test_every_way_a_budget_runs_out_is_a_refusal(site):
    site.configure(max_epsilon=2.0)
    target = run_config(site.root, **{"noise-multiplier": 0.0, "target-epsilon": 2.0})
    for run_id in range(1, 6):
        reply = train_request(site, target, run_id=run_id)
        if refusal(reply) is not None:
            break
    record = refusal(reply)
    assert record["reason"] == "budget-exhausted"
    # A noise so small that its epsilon is beyond what the accountant computes.
    tiny = refusal(train_request(site, run_config(site.root, **{"noise-multiplier": 0.05}), 99))
    assert tiny["reason"] == "budget-exhausted"


def test_two_concurrent_runs_on_one_site_never_pass_its_limit(tmp_path):
    """Two processes, two run ids, one site whose budget holds one more round, not two.

    Each site already has a long, varied history (30 earlier releases), so checking its
    budget takes the accountant about a second: the two requests, sent at the same instant,
    are both being checked at once. Three times over (three sites) exactly one trains and the
    other is refused, because the check and the reservation are one exclusive transaction.
    """
    contests = 3
    sites = [Site(tmp_path / f"contest-{i}") for i in range(contests)]
    probe = Site(tmp_path / "probe")
    probe.configure(max_epsilon=50.0)
    request = run_config(probe.root, **{"noise-multiplier": 2.5})
    assert refusal(train_request(probe, request)) is None
    this_round = PrivacyEvent.from_dict(spent(probe)[0]["event"])
    earlier = [
        PrivacyEvent(noise_multiplier=3.0 + 0.01 * i, sample_rate=0.1, steps=9, clip_norm=1.0)
        for i in range(30)
    ]
    one_more = compute_epsilon([*earlier, this_round], 1e-5)
    limit = (one_more + compute_epsilon([*earlier, this_round, this_round], 1e-5)) / 2
    for site in sites:
        site.configure(max_epsilon=limit)
        path, identity = ledger_path_for(resolve(site), "mnist1d")
        with Ledger.open(path, "site", dataset=identity) as ledger:
            for i, event in enumerate(earlier):
                reservation = Reservation("earlier", i, "train", event)
                reserve(ledger, reservation, lambda history: {"epsilon-after": 0.0})
                commit(ledger, reservation)
    worker = textwrap.dedent(
        """
        import sys, time
        sys.path.insert(0, sys.argv[2])
        from pathlib import Path
        from coordinator import Site, run_config, train_request
        run_id, gates, roots = sys.argv[1], Path(sys.argv[3]), sys.argv[4:]
        for index, root in enumerate(roots):
            site = Site(Path(root))
            config = run_config(site.root, **{"noise-multiplier": 2.5})
            (gates / f"ready-{run_id}-{index}").touch()
            while not (gates / f"go-{index}").exists():
                time.sleep(0.005)
            train_request(site, config, run_id=int(run_id))
        """
    )
    gates = tmp_path / "gates"
    gates.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two torch processes on two cores
    args = [str(Path(__file__).parent), str(gates), *(str(site.root) for site in sites)]
    workers = [
        subprocess.Popen([sys.executable, "-c", worker, str(run_id), *args], env=env)
        for run_id in (101, 202)
    ]
    for index in range(contests):
        deadline = time.monotonic() + 120
        while not all((gates / f"ready-{r}-{index}").exists() for r in (101, 202)):
            assert time.monotonic() < deadline and all(w.poll() is None for w in workers)
            time.sleep(0.01)
        (gates / f"go-{index}").touch()
    assert [w.wait(timeout=300) for w in workers] == [0, 0]
    for site in sites:
        this_run = [r for r in spent(site) if r["run_id"] != "earlier"]
        assert len(this_run) == 1, site.root
        (refused,) = site.ledger_rows("refusal")
        assert refused["reason"] == "budget-exhausted"
        assert {refused["run_id"], this_run[0]["run_id"]} == {"101", "202"}


CLIENT_DP = {
    "secagg": True,
    "client-dp": True,
    "client-dp-noise-mode": "distributed",
    "client-dp-noise": 1.0,
    "client-dp-clip": 0.5,
}


@pytest.mark.parametrize(
    "overrides",
    [{}, {"dp-colluders": 1}, {"client-dp-adaptive": True, "client-dp-count-noise": 1.0}],
    ids=["honest-threshold", "one-colluder", "adaptive"],
)
def test_client_level_noise_shares_are_sized_by_the_sites_not_the_server(tmp_path, overrides):
    """The server only learns the secure sum; its noise is what the sites decide it is.

    Three sites, threshold t = 2: each adds std z C / sqrt(t - colluders), so the released
    sum carries z C sqrt(3 / (t - colluders)): never less than z C, whatever the server
    asks, and more when the run assumes colluders. (Sized for the 3 expected sites instead,
    the sum would carry exactly z C: 18 % less than here.) The deltas, clipped to C over
    3,370 coordinates, add well under 1 % to the variance.
    """
    from privacy.client_dp import update_noise_multiplier

    sites = [Site(tmp_path / "sites", index=i, of=3, node_id=31 + i) for i in range(3)]
    for s in sites:
        s.configure(max_epsilon=20.0)
    settings = {**CLIENT_DP, **overrides}
    config = run_config(tmp_path / "sites", **settings)
    arrays = initial_arrays(config)
    config["round-clip-norm"] = 0.5  # the server's C: the noise scales with it
    adaptive = "client-dp-adaptive" in overrides
    masked, _, server = secure_round(sites, config, 7, arrays, extra_coordinates=int(adaptive))
    assert all(refusal(r) is None for r in masked)
    result = server.result()
    assert len(result.contributors) == 3 and server.params.threshold == 2
    assert result.out_of_range == 0
    z = settings["client-dp-noise"]
    if adaptive:
        z = update_noise_multiplier(z, settings["client-dp-count-noise"])
    honest = 2 - overrides.get("dp-colluders", 0)
    expected = z * 0.5 * np.sqrt(3 / honest)
    length = len(flat_weights(arrays))
    released = result.weighted_sum[:length]
    assert length > 2000 and np.std(released) == pytest.approx(expected, rel=0.06)
    if adaptive:
        # The clipped count carries the sites' count-noise shares (std sqrt(3/2) in all):
        # the server sees a noisy count, never the exact number of sites whose update fitted.
        (count,) = result.weighted_sum[length:]
        assert count != round(count) and -8 < count < 11


def test_client_level_floors_are_the_sites(tmp_path):
    site = Site(tmp_path / "sites")
    site.configure(max_epsilon=8.0, min_client_noise_multiplier=1.0, tolerated_colluders=1)
    weak = run_config(site.root, **{**CLIENT_DP, "client-dp-noise": 0.5, "dp-colluders": 1})
    record = refusal(train_request(site, weak))
    assert (record["reason"], record["floor"]) == ("below-floor", "min-client-noise-multiplier")
    trusting = run_config(site.root, **{**CLIENT_DP, "client-dp-noise": 2.0})
    record = refusal(train_request(site, trusting, run_id=2))
    assert (record["reason"], record["floor"]) == ("below-floor", "tolerated-colluders")
    # A share std from the server is not a setting the site takes: the request is malformed.
    honest = run_config(site.root, **{**CLIENT_DP, "dp-colluders": 1})
    told = {**honest, "round-noise-share-std": 0.0}
    reply = train_request(site, told, run_id=3, arrays=initial_arrays(honest))
    assert refusal(reply)["reason"] == "malformed-request"
    assert spent(site) == []


def test_the_next_rounds_setup_rides_on_consistency_and_is_checked_like_a_setup(tmp_path):
    """The stage before unmask may carry the next round's setup (server/secure_round.py
    `SecureRounds`). A site answers it only where it would answer that setup sent alone,
    and answers the request it rode on either way."""
    from privacy.secagg import SecAggConfig, SecAggServer
    from privacy.secagg import messages as m
    from tasks.wire import protocol_message, update_length

    sites = [Site(tmp_path / "sites", index=i, of=4, node_id=31 + i) for i in range(4)]
    for s in sites:
        s.configure(max_epsilon=20.0)
    config = run_config(tmp_path / "sites", secagg=True, **{"num-rounds": 2})
    arrays = initial_arrays(config)
    length = update_length(unpack_model(arrays))
    ids = [s.node_id for s in sites]
    upcoming = SecAggServer(SecAggConfig(), "s/2/early", ids, length).requests()
    downgraded = SecAggServer(SecAggConfig(authenticated=False), "s/2/early", ids, length)
    crafted = {
        31: lambda request: upcoming[31],  # a setup as the server would send it
        32: lambda request: request,  # the consistency request itself, a second time
        33: lambda request: {**upcoming[33], m.SESSION: "s/1"},  # this round's session
        34: lambda request: downgraded.requests()[34],  # the semi-honest protocol
    }

    def carry(stage: str, node: int, request: dict) -> dict:
        if stage == m.CONSISTENCY:
            return {m.NEXT_ROUND: ConfigRecord(crafted[node](request))}
        # On any other stage, even a genuine setup is out of place.
        return {m.NEXT_ROUND: ConfigRecord(upcoming[node])}

    answers: dict = {}
    _, _, server = secure_round(sites, config, 7, arrays, carry=carry, answers=answers)
    assert server.done and server.result().num_clients == 4  # every request was answered
    assert all(refusal(r) is None for replies in answers.values() for r in replies)
    signed = {r.metadata.src_node_id: r for r in answers[m.CONSISTENCY]}
    assert all(protocol_message(r.content)[m.STAGE] == m.CONSISTENCY for r in signed.values())
    setup = dict(signed[31].content[m.NEXT_ROUND])
    assert (setup[m.SESSION], setup[m.STAGE], setup[m.SENDER]) == ("s/2/early", m.SETUP, 31)
    assert [n for n in (32, 33, 34) if m.NEXT_ROUND in signed[n].content] == []
    others = [r for stage, replies in answers.items() if stage != m.CONSISTENCY for r in replies]
    assert len(others) == 16 and all(m.NEXT_ROUND not in r.content for r in others)
    assert all(len(spent(s)) == 1 for s in sites)  # one round trained, nothing more

    # The last round's consistency: no round follows, so no setup is answered.
    last = run_config(tmp_path / "sites", secagg=True, **{"num-rounds": 1})
    answers.clear()
    secure_round(
        sites[:3],
        last,
        8,
        arrays,
        session="t/1",
        carry=lambda stage, node, request: {m.NEXT_ROUND: ConfigRecord(upcoming[node])},
        answers=answers,
    )
    assert [m.NEXT_ROUND in r.content for r in answers[m.CONSISTENCY]] == [False] * 3


def test_the_next_rounds_share_keys_rides_on_unmask_for_the_session_the_site_holds(tmp_path):
    """Unmask may carry the next round's share-keys. A site answers it only for the next
    session it set up on the request before and holds, and that session is then its own.
    Otherwise it answers the unmask alone and drops the session it held for good: a later
    setup or share-keys for that session is refused as stale."""
    from client.app import SECAGG_NEXT_STATE, SECAGG_STATE
    from privacy.secagg import SecAggClient, SecAggConfig, SecAggServer, crypto
    from privacy.secagg import messages as m
    from tasks.wire import protocol_message, protocol_records, update_length

    sites = [Site(tmp_path / "sites", index=i, of=5, node_id=31 + i) for i in range(5)]
    for s in sites:
        s.configure(max_epsilon=20.0)
    by_id = {s.node_id: s for s in sites}
    config = run_config(tmp_path / "sites", secagg=True, **{"num-rounds": 2})
    arrays = initial_arrays(config)
    ids = sorted(by_id)
    upcoming = SecAggServer(SecAggConfig(), "s/2/early", ids, update_length(unpack_model(arrays)))
    setups = upcoming.requests()
    signing: dict[int, dict] = {}
    answers: dict = {}

    def carry(stage: str, node: int, request: dict) -> dict:
        if stage == m.CONSISTENCY:
            signing[node] = request
            return {m.NEXT_ROUND: ConfigRecord(setups[node])}
        if stage != m.UNMASK:
            return {}
        if upcoming.stage == m.SETUP:
            upcoming.receive([dict(r.content[m.NEXT_ROUND]) for r in answers[m.CONSISTENCY]])
        genuine = upcoming.requests()
        if node == 32:  # another request comes between: the consistency request, replayed
            replayed = by_id[32].ask(
                message("train.secagg", config, 7, 32, None, protocol_records(signing[32])), 7
            )
            assert refusal(replayed)["reason"] == "protocol-violation"
        substituted = list(genuine[35][m.PEER_MASK_PKS])
        substituted[0] = crypto.new_key_pair()[1]  # a key of the server's own for a peer
        crafted = {
            31: genuine[31],
            32: genuine[32],
            33: {**genuine[33], m.SESSION: "s/1"},  # this round's session
            34: genuine[35],  # another site's request
            35: {**genuine[35], m.PEER_MASK_PKS: substituted},
        }
        return {m.NEXT_ROUND: ConfigRecord(crafted[node])}

    _, _, server = secure_round(sites, config, 7, arrays, carry=carry, answers=answers)
    assert server.done and server.result().num_clients == 5
    unmasked = {r.metadata.src_node_id: r for r in answers[m.UNMASK]}
    assert all(refusal(r) is None for r in unmasked.values())
    assert all(protocol_message(r.content)[m.STAGE] == m.UNMASK for r in unmasked.values())
    shared = dict(unmasked[31].content[m.NEXT_ROUND])
    assert (shared[m.SESSION], shared[m.STAGE], shared[m.SENDER]) == (
        "s/2/early",
        m.SHARE_KEYS,
        31,
    )
    assert len(shared[m.CIPHERTEXTS]) == 4  # one sealed pair of shares per peer
    assert [n for n in (32, 33, 34, 35) if m.NEXT_ROUND in unmasked[n].content] == []
    for site in sites:
        assert SECAGG_NEXT_STATE not in site.state
        held = SecAggClient.from_state(dict(site.state[SECAGG_STATE]))
        if site.node_id == 31:
            assert (held.session, held.stage) == ("s/2/early", m.SHARE_KEYS)
            continue
        assert (held.session, held.stage) == ("s/1", m.UNMASK)
        for request in (setups[site.node_id], upcoming.requests()[site.node_id]):
            records = protocol_records(request)
            again = site.ask(message("train.secagg", config, 7, site.node_id, None, records), 7)
            record = refusal(again)
            assert record is not None, f"site {site.node_id} answered {request[m.STAGE]}"
            assert record["reason"] == "protocol-violation" and "stale" in record["message"]
    assert all(len(spent(s)) == 1 for s in sites)


def test_a_carried_setup_for_a_round_the_budget_cannot_pay_is_not_answered(tmp_path):
    """The next round's setup is checked against the site's budget as a setup alone is:
    a site with room for one round answers this round's requests, and no setup."""
    from privacy.secagg import SecAggConfig, SecAggServer
    from privacy.secagg import messages as m
    from tasks.wire import update_length

    def sites_with(budget: float, root: Path) -> list[Site]:
        sites = [Site(root, index=i, of=3, node_id=41 + i) for i in range(3)]
        for s in sites:
            s.configure(max_epsilon=budget)
        return sites

    def round_one(sites: list[Site], root: Path) -> list:
        config = run_config(root, secagg=True, **{"num-rounds": 2})
        arrays = initial_arrays(config)
        ids = [s.node_id for s in sites]
        upcoming = SecAggServer(
            SecAggConfig(), "s/2/early", ids, update_length(unpack_model(arrays))
        ).requests()
        answers: dict = {}
        _, _, server = secure_round(
            sites,
            config,
            9,
            arrays,
            carry=lambda stage, node, request: (
                {m.NEXT_ROUND: ConfigRecord(upcoming[node])} if stage == m.CONSISTENCY else {}
            ),
            answers=answers,
        )
        signed = answers[m.CONSISTENCY]
        assert server.done and all(refusal(r) is None for r in signed)
        return signed

    roomy = sites_with(50.0, tmp_path / "roomy")
    assert all(m.NEXT_ROUND in r.content for r in round_one(roomy, tmp_path / "roomy"))
    one_round = max(float(spent(s)[0]["epsilon-after"]) for s in roomy)

    tight = sites_with(round(one_round * 1.01, 4), tmp_path / "tight")
    assert all(m.NEXT_ROUND not in r.content for r in round_one(tight, tmp_path / "tight"))
    for s in tight:
        assert len(spent(s)) == 1  # round 1, and nothing for round 2
        assert s.ledger_rows("refusal") == []  # recorded when round 2's own setup asks
