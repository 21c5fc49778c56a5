"""`fedvault simulate` on an existing multi-node Ray cluster, started here on loopback.

Two `ray start` nodes, each with one CPU and its own loopback address (127.0.0.2 is the head,
127.0.0.3 joins it; Ray refuses 127.0.0.1 for a multi-node cluster), stand in for two
machines. Which node ran each ClientApp call is read afterwards from the cluster itself:
Ray records a profile event for every actor task it executes, with the address of the node
that executed it, in its control store, and `ray.timeline()` returns them (the state API
would need the dashboard, which is not installed). The ClientApp code is the one a run
uses, unchanged.

Every process a node started is found by its session (each `ray start` leads its own) and
stopped at the end; `ray stop` is not used, as it would stop every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from test_deploy_cli import free_port, in_process

from simulations.runner import RayCluster, simulate
from simulations.scenario import Scenario

RAY = str(Path(sys.executable).parent / "ray")
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 30
TINY = {
    "task.name": "mnist1d",
    "task.num-train": 1200,
    "task.num-test": 300,
    "num-rounds": 1,
    "local-epochs": 1,
    "batch-size": 32,
}
NON_PRIVATE = {"require-dp": False}


def start_node(root: Path, name: str, ip: str, *role: str) -> subprocess.Popen:
    """One Ray node with 1 CPU, its own temp dir and its own ports; returns once it is up."""
    log = root / f"{name}.log"
    command = [
        RAY, "start", "--block", *role,
        "--node-ip-address", ip, "--num-cpus", "1", "--num-gpus", "0",
        "--temp-dir", str(root / name), "--disable-usage-stats",
        "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
    ]  # fmt: skip
    with log.open("w") as out:
        node = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while "Ray runtime started" not in log.read_text():
        if node.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"ray node {name} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return node


def session_processes(sessions: set[int]) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):  # gone meanwhile
            if os.getsid(proc.pid) in sessions and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def stop_nodes(nodes: list[subprocess.Popen]) -> list[str]:
    """SIGTERM each node's session, SIGKILL what is left after a grace; what survived that."""
    sessions = {node.pid for node in nodes}
    for node in nodes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while session_processes(sessions) and time.monotonic() < deadline:
        time.sleep(0.2)
    for proc in session_processes(sessions):
        with contextlib.suppress(psutil.Error):
            proc.kill()
    for node in nodes:
        node.wait(timeout=STOP_TIMEOUT_S)
    time.sleep(0.5)
    survivors = []
    for proc in session_processes(sessions):
        with contextlib.suppress(psutil.Error):
            survivors.append(" ".join(proc.cmdline()[:2]))
    return survivors


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A two-node Ray cluster on loopback; its head's address."""
    # Ray's socket paths must stay short: a pytest tmp_path is too deep.
    root = Path(tempfile.mkdtemp(prefix="fv-ray-", dir="/tmp"))
    port = free_port()
    nodes: list[subprocess.Popen] = []
    try:
        head_role = ("--head", "--port", str(port), "--include-dashboard", "false")
        nodes.append(
            start_node(
                root, "head", HEAD_IP, *head_role, "--ray-client-server-port", str(free_port())
            )
        )
        nodes.append(start_node(root, "worker", WORKER_IP, "--address", f"{HEAD_IP}:{port}"))
        yield f"{HEAD_IP}:{port}"
    finally:
        survivors = stop_nodes(nodes)
        shutil.rmtree(root, ignore_errors=True)
    assert not survivors, f"Ray processes outlived the cluster: {survivors}"


def client_app_calls_by_node(address: str) -> Counter:
    """How many ClientApp calls (actor task `ClientAppActor.run`) each node executed."""
    import ray

    ray.init(address=address, logging_level="ERROR", include_dashboard=False)
    try:
        events = ray.timeline()
    finally:
        ray.shutdown()
    return Counter(e["pid"] for e in events if e["cat"] == "task::ClientAppActor.run")


@pytest.mark.timeout(300)
def test_simulated_sites_run_on_both_nodes_of_a_ray_cluster(cluster, tmp_path):
    out = tmp_path / "run"
    scenario = Scenario("cluster", run=dict(TINY), num_sites=4, sites=NON_PRIVATE)
    final = simulate(scenario, out, cluster=RayCluster(cluster))
    assert final["sites-trained"] == 4
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    calls = client_app_calls_by_node(cluster)
    assert set(calls) == {HEAD_IP, WORKER_IP}, calls
    # Every secure-aggregation stage sends one message per site: 4 sites, at least 4 stages.
    assert sum(calls.values()) >= 16, calls


def test_without_an_address_a_run_starts_its_own_ray_whatever_the_environment_names(
    cluster, tmp_path, monkeypatch
):
    """Ray would join the cluster RAY_ADDRESS (or the last `ray start`) names, and refuse
    the run's core count there; a run without --ray-address never joins anything."""
    monkeypatch.setenv("RAY_ADDRESS", cluster)
    before = client_app_calls_by_node(cluster)
    out = tmp_path / "run"
    scenario = Scenario("local", run=dict(TINY), num_sites=2, sites=NON_PRIVATE)
    assert simulate(scenario, out, cluster=RayCluster())["sites-trained"] == 2
    assert client_app_calls_by_node(cluster) == before


TINY_FLAGS = (
    "--clients", "2", "--rounds", "1",
    "--set", "task.num-train=1200", "--set", "task.num-test=300",
)  # fmt: skip


def test_a_site_bigger_than_every_node_is_refused_before_the_run(cluster, tmp_path):
    out = tmp_path / "run"
    code, err = in_process(
        "simulate", *TINY_FLAGS, "--out", str(out), "--ray-address", cluster, "--site-cpus", "2"
    )
    assert code == 2 and err.count("\n") == 1, err
    assert err == (
        f"fedvault: error: no node of the Ray cluster at {cluster} has 2 CPU(s) and 0 GPU(s) "
        "for one site; lower the resources per site\n"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--ray-address", "127.0.0.1:1"), "no Ray head node answers at 127.0.0.1:1"),
        (("--ray-address", "ray://head:10001"), "Ray address 'ray://head:10001': give HOST:PORT"),
        (("--site-cpus", "0"), "CPUs per site must be > 0, got 0"),
        (("--site-cpus", "nan"), "CPUs per site must be > 0, got nan"),
        (("--site-gpus", "-1"), "GPUs per site must be >= 0, got -1"),
    ],
)
def test_bad_cluster_settings_are_one_line_errors_and_leave_nothing(tmp_path, flags, message):
    out = tmp_path / "run"
    code, err = in_process("simulate", *TINY_FLAGS, "--out", str(out), *flags)
    assert code == 2
    assert err.startswith("fedvault: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not out.exists()
