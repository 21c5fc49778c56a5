"""Cost of secure aggregation: FedVault's SecAgg+ vs plain summation vs Flower's legacy SecAgg+.

Every protocol runs in one process on the same inputs (n clients, a vector the size of a small
CNN, integer weights), so the numbers are compute only: no network, no serialisation. Times
are CPU time (robust on a shared machine): server is what the aggregator spends, client the
mean per client over all stages. Flower's
legacy `SecAggPlusWorkflow` + `secaggplus_mod` run unmodified behind an in-process Grid that
deep-copies each message (as serialisation would; the copies are not counted).

    python -m benchmarks.secagg                 # n = 10, 50, 100; about a minute
    python -m benchmarks.secagg --sizes 10 20 --dim 5000 --no-legacy
"""

from __future__ import annotations

import argparse
import copy
import itertools
import logging
import time
import warnings

import numpy as np

from privacy.secagg import SecAggClient, SecAggConfig, SecAggServer

logging.getLogger("privacy.secagg").setLevel(logging.ERROR)


def make_inputs(n: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = list(range(1, n + 1))
    updates = {c: rng.uniform(-1, 1, dim) for c in ids}
    weights = {c: int(rng.integers(1, 1000)) for c in ids}
    return updates, weights


def exact_mean(updates, weights, ids) -> np.ndarray:
    return sum(weights[c] * updates[c] for c in ids) / sum(weights[c] for c in ids)


def run_plain(updates, weights) -> dict:
    ids = sorted(updates)
    start = time.process_time()
    stacked = np.stack([updates[c] for c in ids])
    w = np.array([weights[c] for c in ids], dtype=np.float64)
    mean = w @ stacked / w.sum()
    elapsed = time.process_time() - start
    return {"total": elapsed, "server": elapsed, "client": 0.0, "mean": mean, "ids": ids}


def run_fedvault(updates, weights, num_neighbours: int | None, drop_fraction: float = 0.0) -> dict:
    ids = sorted(updates)
    dim = len(updates[ids[0]])
    config = SecAggConfig(num_neighbours=num_neighbours)
    gone = set(ids[: int(drop_fraction * len(ids))])
    server_time = client_time = 0.0
    start = time.process_time()
    t0 = time.process_time()
    server = SecAggServer(config, "bench", ids, dim, seed=1)
    server_time += time.process_time() - t0
    clients = {c: SecAggClient(c) for c in ids}
    while not server.done:
        t0 = time.process_time()
        stage, requests = server.stage, server.requests()
        server_time += time.process_time() - t0
        replies = []
        for cid, request in requests.items():
            if stage == "masked-input" and cid in gone:
                continue  # dropped after sharing keys: its masks must be reconstructed
            t0 = time.process_time()
            replies.append(clients[cid].handle(request, updates[cid], weights[cid]))
            client_time += time.process_time() - t0
        t0 = time.process_time()
        server.receive(replies)
        server_time += time.process_time() - t0
    result = server.result()
    return {
        "total": time.process_time() - start,
        "server": server_time,
        "client": client_time / len(ids),
        "mean": result.mean,
        "ids": list(result.contributors),
        "k": server.params.num_neighbours,
        "t": server.params.threshold,
    }


def run_flower_legacy(updates, weights, num_neighbours: int, threshold: int) -> dict:
    """Flower 1.42's legacy SecAgg+ (workflow + client mod), unmodified, in process."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.client.mod import secaggplus_mod
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey
    from flwr.serverapp.grid import Grid
    from flwr.supercore.task_identity import TaskIdentity

    logging.getLogger("flwr").setLevel(logging.ERROR)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    ids = sorted(updates)
    dim = len(updates[ids[0]])
    states = {
        c: Context(run_id=1, node_id=c, node_config={}, state=RecordDict(), run_config={})
        for c in ids
    }
    timers = {"client": 0.0, "copy": 0.0}

    def answer(msg: Message) -> Message:
        t0 = time.process_time()
        msg = copy.deepcopy(msg)
        timers["copy"] += time.process_time() - t0
        nid = msg.metadata.dst_node_id

        def fit(request: Message, _ctx: Context) -> Message:
            res = FitRes(
                Status(Code.OK, ""), ndarrays_to_parameters([updates[nid]]), weights[nid], {}
            )
            return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=request)

        t0 = time.process_time()
        reply = secaggplus_mod(msg, states[nid], fit)
        timers["client"] += time.process_time() - t0
        return reply

    class InProcessGrid(Grid):
        def set_run(self, run) -> None:
            return None

        @property
        def run(self):
            raise NotImplementedError

        def create_message(self, *args, **kwargs):
            raise NotImplementedError

        def get_node_ids(self):
            return ids

        def push_messages(self, messages):
            raise NotImplementedError

        def pull_messages(self, message_ids):
            raise NotImplementedError

        def send_and_receive(self, messages, *, timeout=None):
            return [answer(msg) for msg in messages]

    captured: dict[str, np.ndarray] = {}

    class CapturingFedAvg(FedAvg):
        def aggregate_fit(self, server_round, results, failures):
            captured["mean"] = parameters_to_ndarrays(results[0][1].parameters)[0]
            return super().aggregate_fit(server_round, results, failures)

    grid = InProcessGrid()
    manager = SimpleClientManager()
    for c in ids:
        manager.register(GridClientProxy(c, grid, 1))
    strategy = CapturingFedAvg(
        fraction_fit=1.0, min_fit_clients=len(ids), min_available_clients=len(ids)
    )
    base = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(base, strategy=strategy, client_manager=manager)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: 1})
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters([np.zeros(dim)]), True
    )
    workflow = SecAggPlusWorkflow(num_shares=num_neighbours + 1, reconstruction_threshold=threshold)
    start = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workflow(grid, context)
    total = time.process_time() - start - timers["copy"]
    return {
        "total": total,
        "server": total - timers["client"],
        "client": timers["client"] / len(ids),
        "mean": captured["mean"],
        "ids": ids,
    }


def row(n: int, name: str, run: dict, updates, weights) -> str:
    error = float(np.abs(run["mean"] - exact_mean(updates, weights, run["ids"])).max())
    k, t = run.get("k", "-"), run.get("t", "-")
    return (
        f"| {n:>4} | {name:<27} | {k!s:>3} | {t!s:>3} | {run['total']:7.3f} | "
        f"{run['server']:8.3f} | {1000 * run['client']:9.1f} | {error:7.1e} |"
    )


def growth(points: list[tuple[int, float]]) -> str:
    return ", ".join(
        f"n {a}->{b}: {tb / ta:.1f}x" for (a, ta), (b, tb) in itertools.pairwise(points)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--dim", type=int, default=20_000, help="vector length (~small CNN)")
    parser.add_argument("--classic-max", type=int, default=50, help="largest n for k = n - 1")
    parser.add_argument("--no-legacy", action="store_true", help="skip Flower's legacy SecAgg+")
    args = parser.parse_args(argv)

    print(f"vector length {args.dim}; CPU seconds (client: CPU ms per client, all stages)")
    print(
        f"| {'n':>4} | {'protocol':<27} | {'k':>3} | {'t':>3} | {'total':>7} | {'server':>8} "
        f"| {'client ms':>9} | {'max err':>7} |"
    )
    print(
        "|-----:|:----------------------------|----:|----:|--------:|---------:|----------:|--------:|"
    )
    server_cost: dict[str, list[tuple[int, float]]] = {"SecAgg+": [], "classic": [], "legacy": []}
    for n in args.sizes:
        updates, weights = make_inputs(n, args.dim)
        plus = run_fedvault(updates, weights, None)
        server_cost["SecAgg+"].append((n, plus["server"]))
        print(row(n, "plain weighted mean", run_plain(updates, weights), updates, weights))
        print(row(n, "FedVault SecAgg+", plus, updates, weights), flush=True)
        dropped = run_fedvault(updates, weights, None, drop_fraction=0.1)
        print(row(n, "FedVault SecAgg+, 10% drop", dropped, updates, weights), flush=True)
        if n <= args.classic_max:
            classic = run_fedvault(updates, weights, n - 1)
            server_cost["classic"].append((n, classic["server"]))
            print(row(n, "FedVault classic (k = n-1)", classic, updates, weights), flush=True)
        if not args.no_legacy:
            legacy = run_flower_legacy(updates, weights, plus["k"], plus["t"])
            legacy.update(k=plus["k"], t=plus["t"])
            server_cost["legacy"].append((n, legacy["server"]))
            print(row(n, "Flower legacy SecAgg+", legacy, updates, weights), flush=True)

    sizes = args.sizes
    print(
        "\nserver-cost growth; n log n predicts "
        + growth([(n, n * np.log2(n)) for n in sizes])
        + "; n^2 predicts "
        + growth([(n, float(n * n)) for n in sizes])
    )
    for name, points in server_cost.items():
        if len(points) > 1:
            print(f"  {name}: {growth(points)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
