"""The FedVault ServerApp, as Flower loads it (`flwr run .` or `fedvault simulate`)."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.federation import run_federation
from tasks.settings import RunSettings

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_federation(grid, RunSettings.from_config(dict(context.run_config)), str(context.run_id))
