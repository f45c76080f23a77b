"""Command line for genrec-evaluator: a thin shell over the Python API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genrec_core import add_config_args, command_parser, config_from_args, dispatch
from genrec_evaluator import __version__
from genrec_evaluator._errors import EvaluatorError

PROG = "genrec-evaluator"
MODEL_HELP = "HF model folder, .gguf file, hub id org/name[@revision], or alias smollm2"


def _parser() -> argparse.ArgumentParser:
    from genrec_evaluator._baselines import BaselineConfig

    parser, sub = command_parser(PROG, __doc__, __version__)

    p = sub.add_parser("baselines", help="next-POI baselines (no model needed)")
    p.add_argument("--data", required=True, type=Path, help="prepared data folder (genrec-sftdata prepare) or check-ins table")
    p.add_argument("--records", required=True, type=Path, help="next-POI records: a file or a folder")
    p.add_argument("--split", default="test", help="records split to evaluate (default: test)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--train-city", default=None, help="label for the cross-city matrix")
    p.add_argument("--eval-city", default=None, help="label for the cross-city matrix")
    add_config_args(p, BaselineConfig)

    _add_model_commands(sub)

    p = sub.add_parser("compare", help="side-by-side table of evaluation runs")
    p.add_argument("runs", nargs="+", type=Path, help="output folders of earlier runs")
    p.add_argument("--metrics", nargs="+", default=None, help="metrics to show (default: all)")

    p = sub.add_parser("cross-city", help="cross-city matrix and heat map from runs with city labels")
    p.add_argument("runs", nargs="+", type=Path, help="output folders of runs with --train-city/--eval-city")
    p.add_argument("--metric", default="acc@1")
    p.add_argument("--system", default="model", help="which system fills the cells (default: model)")
    p.add_argument("--out", required=True, type=Path)
    return parser


def _add_model_commands(sub: Any) -> None:
    """Commands that need a model (torch is imported only when one runs)."""
    try:
        from genrec_evaluator._nextpoi import NextPoiConfig
    except ImportError:  # pragma: no cover - the module is part of the package
        return
    p = sub.add_parser("next-poi", help="evaluate a model on next-POI records, beside the baselines")
    p.add_argument(
        "--records", required=True,
        help="next-POI records: a file or a folder, or GenUP's SFT dataset (hub id such as "
             "w11wo/FourSquare-NYC-POI, or a local copy)",
    )
    p.add_argument("--model", default=None, help=MODEL_HELP + " (default: the adapter's base model)")
    p.add_argument("--adapter", default=None, help="peft (LoRA) adapter: a folder or a hub id org/name[@revision]")
    p.add_argument("--train", default=None, type=Path, help="prepared data folder: baselines and user groups")
    p.add_argument("--split", default="test", help="records split to evaluate (default: test)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--train-city", default=None, help="label for the cross-city matrix")
    p.add_argument("--eval-city", default=None, help="label for the cross-city matrix")
    add_config_args(p, NextPoiConfig)

    from genrec_evaluator._seqrec import SeqRecConfig

    p = sub.add_parser("seqrec", help="evaluate a model on SeqRec records (generated title -> item)")
    p.add_argument("--records", required=True, type=Path)
    p.add_argument("--items", required=True, type=Path, help="catalogue table with item_id and title")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--adapter", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True, type=Path)
    add_config_args(p, SeqRecConfig)

    from genrec_evaluator._ctr import CtrConfig

    p = sub.add_parser("ctr", help="evaluate a model on CTR records: P(Yes) -> AUC")
    p.add_argument("--records", required=True, type=Path, help="CTR records (label column) or TALLRec JSON")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--adapter", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True, type=Path)
    add_config_args(p, CtrConfig)


def _summary(result: Any, out: Path) -> None:
    print(f"wrote {out}/metrics.json, {out}/report.md, {out}/predictions/, {out}/plots/")
    for system, m in result.metrics.items():
        vals = ", ".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, float))
        print(f"  {system}: {vals}")
    from genrec_evaluator._report import PRIMARY
    from genrec_evaluator._stats import summary_sentences

    for sentence in summary_sentences(result.metrics, PRIMARY.get(result.task, "acc@1")):
        print(f"  {sentence}")


def read_next_poi_records(
    spec: str | Path, *, split: str = "test", protocol: str = "genrec"
) -> tuple[Any, Any]:
    """(records of ``split``, the train split's records or ``None``) from a records file or folder, or
    from GenUP's SFT dataset layout (``system_prompt``, ``inputs``, ``targets``, ``llama_prompt``: a hub
    dataset id or a local copy), read by :func:`genrec_sftdata.read_genup_records`."""
    from genrec_evaluator._io import read_records

    path = Path(spec)
    if path.exists():
        try:
            frame = read_records(path, split=split)
        except EvaluatorError:
            frame = None  # e.g. a hub snapshot folder (data/<split>-*.parquet): GenUP's layout
        if frame is not None and "inputs" not in frame.columns:
            return frame, None
    from genrec_sftdata import read_genup_records

    parts = read_genup_records(str(spec), protocol=protocol)  # type: ignore[arg-type]
    if split not in parts:
        raise EvaluatorError(f"{spec}: no {split!r} split in the GenUP dataset (found {sorted(parts)})")
    return parts[split], parts.get("train")


def _run(args: argparse.Namespace) -> int:
    from genrec_evaluator._io import load_checkins, read_records
    from genrec_evaluator._report import compare_runs, write_cross_city, write_report

    if args.command == "baselines":
        from genrec_evaluator._baselines import BaselineConfig, run_baselines

        records = read_records(args.records, split=args.split)
        result = run_baselines(records, load_checkins(args.data), config=config_from_args(BaselineConfig, args))
        result.meta.update({"train_city": args.train_city, "eval_city": args.eval_city, "records": str(args.records)})
        write_report(result, args.out)
        _summary(result, args.out)
    elif args.command == "next-poi":
        from genrec_evaluator._nextpoi import NextPoiConfig, evaluate_next_poi

        config = config_from_args(NextPoiConfig, args)
        records, train_records = read_next_poi_records(args.records, split=args.split, protocol=config.protocol)
        if config.city is None and config.protocol == "genup":
            from dataclasses import replace

            from genrec_evaluator._genup import genup_city

            config = replace(config, city=genup_city(args.eval_city) or genup_city(str(args.records)))
        model = args.model
        if model is None:
            if args.adapter is None:
                raise EvaluatorError("next-poi: pass --model, or --adapter to load the base model its config names")
            from genrec_evaluator._models import adapter_base_model

            model = adapter_base_model(args.adapter)
        train = load_checkins(args.train) if args.train is not None else None
        result = evaluate_next_poi(
            records, model=model, adapter=args.adapter, train=train, config=config, train_records=train_records
        )
        result.meta.update({"train_city": args.train_city, "eval_city": args.eval_city, "records": str(args.records)})
        write_report(result, args.out)
        _summary(result, args.out)
    elif args.command == "seqrec":
        from genrec_evaluator._seqrec import SeqRecConfig, evaluate_seqrec, read_items

        records = read_records(args.records, split=args.split)
        result = evaluate_seqrec(records, read_items(args.items), model=args.model, adapter=args.adapter, config=config_from_args(SeqRecConfig, args))
        write_report(result, args.out)
        _summary(result, args.out)
    elif args.command == "ctr":
        from genrec_evaluator._ctr import CtrConfig, evaluate_ctr, read_ctr_records

        records = read_ctr_records(args.records, split=args.split)
        result = evaluate_ctr(records, model=args.model, adapter=args.adapter, config=config_from_args(CtrConfig, args))
        write_report(result, args.out)
        _summary(result, args.out)
    elif args.command == "compare":
        table = compare_runs(args.runs, metrics=args.metrics)
        import polars as pl

        with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, float_precision=4, tbl_hide_dataframe_shape=True):
            print(table)
    elif args.command == "cross-city":
        matrix = write_cross_city(args.runs, args.out, metric=args.metric, system=args.system)
        print(matrix)
        print(f"wrote {args.out}/cross_city.parquet, {args.out}/cross_city.png")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # ValueError too: polars and numpy report unusable input that way.
    return dispatch(_parser(), argv, _run, errors=(ValueError,))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
