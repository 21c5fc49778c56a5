"""SecAgg+ end to end, in process: exact weighted sums, dropouts at every stage, aborts."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.common import serde

from privacy.errors import FedVaultError
from privacy.secagg import (
    SecAggAbort,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
)
from privacy.secagg import messages as m
from privacy.secagg.graph import neighbour_graph
from privacy.secagg.local import local_identities, run_round
from tasks.wire import pack, unpack

D = 300


def make_inputs(n: int, seed: int, scale: float = 2.0):
    rng = np.random.default_rng(seed)
    ids = [int(x) for x in rng.choice(2**62, size=n, replace=False) + 1]
    updates = {cid: rng.uniform(-scale, scale, D) for cid in ids}
    weights = {cid: int(rng.integers(1, 1000)) for cid in ids}
    return ids, updates, weights


def weighted_mean(updates, weights, ids, clip: float = 8.0) -> np.ndarray:
    total = sum(weights[c] for c in ids)
    return sum(weights[c] * np.clip(updates[c], -clip, clip) for c in ids) / total


def assert_exact(result, updates, weights, contributors) -> None:
    assert result.contributors == tuple(sorted(contributors))
    assert result.total_weight == sum(weights[c] for c in contributors)
    expected = weighted_mean(updates, weights, contributors)
    error = np.abs(result.mean - expected).max()
    assert error <= result.max_error, f"error {error} above quantization step"


@pytest.mark.parametrize(
    ("n", "k"),
    [(3, None), (3, 2), (5, 4), (10, None), (10, 4), (20, 19), (20, 4), (20, None)],
)
def test_unmasked_mean_equals_plain_weighted_mean(n, k):
    ids, updates, weights = make_inputs(n, seed=n * 7 + (k or 0))
    config = SecAggConfig(num_neighbours=k)
    result = run_round(config, updates, weights, seed=n)
    assert_exact(result, updates, weights, ids)
    assert result.out_of_range == 0
    assert result.dropped == {}
    # The sum is the weighted sum, not something that only happens to have the right mean.
    expected_sum = sum(weights[c] * updates[c] for c in ids)
    assert np.allclose(
        result.weighted_sum, expected_sum, atol=result.max_error * sum(weights.values())
    )


def test_small_field_with_small_weights_is_exact():
    ids, updates, weights = make_inputs(8, seed=3)
    weights = {c: w % 50 + 1 for c, w in weights.items()}
    config = SecAggConfig(modulus_bits=32, quantization_bits=16, max_weight=50, num_neighbours=4)
    result = run_round(config, updates, weights, seed=1)
    assert_exact(result, updates, weights, ids)


def test_degree_and_threshold_resolution():
    params = SecAggConfig().resolve(100, 10)
    assert params.num_neighbours == 14 and params.threshold == 10
    classic = SecAggConfig(num_neighbours=1000).resolve(9, 10)
    assert classic.num_neighbours == 8 and classic.threshold == 6
    odd = SecAggConfig(num_neighbours=3).resolve(11, 10)
    assert odd.num_neighbours == 4  # 11 * 3 is odd: no 3-regular graph
    graph = neighbour_graph(list(range(1, 12)), 4, seed=5)
    assert all(len(peers) == 4 and c not in peers for c, peers in graph.items())
    assert all(c in graph[p] for c, peers in graph.items() for p in peers)
    assert graph == neighbour_graph(list(range(1, 12)), 4, seed=5)
    assert graph != neighbour_graph(list(range(1, 12)), 4, seed=6)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"reconstruction_threshold": 0.5}, "fraction"),
        ({"reconstruction_threshold": 1}, "at least 2"),
        ({"num_neighbours": 0}, "num_neighbours"),
        ({"clipping_range": -1.0}, "clipping_range"),
        ({"quantization_bits": 31}, "quantization_bits"),
        ({"modulus_bits": 65}, "modulus_bits"),
        ({"modulus_bits": 32}, "field too small"),
        ({"max_weight": 0}, "max_weight"),
        ({"stage_timeout_s": 0}, "stage_timeout_s"),
    ],
)
def test_bad_settings_are_refused_in_one_line(settings, message):
    with pytest.raises(FedVaultError, match=message) as info:
        SecAggConfig(**settings)
    assert "\n" not in str(info.value)


def test_round_too_large_for_the_field_or_threshold_is_refused():
    with pytest.raises(FedVaultError, match="field too small"):
        SecAggConfig(modulus_bits=40, max_weight=100).resolve(5000, 10)
    with pytest.raises(FedVaultError, match="must exceed half"):
        SecAggConfig(num_neighbours=6, reconstruction_threshold=3).resolve(20, 10)
    with pytest.raises(FedVaultError, match="at least 2 clients"):
        SecAggConfig().resolve(1, 10)


@pytest.mark.parametrize("weight", [0, 1_000_001, 2.5, True])
def test_weight_outside_bounds_is_refused(weight):
    ids, updates, _ = make_inputs(3, seed=1)
    with pytest.raises(FedVaultError, match="weight"):
        run_round(SecAggConfig(), updates, dict.fromkeys(ids, weight))


def test_out_of_range_values_are_counted_and_warned(caplog):
    ids, updates, weights = make_inputs(4, seed=2)
    updates[ids[0]][:7] = 50.0
    updates[ids[1]][:3] = -9.0
    with caplog.at_level(logging.WARNING):
        result = run_round(SecAggConfig(), updates, weights)
    assert result.out_of_range == 10
    assert_exact(result, updates, weights, ids)  # compares with the clipped updates
    assert "7 of 300 update values outside the clipping range" in caplog.text


def test_client_reports_its_own_out_of_range_count():
    ids, updates, weights = make_inputs(3, seed=4)
    updates[ids[2]][5] = 100.0
    server = SecAggServer(SecAggConfig(authenticated=False), "s", ids, D)
    clients = {c: SecAggClient(c) for c in ids}
    while server.stage != m.UNMASK:
        server.receive(
            [clients[c].handle(r, updates[c], weights[c]) for c, r in server.requests().items()]
        )
    assert [clients[c].out_of_range for c in ids] == [0, 0, 1]


def _through_flower_records(msg: dict) -> dict:
    """Carry a message the way Flower would: ConfigRecord + ArrayRecord, serialised."""
    arrays = {k: v for k, v in msg.items() if isinstance(v, np.ndarray)}
    config = ConfigRecord({k: v for k, v in msg.items() if k not in arrays})
    out = dict(serde.config_record_from_proto(serde.config_record_to_proto(config)))
    if arrays:
        back = serde.array_record_from_proto(serde.array_record_to_proto(pack(arrays)))
        out.update(unpack(back))
    return out


def test_round_through_flower_records_with_client_state_persisted():
    """Every message and the client state survive Flower's records, as in a ClientApp."""
    ids, updates, weights = make_inputs(5, seed=9)
    ids[0] = 2**64 - 1  # Flower node ids are unsigned 64-bit
    updates[ids[0]] = updates.pop(next(c for c in updates if c not in ids))
    weights[ids[0]] = 7
    server = SecAggServer(SecAggConfig(num_neighbours=2), "run-1/round-3", ids, D, seed=2)
    assert server.stages == m.STAGES  # authenticated: with the consistency stage
    identities = local_identities(ids)
    states = {c: ConfigRecord(SecAggClient(c, identities[c]).to_state()) for c in ids}
    while not server.done:
        replies = []
        for cid, request in server.requests().items():
            state = _through_flower_records(dict(states[cid]))
            client = SecAggClient.from_state(state, identities[cid])
            reply = client.handle(_through_flower_records(request), updates[cid], weights[cid])
            states[cid] = ConfigRecord(client.to_state())
            replies.append(_through_flower_records(reply))
        server.receive(replies)
    assert_exact(server.result(), updates, weights, ids)


