"""A real deployment on loopback: `fedvault server`, three `fedvault client` sites, `fedvault run`.

Every process is the one a user starts: TLS with the federation's CA, SuperNode
authentication with registered keys, the Fleet-only nginx proxy in front of the SuperLink
when nginx is installed, tabular sites training on their own clinic CSVs with DP-SGD under
secure aggregation. The checks are what a deployment promises: a run completes and leaves
its metrics, ledgers and signed report; a site that vanishes mid-run is a secure-aggregation
dropout, not a failed run; a server killed mid-run and restarted continues the run with
`--resume`, each round counted once. After each scenario no process it started is left.
Every key is encrypted at rest under a passphrase the commands read from
FEDVAULT_PASSPHRASE_FILE: the CA and server keys, the sites' node keys, and the secrets the
apps create themselves (the report signing key, each site's split key); no decrypted copy
outlives the readiness of the process that read it.

Flower 1.42 starts a fresh ClientApp process for every message (five per site per secure
round), so a round costs tens of seconds on a small machine: rounds and sites are kept to
what each check needs.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w
from safetensors.torch import load_file
from test_deploy_cli import (
    HAS_FLOWER,
    HAS_NGINX,
    PASSPHRASE,
    REPO,
    Process,
    decrypted_copies,
    free_port,
    in_process,
    keys_at_rest,
    passphrase_environment,
)

from cli.processes import alive, descendants
from privacy.certs import init_certificates, new_node_key_pair
from privacy.keystore import is_encrypted
from privacy.ledger import Ledger
from tasks.clinic import write_clinic_csv

pytestmark = pytest.mark.skipif(not HAS_FLOWER, reason="flower-superlink (flwr 1.42) not found")

SCHEMA = REPO / "simulations" / "scenarios" / "clinic-schema.toml"
SITE_ROWS = 600
RUN_LIMIT_S = 480
EXIT_GRACE_S = 60


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The module's directory: CA, keys (all encrypted), CSVs; the report signing key under
    FEDVAULT_HOME; the passphrase file and the runtime directory for decrypted copies.

    At the end, no process whose command line or environment names it may be left, and no
    decrypted key copy.
    """
    root = tmp_path_factory.mktemp("deploy")
    secret, runtime = keys_at_rest(root)
    init_certificates(root / "certs", "localhost", passphrase=PASSPHRASE)
    for index, name in enumerate(("site-a", "site-b", "site-c", "site-d", "site-e"), start=1):
        (root / name).mkdir()
        new_node_key_pair(root / name / "node.key", passphrase=PASSPHRASE)
        write_clinic_csv(SITE_ROWS, index, root / name / "clinic.csv")
    write_clinic_csv(400, 99, root / "server-test.csv")
    with passphrase_environment(secret, runtime), pytest.MonkeyPatch.context() as env:
        env.setenv("FEDVAULT_HOME", str(root / "fedvault-home"))
        yield root
    assert not processes_naming(root), f"processes left running: {processes_naming(root)}"
    assert decrypted_copies(runtime) == []


def processes_naming(path: Path) -> list[str]:
    """Live processes whose command line or environment mention `path`."""
    needle = str(path).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (needle in cmdline or needle in environ):
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry}: {command}")
    return found


@dataclass
class Server:
    """A running `fedvault server` and where sites and runs reach it."""

    process: Process
    state: Path
    fleet: str
    port: int
    control: int


def start_server(root: Path, state: Path, port: int, control: int) -> Server:
    args = ["server", "--certs", str(root / "certs"), "--state-dir", str(state)]
    args += ["--port", str(port), "--control-port", str(control)]
    process = Process(args if HAS_NGINX else [*args, "--no-proxy"])
    process.wait_for("server ready")
    fleet = f"127.0.0.1:{port if HAS_NGINX else control}"
    return Server(process, state, fleet, port, control)


def registered_node_ids(state: Path) -> dict[str, str]:
    sites = tomllib.loads((state / "sites.toml").read_text())["sites"]
    return {name: site["node-id"] for name, site in sites.items()}


def enrol(root: Path, server: Server, sites: dict[str, Path]) -> Path:
    """Register every site's key, write the federation roster, approve the app at each site.

    What the walkthrough does: the coordinator registers the keys and writes roster.toml;
    each site gets the roster out of band and approves the build `fedvault run` will submit.
    """
    for name in sites:
        key = root / name / "node.key.pub"
        registered = in_process(
            "register", str(key), "--name", name, "--state-dir", str(server.state)
        )
        assert registered == (0, ""), registered
    roster = server.state / "roster-out.toml"
    code, err = in_process("roster", "--state-dir", str(server.state), "-o", str(roster))
    assert (code, err) == (0, ""), err
    for state in sites.values():
        assert in_process("approve", "--state-dir", str(state), "--app", str(REPO))[0] == 0
    return roster


