"""The real NYC slice prepared by genrec-sftdata (val as history/train, test as the future): baselines
through the Python API and the CLI, with Markov > popularity > random."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from genrec_evaluator import run_baselines
from genrec_evaluator._cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def nyc_prepared(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    sftdata = pytest.importorskip("genrec_sftdata")
    root = shared_data / "foursquare_nyc"
    out = tmp_path_factory.mktemp("nyc")
    data = sftdata.prepare({"train": root / "NYC_val.csv", "test": root / "NYC_test.csv"}, out=out / "prepared")
    records = sftdata.build_next_poi(data, config=sftdata.NextPoiConfig(splits=("test",)))
    path = out / "records.parquet"
    records["test"].write_parquet(path)
    return out / "prepared", path


def test_nyc_baselines_via_sftdata(nyc_prepared: tuple[Path, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    data, records_path = nyc_prepared
    records = pl.read_parquet(records_path)
    from genrec_sftdata import load_prepared

    result = run_baselines(records, load_prepared(data).checkins)
    m = result.metrics
    assert m["markov"]["n"] == records.height > 500
    for key in ("acc@1", "acc@5", "acc@10", "mrr"):
        assert m["markov"][key] > m["popularity"][key] > m["random"][key], key
    assert sum(g["n"] for g in m["markov"]["by_user_activity"].values()) == records.height

    out = tmp_path / "run"
    assert main(["baselines", "--data", str(data), "--records", str(records_path), "--out", str(out)]) == 0
    assert f"wrote {out}/metrics.json" in capsys.readouterr().out
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["markov"]["acc@10"] == pytest.approx(m["markov"]["acc@10"])
