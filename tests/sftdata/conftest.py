"""Shared fixtures for genrec-sftdata tests: a small synthetic city, raw and prepared."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

import genrec_sftdata as g


@pytest.fixture(scope="session")
def small_city() -> pl.DataFrame:
    return g.synthesize_city(n_users=60, seed=7)


@pytest.fixture(scope="session")
def small_prepared(small_city: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> g.PreparedData:
    return g.prepare(small_city, out=tmp_path_factory.mktemp("prepared"))


def make_checkins(rows: list[tuple[str, str, float]], *, start: datetime = datetime(2012, 4, 3)) -> pl.DataFrame:
    """Contract check-ins from (user, poi, hours after start); category follows the POI's first letter."""
    users, pois, hours = zip(*rows)
    local = [start + timedelta(hours=h) for h in hours]
    return pl.DataFrame(
        {
            "user_id": list(users),
            "poi_id": list(pois),
            "category_id": [f"c{p[0]}" for p in pois],
            "category_name": [f"Cat {p[0].upper()}" for p in pois],
            "latitude": [40.7 + 0.001 * i for i in range(len(rows))],
            "longitude": [-73.9 - 0.001 * i for i in range(len(rows))],
            "local_time": local,
            "utc_time": [t + timedelta(hours=5) for t in local],
        }
    ).with_columns(pl.col("utc_time").dt.replace_time_zone("UTC"))


# ------------------------------------------------------------------ a local HTTP server with Range


