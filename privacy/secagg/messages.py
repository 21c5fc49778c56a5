"""Wire format of the protocol: stage names, dictionary keys, and strict readers.

Every message is a flat dict whose values are int, float, str, bytes, or lists of one of
those (what a Flower ConfigRecord holds), except the masked vector, a uint64 numpy array
(what an ArrayRecord holds). Each carries a header: session id, stage, sender, recipient and a
16-byte nonce chosen by the server for each request and echoed by the reply, so a replayed,
stale, misaddressed or out-of-order message is recognised. The full format is in
docs/secure-aggregation.md. Readers here check presence and types only; the state machines
check meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from privacy.secagg.errors import SecAggProtocolError

SERVER_ID = 0
MAX_CLIENT_ID = 2**64 - 1
NONCE_BYTES = 16

SETUP = "setup"
SHARE_KEYS = "share-keys"
MASKED_INPUT = "masked-input"
CONSISTENCY = "consistency"
UNMASK = "unmask"
STEP = "step"
STAGES = (SETUP, SHARE_KEYS, MASKED_INPUT, CONSISTENCY, UNMASK)
SEMI_HONEST_STAGES = (SETUP, SHARE_KEYS, MASKED_INPUT, UNMASK)
SESSION_STAGES = (SETUP, SHARE_KEYS, STEP)
ALL_STAGES = (*STAGES, STEP)
NEXT_ROUND = "next-round"
"""The record of a request that carries the next round's setup (with the stage before
unmask) or share-keys request (with unmask), and of the reply that carries the site's
answer to it (server/secure_round.py `SecureRounds`)."""

# Header, in every message.
SESSION = "session"
STAGE = "stage"
SENDER = "sender"
RECIPIENT = "recipient"
NONCE = "nonce"
# setup request: RoundParams fields (see config.py). setup reply (NAME and SIGNATURE only
# when authenticated: the client's roster name and its signature over its two keys):
MASK_PK = "mask_pk"
ENC_PK = "enc_pk"
NAME = "name"
SIGNATURE = "signature"
# share-keys request (names and signatures only when authenticated):
PEER_IDS = "peer_ids"
PEER_MASK_PKS = "peer_mask_pks"
PEER_ENC_PKS = "peer_enc_pks"
PEER_NAMES = "peer_names"
PEER_SIGNATURES = "peer_signatures"
# share-keys reply:
DST_IDS = "dst_ids"
CIPHERTEXTS = "ciphertexts"
SELF_MASK_COMMITMENT = "self_mask_commitment"
# masked-input request: SRC_IDS + CIPHERTEXTS. masked-input reply: MASKED_VECTOR (ArrayRecord).
SRC_IDS = "src_ids"
MASKED_VECTOR = "masked_vector"
# step request (multi-step sessions): STEP_INDEX, larger than every earlier step of the
# session. step reply: MASKED_VECTOR.
STEP_INDEX = "step_index"
# consistency request: SURVIVOR_IDS, every client whose masked input is in the sum.
# consistency reply: SIGNATURE over (session, survivors).
# unmask request (signers and their signatures only when authenticated):
SURVIVOR_IDS = "survivor_ids"
DROPPED_IDS = "dropped_ids"
SIGNER_IDS = "signer_ids"
SIGNATURES = "signatures"
# unmask reply:
SELF_MASK_SHARE_IDS = "self_mask_share_ids"
SELF_MASK_SHARES = "self_mask_shares"
KEY_SHARE_IDS = "key_share_ids"
KEY_SHARES = "key_shares"

Message = dict[str, Any]


@dataclass(frozen=True)
class Header:
    session: str
    stage: str
    sender: int
    recipient: int
    nonce: bytes


def make_header(session: str, stage: str, sender: int, recipient: int, nonce: bytes) -> Message:
    return {SESSION: session, STAGE: stage, SENDER: sender, RECIPIENT: recipient, NONCE: nonce}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_node_id(value: Any) -> bool:
    return _is_int(value) and 0 <= value <= MAX_CLIENT_ID


def read_header(msg: Any) -> Header:
    """The header of `msg`, or SecAggProtocolError if it is missing or malformed."""
    if not isinstance(msg, Mapping):
        raise SecAggProtocolError(f"message is a {type(msg).__name__}, not a mapping")
    for key, ok, what in (
        (SESSION, lambda v: isinstance(v, str) and v != "", "a non-empty str"),
        (STAGE, lambda v: v in ALL_STAGES, f"one of {', '.join(ALL_STAGES)}"),
        (SENDER, _is_node_id, "a node id"),
        (RECIPIENT, _is_node_id, "a node id"),
        (NONCE, lambda v: isinstance(v, bytes) and len(v) == NONCE_BYTES, "16 bytes"),
    ):
        if key not in msg:
            raise SecAggProtocolError(f"message lacks header field '{key}'")
        if not ok(msg[key]):
            raise SecAggProtocolError(f"header field '{key}' must be {what}")
    return Header(msg[SESSION], msg[STAGE], msg[SENDER], msg[RECIPIENT], msg[NONCE])


class Reader:
    """Typed access to a message's payload; every failure names the message and the key."""

    def __init__(self, msg: Mapping[str, Any], where: str) -> None:
        self._msg = msg
        self._where = where

    def _get(self, key: str) -> Any:
        if key not in self._msg:
            raise SecAggProtocolError(f"{self._where}: missing '{key}'")
        return self._msg[key]

    def _fail(self, key: str, what: str) -> SecAggProtocolError:
        return SecAggProtocolError(f"{self._where}: '{key}' must be {what}")

    def ids(self, key: str) -> list[int]:
        """A list of distinct client ids."""
        value = self._get(key)
        if not isinstance(value, list) or not all(_is_node_id(v) and v != SERVER_ID for v in value):
            raise self._fail(key, "a list of client ids")
        if len(set(value)) != len(value):
            raise self._fail(key, "a list without duplicates")
        return list(value)

    def names(self, key: str) -> list[str]:
        """A list of non-empty strings."""
        value = self._get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self._fail(key, "a list of names")
        return list(value)

    def name(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not value:
            raise self._fail(key, "a non-empty string")
        return value

    def blobs(self, key: str, size: int | None = None) -> list[bytes]:
        """A list of bytes, each `size` long when given."""
        value = self._get(key)
        if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
            raise self._fail(key, "a list of bytes")
        if size is not None and any(len(v) != size for v in value):
            raise self._fail(key, f"a list of {size}-byte values")
        return list(value)

    def blob(self, key: str, size: int | None = None) -> bytes:
        value = self._get(key)
        if not isinstance(value, bytes) or (size is not None and len(value) != size):
            raise self._fail(key, f"{size} bytes" if size else "bytes")
        return value

    def vector(self, key: str, length: int, modulus_bits: int) -> np.ndarray:
        """An integer vector of `length` field elements, returned as uint64."""
        value = self._get(key)
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "iu":
            raise self._fail(key, "an integer numpy array")
        if value.shape != (length,):
            raise SecAggProtocolError(
                f"{self._where}: '{key}' has shape {value.shape}, expected ({length},)"
            )
        if value.dtype.kind == "i" and np.any(value < 0):
            raise self._fail(key, "non-negative")
        vector = value.astype(np.uint64)
        if modulus_bits < 64 and np.any(vector >> np.uint64(modulus_bits)):
            raise self._fail(key, f"reduced modulo 2**{modulus_bits}")
        return vector
