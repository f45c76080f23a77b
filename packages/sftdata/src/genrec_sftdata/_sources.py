"""``fetch NAME --prepare OUT``: a fetched data set read with its own reader and written as genrec tables."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import polars as pl

from genrec_sftdata._errors import SftDataError
from genrec_sftdata._fetch import SOURCES, extracted, fetch

logger = logging.getLogger(__name__)


def _tables(out: Path, tables: dict[str, pl.DataFrame], meta: dict[str, Any]) -> None:
    from genrec_sftdata._writers import write_set

    def write(tmp: Path) -> None:
        for name, frame in tables.items():
            frame.write_parquet(tmp / f"{name}.parquet")
        (tmp / "source.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    write_set(out, write, what="prepared-data folder")


def _llm4poi_splits(folder: Path, city: str) -> dict[str, Path]:
    """LLM4POI's ``<city>/<city>_{train,val,test}.csv`` files (any layout holding the city's name)."""
    found: dict[str, Path] = {}
    for f in sorted(folder.rglob("*")):
        if f.suffix not in (".csv", ".parquet") or city not in f.as_posix().lower():
            continue
        m = re.search(r"(train|val|valid|validation|test)", f.stem.lower())
        if m:
            split = {"valid": "val", "validation": "val"}.get(m.group(1), m.group(1))
            found.setdefault(split, f)
    if "train" not in found or "test" not in found:
        raise SftDataError(
            f"{folder}: no {city} train/test check-in files found (expected names like {city.upper()}_train.csv); "
            f"files: {[p.relative_to(folder).as_posix() for p in sorted(folder.rglob('*')) if p.is_file()][:20]}"
        )
    return found


def prepare_fetched(
    name: str,
    out: str | os.PathLike[str],
    *,
    cache: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    **options: Any,
) -> Path:
    """Fetch ``name`` (see :func:`fetch`) and write it, read with its own reader, to ``out``.

    Check-in sets (TSMC2014, Gowalla, LLM4POI) become a prepared folder (``prepare``'s rules, its
    ``PrepareConfig`` fields as ``options``); MovieLens and Book-Crossing become ``interactions.parquet``
    and ``items.parquet``; an Amazon domain becomes those two tables plus GORACS's SeqRec and CTR
    records (``seqrec/``, ``ctr/``; ``GoracsConfig`` fields as ``options``); GenUP's hub sets become
    next-POI SFT records. ``out`` is written as one set.
    """
    from genrec_sftdata._writers import output_lock

    source = SOURCES.get(name)
    if source is None:
        fetch(name)  # raises the unknown-name error with the list
        raise AssertionError  # pragma: no cover
    kind = source.kind
    # Options are checked before anything is downloaded, and the folder locked before anything is read.
    cfg: Any = None
    if kind in ("tsmc", "gowalla", "llm4poi"):
        from genrec_sftdata._prepare import PrepareConfig

        cfg = PrepareConfig(**options)
    elif kind == "amazon":
        from genrec_sftdata._amazon import GoracsConfig

        cfg = GoracsConfig(domain=source.options["domain"], **options)
    with output_lock(out, what="prepared-data folder") as path:
        return _prepare_fetched(name, source, kind, cfg, path, cache=cache, base_url=base_url, options=options)


def _prepare_fetched(
    name: str, source: Any, kind: str, cfg: Any, out: Path, *, cache: Any, base_url: str | None,
    options: dict[str, Any],
) -> Path:
    from genrec_sftdata._writers import write_records, write_set

    folder = fetch(name, cache=cache, base_url=base_url)
    info = {"dataset": name, "urls": list(source.urls), "hub_id": source.hub_id, "options": options}
    if kind in ("movielens-100k", "movielens-1m", "bookcrossing"):
        from genrec_sftdata._recsys import read_bookcrossing, read_movielens

        archive = folder / source.files[0]
        inter, items = read_bookcrossing(archive) if kind == "bookcrossing" else read_movielens(archive)
        _tables(out, {"interactions": inter, "items": items}, info)
        logger.info("prepared %s: %d interactions, %d items", name, inter.height, items.height)
        return out
    if kind in ("tsmc", "gowalla", "llm4poi"):
        from genrec_sftdata._prepare import prepare
        from genrec_sftdata._readers import read_checkins

        if kind == "llm4poi":
            splits = _llm4poi_splits(folder, source.options["city"])
            data: Any = {s: read_checkins(p, format="getnext") for s, p in splits.items()}
        else:
            member = source.options.get("member") or source.files[0].removesuffix(".gz")
            raw = extracted(folder / source.files[0], member)
            data = read_checkins(raw, format="tsmc" if kind == "tsmc" else "gowalla")
        prepared = prepare(data, out=out, config=cfg, extra_files={"source.json": info})
        logger.info("prepared %s: %s", name, prepared.stats.get("splits", {}).get("all", {}))
        return out
    if kind == "amazon":
        from genrec_sftdata._amazon import build_goracs, read_amazon_meta, read_amazon_reviews

        reviews_file, meta_file = (folder / f for f in source.files)
        reviews = read_amazon_reviews(reviews_file)
        meta = read_amazon_meta(meta_file, goracs_regex=cfg.domain if cfg.published_titles else None)
        records = {task: build_goracs(reviews, meta, task=task, config=cfg) for task in ("seqrec", "ctr")}

        def write(tmp: Path) -> None:
            reviews.write_parquet(tmp / "interactions.parquet")
            meta.write_parquet(tmp / "items.parquet")
            for task, recs in records.items():
                (tmp / task).mkdir()
                for split, frame in recs.items():
                    frame.write_parquet(tmp / task / f"{split}.parquet")
            (tmp / "source.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

        write_set(out, write, what="prepared-data folder")
        return out
    if kind == "genup":
        from genrec_sftdata._genup import read_genup_records

        genup_records = read_genup_records(folder, protocol=options.get("protocol", "genrec"))
        write_records(genup_records, out)
        return out
    raise SftDataError(
        f"fetch {name} --prepare: no reader for this hub data set's layout yet; its snapshot is at {folder} "
        "(read it with `datasets.load_from_disk`/`load_dataset` or `genrec-sftdata prepare --format hf`)"
    )
