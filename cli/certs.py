"""`fedvault certs init`: the federation's private CA and the server's TLS certificate.

Run once by the coordinator. Sites receive only `ca.crt`; `ca.key` should then move to
offline storage, since whoever holds it can impersonate the server.
"""

from __future__ import annotations

import argparse

from privacy.certs import init_certificates


def _init(args: argparse.Namespace) -> int:
    paths = init_certificates(args.out, args.server_name, args.ip, force=args.force)
    print(f"CA certificate:     {paths.ca_cert}  (give this file to every site)")
    print(f"CA key:             {paths.ca_key}  (0600; keep offline once the server is set up)")
    print(f"server certificate: {paths.server_cert}")
    print(f"server key:         {paths.server_key}  (0600)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `fedvault certs`."""
    parser = subparsers.add_parser(
        "certs",
        help="create the federation's CA and server TLS certificate",
        description="Manage the TLS certificates of a deployment.",
    )
    actions = parser.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init",
        help="create a CA and a server certificate signed by it",
        description="Create a private CA (ca.crt, ca.key) and a server certificate "
        "(server.crt, server.key) signed by it, all ECDSA P-384. The certificate names "
        "--server-name, every --ip, and always localhost and 127.0.0.1 (the server's own "
        "processes connect over loopback). Private keys are written with mode 0600.",
    )
    init.add_argument("--out", required=True, metavar="DIR", help="directory to write into")
    init.add_argument(
        "--server-name",
        required=True,
        metavar="NAME",
        help="host name (or IP address) that sites use to reach the server",
    )
    init.add_argument(
        "--ip",
        action="append",
        default=[],
        metavar="IP",
        help="an extra IP address sites may use to reach the server (repeatable)",
    )
    init.add_argument(
        "--force",
        action="store_true",
        help="replace an existing CA (every site must then receive the new ca.crt)",
    )
    init.set_defaults(func=_init)
