"""Readers: each format written from a known frame by plain Python, read back, compared."""

from __future__ import annotations

import logging
from datetime import timedelta

import polars as pl
import pytest

import genrec_sftdata as g


@pytest.fixture(scope="module")
def city() -> pl.DataFrame:
    frame = g.synthesize_city(n_users=8, seed=11, checkins_per_user=25)
    # A non-ASCII category name, as in TSMC2014 ("Café").
    return frame.with_columns(
        category_name=pl.when(pl.col("category_name") == "Coffee Shop").then(pl.lit("Café")).otherwise("category_name")
    )


def _compare(got: pl.DataFrame, want: pl.DataFrame, cols: list[str]) -> None:
    key = ["user_id", "utc_time", "poi_id"]
    a = got.select(cols).sort(key)
    b = want.select(cols).sort(key)
    assert a.height == b.height
    for col in cols:
        if col in ("latitude", "longitude"):
            assert ((a[col] - b[col]).abs() < 1e-6).all(), col
        else:
            assert a[col].to_list() == b[col].to_list(), col


def test_tsmc_latin1(city: pl.DataFrame, tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    lines = [
        f"{r['user_id']}\t{r['poi_id']}\t{r['category_id']}\t{r['category_name']}\t{r['latitude']!r}\t"
        f"{r['longitude']!r}\t{r['timezone']}\t{r['utc_time']:%a %b %d %H:%M:%S +0000 %Y}"
        for r in city.iter_rows(named=True)
    ]
    path = tmp_path / "dataset_TSMC2014_NYC.txt"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("latin-1"))
    with caplog.at_level(logging.INFO, logger="genrec_sftdata"):
        got = g.read_checkins(path)
    assert "looks like format 'tsmc'" in caplog.text
    _compare(got, city, list(g.RAW_COLUMNS))
    assert "Café" in got["category_name"].to_list()


def test_gowalla_with_and_without_spots(city: pl.DataFrame, tmp_path) -> None:
    ids = {p: str(1000 + i) for i, p in enumerate(sorted(city["poi_id"].unique()))}
    lines = [
        f"{r['user_id']}\t{r['utc_time']:%Y-%m-%dT%H:%M:%SZ}\t{r['latitude']!r}\t{r['longitude']!r}\t{ids[r['poi_id']]}"
        for r in city.iter_rows(named=True)
    ]
    path = tmp_path / "loc-gowalla_totalCheckins.txt"
    path.write_text("\n".join(lines) + "\n")
    cats = city.unique("poi_id").sort("poi_id")
    spots = tmp_path / "spots.csv"
    rows = ["id,created_at,lng,lat,spot_categories"]
    for r in cats.iter_rows(named=True):
        num = int(r["category_id"][16:18], 16)
        cat = "[{'url': '/categories/" + str(num) + "', 'name': '" + r["category_name"] + "'}]"
        rows.append(f'{ids[r["poi_id"]]},2010-01-01,{r["longitude"]},{r["latitude"]},"{cat}"')
    spots.write_text("\n".join(rows) + "\n")
    want = city.with_columns(
        poi_id=pl.col("poi_id").replace_strict(ids),
        category_id=pl.col("category_id").str.slice(16, 2).str.to_integer(base=16).cast(pl.String),
        local_time=pl.col("utc_time").dt.replace_time_zone(None),
    )
    got = g.read_checkins(path, spots=spots)
    _compare(got, want, list(g.RAW_COLUMNS))
    bare = g.read_checkins(path)
    assert bare["category_name"].unique().to_list() == ["Unknown"]
    assert bare.height == city.height


def _getnext_frame(city: pl.DataFrame) -> pl.DataFrame:
    return city.select(
        pl.col("user_id").cast(pl.Int64),
        pl.col("poi_id").alias("POI_id"),
        pl.col("category_id").alias("POI_catid"),
        pl.col("category_id").rank("dense").cast(pl.Int64).alias("POI_catid_code"),
        pl.col("category_name").alias("POI_catname"),
        "latitude",
        "longitude",
        "timezone",
        pl.col("utc_time").dt.strftime("%Y-%m-%d %H:%M:%S+00:00").alias("UTC_time"),
        pl.col("local_time").dt.strftime("%Y-%m-%d %H:%M:%S+00:00").alias("local_time"),
        pl.lit(1).alias("day_of_week"),
        (pl.col("user_id") + "_1").alias("trajectory_id"),
    )


