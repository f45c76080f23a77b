"""report_to: TensorBoard, MLflow, W&B and Trackio get what the JSONL log gets; run.json's versions and commit."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from genrec_trainer import TrainConfig, TrainerError, TrainResult, load_config, train
from genrec_trainer._cli import main
from genrec_trainer._runinfo import source_commit
from genrec_trainer._trackers import Reporter


class _FakeWandbRun:
    def __init__(self, calls: list[tuple[str, Any]]) -> None:
        self.calls = calls
        self.summary: dict[str, float] = {}

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.calls.append(("log", (dict(metrics), step)))

    def finish(self, exit_code: int = 0) -> None:
        self.calls.append(("summary", dict(self.summary)))
        self.calls.append(("finish", exit_code))


def _fake_wandb(calls: list[tuple[str, Any]]) -> types.ModuleType:
    module = types.ModuleType("wandb")

    def init(**kwargs: Any) -> _FakeWandbRun:
        calls.append(("init", kwargs))
        module.run = _FakeWandbRun(calls)  # type: ignore[attr-defined]
        return module.run  # type: ignore[attr-defined]

    module.init = init  # type: ignore[attr-defined]
    return module


def _fake_trackio(calls: list[tuple[str, Any]]) -> types.ModuleType:
    module = types.ModuleType("trackio")
    module.init = lambda **kwargs: calls.append(("init", kwargs))  # type: ignore[attr-defined]
    module.log = lambda metrics, step=None: calls.append(("log", (dict(metrics), step)))  # type: ignore[attr-defined]
    module.finish = lambda: calls.append(("finish", None))  # type: ignore[attr-defined]
    return module


@pytest.fixture(scope="module")
def tracked(
    tiny_model: Path, city: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainResult, dict[str, list[tuple[str, Any]]]]:
    out = tmp_path_factory.mktemp("tracked")
    calls: dict[str, list[tuple[str, Any]]] = {"wandb": [], "trackio": []}
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "wandb", _fake_wandb(calls["wandb"]))
        mp.setitem(sys.modules, "trackio", _fake_trackio(calls["trackio"]))
        # Registered first so that undo removes what the trainer sets: the default file store.
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE"):
            mp.setenv(name, "x")
            mp.delenv(name)
        cfg = load_config(
            None,
            model=str(tiny_model),
            train=str(city["train"]),
            val=str(city["val"]),
            output=str(out),
            batch_size=8,
            max_steps=4,
            eval_every=2,
            lr=1e-2,
            progress=False,
            dtype="float32",
            run_name="tracked",
            report_to=("tensorboard", "mlflow", "wandb", "trackio"),
        )
        result = train(cfg)
    return result, calls


def _log(result: TrainResult) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.log_path.read_text(encoding="utf-8").splitlines()]


def _series(result: TrainResult) -> dict[str, list[tuple[int, float]]]:
    """Each scalar of the JSONL log as (step, value) pairs."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in _log(result):
        for key, value in record.items():
            if key != "step":
                out.setdefault(key, []).append((record["step"], float(value)))
    return out


def _expected_params(result: TrainResult) -> dict[str, Any]:
    config = json.loads((result.output_dir / "config.json").read_text(encoding="utf-8"))
    return {k: ",".join(v) if isinstance(v, list) else v for k, v in config.items()}


def test_tensorboard_scalars_and_hparams_equal_the_log(tracked) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    result, _ = tracked
    acc = EventAccumulator(str(result.output_dir / "runs"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    series = _series(result)
    assert {"loss", "lr", "grad_norm", "tokens", "tokens_per_s", "eval_loss"} <= set(series)
    assert set(acc.Tags()["scalars"]) == set(series)
    for tag, expected in series.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in expected], tag
        # TensorBoard stores float32.
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6), tag
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    expected_params = _expected_params(result)
    assert set(hparams) == set(expected_params)
    for key, value in expected_params.items():
        if isinstance(value, str):
            assert hparams[key].string_value == value, key
        else:
            assert hparams[key].number_value == float(value), key
    assert "_hparams_/session_end_info" in content


