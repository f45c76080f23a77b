"""Amazon readers and GORACS's SeqRec / CTR preparation, on small files in Amazon's own format.

Expected values are worked out by hand from GORACS's published rules (see genrec_sftdata._amazon)."""

from __future__ import annotations

import gzip
import json

import polars as pl
import pytest

import genrec_sftdata as g
from genrec_core import SFT_RECORDS


def _write(path, rows, *, literal=False, gz=False):
    text = "".join((repr(r) if literal else json.dumps(r)) + "\n" for r in rows)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def _review(user, asin, t, overall=5.0):
    return {"overall": overall, "reviewerID": user, "asin": asin, "unixReviewTime": t, "reviewText": "x"}


@pytest.fixture
def games(tmp_path):
    # u1 has 12 items (targets at positions 10, 11), u2 has 3 (target at 2: min(10, 3 - 1)), u3 one item
    # (GORACS still makes a sample with an empty history), and one review of an item whose title is too short.
    reviews = [_review("u1", f"A{k:02d}", 1000 + 10 * k, overall=float(1 + k % 5)) for k in range(12)]
    reviews += [_review("u2", "A00", 1005), _review("u2", "A01", 1001), _review("u2", "A02", 1500)]
    reviews += [_review("u3", "A03", 999), _review("u2", "SHORT", 1200)]
    meta = [{"asin": f"A{k:02d}", "title": f"Game {k}"} for k in range(12)] + [{"asin": "SHORT", "title": "X"}]
    meta.append({"asin": "A05", "title": "Game 5 (updated)"})  # a later line for the same ASIN wins
    return _write(tmp_path / "Video_Games_5.json.gz", reviews, gz=True), _write(tmp_path / "meta_Video_Games.json", meta)


def test_read_reviews_gz_and_plain(games, tmp_path) -> None:
    rev = g.read_amazon_reviews(games[0])
    plain = tmp_path / "plain.json"
    plain.write_bytes(gzip.decompress(games[0].read_bytes()))
    assert rev.equals(g.read_amazon_reviews(plain))
    assert rev.columns == ["user_id", "item_id", "rating", "timestamp"] and rev.height == 17


def test_meta_python_literals_are_parsed_never_evaluated(tmp_path) -> None:
    meta = _write(tmp_path / "meta.json", [{"asin": "B1", "title": "Kellogg's Corn Flakes", "brand": "Kellogg's"}], literal=True)
    assert g.read_amazon_meta(meta).row(0) == ("B1", "Kellogg's Corn Flakes", "Kellogg's")
    evil = tmp_path / "evil.json"
    evil.write_text("__import__('os').system('echo hacked')\n")
    with pytest.raises(g.SftDataError, match="line 1 is neither JSON nor a Python literal"):
        g.read_amazon_meta(evil)


def test_goracs_regex_titles_as_published(tmp_path) -> None:
    # Food: apostrophes become "_" and the regex wants _title_: _..._. A Python literal writes a title
    # holding an apostrophe in double quotes, so that item gets no title at all and GORACS drops it; a
    # title with "_" in it ends there; an empty brand is not appended.
    food = _write(tmp_path / "meta_food.json", [
        {"asin": "B1", "title": "Kellogg's Corn Flakes", "brand": "Kellogg's"},
        {"asin": "B2", "title": "Plain Oats", "brand": ""},
        {"asin": "B3", "title": "Tea_Bags Green", "brand": "Leaf"},
    ], literal=True)
    assert g.read_amazon_meta(food, goracs_regex="food").rows() == [
        ("B1", None, None), ("B2", "Plain Oats", ""), ("B3", "Tea", "Leaf"),
    ]
    titles = g.goracs_titles(g.read_amazon_meta(food, goracs_regex="food"), g.GoracsConfig(domain="food"))
    assert titles.rows() == [("B2", "Plain Oats"), ("B3", "Tea - Leaf")]
    # Movies: JSON lines, apostrophes become "_", any brand field (even empty) is appended, titles > 50 chars.
    long = "A Movie Title That Is Certainly Longer Than Fifty Characters"
    movies = _write(tmp_path / "meta_movies.json", [
        {"asin": "M1", "title": "Schindler's " + long, "brand": ""},
        {"asin": "M2", "title": "Short", "brand": "Studio"},
        {"asin": "M3", "title": long},
    ])
    titles = g.goracs_titles(g.read_amazon_meta(movies, goracs_regex="movies"), g.GoracsConfig(domain="movies"))
    assert titles.rows() == [("M1", "Schindler_s " + long + " - "), ("M3", long)]


def test_goracs_samples_positions_order_and_split(games) -> None:
    cfg = g.GoracsConfig(domain="games", test_size=2, valid_size=1)
    s = g.goracs_samples(g.read_amazon_reviews(games[0]), g.read_amazon_meta(games[1]), cfg)
    # u1: positions 10, 11 (history of 10); u2 (A01 t=1001, A00 t=1005, A02 t=1500): position 2; u3: position 0.
    assert s.height == 4
    assert s["timestamp"].to_list() == sorted(s["timestamp"].to_list())
    by_user = {r["user_id"]: r for r in s.iter_rows(named=True) if r["user_id"] != "u1"}
    assert by_user["u2"]["history_asins"] == ["A01", "A00"] and by_user["u2"]["target_asin"] == "A02"
    assert by_user["u3"]["history_asins"] == [] and by_user["u3"]["target_asin"] == "A03"
    u1 = s.filter(pl.col("user_id") == "u1")
    assert u1["history_asins"].to_list()[0] == [f"A{k:02d}" for k in range(10)]
    assert u1["history_asins"].to_list()[1] == [f"A{k:02d}" for k in range(1, 11)]
    assert "Game 5 (updated)" in u1["history_titles"].to_list()[0]
    # Time order: u3 (999), u1@10 (1100), u1@11 (1110), u2 (1500); last 2 test, 1 before valid.
    assert s["split"].to_list() == ["train", "val", "test", "test"]
    assert s["target_asin"].to_list() == ["A03", "A10", "A11", "A02"]


