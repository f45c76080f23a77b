"""genrec-sftdata fetch: every URL source against a local HTTP server (127.0.0.1 only), resumed
downloads, checksums, offline errors, hub sources, and --prepare with each source's reader."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

import genrec_sftdata as g
from genrec_sftdata._cli import main
from genrec_sftdata._fetch import SOURCES

URL_SOURCES = ["movielens-100k", "movielens-1m", "foursquare-nyc", "foursquare-tky", "gowalla", "amazon-games",
               "amazon-movies", "amazon-food", "bookcrossing"]


def _serve(server, source_files, *names: str) -> None:
    for name in names:
        for fname, data in source_files[name].items():
            server.files[f"/{name}/{fname}"] = data


def test_every_url_source_has_a_fixture(source_files) -> None:
    url_sources = {s.name for s in g.list_datasets() if s.urls and not s.name.startswith(("amazon2014", "amazon2018"))}
    assert url_sources == set(URL_SOURCES)
    for name in URL_SOURCES:
        assert set(SOURCES[name].files) == set(source_files[name]), name


@pytest.mark.parametrize("name", URL_SOURCES)
def test_fetch_each_source_records_checksums(name, local_server, source_files, tmp_path) -> None:
    _serve(local_server, source_files, name)
    folder = g.fetch(name, cache=tmp_path / "cache", base_url=local_server.url)
    registry = json.loads((tmp_path / "cache" / "registry.json").read_text())
    for fname, data in source_files[name].items():
        assert (folder / fname).read_bytes() == data
        entry = registry[f"{name}/{fname}"]
        assert entry["size"] == len(data) and len(entry["sha256"]) == 64
        assert entry["url"].startswith(("http://", "https://")) and entry["url"].endswith(fname)
    # A second fetch serves from the cache (and verifies it): no new requests.
    before = len(local_server.requests)
    assert g.fetch(name, cache=tmp_path / "cache", base_url=local_server.url) == folder
    assert len(local_server.requests) == before
    assert g.verify(name, cache=tmp_path / "cache") == folder


def test_mirror_from_environment(local_server, source_files, monkeypatch) -> None:
    _serve(local_server, source_files, "movielens-100k")
    monkeypatch.setenv("GENREC_DATA_MIRROR", local_server.url + "/")
    folder = g.fetch("movielens-100k")
    assert folder == g.datasets_dir() / "movielens-100k"
    assert (folder / "ml-100k.zip").is_file()


def test_resumed_download_completes_and_verifies(local_server, source_files, tmp_path) -> None:
    _serve(local_server, source_files, "amazon-games")
    local_server.drop_once.add("/amazon-games/Video_Games_5.json.gz")
    folder = g.fetch("amazon-games", cache=tmp_path, base_url=local_server.url)
    data = source_files["amazon-games"]["Video_Games_5.json.gz"]
    assert (folder / "Video_Games_5.json.gz").read_bytes() == data
    ranged = [r for p, r in local_server.requests if p == "/amazon-games/Video_Games_5.json.gz" and r]
    assert ranged == [f"bytes={len(data) // 2}-"]  # resumed where the broken transfer stopped
    assert not list(folder.glob(".*.part"))
    g.verify("amazon-games", cache=tmp_path)


def test_broken_transfer_without_retries_keeps_part_and_resumes_next_call(local_server, source_files, tmp_path) -> None:
    _serve(local_server, source_files, "gowalla")
    fname = "loc-gowalla_totalCheckins.txt.gz"
    local_server.drop_once.add(f"/gowalla/{fname}")
    with pytest.raises(g.SftDataError, match=r"cannot download http://127\.0\.0\.1:\d+/gowalla/loc-gowalla"):
        g.fetch("gowalla", cache=tmp_path, base_url=local_server.url, retries=0)
    part = tmp_path / "gowalla" / f".{fname}.part"
    assert part.is_file() and 0 < part.stat().st_size < len(source_files["gowalla"][fname])
    folder = g.fetch("gowalla", cache=tmp_path, base_url=local_server.url, retries=0)
    assert (folder / fname).read_bytes() == source_files["gowalla"][fname]


def test_corrupted_cache_is_detected_by_checksum(local_server, source_files, tmp_path) -> None:
    _serve(local_server, source_files, "movielens-1m")
    folder = g.fetch("movielens-1m", cache=tmp_path, base_url=local_server.url)
    f = folder / "ml-1m.zip"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    f.write_bytes(bytes(data))
    with pytest.raises(g.SftDataError, match=r"ml-1m\.zip: sha256 .* does not match"):
        g.fetch("movielens-1m", cache=tmp_path, base_url=local_server.url)
    with pytest.raises(g.SftDataError, match="sha256"):
        g.verify("movielens-1m", cache=tmp_path)
    f.write_bytes(bytes(data[:100]))
    with pytest.raises(g.SftDataError, match="corrupted or truncated"):
        g.fetch("movielens-1m", cache=tmp_path, base_url=local_server.url)
    g.fetch("movielens-1m", cache=tmp_path, base_url=local_server.url, force=True)
    assert f.read_bytes() == source_files["movielens-1m"]["ml-1m.zip"]


def test_upstream_change_is_refused(local_server, source_files, tmp_path) -> None:
    _serve(local_server, source_files, "movielens-100k")
    g.fetch("movielens-100k", cache=tmp_path, base_url=local_server.url)
    local_server.files["/movielens-100k/ml-100k.zip"] = b"something else"
    with pytest.raises(g.SftDataError, match="now serves a different file"):
        g.fetch("movielens-100k", cache=tmp_path, base_url=local_server.url, force=True)


def test_offline_error_names_the_url(local_server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GENREC_OFFLINE", "1")
    with pytest.raises(g.SftDataError) as info:
        g.fetch("gowalla", cache=tmp_path)
    msg = str(info.value)
    assert "https://snap.stanford.edu/data/loc-gowalla_totalCheckins.txt.gz" in msg
    assert str(tmp_path / "gowalla" / "loc-gowalla_totalCheckins.txt.gz") in msg


def test_unreachable_server_error_names_the_url(local_server, tmp_path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(g.SftDataError, match=rf"cannot download http://127\.0\.0\.1:{port}/movielens-1m/ml-1m\.zip"):
        g.fetch("movielens-1m", cache=tmp_path, base_url=f"http://127.0.0.1:{port}", retries=0, timeout=2)


def test_http_error_and_unknown_name(local_server, tmp_path) -> None:
    with pytest.raises(g.SftDataError, match="HTTP 404"):
        g.fetch("movielens-1m", cache=tmp_path, base_url=local_server.url)
    with pytest.raises(g.SftDataError, match=r"unknown data set 'nope'.*movielens-100k"):
        g.fetch("nope")


def test_file_placed_by_hand_is_pinned(local_server, source_files, tmp_path) -> None:
    (tmp_path / "movielens-1m").mkdir(parents=True)
    (tmp_path / "movielens-1m" / "ml-1m.zip").write_bytes(source_files["movielens-1m"]["ml-1m.zip"])
    g.fetch("movielens-1m", cache=tmp_path, base_url=local_server.url)
    assert local_server.requests == []
    assert g.verify("movielens-1m", cache=tmp_path)


def test_hub_sources_go_through_resolve_dataset(monkeypatch, tmp_path) -> None:
    import genrec_core.models as models

    asked = []

    def fake(spec):
        asked.append(spec)
        return tmp_path

    monkeypatch.setattr(models, "resolve_dataset", fake)
    assert g.fetch("massive-steps-moscow") == tmp_path
    assert g.fetch("massive-steps-sao-paulo") == tmp_path
    assert g.fetch("genup-nyc") == tmp_path
    assert g.fetch("llm4poi-tky") == tmp_path
    assert asked == ["CRUISEResearchGroup/Massive-STEPS-Moscow", "CRUISEResearchGroup/Massive-STEPS-Sao-Paulo",
                     "w11wo/FourSquare-NYC-POI", "w11wo/LLM4POI"]

    def offline(spec):
        raise models.ModelNotFoundError(f"dataset {spec!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set")

    monkeypatch.setattr(models, "resolve_dataset", offline)
    with pytest.raises(g.SftDataError, match="fetch genup-tky: dataset 'w11wo/FourSquare-TKY-POI' is not in the"):
        g.fetch("genup-tky")


def test_llm4poi_prepare_reads_the_city_split_files(monkeypatch, tmp_path, small_city) -> None:
    import genrec_core.models as models

    snap = tmp_path / "snap" / "nyc"
    snap.mkdir(parents=True)
    frame = small_city.sort("utc_time")
    getnext = frame.select(
        pl.col("user_id"), pl.col("poi_id").alias("POI_id"), pl.col("category_id").alias("POI_catid"),
        pl.col("category_name").alias("POI_catname"), pl.col("latitude"), pl.col("longitude"),
        pl.col("utc_time").dt.strftime("%Y-%m-%d %H:%M:%S+00:00").alias("UTC_time"),
        pl.col("local_time").dt.strftime("%Y-%m-%d %H:%M:%S").alias("local_time"),
    )
    n = getnext.height
    getnext.head(int(n * 0.8)).write_csv(snap / "NYC_train.csv")
    getnext.slice(int(n * 0.8), int(n * 0.1)).write_csv(snap / "NYC_val.csv")
    getnext.tail(n - int(n * 0.8) - int(n * 0.1)).write_csv(snap / "NYC_test.csv")
    monkeypatch.setattr(models, "resolve_dataset", lambda spec: tmp_path / "snap")
    out = g.prepare_fetched("llm4poi-nyc", tmp_path / "out")
    data = g.load_prepared(out)
    assert set(data.checkins["split"].unique()) == {"train", "val", "test"}
    with pytest.raises(g.SftDataError, match="no tky train/test check-in files"):
        g.prepare_fetched("llm4poi-tky", tmp_path / "out2")


# ------------------------------------------------------------------------------------- --prepare


def _checkin_options() -> dict:
    return {"min_poi_checkins": 1, "min_user_checkins": 1}


def test_prepare_movielens_and_bookcrossing(local_server, source_files, tmp_path) -> None:
    _serve(local_server, source_files, "movielens-100k", "movielens-1m", "bookcrossing")
    for name, n_inter, n_items in [("movielens-100k", 20, 4), ("movielens-1m", 20, 4), ("bookcrossing", 12, 3)]:
        out = g.prepare_fetched(name, tmp_path / name, cache=tmp_path / "c", base_url=local_server.url)
        inter = pl.read_parquet(out / "interactions.parquet")
        items = pl.read_parquet(out / "items.parquet")
        assert (inter.height, items.height) == (n_inter, n_items), name
        assert {"user_id", "item_id", "rating", "timestamp"} <= set(inter.columns)
        assert json.loads((out / "source.json").read_text())["dataset"] == name
    books = pl.read_parquet(tmp_path / "bookcrossing" / "items.parquet")
    assert books["title"][0] == "Book '0' of Cafés" and books["publisher"][0] == "Pub & Co"


@pytest.mark.parametrize("name", ["foursquare-nyc", "foursquare-tky", "gowalla"])
def test_prepare_checkins(name, local_server, source_files, tmp_path) -> None:
    _serve(local_server, source_files, name)
    out = g.prepare_fetched(name, tmp_path / "prep", cache=tmp_path / "c", base_url=local_server.url, **_checkin_options())
    data = g.load_prepared(out)
    assert data.checkins["user_id"].n_unique() == 6
    assert set(data.checkins["split"].unique()) <= {"train", "val", "test"}
    if name != "gowalla":
        assert "Café" in set(data.checkins["category_name"])  # latin-1 decoded
        lt = data.checkins.sort("utc_time")["local_time"][0]
        ut = data.checkins.sort("utc_time")["utc_time"][0]
        assert (ut.replace(tzinfo=None) - lt).total_seconds() == 4 * 3600  # offset -240 minutes


@pytest.mark.parametrize("name", ["amazon-games", "amazon-movies", "amazon-food"])
def test_prepare_amazon_writes_goracs_records(name, local_server, source_files, tmp_path) -> None:
    _serve(local_server, source_files, name)
    out = g.prepare_fetched(name, tmp_path / "prep", cache=tmp_path / "c", base_url=local_server.url,
                            test_size=3, valid_size=3, split_frac=None)
    assert (out / "interactions.parquet").is_file() and (out / "items.parquet").is_file()
    for task in ("seqrec", "ctr"):
        test = pl.read_parquet(out / task / "test.parquet")
        assert test.height == 3 and set(test["task"]) == {task}


def test_cli_fetch_list_prepare_and_errors(local_server, source_files, tmp_path, capsys) -> None:
    assert main(["fetch", "--list"]) == 0
    listing = capsys.readouterr().out
    for name in ("movielens-100k", "massive-steps-moscow", "CRUISEResearchGroup/Massive-STEPS-Sao-Paulo", "genup-nyc"):
        assert name in listing
    _serve(local_server, source_files, "movielens-100k")
    args = ["fetch", "movielens-100k", "--cache", str(tmp_path / "c"), "--base-url", local_server.url]
    assert main(args) == 0
    assert str(tmp_path / "c" / "movielens-100k") in capsys.readouterr().out
    assert main([*args, "--verify"]) == 0
    assert main([*args, "--prepare", str(tmp_path / "ml")]) == 0
    assert pl.read_parquet(tmp_path / "ml" / "interactions.parquet").height == 20
    assert main(["fetch", "no-such-set"]) == 2
    assert "unknown data set" in capsys.readouterr().err


def test_fetch_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, genrec_sftdata as g; g.list_datasets(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cache_defaults_under_genrec_cache(local_server) -> None:
    assert g.datasets_dir() == Path(__import__("os").environ["GENREC_CACHE"]) / "datasets"
