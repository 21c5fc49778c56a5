"""The FedVault ServerApp, as Flower loads it (`flwr run .` or `fedvault simulate`)."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.federation import run_federation
from server.progress import print_progress
from tasks.settings import RunSettings

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = RunSettings.from_config(dict(context.run_config))
    progress = print_progress(settings.num_rounds, lambda line: print(line, flush=True), True)
    run_federation(grid, settings, str(context.run_id), progress)
