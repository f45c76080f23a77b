"""Readers of recommender-system rating data: MovieLens's own files, Book-Crossing, RecBole atomic files.

Every reader returns an ``interactions`` table (``user_id, item_id, rating, timestamp``; ids as
strings) and an ``items`` table (``item_id, title`` and whatever else the source has), the shapes
``build_ctr`` and ``build_seqrec`` read.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import polars as pl

from genrec_sftdata._errors import SftDataError

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)


def _member_bytes(path: Path, names: tuple[str, ...]) -> tuple[str, bytes] | None:
    """The first of ``names`` found in a folder (searched recursively) or a zip archive."""
    if path.is_dir():
        for name in names:
            hits = sorted(path.rglob(name))
            if hits:
                return str(hits[0]), hits[0].read_bytes()
        return None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            by_base = {n.rsplit("/", 1)[-1]: n for n in zf.namelist() if not n.endswith("/")}
            for name in names:
                if name in by_base:
                    return f"{path}!{by_base[name]}", zf.read(by_base[name])
        return None
    if path.name in names:
        return str(path), path.read_bytes()
    return None


def _split_lines(raw: bytes, sep: str, n: int, source: str, *, encoding: str = "latin-1") -> list[list[str]]:
    rows = []
    for i, line in enumerate(raw.decode(encoding).splitlines()):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) < n:
            raise SftDataError(f"{source}: line {i + 1} has {len(parts)} fields separated by {sep!r}, expected {n}: {line[:200]!r}")
        rows.append(parts)
    return rows


def read_movielens(path: str | os.PathLike[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """MovieLens 100K (``u.data``, ``u.item``) or 1M (``ratings.dat``, ``movies.dat``) as
    ``(interactions, items)``: from the zip archive GroupLens ships, its extracted folder, or the files.

    ``interactions``: ``user_id, item_id`` (strings), ``rating`` (Float64), ``timestamp`` (Int64 Unix
    seconds). ``items``: ``item_id, title, genres`` (a list of genre names), and for 100K ``release_date``.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such MovieLens file or folder")
    found_100k = _member_bytes(p, ("u.data",))
    if found_100k is not None:
        src, raw = found_100k
        rows = _split_lines(raw, "\t", 4, src)
        inter = pl.DataFrame(
            rows, schema=["user_id", "item_id", "rating", "timestamp"], orient="row"
        )
        items_found = _member_bytes(p, ("u.item",))
        if items_found is None:
            raise SftDataError(f"{p}: MovieLens 100K has u.data but no u.item beside it")
        isrc, iraw = items_found
        irows = _split_lines(iraw, "|", 5 + len(ML100K_GENRES), isrc)
        flags = [[g for g, f in zip(ML100K_GENRES, r[5:5 + len(ML100K_GENRES)]) if f.strip() == "1"] for r in irows]
        items = pl.DataFrame(
            {
                "item_id": [r[0] for r in irows],
                "title": [r[1] for r in irows],
                "release_date": [r[2] for r in irows],
                "genres": flags,
            },
            schema={"item_id": pl.String, "title": pl.String, "release_date": pl.String, "genres": pl.List(pl.String)},
        )
    else:
        found_1m = _member_bytes(p, ("ratings.dat",))
        if found_1m is None:
            raise SftDataError(f"{p}: not MovieLens (no u.data for 100K, no ratings.dat for 1M)")
        src, raw = found_1m
        inter = pl.DataFrame(_split_lines(raw, "::", 4, src), schema=["user_id", "item_id", "rating", "timestamp"], orient="row")
        items_found = _member_bytes(p, ("movies.dat",))
        if items_found is None:
            raise SftDataError(f"{p}: MovieLens 1M has ratings.dat but no movies.dat beside it")
        isrc, iraw = items_found
        irows = _split_lines(iraw, "::", 3, isrc)
        items = pl.DataFrame(
            {
                "item_id": [r[0] for r in irows],
                # A title may itself contain "::"? It does not in ML-1M, but keep everything before the genres.
                "title": ["::".join(r[1:-1]) for r in irows],
                "genres": [r[-1].split("|") if r[-1] else [] for r in irows],
            },
            schema={"item_id": pl.String, "title": pl.String, "genres": pl.List(pl.String)},
        )
    try:
        inter = inter.select(
            pl.col("user_id").str.strip_chars(),
            pl.col("item_id").str.strip_chars(),
            pl.col("rating").str.strip_chars().cast(pl.Float64),
            pl.col("timestamp").str.strip_chars().cast(pl.Int64),
        )
    except pl.exceptions.PolarsError as exc:
        raise SftDataError(f"{src}: rating or timestamp is not a number ({exc})") from exc
    return inter, items