def test_getnext_csv(city: pl.DataFrame, tmp_path) -> None:
    path = tmp_path / "NYC_train.csv"
    _getnext_frame(city).write_csv(path)
    assert g.sniff_format(path) == "getnext"
    got = g.read_checkins(path)
    _compare(got, city, list(g.RAW_COLUMNS))
    assert "source_trajectory_id" in got.columns


def test_gowalla_ca_variant_category_strings_utc_only(city: pl.DataFrame, tmp_path) -> None:
    frame = _getnext_frame(city).drop("local_time", "timezone", "POI_catid").with_columns(
        POI_catname=pl.concat_str(
            pl.lit("[{'url': '/categories/"), pl.col("POI_catid_code").cast(pl.String),
            pl.lit("', 'name': '"), pl.col("POI_catname"), pl.lit("'}]"),
        ),
        UTC_time=pl.col("UTC_time").str.replace(r"\+00:00$", ""),
    )
    path = tmp_path / "CA_train.csv"
    frame.write_csv(path)
    got = g.read_checkins(path, format="getnext")
    want = city.with_columns(
        local_time=pl.col("utc_time").dt.replace_time_zone(None),
        category_id=pl.col("category_id").rank("dense").cast(pl.Int64).cast(pl.String),
    )
    _compare(got, want, list(g.RAW_COLUMNS))


def test_contract_parquet_and_csv(city: pl.DataFrame, tmp_path) -> None:
    city.write_parquet(tmp_path / "c.parquet")
    _compare(g.read_checkins(tmp_path / "c.parquet"), city, list(g.RAW_COLUMNS))
    city.write_csv(tmp_path / "c.csv")
    assert g.sniff_format(tmp_path / "c.csv") == "csv"
    _compare(g.read_checkins(tmp_path / "c.csv"), city, list(g.RAW_COLUMNS))
    # Several files are concatenated.
    half = city.height // 2
    city[:half].write_parquet(tmp_path / "a.parquet")
    city[half:].write_parquet(tmp_path / "b.parquet")
    _compare(g.read_checkins([tmp_path / "a.parquet", tmp_path / "b.parquet"]), city, list(g.RAW_COLUMNS))


def test_hf_dataset_on_disk_keeps_splits(city: pl.DataFrame, tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    frame = _getnext_frame(city)
    cut = frame.height // 2
    dd = datasets.DatasetDict({
        "train": datasets.Dataset(frame[:cut].to_arrow()),
        "validation": datasets.Dataset(frame[cut:].to_arrow()),
    })
    dd.save_to_disk(str(tmp_path / "hf"))
    assert g.sniff_format(tmp_path / "hf") == "hf"
    got = g.read_checkins(tmp_path / "hf")
    assert got["split"].value_counts().sort("split")["count"].to_list() == [cut, frame.height - cut]
    _compare(got, city, list(g.RAW_COLUMNS))
    data = g.prepare(tmp_path / "hf", config=g.PrepareConfig(min_poi_checkins=0, min_user_checkins=0))
    assert data.stats["given_split"] is True
    assert data.test.height == 0
    datasets.Dataset(city.to_arrow()).save_to_disk(str(tmp_path / "flat"))
    _compare(g.read_checkins(tmp_path / "flat"), city, list(g.RAW_COLUMNS))


def test_bad_inputs_name_file_column_row(city: pl.DataFrame, tmp_path) -> None:
    path = tmp_path / "bad.csv"
    frame = _getnext_frame(city).with_columns(
        UTC_time=pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("yesterday")).otherwise("UTC_time")
    )
    frame.write_csv(path)
    with pytest.raises(g.SftDataError, match=r"bad\.csv: column 'UTC_time' has an unparsable time at row 3: 'yesterday'"):
        g.read_checkins(path)
    odd = tmp_path / "odd.txt"
    odd.write_text("hello world\n")
    with pytest.raises(g.SftDataError, match=r"odd\.txt: unknown check-in format; first line: 'hello world'"):
        g.read_checkins(odd)
    with pytest.raises(g.SftDataError, match="unknown format 'xml'"):
        g.read_checkins(odd, format="xml")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        g.read_checkins(tmp_path / "nope.csv")
    tsmc = tmp_path / "t.txt"
    tsmc.write_text("1\tv\tc\tCafe\t40.0\t-73.0\tminus\tTue Apr 03 18:00:09 +0000 2012\n")
    with pytest.raises(g.SftDataError, match=r"timezone offset.*row 0"):
        g.read_checkins(tsmc, format="tsmc")


