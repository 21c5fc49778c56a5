"""Update clipping: the bound C holds, short updates are untouched, direction is kept."""

import numpy as np
import pytest

from privacy.client_dp import clip_update, update_norm
from privacy.errors import FedVaultError


def _update(rng: np.random.Generator, scale: float, dtype=np.float32) -> list[np.ndarray]:
    return [
        (rng.normal(size=(20, 30)) * scale).astype(dtype),
        (rng.normal(size=(30,)) * scale).astype(dtype),
        (rng.normal(size=(3, 4, 5)) * scale).astype(dtype),
    ]


def test_norm_is_over_all_arrays_flattened():
    delta = [np.array([3.0]), np.array([[0.0, 4.0]]), np.zeros((2, 2))]
    assert update_norm(delta) == pytest.approx(5.0)
    clipped, norm, was_clipped = clip_update(delta, 1.0)
    assert norm == pytest.approx(5.0)
    assert was_clipped
    # Per-array clipping would give each array norm <= 1 and a total above 1.
    assert update_norm(clipped) <= 1.0
    assert clipped[0][0] == pytest.approx(0.6, rel=1e-6)
    assert clipped[1][0, 1] == pytest.approx(0.8, rel=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_long_updates_end_at_most_c_with_direction_kept(dtype):
    rng = np.random.default_rng(1)
    for clip in (0.01, 0.5, 3.0):
        delta = _update(rng, scale=2.0, dtype=dtype)
        original = update_norm(delta)
        clipped, norm, was_clipped = clip_update(delta, clip)
        assert was_clipped
        assert norm == pytest.approx(original)
        assert update_norm(clipped) <= clip
        assert update_norm(clipped) == pytest.approx(clip, rel=1e-2)
        flat_in = np.concatenate([a.astype(np.float64).ravel() for a in delta])
        flat_out = np.concatenate([a.astype(np.float64).ravel() for a in clipped])
        cosine = flat_in @ flat_out / (np.linalg.norm(flat_in) * np.linalg.norm(flat_out))
        assert cosine == pytest.approx(1.0, abs=1e-3)
        assert np.all(np.sign(flat_out) * np.sign(flat_in) >= 0)
        assert [(a.shape, a.dtype) for a in clipped] == [(a.shape, a.dtype) for a in delta]


def test_short_updates_are_returned_unchanged_as_copies():
    rng = np.random.default_rng(2)
    delta = _update(rng, scale=0.001)
    before = [a.copy() for a in delta]
    clipped, norm, was_clipped = clip_update(delta, 10.0)
    assert not was_clipped
    assert norm == pytest.approx(update_norm(before))
    for out, original in zip(clipped, before, strict=True):
        assert out.dtype == original.dtype
        np.testing.assert_array_equal(out, original)
    clipped[0][0, 0] = 123.0
    assert delta[0][0, 0] == before[0][0, 0]


def test_norm_exactly_at_c_is_not_clipped():
    clipped, norm, was_clipped = clip_update([np.array([3.0, 4.0])], 5.0)
    assert not was_clipped
    assert norm == 5.0
    np.testing.assert_array_equal(clipped[0], [3.0, 4.0])


def test_zero_update_and_empty_update():
    assert clip_update([np.zeros(5)], 1.0)[1:] == (0.0, False)
    assert clip_update([], 1.0) == ([], 0.0, False)


@pytest.mark.parametrize("clip", [0.0, -1.0, float("nan"), float("inf"), "one"])
def test_bad_clip_norm_is_refused(clip):
    with pytest.raises(FedVaultError, match="clip norm"):
        clip_update([np.ones(3)], clip)


def test_non_finite_or_integer_updates_are_refused():
    with pytest.raises(FedVaultError, match="NaN or infinite"):
        clip_update([np.array([1.0, np.nan])], 1.0)
    with pytest.raises(FedVaultError, match="NaN or infinite"):
        clip_update([np.array([np.inf])], 1.0)
    with pytest.raises(FedVaultError, match="floating point"):
        clip_update([np.array([1, 2, 3])], 1.0)
