"""The site's ClientApp runtime: answer only approved builds, with the site's own code.

Flower 1.42's SuperNode hands every message to a `flwr-clientapp` process it starts, which
pulls the task (message, context, run, FAB), unpacks the FAB and imports the coordinator's
ClientApp from it. A check inside that ClientApp would be the coordinator's code checking
itself. `fedvault client` therefore puts its own `flwr-clientapp` first on the SuperNode's
PATH (Flower starts the process by that bare name): a launcher that hands the task to the
site's long-lived ClientApp process (cli/clientapp_server.py), which runs it here. This
module is the one place that reaches into Flower's runtime internals. It does what Flower's
`run_clientapp` does for one task, with three steps replaced and the process-level ones
(signal handlers, exit, parent watch, dependency installation) left to the process:

- the pulled FAB's SHA-256 is checked against the site's approved builds (client/approval.py);
- the FAB is never unpacked: nothing the coordinator sent is written to disk or imported;
- the ClientApp is the site's installed one (client.app:app), for an approved build, and for
  any other build it refuses: Flower sends the coordinator an error naming the build, and
  the site logs it.

And one is made faster: the SuperExec starts the task as soon as the message's head has
arrived, while the SuperNode is still pulling its parts, and Flower's object pull then
backs off for a whole second; here it looks again within PULL_BACKOFF_S.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from client.approval import AppNotApproved, check_build
from privacy.errors import FedVaultError

log = logging.getLogger("fedvault.client")

PULL_BACKOFF_S = (0.02, 0.5)
"""First and longest wait before looking again for a part of the message (Flower: 1, 10)."""
PULL_MAX_S = 60.0
"""How long a task waits for the parts of its message (Flower: 2 hours). The SuperNode hands
out a task before it has pulled the message's parts, and keeps a task whose parts it never
got (a run the coordinator ended meanwhile, as after a server restart); the site's one
ClientApp process must not spend hours on it while the next task waits."""


def run_task(argv: list[str]) -> int:
    """Run the task `flwr-clientapp ARGV` would run, in this process; its exit status.

    Any failure of the ClientApp goes to the coordinator as Flower's error reply, as in
    Flower's own runtime; only bad arguments (status 2) leave the task unanswered.
    """
    from flwr.app import Error, Message
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.common.args import add_args_flwr_app_common, try_obtain_flwr_app_token
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    parser = argparse.ArgumentParser(prog="flwr-clientapp", exit_on_error=False)
    parser.add_argument("--runtime-api-address", required=True)
    add_args_flwr_app_common(parser)
    try:
        args = parser.parse_args(argv)
        token = try_obtain_flwr_app_token(args)
        certificates = validate_and_resolve_root_certificates(args.root_certificates, args.insecure)
    except (argparse.ArgumentError, SystemExit) as exc:
        log.error("flwr-clientapp: bad arguments %s: %s", argv, exc)
        return 2
    client = RuntimeHttpClient.from_server_address(
        server_address=args.runtime_api_address,
        insecure=args.insecure,
        root_certificates=certificates,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    message: Message | None = None
    context: Any = None
    reply: Message | None = None
    status, details, code = SubStatus.FAILED, "ClientApp task failed", 1
    try:
        heartbeat.start()
        message, context, _, fab = pull_task_input(client)
        state_dir = context.node_config.get("state-dir")
        if not state_dir:
            raise AppNotApproved("this SuperNode has no state-dir: it approves no build")
        try:
            check_build(str(state_dir), fab.content, _site_name(context))
        except AppNotApproved as refusal:
            log.error("%s", refusal)
            raise LoadClientAppError(str(refusal)) from None
        from client.app import app

        reply = app(message=message, context=context)
        status, details, code = SubStatus.COMPLETED, "", 0
    except Exception as exc:  # as Flower's runtime: the coordinator gets the error
        load = isinstance(exc, LoadClientAppError)
        reason = (
            f"An exception was raised when attempting to load `ClientApp`: {exc}"
            if load
            else f"{type(exc)}:<'{exc}'>"
        )
        if not load:
            log.exception("ClientApp raised an exception")
        details = reason
        if message is not None:
            error = (
                ErrorCode.LOAD_CLIENT_APP_EXCEPTION
                if load
                else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            )
            reply = Message(Error(code=error, reason=reason), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception:
            log.exception("failed to push the reply")
            code = 1
        push_task_output(client=client, context=context, sub_status=status, details=details)
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()
    return code


def pull_task_input(client: Any) -> tuple[Any, Any, Any, Any]:
    """Message, context, run and FAB of the task, as Flower's `pull_task_input` pulls them,
    with a short back-off for the message's parts."""
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    task = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = task.task_id
    TaskIdentity.run_id = task.run.run_id
    TaskIdentity.node_id = task.context.node_id
    context = context_from_proto(task.context)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    first, longest = PULL_BACKOFF_S
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(
            client.ConfirmMessageReceived, node, context.run_id
        ),
        return_type=Message,
        initial_backoff=first,
        backoff_cap=longest,
        max_time=PULL_MAX_S,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id
    return message, context, run_from_proto(task.run), fab_from_proto(task.fab)


def _site_name(context: Any) -> str:
    from client.site import resolve_site

    try:
        return resolve_site(dict(context.node_config), "").name
    except (FedVaultError, OSError):  # the refusal must go out even then
        return str(context.node_config.get("state-dir"))