def test_corrupt_client_state_is_a_one_line_error():
    state = SecAggClient(5).to_state()
    state["session"] = "x"
    with pytest.raises(FedVaultError, match="corrupt secure-aggregation client state"):
        SecAggClient.from_state(state)


# -- dropouts ------------------------------------------------------------------------------

STAGES_SILENT = [m.SETUP, m.SHARE_KEYS, m.MASKED_INPUT, m.CONSISTENCY, m.UNMASK]


@pytest.mark.parametrize("stage", STAGES_SILENT)
def test_classic_dropouts_up_to_threshold_give_exact_sum(stage):
    ids, updates, weights = make_inputs(6, seed=11)
    config = SecAggConfig(num_neighbours=5)  # classic: holders 6, threshold 4
    gone = set(ids[:2])
    result = run_round(config, updates, weights, silent={stage: gone}, seed=3)
    # Clients silent before their masked input was sent are out of the sum; a client that
    # vanishes later (consistency, unmask) already contributed its input.
    contributors = ids if stage in (m.CONSISTENCY, m.UNMASK) else ids[2:]
    assert_exact(result, updates, weights, contributors)
    assert set(result.dropped) == gone
    assert all(reason.startswith(f"{stage}: no reply") for reason in result.dropped.values())


@pytest.mark.parametrize("stage", STAGES_SILENT)
def test_classic_one_dropout_too_many_aborts(stage):
    ids, updates, weights = make_inputs(6, seed=12)
    config = SecAggConfig(num_neighbours=5)
    with pytest.raises(SecAggAbort) as info:
        run_round(config, updates, weights, silent={stage: set(ids[:3])}, seed=3)
    assert "threshold" in info.value.reason or "too many dropouts" in info.value.reason


