"""`fedvault keys new`: a site's node-authentication key pair.

The site keeps the private key; the coordinator registers the `.pub` file with
`fedvault register`. Only registered keys may connect to the server.
"""

from __future__ import annotations

import argparse

from privacy.certs import new_node_key_pair


def _new(args: argparse.Namespace) -> int:
    pair = new_node_key_pair(args.out, force=args.force)
    print(f"private key: {pair.private_key}  (0600; stays at this site)")
    print(f"public key:  {pair.public_key}  (send to the coordinator for `fedvault register`)")
    print(f"fingerprint: {pair.fingerprint}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `fedvault keys`."""
    parser = subparsers.add_parser(
        "keys",
        help="create a site's node-authentication key pair",
        description="Manage node-authentication keys.",
    )
    actions = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = actions.add_parser(
        "new",
        help="create an EC P-384 key pair (OpenSSH format)",
        description="Create a site's node-authentication key pair: PATH (private key, "
        "OpenSSH format, mode 0600) and PATH.pub (public key, OpenSSH format). Prints the "
        "public key's SHA256 fingerprint, for the coordinator to confirm out of band.",
    )
    new.add_argument("--out", required=True, metavar="PATH", help="private key file to write")
    new.add_argument("--force", action="store_true", help="replace an existing key pair")
    new.set_defaults(func=_new)
