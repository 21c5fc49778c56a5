"""`fedvault client`: run a site, i.e. Flower's SuperNode with the site's own settings.

The first start names the server, CA, key and (optionally) data, policy and budget; they
are saved in STATE_DIR (site.toml, supernode.toml), so later starts need only --state-dir.
Values given on the command line replace saved ones.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from cli.processes import Child, Supervisor, check_port_free, executable, flower_env
from client.supernode import (
    CONNECTED_MARK,
    DEFAULT_CLIENT_PORT,
    REJECTED_MARKS,
    key_fingerprint,
    resolve_site_settings,
    supernode_command,
    write_node_config,
    write_site_settings,
)
from privacy.certs import verify_tls_server
from privacy.errors import FedVaultError

CONNECT_TIMEOUT_S = 600.0


def _rejected(fingerprint: str) -> Callable[[Child], FedVaultError]:
    def explain(child: Child) -> FedVaultError:
        if any(mark in line for line in child.output() for mark in REJECTED_MARKS):
            return FedVaultError(
                f"the server rejected this site's key {fingerprint}: ask the coordinator to "
                "register it (`fedvault register KEY.pub --name SITE`)"
            )
        return FedVaultError(
            f"flower-supernode exited with status {child.exited()}: {child.last_lines(3)}"
        )

    return explain


def _client(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    settings = resolve_site_settings(
        state_dir,
        server=args.server,
        ca=args.ca,
        key=args.key,
        data_path=args.data,
        policy_path=args.policy,
        max_epsilon=args.max_epsilon,
        delta=args.delta,
        port=args.port,
    )
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_site_settings(state_dir, settings)
    node_config = write_node_config(state_dir, settings)
    fingerprint = key_fingerprint(settings)
    if not verify_tls_server(settings.server, settings.ca):
        print(f"fedvault: {settings.server} not reachable yet; retrying", flush=True)
    check_port_free("127.0.0.1", settings.port)
    env = flower_env(state_dir / "flwr")
    command = supernode_command(settings, node_config, executable("flower-supernode"))
    with Supervisor() as supervisor:
        node = supervisor.start("supernode", command, env)
        supervisor.wait_until(
            node,
            lambda: any(CONNECTED_MARK in line for line in node.output()),
            args.connect_timeout,
            f"connection to the server at {settings.server}",
            on_exit=_rejected(fingerprint),
        )
        print(
            f"fedvault: site connected to {settings.server} with key {fingerprint}. "
            "Stop with Ctrl-C.",
            flush=True,
        )
        exited = supervisor.wait_for_exit_or_signal()
        if exited is not None:
            print(
                f"fedvault: error: flower-supernode exited with status {exited.exited()}",
                file=sys.stderr,
            )
            return 1
    print("fedvault: site stopped", flush=True)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `fedvault client`."""
    parser = subparsers.add_parser(
        "client",
        help="run a site: Flower SuperNode with this site's data, policy and budget",
        description="Start flower-supernode against the server with TLS (--ca) and node "
        "authentication (--key). The site's data, anonymization policy and privacy budget "
        "are set here, never by the server; they are saved in STATE_DIR (site.toml, "
        "supernode.toml) and passed to the ClientApp as node config (state-dir, data-path, "
        "policy-path, max-epsilon, delta). Streams the logs; Ctrl-C or SIGTERM stops "
        "everything it started.",
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
    parser.add_argument("--data", metavar="FILE.csv", help="the site's training data")
    parser.add_argument("--policy", metavar="ANON.toml", help="the site's anonymization policy")
    parser.add_argument(
        "--max-epsilon",
        type=float,
        metavar="E",
        help="the site's total privacy budget: it declines training that would exceed it",
    )
    parser.add_argument("--delta", type=float, metavar="D", help="delta of the site's budget")
    parser.add_argument(
        "--port",
        type=int,
        metavar="PORT",
        help=f"local port for Flower's ClientApp API (default {DEFAULT_CLIENT_PORT}; "
        "one per site on a shared machine)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=CONNECT_TIMEOUT_S,
        metavar="SECONDS",
        help="give up if not connected within this time; 0 waits forever (default: %(default)s)",
    )
    parser.set_defaults(func=_client)
