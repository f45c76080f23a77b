"""The published protocols through the run config (GenUP, GORACS), data sets by name, and the run
report's statistics: keys are validated when the config loads and shown by --dry-run; a data set name
is fetched (from a local mirror), prepared and cached; the summary shows intervals, paired verdicts,
the protocol flags and the profile quality."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from genrec_pipeline import PipelineError, load_config, plan
from genrec_pipeline._cli import main
from genrec_pipeline._report import metric_table, profile_lines, protocol_lines, verdicts


def _config(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[records]\nprotocol = "llm4poi"\n', r"\[records\].protocol must be one of genrec, genup"),
        ('[evaluate]\nprotocol = "genup"\n', r"set \[evaluate\].mode = 'generate'"),
        ('[evaluate]\nprotocol = "tallrec"\n', r"\[evaluate\].protocol must be one of genrec, genup for next_poi"),
        ('[evaluate]\ncity = "tky"\n', r"\[evaluate\].city picks GenUP's decoding settings"),
        ('[coreset]\nprotocol = "goracs"\n', r"\[coreset\].protocol = 'goracs' needs \[coreset\].adapter"),
        ('[coreset]\nadapter = "x"\n', r"\[coreset\].adapter is for protocol 'goracs'"),
        ('[records]\nprofile_fields = "age"\n', r"\[records\]\.profile_fields: .*profile_fields"),
        ('[profiles]\nprotocol = "gpt"\n', r"\[profiles\].protocol must be one of genrec, genup"),
        ('[data]\ndataset = "nowhere"\n', r"\[data\].dataset: unknown data set 'nowhere'"),
        ('[data]\ndataset = "amazon-games"\n', r"holds ratings \(seqrec, ctr\); \[records\].task is 'next_poi'"),
        ('[data]\ndataset = "foursquare-nyc"\n[records]\ntask = "seqrec"\n', r"holds check-ins \(next_poi\)"),
        ('[data]\ndataset = "genup-tky"\n', r"use \[records\].genup = 'w11wo/FourSquare-TKY-POI'"),
        ('[data]\ndataset = "amazon-games"\nprepare = {test_siz = 3}\n[records]\ntask = "ctr"\n', r"test_siz"),
        ('[data]\ndataset = "amazon-games"\n[records]\ntask = "seqrec"\n[evaluate]\nprotocol = "tallrec"\n',
         r"one of genrec, bigrec, goracs for seqrec"),
    ],
)
def test_protocol_keys_are_checked_when_the_config_loads(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        load_config(_config(tmp_path, text))


def test_protocol_keys_reach_the_package_configs(tmp_path: Path) -> None:
    import genrec_evaluator as ev
    from genrec_pipeline.stages import evaluator_options

    config = load_config(_config(tmp_path, '[records]\nprotocol = "genup"\nprofile_fields = "summary"\n'
                                           '[profiles]\nprotocol = "genup"\n'
                                           '[evaluate]\nprotocol = "genup"\nmode = "generate"\ncity = "nyc"\n'))
    opts = evaluator_options("next_poi", config["evaluate"])
    assert opts == {"protocol": "genup", "mode": "generate", "city": "nyc", "dtype": "bfloat16"}
    assert ev.NextPoiConfig(**opts).city == "nyc"
    # Options stated in the table win over the protocol's defaults.
    config = load_config(_config(tmp_path, '[evaluate]\nprotocol = "genup"\nmode = "generate"\n'
                                           '[evaluate.options]\ndtype = "float32"\n'))
    assert evaluator_options("next_poi", config["evaluate"])["dtype"] == "float32"


def test_dry_run_shows_the_protocols(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "genup-tky-llama-3.1-8b", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "next_poi protocol genup, profile fields all, from GenUP's records w11wo/FourSquare-TKY-POI" in out
    assert "next_poi protocol genup, generate mode, test split, city tky, every record" in out
    assert main(["run", "goracs-games-seqrec", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "data set amazon-games (genrec_sftdata.fetch + prepare_fetched)" in out
    assert "method goracs, budget 1024.0, lambda 0.1, exact shortcuts on; features protocol goracs" in out
    assert "encoder FacebookAI/roberta-base" in out and "seqrec protocol goracs, test split" in out


def test_shipped_protocol_settings() -> None:
    for city in ("nyc", "tky", "ca"):
        for recipe in ("llama-2-7b-longlora", "llama-3.1-8b", "llama-3.2-1b"):
            config = load_config(f"genup-{city}-{recipe}")
            assert config["records"]["protocol"] == "genup" and config["evaluate"]["protocol"] == "genup"
            assert config["evaluate"]["city"] == city and config["evaluate"]["mode"] == "generate"
            assert config["train"]["options"].get("batch_size", 1) == (1 if city == "nyc" else 2)
    seqrec = load_config("goracs-games-seqrec")["coreset"]
    assert (seqrec["method"], seqrec["lam"], seqrec["budget"], seqrec["candidates"], seqrec["max_swaps"]) == (
        "goracs", 0.1, 1024, 30, 100)
    for name in ("goracs-movielens-ctr", "goracs-games-ctr"):
        ctr = load_config(name, check_files=False)["coreset"]  # its TALLRec files are the user's
        assert (ctr["method"], ctr["lam"], ctr["budget"], ctr["candidates"], ctr["max_swaps"]) == ("goracs", 0.5, 64, 3, 20)
    assert load_config("goracs-games-ctr")["train"]["recipe"] == "goracs-tallrec-ctr"
    assert load_config("goracs-food-seqrec")["data"]["dataset"] == "amazon-food"


def test_train_report_to_passes_through(tmp_path: Path) -> None:
    from genrec_pipeline.stages import _train_config

    config = load_config(_config(tmp_path, '[train.options]\nreport_to = ["tensorboard"]\nrun_name = "x"\n'))
    built = _train_config(config["train"], train="t.parquet", output="out")
    assert tuple(built.report_to) == ("tensorboard",) and built.run_name == "x"
    with pytest.raises(PipelineError, match="report_to"):
        load_config(_config(tmp_path, '[train.options]\nreport_to = ["nowhere"]\n'))


# ----------------------------------------------------------------------------------- the run report


METRICS = {
    "model": {"acc@1": 0.31, "mrr": 0.42, "n": 500, "invalid_rate": 0.02,
              "ci": {"acc@1": {"low": 0.27, "high": 0.35}, "mrr": {"low": 0.39, "high": 0.45}},
              "vs": {"popularity": {"acc@1": {"diff": 0.09, "low": 0.05, "high": 0.13, "p": 0.0003,
                                              "test": "mcnemar-exact", "n": 500, "verdict": "beats"}},
                     "markov": {"acc@1": {"diff": -0.01, "low": -0.04, "high": 0.02, "p": 0.41,
                                          "test": "mcnemar-exact", "n": 500, "verdict": "cannot be told apart from"}}}},
    "popularity": {"acc@1": 0.22, "mrr": 0.3, "n": 500, "ci": {"acc@1": {"low": 0.18, "high": 0.26}}},
    "markov": {"acc@1": 0.32, "n": 500},
}


def test_report_shows_intervals_verdicts_and_protocol_flags() -> None:
    rows = metric_table(METRICS)
    assert rows[0][0] == "system" and rows[0][-1] == "n"
    assert rows[1][1] == "0.3100 [0.2700, 0.3500]" and rows[1][-1] == "500"
    assert rows[3][1] == "0.3200"  # no interval given: the value alone
    said = verdicts(METRICS)
    assert said[0] == ("The fine-tuned model beats popularity on acc@1 (0.3100 vs 0.2200, difference +0.0900 "
                       "[+0.0500, +0.1300], p = 0.0003, mcnemar-exact, n=500).")
    # markov has the higher raw acc@1, but the paired test cannot tell them apart: that is what is said.
    assert said[1].startswith("The fine-tuned model cannot be told apart from markov on acc@1")
    run = {"protocol": {"name": "genup", "n": 8, "split_records": 40, "full_split": False,
                        "scored": "a subset: 8 of 40 records (a sample chosen by the caller)",
                        "answer_in_history": {"share": 0.25, "n_in": 2, "n_out": 6,
                                              "acc@1": {"model": {"in": 0.5, "out": 0.0}}},
                        "invalid_rate": 0.125}}
    lines = protocol_lines(run, METRICS)
    assert lines[0] == "Protocol: genup."
    assert lines[1] == "Scored a subset: 8 of 40 records (a sample chosen by the caller) (not the full split)."
    assert lines[2] == "Answer already in the prompt's history: 25.0% of records (2 in, 6 out); model acc@1 in 0.5000, out 0.0000."
    assert lines[3] == "Invalid model outputs: 12.5%."


def test_profile_block_warns_below_90_percent_valid() -> None:
    summary = {"users": 10, "ok": 7, "repaired": 2, "failed": 1,
               "quality": {"valid_rate": 0.7, "status": {"ok": 7, "repaired": 2, "failed": 1}, "copied": 0.1,
                           "warnings": ["WARNING: only 70% of profiles are valid as the model wrote them"]}}
    lines = profile_lines(summary, {"generic_prompt": 3})
    assert lines[0] == "Profiles: 10 users, valid 7, repaired 2, failed 1 (valid as written: 70%)."
    assert "WARNING: only 70% of profiles are valid as the model wrote them" in lines
    assert lines[-1] == "Records with the generic system prompt (no profile for their user): 3."
    # Without the profiler's statistics the counts still give the warning.
    lines = profile_lines({"users": 10, "ok": 5, "repaired": 5, "failed": 0}, None)
    assert any(line.startswith("WARNING: only 50%") for line in lines)


# ---------------------------------------------------------------------- a data set by name, offline


TINY_RUN = """
[run]
name = "nyc-by-name"
root = "{root}"
progress = false
[data]
dataset = "foursquare-nyc"
max_users = 6
[data.prepare]
min_poi_checkins = 2
min_user_checkins = 2
[profiles]
backend = "template"
[records.options]
max_history = 4
[coreset]
enabled = false
[train]
recipe = ""
[train.options]
model = "{model}"
max_steps = 1
batch_size = 2
max_length = 384
truncation = true
device = "cpu"
dtype = "float32"
eval_every = 0
save_every = 0
[evaluate]
max_records = 3
[evaluate.options]
n_boot = 50
"""


@pytest.mark.integration
def test_dataset_by_name_is_fetched_prepared_and_cached(data_mirror, tmp_path: Path, tiny_llama: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    from genrec_core import cache_dir

    monkeypatch.setenv("GENREC_CACHE", str(tmp_path / "cache"))
    path = _config(tmp_path, TINY_RUN.format(root=tmp_path / "runs", model=tiny_llama))
    before = plan(load_config(path))
    assert before[0].action == "run" and "fetches foursquare-nyc first" in before[0].reason
    asked = len(data_mirror.requests)
    assert main(["run", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert data_mirror.requests[asked:] == ["/foursquare-nyc/dataset_tsmc2014.zip"]
    assert (cache_dir() / "datasets" / "foursquare-nyc" / "dataset_tsmc2014.zip").is_file()
    data = next((tmp_path / "runs" / "nyc-by-name").glob("data-*"))
    assert json.loads((data / "artifact.json").read_text())["summary"]["dataset"] == "foursquare-nyc"
    # The report: intervals and n, a verdict per baseline from the paired tests, the protocol flags,
    # and the profile block.
    assert "95% bootstrap intervals" in out and "The fine-tuned model " in out and " popularity on acc@1 (" in out
    assert "Scored a subset: 3 of " in out and "Answer already in the prompt's history" in out
    assert "Profiles: " in out and "Records with the generic system prompt" in out
    # Run again: the data stage is keyed by the fetched folder's content, and reused; nothing is fetched.
    again = plan(load_config(path))
    assert [p.action for p in again if p.stage != "profiles"][:1] == ["reuse"]
    assert all(p.action == "reuse" for p in again if p.action != "skip")
    assert len(data_mirror.requests) == asked + 1
    # A different file served under the same name is a different input: the data stage would re-run.
    zip_path = cache_dir() / "datasets" / "foursquare-nyc" / "dataset_tsmc2014.zip"
    os.utime(zip_path, (1, 1))
    assert plan(load_config(path))[0].action == "reuse"  # same bytes: same key (content, not mtime)
