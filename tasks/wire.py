"""How protocol messages and model updates travel in Flower records, for server and client.

A secure-aggregation message is a flat dict; its numpy arrays go into an ArrayRecord and the
rest into a ConfigRecord. A model update travels as one flat float64 vector over the model's
floating-point tensors, in state-dict order, so both sides agree on every coordinate.

Every ArrayRecord that crosses the wire holds one Array: its arrays packed with safetensors
(`pack`). Flower moves each Array of a message as an object of its own, one HTTP request
each way on a deployment, so a 14-tensor model would cost 14 round trips to every site on
every stage; packed, it costs one. safetensors reads an untrusted buffer without pickle and
checks every offset against it.

Every message is sealed (`seal`) the same way: its records travel as one ConfigRecord of
bytes, except ArrayRecords larger than INLINE_MAX_BYTES, which stay objects of their own
(Flower chunks them, and sends one object shared by several sites' messages only once). A
secure-aggregation stage therefore moves three objects per message, not six to ten, and every
object is a request at each hop of a deployment (ServerApp, SuperLink, SuperNode, ClientApp).
Records keep Flower's own encoding (`deflate`), so an opened record is the record sealed.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from google.protobuf.message import DecodeError

if TYPE_CHECKING:
    import torch

PROTOCOL_KEY = "secagg"
PROTOCOL_ARRAYS_KEY = "secagg-arrays"
PACKED = "packed"
ORDER = "order"
SEALED = "sealed"
INLINE_MAX_BYTES = 1 << 20
_KINDS: dict[str, type[ConfigRecord | MetricRecord]] = {"c": ConfigRecord, "m": MetricRecord}


def pack(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays as an ArrayRecord of one Array (inverse: `unpack`).

    safetensors lays tensors out in an order of its own; the names' order goes along in its
    metadata, because a model update is a vector in state-dict order (`flatten_update`).
    """
    from safetensors.numpy import save

    data = save(
        {name: np.asarray(value, order="C") for name, value in arrays.items()},
        metadata={ORDER: json.dumps(list(arrays))},
    )
    return ArrayRecord({PACKED: Array(np.frombuffer(data, dtype=np.uint8))})