class LocalServer:
    """Serves ``files`` (URL path -> bytes) on 127.0.0.1, honouring ``Range: bytes=N-``.

    A path in ``drop_once`` gets its full headers but only half its body on the first request, then
    the connection is closed (a transfer broken midway). ``requests`` logs (path, Range header).
    """

    def __init__(self) -> None:
        import http.server
        import threading

        self.files: dict[str, bytes] = {}
        self.drop_once: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if self.path in server.drop_once:
                    server.drop_once.discard(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def local_server(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """A LocalServer, with proxies bypassed for 127.0.0.1 and the genrec cache in a temporary folder."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("GENREC_CACHE", str(tmp_path_factory.mktemp("genrec-cache")))
    monkeypatch.delenv("GENREC_DATA_MIRROR", raising=False)
    monkeypatch.delenv("GENREC_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    server = LocalServer()
    yield server
    server.close()


# ------------------------------------------- small files in each fetch source's own published format


def _zip(members: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _gz(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, mtime=0)


def amazon_reviews_lines(n_users: int = 4, n_items: int = 8, per_user: int = 13) -> list[dict]:
    """5-core-style reviews: user u reviews items in a rotating order, one a day, ratings 1..5."""
    rows = []
    for u in range(n_users):
        for k in range(per_user):
            item = (u + k) % n_items
            rows.append({
                "overall": float(1 + (u + k) % 5), "verified": True, "reviewTime": "01 1, 2015",
                "reviewerID": f"A{u:03d}", "asin": f"B{item:04d}", "reviewerName": f"user {u}",
                "reviewText": "fine", "summary": "ok", "unixReviewTime": 1_420_070_400 + 86_400 * (k * n_users + u),
            })
    return rows


def amazon_meta_lines(n_items: int = 8) -> list[dict]:
    return [
        {"category": ["Video Games"], "title": f"Game {i} - a long enough title for the movies rule, really",
         "brand": f"Brand{i}" if i % 2 else "", "asin": f"B{i:04d}"}
        for i in range(n_items)
    ]


def tsmc_text(n_users: int = 6, per_user: int = 24) -> bytes:
    from datetime import datetime, timedelta

    lines = []
    start = datetime(2012, 4, 3, 18, 0, 9)
    for u in range(n_users):
        for k in range(per_user):
            poi = (u + k) % 5
            t = start + timedelta(hours=5 * k + u)
            lines.append("\t".join([
                str(470 + u), f"49bbd6c0f964a520f4531f{poi:02d}", f"4bf58dd8d48988d127951{poi:03d}",
                "Caf\xe9" if poi == 0 else f"Category {poi}", f"{40.7 + poi / 100}", f"{-74.0 - poi / 100}", "-240",
                t.strftime("%a %b %d %H:%M:%S +0000 %Y"),
            ]))
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def gowalla_text(n_users: int = 6, per_user: int = 24) -> bytes:
    from datetime import datetime, timedelta

    lines = []
    start = datetime(2010, 10, 1)
    for u in range(n_users):
        for k in range(per_user):
            t = start + timedelta(hours=5 * k + u)
            poi = (u + k) % 5
            lines.append(f"{u}\t{t:%Y-%m-%dT%H:%M:%SZ}\t{30.2 + poi / 100}\t{-97.7 - poi / 100}\t{22847 + poi}")
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="session")
def source_files() -> dict[str, dict[str, bytes]]:
    """For every URL data set of ``genrec_sftdata.fetch``: its files, small, in their real format."""
    import json

    ml100k_data = "".join(f"{u}\t{i}\t{1 + (u * i) % 5}\t{881250949 + 10 * u + i}\n" for u in range(1, 6) for i in range(1, 5))
    ml100k_item = "".join(
        f"{i}|Movie {i} (199{i})|01-Jan-199{i}||http://us.imdb.com/M/title-exact?Movie|" + "|".join(
            "1" if g == i else "0" for g in range(19)) + "\n"
        for i in range(1, 5)
    )
    ml1m_ratings = "".join(f"{u}::{i}::{1 + (u + i) % 5}::{978300760 + u * 7 + i}\n" for u in range(1, 6) for i in range(1, 5))
    ml1m_movies = "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Jumanji (1995)::Adventure\n3::Am\xe9lie (2001)::Comedy|Romance\n4::Heat (1995)::Action|Crime|Thriller\n"
    reviews = amazon_reviews_lines()
    meta = amazon_meta_lines()
    reviews_json = "".join(json.dumps(r) + "\n" for r in reviews).encode()
    meta_json = "".join(json.dumps(m) + "\n" for m in meta).encode()
    # The 2014 metadata is one Python literal per line (single quotes), not JSON.
    meta_literal = "".join(repr({"asin": m["asin"], "title": m["title"], "brand": m["brand"],
                                 "categories": [["Grocery & Gourmet Food"]]}) + "\n" for m in meta).encode()
    bx_ratings = '"User-ID";"ISBN";"Book-Rating"\n' + "".join(
        f'"{276725 + u}";"03454510{i}X";"{(u * 3 + i) % 11}"\n' for u in range(4) for i in range(3))
    bx_books = ('"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";"Image-URL-S";"Image-URL-M";"Image-URL-L"\n'
                + "".join(f'"03454510{i}X";"Book \\"{i}\\" of Caf\xe9s";"Author {i}";"2002";"Pub &amp; Co";"s";"m";"l"\n' for i in range(3)))
    tsmc = tsmc_text()
    tsmc_zip = _zip({"dataset_tsmc2014/dataset_TSMC2014_NYC.txt": tsmc, "dataset_tsmc2014/dataset_TSMC2014_TKY.txt": tsmc,
                     "dataset_tsmc2014/dataset_TSMC2014_readme.txt": b"readme"})
    return {
        "movielens-100k": {"ml-100k.zip": _zip({"ml-100k/u.data": ml100k_data.encode(), "ml-100k/u.item": ml100k_item.encode("latin-1")})},
        "movielens-1m": {"ml-1m.zip": _zip({"ml-1m/ratings.dat": ml1m_ratings.encode(), "ml-1m/movies.dat": ml1m_movies.encode("latin-1")})},
        "foursquare-nyc": {"dataset_tsmc2014.zip": tsmc_zip},
        "foursquare-tky": {"dataset_tsmc2014.zip": tsmc_zip},
        "gowalla": {"loc-gowalla_totalCheckins.txt.gz": _gz(gowalla_text())},
        "amazon-games": {"Video_Games_5.json.gz": _gz(reviews_json), "meta_Video_Games.json.gz": _gz(meta_json)},
        "amazon-movies": {"Movies_and_TV_5.json.gz": _gz(reviews_json), "meta_Movies_and_TV.json.gz": _gz(meta_json)},
        "amazon-food": {"reviews_Grocery_and_Gourmet_Food_5.json.gz": _gz(reviews_json),
                        "meta_Grocery_and_Gourmet_Food.json.gz": _gz(meta_literal)},
        "bookcrossing": {"BX-CSV-Dump.zip": _zip({"BX-Book-Ratings.csv": bx_ratings.encode("latin-1"),
                                                  "BX-Books.csv": bx_books.encode("latin-1"),
                                                  "BX-Users.csv": b'"User-ID";"Location";"Age"\n'})},
    }
