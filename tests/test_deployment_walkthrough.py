"""docs/deployment.md's "Trying it on one machine" runs as written and its report verifies.

The script is read from the document itself: its bash block runs in one bash, in order, from
the repository root, with `fedvault` from this environment first on PATH and a fresh HOME
(so `~/.fedvault` holds only this run's signing key). The one change is the first line's
`FV=/tmp/fv`, the example location the document names, which becomes a temporary directory.
What the walkthrough promises is then checked on what it left behind: encrypted keys, the
sites' names from the roster, the approved build, and a report that verifies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_deploy_cli import HAS_FLOWER, HAS_NGINX, kill_tree

from cli.processes import alive, descendants
from privacy.keystore import is_encrypted

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_FV = "FV=/tmp/fv"


def walkthrough() -> str:
    """The bash block under '## Trying it on one machine'."""
    text = (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
    section = text.split("\n## Trying it on one machine\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```bash\n", 1)[1].split("\n```", 1)[0]


def server_start() -> str:
    """The walkthrough's two lines that start the server and wait until it is ready."""
    lines = walkthrough().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("fedvault server "))
    assert lines[start + 1].startswith("until "), "the server start is not followed by its wait"
    return "\n".join(lines[start : start + 2])


def restart_and_register() -> str:
    """Stop the server, start it again the walkthrough's way, and use it at once.

    Registering a new site needs the server's Control API: had the wait returned on what the
    first start left behind, the registration would fail to reach it.
    """
    return "\n".join(
        [
            "kill %1; wait %1 || true",
            server_start(),
            "fedvault keys new --out $FV/site-d/node.key",
            "fedvault register $FV/site-d/node.key.pub --name site-d --state-dir $FV/server",
        ]
    )


def test_the_walkthrough_sets_fv_first_and_stops_at_verify():
    lines = walkthrough().splitlines()
    assert lines[0].startswith(EXAMPLE_FV + " ")
    assert lines[-1].startswith("fedvault report --verify $FV/run")
    assert "server ready" in server_start()


@pytest.mark.skipif(not (HAS_FLOWER and HAS_NGINX), reason="needs flwr 1.42 and nginx")
@pytest.mark.timeout(900)
def test_the_loopback_walkthrough_runs_as_written(tmp_path):
    fv = tmp_path / "fv"
    script = walkthrough().replace(EXAMPLE_FV, f"FV={fv}", 1)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("FEDVAULT_", "FLWR_"))
    }
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    shell = subprocess.Popen(
        [
            "bash",
            "-c",
            f"set -eo pipefail\n{script}\n{restart_and_register()}\nkill $(jobs -p)\nwait",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = shell.communicate(timeout=840)
    finally:
        tree = descendants(shell.pid)
        kill_tree(shell)
        for pid, start in tree:
            if alive(pid, start):
                os.kill(pid, signal.SIGKILL)
    logs = "\n".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-2500:]}" for log in fv.glob("*.log")
    )
    assert shell.returncode == 0, f"{output[-4000:]}\n{logs}"
    assert "report verified" in output
    assert "fedvault: submitting app build sha256:" in output

    # Every key the walkthrough made is encrypted under its passphrase.
    keys = [fv / "certs/ca.key", fv / "certs/server.key", home / ".fedvault/server/signing.key"]
    keys += [fv / f"site-{s}/node.key" for s in "abc"]
    assert [key for key in keys if not is_encrypted(key)] == []
    # The sites are the roster's names, each approved the build the run submitted, and the
    # report covers them under those names with DP and authenticated secure aggregation.
    report = json.loads((fv / "run/report.json").read_text())
    trained = sorted(site["site"] for site in report["sample_level_dp"]["sites"])
    assert trained == ["site-a", "site-b", "site-c"]
    assert report["secure_aggregation"]["mode"] == "authenticated"
    assert report["secure_aggregation"]["totals"]["aborted"] == 0
    for s in "abc":
        assert f"as site-{s} with key" in (fv / f"site-{s}.log").read_text()
    # After the restart the wait held until the new server answered: the registration worked.
    assert "registered site 'site-d'" in output
