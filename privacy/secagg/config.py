"""Settings of secure aggregation, and the per-round parameters derived from them.

`SecAggConfig` is what an operator sets once (neighbours, threshold, quantization, modulus,
weight bound, stage timeout). `RoundParams` is what one round actually runs with once the
number of participants and the vector length are known: the server resolves it, sends it in
the setup message, and every client re-validates it, because a client must not trust the
server to pick a threshold that protects it. All the arithmetic that keeps the field from
overflowing lives in `RoundParams.__post_init__` (see docs/secure-aggregation.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from privacy.errors import FedVaultError

DEFAULT_THRESHOLD_FRACTION = 2 / 3
MAX_QUANTIZATION_BITS = 30  # Flower's quantize() rounds into int32 values in [0, 2**bits]
MIN_MODULUS_BITS = 16
MAX_MODULUS_BITS = 64  # masked vectors travel as uint64


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def default_num_neighbours(num_clients: int) -> int:
    """Neighbours per client when none are configured: 2 * ceil(log2 n), at most n - 1.

    Bell et al. (2020) show a random graph of degree O(log n) keeps every neighbourhood large
    enough to survive dropouts and to outnumber colluders with high probability; doubling
    ceil(log2 n) keeps the degree even (the Harary ring construction stays regular) and gives
    8 neighbours at n = 10, 12 at 50, 14 at 100, 20 at 1000.
    """
    return min(num_clients - 1, 2 * math.ceil(math.log2(num_clients)))


@dataclass(frozen=True)
class RoundParams:
    """The parameters one secure-aggregation round runs with (sent in the setup message)."""

    num_clients: int
    num_neighbours: int
    threshold: int
    clipping_range: float
    quantization_bits: int
    modulus_bits: int
    max_weight: int
    vector_length: int
    authenticated: int = 1
    integer_input: int = 0
    multi_step: int = 0

    def __post_init__(self) -> None:
        for flag in ("authenticated", "integer_input", "multi_step"):
            value = getattr(self, flag)
            if value not in (0, 1) or isinstance(value, bool):
                raise FedVaultError(f"secure aggregation: {flag} must be 0 or 1")
        for name in (
            "num_clients",
            "num_neighbours",
            "threshold",
            "quantization_bits",
            "modulus_bits",
            "max_weight",
            "vector_length",
        ):
            if not _is_int(getattr(self, name)):
                raise FedVaultError(f"secure aggregation: {name} must be an integer")
        if isinstance(self.clipping_range, bool) or not isinstance(
            self.clipping_range, int | float
        ):
            raise FedVaultError("secure aggregation: clipping_range must be a number")
        n, k, t = self.num_clients, self.num_neighbours, self.threshold
        if n < 2:
            raise FedVaultError(f"secure aggregation needs at least 2 clients, got {n}")
        if not 1 <= k <= n - 1:
            raise FedVaultError(f"num_neighbours must be in [1, {n - 1}] for {n} clients, got {k}")
        if k < n - 1 and (n * k) % 2:
            raise FedVaultError(f"no {k}-regular neighbour graph exists on {n} clients")
        holders = k + 1
        if not holders / 2 < t <= holders:
            raise FedVaultError(
                f"reconstruction threshold {t} must exceed half of the {holders} share holders "
                f"({k} neighbours + the client) and not exceed them"
            )
        if not (math.isfinite(self.clipping_range) and self.clipping_range > 0):
            raise FedVaultError(f"clipping_range must be positive, got {self.clipping_range}")
        if not 1 <= self.quantization_bits <= MAX_QUANTIZATION_BITS:
            raise FedVaultError(
                f"quantization_bits must be in [1, {MAX_QUANTIZATION_BITS}], "
                f"got {self.quantization_bits}"
            )
        if not MIN_MODULUS_BITS <= self.modulus_bits <= MAX_MODULUS_BITS:
            raise FedVaultError(
                f"modulus_bits must be in [{MIN_MODULUS_BITS}, {MAX_MODULUS_BITS}], "
                f"got {self.modulus_bits}"
            )
        if self.max_weight < 1:
            raise FedVaultError(f"max_weight must be at least 1, got {self.max_weight}")
        if self.vector_length < 1:
            raise FedVaultError(f"vector_length must be at least 1, got {self.vector_length}")
        if self.multi_step and not (self.integer_input and k == n - 1 and t == holders):
            raise FedVaultError(
                "a multi-step session sums integer vectors of every member, each masked with "
                "every other member: integer_input = 1, num_neighbours = n - 1, threshold = n"
            )
        if self.integer_input and self.modulus_bits != MAX_MODULUS_BITS:
            raise FedVaultError(
                f"integer vectors are summed modulo 2**{MAX_MODULUS_BITS}, got modulus_bits "
                f"{self.modulus_bits}"
            )
        worst_sum = n * self.max_weight * self.target_range
        if not self.integer_input and worst_sum >= self.modulus:
            raise FedVaultError(
                f"field too small: {n} clients x max_weight {self.max_weight} x 2**"
                f"{self.quantization_bits} quantization levels = {worst_sum} does not fit in "
                f"2**{self.modulus_bits}; lower max_weight or quantization_bits, "
                "or raise modulus_bits"
            )
        if n * self.vector_length >= self.modulus:
            raise FedVaultError(
                f"field too small to count out-of-range values of {n} x {self.vector_length}"
            )

    @property
    def modulus(self) -> int:
        return 1 << self.modulus_bits

    @property
    def target_range(self) -> int:
        """Quantized values lie in [0, target_range] (Flower's quantize convention)."""
        return 1 << self.quantization_bits

    @property
    def num_holders(self) -> int:
        """Share holders per client at most: its neighbours and itself."""
        return self.num_neighbours + 1

    @property
    def quantization_step(self) -> float:
        """Spacing of the quantization grid; also the bound on the error of the mean."""
        return 2 * self.clipping_range / self.target_range

    def to_wire(self) -> dict[str, int | float]:
        return asdict(self)

    @classmethod
    def from_wire(cls, payload: Mapping[str, Any]) -> RoundParams:
        """Rebuild and re-validate parameters received from the server."""
        missing = [name for name in cls.__dataclass_fields__ if name not in payload]
        if missing:
            raise FedVaultError(f"setup message lacks {', '.join(missing)}")
        return cls(**{name: payload[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class SecAggConfig:
    """Operator settings of secure aggregation.

    num_neighbours: degree k of the neighbour graph; None picks `default_num_neighbours(n)`;
        values >= n - 1 give classic SecAgg (everyone is everyone's neighbour).
    reconstruction_threshold: shares needed to rebuild a secret, as a count or as a fraction
        in (0.5, 1] of the share holders (neighbours + the client itself).
    clipping_range: quantization covers [-clipping_range, clipping_range]; values outside are
        clipped AND counted.
    quantization_bits: 2**bits + 1 quantization levels over that range.
    modulus_bits: arithmetic is modulo 2**modulus_bits.
    max_weight: largest aggregation weight (e.g. number of examples) a client may use.
    stage_timeout_s: how long the server waits for the replies of one stage.
    authenticated: the malicious-server protocol (Bonawitz et al. 2017, section 6): clients
        sign their keys and the survivor set with their roster identities and check each
        other's; False runs the cheaper semi-honest protocol, which holds only while the
        server follows the protocol.
    """

    num_neighbours: int | None = None
    reconstruction_threshold: int | float = DEFAULT_THRESHOLD_FRACTION
    clipping_range: float = 8.0
    quantization_bits: int = 22
    modulus_bits: int = 64
    max_weight: int = 1_000_000
    stage_timeout_s: float = 120.0
    authenticated: bool = True

    def __post_init__(self) -> None:
        k = self.num_neighbours
        if k is not None and (not _is_int(k) or k < 1):
            raise FedVaultError(f"num_neighbours must be a positive integer or None, got {k!r}")
        t = self.reconstruction_threshold
        if _is_int(t):
            if t < 2:
                raise FedVaultError(f"reconstruction_threshold must be at least 2, got {t}")
        elif isinstance(t, float):
            if not 0.5 < t <= 1.0:
                raise FedVaultError(
                    f"reconstruction_threshold as a fraction must be in (0.5, 1], got {t}"
                )
        else:
            raise FedVaultError(
                f"reconstruction_threshold must be an int or a float, got {type(t).__name__}"
            )
        if not isinstance(self.stage_timeout_s, int | float) or not self.stage_timeout_s > 0:
            raise FedVaultError(f"stage_timeout_s must be positive, got {self.stage_timeout_s}")
        # Validate the remaining fields (and that the field fits two clients) right away.
        RoundParams(
            num_clients=2,
            num_neighbours=1,
            threshold=2,
            clipping_range=self.clipping_range,
            quantization_bits=self.quantization_bits,
            modulus_bits=self.modulus_bits,
            max_weight=self.max_weight,
            vector_length=1,
        )

    def resolve(
        self,
        num_clients: int,
        vector_length: int,
        integer_input: bool = False,
        multi_step: bool = False,
    ) -> RoundParams:
        """The parameters for a round with `num_clients` participants and vectors this long.

        `integer_input`: the clients send int64 vectors (distributed DP noise already added)
        instead of float updates to quantize; the sum is exact modulo 2**64. `multi_step`:
        one key agreement serves many steps (privacy/secagg/client.py, `step`): every member
        masks with every other and must answer every step.
        """
        if not _is_int(num_clients) or num_clients < 2:
            raise FedVaultError(f"secure aggregation needs at least 2 clients, got {num_clients}")
        n = num_clients
        k = default_num_neighbours(n) if self.num_neighbours is None else self.num_neighbours
        k = min(k, n - 1)
        if k < n - 1 and (n * k) % 2:
            k += 1  # a k-regular graph needs n * k even
        if multi_step:
            k = n - 1
        holders = k + 1
        t = self.reconstruction_threshold
        threshold = (
            max(holders // 2 + 1, math.ceil(t * holders - 1e-9)) if isinstance(t, float) else t
        )
        if multi_step:
            threshold = holders
        return RoundParams(
            num_clients=n,
            num_neighbours=k,
            threshold=threshold,
            clipping_range=float(self.clipping_range),
            quantization_bits=self.quantization_bits,
            modulus_bits=self.modulus_bits,
            max_weight=self.max_weight,
            vector_length=vector_length,
            authenticated=int(self.authenticated),
            integer_input=int(integer_input),
            multi_step=int(multi_step),
        )
