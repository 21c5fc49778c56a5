"""Typed, validated run settings: the coordinator's choices, shared with every site.

Flower hands the ServerApp a flat dict (`[tool.flwr.app.config]` fused with `-c` overrides);
this module is the one place that names every key, gives its default and refuses bad values
with one clear line, before any round starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from privacy.errors import FedVaultError
from privacy.secagg import SecAggConfig
from tasks.partition import PartitionSpec
from tasks.registry import TaskSettings

STRATEGIES = ("fedavg", "fedprox", "fedadam")
# Opacus per-sample gradient engines that train our models correctly (ghost clipping helps
# only nn.Linear here and costs a second backward pass: docs/benchmarks.md).
GRAD_SAMPLE_MODES = ("ew", "hooks", "functorch")
DP_MODES = ("local", "distributed")


@dataclass(frozen=True)
class RunSettings:
    """Everything the coordinator decides for one run (sites decide their own budgets)."""

    task: TaskSettings = field(default_factory=TaskSettings)
    partition: str = "iid"
    num_rounds: int = 10
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0
    min_sites: int = 2
    local_epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 0.05
    momentum: float = 0.9
    iterate_average: float = 0.9
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    server_learning_rate: float = 0.01
    round_timeout: float = 600.0
    out: str = "runs/flwr-run"
    dp: bool = False
    dp_mode: str = "local"
    dp_colluders: int = 0
    noise_multiplier: float = 0.0
    target_epsilon: float = 0.0
    clip_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "prv"
    grad_sample_mode: str = "ew"
    secagg: bool = True
    secagg_neighbours: int = 0
    secagg_threshold: float = 2 / 3
    secagg_clip_range: float = 8.0
    secagg_bits: int = 22
    secagg_timeout: float = 120.0
    secagg_authenticated: bool = True
    client_dp: bool = False
    client_dp_noise: float = 1.0
    client_dp_clip: float = 1.0
    client_dp_adaptive: bool = False
    client_dp_quantile: float = 0.5
    client_dp_clip_learning_rate: float = 0.2
    client_dp_count_noise: float = 10.0
    client_dp_noise_mode: str = "central"
    client_sampling: str = "fixed"
    client_sampling_rate: float = 0.1
    client_max_epsilon: float = 0.0
    client_delta: float = 1e-5
    client_accountant: str = "rdp"
    sites_root: str = "runs/flwr-run/sites"
    roster: str = ""
    resume_run_id: str = ""

    def __post_init__(self) -> None:
        PartitionSpec.parse(self.partition)
        for name in ("num_rounds", "min_sites", "local_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise FedVaultError(f"{_key(name)} must be a positive integer")
        if not 0 < self.fraction_train <= 1:
            raise FedVaultError("fraction-train must be in (0, 1]")
        if not 0 <= self.fraction_evaluate <= 1:
            raise FedVaultError("fraction-evaluate must be in [0, 1]")
        if not self.learning_rate > 0:
            raise FedVaultError("learning-rate must be > 0")
        if not 0 <= self.iterate_average < 1:
            raise FedVaultError("iterate-average must be in [0, 1) (0 releases the last iterate)")
        if self.strategy not in STRATEGIES:
            raise FedVaultError(
                f"unknown strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)}"
            )
        if self.dp:
            if self.noise_multiplier <= 0 and self.target_epsilon <= 0:
                raise FedVaultError("with dp on, set noise-multiplier > 0 or target-epsilon > 0")
            if self.clip_norm <= 0:
                raise FedVaultError("clip-norm must be > 0")
            if not 0 < self.delta < 1:
                raise FedVaultError("delta must be in (0, 1)")
            if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
                raise FedVaultError(
                    f"unknown grad-sample-mode {self.grad_sample_mode!r}: "
                    f"choose one of {', '.join(GRAD_SAMPLE_MODES)}"
                )
        if self.dp and self.dp_mode != "local":
            self._check_distributed_dp()
        if self.secagg:
            self.secagg_config()
        if self.client_dp:
            self._check_client_dp()

    def _check_distributed_dp(self) -> None:
        """Distributed DP-SGD: one noisy step per round, its noise split over the sites."""
        if self.dp_mode not in DP_MODES:
            raise FedVaultError(
                f"unknown dp-mode {self.dp_mode!r}: choose one of {', '.join(DP_MODES)}"
            )
        if not (self.secagg and self.secagg_authenticated):
            raise FedVaultError(
                "dp-mode = distributed needs authenticated secure aggregation (secagg = true, "
                "secagg-authenticated = true): the noise is only complete in the sum"
            )
        if self.noise_multiplier <= 0:
            raise FedVaultError(
                "dp-mode = distributed needs noise-multiplier > 0: every site adds its share "
                "of the same noise (each checks the epsilon it costs against its own budget)"
            )
        if self.accountant != "rdp":
            raise FedVaultError("dp-mode = distributed is accounted under accountant = rdp")
        if self.client_dp:
            raise FedVaultError("dp-mode = distributed and client-dp cannot be combined")
        if self.dp_colluders < 0:
            raise FedVaultError("dp-colluders must be >= 0")

    @property
    def distributed_dp(self) -> bool:
        """One DP-SGD step per round, the noise added in shares inside secure aggregation."""
        return self.dp and self.dp_mode == "distributed"

    def _check_client_dp(self) -> None:
        if self.client_dp_noise < 0 or self.client_dp_clip <= 0:
            raise FedVaultError("client-dp-noise must be >= 0 and client-dp-clip > 0")
        if self.client_dp_noise_mode not in ("central", "distributed"):
            raise FedVaultError("client-dp-noise-mode must be central or distributed")
        if self.client_dp_noise_mode == "distributed" and not self.secagg:
            raise FedVaultError("distributed client-level noise needs secure aggregation")
        if self.client_sampling not in ("fixed", "poisson"):
            raise FedVaultError("client-sampling must be fixed or poisson")
        if not 0 < self.client_sampling_rate <= 1:
            raise FedVaultError("client-sampling-rate must be in (0, 1]")
        if not 0 < self.client_dp_quantile < 1:
            raise FedVaultError("client-dp-quantile must be in (0, 1)")
        if not 0 < self.client_delta < 1:
            raise FedVaultError("client-delta must be in (0, 1)")
        if self.client_accountant not in ("rdp", "pld"):
            raise FedVaultError("client-accountant must be rdp or pld")

    def secagg_config(self) -> SecAggConfig:
        """Secure-aggregation parameters (neighbours 0 means the O(log n) default)."""
        return SecAggConfig(
            num_neighbours=self.secagg_neighbours or None,
            reconstruction_threshold=self.secagg_threshold,
            clipping_range=self.secagg_clip_range,
            quantization_bits=self.secagg_bits,
            stage_timeout_s=self.secagg_timeout,
            authenticated=self.secagg_authenticated,
        )

    @property
    def partition_spec(self) -> PartitionSpec:
        return PartitionSpec.parse(self.partition)

    @classmethod
    def from_config(cls, config: dict) -> RunSettings:
        """Build from a flat run config; unknown keys are an error (a typo must not pass)."""
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "task"}
        task_config = {k: v for k, v in config.items() if k.startswith("task.")}
        values = {}
        for key, value in config.items():
            if key.startswith("task."):
                continue
            name = key.replace("-", "_")
            if name not in fields:
                raise FedVaultError(f"unknown setting {key!r}")
            values[name] = _coerce(key, value, fields[name].type)
        task_fields = {f.name: f.type for f in dataclasses.fields(TaskSettings)}
        task_values = {}
        for key, value in task_config.items():
            name = key[len("task.") :].replace("-", "_")
            if name not in task_fields:
                raise FedVaultError(f"unknown setting {key!r}")
            task_values[name] = _coerce(key, value, task_fields[name])
        if task_values.get("name") == "tabular" and task_values.get("schema"):
            task_values["schema"] = _read_schema_text(task_values["schema"])
        return cls(task=TaskSettings(**task_values), **values)

    def digest(self) -> str:
        """SHA-256 of the flat settings: what sites bind their secure-aggregation keys to."""
        return hashlib.sha256(json.dumps(self.to_config(), sort_keys=True).encode()).hexdigest()

    def to_config(self) -> dict[str, str | int | float | bool]:
        """The flat form, as sent to sites and written to the run directory."""
        flat = {
            _key(f.name): getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "task"
        }
        return {**self.task.to_config(), **flat}


def _key(name: str) -> str:
    return name.replace("_", "-")


def _coerce(key: str, value: object, annotation: str) -> object:
    kind = annotation if isinstance(annotation, str) else annotation.__name__
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes", "on"):
                return True
            if str(value).lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise FedVaultError(f"setting {key!r}: expected {kind}, got {value!r}") from None


def _read_schema_text(value: str) -> str:
    """`task.schema` names a TOML file in user config; sites receive its text (not private)."""
    if "\n" in value:
        return value
    try:
        return Path(value).read_text(encoding="utf-8")
    except OSError as exc:
        raise FedVaultError(f"cannot read schema {value}: {exc.strerror}") from None
