"""`fedvault client`: run a site, i.e. Flower's SuperNode with the site's own settings.

The first start names the server, CA, key and (optionally) data, policy and budget; they
are saved in STATE_DIR (site.toml, supernode.toml), so later starts need only --state-dir.
Values given on the command line replace saved ones. The site's keys stay encrypted on disk:
the SuperNode reads a decrypted copy of the node key that is removed as soon as it has read
it, and the ClientApp processes (which sign with the node key and read the site's secrets)
find the passphrase in the environment they inherit from the SuperNode.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives.serialization import PrivateFormat

from cli.clientapp_server import write_launchers
from cli.keys import add_passphrase_flag, warn_unencrypted
from cli.processes import (
    Child,
    Supervisor,
    accepting,
    check_port_free,
    executable,
    flower_env,
    listening,
)
from client.approval import approved_builds
from client.site import DEFAULT_DELTA, DEFAULT_EVALUATION_NOISE, DEFAULT_MAX_EPSILON, SITE_KEYS
from client.supernode import (
    CONNECTED_MARK,
    DEFAULT_CLIENT_PORT,
    DEFAULT_THREADS,
    REJECTED_MARKS,
    SiteSettings,
    keep_roster,
    resolve_site_settings,
    site_roster,
    supernode_command,
    supernode_env,
    write_node_config,
    write_site_settings,
)
from privacy.certs import fingerprint as key_fingerprint
from privacy.certs import verify_tls_server
from privacy.errors import FedVaultError
from privacy.keystore import find_passphrase, load_secret, passphrase_env

CONNECT_TIMEOUT_S = 600.0
REJOIN_GRACE_S = 30.0
"""How long a key refused after a server restart may still be a server mid-start."""
REJOIN_PAUSE_S = 2.0
MAX_REJOINS = 5
REJOIN_WINDOW_S = 600.0
"""A SuperNode that stops more than MAX_REJOINS times in this window is failing."""
SITE_FLAGS = (
    "data-path",
    "policy-path",
    "dataset-id",
    "max-epsilon",
    "delta",
    "require-dp",
    "min-noise-multiplier",
    "max-epsilon-per-round",
    "min-client-noise-multiplier",
    "require-secagg",
    "allow-evaluation",
    "evaluation-noise-multiplier",
    "public-record-count",
    "min-secagg-peers",
    "allow-distributed-dp",
    "tolerated-colluders",
)


class KeyRejected(FedVaultError):
    """The server does not know this site's key (not registered, or unregistered)."""


def _rejected(fingerprint: str) -> Callable[[Child], FedVaultError]:
    def explain(child: Child) -> FedVaultError:
        if any(mark in line for line in child.output() for mark in REJECTED_MARKS):
            return KeyRejected(
                f"the server rejected this site's key {fingerprint}: ask the coordinator to "
                "register it (`fedvault register KEY.pub --name SITE`)"
            )
        return FedVaultError(
            f"flower-supernode exited with status {child.exited()}: {child.last_lines(3)}"
        )

    return explain


class SiteNode:
    """The site's SuperNode, started again whenever it stops after having connected.

    The server keeps no state across its restarts but its registry (server/superlink.py
    `reregister_sites`): a restarted server knows the site's key again, under a new node id,
    and answers the old SuperNode "unauthorized", upon which Flower's SuperNode stops
    itself. So a SuperNode that stops is started again with the same key; one whose key is
    still refused REJOIN_GRACE_S later has been unregistered, and the site stops.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        settings: SiteSettings,
        env: dict[str, str],
        node_config: Path,
        key_file: Callable[[], Path],
        fingerprint: str,
        timeout: float,
    ) -> None:
        self.supervisor = supervisor
        self.settings = settings
        self.env = env
        self.node_config = node_config
        self.key_file = key_file
        self.fingerprint = fingerprint
        self.timeout = timeout
        self.child: Child | None = None
        self.rejoins: deque[float] = deque(maxlen=MAX_REJOINS)

    def start(self) -> None:
        """Start the SuperNode and wait until it is connected (a FedVaultError if not)."""
        settings, supervisor = self.settings, self.supervisor
        command = supernode_command(
            settings, self.node_config, executable("flower-supernode"), self.key_file()
        )
        node = self.child = supervisor.start("supernode", command, self.env)
        # Flower reads the key once, while parsing its arguments, before it opens its local
        # ClientApp API port; it keeps the key in memory across reconnections.
        supervisor.wait_until(
            node,
            lambda: listening("127.0.0.1", settings.port),
            self.timeout,
            f"its local ClientApp API on port {settings.port}",
            on_exit=_rejected(self.fingerprint),
        )
        supervisor.remove_key_files()
        supervisor.wait_until(
            node,
            lambda: any(CONNECTED_MARK in line for line in node.output()),
            self.timeout,
            f"connection to the server at {settings.server}",
            on_exit=_rejected(self.fingerprint),
        )

    def rejoin(self) -> None:
        """Start a SuperNode again after the connected one stopped."""
        assert self.child is not None
        now = time.monotonic()
        if len(self.rejoins) == MAX_REJOINS and now - self.rejoins[0] < REJOIN_WINDOW_S:
            raise FedVaultError(
                f"flower-supernode stopped {MAX_REJOINS + 1} times within "
                f"{REJOIN_WINDOW_S:.0f} s: {self.child.last_lines(3)}"
            )
        self.rejoins.append(now)
        print(
            f"fedvault: flower-supernode stopped (status {self.child.exited()}); connecting "
            "again (a restarted server knows this site under a new node id)",
            flush=True,
        )
        self.supervisor.forget(self.child)
        refused_since = None
        while True:
            try:
                self.start()
                break
            except KeyRejected:
                assert self.child is not None
                self.supervisor.forget(self.child)
                refused_since = refused_since or time.monotonic()
                if time.monotonic() - refused_since > REJOIN_GRACE_S:
                    raise
                time.sleep(REJOIN_PAUSE_S)
        print(f"fedvault: site connected again to {self.settings.server}", flush=True)


def _raw_secrets(state_dir: Path) -> list[tuple[Path, str]]:
    """The site's 32-byte secrets, which its ClientApp creates when it first needs them."""
    from client.data import SPLIT_KEY_FILE
    from privacy.anonymization.pseudonymize import KEY_FILE

    return [(state_dir / SPLIT_KEY_FILE, "split key"), (state_dir / KEY_FILE, "pseudonym key")]


