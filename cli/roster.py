"""`fedvault roster`: the federation's roster, made from the sites the coordinator registered.

Every site needs the roster (names and identity keys of all sites) to accept only real
peers in secure aggregation and to have its own name. The coordinator writes it from its
registrations and hands it to each site out of band, beside ca.crt; each site checks every
fingerprint in it with that site before starting (`fedvault client --roster`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _roster(args: argparse.Namespace) -> int:
    from privacy.errors import FedVaultError
    from privacy.identity import ROSTER_FILE, public_key_from_line, write_roster
    from server.superlink import read_sites

    state = Path(args.state_dir).expanduser().resolve()
    sites = read_sites(state)
    if not sites:
        raise FedVaultError(f"no site is registered in {state} (fedvault register KEY.pub ...)")
    keys = {
        name: public_key_from_line(site.public_key, f"{state} site {name}")
        for name, site in sites.items()
    }
    out = Path(args.out) if args.out else state / ROSTER_FILE
    write_roster(out, keys)
    if args.out:
        write_roster(state / ROSTER_FILE, keys)  # the copy `fedvault run` gives the report
    for name, site in sorted(sites.items()):
        print(f"{name}  {site.fingerprint}")
    print(f"wrote the roster of {len(sites)} sites to {out}; give it to every site with ca.crt")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `fedvault roster`."""
    parser = subparsers.add_parser(
        "roster",
        help="write the federation roster (every registered site's name and key)",
        description="Write roster.toml from the sites registered with `fedvault register`: "
        "each site's name, its public key and the key's fingerprint. Give it to every site "
        "out of band, with ca.crt (`fedvault client --roster`); each site checks every "
        "fingerprint with its site. A copy stays in the server's state directory, where "
        "`fedvault run` finds it for the report.",
    )
    parser.add_argument(
        "--state-dir", required=True, metavar="DIR", help="the server's --state-dir"
    )
    parser.add_argument(
        "-o", "--out", metavar="FILE", help="where to write it (default: STATE_DIR/roster.toml)"
    )
    parser.set_defaults(func=_roster)
