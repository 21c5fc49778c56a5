import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from tasks.models import CNN1D
from tasks.wire import (
    ORDER,
    PACKED,
    apply_update,
    flatten_update,
    pack,
    pack_model,
    unpack,
    unpack_model,
    update_length,
)


def test_flatten_and_apply_are_inverse():
    torch.manual_seed(0)
    old = CNN1D().state_dict()
    new = {k: v + torch.randn_like(v) for k, v in old.items()}
    delta = flatten_update(new, old)
    assert delta.shape == (update_length(old),) and delta.dtype == np.float64
    rebuilt = apply_update(old, delta)
    for key in old:
        torch.testing.assert_close(rebuilt[key], new[key])


def test_wrong_length_is_refused():
    old = CNN1D().state_dict()
    with pytest.raises(ValueError, match="values"):
        apply_update(old, np.zeros(update_length(old) + 1))


def test_packed_arrays_survive_flowers_records_whatever_their_dtype():
    from flwr.common import serde

    arrays = {
        "masked": np.array([2**64 - 1, 0, 7], dtype=np.uint64),
        "shares": np.arange(6, dtype=np.int64).reshape(2, 3),
        "weights": np.linspace(-1, 1, 5, dtype=np.float32),
        "scalar": np.array(3.5),
    }
    record = serde.array_record_from_proto(serde.array_record_to_proto(pack(arrays)))
    back = unpack(record)
    assert list(back) == list(arrays)  # in the order packed, not safetensors' own
    for name, value in arrays.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value)


def test_a_model_travels_as_one_array_not_one_per_tensor():
    """Flower moves each Array as an object of its own: one request per tensor per site."""
    from flwr.app import RecordDict
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    state = CNN1D().state_dict()
    packed = RecordDict({"arrays": pack_model(state)})
    plain = RecordDict({"arrays": ArrayRecord(state)})
    assert len(state) == 14
    # content, record, one array and its one chunk; else an array and a chunk per tensor
    assert len(get_all_nested_objects(packed)) == 4
    assert len(get_all_nested_objects(plain)) > 2 + len(state)
    back = unpack_model(pack_model(state))
    assert list(back) == list(state)  # an update is a vector in state-dict order
    for key, tensor in back.items():
        torch.testing.assert_close(tensor, state[key])


@pytest.mark.parametrize(
    "record, problem",
    [
        (lambda s: ArrayRecord(s), "expected one packed array"),
        (lambda s: ArrayRecord({PACKED: Array(np.zeros(40, dtype=np.uint8))}), "malformed"),
        (
            lambda s: ArrayRecord({PACKED: Array(np.frombuffer(b"\xff" * 64, np.uint8))}),
            "malformed",
        ),
        (lambda s: ArrayRecord({}), "expected one packed array"),
        (lambda s: reordered(s, lambda names: names[1:]), "order does not name them"),
        (lambda s: reordered(s, lambda names: [*names, names[0]]), "order does not name them"),
        (lambda s: reordered(s, lambda names: {"not": "a list"}), "order does not name them"),
        (lambda s: reordered(s, lambda names: [0, *names[1:]]), "order does not name them"),
    ],
)
def test_a_record_that_is_not_packed_arrays_is_a_value_error(record, problem):
    with pytest.raises(ValueError, match=problem):
        unpack_model(record(CNN1D().state_dict()))


def reordered(state, order) -> ArrayRecord:
    """`state` packed with the names' order in its metadata replaced by `order(names)`."""
    from safetensors.numpy import save

    arrays = {name: tensor.numpy() for name, tensor in state.items()}
    data = save(arrays, metadata={ORDER: json.dumps(order(list(arrays)))})
    return ArrayRecord({PACKED: Array(np.frombuffer(data, dtype=np.uint8))})
