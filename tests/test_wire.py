import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

from tasks.models import CNN1D
from tasks.wire import (
    INLINE_MAX_BYTES,
    ORDER,
    PACKED,
    SEALED,
    apply_update,
    flatten_update,
    pack,
    pack_model,
    protocol_records,
    seal,
    unpack,
    unpack_model,
    unseal,
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


def sealed_message_objects(content) -> int:
    from flwr.app import RecordDict
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return len(get_all_nested_objects(RecordDict(seal(content))))


def test_sealed_records_open_as_the_records_sealed_in_one_object():
    """Every object is a request at every hop of a deployment: a stage moves one, not six."""
    from flwr.app import RecordDict

    content = RecordDict(
        {
            **protocol_records({"stage": "share-keys", "ids": [3, 4], "keys": np.arange(4)}),
            "config": ConfigRecord({"lr": 0.1, "name": "x", "blob": b"\x00\xff", "on": True}),
            "metrics": MetricRecord({"count": 3, "loss": [0.5, 0.25]}),
            "arrays": pack_model(CNN1D().state_dict()),
        }
    )
    sealed = seal(content)
    assert list(sealed.keys()) == [SEALED]
    assert sealed_message_objects(content) == 2  # the content and its one record
    opened = unseal(sealed)
    assert list(opened.keys()) == list(content.keys())
    for name, record in content.items():
        assert type(opened[name]) is type(record)
        if isinstance(record, ArrayRecord):
            assert list(unpack(opened[name])) == list(unpack(record))
        else:
            assert dict(opened[name]) == dict(record)


def test_a_large_array_record_stays_an_object_of_its_own():
    """Flower chunks it, and sends one object shared by several messages only once."""
    from flwr.app import RecordDict

    big = pack({"w": np.arange(INLINE_MAX_BYTES // 8 + 1, dtype=np.float64)})
    small = pack({"w": np.arange(8.0)})
    content = RecordDict({"arrays": big, "mask": small, "config": ConfigRecord({"a": 1})})
    sealed = seal(content)
    assert sorted(sealed.keys()) == ["arrays", SEALED]
    assert sealed["arrays"] is big
    opened = unseal(sealed)
    assert np.array_equal(unpack(opened["arrays"])["w"], unpack(big)["w"])
    assert np.array_equal(unpack(opened["mask"])["w"], np.arange(8.0))


@pytest.mark.parametrize(
    "content, problem",
    [
        (lambda: {"config": ConfigRecord({"a": 1})}, "not sealed"),
        (lambda: {SEALED: ConfigRecord({"config": b"x"})}, "is not a record"),
        (lambda: {SEALED: ConfigRecord({"c:config": 7})}, "is not a record"),
        (lambda: {SEALED: ConfigRecord({"x:config": b"x"})}, "is not a record"),
        (lambda: {SEALED: ConfigRecord({"c:config": b"\xff" * 40})}, "does not open"),
        (lambda: {SEALED: ConfigRecord({"c:config": b"ConfigRecord  9\x00\xff\xff"})}, "open"),
        (  # a MetricRecord's bytes where a ConfigRecord was said to be
            lambda: {SEALED: ConfigRecord({"c:m": MetricRecord({"a": 1}).deflate()})},
            "does not open",
        ),
        (
            lambda: {SEALED: ConfigRecord({}), "config": ConfigRecord({"a": 1})},
            "outside the seal",
        ),
        (
            lambda: {SEALED: ConfigRecord({"a:arrays": b"x"}), "arrays": pack({"w": np.ones(2)})},
            "outside the seal",
        ),
    ],
)
def test_records_that_do_not_open_are_a_value_error(content, problem):
    from flwr.app import RecordDict

    with pytest.raises(ValueError, match=problem):
        unseal(RecordDict(content()))
