import numpy as np
import pytest
import torch

from tasks.models import CNN1D
from tasks.wire import apply_update, flatten_update, update_length


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
