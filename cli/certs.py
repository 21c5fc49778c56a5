"""`fedvault certs init`: the federation's private CA and the server's TLS certificate.

Run once by the coordinator. Sites receive only `ca.crt`; `ca.key` should then move to
offline storage, since whoever holds it can impersonate the server. Both keys are encrypted
under the coordinator's passphrase; an unencrypted `ca.key` is never written.
"""

from __future__ import annotations

import argparse

from cli.keys import add_passphrase_flag
from privacy.certs import init_certificates
from privacy.keystore import require_passphrase


def _init(args: argparse.Namespace) -> int:
    passphrase = require_passphrase(args.passphrase_file, "the CA key (it is never stored plain)")
    paths = init_certificates(
        args.out, args.server_name, args.ip, force=args.force, passphrase=passphrase
    )
    print(f"CA certificate:     {paths.ca_cert}  (give this file to every site)")
    print(
        f"CA key:             {paths.ca_key}  (0600, encrypted; keep offline once the server "
        "is set up)"
    )
    print(f"server certificate: {paths.server_cert}")
    print(f"server key:         {paths.server_key}  (0600, encrypted)")
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
        "processes connect over loopback). Private keys are written with mode 0600 and "
        "encrypted under the passphrase (PKCS#8); there is no way to write ca.key unencrypted.",
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
    add_passphrase_flag(init, "encrypts ca.key and server.key")
    init.set_defaults(func=_init)