def test_dropouts_spread_over_stages_give_exact_sum():
    ids, updates, weights = make_inputs(9, seed=13)
    config = SecAggConfig(num_neighbours=8)  # holders 9, threshold 6: 3 may go
    silent = {m.SETUP: {ids[0]}, m.MASKED_INPUT: {ids[1]}, m.UNMASK: {ids[2]}}
    result = run_round(config, updates, weights, silent=silent, seed=4)
    assert_exact(result, updates, weights, ids[2:])


def _secagg_plus(seed: int):
    ids, updates, weights = make_inputs(12, seed=seed)
    config = SecAggConfig(num_neighbours=4)  # holders 5, threshold 4: one per neighbourhood
    graph = neighbour_graph(sorted(ids), 4, seed=seed)
    return ids, updates, weights, config, graph


@pytest.mark.parametrize("stage", [m.MASKED_INPUT, m.UNMASK])
def test_secagg_plus_dropouts_within_neighbourhoods_give_exact_sum(stage):
    ids, updates, weights, config, graph = _secagg_plus(seed=21)
    # Two clients neither adjacent nor sharing a neighbour: every neighbourhood loses <= 1.
    first = sorted(ids)[0]
    second = next(
        c
        for c in sorted(ids)
        if c != first and c not in graph[first] and not graph[c] & graph[first]
    )
    result = run_round(config, updates, weights, silent={stage: {first, second}}, seed=21)
    contributors = ids if stage == m.UNMASK else set(ids) - {first, second}
    assert_exact(result, updates, weights, contributors)


@pytest.mark.parametrize("stage", [m.MASKED_INPUT, m.UNMASK])
def test_secagg_plus_two_dropouts_in_one_neighbourhood_abort(stage):
    ids, updates, weights, config, graph = _secagg_plus(seed=22)
    victim = sorted(ids)[0]
    gone = set(sorted(graph[victim])[:2])
    with pytest.raises(SecAggAbort, match="too many dropouts"):
        run_round(config, updates, weights, silent={stage: gone}, seed=22)


def test_secagg_plus_thin_neighbourhood_before_masking_is_excluded_not_fatal():
    """A client whose share holders vanish before masking is left out; the rest go on."""
    ids, updates, weights = make_inputs(12, seed=24)
    config = SecAggConfig(num_neighbours=6, reconstruction_threshold=4)  # 7 holders, 3 may go
    graph = neighbour_graph(sorted(ids), 6, seed=24)
    slack = 7 - 4
    # Find a victim losing slack + 1 holders while nobody else loses more than its slack,
    # even counting the victim's own exclusion.
    victim, gone = next(
        (v, set(gone))
        for v in sorted(ids)
        for gone in itertools.combinations(sorted(graph[v]), slack + 1)
        if all(
            len(graph[x] & set(gone)) + (v in graph[x]) <= slack
            for x in ids
            if x != v and x not in gone
        )
    )
    result = run_round(config, updates, weights, silent={m.SHARE_KEYS: gone}, seed=24)
    assert victim not in result.contributors
    assert "only 3 live share holders" in result.dropped[victim]
    assert set(result.contributors) == set(ids) - gone - {victim}
    assert_exact(result, updates, weights, result.contributors)