def test_timezone_derives_local_time(city: pl.DataFrame) -> None:
    frame = city.drop("local_time")
    got = g.prepare(frame, config=g.PrepareConfig(min_poi_checkins=0, min_user_checkins=0, min_trajectory_checkins=1))
    want = got.checkins["utc_time"].dt.replace_time_zone(None) + timedelta(minutes=-300)
    assert got.checkins["local_time"].to_list() == want.to_list()


@pytest.mark.slow  # datasets retries the hub before giving up: about 20 s
def test_hub_id_that_cannot_be_loaded_is_one_clear_error() -> None:
    pytest.importorskip("datasets")
    assert g.sniff_format("genrec-tests/no-such-dataset") == "hf"
    with pytest.raises(g.SftDataError, match=r"genrec-tests/no-such-dataset: cannot load the Hugging Face dataset"):
        g.read_checkins("genrec-tests/no-such-dataset")


def test_llm4poi_raw_ca_names(city: pl.DataFrame, tmp_path) -> None:
    """LLM4POI's raw Gowalla-CA CSV: UserId, PoiId, PoiCategoryId (a category string), UTCTime."""
    frame = city.select(
        pl.col("user_id").cast(pl.Int64).alias("UserId"),
        pl.col("poi_id").alias("PoiId"),
        pl.concat_str(
            pl.lit("[{'url': '/categories/"), pl.col("category_id").rank("dense").cast(pl.String),
            pl.lit("', 'name': '"), pl.col("category_name"), pl.lit("'}]"),
        ).alias("PoiCategoryId"),
        pl.col("latitude").alias("Latitude"),
        pl.col("longitude").alias("Longitude"),
        pl.col("utc_time").dt.strftime("%Y-%m-%dT%H:%M:%SZ").alias("UTCTime"),
    )
    path = tmp_path / "dataset_gowalla_ca_ne.csv"
    frame.write_csv(path)
    assert g.sniff_format(path) == "getnext"
    want = city.with_columns(
        local_time=pl.col("utc_time").dt.replace_time_zone(None),
        category_id=pl.col("category_id").rank("dense").cast(pl.String),
    )
    _compare(g.read_checkins(path), want, list(g.RAW_COLUMNS))


def test_contract_csv_with_an_unparsable_time_names_the_row(tmp_path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(
        "user_id,poi_id,category_id,category_name,latitude,longitude,utc_time\n"
        "1,a,c,C,40.0,-73.0,2012-01-01T00:00:00Z\n"
        "1,b,c,C,40.0,-73.0,yesterday\n"
    )
    with pytest.raises(g.SftDataError, match=r"c\.csv: column 'utc_time' has an unparsable time at row 1: 'yesterday'"):
        g.read_checkins(path)
    path.write_text(
        "user_id,poi_id,category_id,category_name,latitude,longitude,utc_time\n"
        "1,a,c,C,40.0,-73.0,2012-01-01 05:00:00+05:00\n"
    )
    assert f"{g.read_checkins(path)['utc_time'][0]:%Y-%m-%d %H:%M}" == "2012-01-01 00:00"
