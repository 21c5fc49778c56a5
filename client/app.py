"""The FedVault ClientApp: what a site does when the coordinator asks it something.

Every handler reads the request strictly, checks it against the site's own floor before any
of its data is touched, and answers a request it will not serve with a refusal (recorded in
the site's ledger) rather than an error. A plain train request gets the site's update in
the clear only if the site allows that (require-secagg = false). Under secure aggregation
the coordinator sends the SecAgg+ stages as `train.secagg` messages; the site checks its
floor and budget at setup (declining before it joins), validates the masked-input request
(or, in a multi-step session of distributed DP-SGD, the step request) before it spends
anything, then trains and sends only its masked update. A request may carry the next round's
setup or share-keys; the site answers it only as it would that request sent alone
(`_next_round`).
Evaluation requests are refused unless the site allows them, and then answered with
DP-noised sums whose cost is in the ledger. Requests arrive sealed and replies leave sealed
(tasks/wire.py, `sealed_records`); a request whose records do not open is refused.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from logging import getLogger

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from client.budget import SiteBudget
from client.data import prepare, training_records
from client.request import (
    EVALUATE,
    PLAIN_TRAIN,
    SECURE_TRAIN,
    SiteRequest,
    check_floor,
    malformed,
    read_request,
    read_settings,
)
from client.site import Site, resolve_site, site_identity
from privacy.dp_ledger import Refused
from privacy.errors import FedVaultError
from privacy.secagg import SecAggClient, SecAggProtocolError
from privacy.secagg import messages as m
from privacy.secagg.config import RoundParams
from tasks.wire import pack_model, protocol_message, protocol_records, seal, unseal

log = getLogger("fedvault.client")

SECAGG_STATE = "secagg-client"
SECAGG_NEXT_STATE = "secagg-next-client"


def sealed_records(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Open the request's records for the handlers and seal the reply's."""
    try:
        msg.content = unseal(msg.content)
    except ValueError as exc:
        refusal = malformed(str(exc))
        log.warning("refused a request: %s", refusal)
        reply = _refusal_reply(msg, refusal)
    else:
        reply = call_next(msg, context)
    if reply.has_content():
        reply.content = seal(reply.content)
    return reply


app = ClientApp(mods=[sealed_records])


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    from client.local_round import private_release

    def answer(request: SiteRequest, site: Site, budget: SiteBudget) -> Message:
        _maybe_drop_out(site, "train")
        release = private_release(msg, context, prepare(request, site), budget)
        content = RecordDict(
            {
                "arrays": pack_model(release.model.state_dict()),
                "metrics": MetricRecord(release.metrics),
                "privacy": release.privacy,
            }
        )
        return Message(content=content, reply_to=msg)

    return _serve(msg, context, PLAIN_TRAIN, answer)


@app.train("secagg")
def secagg_handler(msg: Message, context: Context) -> Message:
    """One SecAgg+ stage; only setup (checks) and masked input (training) touch the data."""
    protocol = protocol_message(msg.content)
    stage = protocol.get(m.STAGE)
    # A next session set up in advance lives until the site's next secure-aggregation request.
    held = context.state.pop(SECAGG_NEXT_STATE, None)

    def answer(request: SiteRequest, site: Site, budget: SiteBudget) -> Message:
        _maybe_drop_out(site, str(stage))
        identity = site_identity(site)
        digest = request.settings.digest()
        client = (
            SecAggClient.from_state(
                dict(context.state[SECAGG_STATE]), identity, site.min_secagg_peers, digest
            )
            if SECAGG_STATE in context.state
            else SecAggClient(context.node_id, identity, site.min_secagg_peers, digest)
        )
        extra: dict = {}
        if stage == m.SETUP and request.settings.dp:
            _check_budget_at_setup(request, site, budget, protocol, context)
        try:
            if stage in (m.MASKED_INPUT, m.STEP):
                from client.local_round import (
                    client_shares,
                    distributed_release,
                    masked_vector,
                    private_release,
                )

                if stage == m.STEP:
                    client.check_step(protocol)
                else:
                    client.check_masked_input(protocol)
                work = prepare(request, site)
                if request.settings.distributed_dp:
                    release, vector = distributed_release(
                        msg, work, budget, client.params.threshold
                    )
                    weight = 1
                else:
                    shares = client_shares(request, site, client.params.threshold)
                    release = private_release(msg, context, work, budget)
                    vector, weight = masked_vector(msg, work, release, shares)
                reply = client.handle(protocol, vector, weight)
                extra = {"metrics": MetricRecord(release.metrics), "privacy": release.privacy}
            else:
                reply = client.handle(protocol)
        except SecAggProtocolError as exc:
            raise Refused("protocol-violation", f"{site.name}: {exc.reason}") from None
        if m.NEXT_ROUND in msg.content:
            client, carried = _next_round(msg, request, site, budget, context, client, held)
            extra.update(carried)
        context.state[SECAGG_STATE] = ConfigRecord(client.to_state())
        return Message(content=RecordDict({**protocol_records(reply), **extra}), reply_to=msg)

    return _serve(msg, context, SECURE_TRAIN, answer)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    from client.local_round import private_evaluation

    def answer(request: SiteRequest, site: Site, budget: SiteBudget) -> Message:
        release = private_evaluation(msg, context, prepare(request, site), budget)
        content = RecordDict({"metrics": MetricRecord(release.metrics), "privacy": release.privacy})
        return Message(content=content, reply_to=msg)

    return _serve(msg, context, EVALUATE, answer)


