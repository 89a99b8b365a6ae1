from pathlib import Path

import pytest

from training.config import ConfigError, TrainConfig, load_config


def test_yaml_is_read_and_command_line_overrides_win(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("loss: mel\nepochs: 7\nlr: 0.01\nloss_params: {margin: 0.2}\n")
    config = load_config(path, {"epochs": 3, "lr": None})
    assert config.loss == "mel"
    assert config.epochs == 3  # override
    assert config.lr == 0.01  # None means "not given"
    assert config.loss_params == {"margin": 0.2}


def test_saved_config_round_trips(tmp_path: Path) -> None:
    config = TrainConfig(loss="cosface", width=8, balanced=True)
    config.save(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"loss": "triplet"}, "loss must be one of"),
        ({"optimizer": "lbfgs"}, "optimizer must be one of"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"split": [0.5, 0.5]}, "split must be three"),
        ({"learning_rate": 0.1}, "unknown configuration field 'learning_rate'"),
    ],
)
def test_bad_values_name_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(fields)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
