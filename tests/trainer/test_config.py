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


@pytest.mark.parametrize(
    ("overrides", "field", "shown"),
    [
        ({"lr": float("nan")}, "lr", "nan"),
        ({"lr": float("inf")}, "lr", "inf"),
        ({"lr": 0.0}, "lr", "0.0"),
        ({"lr": -1e-4}, "lr", "-0.0001"),
        ({"max_steps": -1}, "max_steps", "-1"),
        ({"epochs": -2}, "epochs", "-2"),
        ({"warmup_steps": -1}, "warmup_steps", "-1"),
        ({"eval_every": -1}, "eval_every", "-1"),
        ({"save_every": -5}, "save_every", "-5"),
        ({"batch_size": 0}, "batch_size", "0"),
        ({"batch_size": -3}, "batch_size", "-3"),
        ({"grad_accum": 0}, "grad_accum", "0"),
        ({"log_every": 0}, "log_every", "0"),
        ({"keep_checkpoints": 0}, "keep_checkpoints", "0"),
        ({"max_steps": 10, "warmup_steps": 10}, "warmup_steps", "10"),
        ({"max_steps": 3, "warmup_steps": 20}, "warmup_steps", "20"),
        ({"max_length": 0}, "max_length", "0"),
        ({"lora_r": 0}, "lora_r", "0"),
        ({"lora_alpha": 0.0}, "lora_alpha", "0.0"),
        ({"lora_alpha": float("nan")}, "lora_alpha", "nan"),
        ({"lora_dropout": 1.0}, "lora_dropout", "1.0"),
        ({"lora_dropout": -0.1}, "lora_dropout", "-0.1"),
        ({"lora_dropout": float("nan")}, "lora_dropout", "nan"),
        ({"weight_decay": -0.01}, "weight_decay", "-0.01"),
        ({"weight_decay": float("inf")}, "weight_decay", "inf"),
        ({"max_grad_norm": float("nan")}, "max_grad_norm", "nan"),
        ({"max_grad_norm": -1.0}, "max_grad_norm", "-1.0"),
        ({"seed": -1}, "seed", "-1"),
        ({"seed": 2**64}, "seed", str(2**64)),
        ({"dtype": "float8"}, "dtype", "float8"),
        ({"quantization": "nf5"}, "quantization", "nf5"),
        ({"mixed_precision": "fp8"}, "mixed_precision", "fp8"),
        ({"scheduler": "step"}, "scheduler", "step"),
        ({"format": "xml"}, "format", "xml"),
        ({"mode": "qlora"}, "mode", "qlora"),
        ({"device": "tpu"}, "device", "tpu"),
        ({"device": "cuda:first"}, "device", "cuda:first"),
        ({"model": " "}, "model", ""),
        ({"output": ""}, "output", ""),
        ({"target_modules": ("q_proj", "")}, "target_modules", "q_proj"),
        ({"liger": True, "device": "cpu"}, "liger", "cpu"),
        ({"fsdp_cpu_offload": True, "device": "cpu"}, "fsdp_cpu_offload", "cpu"),
    ],
)
def test_every_data_free_check_runs_at_construction(overrides: dict, field: str, shown: str) -> None:
    for build in (lambda: TrainConfig(**overrides), lambda: load_config(None, **overrides)):
        with pytest.raises(TrainerError) as exc:
            build()
        message = str(exc.value)
        assert "\n" not in message
        assert repr(field) in message or f"field '{field}'" in message, message
        assert shown in message, message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_steps", 2.5),
        ("batch_size", True),
        ("lr", "1e-3"),
        ("truncation", 1),
        ("target_modules", "q_proj"),
    ],
)
def test_constructor_checks_types(field: str, value: object) -> None:
    with pytest.raises(TrainerError, match=rf"config field '{field}' has a bad value") as exc:
        TrainConfig(**{field: value})
    assert "\n" not in str(exc.value)


def test_valid_edge_values_pass() -> None:
    # warm-up over an epoch-based run is judged only when the step count is known (from the data).
    TrainConfig(epochs=1, max_steps=0, warmup_steps=50)
    TrainConfig(max_steps=5, warmup_steps=4, lora_dropout=0.0, max_grad_norm=0.0, weight_decay=0.0)
    TrainConfig(device="cuda:1", liger=True, seed=2**32 - 1)
    TrainConfig(lr=1, lora_alpha=8)  # ints where floats are declared: TOML writes them so
