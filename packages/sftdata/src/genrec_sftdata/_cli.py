"""Command line for genrec-sftdata: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from genrec_core import add_config_args, command_parser, config_from_args, dispatch
from genrec_sftdata import __version__
from genrec_sftdata._contract import read_frame
from genrec_sftdata._errors import SftDataError

if TYPE_CHECKING:
    import polars as pl

PROG = "genrec-sftdata"


def _parser() -> argparse.ArgumentParser:
    from genrec_sftdata._nextpoi import NextPoiConfig
    from genrec_sftdata._prepare import PrepareConfig
    from genrec_sftdata._seqrec import CtrConfig, SeqRecConfig
    from genrec_sftdata._synth import CityConfig

    parser, sub = command_parser(PROG, __doc__, __version__)

    p = sub.add_parser("synth", help="generate a synthetic city: DIR/checkins.parquet")
    p.add_argument("--users", type=int, required=True, help="number of users")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_config_args(p, CityConfig, skip=("n_users",))

    p = sub.add_parser("prepare", help="LLM4POI preprocessing: DIR/{checkins,train,val,test}.parquet + stats.json")
    p.add_argument("--input", type=str, action="append", required=True, help="input file or folder (repeatable)")
    p.add_argument(
        "--format", default="auto", choices=["auto", "getnext", "tsmc", "gowalla", "parquet", "csv", "hf"],
        help="input format (default: sniffed from the file)",
    )
    p.add_argument("--spots", type=Path, default=None, help="Gowalla spots file with categories")
    p.add_argument(
        "--split-inputs", action="store_true",
        help="the --input files are the train, val and test parts, in that order (kept as given)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_config_args(p, PrepareConfig)

    p = sub.add_parser("build", help="SFT records: DIR2/{train,val,test}.parquet")
    p.add_argument("--task", choices=["next_poi", "seqrec", "ctr"], default="next_poi")
    p.add_argument("--data", type=Path, help="prepared folder (next_poi)")
    p.add_argument("--input", type=Path, action="append", help="input files (seqrec: items + interactions; ctr: JSON)")
    p.add_argument("--profiles", type=Path, default=None, help="profiles table (parquet)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--write-format", choices=["parquet", "jsonl", "hf"], default="parquet")
    p.add_argument("--tokenizer", default=None, help="tokenizer path for --max-length (transformers)")
    p.add_argument("--progress", action="store_true", help="show progress bars while writing")
    add_config_args(p, NextPoiConfig)
    add_config_args(p, SeqRecConfig, unset_defaults=True, prefix_help="seqrec/ctr: ")
    add_config_args(p, CtrConfig, skip=[f.name for f in dataclasses.fields(SeqRecConfig)], unset_defaults=True,
                    prefix_help="ctr: ")

    p = sub.add_parser("genup-records", help="GenUP's published next-POI datasets as SFT records: DIR2/{train,test}.parquet")
    p.add_argument("--source", required=True,
                   help="hub dataset id (w11wo/FourSquare-NYC-POI), save_to_disk folder, parquet/jsonl file or folder")
    p.add_argument("--protocol", choices=["genrec", "genup"], default="genrec",
                   help="genup: prompt/completion are GenUP's <s>[INST] string; genrec: system, blank line, inputs "
                   "(default: genrec)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--write-format", choices=["parquet", "jsonl", "hf"], default="parquet")

    from genrec_sftdata._amazon import GoracsConfig

    p = sub.add_parser("fetch", help="download a public data set into the cache (resumable, checksummed)")
    p.add_argument("name", nargs="?", help="data set name (--list shows them)")
    p.add_argument("--list", action="store_true", help="list the data sets and their sources")
    p.add_argument("--cache", type=Path, default=None, help="cache folder (default: $GENREC_CACHE/datasets)")
    p.add_argument("--base-url", default=None,
                   help="mirror: fetch every file from BASE/NAME/FILE (default: $GENREC_DATA_MIRROR, else upstream)")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.add_argument("--verify", action="store_true", help="only check the cached files against their checksums")
    p.add_argument("--prepare", type=Path, default=None, metavar="OUT",
                   help="then read it with its reader and write genrec tables / records to OUT")

    p = sub.add_parser("goracs", help="GORACS's SeqRec / CTR records from Amazon 5-core reviews + metadata")
    p.add_argument("--reviews", type=Path, required=True, help="5-core reviews (Video_Games_5.json[.gz])")
    p.add_argument("--meta", type=Path, required=True, help="metadata (meta_Video_Games.json[.gz])")
    p.add_argument("--task", choices=["seqrec", "ctr", "both"], default="both")
    p.add_argument("--out", type=Path, required=True, help="output folder (OUT/seqrec, OUT/ctr with --task both)")
    p.add_argument("--write-format", choices=["parquet", "jsonl", "hf"], default="parquet")
    add_config_args(p, GoracsConfig)

    p = sub.add_parser("recbole", help="convert between RecBole atomic files and genrec tables")
    p.add_argument("--to", choices=["recbole", "genrec"], required=True,
                   help="recbole: --interactions/--items tables -> OUT/NAME.inter/.item; genrec: --input -> OUT/*.parquet")
    p.add_argument("--interactions", type=Path, default=None, help="interactions table (parquet/csv/jsonl)")
    p.add_argument("--items", type=Path, default=None, help="items table (parquet/csv/jsonl)")
    p.add_argument("--input", type=Path, default=None, help="RecBole folder, NAME prefix or atomic file")
    p.add_argument("--movielens", type=Path, default=None, help="read interactions and items from MovieLens files")
    p.add_argument("--name", default="genrec", help="RecBole dataset name (file stem)")
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("stats", help="print the table of counts of a prepared folder")
    p.add_argument("dir", type=Path)
    return parser


def _stats_table(stats: dict[str, Any]) -> str:
    cols = ["users", "pois", "categories", "checkins", "trajectories"]
    rows = [f"{'split':<6} " + " ".join(f"{c:>12}" for c in cols)]
    splits = stats.get("splits", {})
    for split in sorted(splits, key=lambda k: ("train", "val", "test", "all").index(k) if k in ("train", "val", "test", "all") else 9):
        s = splits[split]
        rows.append(f"{split:<6} " + " ".join(f"{s.get(c, 0):>12}" for c in cols))
    removed = stats.get("removed", {})
    if removed:
        rows.append("removed: " + ", ".join(f"{k}={v}" for k, v in removed.items()))
    return "\n".join(rows)


#: Commands whose ``--out`` is locked before any input is read (a second run stops at once).
_LOCKED = {"synth", "prepare", "build", "genup-records", "goracs", "recbole"}


def _run(args: argparse.Namespace) -> int:
    if args.command in _LOCKED:
        from genrec_sftdata._writers import output_lock

        with output_lock(args.out):
            return _run_command(args)
    return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:

    import genrec_sftdata as g
    from genrec_sftdata._nextpoi import NextPoiConfig
    from genrec_sftdata._prepare import PrepareConfig
    from genrec_sftdata._synth import CityConfig

    if args.command == "synth":
        opts = {
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(CityConfig)
            if f.name not in ("n_users", "seed") and getattr(args, f.name) is not None
        }
        frame = g.synthesize_city(n_users=args.users, seed=args.seed, **opts)
        out = args.out / "checkins.parquet"
        g.write_records(frame, out)
        print(f"wrote {out}: {frame.height} check-ins, {frame['user_id'].n_unique()} users, "
              f"{frame['poi_id'].n_unique()} POIs")
        return 0
    if args.command == "prepare":
        cfg = config_from_args(PrepareConfig, args)
        if args.split_inputs:
            if not 2 <= len(args.input) <= 3:
                raise SftDataError(f"--split-inputs needs 2 or 3 --input files (train, val[, test]), got {len(args.input)}")
            names = ("train", "val", "test") if len(args.input) == 3 else ("train", "test")
            source: Any = {
                n: g.read_checkins(p, format=args.format, spots=args.spots) for n, p in zip(names, args.input)
            }
        else:
            source = g.read_checkins(args.input, format=args.format, spots=args.spots)
        data = g.prepare(source, out=args.out, config=cfg)
        print(_stats_table(data.stats))
        print(f"wrote {args.out}/{{checkins,train,val,test}}.parquet and stats.json")
        return 0
    if args.command == "build":
        if args.task == "next_poi":
            if args.data is None:
                raise SftDataError("build --task next_poi needs --data DIR (a prepared folder)")
            cfg = config_from_args(NextPoiConfig, args)
            tokenizer = None
            if cfg.max_length is not None:
                if args.tokenizer is None:
                    raise SftDataError("--max-length needs --tokenizer PATH")
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
            profiles = read_frame(args.profiles, what="profiles") if args.profiles else None
            records = g.build_next_poi(args.data, profiles, config=cfg, tokenizer=tokenizer)
        else:
            records = _build_other(args)
        g.write_records(records, args.out, format=args.write_format, progress=args.progress)
        counts = ", ".join(f"{k}={v.height}" for k, v in records.items())
        print(f"wrote {args.task} records to {args.out} ({args.write_format}): {counts}")
        return 0
    if args.command == "genup-records":
        records = g.read_genup_records(args.source, protocol=args.protocol)
        g.write_records(records, args.out, format=args.write_format)
        counts = ", ".join(f"{k}={v.height}" for k, v in records.items())
        print(f"wrote GenUP next_poi records ({args.protocol}) to {args.out} ({args.write_format}): {counts}")
        return 0
    if args.command == "fetch":
        return _fetch_cmd(args)
    if args.command == "goracs":
        from genrec_sftdata._amazon import GoracsConfig

        cfg = config_from_args(GoracsConfig, args)
        tasks: tuple[Literal["seqrec", "ctr"], ...] = ("seqrec", "ctr") if args.task == "both" else (args.task,)
        reviews = g.read_amazon_reviews(args.reviews)
        meta = g.read_amazon_meta(args.meta, goracs_regex=cfg.domain if cfg.published_titles else None)
        built = {task: g.build_goracs(reviews, meta, task=task, config=cfg) for task in tasks}
        if len(tasks) == 1:
            g.write_records(built[tasks[0]], args.out, format=args.write_format)
        else:
            from genrec_sftdata._writers import write_set

            # Both tasks in one set: a run killed between them must not leave new seqrec beside old ctr.
            def write(tmp: Path) -> None:
                for task, recs in built.items():
                    g.write_records(recs, tmp / task, format=args.write_format)

            write_set(args.out, write, what="output folder")
        for task, recs in built.items():
            dest = args.out / task if len(tasks) > 1 else args.out
            counts = ", ".join(f"{k}={v.height}" for k, v in recs.items())
            print(f"wrote GORACS {cfg.domain} {task} records to {dest}: {counts}")
        return 0
    if args.command == "recbole":
        return _recbole_cmd(args)
    if args.command == "stats":
        stats_file = args.dir / "stats.json"
        if stats_file.is_file():
            stats = json.loads(stats_file.read_text())
        else:
            from genrec_sftdata._prepare import split_stats

            stats = {"splits": split_stats(g.load_prepared(args.dir).checkins)}
        print(_stats_table(stats))
        return 0
    raise SftDataError(f"unknown command {args.command!r}")  # pragma: no cover - argparse guards it


def _fetch_cmd(args: argparse.Namespace) -> int:
    from genrec_sftdata._fetch import list_datasets, verify

    if args.list or args.name is None:
        for src in list_datasets():
            where = (src.hub_id and f"hub:{src.hub_id}") or " ".join(src.urls)
            print(f"{src.name:<28} {src.description}\n{'':<28} {where}")
        return 0
    if args.verify:
        folder = verify(args.name, cache=args.cache)
        print(f"{args.name}: cached files in {folder} match their recorded checksums")
        return 0
    import genrec_sftdata as g

    if args.prepare is not None:
        out = g.prepare_fetched(args.name, args.prepare, cache=args.cache, base_url=args.base_url)
        print(f"fetched {args.name} and wrote {out}")
        return 0
    folder = g.fetch(args.name, cache=args.cache, base_url=args.base_url, force=args.force, progress=True)
    print(folder)
    return 0


def _recbole_cmd(args: argparse.Namespace) -> int:
    import genrec_sftdata as g
    from genrec_sftdata._seqrec import _frame

    if args.to == "recbole":
        items: pl.DataFrame | None
        if args.movielens is not None:
            inter, items = g.read_movielens(args.movielens)
        elif args.interactions is not None:
            inter = _frame(args.interactions, "interactions")
            items = _frame(args.items, "items") if args.items is not None else None
        else:
            raise SftDataError("recbole --to recbole needs --interactions [--items] or --movielens")
        g.write_recbole(args.out, args.name, inter=inter, item=items)
        print(f"wrote {args.out}/{args.name}.inter" + (" and .item" if items is not None else ""))
        return 0
    if args.input is None:
        raise SftDataError("recbole --to genrec needs --input (a RecBole folder, NAME prefix or atomic file)")
    tables = g.read_recbole(args.input)
    names = {"inter": "interactions", "item": "items", "user": "users"}

    def write(tmp: Path) -> None:
        for kind, frame in tables.items():
            frame.write_parquet(tmp / f"{names.get(kind, kind)}.parquet")

    from genrec_sftdata._writers import write_set

    write_set(args.out, write, what="output folder")
    print(f"wrote {', '.join(names.get(k, k) + '.parquet' for k in tables)} to {args.out}")
    return 0


def _build_other(args: argparse.Namespace) -> dict[str, Any]:
    import polars as pl

    import genrec_sftdata as g
    from genrec_sftdata._seqrec import CtrConfig, SeqRecConfig

    inputs: list[Path] = args.input or []
    if args.task == "seqrec":
        if len(inputs) != 2:
            raise SftDataError("build --task seqrec needs --input ITEMS --input INTERACTIONS (two files)")
        cfg = config_from_args(SeqRecConfig, args, drop_none=True)
        return g.build_seqrec(inputs[0], inputs[1], config=cfg)
    if not inputs:
        raise SftDataError("build --task ctr needs --input FILE.json (TALLRec) or --input RATINGS --input ITEMS")
    if all(p.suffix == ".json" for p in inputs):
        frames = [g.read_tallrec_json(p) for p in inputs]
        merged = pl.concat(frames)
        return {s: merged.filter(pl.col("split") == s) for s in merged["split"].unique(maintain_order=True)}
    if len(inputs) != 2:
        raise SftDataError("build --task ctr needs TALLRec .json files, or --input RATINGS --input ITEMS")
    cfg = config_from_args(CtrConfig, args, drop_none=True)
    return g.build_ctr(inputs[0], inputs[1], config=cfg)


def main(argv: Sequence[str] | None = None) -> int:
    # ValueError too: polars and numpy raise it on bad input deep inside a command.
    return dispatch(_parser(), argv, _run, errors=(ValueError,), log_level=logging.WARNING)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
