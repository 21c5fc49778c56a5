"""Client-level differential privacy (DP-FedAvg, McMahan et al. 2018) as plain NumPy maths.

The unit of privacy is one client: a whole site's data. Each client's model update is clipped
to L2 norm C (`clipping`), the clipped updates are summed and Gaussian noise of std sigma*C
is added to the sum, centrally or as per-client shares (`aggregation`, with noise from
`privacy.randomness`), clients are sampled per round (`sampling`), C can follow a private
quantile estimate of the update norms (`adaptive`, Andrew et al. 2021), and the recorded
events are turned into epsilon by dp-accounting (`accounting`). No Flower imports: the server
and client apps wire these pieces in. See docs/client-level-dp.md.
"""

from privacy.client_dp.accounting import (
    ClientDpEvent,
    client_level_epsilon,
    ledger_adjacency,
    to_dp_event,
    would_exceed,
)
from privacy.client_dp.adaptive import (
    AdaptiveClipper,
    quantile_budget_share,
    update_noise_multiplier,
)
from privacy.client_dp.aggregation import (
    add_noise,
    central_noise_std,
    distributed_share_std,
    mean_from_sum,
    private_mean,
    sum_updates,
)
from privacy.client_dp.clipping import clip_update, update_norm
from privacy.client_dp.sampling import sample_clients, sample_fixed

__all__ = [
    "AdaptiveClipper",
    "ClientDpEvent",
    "add_noise",
    "central_noise_std",
    "client_level_epsilon",
    "clip_update",
    "distributed_share_std",
    "ledger_adjacency",
    "mean_from_sum",
    "private_mean",
    "quantile_budget_share",
    "sample_clients",
    "sample_fixed",
    "sum_updates",
    "to_dp_event",
    "update_noise_multiplier",
    "update_norm",
    "would_exceed",
]
