"""Where FedVault keeps its own state on a machine: $FEDVAULT_HOME, by default ~/.fedvault.

Keys (the report's signing key, a site's pseudonym key) and site state live under it, so one
variable moves all of them: tests and containers point it elsewhere, and a fresh machine still
has a place to create them on first use. One lookup, so no two commands can disagree on it.
"""

from __future__ import annotations

import os
from pathlib import Path


def fedvault_home() -> Path:
    """$FEDVAULT_HOME if set and non-empty, else ~/.fedvault (not created here)."""
    return Path(os.environ.get("FEDVAULT_HOME") or Path.home() / ".fedvault")