def test_goracs_seqrec_records_text(games) -> None:
    cfg = g.GoracsConfig(domain="games", test_size=2, valid_size=1, num_negatives=3)
    recs = g.build_goracs(*games, task="seqrec", config=cfg)
    assert [recs[s].height for s in ("train", "val", "test")] == [1, 1, 2]
    u2 = recs["test"].filter(pl.col("user_id") == "u2").row(0, named=True)
    expected_input = 'The user has played the following video games before:"Game 1", "Game 0"\n '
    assert u2["input"] == expected_input and u2["completion"] == '"Game 2"'
    assert u2["prompt"] == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request. \n\n### Instruction:\n"
        "Given a list of video games the user has played before, please recommend a new video game that the user "
        "likes to the user.\n\n### Input:\n" + expected_input + "\n\n### Response:\n"
    )
    assert len(u2["negative_item_ids"]) == 3
    assert not set(u2["negative_item_ids"]) & {*u2["history_item_ids"], u2["target_item_id"]}
    assert recs["train"]["negative_item_ids"].to_list() == [[]]
    for frame in recs.values():
        SFT_RECORDS.validate(frame)


def test_goracs_ctr_records_text(games) -> None:
    cfg = g.GoracsConfig(domain="games", test_size=2, valid_size=1)
    recs = g.build_goracs(*games, task="ctr", config=cfg)
    u1 = recs["val"].row(0, named=True)  # u1 position 10: ratings 1 + k % 5 -> liked k in {3, 4, 8, 9}
    assert u1["input"] == (
        'User Preference: "Game 3", "Game 4", "Game 8", "Game 9"\n'
        'User Unpreference: "Game 0", "Game 1", "Game 2", "Game 5 (updated)", "Game 6", "Game 7"\n'
        'Whether the user will like the target movie "Game 10"?'
    )
    assert u1["instruction"] == (
        "Given the user's preference and unpreference, identify whether the user will like the target movie by "
        'answering "Yes" or "No".'
    )
    assert (u1["label"], u1["completion"]) == (0, "No")  # rating 1 + 10 % 5 = 1
    assert recs["test"].filter(pl.col("user_id") == "u2")["completion"].to_list() == ["Yes"]


def test_goracs_movies_and_food_rules(tmp_path) -> None:
    long = "Film title long enough to pass the fifty character rule of GORACS"
    reviews = [_review("m1", f"M{k}", 100 + k) for k in range(3)] + [_review("m2", f"M{k}", 200 + k) for k in range(4)]
    meta = [{"asin": f"M{k}", "title": f"{long} {k}", "brand": "Studio"} for k in range(4)]
    rv, mt = _write(tmp_path / "r.json", reviews), _write(tmp_path / "m.json", meta)
    s = g.goracs_samples(g.read_amazon_reviews(rv), g.read_amazon_meta(mt, goracs_regex="movies"),
                         g.GoracsConfig(domain="movies", test_size=0, valid_size=0))
    # Movies drops samples with fewer than 3 history items: m1 (3 items, target at 2) is skipped.
    assert s["user_id"].to_list() == ["m2"] and s["history_titles"][0][0] == f"{long} 0 - Studio"
    recs = g.build_goracs(rv, mt, task="seqrec", config=g.GoracsConfig(domain="movies", test_size=0, valid_size=0))
    assert recs["train"]["input"][0].startswith("The user has watched the following movies and TVs before:")
    # Food: 10% / 10% of the samples, rounded.
    reviews = [_review(f"f{u}", f"F{(u + k) % 6}", 10 * u + k) for u in range(10) for k in range(2)]
    meta = [{"asin": f"F{k}", "title": f"Food {k}", "brand": ""} for k in range(6)]
    recs = g.build_goracs(_write(tmp_path / "fr.json", reviews), _write(tmp_path / "fm.json", meta, literal=True),
                          task="ctr", config=g.GoracsConfig(domain="food"))
    assert [recs[s].height for s in ("train", "val", "test")] == [8, 1, 1]
    assert recs["test"]["input"][0].endswith('Whether the user will like the target food product named "Food 4"?')


def test_cli_goracs(games, tmp_path) -> None:
    from genrec_sftdata._cli import main

    args = ["goracs", "--reviews", str(games[0]), "--meta", str(games[1]), "--out", str(tmp_path / "out"),
            "--domain", "games", "--test-size", "2", "--valid-size", "1", "--num-negatives", "2"]
    assert main(args) == 0
    assert pl.read_parquet(tmp_path / "out" / "seqrec" / "test.parquet").height == 2
    assert pl.read_parquet(tmp_path / "out" / "ctr" / "train.parquet")["task"].to_list() == ["ctr"]
    assert main([*args[:-6], "--domain", "books"]) == 2