Answer = Callable[[SiteRequest, Site, SiteBudget], Message]


def _serve(msg: Message, context: Context, kind: str, answer: Answer) -> Message:
    """Read and floor-check the request, then answer it, or refuse (and record why)."""
    try:
        settings = read_settings(msg)
    except Refused as refusal:
        log.warning("refused a request: %s", refusal)
        return _refusal_reply(msg, refusal)
    site = resolve_site(dict(context.node_config), settings.sites_root)
    with SiteBudget.open(site, settings, context.state) as budget:
        try:
            request = read_request(msg, kind, settings)
            check_floor(site, request)
            return answer(request, site, budget)
        except Refused as refusal:
            refusal.details.setdefault("site", site.name)
            refusal.details.setdefault("run_id", str(msg.metadata.run_id))
            refusal.details["site-floor"] = json.dumps(site.floor.to_record())
            budget.record(refusal)
            log.warning("%s", refusal)
            return _refusal_reply(msg, refusal)


def _check_budget_at_setup(
    request: SiteRequest, site: Site, budget: SiteBudget, protocol: dict, context: Context
) -> None:
    """Refuse at setup, before joining, a round the site's budget or floor would refuse."""
    records = training_records(request, site, context.state)
    if not request.settings.distributed_dp:
        _, event = budget.plan_training(request.server_round, records)
        budget.dry_run(event, request.server_round)
        return
    try:
        params = RoundParams.from_wire(protocol)
    except FedVaultError as exc:
        raise Refused("protocol-violation", f"{site.name}: setup parameters: {exc}") from None
    if not params.integer_input:
        raise Refused(
            "protocol-violation",
            f"{site.name}: distributed DP needs exact integer secure aggregation; the "
            "server asked for quantized floats",
        )
    _, event, _ = budget.plan_step(
        request.server_round, records, params.threshold, params.vector_length
    )
    budget.dry_run(event, request.server_round)


def _next_round(
    msg: Message,
    request: SiteRequest,
    site: Site,
    budget: SiteBudget,
    context: Context,
    client: SecAggClient,
    held: ConfigRecord | None,
) -> tuple[SecAggClient, dict]:
    """The next round's setup or share-keys, carried by a request of this round.

    A setup rides on the stage before unmask. The site sets up the next session beside the
    open one and holds it until its next request (`SECAGG_NEXT_STATE`). A share-keys rides
    on unmask, for the session held; the next session then becomes the site's own. Each is
    checked as it would be sent alone; a setup also must be for a round of the run and fit
    the budget. One that does not pass is left unanswered and any held session dropped, so
    the next round asks again; the request it rode on is answered either way. Returns the
    client to keep, and the records to add to the reply.
    """
    try:
        protocol = dict(msg.content[m.NEXT_ROUND])
        carried = m.read_header(protocol).stage
        params = client.params
        before_unmask = m.CONSISTENCY if params.authenticated else m.MASKED_INPUT
        if carried == m.SETUP and client.stage == before_unmask and not params.multi_step:
            upcoming = dataclasses.replace(request, server_round=request.server_round + 1)
            if upcoming.server_round > request.settings.num_rounds:
                raise malformed(f"round {upcoming.server_round} is past the run's last round")
            _maybe_drop_out(site, m.SETUP)
            if request.settings.dp:
                _check_budget_at_setup(upcoming, site, budget, protocol, context)
            following, reply = client.setup_next(protocol)
            context.state[SECAGG_NEXT_STATE] = ConfigRecord(following.to_state())
            return client, {m.NEXT_ROUND: ConfigRecord(reply)}
        if carried == m.SHARE_KEYS and client.stage == m.UNMASK and held is not None:
            _maybe_drop_out(site, m.SHARE_KEYS)
            following = SecAggClient.from_state(
                dict(held), client.identity, client.min_peers, client.context
            )
            return following, {m.NEXT_ROUND: ConfigRecord(following.handle(protocol))}
        raise malformed(f"a {carried} request of the next round cannot ride on {client.stage}")
    except (Refused, SecAggProtocolError, FedVaultError) as exc:
        log.warning("%s: the next round's request left unanswered: %s", site.name, exc)
        return client, {}


def _maybe_drop_out(site: Site, stage: str) -> None:
    if site.dropout_stage == stage:
        raise FedVaultError(f"{site.name}: leaving at stage {stage} (dropout-stage)")


def _refusal_reply(msg: Message, refusal: Refused) -> Message:
    record = {k: v for k, v in refusal.to_record().items() if v is not None}
    return Message(content=RecordDict({"refusal": ConfigRecord(record)}), reply_to=msg)
