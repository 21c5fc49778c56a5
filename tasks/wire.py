"""How protocol messages and model updates travel in Flower records, for server and client.

A secure-aggregation message is a flat dict; its numpy arrays go into an ArrayRecord and the
rest into a ConfigRecord. A model update travels as one flat float64 vector over the model's
floating-point tensors, in state-dict order, so both sides agree on every coordinate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

if TYPE_CHECKING:
    import torch

PROTOCOL_KEY = "secagg"
PROTOCOL_ARRAYS_KEY = "secagg-arrays"


def protocol_records(message: Mapping[str, Any]) -> dict[str, ConfigRecord | ArrayRecord]:
    """A protocol message as records to put into a RecordDict."""
    arrays = {k: v for k, v in message.items() if isinstance(v, np.ndarray)}
    records: dict[str, ConfigRecord | ArrayRecord] = {
        PROTOCOL_KEY: ConfigRecord({k: v for k, v in message.items() if k not in arrays})
    }
    if arrays:
        records[PROTOCOL_ARRAYS_KEY] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return records


def protocol_message(content: RecordDict) -> dict[str, Any]:
    """The protocol message carried by a RecordDict (inverse of `protocol_records`)."""
    message = dict(content[PROTOCOL_KEY])
    if PROTOCOL_ARRAYS_KEY in content:
        arrays = content[PROTOCOL_ARRAYS_KEY]
        message.update({k: arrays[k].numpy() for k in arrays})
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