def test_mlflow_metrics_and_params_equal_the_log(tracked, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads a file store only when allowed
    result, _ = tracked
    client = MlflowClient(tracking_uri=(result.output_dir / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("genrec")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.params == {k: str(v) for k, v in _expected_params(result).items()}
    for key, expected in _series(result).items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert history == expected, key
    assert client.get_metric_history(run.info.run_id, "summary/final_loss")[0].value == result.final_loss
    info = json.loads((result.output_dir / "run.json").read_text(encoding="utf-8"))
    if "git" in info:
        assert run.data.tags["mlflow.source.git.commit"] == info["git"]["commit"]
    assert run.data.tags["genrec.version.torch"] == info["packages"]["torch"]


def test_wandb_and_trackio_get_the_same_calls(tracked) -> None:
    result, calls = tracked
    steps = [({k: float(v) for k, v in r.items() if k != "step"}, r["step"]) for r in _log(result)]
    params = _expected_params(result)
    final_eval = result.eval_losses[-1][1]

    wandb = calls["wandb"]
    kind, init = wandb[0]
    assert kind == "init" and init["name"] == "tracked" and init["project"] is None
    assert init["dir"] == str(result.output_dir)
    assert {k: v for k, v in init["config"].items() if k != "genrec_run"} == params
    assert init["config"]["genrec_run"]["packages"]["torch"] == metadata.version("torch")
    assert [args for kind, args in wandb if kind == "log"] == steps
    assert wandb[-1] == ("finish", 0) and [kind for kind, _ in wandb].count("finish") == 1
    summary = wandb[-2][1]
    assert summary["final_loss"] == result.final_loss and summary["eval_loss"] == final_eval
    assert summary["steps"] == result.steps

    trackio = calls["trackio"]
    kind, init = trackio[0]
    assert kind == "init" and init["project"] == "genrec" and init["name"] == "tracked"
    assert {k: v for k, v in init["config"].items() if k != "genrec_run"} == params
    logs = [args for kind, args in trackio if kind == "log"]
    assert logs[:-1] == steps
    last_metrics, last_step = logs[-1]
    assert last_step == result.steps
    assert last_metrics["summary/final_loss"] == result.final_loss
    assert last_metrics["summary/eval_loss"] == final_eval
    assert trackio[-1] == ("finish", None)


def test_wandb_summary_holds_the_final_metrics(
    tiny_model: Path, city: dict[str, Path], tmp_path: Path
) -> None:
    calls: list[tuple[str, Any]] = []
    fake = _fake_wandb(calls)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "wandb", fake)
        cfg = TrainConfig(
            model=str(tiny_model),
            train=str(city["train"]),
            output=str(tmp_path / "out"),
            batch_size=8,
            max_steps=1,
            progress=False,
            dtype="float32",
            project="recs",
            report_to=("wandb",),
        )
        result = train(cfg)
    assert calls[0][1]["project"] == "recs" and calls[0][1]["name"] == "out"
    summary = fake.run.summary  # type: ignore[attr-defined]
    assert summary["final_loss"] == result.final_loss and summary["steps"] == 1.0


def test_run_metadata_has_versions_and_commit(tracked) -> None:
    result, _ = tracked
    info = json.loads((result.output_dir / "run.json").read_text(encoding="utf-8"))
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    for name in ("torch", "transformers", "peft", "polars", "genrec-core", "genrec-trainer"):
        assert info["packages"][name] == metadata.version(name), name
    assert info["world_size"] == 1 and info["resumed_from"] == 0
    import genrec_trainer

    folder = Path(genrec_trainer.__file__).parent
    head = subprocess.run(
        ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    if head.returncode == 0 and "git" in info:
        assert info["git"]["commit"] == head.stdout.strip()
        assert isinstance(info["git"]["dirty"], bool)
    elif head.returncode != 0:
        assert "git" not in info


def test_source_commit_only_for_a_checkout_tracking_the_source(tmp_path: Path) -> None:
    assert source_commit(tmp_path) is None  # not a checkout
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    if subprocess.run([*git, "init", "-q"], capture_output=True, check=False).returncode != 0:
        pytest.skip("git is not available")
    (tmp_path / "__init__.py").write_text("x = 1\n", encoding="utf-8")
    assert source_commit(tmp_path) is None  # a checkout that does not track the source
    subprocess.run([*git, "add", "__init__.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    sha = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert source_commit(tmp_path) == {"commit": sha, "dirty": False}
    (tmp_path / "__init__.py").write_text("x = 2\n", encoding="utf-8")
    assert source_commit(tmp_path) == {"commit": sha, "dirty": True}


def test_missing_extra_is_one_line_exit_2(
    city: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    rc = main(
        ["train", "--train", str(city["train"]), "--output", str(tmp_path / "out"), "--report-to", "wandb"]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "pip install genrec-trainer[wandb]" in err, err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_report_to_on_the_command_line_and_in_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import genrec_trainer._train as train_module

    seen: list[TrainConfig] = []

    def fake_train(config: TrainConfig) -> TrainResult:
        seen.append(config)
        raise TrainerError("stop here")

    monkeypatch.setattr(train_module, "train", fake_train)
    args = ["train", "--train", "t.parquet", "--report-to", "tensorboard", "mlflow"]
    assert main([*args, "--tracking-uri", "http://localhost:5000", "--run-name", "r1"]) == 2
    assert seen[-1].report_to == ("tensorboard", "mlflow")
    assert (seen[-1].tracking_uri, seen[-1].run_name) == ("http://localhost:5000", "r1")
    assert main(["train", "--train", "t.parquet", "--report-to", "wandb,trackio"]) == 2
    assert seen[-1].report_to == ("wandb", "trackio")
    capsys.readouterr()
    toml = tmp_path / "c.toml"
    toml.write_text('report_to = ["mlflow"]\nlogging_dir = "tb"\n', encoding="utf-8")
    assert load_config(toml).report_to == ("mlflow",)
    assert TrainConfig().report_to == ()
    with pytest.raises(TrainerError, match="unknown tracker 'comet'"):
        TrainConfig(report_to=("comet",))
    with pytest.raises(TrainerError, match="twice"):
        TrainConfig(report_to=("mlflow", "mlflow"))


def test_a_failing_tracker_is_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        name = "broken"

        def __init__(self) -> None:
            self.finished = False

        def log(self, metrics: dict[str, float], step: int) -> None:
            raise ConnectionError("server went away\nmore detail")

        def finish(self, summary: dict[str, float], *, failed: bool) -> None:
            self.finished = True

    class Good:
        name = "good"

        def __init__(self) -> None:
            self.logged: list[tuple[dict[str, float], int]] = []

        def log(self, metrics: dict[str, float], step: int) -> None:
            self.logged.append((metrics, step))

        def finish(self, summary: dict[str, float], *, failed: bool) -> None:
            pass

    reporter = Reporter(())
    broken, good = Broken(), Good()
    reporter.trackers = [broken, good]
    with caplog.at_level(logging.WARNING, logger="genrec_trainer._trackers"):
        reporter.log({"step": 3, "loss": 1.5, "tokens": 10})
        reporter.log({"step": 4, "eval_loss": 1.0})
    assert good.logged == [({"loss": 1.5, "tokens": 10.0}, 3), ({"eval_loss": 1.0}, 4)]
    assert reporter.trackers == [good] and not broken.finished
    assert "'broken' failed at step 3 (ConnectionError: server went away)" in caplog.text
