"""README.md's "A tour of the CLI" runs as written, on a fresh copy of the repository.

The commands are read from the README itself, so the test follows the README rather than a
copy of it: each line of the tour's code block runs through bash, as typed, in order, in a
copy of the working tree without runs/ or virtualenv, with a fresh FEDVAULT_HOME (no key, no
site state) and `fedvault` from this environment first on PATH. Every command needs an
expectation below, or a reason it is not run (EXCLUDED); a tour line with neither, or an
expectation for a line the tour no longer has, fails the test: nothing is skipped silently.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOT_IN_A_CLONE = (".git", ".venv", "runs", "__pycache__", ".pytest_cache", ".ruff_cache", "build")


@dataclass(frozen=True)
class Expect:
    """What a tour command must do: its exit status, a line it prints, files it leaves."""

    says: str
    status: int = 0
    files: tuple[str, ...] = ()


EXPECTED = {
    "fedvault --help": Expect("anonymize"),
    "fedvault simulate --rounds 1 --out runs/tour": Expect(
        "fedvault: done", files=("runs/tour/report.html", "runs/tour/report.sig")
    ),
    "fedvault report --verify runs/tour": Expect("report verified"),
    "fedvault simulate --out runs/tour --resume": Expect(
        "already completed; nothing to resume", status=2
    ),
    "fedvault simulate non-private --rounds 1": Expect("fedvault: done"),
    "fedvault simulate digits --clients 3 --rounds 3 --partition dirichlet:0.3 "
    "--set learning-rate=0.1": Expect("fedvault: done"),
    "fedvault simulate --rounds 1 --set dp=false": Expect("refused 10"),
    "fedvault data synth clinic --rows 20000 --seed 0 -o clinic.csv": Expect(
        "wrote 20000 clinic rows", files=("clinic.csv",)
    ),
    "fedvault simulate clinic --csv clinic.csv": Expect("fedvault: done"),
    "fedvault budget --records 60000 --batch-size 256 --epochs 60 --noise-multiplier 1.1 "
    "--delta 1e-5": Expect("epsilon"),
    "fedvault anonymize --detect clinic.csv": Expect("[columns.national_id]"),
    "fedvault anonymize clinic.csv --policy simulations/scenarios/clinic-policy.toml -o out.csv "
    "--report out.json": Expect(
        "pseudonymized, not anonymized", files=("out.csv", "out.json", "home/site/pseudonym.key")
    ),
}

EXCLUDED = {
    "fedvault simulate cross-device": "1,000 simulated clients for 30 rounds: one round alone "
    "took 104 s on the 2-core development machine, far beyond a test's share of the suite; "
    "tests/test_client_level_dp_runs.py runs client-level DP end to end on a few clients",
}


def tour_commands() -> list[str]:
    """The lines of the first bash block under '## A tour of the CLI', comments dropped."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## A tour of the CLI\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("\n```", 1)[0]
    return [
        line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def command_of(line: str) -> str:
    """The command without its trailing comment (bash drops it too)."""
    return re.sub(r"\s+#.*$", "", line).strip()


def test_every_tour_command_has_an_expectation_or_a_reason():
    commands = [command_of(line) for line in tour_commands()]
    assert len(commands) == len(set(commands)), "a tour command appears twice"
    unaccounted = [c for c in commands if c not in EXPECTED and c not in EXCLUDED]
    assert not unaccounted, f"tour commands this test does not know: {unaccounted}"
    stale = [c for c in [*EXPECTED, *EXCLUDED] if c not in commands]
    assert not stale, f"expectations for commands the tour no longer has: {stale}"


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working tree as a fresh clone has it: no runs, no virtualenv, no caches."""
    target = tmp_path_factory.mktemp("clone") / "fedvault"

    def ignore(directory: str, names: list[str]) -> set[str]:
        return {n for n in names if n in NOT_IN_A_CLONE or n.endswith(".egg-info")}

    shutil.copytree(REPO, target, ignore=ignore)
    return target


def test_the_tour_runs_as_written(clone):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "FEDVAULT_HOME": str(clone / "home"),
    }
    for line in tour_commands():
        command = command_of(line)
        if command in EXCLUDED:
            continue
        expect = EXPECTED[command]
        done = subprocess.run(
            ["bash", "-c", line],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        output = done.stdout + done.stderr
        assert done.returncode == expect.status, f"{line}\n{output[-3000:]}"
        assert expect.says in output, f"{line}: no {expect.says!r} in\n{output[-3000:]}"
        for name in expect.files:
            assert (clone / name).is_file(), f"{line}: left no {name}"
    # The default demo's report shows the audit's bound with its confidence level, and mu.
    html = (clone / "runs/tour/report.html").read_text(encoding="utf-8")
    assert "Epsilon lower bound at 95% confidence" in html
    assert "&mu; (GDP)" in html
