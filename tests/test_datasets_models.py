import socket

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator

from tasks.datasets import load_digits, load_mnist1d, make_mnist1d
from tasks.models import CNN1D, MLP, DigitsCNN
from tasks.registry import build_model


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_mnist1d_shapes_determinism_offline_and_cache(no_network, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDVAULT_CACHE", str(tmp_path))
    first = load_mnist1d(600, 200, seed=3)
    assert first.x_train.shape == (600, 40) and first.x_test.shape == (200, 40)
    assert first.x_train.dtype == np.float32 and first.y_train.dtype == np.int64
    assert set(np.unique(first.y_train)) <= set(range(10))
    assert len(list(tmp_path.glob("mnist1d-600-200-3.npz"))) == 1
    again = load_mnist1d(600, 200, seed=3)
    np.testing.assert_array_equal(first.x_train, again.x_train)
    other = load_mnist1d(600, 200, seed=4)
    assert not np.array_equal(first.x_train, other.x_train)


@pytest.mark.parametrize(("num_samples", "train_split", "seed"), [(800, 0.8, 0), (1237, 0.9, 7)])
def test_mnist1d_is_the_packages_dataset_array_for_array(num_samples, train_split, seed):
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_samples, train_split, seed
    package = make_dataset(args)
    ours = make_mnist1d(num_samples, train_split, seed)
    for name in ("x", "y", "x_test", "y_test"):
        assert ours[name].dtype == package[name].dtype, name
        np.testing.assert_array_equal(ours[name], package[name], err_msg=name)


def test_digits_shapes_and_determinism(no_network):
    data = load_digits(seed=0)
    assert data.x_train.shape[1] == 64 and len(data.x_train) + len(data.x_test) == 1797
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    np.testing.assert_array_equal(data.y_test, load_digits(seed=0).y_test)


@pytest.mark.parametrize(
    ("model", "shape", "classes"),
    [
        (CNN1D(), (7, 40), 10),
        (CNN1D(private=True), (7, 40), 10),
        (DigitsCNN(), (7, 64), 10),
        (MLP(13, 3), (7, 13), 3),
    ],
)
def test_models_forward_and_pass_opacus_validator(model, shape, classes):
    assert model(torch.randn(*shape)).shape == (7, classes)
    assert ModuleValidator.validate(model, strict=True) == []


def test_build_model_per_task():
    assert build_model("mnist1d", 40, 10)(torch.randn(2, 40)).shape == (2, 10)
    plain, private = build_model("mnist1d", 40, 10), build_model("mnist1d", 40, 10, private=True)
    assert sum(p.numel() for p in private.parameters()) < sum(p.numel() for p in plain.parameters())
    assert build_model("digits", 64, 10)(torch.randn(2, 64)).shape == (2, 10)
    assert build_model("tabular", 20, 2)(torch.randn(2, 20)).shape == (2, 2)
