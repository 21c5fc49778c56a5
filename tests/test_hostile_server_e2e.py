"""A hostile ServerApp on Flower's simulation engine against FedVault's real ClientApps.

The server is the attacker: it drives secure aggregation through Flower's Grid with four
real simulated sites (their own keys and roster, their own ClientApp), and rewrites the
messages of the authenticated protocol the way an active server would: it swaps a site's
peer keys for its own, tells sites different survivor sets, and claims an honest site
dropped. Each attack ends with what the server got back, checked after the run.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from client.app import app as client_app
from privacy.secagg import SecAggConfig, SecAggServer, crypto
from privacy.secagg import messages as m
from simulations.runner import OFFLINE_ENV, prepare_run
from simulations.scenario import Scenario
from tasks.registry import build_model
from tasks.wire import (
    pack_model,
    protocol_message,
    protocol_records,
    seal,
    unseal,
    update_length,
)

SITES = 4
RUN = {
    "task.name": "mnist1d",
    "task.num-train": 1200,
    "task.num-test": 300,
    "num-rounds": 3,
    "local-epochs": 1,
    "batch-size": 64,
    "dp": True,
    "noise-multiplier": 1.0,
}


class Hostile:
    """The attacker's view: send a protocol message, get the protocol reply or a refusal."""

    def __init__(self, grid: Grid, config: dict, arrays: ArrayRecord) -> None:
        self.grid, self.config, self.arrays = grid, config, arrays

    def send(self, requests: dict[int, dict], server_round: int) -> dict[int, dict]:
        config = ConfigRecord({**self.config, "server-round": server_round})
        messages = []
        for node, request in requests.items():
            content = RecordDict({**protocol_records(request), "config": config})
            if request[m.STAGE] == m.MASKED_INPUT:
                content["arrays"] = self.arrays
            messages.append(
                Message(content=seal(content), dst_node_id=node, message_type="train.secagg")
            )
        replies = {}
        for reply in self.grid.send_and_receive(messages, timeout=120):
            node = reply.metadata.src_node_id
            if reply.has_error():
                replies[node] = {"error": reply.error.reason}
                continue
            reply.content = unseal(reply.content)
            if "refusal" in reply.content:
                replies[node] = {"refusal": dict(reply.content["refusal"])}
            else:
                replies[node] = protocol_message(reply.content)
        return replies

    def honest(self, server: SecAggServer, server_round: int) -> dict[int, dict]:
        replies = self.send(server.requests(), server_round)
        server.receive([r for r in replies.values() if m.STAGE in r])
        return replies


def key_substitution(hostile: Hostile, nodes: list[int], length: int) -> dict:
    server = SecAggServer(SecAggConfig(), "attack/keys", nodes, length)
    hostile.honest(server, 1)
    target = nodes[0]
    request = dict(server.requests()[target])
    fakes = [crypto.new_key_pair()[1] for _ in request[m.PEER_IDS]]
    request[m.PEER_MASK_PKS] = fakes
    request[m.PEER_ENC_PKS] = [crypto.new_key_pair()[1] for _ in fakes]
    return hostile.send({target: request}, 1)[target]


def split_survivors(hostile: Hostile, nodes: list[int], length: int) -> dict:
    """Tell the first two sites that the third dropped, and the rest that all survived."""
    server = SecAggServer(SecAggConfig(), "attack/split", nodes, length)
    for _ in range(3):
        hostile.honest(server, 2)
    victim = nodes[2]
    without = [n for n in nodes if n != victim]
    stories = {n: (without if n in nodes[:2] else sorted(nodes)) for n in nodes}
    requests = {
        n: {**server.requests()[n], m.SURVIVOR_IDS: stories[n]} for n in nodes if n != victim
    }
    requests[victim] = {**server.requests()[victim], m.SURVIVOR_IDS: sorted(nodes)}
    signed = hostile.send(requests, 2)
    unmask = {}
    for node in nodes:
        story = stories[node]
        peers = [p for p in nodes if p != node]
        signers = [p for p in peers if m.SIGNATURE in signed.get(p, {})]
        header = m.make_header(server.session, m.UNMASK, m.SERVER_ID, node, bytes(16))
        unmask[node] = {
            **header,
            m.SURVIVOR_IDS: sorted(p for p in nodes if p in story),
            m.DROPPED_IDS: sorted(p for p in peers if p not in story),
            m.SIGNER_IDS: signers,
            m.SIGNATURES: [signed[p][m.SIGNATURE] for p in signers],
        }
    replies = hostile.send(unmask, 2)
    return {"victim": victim, "replies": replies, "threshold": server.params.threshold}


