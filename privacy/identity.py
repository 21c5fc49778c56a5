"""Who is who in a federation: each site's identity key, and the roster that names them.

A site's identity key is its node key (EC P-384, the key it authenticates to the SuperLink
with). The roster lists every site's name and public key; it is made by the coordinator from
its registrations, reaches each site out of band (as ca.crt does), and each site checks every
entry's fingerprint with that site before using it. The server never carries it, so it
cannot add, swap or drop an identity: whatever the server relays between sites (secure-
aggregation keys, survivor sets, ledger heads) is signed with these keys and checked against
the site's own copy of the roster.

Every signature covers a domain-separated byte string (`signed_bytes`), so a signature made
for one purpose can never be replayed as another.
"""

from __future__ import annotations

import base64
import binascii
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from privacy.atomic import atomic_write_text
from privacy.certs import CURVE, fingerprint, openssh_public_key
from privacy.errors import FedVaultError

ROSTER_FILE = "roster.toml"
_DOMAIN = b"fedvault/identity/v1/"
_SIGNATURE = ec.ECDSA(hashes.SHA384())


def signed_bytes(purpose: str, *fields: bytes | str | int) -> bytes:
    """The exact bytes a signature for `purpose` covers: each field length-prefixed."""
    parts = [_DOMAIN, purpose.encode("ascii"), b"\x00"]
    for value in fields:
        if isinstance(value, int):
            raw = value.to_bytes(8, "big", signed=False)
        elif isinstance(value, str):
            raw = value.encode("utf-8")
        else:
            raw = bytes(value)
        parts += [len(raw).to_bytes(4, "big"), raw]
    return b"".join(parts)


def ledger_head_bytes(site: str, dataset_sha256: str, head: str, rows: int) -> bytes:
    """What a site signs after each release: its ledger's head and length, for its data."""
    return signed_bytes("ledger-head", site, dataset_sha256, head, rows)


def public_key_from_line(line: str, where: str) -> ec.EllipticCurvePublicKey:
    """An EC P-384 public key from one OpenSSH line; one error naming `where` otherwise."""
    try:
        key = serialization.load_ssh_public_key(line.strip().encode("ascii"))
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError):
        raise FedVaultError(f"{where}: not an OpenSSH public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, CURVE):
        raise FedVaultError(f"{where}: not an EC P-384 (ecdsa-sha2-nistp384) key")
    return key


def verify(public_key: ec.EllipticCurvePublicKey, data: bytes, signature: bytes) -> bool:
    """Whether `signature` is the key's signature over `data`."""
    try:
        public_key.verify(signature, data, _SIGNATURE)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class Roster:
    """Site name -> public key, as the site's own copy of the roster lists them."""

    sites: Mapping[str, ec.EllipticCurvePublicKey]

    @classmethod
    def load(cls, path: str | Path) -> Roster:
        """Read a roster file; a missing, malformed or duplicated entry is one error line."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FedVaultError(f"roster not found: {path}") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise FedVaultError(f"cannot read roster {path}: {exc}") from None
        table = raw.get("sites")
        if not isinstance(table, dict) or not table:
            raise FedVaultError(f"roster {path} lists no [sites.NAME] entries")
        sites: dict[str, ec.EllipticCurvePublicKey] = {}
        seen: dict[str, str] = {}
        for name, entry in table.items():
            where = f"roster {path}, site {name!r}"
            if not isinstance(entry, dict) or not isinstance(entry.get("public-key"), str):
                raise FedVaultError(f'{where}: needs public-key = "ecdsa-sha2-nistp384 ..."')
            key = public_key_from_line(entry["public-key"], where)
            print_ = fingerprint(key)
            if "fingerprint" in entry and entry["fingerprint"] != print_:
                raise FedVaultError(
                    f"{where}: its fingerprint {entry['fingerprint']} does not match its key "
                    f"({print_})"
                )
            if print_ in seen:
                raise FedVaultError(f"{where}: the same key as site {seen[print_]!r}")
            seen[print_] = name
            sites[name] = key
        return cls(sites)

    def name_of(self, public_key: ec.EllipticCurvePublicKey) -> str | None:
        """The roster name of `public_key`, None if it is not on the roster."""
        wanted = fingerprint(public_key)
        for name, key in self.sites.items():
            if fingerprint(key) == wanted:
                return name
        return None

    def key_of(self, name: str) -> ec.EllipticCurvePublicKey | None:
        return self.sites.get(name)


def write_roster(path: str | Path, entries: Mapping[str, ec.EllipticCurvePublicKey]) -> None:
    """Write a roster file: one [sites.NAME] table with its key and fingerprint each."""
    lines = [
        "# FedVault federation roster: every site's name and identity key.",
        "# Check each fingerprint with that site (phone, signed e-mail) before you use it.",
        "",
    ]
    for name, key in sorted(entries.items()):
        lines += [
            f'[sites."{name}"]',
            f'public-key = "{openssh_public_key(key).decode("ascii")}"',
            f'fingerprint = "{fingerprint(key)}"',
            "",
        ]
    atomic_write_text(path, "\n".join(lines))


@dataclass(frozen=True)
class Identity:
    """A site's own identity: its roster name, its private key and its copy of the roster."""

    name: str
    private_key: ec.EllipticCurvePrivateKey
    roster: Roster

    @classmethod
    def of(cls, private_key: ec.EllipticCurvePrivateKey, roster: Roster) -> Identity:
        """This site's identity: the roster must list its key, under exactly one name."""
        name = roster.name_of(private_key.public_key())
        if name is None:
            raise FedVaultError(
                f"this site's key {fingerprint(private_key.public_key())} is not on its roster: "
                "ask the coordinator for a roster that lists it"
            )
        return cls(name, private_key, roster)

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data, _SIGNATURE)


def encode_signature(signature: bytes) -> str:
    return base64.b64encode(signature).decode("ascii")


def decode_signature(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        return b""
