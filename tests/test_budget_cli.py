"""`fedvault budget` reproduces the published MNIST epsilons and rejects bad input in one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import opacus
import pytest

from cli.main import SUBCOMMAND_MODULES, main

ROOT = Path(__file__).resolve().parent.parent

# privacy-facts.md: (records, batch, sigma, epochs) -> (RDP, PRV) at delta 1e-5, Opacus 1.6.
MNIST_ROWS = [
    ((60000, 256, 1.1, 60), (2.60, 2.39)),
    ((60000, 240, 1.3, 15), (0.92, 0.84)),
    ((60000, 240, 0.7, 45), (6.09, 5.44)),
]


def budget_args(records: int, batch: int, epochs: int, *rest: str) -> list[str]:
    return [
        "budget",
        "--records",
        str(records),
        "--batch-size",
        str(batch),
        "--epochs",
        str(epochs),
        "--delta",
        "1e-5",
        *rest,
    ]


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_budget_is_registered() -> None:
    assert "cli.budget" in SUBCOMMAND_MODULES


@pytest.mark.parametrize(
    ("setting", "expected"), MNIST_ROWS, ids=["tf", "opacus-1.3", "opacus-0.7"]
)
def test_mnist_rows(
    capsys: pytest.CaptureFixture[str],
    setting: tuple[int, int, float, int],
    expected: tuple[float, float],
) -> None:
    records, batch, sigma, epochs = setting
    out = run_json(capsys, budget_args(records, batch, epochs, "--noise-multiplier", str(sigma)))
    assert out["epsilon_rdp"] == pytest.approx(expected[0], abs=0.01)
    assert out["epsilon_prv"] == pytest.approx(expected[1], abs=0.01)
    assert out["noise_multiplier"] == sigma
    assert out["sample_rate"] == batch / records
    assert out["steps"] == round(epochs * records / batch)
    assert out["delta"] == 1e-5
    assert out["target_epsilon"] is None
    assert out["accountants"]["prv"]["version"] == opacus.__version__


def test_text_output_names_accountants(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(budget_args(60000, 256, 60, "--noise-multiplier", "1.1")) == 0
    out = capsys.readouterr().out
    assert "steps = 14062" in out
    assert "epsilon (prv) = 2.39" in out
    assert "epsilon (rdp) = 2.59" in out or "epsilon (rdp) = 2.60" in out
    assert f"opacus {opacus.__version__} PRVAccountant" in out
    assert f"opacus {opacus.__version__} RDPAccountant" in out
    assert out.count("Poisson subsampling with rate q per step") == 2


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_target_epsilon_solves_sigma(capsys: pytest.CaptureFixture[str], accountant: str) -> None:
    argv = budget_args(60000, 240, 15, "--target-epsilon", "0.9", "--accountant", accountant)
    out = run_json(capsys, argv)
    assert out["target_epsilon"] == 0.9
    assert out["solved_with"] == accountant
    assert out[f"epsilon_{accountant}"] <= 0.9
    # 1.3 gives RDP 0.92 and PRV 0.84, so RDP needs a little more noise and PRV less.
    if accountant == "rdp":
        assert 1.3 < out["noise_multiplier"] < 1.4
    else:
        assert 1.2 < out["noise_multiplier"] < 1.3
    assert out["epsilon_prv"] < out["epsilon_rdp"]


def test_prv_is_skipped_for_meaningless_epsilon(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, budget_args(60000, 256, 1, "--noise-multiplier", "0.1"))
    assert out["epsilon_rdp"] == pytest.approx(1212, abs=1)
    assert out["epsilon_prv"] is None
    assert main(budget_args(60000, 256, 1, "--noise-multiplier", "0.1")) == 0
    assert "epsilon (prv) = not computed (rdp epsilon above 50)" in capsys.readouterr().out


def test_subprocess_entry_point() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            *budget_args(60000, 256, 60, "--noise-multiplier", "1.1"),
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["epsilon_rdp"] == pytest.approx(2.60, abs=0.01)
    assert out["epsilon_prv"] == pytest.approx(2.39, abs=0.01)


BAD_INPUTS = {
    "sigma-zero": (budget_args(1000, 10, 1, "--noise-multiplier", "0"), "noise multiplier"),
    "sigma-negative": (budget_args(1000, 10, 1, "--noise-multiplier", "-1"), "noise multiplier"),
    "sigma-nan": (budget_args(1000, 10, 1, "--noise-multiplier", "nan"), "noise multiplier"),
    "epsilon-zero": (budget_args(1000, 10, 1, "--target-epsilon", "0"), "target epsilon"),
    "epsilon-negative": (budget_args(1000, 10, 1, "--target-epsilon", "-2"), "target epsilon"),
    "delta-zero": (
        [*budget_args(1000, 10, 1, "--noise-multiplier", "1"), "--delta", "0"],
        r"delta must be in \(0, 1\)",
    ),
    "delta-one": (
        [*budget_args(1000, 10, 1, "--noise-multiplier", "1"), "--delta", "1"],
        r"delta must be in \(0, 1\)",
    ),
    "delta-above-1/records": (
        [*budget_args(1000, 10, 1, "--noise-multiplier", "1"), "--delta", "0.001"],
        r"delta must be below 1/records = 0.001",
    ),
    "batch-above-records": (
        budget_args(100, 101, 1, "--noise-multiplier", "1"),
        "batch size 101 is larger than the 100 records",
    ),
    "records-zero": (budget_args(0, 1, 1, "--noise-multiplier", "1"), "records must be"),
    "batch-zero": (budget_args(100, 0, 1, "--noise-multiplier", "1"), "batch size must be"),
    "epochs-zero": (budget_args(100, 10, 0, "--noise-multiplier", "1"), "epochs must be"),
    "prv-target-above-cap": (
        budget_args(60000, 256, 1, "--target-epsilon", "60"),
        "target epsilon 60 is above 50",
    ),
    "unreachable-target": (
        budget_args(1000, 1000, 1000, "--target-epsilon", "0.0001"),
        "out of reach",
    ),
}


@pytest.mark.parametrize(("argv", "message"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    # The last --delta wins, so the "delta-*" cases override the default 1e-5.
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("fedvault: error: ")
    assert re.search(message, lines[0])


@pytest.mark.parametrize(
    "argv",
    [
        budget_args(1000, 10, 1),  # neither --noise-multiplier nor --target-epsilon
        budget_args(1000, 10, 1, "--noise-multiplier", "1", "--target-epsilon", "1"),
        budget_args(1000, 10, 1, "--noise-multiplier", "abc"),
        budget_args(1000, 10, 1, "--noise-multiplier", "1", "--accountant", "gdp"),
        budget_args(1000, 10, 1.5, "--noise-multiplier", "1"),  # type: ignore[arg-type]
    ],
    ids=["no-target", "both-targets", "not-a-number", "unknown-accountant", "float-epochs"],
)
def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    assert captured.err.splitlines()[-1].startswith("fedvault budget: error: ")


def test_bad_input_via_subprocess_has_no_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", *budget_args(100, 101, 1, "--noise-multiplier", "1")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "fedvault: error: batch size 101 is larger than the 100 records\n"
