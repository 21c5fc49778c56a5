"""The site's own `flwr-clientapp`: answer only approved builds, with the site's own code.

Flower 1.42's SuperNode hands every message to a fresh `flwr-clientapp` process, which pulls
the task (message, context, run, FAB), unpacks the FAB and imports the coordinator's
ClientApp from it. A check inside that ClientApp would be the coordinator's code checking
itself. `fedvault client` therefore puts a `flwr-clientapp` launcher for this module first on
the SuperNode's PATH (Flower starts the process by that bare name), so the process Flower
starts is the site's. It runs Flower's own `run_clientapp` with three steps replaced; this
module is the one place that reaches into Flower's runtime internals:

- the pulled FAB's SHA-256 is checked against the site's approved builds (client/approval.py);
- the FAB is never unpacked: nothing the coordinator sent is written to disk or imported;
- the ClientApp is the site's installed one (client.app:app), for an approved build, and for
  any other build it refuses: Flower sends the coordinator an error naming the build, and
  the site logs it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from client.approval import AppNotApproved, check_build
from privacy.errors import FedVaultError

log = logging.getLogger("fedvault.client")


def main() -> None:
    """Run one ClientApp task as Flower's `flwr-clientapp` would, the site's way."""
    import flwr.supernode.runtime.run_clientapp as runtime
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    verdict: dict[str, Any] = {}
    pull = runtime.pull_task_input

    def pull_and_check(client: Any) -> tuple:
        message, context, run, fab = pull(client)
        state_dir = context.node_config.get("state-dir")
        try:
            if not state_dir:
                raise AppNotApproved("this SuperNode has no state-dir: it approves no build")
            verdict["build"] = check_build(str(state_dir), fab.content, _site_name(context))
        except AppNotApproved as refusal:
            log.error("%s", refusal)
            verdict["refusal"] = refusal
        return message, context, run, fab

    def load_app(*_: object) -> Any:
        if "refusal" in verdict:
            raise verdict["refusal"]
        from client.app import app

        return app

    runtime.pull_task_input = pull_and_check
    runtime.install_from_fab = lambda *args, **kwargs: None
    runtime.get_load_client_app_fn = lambda **kwargs: load_app
    flwr_clientapp()


def _site_name(context: Any) -> str:
    from client.site import resolve_site

    try:
        return resolve_site(dict(context.node_config), "").name
    except (FedVaultError, OSError):  # the refusal must go out even then
        return str(context.node_config.get("state-dir"))


if __name__ == "__main__":
    sys.exit(main())
