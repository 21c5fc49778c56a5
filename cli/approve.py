"""`fedvault approve`: the app builds this site agrees to serve.

A site's ClientApp process answers only builds whose hash is on this list
(client/approval.py). The hash comes from the coordinator (`fedvault run` prints it) and is
checked against a copy of the released source (`--app DIR` builds it here, the same way).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _approve(args: argparse.Namespace) -> int:
    from client.approval import app_build_hash, approve, approved_builds, revoke
    from privacy.errors import FedVaultError

    state = Path(args.state_dir).expanduser().resolve()
    if args.list:
        builds = approved_builds(state)
        for digest, info in sorted(builds.items(), key=lambda item: item[1].get("approved", "")):
            print(f"{digest}  approved {info.get('approved', '?')}  {info.get('note', '')}")
        if not builds:
            print(f"no app build approved in {state}")
        return 0
    if args.revoke:
        print(f"revoked app build {revoke(state, args.revoke)} at {state}")
        return 0
    if args.app is not None:
        digest = app_build_hash(args.app)
        if args.hash and args.hash.lower().removeprefix("sha256:") != digest:
            raise FedVaultError(
                f"the app in {args.app} builds to {digest}, not to the hash given ({args.hash}): "
                "the coordinator's build differs from this source"
            )
    elif args.hash:
        digest = args.hash
    else:
        raise FedVaultError("give the build hash to approve, or --app DIR to build it here")
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    digest = approve(state, digest, args.note)
    print(f"approved app build {digest} at {state}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `fedvault approve`."""
    parser = subparsers.add_parser(
        "approve",
        help="approve an app build this site will serve (or list / revoke approvals)",
        description="Add an app build's SHA-256 to the site's list of approved builds. The "
        "site's ClientApp process refuses every other build before any of its code runs. "
        "`fedvault run` prints the hash it submits; with --app DIR the hash is computed here "
        "from a copy of the released source, and must equal HASH if both are given.",
    )
    parser.add_argument("hash", nargs="?", metavar="HASH", help="the build hash (sha256:...)")
    parser.add_argument("--state-dir", required=True, metavar="DIR", help="the site's state dir")
    parser.add_argument("--app", type=Path, metavar="DIR", help="build the hash from this app")
    parser.add_argument("--note", default="", metavar="TEXT", help="why, e.g. the release tag")
    parser.add_argument("--list", action="store_true", help="list the approved builds")
    parser.add_argument("--revoke", metavar="HASH", help="remove a build from the list")
    parser.set_defaults(func=_approve)
