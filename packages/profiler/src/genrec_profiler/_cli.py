"""Command line for genrec-profiler: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from typing import Any

from genrec_core import add_config_args, command_parser, config_from_args, dispatch
from genrec_profiler import __version__
from genrec_profiler._generate import ProfilerConfig


def _parser() -> argparse.ArgumentParser:
    parser, sub = command_parser("genrec-profiler", __doc__, __version__)

    gen = sub.add_parser("generate", help="write one profile per user")
    gen.add_argument("--data", required=True, help="prepared folder (genrec-sftdata) or a check-in parquet/csv")
    gen.add_argument("--backend", required=True, choices=("local", "openai", "template"))
    gen.add_argument("--model", default=None, help="local: HF folder, .gguf file, hub id org/name or 'smollm2' (default); openai: model name")
    gen.add_argument("--base-url", default=None, help="openai: server URL (default $OPENAI_BASE_URL or the OpenAI API)")
    gen.add_argument("--api-key-env", default="OPENAI_API_KEY", help="openai: environment variable with the API key")
    gen.add_argument("--concurrency", type=int, default=8, help="openai: requests in flight; raises --batch-size to match (default: 8)")
    gen.add_argument("--timeout", type=float, default=60.0, help="openai: request timeout in seconds (default: 60)")
    gen.add_argument("--http-retries", type=int, default=4, help="openai: retries on 429/5xx/timeouts (default: 4)")
    gen.add_argument("--max-new-tokens", type=int, default=512, help="answer length limit (default: 512)")
    gen.add_argument("--sample", action="store_true", help="sample (seeded) instead of greedy decoding")
    gen.add_argument("--grammar", default="auto", help="local: constrain decoding to the profile's JSON schema with "
                     "this engine (auto, xgrammar, llguidance, outlines) or 'none' (default: auto)")
    gen.add_argument("--response-format", default="auto", choices=("auto", "json_schema", "json", "none"),
                     help="openai: structured output asked (auto: json_schema, then json_object, then none as the "
                     "server refuses them)")
    gen.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                     help="local backend compute dtype (default auto: bfloat16 where the device computes it "
                     "natively, else float32)")
    gen.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default: 0.7)")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    gen.add_argument("--out", required=True, help="profiles parquet file")
    gen.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    # progress: the command shows it unless --no-progress (the config's default is off).
    add_config_args(gen, ProfilerConfig, skip=("progress",))

    parse = sub.add_parser("parse", help="validate profiles: GenUP's user_profile_<id>.json files (a folder, a file, "
                           "its table) or a file of one model answer")
    parse.add_argument("path", help="folder of user_profile_<id>.json, one such file, a GenUP profiles table, or a text file")
    parse.add_argument("--user", default=None, help="user id for a text file that is not user_profile_<id>.json")
    parse.add_argument("--out", default=None, help="write the profiles table (parquet)")
    parse.add_argument("--json", action="store_true", help="print each parsed profile as a JSON line")

    export = sub.add_parser("export-genup", help="write a profiles table as GenUP's user_profile_<id>.json files")
    export.add_argument("file", help="profiles parquet file")
    export.add_argument("--out", required=True, help="output folder")

    stats = sub.add_parser("stats", help="attribute distributions, failures and cost of a profiles file")
    stats.add_argument("file", help="profiles parquet file")
    stats.add_argument("--json", action="store_true", help="print JSON instead of text")
    stats.add_argument("--data", default=None, help="the prepared folder the profiles were written from: adds "
                       "copied-from-prompt share and agreement with each user's top-3 categories")

    sim = sub.add_parser("similar", help="each user's top-k most similar users by summary embedding")
    sim.add_argument("file", help="profiles parquet file")
    sim.add_argument("--out", required=True, help="output parquet file")
    sim.add_argument("-k", type=int, default=None, help="neighbours per user (default: 5; genup: 100)")
    sim.add_argument("--protocol", choices=("genrec", "genup"), default="genrec",
                     help="genup: GenUP's settings (system prompts, all-mpnet-base-v2, k=100)")
    sim.add_argument("--encoder", default=None, help="sentence-transformers folder (default: all-MiniLM-L6-v2)")
    return parser


def _client(args: argparse.Namespace) -> Any:
    if args.backend == "template":
        from genrec_profiler._template import TemplateBackend

        return TemplateBackend()
    if args.backend == "openai":
        from genrec_profiler._openai import OpenAIBackend

        return OpenAIBackend(
            base_url=args.base_url, model=args.model, api_key_env=args.api_key_env, max_tokens=args.max_new_tokens,
            temperature=args.temperature if args.sample else 0.0, seed=args.seed, concurrency=args.concurrency,
            max_retries=args.http_retries, timeout=args.timeout, response_format=args.response_format,
        )
    from genrec_profiler._local import LocalBackend

    return LocalBackend(args.model, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                        temperature=args.temperature, seed=args.seed, dtype=args.dtype,
                        grammar=None if args.grammar == "none" else args.grammar)


def _generate(args: argparse.Namespace) -> int:
    from genrec_profiler._generate import generate_profiles
    from genrec_profiler._stats import profile_stats

    config = config_from_args(ProfilerConfig, args, progress=not args.no_progress)
    if args.backend == "openai" and config.batch_size < args.concurrency:
        # A batch is what the backend runs at once: smaller than the concurrency would leave slots idle.
        config = dataclasses.replace(config, batch_size=args.concurrency)
    client = _client(args)
    try:
        result = generate_profiles(args.data, config=config, client=client, out=args.out)
    finally:
        close = getattr(client, "close", None)
        if callable(close):
            close()  # the HTTP client's pooled connections
    print(
        f"profiles: {result.path} ({result.n_users} users: {result.n_generated} generated, "
        f"{result.n_resumed} already done; ok {result.n_ok}, repaired {result.n_repaired}, "
        f"failed {result.n_failed}; tokens in/out {result.tokens_in}/{result.tokens_out}; {result.seconds:.1f}s)"
    )
    if result.no_train_users:
        shown = ", ".join(result.no_train_users[:10])
        print(f"skipped {len(result.no_train_users)} users without train check-ins: {shown}")
    if result.n_stale:
        print(f"dropped {result.n_stale} rows of an earlier run written from other inputs (or for users no longer "
              "in the data)")
    print(profile_stats(result.path, data=args.data).to_text())
    if not result.ok:
        shown = ", ".join(result.failed_users[:5]) + (", ..." if len(result.failed_users) > 5 else "")
        print(f"genrec-profiler: error: {result.n_failed} of {result.n_generated} profiles failed (users {shown}); "
              "rerun to retry them, or pass --accept-failures", file=sys.stderr)
        return 1
    return 0


def _parse(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import polars as pl

    from genrec_core import PROFILES, atomic_write_parquet
    from genrec_profiler._generate import PROFILE_SCHEMA
    from genrec_profiler._genup import GENUP_FILE_RE, read_genup_profiles
    from genrec_profiler._schema import parse_profile

    path = Path(args.path)
    if path.is_file() and not GENUP_FILE_RE.match(path.name) and path.suffix not in (".parquet", ".jsonl", ".ndjson"):
        text = path.read_text(encoding="utf-8")
        parsed = parse_profile(text)
        row = {**parsed.to_row(), "user_id": args.user or path.stem, "raw": text, "backend": None, "model": None}
        table = PROFILES.validate(pl.DataFrame([row], schema=PROFILE_SCHEMA), source=path)
    else:
        table = read_genup_profiles(args.path)
    for row in table.iter_rows(named=True):
        if args.json:
            keep = ("user_id", "status", "error", "traits", "age", "gender", "education", "socioeco", "preferences",
                    "routines", "summary", "repairs")
            print(json.dumps({k: row[k] for k in keep}))
        else:
            why = f": {row['error']}" if row["error"] else (f" ({len(row['repairs'])} repairs)" if row["repairs"] else "")
            print(f"user {row['user_id']}: {row['status']}{why}")
    counts = table["status"].value_counts(sort=True)
    print(", ".join(f"{s} {n}" for s, n in counts.iter_rows()) + f" ({table.height} profiles)",
          file=sys.stderr if args.json else sys.stdout)
    if args.out:
        atomic_write_parquet(args.out, table)
        print(f"profiles: {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from genrec_profiler._genup import write_genup_profiles

    written = write_genup_profiles(args.file, args.out)
    print(f"wrote {len(written)} GenUP profile files to {args.out}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    import json

    from genrec_profiler._stats import profile_stats

    stats = profile_stats(args.file, data=args.data)
    print(json.dumps({**stats.to_dict(), "warnings": stats.warnings()}, indent=2) if args.json else stats.to_text())
    return 0


def _similar(args: argparse.Namespace) -> int:
    from genrec_profiler._similar import similar_users

    table = similar_users(args.file, encoder=args.encoder, k=args.k, out=args.out, protocol=args.protocol)
    top = args.k if args.k is not None else (100 if args.protocol == "genup" else 5)
    print(f"similar users: {args.out} ({table.height} users, top {top})")
    return 0


_COMMANDS = {"generate": _generate, "parse": _parse, "export-genup": _export, "stats": _stats, "similar": _similar}


def main(argv: Sequence[str] | None = None) -> int:
    # ValueError too: polars and numpy raise it on bad input deep inside a command.
    return dispatch(
        _parser(), argv, lambda args: _COMMANDS[args.command](args), errors=(ValueError,), log_level=logging.WARNING
    )

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