def start_site(
    root: Path, server: Server, name: str, state: Path, roster: Path, *extra: str
) -> Process:
    """Start `fedvault client` until connected (its key registered, the app approved)."""
    site = Process(
        [
            "client", "--state-dir", str(state), "--server", server.fleet,
            "--ca", str(root / "certs" / "ca.crt"), "--key", str(root / name / "node.key"),
            "--roster", str(roster),
            "--data", str(root / name / "clinic.csv"),
            "--max-epsilon", "50", "--delta", "1e-5", "--port", str(free_port()), *extra,
        ]
    )  # fmt: skip
    site.wait_for("site connected", also=server.process)
    return site


def write_scenario(path: Path, out: Path, root: Path, **run: object) -> Path:
    """A deployment scenario: tabular clinic task, DP-SGD, secure aggregation, absolute out."""
    settings = {
        "local-epochs": 1,
        "batch-size": 32,
        "dp": True,
        "noise-multiplier": 1.0,
        "secagg": True,
        "fraction-evaluate": 0.0,  # each message starts a ClientApp process: keep rounds lean
        "out": str(out),
        "task": {"name": "tabular", "csv": str(root / "server-test.csv"), "schema": str(SCHEMA)},
        **run,
    }
    path.write_text(tomli_w.dumps({"run": settings}))
    return path


def submit(scenario: Path, server: Server, *extra: str) -> Process:
    return Process(["run", str(scenario), "--state-dir", str(server.state), *extra])


def finish(run: Process, timeout: float = RUN_LIMIT_S) -> int:
    """The exit status of `fedvault run`, which must end within `timeout`."""
    deadline = time.monotonic() + timeout
    while run.proc.poll() is None:
        if time.monotonic() > deadline:
            run.stop()
            raise AssertionError(f"run did not finish in {timeout} s:\n{run.output[-4000:]}")
        time.sleep(0.5)
    return run.stop()


def run_id_of(run: Process) -> str:
    for line in run.output.splitlines():
        if line.startswith("fedvault: started run "):
            return line.split()[3]
    raise AssertionError(f"no run id in:\n{run.output[-2000:]}")


def wait_for_round(out: Path, done_round: int, run: Process, timeout: float = RUN_LIMIT_S) -> int:
    """Wait until the run has checkpointed `done_round`; the checkpointed round."""
    state = out / "checkpoint" / "state.json"
    deadline = time.monotonic() + timeout
    while True:
        if state.exists() and (reached := json.loads(state.read_text())["round"]) >= done_round:
            return reached
        if run.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"round {done_round} never completed:\n{run.output[-4000:]}")
        time.sleep(0.3)


def kill_outright(process: Process) -> None:
    """SIGKILL the `fedvault` wrapper alone, as a crash would; everything below it must go."""
    tree = descendants(process.proc.pid)
    assert tree, "the wrapper had started no process"
    process.proc.send_signal(signal.SIGKILL)
    process.proc.wait(timeout=10)
    deadline = time.monotonic() + EXIT_GRACE_S
    while any(alive(pid, start) for pid, start in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [
        Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:120]
        for pid, start in tree
        if alive(pid, start)
    ]
    for pid, start in tree:
        if alive(pid, start):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes outlived their killed `fedvault` wrapper: {left}"


def crash(process: Process) -> None:
    """SIGKILL a `fedvault` wrapper and every process below it at once: the machine died."""
    tree = descendants(process.proc.pid)
    process.proc.send_signal(signal.SIGKILL)
    for pid, start in tree:
        if alive(pid, start):
            os.kill(pid, signal.SIGKILL)
    process.proc.wait(timeout=10)


def ledger_rows(path: Path, kind: str) -> list[dict]:
    with Ledger.open(path, kind="run") as ledger:
        assert ledger.verify() is None, "run ledger hash chain broken"
        return [row.payload for row in ledger.rows(kind)]


def ledger_kinds(path: Path) -> list[str]:
    """The kinds of all rows of a run ledger, in order."""
    with Ledger.open(path, kind="run") as ledger:
        return [row.kind for row in ledger.rows()]


def site_dp_rounds(state: Path, run_id: str) -> list[int]:
    """Rounds of the site's own reserved spending for one Flower run id."""
    (path,) = state.glob("ledger-*.sqlite")
    with sqlite3.connect(path) as db:
        query = "SELECT payload FROM rows WHERE kind = 'dp_reserve' ORDER BY seq"
        payloads = [json.loads(payload) for (payload,) in db.execute(query)]
    return [p["round"] for p in payloads if str(p["run_id"]) == run_id]


