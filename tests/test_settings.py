import pytest

from privacy.errors import FedVaultError
from tasks.registry import TaskSettings
from tasks.settings import RunSettings


def test_round_trip_through_flat_config():
    settings = RunSettings(num_rounds=3, partition="dirichlet:0.5", dp=True, noise_multiplier=1.2)
    again = RunSettings.from_config(settings.to_config())
    assert again == settings


def test_string_values_are_coerced():
    settings = RunSettings.from_config(
        {"num-rounds": "4", "dp": "true", "noise-multiplier": "1.5", "task.name": "digits"}
    )
    assert settings.num_rounds == 4 and settings.dp is True
    assert settings.noise_multiplier == 1.5 and settings.task.name == "digits"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"num-rounds": 0}, "num-rounds must be a positive integer"),
        ({"local-epochs": -1}, "local-epochs must be a positive integer"),
        ({"batch-size": "many"}, "expected int"),
        ({"num-rounds": 2.5}, "expected int"),
        ({"fraction-train": 0}, "fraction-train"),
        ({"learning-rate": 0}, "learning-rate"),
        ({"strategy": "fedsgd"}, "unknown strategy"),
        ({"partition": "dirichlet:0"}, "alpha must be > 0"),
        ({"partition": "stripes"}, "unknown partition"),
        ({"task.name": "cifar"}, "unknown task 'cifar'"),
        ({"task.num-train": 0}, "must be positive"),
        ({"task.name": "tabular"}, "needs a CSV file"),
        ({"num-rounds": 2, "num_rouns": 3}, "unknown setting"),
        ({"task.colour": 1}, "unknown setting"),
        ({"dp": True, "noise-multiplier": 0, "target-epsilon": 0}, "noise-multiplier > 0"),
        ({"dp": True, "noise-multiplier": 1, "clip-norm": 0}, "clip-norm must be > 0"),
        ({"dp": True, "noise-multiplier": 1, "delta": 1.5}, "delta must be in"),
        ({"dp": "maybe"}, "expected bool"),
    ],
)
def test_bad_settings_are_refused_with_one_line(config, message):
    with pytest.raises(FedVaultError, match=message) as info:
        RunSettings.from_config(config)
    assert "\n" not in str(info.value)


def test_schema_path_is_read_into_text(tmp_path):
    schema = tmp_path / "s.toml"
    schema.write_text('label = "y"\n')
    settings = RunSettings.from_config(
        {"task.name": "tabular", "task.csv": "x.csv", "task.schema": str(schema)}
    )
    assert settings.task.schema == 'label = "y"\n'
    with pytest.raises(FedVaultError, match="cannot read schema"):
        RunSettings.from_config(
            {"task.name": "tabular", "task.csv": "x.csv", "task.schema": str(tmp_path / "no")}
        )


def test_task_settings_defaults_fit_ten_sites():
    task = TaskSettings()
    assert task.name == "mnist1d" and task.num_train >= 20000 and task.num_test >= 5000


def test_flower_app_config_declares_every_setting_with_its_default():
    """The SuperLink refuses undeclared keys: pyproject must list them all, defaults equal."""
    import tomllib
    from pathlib import Path

    from simulations.scenario import flatten

    pyproject = tomllib.loads(Path(__file__).parents[1].joinpath("pyproject.toml").read_text())
    declared = flatten(pyproject["tool"]["flwr"]["app"]["config"])
    defaults = RunSettings().to_config()
    assert set(declared) == set(defaults)
    differing = {k for k in declared if declared[k] != defaults[k]}
    assert differing <= {"out", "sites-root", "num-rounds", "momentum"}
    assert RunSettings.from_config(declared).num_rounds == declared["num-rounds"]


def test_the_flower_app_and_run_settings_share_every_default():
    """`flwr run .` / `fedvault run` read pyproject's defaults, `fedvault simulate` and the
    ServerApp RunSettings': one value per setting, or the same scenario trains differently."""
    import tomllib
    from pathlib import Path

    from simulations.scenario import flatten

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    declared = flatten(pyproject["tool"]["flwr"]["app"]["config"])
    assert declared == RunSettings().to_config()
