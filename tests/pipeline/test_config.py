"""Config loading and validation: every bad key is named before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from genrec_pipeline import PipelineError, load_config, shipped_configs
from genrec_pipeline._cli import main


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_default_config_loads() -> None:
    config = load_config()
    assert config.name == "default"
    assert config["data"]["source"] == "synthetic"
    assert config["profiles"]["backend"] == "local"
    assert config["coreset"]["method"] == "itra"


def test_user_file_states_only_what_differs_from_the_schema_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, '[run]\nname = "mine"\n[data]\nusers = 12\n'))
    assert config.name == "mine"
    assert config["data"]["users"] == 12
    # The demo's small sizes (default.toml) do not leak into other configs.
    assert config["records"]["options"] == {}
    assert config["train"]["options"] == {}
    assert config["coreset"]["budget"] == 0.5


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[dataa]\nusers = 3\n", "unknown table [dataa]"),
        ("[data]\nuserz = 3\n", "unknown key [data].userz"),
        ('[data]\nusers = "many"\n', "[data].users must be an integer"),
        ('[profiles]\nbackend = "gpt"\n', "[profiles].backend must be one of"),
        ("[coreset]\nbudget = -1\n", "[coreset].budget"),
        ("[records.options]\nmax_histroy = 3\n", "unknown key [records].options.max_histroy"),
        ("[train.options]\nlearning_rate = 0.1\n", "learning_rate"),
        ("[evaluate.options]\nbeam = 3\n", "unknown key [evaluate].options.beam"),
        ("[coreset.options]\nswapz = 3\n", "[coreset].options.swapz"),
        ('[evaluate]\nsplit = "dev"\n', "[evaluate].split"),
    ],
)
def test_bad_keys_are_named(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(PipelineError) as exc:
        load_config(_write(tmp_path, text))
    assert needle in str(exc.value)
    assert "run.toml" in str(exc.value) or "[" in str(exc.value)


def test_set_overrides_and_errors() -> None:
    config = load_config(overrides={"train.options.max_steps": "7", "run.name": '"x"'})
    assert config["train"]["options"]["max_steps"] == 7
    assert config.name == "x"
    with pytest.raises(PipelineError, match=r"unknown key \[run\].nam"):
        load_config(overrides={"run.nam": "1"})


def test_model_dtype_is_checked_up_front() -> None:
    assert load_config()["profiles"]["dtype"] == load_config()["coreset"]["dtype"] == "auto"
    config = load_config(overrides={"profiles.dtype": '"float32"', "coreset.dtype": '"bfloat16"'})
    assert (config["profiles"]["dtype"], config["coreset"]["dtype"]) == ("float32", "bfloat16")
    for table in ("profiles", "coreset"):
        with pytest.raises(PipelineError, match=rf"\[{table}\].dtype must be one of auto, float32"):
            load_config(overrides={f"{table}.dtype": '"float64"'})


def test_missing_config_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genrec: error: config file does not exist")
    assert "\n" not in err


def test_cli_reports_bad_key_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "[train]\nrecipe = 3\n")
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "[train].recipe must be a string" in err and "\n" not in err


def test_every_shipped_config_validates() -> None:
    shipped = shipped_configs()
    assert "default" in shipped
    for name, path in shipped.items():
        # Their data (TALLRec's JSON files, say) is the user's to provide: checked when it runs.
        config = load_config(path, check_files=False)
        assert config.name, name


def test_configs_command_lists_and_shows(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["configs"]) == 0
    listing = capsys.readouterr().out
    assert "default" in listing and "built-in default" in listing
    assert main(["configs", "--show", "default"]) == 0
    assert "[coreset]" in capsys.readouterr().out


def test_cross_city_study_files(tmp_path: Path) -> None:
    from genrec_pipeline._crosscity import load_study

    study = load_study("genup-cross-city")
    assert len(study["configs"]) == 3 and study["metric"] == "acc@1"
    bad = tmp_path / "study.toml"
    bad.write_text('[cross_city]\nconfigs = ["a"]\n')
    with pytest.raises(PipelineError, match="at least two"):
        load_study(bad)
    bad.write_text('[cross_city]\nconfigs = ["a", "b"]\nmetrc = "x"\n')
    with pytest.raises(PipelineError, match=r"unknown key \[cross_city\].metrc"):
        load_study(bad)
