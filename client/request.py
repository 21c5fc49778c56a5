"""What the coordinator asks of a site, read strictly, and checked against the site's floor.

Everything in a request is the coordinator's and may be hostile: the round's settings, its
number, the model. `read_request` turns a message into a typed `SiteRequest` or a
`Refused("malformed-request")`; `check_floor` refuses a request that asks for less privacy
than the site allows, before any of the site's data is touched. The site's own settings
(client/site.py) are the only other input.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import Message

from client.site import Site
from privacy.dp_ledger import Refused
from privacy.errors import FedVaultError
from tasks.settings import RunSettings

ROUND_KEYS = ("server-round", "proximal-mu", "round-clip-norm")
PLAIN_TRAIN, SECURE_TRAIN, EVALUATE = "train", "secure-train", "evaluate"


@dataclass(frozen=True)
class SiteRequest:
    """A request's kind, run, round and settings, as the coordinator sent them."""

    kind: str
    run_id: str
    server_round: int
    settings: RunSettings
    config: dict

    def float_setting(self, key: str) -> float:
        try:
            return float(self.config.get(key, 0.0))
        except (TypeError, ValueError):
            raise malformed(f"round setting {key!r} is not a number") from None


def malformed(message: str) -> Refused:
    return Refused("malformed-request", f"malformed request: {message}")


def read_settings(msg: Message) -> RunSettings:
    """The run settings a request carries, or Refused("malformed-request")."""
    if "config" not in msg.content:
        raise malformed("it carries no round settings")
    config = dict(msg.content["config"])
    try:
        return RunSettings.from_config({k: v for k, v in config.items() if k not in ROUND_KEYS})
    except FedVaultError as exc:
        raise malformed(str(exc)) from None


def read_request(msg: Message, kind: str, settings: RunSettings) -> SiteRequest:
    """The request carried by `msg` (whose settings are `settings`), or Refused."""
    config = dict(msg.content["config"])
    server_round = config.get("server-round")
    if isinstance(server_round, bool) or not isinstance(server_round, int):
        raise malformed(f"server-round must be a whole number, got {server_round!r}")
    if not 1 <= server_round <= settings.num_rounds:
        raise malformed(f"round {server_round} is outside 1..num-rounds ({settings.num_rounds})")
    return SiteRequest(kind, str(msg.metadata.run_id), server_round, settings, config)


def check_floor(site: Site, request: SiteRequest) -> None:
    """Refuse a request below the site's floor; nothing of the site's data is read here."""
    floor, s = site.floor, request.settings

    def below(key: str, message: str) -> Refused:
        return Refused(
            "below-floor",
            f"{site.name}: {message}",
            site=site.name,
            floor=key,
            round=request.server_round,
            run_id=request.run_id,
        )

    if request.kind == EVALUATE:
        if not floor.allow_evaluation:
            raise Refused(
                "evaluation-off",
                f"{site.name}: this site does not evaluate models on its private rows "
                "(allow-evaluation = false)",
                site=site.name,
                round=request.server_round,
                run_id=request.run_id,
            )
        return
    if floor.require_dp and not s.dp:
        raise below("require-dp", "the site trains only with DP-SGD (require-dp = true)")
    if floor.require_secagg and request.kind == PLAIN_TRAIN:
        raise below(
            "require-secagg",
            "the site sends its update only inside secure aggregation (require-secagg = true)",
        )
    if s.distributed_dp and not floor.allow_distributed_dp:
        raise below(
            "allow-distributed-dp",
            "the site adds full DP-SGD noise itself (allow-distributed-dp = false)",
        )
    shares_noise = s.distributed_dp or (s.client_dp and s.client_dp_noise_mode == "distributed")
    if shares_noise and s.dp_colluders < floor.tolerated_colluders:
        raise below(
            "tolerated-colluders",
            f"the run's noise shares assume at most {s.dp_colluders} colluding site(s); "
            f"this site requires {floor.tolerated_colluders}",
        )
    if s.client_dp and s.client_dp_noise < floor.min_client_noise_multiplier:
        raise below(
            "min-client-noise-multiplier",
            f"client-level noise multiplier {s.client_dp_noise:g} is below the site's floor "
            f"{floor.min_client_noise_multiplier:g}",
        )
    if s.dp and 0 < s.noise_multiplier < floor.min_noise_multiplier:
        raise below(
            "min-noise-multiplier",
            f"noise multiplier {s.noise_multiplier:g} is below the site's floor "
            f"{floor.min_noise_multiplier:g}",
        )