def _client(args: argparse.Namespace) -> int:
    passphrase = find_passphrase(args.passphrase_file)
    state_dir = Path(args.state_dir).resolve()
    site = {key: getattr(args, key.replace("-", "_")) for key in SITE_FLAGS}
    settings = resolve_site_settings(
        state_dir,
        site,
        passphrase=passphrase,
        server=args.server,
        ca=args.ca,
        key=args.key,
        port=args.port,
        threads=args.threads,
    )
    settings = replace(settings, site={**settings.site, "identity-key": settings.key})
    identity, roster = site_roster(state_dir, args.roster, settings.key, passphrase)
    raw_secrets = _raw_secrets(state_dir)
    for path, what in raw_secrets:  # a wrong passphrase fails here, not in the first round
        if path.exists():
            load_secret(path, what, passphrase)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keep_roster(state_dir, roster)
    write_site_settings(state_dir, settings)
    node_config = write_node_config(state_dir)
    fingerprint = key_fingerprint(identity.private_key.public_key())
    warn_unencrypted([(Path(settings.key), "node key"), *raw_secrets], passphrase)
    approved = approved_builds(state_dir)
    if not approved:
        print(
            "fedvault: warning: no app build approved yet; every run will be refused "
            f"(fedvault approve HASH --state-dir {state_dir})",
            file=sys.stderr,
            flush=True,
        )
    if not verify_tls_server(settings.server, settings.ca):
        print(f"fedvault: {settings.server} not reachable yet; retrying", flush=True)
    check_port_free("127.0.0.1", settings.port)
    env = supernode_env(settings, flower_env(state_dir / "flwr"))
    env.update(passphrase_env(args.passphrase_file))
    with Supervisor() as supervisor:
        tasks = supervisor.socket_dir() / "clientapp.sock"
        clientapp = supervisor.start(
            "clientapp", [sys.executable, "-m", "cli.clientapp_server", str(tasks)], env
        )
        launchers = write_launchers(state_dir, sys.executable, tasks)
        env["PATH"] = os.pathsep.join([str(launchers), env["PATH"]])
        node = SiteNode(
            supervisor,
            settings,
            env,
            node_config,
            lambda: supervisor.key_file(
                Path(settings.key), "node key", passphrase, PrivateFormat.OpenSSH, state_dir
            ),
            fingerprint,
            args.connect_timeout,
        )
        node.start()
        supervisor.wait_until(  # it imported its modules while the SuperNode connected
            clientapp, lambda: accepting(tasks), args.connect_timeout, "its ClientApp process"
        )
        print(
            f"fedvault: site connected to {settings.server} as {identity.name} with key "
            f"{fingerprint}; {len(approved)} approved app build(s). Stop with Ctrl-C.",
            flush=True,
        )
        while (exited := supervisor.wait_for_exit_or_signal()) is node.child:
            node.rejoin()
        if exited is not None:
            print(
                f"fedvault: error: {exited.name} exited with status {exited.exited()}",
                file=sys.stderr,
            )
            return 1
    print("fedvault: site stopped", flush=True)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `fedvault client`."""
    parser = subparsers.add_parser(
        "client",
        help="run a site: Flower SuperNode with this site's data, policy, budget and floor",
        description="Start flower-supernode against the server with TLS (--ca) and node "
        "authentication (--key). The site's data, anonymization policy, privacy budget and "
        "privacy floor are set here, never by the server: a request below the floor is "
        "refused before any data is touched, and recorded in the site's ledger. They are "
        "saved in STATE_DIR (site.toml, supernode.toml); the ClientApp reads them from "
        "there. Streams the logs; Ctrl-C or SIGTERM stops everything it started.",
    )
    parser.add_argument(
        "--state-dir",
        required=True,
        metavar="DIR",
        help="the site's state: settings, privacy ledger, keys (created 0700); kept across runs",
    )
    parser.add_argument("--server", metavar="HOST:PORT", help="the server's site address")
    parser.add_argument("--ca", metavar="CA_CERT", help="the federation's ca.crt")
    parser.add_argument("--key", metavar="KEY", help="private key from `fedvault keys new`")
    add_passphrase_flag(
        parser, "decrypts the node key and the site's secrets, and encrypts new ones"
    )
    parser.add_argument(
        "--roster",
        metavar="ROSTER",
        help="the federation roster (every site's name and key) from the coordinator; copied "
        "into STATE_DIR, needed on the first start. Check every fingerprint in it with its "
        "site: secure aggregation accepts only peers it lists",
    )
    site = parser.add_argument_group(
        "the site's own settings (saved in site.toml; a later start keeps what is not given)"
    )
    site.add_argument("--data", dest="data_path", metavar="FILE.csv", help="training data")
    site.add_argument(
        "--policy", dest="policy_path", metavar="ANON.toml", help=SITE_KEYS["policy-path"][1]
    )
    site.add_argument(
        "--dataset-id",
        metavar="NAME",
        help="the name the privacy ledger is kept under (default: the data file's path): "
        "a new split, schema or appended rows continue the same budget",
    )
    site.add_argument(
        "--max-epsilon",
        type=float,
        metavar="E",
        help="total privacy budget over every run on this data (default "
        f"{DEFAULT_MAX_EPSILON:g}); training that would exceed it is declined",
    )
    site.add_argument(
        "--delta", type=float, metavar="D", help=f"delta of the budget (default {DEFAULT_DELTA:g})"
    )
    site.add_argument(
        "--require-dp",
        action=argparse.BooleanOptionalAction,
        help="refuse training without DP-SGD (default: on)",
    )
    site.add_argument(
        "--min-noise-multiplier",
        type=float,
        metavar="SIGMA",
        help=SITE_KEYS["min-noise-multiplier"][1],
    )
    site.add_argument(
        "--max-epsilon-per-round",
        type=float,
        metavar="E",
        help=SITE_KEYS["max-epsilon-per-round"][1],
    )
    site.add_argument(
        "--min-client-noise-multiplier",
        type=float,
        metavar="SIGMA",
        help=SITE_KEYS["min-client-noise-multiplier"][1],
    )
    site.add_argument(
        "--require-secagg",
        action=argparse.BooleanOptionalAction,
        help="refuse training whose update would leave the site outside secure aggregation "
        "(default: on)",
    )
    site.add_argument(
        "--allow-evaluation",
        action=argparse.BooleanOptionalAction,
        help="answer the server's evaluation requests on this site's validation rows, "
        "with DP noise, spending budget (default: off)",
    )
    site.add_argument(
        "--evaluation-noise-multiplier",
        type=float,
        metavar="SIGMA",
        help=f"noise of each evaluation release (default {DEFAULT_EVALUATION_NOISE:g})",
    )
    site.add_argument(
        "--allow-distributed-dp",
        action=argparse.BooleanOptionalAction,
        help="take part in distributed DP-SGD, where each site adds a share of the noise "
        "and only the secure sum carries all of it (default: on)",
    )
    site.add_argument(
        "--tolerated-colluders",
        type=int,
        metavar="N",
        help="distributed DP: refuse runs whose noise shares assume fewer than N sites "
        "colluding with the server (default 0)",
    )
    site.add_argument(
        "--min-secagg-peers",
        type=int,
        metavar="N",
        help="refuse secure aggregation with fewer authenticated peers (default 1)",
    )
    site.add_argument(
        "--public-record-count",
        action=argparse.BooleanOptionalAction,
        help="declare this site's number of records public: sent to the server and used as "
        "its aggregation weight (default: off, equal weights)",
    )
    parser.add_argument(
        "--port",
        type=int,
        metavar="PORT",
        help=f"local port for Flower's ClientApp API (default {DEFAULT_CLIENT_PORT}; "
        "one per site on a shared machine)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help=f"torch threads of each ClientApp process (default {DEFAULT_THREADS}: several "
        "sites or other work on one machine; up to the cores of a machine the site has alone)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=CONNECT_TIMEOUT_S,
        metavar="SECONDS",
        help="give up if not connected within this time; 0 waits forever (default: %(default)s)",
    )
    parser.set_defaults(func=_client)
