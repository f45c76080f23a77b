"""MovieLens's own files, Book-Crossing, and RecBole atomic files both ways."""

from __future__ import annotations

import zipfile

import polars as pl
import pytest

import genrec_sftdata as g
from genrec_sftdata._cli import main


def _unzip(data: bytes, tmp_path, name: str):
    path = tmp_path / name
    path.write_bytes(data)
    out = tmp_path / name.removesuffix(".zip")
    with zipfile.ZipFile(path) as zf:
        zf.extractall(out)
    return path, out


def test_read_movielens_100k_zip_and_folder(source_files, tmp_path) -> None:
    archive, folder = _unzip(source_files["movielens-100k"]["ml-100k.zip"], tmp_path, "ml-100k.zip")
    inter, items = g.read_movielens(archive)
    assert inter.schema == {"user_id": pl.String, "item_id": pl.String, "rating": pl.Float64, "timestamp": pl.Int64}
    assert inter.row(0) == ("1", "1", 2.0, 881250960)
    assert items.row(0, named=True) == {"item_id": "1", "title": "Movie 1 (1991)", "release_date": "01-Jan-1991",
                                        "genres": ["Action"]}
    inter2, items2 = g.read_movielens(folder)
    assert inter.equals(inter2) and items.equals(items2)


def test_read_movielens_1m_latin1(source_files, tmp_path) -> None:
    archive, _ = _unzip(source_files["movielens-1m"]["ml-1m.zip"], tmp_path, "ml-1m.zip")
    inter, items = g.read_movielens(archive)
    assert inter.height == 20 and inter["rating"].max() == 5.0
    assert items.filter(pl.col("item_id") == "3").row(0) == ("3", "Amélie (2001)", ["Comedy", "Romance"])


def test_read_movielens_errors(tmp_path) -> None:
    (tmp_path / "u.data").write_text("1\t2\n")
    with pytest.raises(g.SftDataError, match=r"u\.data: line 1 has 2 fields"):
        g.read_movielens(tmp_path)
    with pytest.raises(g.SftDataError, match="not MovieLens"):
        g.read_movielens(_empty(tmp_path))


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_movielens_builds_ctr_records(source_files, tmp_path) -> None:
    archive, _ = _unzip(source_files["movielens-1m"]["ml-1m.zip"], tmp_path, "ml-1m.zip")
    inter, items = g.read_movielens(archive)
    recs = g.build_ctr(inter, items)
    assert sum(f.height for f in recs.values()) == inter.height - inter["user_id"].n_unique()


def test_recbole_round_trip(tmp_path) -> None:
    inter = pl.DataFrame({
        "user_id": ["u1", "u1", "u2"], "item_id": ["10", "11", "10"], "rating": [4.0, 3.5, 5.0],
        "timestamp": [881250949, 881250950, 881250951],
    })
    items = pl.DataFrame({"item_id": ["10", "11"], "title": ["Toy Story (1995)", "Heat (1995)"],
                          "genres": [["Animation", "Comedy"], ["Action"]], "year": [1995.0, 1995.0]})
    g.write_recbole(tmp_path / "ml", "ml", inter=inter, item=items)
    header = (tmp_path / "ml" / "ml.inter").read_text().splitlines()[0]
    assert header == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    assert (tmp_path / "ml" / "ml.item").read_text().splitlines()[0] == (
        "item_id:token\ttitle:token\tgenres:token_seq\tyear:float"
    )
    tables = g.read_recbole(tmp_path / "ml")
    assert tables["inter"].equals(inter.with_columns(pl.col("timestamp").cast(pl.Float64)))
    assert tables["item"].equals(items)
    assert g.read_recbole(tmp_path / "ml" / "ml")["item"].equals(items)  # the <folder>/<name> prefix
    assert set(g.read_recbole(tmp_path / "ml" / "ml.inter")) == {"inter"}


def test_recbole_reads_recbole_written_files(tmp_path) -> None:
    (tmp_path / "x.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1193\t5\t978300760\n1\t661\t3\t978302109\n"
    )
    (tmp_path / "x.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\n"
                                     "1193\tOne Flew Over\t1975\tDrama\n661\tJames\t1996\tAnimation Children's\n")
    t = g.read_recbole(tmp_path)
    assert t["inter"]["rating"].to_list() == [5.0, 3.0]
    assert t["item"]["genre"].to_list() == [["Drama"], ["Animation", "Children's"]]
    (tmp_path / "bad.user").write_text("user_id\tage:int\n")
    with pytest.raises(g.SftDataError, match="header field 'user_id' is not name:type"):
        g.read_recbole(tmp_path / "bad.user")


def test_recbole_refuses_fields_it_cannot_hold(tmp_path) -> None:
    with pytest.raises(g.SftDataError, match="tab or newline"):
        g.write_recbole(tmp_path / "o", "o", inter=pl.DataFrame({"user_id": ["a\tb"], "item_id": ["1"]}))
    with pytest.raises(g.SftDataError, match="token with a space"):
        g.write_recbole(tmp_path / "o", "o", inter=pl.DataFrame({"user_id": ["a"], "tags": [["x y"]]}))


def test_cli_recbole_both_ways(source_files, tmp_path) -> None:
    archive, _ = _unzip(source_files["movielens-100k"]["ml-100k.zip"], tmp_path, "ml-100k.zip")
    assert main(["recbole", "--to", "recbole", "--movielens", str(archive), "--name", "ml-100k",
                 "--out", str(tmp_path / "rb")]) == 0
    assert main(["recbole", "--to", "genrec", "--input", str(tmp_path / "rb"), "--out", str(tmp_path / "back")]) == 0
    inter, items = g.read_movielens(archive)
    back = pl.read_parquet(tmp_path / "back" / "interactions.parquet")
    assert back.equals(inter.with_columns(pl.col("timestamp").cast(pl.Float64)))
    assert pl.read_parquet(tmp_path / "back" / "items.parquet")["genres"].to_list() == items["genres"].to_list()


def test_read_bookcrossing(source_files, tmp_path) -> None:
    archive, folder = _unzip(source_files["bookcrossing"]["BX-CSV-Dump.zip"], tmp_path, "BX-CSV-Dump.zip")
    inter, items = g.read_bookcrossing(archive)
    assert inter.height == 12 and inter["rating"].to_list()[:3] == [0.0, 1.0, 2.0]
    assert items.columns == ["item_id", "title", "author", "year", "publisher"]
    assert g.read_bookcrossing(folder)[1].equals(items)
