"""L2 clipping of a whole model update: the step that bounds one client's influence.

Client-level DP needs every client's contribution to the aggregate bounded by a known norm C,
whatever its data. The update is treated as ONE vector (all arrays flattened together), so
C bounds the client's whole contribution, not each layer separately.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from privacy.client_dp import checks
from privacy.errors import FedVaultError

# Relative margin, in units of the coarsest array's machine epsilon, by which a clipped update
# is scaled below C so that rounding when casting back to float32/float16 cannot lift its
# norm above C.
_ROUNDING_MARGIN_ULPS = 4.0


def update_norm(delta: Sequence[np.ndarray]) -> float:
    """L2 norm of all arrays of `delta` flattened into one vector (computed in float64)."""
    total = 0.0
    for array in delta:
        flat = np.asarray(array, dtype=np.float64).ravel()
        total += float(np.dot(flat, flat))
    return float(np.sqrt(total))


def clip_update(
    delta: Sequence[np.ndarray], clip_norm: float
) -> tuple[list[np.ndarray], float, bool]:
    """Scale `delta` down to L2 norm at most `clip_norm`.

    Returns `(clipped, original_norm, was_clipped)`. `clipped` holds new arrays with the
    input dtypes and shapes. An update with norm <= clip_norm is returned unchanged (as
    copies); a longer one is multiplied by one positive factor, so its direction is kept,
    and its norm ends at most clip_norm (a few ulps below it, so casting back to the
    array dtype cannot push it over). `was_clipped` is `original_norm > clip_norm`; its
    negation is the bit an adaptive clipper counts.
    """
    clip_norm = checks.clip_norm(clip_norm)
    arrays = [np.asarray(a) for a in delta]
    for array in arrays:
        if not np.issubdtype(array.dtype, np.floating):
            raise FedVaultError(f"model update arrays must be floating point, got {array.dtype}")
    norm = update_norm(arrays)
    if not np.isfinite(norm):
        raise FedVaultError("model update contains NaN or infinite values")
    if norm <= clip_norm:
        return [a.copy() for a in arrays], norm, False
    coarsest_eps = max(float(np.finfo(a.dtype).eps) for a in arrays)
    factor = clip_norm / (norm * (1.0 + _ROUNDING_MARGIN_ULPS * coarsest_eps))
    clipped = [(a.astype(np.float64) * factor).astype(a.dtype) for a in arrays]
    return clipped, norm, True