def unpack(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The arrays `pack` put into `record`, in the order packed; ValueError if it is not
    such a record."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    data = _packed_bytes(record)
    if data is None:
        raise ValueError(f"expected one packed array of bytes, got {sorted(record.keys())}")
    try:
        arrays = load(data)
        (size,) = struct.unpack_from("<Q", data)  # the header, which load has just checked
        order = json.loads(json.loads(data[8 : 8 + size])["__metadata__"][ORDER])
    except (SafetensorError, TypeError, ValueError, KeyError, struct.error) as exc:
        raise ValueError(f"malformed packed arrays: {exc}") from None
    names = order if isinstance(order, list) else []
    if not all(isinstance(name, str) for name in names) or sorted(names) != sorted(arrays):
        raise ValueError("malformed packed arrays: their order does not name them")
    return {name: arrays[name] for name in names}


def seal(content: RecordDict) -> RecordDict:
    """`content` as one ConfigRecord of its records, large ArrayRecords beside it (inverse:
    `unseal`)."""
    sealed: dict[str, bytes] = {}
    out = RecordDict()
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            data = _packed_bytes(record)
            if data is None or len(data) > INLINE_MAX_BYTES:
                out[name] = record
            else:
                sealed[f"a:{name}"] = data
        else:
            kind = "m" if isinstance(record, MetricRecord) else "c"
            sealed[f"{kind}:{name}"] = record.deflate()
    out[SEALED] = ConfigRecord(sealed)
    return out


def unseal(content: RecordDict) -> RecordDict:
    """The records `seal` put into `content`; ValueError if it is not a sealed message."""
    sealed = content.get(SEALED)
    if not isinstance(sealed, ConfigRecord):
        raise ValueError(f"its records are not sealed (it holds {sorted(content.keys())})")
    out = RecordDict()
    for key, value in sealed.items():
        kind, _, name = key.partition(":")
        if not name or not isinstance(value, bytes) or kind not in ("a", *_KINDS):
            raise ValueError(f"sealed entry {key!r} is not a record")
        try:
            out[name] = (
                ArrayRecord({PACKED: Array(np.frombuffer(value, dtype=np.uint8))})
                if kind == "a"
                else _KINDS[kind].inflate(value)
            )
        except (ValueError, DecodeError) as exc:
            raise ValueError(f"sealed record {name!r} does not open: {exc}") from None
    for name, record in content.items():
        if name == SEALED:
            continue
        if not isinstance(record, ArrayRecord) or name in out:
            raise ValueError(f"record {name!r} sits outside the seal")
        out[name] = record
    return out


def _packed_bytes(record: ArrayRecord) -> bytes | None:
    """The bytes of a `pack`ed record, or None if it is not one."""
    if list(record.keys()) != [PACKED]:
        return None
    array = record[PACKED]
    return array.numpy().tobytes() if array.dtype == "uint8" and len(array.shape) == 1 else None


def pack_model(state: Mapping[str, torch.Tensor] | ArrayRecord) -> ArrayRecord:
    """A model's state (a state dict, or Flower's ArrayRecord of one) as one packed Array."""
    if isinstance(state, ArrayRecord):
        return pack({name: array.numpy() for name, array in state.items()})
    return pack({name: tensor.detach().cpu().numpy() for name, tensor in state.items()})


def unpack_model(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """The state dict `pack_model` packed; ValueError if `record` is not one."""
    import torch

    return {name: torch.from_numpy(value) for name, value in unpack(record).items()}


def protocol_records(message: Mapping[str, Any]) -> dict[str, ConfigRecord | ArrayRecord]:
    """A protocol message as records to put into a RecordDict."""
    arrays = {k: v for k, v in message.items() if isinstance(v, np.ndarray)}
    records: dict[str, ConfigRecord | ArrayRecord] = {
        PROTOCOL_KEY: ConfigRecord({k: v for k, v in message.items() if k not in arrays})
    }
    if arrays:
        records[PROTOCOL_ARRAYS_KEY] = pack(arrays)
    return records


def protocol_message(content: RecordDict) -> dict[str, Any]:
    """The protocol message carried by a RecordDict (inverse of `protocol_records`)."""
    message = dict(content[PROTOCOL_KEY])
    if PROTOCOL_ARRAYS_KEY in content:
        message.update(unpack(content[PROTOCOL_ARRAYS_KEY]))
    return message


def float_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point()]


def flatten_state(state: Mapping[str, torch.Tensor]) -> np.ndarray:
    """The floating-point tensors of `state`, as one float64 vector."""
    return np.concatenate(
        [state[k].detach().double().reshape(-1).numpy() for k in float_keys(state)]
    )


def flatten_update(new: Mapping[str, torch.Tensor], old: Mapping[str, torch.Tensor]) -> np.ndarray:
    """new - old over the floating-point tensors, as one float64 vector."""
    return flatten_state({k: new[k] for k in float_keys(old)}) - flatten_state(old)


def apply_update(old: Mapping[str, torch.Tensor], delta: np.ndarray) -> dict[str, torch.Tensor]:
    """old + delta (a vector from `flatten_update`), other tensors unchanged."""
    import torch

    out = dict(old)
    offset = 0
    for key in float_keys(old):
        tensor = old[key]
        size = tensor.numel()
        step = torch.from_numpy(delta[offset : offset + size]).reshape(tensor.shape)
        out[key] = (tensor.double() + step).to(tensor.dtype)
        offset += size
    if offset != len(delta):
        raise ValueError(f"update has {len(delta)} values, the model {offset}")
    return out


def update_length(state: Mapping[str, torch.Tensor]) -> int:
    return sum(state[k].numel() for k in float_keys(state))