def claim_dropped(hostile: Hostile, nodes: list[int], length: int) -> dict:
    """The victim sent its masked input; the server says it dropped, then asks for both."""
    server = SecAggServer(SecAggConfig(), "attack/dropped", nodes, length)
    for _ in range(2):
        hostile.honest(server, 3)
    masked = hostile.honest(server, 3)
    victim = nodes[1]
    liars = [n for n in nodes if n != victim]
    signed = hostile.send({n: {**server.requests()[n], m.SURVIVOR_IDS: liars} for n in liars}, 3)
    greedy = {}
    for node in liars:
        others = [p for p in liars if p != node]
        header = m.make_header(server.session, m.UNMASK, m.SERVER_ID, node, bytes(16))
        greedy[node] = {
            **header,
            m.SURVIVOR_IDS: [*liars, victim],  # the victim's self-mask share as well
            m.DROPPED_IDS: [],
            m.SIGNER_IDS: others,
            m.SIGNATURES: [signed[p][m.SIGNATURE] for p in others],
        }
    return {
        "victim_masked": m.MASKED_VECTOR in masked[victim],
        "replies": hostile.send(greedy, 3),
        "victim": victim,
    }


def test_an_active_server_gets_nothing_from_real_sites(tmp_path, monkeypatch):
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    scenario = Scenario("hostile", run=dict(RUN), num_sites=SITES, sites={"max-epsilon": 50.0})
    settings = prepare_run(scenario, tmp_path / "run")
    outcome: dict = {}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        while len(nodes := sorted(grid.get_node_ids())) < SITES:
            time.sleep(0.1)
        model = build_model("mnist1d", 40, 10, private=True)
        arrays = pack_model(model.state_dict())
        hostile = Hostile(grid, settings.to_config(), arrays)
        length = update_length(model.state_dict())
        outcome["keys"] = key_substitution(hostile, nodes, length)
        outcome["split"] = split_survivors(hostile, nodes, length)
        outcome["dropped"] = claim_dropped(hostile, nodes, length)

    from flwr.simulation import run_simulation

    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=SITES,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": 2, "include_dashboard": False},
            },
        )
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()

    keys = outcome["keys"]
    assert keys["refusal"]["reason"] == "protocol-violation"
    assert "no valid signature" in keys["refusal"]["message"]

    split = outcome["split"]
    victim, threshold = split["victim"], split["threshold"]
    refused = [r for r in split["replies"].values() if "refusal" in r]
    assert refused and all("signed the survivor set" in r["refusal"]["message"] for r in refused)
    seed_shares = sum(victim in r.get(m.SELF_MASK_SHARE_IDS, []) for r in split["replies"].values())
    key_shares = sum(victim in r.get(m.KEY_SHARE_IDS, []) for r in split["replies"].values())
    assert not (seed_shares >= threshold and key_shares >= threshold)

    dropped = outcome["dropped"]
    assert dropped["victim_masked"]
    answers = dropped["replies"]
    assert answers and all("refusal" in r for r in answers.values())
    assert all("contradicts the survivor set" in r["refusal"]["message"] for r in answers.values())
    assert not any(np.size(r.get(m.SELF_MASK_SHARES, [])) for r in answers.values())
