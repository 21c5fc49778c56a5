"""Encoding a weighted update into the finite field, and decoding the unmasked sum.

A client's vector in the field is [w*q_1, ..., w*q_d, w, c]: the quantized update scaled by its
integer weight w, then w itself, then c, the number of coordinates that fell outside the
clipping range. Masks cancel in the sum, so the server learns sum(w*q), sum(w) and sum(c) and
nothing per client: the weighted mean and the clipping count come out of the same secure sum.
Quantization and dequantization are Flower's (`flwr.common.secure_aggregation.quantization`):
stochastic rounding of [-r, r] onto [0, 2**bits], unbiased. `RoundParams` guarantees the
largest possible sum, n * max_weight * 2**bits, stays below the modulus, so the sum modulo
2**modulus_bits is the true integer sum and needs no sign handling.

Integer input (distributed DP, privacy/distributed_noise.py) skips quantization: the client's
int64 vector enters the field as its two's complement modulo 2**64, with weight 1 and no
out-of-range count, and the sum read back as int64 is the exact signed sum while its true
value fits in 63 bits (the client refuses a vector that could overflow).
"""

from __future__ import annotations

import numbers

import numpy as np
from flwr.common.secure_aggregation.quantization import dequantize, quantize

from privacy.errors import FedVaultError
from privacy.secagg.config import RoundParams

EXTRA_COORDINATES = 2  # the weight and the out-of-range count


def field_length(params: RoundParams) -> int:
    """Length of a masked vector for these parameters."""
    return params.vector_length + EXTRA_COORDINATES


def check_weight(weight: object, params: RoundParams) -> int:
    """The weight as an int in [1, max_weight]; anything else is refused."""
    if isinstance(weight, bool) or not isinstance(weight, numbers.Integral):
        raise FedVaultError(f"aggregation weight must be an integer, got {weight!r}")
    if not 1 <= int(weight) <= params.max_weight:
        raise FedVaultError(
            f"aggregation weight {weight} outside [1, {params.max_weight}] (max_weight); "
            "raise max_weight in the secure-aggregation settings"
        )
    return int(weight)


def encode(update: np.ndarray, weight: int, params: RoundParams) -> tuple[np.ndarray, int]:
    """The field vector of `update` weighted by `weight`, and how many values were clipped."""
    x = np.asarray(update, dtype=np.float64)
    if x.ndim != 1 or x.shape[0] != params.vector_length:
        raise FedVaultError(
            f"update must be a flat vector of {params.vector_length} values, "
            f"got shape {tuple(x.shape)}"
        )
    if not np.all(np.isfinite(x)):
        raise FedVaultError("update contains NaN or infinite values")
    w = check_weight(weight, params)
    out_of_range = int(np.count_nonzero(np.abs(x) > params.clipping_range))
    (quantized,) = quantize([x], params.clipping_range, params.target_range)
    vector = np.empty(field_length(params), dtype=np.uint64)
    np.multiply(quantized.astype(np.uint64), np.uint64(w), out=vector[: params.vector_length])
    vector[params.vector_length] = w
    vector[params.vector_length + 1] = out_of_range
    return vector, out_of_range


def encode_integers(values: np.ndarray, params: RoundParams) -> np.ndarray:
    """The field vector of an int64 vector (integer-input rounds)."""
    x = np.asarray(values)
    if x.dtype != np.int64 or x.shape != (params.vector_length,):
        raise FedVaultError(
            f"integer input must be an int64 vector of {params.vector_length} values, "
            f"got {x.dtype} of shape {tuple(x.shape)}"
        )
    limit = (1 << 62) // params.num_clients
    if x.size and int(np.max(np.abs(x))) >= limit:
        raise FedVaultError(
            f"integer input has a value of magnitude >= 2**62 / {params.num_clients}: "
            "the sum could overflow"
        )
    vector = np.zeros(field_length(params), dtype=np.uint64)
    vector[: params.vector_length] = x.view(np.uint64)
    vector[params.vector_length] = 1
    return vector


def decode(total: np.ndarray, params: RoundParams) -> tuple[np.ndarray, int, int]:
    """(weighted sum as float64, total weight, total out-of-range count) of an unmasked sum."""
    d = params.vector_length
    total_weight = int(total[d])
    out_of_range = int(total[d + 1])
    if params.integer_input:
        signed = np.asarray(total[:d], dtype=np.uint64).view(np.int64)
        return signed.astype(np.float64), total_weight, out_of_range
    (shifted,) = dequantize([total[:d]], params.clipping_range, params.target_range)
    # dequantize() removes one offset of r; a weighted sum carries total_weight of them.
    weighted_sum = shifted - params.clipping_range * (total_weight - 1)
    return weighted_sum, total_weight, out_of_range