def node_ids(server: Server) -> dict[str, str]:
    """Site name -> the node id the SuperLink gave its key (from `fedvault register`)."""
    sites = tomllib.loads((server.state / "sites.toml").read_text())["sites"]
    return {name: row["node-id"] for name, row in sites.items()}


def check_report(out: Path, root: Path) -> dict:
    """report.json exists, verifies (ledgers, signature under the server's key) and is returned.

    The ServerApp created the signing key encrypted: it found the passphrase in the
    environment `fedvault server` gave the SuperLink.
    """
    assert is_encrypted(root / "fedvault-home" / "server" / "signing.key")
    public = root / "fedvault-home" / "server" / "signing.key.pub"
    code, err = in_process("report", "--verify", str(out), "--public-key", str(public))
    assert (code, err) == (0, "")
    assert (out / "report.html").is_file()
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def federation(root: Path) -> Iterator[dict]:
    """One server and three sites (site-a, site-b, site-c), each with its own clinic CSV."""
    server = start_server(root, root / "server", free_port(), free_port())
    states = {name: root / "sites" / name for name in ("site-a", "site-b", "site-c")}
    roster = enrol(root, server, states)
    sites: dict[str, Process] = {}
    try:
        for name, state in states.items():
            sites[name] = start_site(root, server, name, state, roster)
        yield {"server": server, "sites": sites}
    finally:
        for site in sites.values():
            if site.proc.poll() is None:
                assert site.stop() == 0
        assert server.process.stop() == 0


def modified_build(tmp_path: Path, marker: Path) -> Path:
    """The FedVault app with one line added to its ClientApp: it would write `marker`."""
    import subprocess

    app = tmp_path / "fedvault"
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        target = app / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO / name).read_bytes())
    client = app / "client" / "app.py"
    client.write_text(client.read_text() + f"\nopen({str(marker)!r}, 'w').write('ran')\n")
    return app


@pytest.mark.timeout(300)
def test_a_modified_build_is_refused_at_every_site_and_never_runs(federation, root, tmp_path):
    server = federation["server"]
    marker = tmp_path / "the-modified-client-ran"
    app = modified_build(tmp_path, marker)
    scenario = write_scenario(
        tmp_path / "scenario.toml", tmp_path / "run", root,
        **{"num-rounds": 1, "min-sites": 3, "secagg-timeout": 30.0, "round-timeout": 30.0},
    )  # fmt: skip
    run = submit(scenario, server, "--app", str(app))
    assert finish(run) != 0
    assert not marker.exists()
    refused = [site for site in federation["sites"].values() if "refuses app build" in site.output]
    assert len(refused) == 3, [s.output[-2000:] for s in federation["sites"].values()]
    assert "refuses app build sha256:" in run.output or "failed" in run.output


@pytest.mark.timeout(720)
def test_three_sites_dp_secure_aggregation_and_a_site_killed_mid_run(federation, root, tmp_path):
    """2 rounds with TLS, node auth, DP-SGD and SecAgg+; site-c is killed after round 1."""
    server, sites = federation["server"], federation["sites"]
    out = tmp_path / "run"
    scenario = write_scenario(
        tmp_path / "scenario.toml", out, root,
        **{"num-rounds": 2, "min-sites": 2, "secagg-timeout": 45.0, "round-timeout": 60.0},
    )  # fmt: skip
    run = submit(scenario, server)
    wait_for_round(out, 1, run)
    kill_outright(sites["site-c"])
    assert finish(run) == 0, run.output[-4000:]
    run_id = run_id_of(run)
    assert f"run {run_id} finished:completed" in run.output

    status = json.loads((out / "status.json").read_text())
    assert (status["status"], status["run_id"], status["rounds"]) == ("completed", run_id, 2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["round"] for m in metrics] == [0, 1, 2]
    assert [(m["sites-trained"], m["secagg-aborted"]) for m in metrics[1:]] == [
        (3, 0),
        (2, 0),
    ]
    assert set(load_file(out / "model.safetensors")) == set(
        k.split("/", 1)[1] for k in load_file(out / "checkpoint" / "tensors.safetensors")
    )

    ledger = out / "run-ledger.sqlite"
    secure = {p["round"]: p for p in ledger_rows(ledger, "secagg_round")}
    assert (secure[1]["sampled"], secure[1]["contributors"], secure[1]["dropped"]) == (3, 3, {})
    assert (secure[2]["sampled"], secure[2]["contributors"], secure[2]["aborted"]) == (3, 2, "")
    assert list(secure[2]["dropped"]) == [node_ids(server)["site-c"]]
    site_rounds = Counter((p["site"], p["round"]) for p in ledger_rows(ledger, "site_round"))
    expected = {(s, 1): 1 for s in ("site-a", "site-b", "site-c")}
    expected.update({("site-a", 2): 1, ("site-b", 2): 1})
    assert site_rounds == Counter(expected)
    assert [p["round"] for p in ledger_rows(ledger, "round_complete")] == [1, 2]
    for name in ("site-a", "site-b"):
        assert site_dp_rounds(root / "sites" / name, run_id) == [1, 2], name
    assert site_dp_rounds(root / "sites" / "site-c", run_id) == [1]
    for name in ("site-a", "site-b", "site-c"):  # created by ClientApps, under the passphrase
        assert is_encrypted(root / "sites" / name / "split.key"), name

    report = check_report(out, root)
    assert report["secure_aggregation"]["totals"]["dropouts"] == 1
    assert processes_naming(tmp_path) == []


