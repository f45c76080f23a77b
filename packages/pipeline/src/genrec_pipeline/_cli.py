"""genrec: run every stage of a genrec pipeline from one config, cached and resumable."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from genrec_core import command_parser, dispatch
from genrec_pipeline import __version__
from genrec_pipeline._config import STAGES, default_config_path, load_config, shipped_configs
from genrec_pipeline._errors import PipelineError


def _stage_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _parser() -> argparse.ArgumentParser:
    parser, sub = command_parser(
        "genrec",
        "genrec: fine-tune LLMs as recommenders. `genrec run` runs the built-in default end to end.",
        __version__,
        verbose=False,
    )

    run = sub.add_parser(
        "run",
        help="run a pipeline config (default: the built-in synthetic-city demo)",
        description=(
            "Run data -> profiles -> records -> coreset -> train -> evaluate. Each stage's output is kept "
            "in a folder keyed by a hash of its settings and inputs; a rerun reuses what is unchanged and "
            f"resumes what was interrupted. Stages: {', '.join(STAGES)}."
        ),
    )
    run.add_argument(
        "config", nargs="?", help="a TOML config file or a shipped config name (default: built-in)"
    )
    run.add_argument(
        "--stages", type=_stage_list, help="comma-separated stages to run (others must be cached)"
    )
    run.add_argument(
        "--from", dest="from_stage", choices=STAGES, help="re-run this stage and every later one"
    )
    run.add_argument("--until", choices=STAGES, help="stop after this stage")
    run.add_argument(
        "--force", action="append", default=[], choices=STAGES, help="re-run this stage (repeatable)"
    )
    run.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    run.add_argument(
        "--smoke",
        action="store_true",
        help="the same config with tiny random models of the same families, a few users, records and steps, "
        "on the CPU: checks a config end to end in minutes (its runs go under <name>-smoke)",
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="override a config value, e.g. --set train.options.max_steps=20 (repeatable)",
    )
    run.add_argument("--run-dir", help="root folder for runs (overrides [run].root)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--quiet", action="store_true", help="only warnings and the final summary")
    run.add_argument(
        "--accept-failures",
        action="store_true",
        help="a profile stage with failed users still counts as done (default: exit 1; the next run retries them)",
    )

    cc = sub.add_parser(
        "cross-city",
        help="GenUP's cross-city study: train on each city, evaluate every model on every city",
        description="Run each config through training (cached), then evaluate each city's model on each city.",
    )
    cc.add_argument("configs", nargs="+", help="a study file / shipped study name, or two or more run configs")
    cc.add_argument("--metric", default=None, help="metric in the matrix (default: the study's, or acc@1)")
    cc.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                    help="override a value in every config (repeatable)")
    cc.add_argument("--no-progress", action="store_true", help="no progress bars")

    stu = sub.add_parser(
        "study",
        help="run a grid of variants of one config; one table and one plot with paired tests",
        description=(
            "Run every variant of a study (a base config plus overrides, each seed) through `genrec run`, "
            "sharing every stage the variants have in common, then compare each variant with its reference "
            "on the same test records (exact McNemar for acc@k/hr@k, sign-flip for NDCG/MRR, DeLong for AUC; "
            "a t-interval and paired t-test across seeds). Writes study.parquet, study.md and study.png."
        ),
    )
    stu.add_argument("study", nargs="?", help="a study TOML file or a shipped study name")
    stu.add_argument("--list", action="store_true", help="list the shipped studies")
    stu.add_argument("--smoke", action="store_true", help="every variant as `genrec run --smoke` does it")
    stu.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                     help="override a value in every variant (the variants' own settings win; repeatable)")
    stu.add_argument("--run-dir", help="root folder for runs (overrides [run].root)")
    stu.add_argument("--dry-run", action="store_true", help="print each variant's plan and exit")
    stu.add_argument("--progress", action="store_true", help="progress bars inside the stages")
    stu.add_argument("--verbose", action="store_true", help="the stages' log lines too")

    configs = sub.add_parser("configs", help="list the shipped configs")
    configs.add_argument("--show", metavar="NAME", help="print one shipped config")
    return parser


def _overrides(items: Sequence[str], run_dir: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise PipelineError(f"--set {item!r}: expected TABLE.KEY=VALUE")
        out[key.strip()] = value.strip()
    if run_dir:
        out["run.root"] = f'"{run_dir}"'
    return out


def _run(args: argparse.Namespace) -> int:
    from genrec_pipeline._runner import format_plan, plan, run

    config = load_config(args.config, overrides=_overrides(args.set, args.run_dir), smoke=args.smoke)
    for line in config.smoke_changes:
        print(line)
    items = plan(config, stages=args.stages, from_stage=args.from_stage, until=args.until, force=args.force)
    print(f"genrec run '{config.name}' from {config.source}")
    print(format_plan(items))
    if args.dry_run:
        return 0
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )

    def announce(item: object) -> None:
        print(f"\n>>> {item.stage}: {item.action} ({item.reason})", flush=True)  # type: ignore[attr-defined]

    from genrec_pipeline.stages import StageFailedError

    try:
        result = run(
            config,
            stages=args.stages,
            from_stage=args.from_stage,
            until=args.until,
            force=args.force,
            progress=False if args.no_progress else None,
            on_stage=announce,
            accept_failures=True if args.accept_failures else None,
        )
    except StageFailedError as exc:
        # Not bad input: the work ran and some of it failed; the next run retries what failed.
        print(f"genrec: error: {exc}", file=sys.stderr)
        return exc.exit_status
    print()
    print(result.summary)
    print(f"\noutputs: {result.run_dir}")
    return 0


def _cross_city(args: argparse.Namespace) -> int:
    from genrec_pipeline._crosscity import cross_city, load_study

    if len(args.configs) == 1:
        study = load_study(args.configs[0])
    else:
        study = {"name": "cross-city", "configs": args.configs, "metric": "acc@1"}
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = cross_city(
        study["configs"],
        name=study["name"],
        metric=args.metric or study["metric"],
        overrides=_overrides(args.set, None),
        progress=False if args.no_progress else None,
    )
    print(result.matrix)
    print(f"cross-city matrix: {result.table}\nheat map: {result.plot}")
    return 0


def _study(args: argparse.Namespace) -> int:
    from genrec_pipeline._study import shipped_studies, study

    if args.list or not args.study:
        for name, path in shipped_studies().items():
            print(f"{name:<32} {path}")
        return 0
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    result = study(
        args.study,
        smoke=args.smoke,
        overrides=_overrides(args.set, None),
        run_dir=args.run_dir,
        progress=args.progress,
        dry_run=args.dry_run,
        echo=lambda line: print(line, flush=True),
    )
    return 1 if result is not None and result.failed else 0


def _configs(args: argparse.Namespace) -> int:
    shipped = shipped_configs()
    if args.show:
        if args.show not in shipped:
            raise PipelineError(f"unknown config {args.show!r}; shipped: {', '.join(sorted(shipped))}")
        print(shipped[args.show].read_text(encoding="utf-8"), end="")
        return 0
    default = default_config_path()
    for name, path in sorted(shipped.items()):
        mark = " (built-in default)" if path == default else ""
        print(f"{name:<32} {path}{mark}")
    return 0


def _body(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run(args)
    if args.command == "cross-city":
        return _cross_city(args)
    if args.command == "study":
        return _study(args)
    return _configs(args)


def main(argv: Sequence[str] | None = None) -> int:
    rc = dispatch(_parser(), argv, _body)
    if rc == 130:
        print("genrec: rerun the same command to resume", file=sys.stderr)
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
