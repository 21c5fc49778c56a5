"""What a site decides for itself in distributed DP-SGD, checked without a federation."""

from __future__ import annotations

from dataclasses import replace

import pytest
from flwr.app import RecordDict

from client.budget import SiteBudget
from client.request import SECURE_TRAIN, SiteRequest, check_floor
from client.site import make_site
from privacy.accounting import compute_epsilon
from privacy.dp_ledger import Refused
from tasks.settings import RunSettings

DISTRIBUTED = RunSettings(
    dp=True,
    dp_mode="distributed",
    noise_multiplier=1.0,
    accountant="rdp",
    batch_size=512,
    num_rounds=400,
    target_epsilon=2.0,
)


def request(settings: RunSettings) -> SiteRequest:
    return SiteRequest(SECURE_TRAIN, "run", 1, settings, {})


def test_a_site_that_disallows_distributed_dp_refuses_it(tmp_path):
    site = make_site("site-a", tmp_path, {"allow-distributed-dp": False}, partition_id=0,
                     num_partitions=1)  # fmt: skip
    with pytest.raises(Refused) as refused:
        check_floor(site, request(DISTRIBUTED))
    assert refused.value.details["floor"] == "allow-distributed-dp"
    check_floor(make_site("site-b", tmp_path, {}, partition_id=0, num_partitions=1),
                request(DISTRIBUTED))  # fmt: skip


def test_the_site_lowers_its_own_rate_to_keep_the_rounds_left_within_its_target(tmp_path):
    site = make_site("site-a", tmp_path, {"max-epsilon": 10.0}, partition_id=0, num_partitions=1)
    with SiteBudget.open(site, DISTRIBUTED, RecordDict()) as budget:
        _, event, fallback = budget.plan_step(1, 9000, threshold=10, dimension=3370)
    asked = 512 / 9000
    assert event.sample_rate < asked
    # The rounds left at the chosen rate spend the target, no more.
    whole_run = replace(event, steps=400)
    assert compute_epsilon([whole_run], site.delta, "rdp") <= 2.0
    assert fallback.noise_multiplier == pytest.approx(1.0 / 10**0.5)