@pytest.mark.timeout(720)
def test_server_killed_and_restarted_resumes_the_run(root, tmp_path):
    state, port, control = tmp_path / "server", free_port(), free_port()
    server = start_server(root, state, port, control)
    names = ("site-d", "site-e")
    roster = enrol(root, server, {n: tmp_path / n for n in names})
    # These sites allow plain training rounds (the run has no secure aggregation).
    sites = {
        n: start_site(root, server, n, tmp_path / n, roster, "--no-require-secagg") for n in names
    }
    out = tmp_path / "run"
    scenario = write_scenario(
        tmp_path / "scenario.toml", out, root,
        **{"num-rounds": 2, "min-sites": 2, "secagg": False, "round-timeout": 90.0},
    )  # fmt: skip
    try:
        run = submit(scenario, server)
        checkpointed = wait_for_round(out, 1, run)
        run_id = run_id_of(run)
        node_ids = registered_node_ids(state)
        crash(server.process)
        assert finish(run, timeout=120) != 0
        assert json.loads((out / "status.json").read_text())["status"] == "running"

        # The new SuperLink starts knowing no node; `fedvault server` registers the sites
        # again (new node ids), and each site starts its SuperNode again.
        server = start_server(root, state, port, control)
        assert "sites registered: site-d, site-e" in server.process.output
        renewed = registered_node_ids(state)
        assert renewed.keys() == node_ids.keys() and not set(renewed.values()) & set(
            node_ids.values()
        )
        for site in sites.values():
            site.wait_for("site connected again", also=server.process)
        resumed = submit(scenario, server, "--resume", run_id)
        assert finish(resumed) == 0, resumed.output[-4000:]
        new_run_id = run_id_of(resumed)
    finally:
        for site in sites.values():
            if site.proc.poll() is None:
                assert site.stop() == 0
        if server.process.proc.poll() is None:
            assert server.process.stop() == 0

    status = json.loads((out / "status.json").read_text())
    assert (status["status"], status["run_id"], status["rounds"]) == ("completed", run_id, 2)
    assert [m["round"] for m in json.loads((out / "metrics.json").read_text())] == [0, 1, 2]
    assert (out / "model.safetensors").is_file()
    ledger = out / "run-ledger.sqlite"
    assert [p["round"] for p in ledger_rows(ledger, "round_complete")] == [1, 2]
    assert ledger_rows(ledger, "resume") == [{"run-id": run_id, "from-round": checkpointed}]
    kinds = ledger_kinds(ledger)
    before_resume = kinds[: kinds.index("resume")]
    assert before_resume.count("round_complete") == checkpointed
    site_rounds = Counter((p["site"], p["round"]) for p in ledger_rows(ledger, "site_round"))
    assert site_rounds == Counter({(s, r): 1 for s in names for r in (1, 2)})
    last = {p["site"]: p for p in ledger_rows(ledger, "site_round") if p["round"] == 2}
    for name in names:
        before = site_dp_rounds(tmp_path / name, run_id)
        after = site_dp_rounds(tmp_path / name, new_run_id)
        # A site that trained in the round the crash interrupted has spent that budget: it
        # stays counted, and the resumed run trains that round again.
        assert before in (list(range(1, checkpointed + 1)), list(range(1, checkpointed + 2)))
        assert after == list(range(checkpointed + 1, 3))
        # The site reports its history merged (equal events folded) and how many releases.
        assert last[name]["releases"] == len(before) + len(after), "budget lost or doubled"
    check_report(out, root)
    assert processes_naming(tmp_path) == []
