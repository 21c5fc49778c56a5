"""Identities for simulated sites: a key each, and the roster every one of them holds.

In a deployment each site creates its key (`fedvault keys new`) and receives the roster out
of band; in a simulation the runner plays that channel: it gives every simulated site a key
in its state directory (kept across runs, like the site's ledger) and writes the roster of
this run's sites into each site's directory, so the authenticated secure-aggregation
protocol runs exactly as deployed.
"""

from __future__ import annotations

from pathlib import Path

from client.site import IDENTITY_KEY_FILE
from privacy.certs import load_node_private_key, new_node_key_pair
from privacy.identity import ROSTER_FILE, write_roster


def give_identities(site_dirs: dict[str, Path], run_dir: Path | None = None) -> None:
    """Site name -> state directory: create missing keys, then each site's roster copy (and
    the run's, for its report)."""
    keys = {}
    for name, site_dir in site_dirs.items():
        key = site_dir / IDENTITY_KEY_FILE
        if not key.exists():
            new_node_key_pair(key)
        keys[name] = load_node_private_key(key).public_key()
    for directory in [*site_dirs.values(), *([run_dir] if run_dir else [])]:
        write_roster(directory / ROSTER_FILE, keys)
