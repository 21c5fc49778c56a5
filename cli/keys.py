"""`fedvault keys new` and `keys encrypt`: a site's node-authentication key pair, keys at rest.

The site keeps the private key; the coordinator registers the `.pub` file with
`fedvault register`. Only registered keys may connect to the server. Private keys are
encrypted under the party's passphrase by default (privacy/keystore.py); `keys encrypt`
brings a key from before that under it. The passphrase flag and the warning for an
unencrypted key live here, for every deployment command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from privacy.certs import new_node_key_pair
from privacy.keystore import (
    PASSPHRASE_ENV,
    PASSPHRASE_FILE_ENV,
    PASSPHRASE_SOURCES,
    encrypt_file,
    is_encrypted,
    require_passphrase,
)


def add_passphrase_flag(parser: argparse.ArgumentParser, purpose: str) -> None:
    """`--passphrase-file FILE`: the passphrase never goes on a command line (`ps` shows it)."""
    parser.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help=f"file whose first line is the passphrase that {purpose} (mode 0600 or 0400; "
        f"default: the file ${PASSPHRASE_FILE_ENV} names, else ${PASSPHRASE_ENV})",
    )


def warn_unencrypted(secrets: Iterable[tuple[Path, str]], passphrase: bytes | None) -> None:
    """One stderr line per key stored unencrypted, and one if there is no passphrase at all.

    Such keys still load, so deployments from before keys were encrypted keep working; the
    line says how to encrypt them.
    """
    if passphrase is None:
        print(
            f"fedvault: warning: no passphrase ({PASSPHRASE_SOURCES}): keys created from now "
            "on are stored unencrypted",
            file=sys.stderr,
            flush=True,
        )
    for path, what in secrets:
        if path.exists() and not is_encrypted(path):
            print(
                f"fedvault: warning: {what} {path} is stored unencrypted; encrypt it with "
                f"`fedvault keys encrypt {path}`",
                file=sys.stderr,
                flush=True,
            )


def _new(args: argparse.Namespace) -> int:
    passphrase = None if args.unencrypted else require_passphrase(args.passphrase_file, "the key")
    pair = new_node_key_pair(args.out, force=args.force, passphrase=passphrase)
    state = "unencrypted" if passphrase is None else "encrypted under the passphrase"
    print(f"private key: {pair.private_key}  (0600, {state}; stays at this site)")
    print(f"public key:  {pair.public_key}  (send to the coordinator for `fedvault register`)")
    print(f"fingerprint: {pair.fingerprint}")
    return 0


def _encrypt(args: argparse.Namespace) -> int:
    passphrase = require_passphrase(args.passphrase_file, "the keys")
    for name in args.keys:
        path = Path(name).resolve()
        done = encrypt_file(path, "key", passphrase)
        print(f"{'encrypted' if done else 'already encrypted'}: {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `fedvault keys`."""
    parser = subparsers.add_parser(
        "keys",
        help="create a site's node-authentication key pair; encrypt keys at rest",
        description="Manage node-authentication keys and keys at rest.",
    )
    actions = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = actions.add_parser(
        "new",
        help="create an EC P-384 key pair",
        description="Create a site's node-authentication key pair: PATH (private key, mode "
        "0600, encrypted under the passphrase as PKCS#8 PEM; OpenSSH with --unencrypted) and "
        "PATH.pub (public key, OpenSSH format). Prints the public key's SHA256 fingerprint, "
        "for the coordinator to confirm out of band.",
    )
    new.add_argument("--out", required=True, metavar="PATH", help="private key file to write")
    new.add_argument("--force", action="store_true", help="replace an existing key pair")
    add_passphrase_flag(new, "encrypts the private key")
    new.add_argument(
        "--unencrypted",
        action="store_true",
        help="write the private key unencrypted (OpenSSH), for a SuperNode that reads it "
        "itself, e.g. from a Kubernetes Secret",
    )
    new.set_defaults(func=_new)
    encrypt = actions.add_parser(
        "encrypt",
        help="encrypt existing unencrypted keys in place",
        description="Rewrite each unencrypted private key (CA, server, node, report signing "
        "key) or 32-byte secret (pseudonym.key, split.key) encrypted under the passphrase, "
        "atomically and 0600. What each key decrypts to stays the same, so certificates, "
        "registrations and pseudonyms stay valid. Keys already encrypted are left alone.",
    )
    encrypt.add_argument("keys", nargs="+", metavar="KEY", help="a key file to encrypt")
    add_passphrase_flag(encrypt, "encrypts the keys")
    encrypt.set_defaults(func=_encrypt)