def read_bookcrossing(path: str | os.PathLike[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Book-Crossing (``BX-Book-Ratings.csv``, ``BX-Books.csv``: ``;``-separated, quoted, latin-1) as
    ``(interactions, items)``, from ``BX-CSV-Dump.zip``, its folder or the files.

    ``interactions``: ``user_id, item_id`` (ISBN), ``rating`` (0 is Book-Crossing's implicit
    feedback, 1-10 explicit). The dump has no times; ``timestamp`` is the row order, which is what a
    chronological split of it can use (TALLRec's book split is random for the same reason).
    ``items``: ``item_id, title, author, year, publisher``.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such Book-Crossing file or folder")
    ratings = _member_bytes(p, ("BX-Book-Ratings.csv",))
    books = _member_bytes(p, ("BX-Books.csv",))
    if ratings is None or books is None:
        raise SftDataError(f"{p}: Book-Crossing needs BX-Book-Ratings.csv and BX-Books.csv")

    def read(found: tuple[str, bytes], cols: list[str]) -> pl.DataFrame:
        src, raw = found
        # The dump escapes quotes inside fields as \" (not ""), which a CSV parser reads as a field end.
        text = raw.decode("latin-1").replace('\\"', "'").replace("&amp;", "&")
        try:
            frame = pl.read_csv(
                io.StringIO(text), separator=";", quote_char='"', infer_schema=False, truncate_ragged_lines=True,
            )
        except pl.exceptions.PolarsError as exc:
            raise SftDataError(f"{src}: cannot read as Book-Crossing CSV: {exc}") from exc
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise SftDataError(f"{src}: missing column(s) {missing}; columns: {frame.columns}")
        return frame

    r = read(ratings, ["User-ID", "ISBN", "Book-Rating"])
    b = read(books, ["ISBN", "Book-Title"])
    inter = r.select(
        pl.col("User-ID").alias("user_id"),
        pl.col("ISBN").alias("item_id"),
        pl.col("Book-Rating").cast(pl.Float64, strict=False).alias("rating"),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("timestamp"),
    )
    extra = {"Book-Author": "author", "Year-Of-Publication": "year", "Publisher": "publisher"}
    items = b.select(
        pl.col("ISBN").alias("item_id"),
        pl.col("Book-Title").alias("title"),
        *[pl.col(k).alias(v) for k, v in extra.items() if k in b.columns],
    ).unique("item_id", keep="first", maintain_order=True)
    return inter, items


# ------------------------------------------------------------------------------------------ RecBole

_RECBOLE_TYPES = {"token": pl.String, "float": pl.Float64, "token_seq": pl.List(pl.String), "float_seq": pl.List(pl.Float64)}


# RecBole reads these as float even when they hold integers.
_FLOAT_COLUMNS = {"rating", "timestamp"}


def read_recbole(path: str | os.PathLike[str]) -> dict[str, pl.DataFrame]:
    """RecBole atomic files as tables: ``path`` is a folder holding ``<name>.inter`` (and ``.item``,
    ``.user`` ...), a ``<folder>/<name>`` prefix, or one atomic file.

    Headers are typed (``user_id:token item_id:token rating:float timestamp:float``): ``token`` is a
    string, ``float`` a Float64, ``token_seq`` / ``float_seq`` space-separated lists. Columns lose their
    ``:type`` suffix. Returns ``{"inter": ..., "item": ..., ...}`` for the suffixes found.
    """
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".inter", ".item", ".user", ".kg", ".link", ".net"))
    elif p.is_file():
        files = [p]
    else:
        files = sorted(p.parent.glob(f"{p.name}.*")) if p.parent.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{p}: no RecBole atomic files (.inter, .item, ...)")
    out: dict[str, pl.DataFrame] = {}
    for f in files:
        kind = f.suffix.lstrip(".")
        if kind in out:
            raise SftDataError(f"{f}: a second .{kind} file in {f.parent}; pass the <folder>/<name> prefix")
        out[kind] = _read_atomic(f)
    return out


def _read_atomic(f: Path) -> pl.DataFrame:
    text = f.read_text(encoding="utf-8")
    header, _, body = text.partition("\n")
    names, types = [], []
    for field_ in header.rstrip("\r").split("\t"):
        name, sep, typ = field_.rpartition(":")
        if not sep or typ not in _RECBOLE_TYPES:
            raise SftDataError(
                f"{f}: header field {field_!r} is not name:type with type one of {sorted(_RECBOLE_TYPES)}"
            )
        names.append(name)
        types.append(typ)
    frame = pl.read_csv(
        io.StringIO(body), separator="\t", has_header=False, new_columns=names, quote_char=None,
        schema_overrides={n: pl.String for n in names},
    ) if body.strip() else pl.DataFrame(schema={n: pl.String for n in names})
    exprs = []
    for name, typ in zip(names, types):
        col = pl.col(name)
        if typ == "float":
            exprs.append(col.cast(pl.Float64, strict=False))
        elif typ == "token_seq":
            exprs.append(col.str.split(" ").list.eval(pl.element().filter(pl.element() != "")))
        elif typ == "float_seq":
            exprs.append(col.str.split(" ").list.eval(pl.element().filter(pl.element() != "").cast(pl.Float64)))
        else:
            exprs.append(col)
    return frame.select(exprs)


def write_recbole(
    out: str | os.PathLike[str],
    name: str,
    *,
    inter: pl.DataFrame,
    item: pl.DataFrame | None = None,
    user: pl.DataFrame | None = None,
) -> Path:
    """Write tables as RecBole atomic files ``out/<name>.inter`` (``.item``, ``.user``), as one set.

    Strings and integer ids become ``token``; floats and the ``rating`` / ``timestamp`` columns
    ``float``; lists ``token_seq`` / ``float_seq`` (space-joined). RecBole reads the folder with
    ``dataset=<name>, data_path=<parent of out>``.
    """
    tables = {"inter": inter, "item": item, "user": user}

    def write(tmp: Path) -> None:
        for kind, frame in tables.items():
            if frame is None:
                continue
            header, exprs = [], []
            for col, dtype in frame.schema.items():
                if isinstance(dtype, pl.List):
                    typ = "float_seq" if dtype.inner.is_numeric() else "token_seq"
                    if typ == "token_seq" and frame[col].explode().cast(pl.String).str.contains(" ").any():
                        raise SftDataError(f"write_recbole: column {col!r} holds a token with a space; RecBole splits on spaces")
                    exprs.append(pl.col(col).list.eval(pl.element().cast(pl.String)).list.join(" ").alias(col))
                elif col in _FLOAT_COLUMNS or dtype.is_float():
                    typ = "float"
                    exprs.append(pl.col(col).cast(pl.String).alias(col))
                else:
                    typ = "token"
                    exprs.append(pl.col(col).cast(pl.String).alias(col))
                header.append(f"{col}:{typ}")
            body = frame.select(exprs)
            bad = body.select(pl.any_horizontal(pl.col(pl.String).str.contains(r"[\t\n\r]").fill_null(False))).to_series()
            if bad.any():
                row = int(bad.arg_true()[0])
                raise SftDataError(f"write_recbole: {kind} row {row} has a tab or newline inside a field: {frame.row(row)}")
            lines = ["\t".join(header)]
            lines += ["\t".join("" if v is None else v for v in row) for row in body.iter_rows()]
            (tmp / f"{name}.{kind}").write_text("\n".join(lines) + "\n", encoding="utf-8")

    from genrec_sftdata._writers import write_set

    return write_set(out, write, what="RecBole folder")
