"""Keyed pseudonyms: HMAC-SHA256 of a value under the site's secret key.

A plain or salted hash of a phone number or national id can be reversed by hashing every
possible value; a keyed MAC cannot without the key. The key is 32 random bytes in
`<state_dir>/pseudonym.key` (permissions 0600), created on first use and never written
anywhere else, so the same value gets the same pseudonym in every file a site exports (records
stay linkable inside the site) while nobody outside the site can link or reverse them.

Because a pseudonym is a stable per-person key, a table with one is pseudonymized, not
anonymized: whoever holds two exports can join them on it.

Values are normalised before the MAC (`normalize_identifier`), so that one person typed two
ways ("123-45-6789", "123 45 6789", "123456789") is one pseudonym, and one person is one person
when cleansing counts records per person.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import unicodedata
from pathlib import Path

import pandas as pd

from privacy.errors import FedVaultError
from privacy.keystore import load_or_create_secret

KEY_FILE = "pseudonym.key"
PSEUDONYM_HEX = 24
"""Pseudonyms keep 96 bits of the MAC: collisions are negligible for any site's table."""

_CONTEXT = b"fedvault pseudonym v2\x00"
"""v2: values are normalised first (v1 only stripped them), so v1 pseudonyms differ."""

_SEPARATORS = re.compile(r"[\s\-.()\u2010-\u2015\u2212]+")
"""Whitespace, ASCII and Unicode dashes, the minus sign, dots and parentheses."""


def load_or_create_key(state_dir: str | os.PathLike[str]) -> bytes:
    """The site's pseudonymization key, created (0600) in `state_dir` if it does not exist.

    Whoever holds it can reverse every pseudonym by trying values, so it is encrypted under
    the site's passphrase whenever the environment provides one (privacy/keystore.py).
    """
    return load_or_create_secret(Path(state_dir) / KEY_FILE, "pseudonym key")


def normalize_identifier(value: str) -> str:
    """The form of an identifier that is hashed: NFKC, casefolded, separators removed.

    Separators are whitespace, dashes, dots and parentheses, so "(617) 555-0101" and
    "6175550101", or "AB 12.34" and "ab1234", are one value. "+" and "@" are kept: they carry
    meaning in phone numbers and emails.
    """
    return _SEPARATORS.sub("", unicodedata.normalize("NFKC", value).casefold())


def pseudonym(value: str, key: bytes) -> str:
    """The pseudonym of one value, after `normalize_identifier`."""
    normalized = normalize_identifier(value).encode("utf-8")
    return hmac.digest(key, _CONTEXT + normalized, hashlib.sha256).hex()[:PSEUDONYM_HEX]


def pseudonymize_series(series: pd.Series, key: bytes) -> pd.Series:
    """Pseudonyms for every cell of a column; cells with nothing left to hash stay empty."""
    if len(key) < 16:
        raise FedVaultError("a pseudonymization key must have at least 16 bytes")
    text = series.astype(object).where(series.notna(), "").map(str)
    mapping = {
        value: pseudonym(value, key) if normalize_identifier(value) else ""
        for value in text.unique()
    }
    return text.map(mapping).astype(object)
