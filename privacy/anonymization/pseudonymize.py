"""Keyed pseudonyms: HMAC-SHA256 of a value under the site's secret key.

A plain or salted hash of a phone number or national id can be reversed by hashing every
possible value; a keyed MAC cannot without the key. The key is 32 random bytes in
`<state_dir>/pseudonym.key` (permissions 0600), created on first use and never written
anywhere else, so the same value gets the same pseudonym in every file a site exports (records
stay linkable inside the site) while nobody outside the site can link or reverse them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import pandas as pd

from privacy.errors import FedVaultError
from privacy.keystore import load_or_create_secret

KEY_FILE = "pseudonym.key"
PSEUDONYM_HEX = 24
"""Pseudonyms keep 96 bits of the MAC: collisions are negligible for any site's table."""

_CONTEXT = b"fedvault pseudonym v1\x00"


def load_or_create_key(state_dir: str | os.PathLike[str]) -> bytes:
    """The site's pseudonymization key, created (0600) in `state_dir` if it does not exist."""
    return load_or_create_secret(Path(state_dir) / KEY_FILE, "pseudonym key")


def pseudonym(value: str, key: bytes) -> str:
    """The pseudonym of one value (surrounding spaces ignored)."""
    mac = hmac.digest(key, _CONTEXT + value.strip().encode("utf-8"), hashlib.sha256)
    return mac.hex()[:PSEUDONYM_HEX]


def pseudonymize_series(series: pd.Series, key: bytes) -> pd.Series:
    """Pseudonyms for every cell of a column; empty and missing cells stay empty."""
    if len(key) < 16:
        raise FedVaultError("a pseudonymization key must have at least 16 bytes")
    text = series.astype(object).where(series.notna(), "").map(str)
    mapping = {value: pseudonym(value, key) if value.strip() else "" for value in text.unique()}
    return text.map(mapping).astype(object)
