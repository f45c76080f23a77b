"""Config: TOML files, overrides, recipes, the CLI surface, cheap import."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from genrec_trainer import TrainConfig, TrainerError, load_config, recipe_path, recipes
from genrec_trainer._cli import main


def test_toml_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "data.parquet").write_bytes(b"")
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text(
        'model = "smollm2"\ntrain = "data.parquet"\nlr = 1e-3\nlora-r = 4\n'
        'target_modules = ["q_proj", "v_proj"]\nquantization = "nf4"\n',
        encoding="utf-8",
    )
    cfg = load_config(cfg_file, lora_r=16, target_modules="q_proj,k_proj")
    assert cfg.train == str(tmp_path / "data.parquet")  # resolved next to the file
    assert cfg.lr == 1e-3
    assert cfg.lora_r == 16
    assert cfg.target_modules == ("q_proj", "k_proj")
    assert cfg.quantization == "nf4"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_train_table_is_accepted(tmp_path: Path) -> None:
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text("[train]\nmax_steps = 3\nbatch_size = 2\n", encoding="utf-8")
    cfg = load_config(cfg_file)
    assert (cfg.max_steps, cfg.batch_size) == (3, 2)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('lr = "fast"', "'lr'"),
        ("unknown_field = 1", "unknown field 'unknown_field'"),
        ('quantization = "nf5"', "'quantization'"),
        ("batch_size = 0", "'batch_size'"),
        ('mode = "full"\nquantization = "nf4"', "mode 'full'"),
        ("lr = [", "not valid TOML"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, text: str, needle: str) -> None:
    cfg_file = tmp_path / "bad.toml"
    cfg_file.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(TrainerError, match=needle.replace("[", r"\[")):
        load_config(cfg_file)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_recipes_ship_and_parse() -> None:
    names = recipes()
    assert {"genup-llama-2-7b-longlora", "genup-llama-3.1-8b", "genup-llama-3.2-1b", "cpu-smollm2"} <= set(
        names
    )
    longlora = load_config(recipe_path("genup-llama-2-7b-longlora"))
    llama3 = load_config(recipe_path("genup-llama-3.1-8b"))
    for cfg in (longlora, llama3, load_config(recipe_path("genup-llama-3.2-1b"))):
        assert (cfg.epochs, cfg.warmup_steps, cfg.max_grad_norm, cfg.max_length) == (3, 20, 1.0, 16384)
        assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (8, 16.0, 0.0)
        assert cfg.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
        assert cfg.quantization == "nf4" and cfg.double_quant
    assert longlora.lr == 2e-5 and llama3.lr == 2e-4
    assert load_config(recipe_path("cpu-smollm2")).device == "cpu"
    with pytest.raises(TrainerError, match="unknown recipe"):
        recipe_path("nope")


def test_cli_help_lists_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in out
    assert "LoRA rank" in out


def test_cli_error_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--train", str(tmp_path / "missing.parquet"), "--model", str(tmp_path / "nomodel")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("genrec-trainer: error: ") and err.count("\n") == 1
    assert "does not exist" in err
    with pytest.raises(TrainerError):
        main(
            [
                "train",
                "--debug",
                "--train",
                str(tmp_path / "missing.parquet"),
                "--model",
                str(tmp_path / "nomodel"),
            ]
        )


def test_cli_lists_recipes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipes"]) == 0
    assert "genup-llama-3.1-8b" in capsys.readouterr().out


def test_import_is_cheap() -> None:
    code = (
        "import sys, genrec_trainer; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
