"""The privacy-utility benchmark: its DP rows reach their epsilon and its bad flags are refused."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from benchmarks import privacy_utility


@pytest.mark.parametrize(
    "flags",
    [
        ["--server-momentum", "1"],
        ["--server-momentum", "-0.1"],
        ["--learning-rate", "0"],
        ["--batch-size", "0"],
        ["--local-epochs", "0"],
        ["--epsilons", "-3"],
    ],
)
def test_bad_flags_are_refused(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        privacy_utility.main(flags)
    assert exit_info.value.code == 2
    assert flags[0] in capsys.readouterr().err


def test_dp_row_spends_its_target_epsilon_with_server_momentum(tmp_path, capsys):
    out = tmp_path / "table.md"
    args = ["--rounds", "2", "--sites", "2", "--num-train", "600", "--epsilons", "3"]
    args += ["--partitions", "iid", "--batch-size", "64", "--local-epochs", "1"]
    args += ["--server-momentum", "0.5", "--methods", "fedavg", "--out", str(out)]
    assert privacy_utility.main(args) == 0
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| iid")]
    assert [row[1] for row in rows] == ["non-private", "3"]
    epsilon_prv, epsilon_rdp = float(rows[1][3]), float(rows[1][4])
    assert 2.9 < epsilon_prv <= 3.0 < epsilon_rdp
    assert "iid eps=3.0" in capsys.readouterr().out


def test_distributed_and_pooled_rows_spend_their_target_with_their_own_accountant(tmp_path):
    out = tmp_path / "table.md"
    args = ["--sites", "3", "--num-train", "900", "--epsilons", "3", "--partitions", "iid"]
    args += ["dirichlet-0.5", "--methods", "distributed", "pooled", "--steps", "3"]
    assert privacy_utility.main([*args, "--out", str(out)]) == 0
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| ")]
    rows = {(row[0][2:], row[1]): row for row in rows[1:]}
    # One pooled row (the union is the same whatever the partition), one distributed per split.
    assert sorted(rows) == [
        ("distributed", "dirichlet-0.5"),
        ("distributed", "iid"),
        ("pooled", "any"),
    ]
    for row in rows.values():
        assert int(row[5]) == 3
        assert 2.7 < float(row[7]) <= 3.0, row
    # Skellam's rounding and discreteness cost a little: never less noise than the Gaussian.
    pooled_sigma = float(rows[("pooled", "any")][6])
    assert pooled_sigma < float(rows[("distributed", "iid")][6]) < 1.1 * pooled_sigma


def test_server_step_is_fedavg_without_momentum_and_accumulates_with_it():
    current = {"w": torch.tensor([0.0, 0.0])}
    states = [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}]
    share = np.array([0.75, 0.25])
    plain = privacy_utility.DP_TUNED
    velocity = {"w": torch.zeros(2)}
    averaged = privacy_utility.server_step(current, states, share, velocity, plain)
    assert torch.allclose(averaged["w"], torch.tensor([1.5, 3.0]))

    momentum = replace(plain, server_momentum=0.5, server_learning_rate=0.2)
    velocity = {"w": torch.zeros(2)}
    first = privacy_utility.server_step(current, states, share, velocity, momentum)
    assert torch.allclose(first["w"], torch.tensor([0.3, 0.6]))
    second = privacy_utility.server_step(first, states, share, velocity, momentum)
    # velocity = 0.5 * (1.5, 3.0) + ((1.5, 3.0) - (0.3, 0.6)) = (1.95, 3.9)
    assert torch.allclose(second["w"], torch.tensor([0.3 + 0.39, 0.6 + 0.78]))
