"""GenUP's next-POI records as GenUP builds them (``protocol="genup"``).

Two published steps, kept apart so that each can be checked against its source:

1. LLM4POI's question/answer construction (``to_nextpoi_kqt.py``, ``generate_qa_pairs``):
   :func:`llm4poi_qa_pairs` over LLM4POI's columns (``UserId, PoiId, PoiCategoryId, PoiCategoryName,
   UTCTimeOffset, UTCTimeOffsetEpoch, pseudo_session_trajectory_id``); :func:`llm4poi_frame` maps the
   check-in contract onto those columns.
2. GenUP's record builder (``create_sft_dataset.py``, ``process_qa_pair`` and
   ``create_system_prompt``): :func:`genup_records_from_qa`.

:func:`build_genup_records` chains them over a prepared folder. Everything but the per-user system
prompt (a Python format over a handful of profile fields) is Polars expressions.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import polars as pl

from genrec_core import CHECKINS, SFT_RECORDS
from genrec_sftdata._contract import require_columns, string_ids, validated
from genrec_sftdata._errors import SftDataError
from genrec_sftdata._nextpoi import TIME_FORMAT, NextPoiConfig
from genrec_sftdata._prepare import PreparedData, load_prepared

logger = logging.getLogger(__name__)

ProfileFields = Literal["summary", "summary+routines+preferences", "all"]
PROFILE_FIELDS: tuple[str, ...] = ("summary", "summary+routines+preferences", "all")
LLM4POI_COLUMNS = (
    "UserId", "PoiId", "PoiCategoryId", "PoiCategoryName", "UTCTimeOffset", "UTCTimeOffsetEpoch",
    "pseudo_session_trajectory_id",
)
#: LLM4POI takes ``.tail(600 - num_traj)`` historical rows where ``num_traj`` is ``shape[-1]`` of its
#: frame (the number of columns, not of check-ins); we keep the 600 and the quirk.
LLM4POI_HISTORY_BASE = 600
GENUP_PROMPT_HEAD = "<s>[INST] <<SYS>>\n"
GENUP_SYS_END = "\n<</SYS>>\n\n"
GENUP_INST_END = " [/INST]"
GENUP_EOS = " </s>"
# GenUP's process_qa_pair regular expressions; its ``(\d+)`` user groups are widened to any token so
# that non-numeric user ids work (identical on numeric ids, the only ones GenUP's data has).
_QUESTION_RE = (
    r"(Given the data, At (.+?), Which POI id will user (\S+) visit\? Note that POI id is an integer in the "
    r"range from 0 to (\d+).)"
)
_USER_RE = r"^The following data is a trajectory of user (\S+?):"


# ------------------------------------------------------------------------------------------ profiles


def _genup_shape(obj: Any) -> bool:
    """True for an object GenUP's create_system_prompt can format without failing."""
    if not isinstance(obj, dict):
        return False
    attrs = obj.get("attributes")
    lists_ok = all(isinstance(obj.get(k), list) for k in ("traits", "preferences", "routines"))
    return isinstance(attrs, list) and len(attrs) == 4 and lists_ok and isinstance(obj.get("user_profile"), str)


def genup_profile(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The GenUP profile object (``traits, attributes, preferences, routines, user_profile``) of one
    profiles-table row.

    When the row's ``raw`` text is a GenUP-schema JSON object (a GenUP file, or the model's answer to
    GenUP's prompt) that object is returned as it is, unknown keys included, so that nothing GenUP
    would have shown is normalised away; otherwise it is assembled from the contract columns
    (``attributes = [age, gender, education, socioeco]``, ``user_profile = summary``). None when the
    row has neither (a failed profile).
    """
    raw = row.get("raw")
    if isinstance(raw, str) and raw.strip():
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            obj = None
        if _genup_shape(obj):
            return obj
    if row.get("summary") is None:
        return None
    return {
        "traits": list(row.get("traits") or []),
        "attributes": [row.get("age"), row.get("gender"), row.get("education"), row.get("socioeco")],
        "preferences": list(row.get("preferences") or []),
        "routines": list(row.get("routines") or []),
        "user_profile": row["summary"],
    }


def _fmt(value: Any) -> str:
    # GenUP formats with f-strings (str()) and joins with ", ".join, which needs strings; str() on the
    # items is the same for strings and keeps a number or null from stopping the build.
    return str(value)


def genup_system_prompt(profile: Mapping[str, Any], user_id: str, *, profile_fields: str = "all") -> str:
    """GenUP's ``create_system_prompt(user_profile, user_id)`` for a GenUP profile object.

    ``profile_fields`` is the profile ablation: ``"all"`` is GenUP's prompt byte for byte;
    ``"summary+routines+preferences"`` keeps the preference and routine lines and the profile text;
    ``"summary"`` is the profile text alone (GenUP's code has no switch for these: the lines of the
    fields left out are dropped, nothing else changes).
    """
    if profile_fields not in PROFILE_FIELDS:
        raise SftDataError(f"profile_fields must be one of {', '.join(PROFILE_FIELDS)}, got {profile_fields!r}")
    attrs = list(profile["attributes"])
    if len(attrs) != 4:
        raise SftDataError(
            f"user {user_id}: GenUP profile field 'attributes' must be [age, gender, education, socioeco], "
            f"got {attrs!r}"
        )
    age, gender, education, socioeco = (_fmt(a) for a in attrs)
    traits = ", ".join(_fmt(t) for t in profile["traits"])
    preferences = ", ".join(_fmt(p) for p in profile["preferences"])
    routines = ", ".join(_fmt(r) for r in profile["routines"])
    text = _fmt(profile["user_profile"])
    lines = []
    if profile_fields == "all":
        lines += [
            f"You are user {user_id} and your basic information is as follows:",
            f"Age: {age}; Gender: {gender}; Education: {education}; SocioEco: {socioeco}.",
            f"You have the following traits: {traits}.",
        ]
    if profile_fields in ("all", "summary+routines+preferences"):
        lines += [f"You have the following preferences: {preferences}.", f"You have the following routines: {routines}."]
    return "\n".join([*lines, text])


def genup_profiles_map(profiles: pl.DataFrame | Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """user id -> GenUP profile object, from a profiles table (rows whose ``status`` is ``failed`` and
    that have no GenUP object are left out) or from such a mapping."""
    if profiles is None:
        return {}
    if isinstance(profiles, Mapping):
        return {str(k): dict(v) for k, v in profiles.items()}
    require_columns(profiles, ["user_id"], source="profiles")
    profiles = string_ids(profiles, source="profiles")
    out: dict[str, dict[str, Any]] = {}
    for row in profiles.iter_rows(named=True):
        if row.get("status") == "failed" and not (isinstance(row.get("raw"), str) and row["raw"].strip()):
            continue
        obj = genup_profile(row)
        if obj is not None:
            out[str(row["user_id"])] = obj
    return out


# ------------------------------------------------------------------------------------------- LLM4POI


def llm4poi_frame(checkins: pl.DataFrame) -> pl.DataFrame:
    """Contract check-ins (docs/design.md §2, prepared) under LLM4POI's column names: the ids prompts show
    (``user_id``, ``poi_idx``, ``category_idx``), the venue's wall-clock time as ``UTCTimeOffset`` (UTC
    plus the venue's offset, as LLM4POI computes it) and the UTC epoch for ordering."""
    require_columns(checkins, ["user_id", "poi_idx", "category_idx", "category_name", "local_time", "utc_time",
                               "trajectory_id"], source="check-ins")
    return checkins.select(
        UserId=pl.col("user_id").cast(pl.String),
        PoiId=pl.col("poi_idx"),
        PoiCategoryId=pl.col("category_idx"),
        PoiCategoryName=pl.col("category_name"),
        UTCTimeOffset=pl.col("local_time").dt.strftime(TIME_FORMAT),
        UTCTimeOffsetEpoch=pl.col("utc_time").dt.epoch("s"),
        pseudo_session_trajectory_id=pl.col("trajectory_id"),
    )


def _text(col: str, frame: pl.DataFrame) -> pl.Expr:
    dtype = frame.schema[col]
    if isinstance(dtype, pl.Datetime):
        return pl.col(col).dt.strftime(TIME_FORMAT)
    return pl.col(col).cast(pl.String)


def _sentence(frame: pl.DataFrame, user: str) -> pl.Expr:
    """LLM4POI's check-in sentence (``... which is a {name} and has Category id {id}.``)."""
    return pl.concat_str(
        pl.lit("At "), _text("UTCTimeOffset", frame), pl.lit(", user "), pl.col(user).cast(pl.String),
        pl.lit(" visited POI id "), _text("PoiId", frame), pl.lit(" which is a "), _text("PoiCategoryName", frame),
        pl.lit(" and has Category id "), _text("PoiCategoryId", frame), pl.lit("."),
    )


def llm4poi_qa_pairs(
    main: pl.DataFrame,
    historical: pl.DataFrame | None = None,
    *,
    num_pois: int,
    history: Literal["full", "presence"] = "full",
    history_rows: int | None = None,
) -> pl.DataFrame:
    """LLM4POI's ``generate_qa_pairs(main_data, kqt, historical_data)``: one question/answer pair per
    trajectory of ``main`` (LLM4POI's columns, :data:`LLM4POI_COLUMNS`).

    The question is the trajectory but its last check-in, then ``There is also historical data:`` and
    the user's check-ins of ``historical`` (``main`` when None) that happened before the trajectory
    started (at most ``history_rows``, default LLM4POI's ``600 - number of columns``, in ``historical``'s
    row order), then ``Given the data, At <time>, Which POI id will user <u> visit? Note that POI id is
    an integer in the range from 0 to <num_pois>.``; the answer is ``<answer>: At <time>, user <u> will
    visit POI id <id>.``. A one-check-in trajectory with history becomes ``There is historical data for
    user <u>: ...`` without the ``<question>:`` prefix, as in LLM4POI. (LLM4POI's top-200 key branch
    is not taken with its published key files, so it is not reproduced.)

    ``history="presence"`` renders no historical sentence but keeps the marker where there is history:
    the text up to the marker, all GenUP reads, is the same, without rendering hundreds of sentences
    per record that GenUP cuts away.

    Columns out: ``user_id, trajectory_id, question, answer`` and the target's fields
    (``target_poi``, ``target_category``, ``target_time_text``, ``target_epoch``), ``history_pois`` and
    ``n_history`` (check-ins of the trajectory shown).
    """
    require_columns(main, list(LLM4POI_COLUMNS), source="LLM4POI check-ins")
    hist_src = main if historical is None else historical
    require_columns(hist_src, ["UserId", "UTCTimeOffsetEpoch", "PoiId", "PoiCategoryId", "PoiCategoryName",
                               "UTCTimeOffset"], source="LLM4POI historical check-ins")
    limit = LLM4POI_HISTORY_BASE - main.width if history_rows is None else history_rows
    ordered = main.with_columns(__s=_sentence(main, "UserId")).sort(
        "UserId", "pseudo_session_trajectory_id", "UTCTimeOffsetEpoch", maintain_order=True
    )
    traj = ordered.group_by("UserId", "pseudo_session_trajectory_id", maintain_order=True).agg(
        __sentences=pl.col("__s"),
        __start=pl.col("UTCTimeOffsetEpoch").min(),
        target_poi=pl.col("PoiId").last(),
        target_category=pl.col("PoiCategoryId").last(),
        target_time_text=_text("UTCTimeOffset", main).last(),
        target_epoch=pl.col("UTCTimeOffsetEpoch").last(),
        history_pois=pl.col("PoiId").slice(0, pl.len() - 1),
    )
    traj = traj.with_row_index("__t").with_columns(
        __prev=pl.col("__sentences").list.head(pl.col("__sentences").list.len() - 1)
    )
    hist_rows = hist_src.with_row_index("__order").select(
        pl.col("UserId").cast(pl.String), "UTCTimeOffsetEpoch", "__order",
        *([_sentence(hist_src, "UserId").alias("__hs")] if history == "full" else []),
    )
    keys = traj.select("__t", pl.col("UserId").cast(pl.String), "__start")
    if limit <= 0:
        hist = keys.select("__t", __hist=pl.lit([], dtype=pl.List(pl.String)), __has=pl.lit(False))
    elif history == "presence":
        first = hist_rows.group_by("UserId").agg(__min=pl.col("UTCTimeOffsetEpoch").min())
        hist = keys.join(first, on="UserId", how="left").select(
            "__t", __hist=pl.lit([], dtype=pl.List(pl.String)),
            __has=(pl.col("__min") < pl.col("__start")).fill_null(False),
        )
    else:
        joined = (
            keys.join(hist_rows, on="UserId", how="inner")
            .filter(pl.col("UTCTimeOffsetEpoch") < pl.col("__start"))
            .sort("__t", "__order")
            .group_by("__t")
            .agg(__hist=pl.col("__hs").tail(limit))
        )
        hist = keys.join(joined, on="__t", how="left").select(
            "__t", __hist=pl.col("__hist").fill_null(pl.lit([], dtype=pl.List(pl.String))),
        ).with_columns(__has=pl.col("__hist").list.len() > 0)
    traj = traj.join(hist, on="__t", how="left", maintain_order="left")
    user = pl.col("UserId").cast(pl.String)
    n_prev = pl.col("__prev").list.len()
    head = (
        pl.when(pl.col("__has") & (n_prev == 0))
        .then(pl.concat_str(pl.lit("There is historical data for user "), user, pl.lit(":")))
        .otherwise(pl.concat_str(pl.lit("<question>: The following data is a trajectory of user "), user, pl.lit(":")))
    )
    marker = (
        pl.when(pl.col("__has") & (n_prev > 0))
        .then(pl.lit(["There is also historical data:"], dtype=pl.List(pl.String)))
        .otherwise(pl.lit([], dtype=pl.List(pl.String)))
    )
    question = pl.concat_str(
        pl.concat_list(head, pl.col("__prev"), marker, pl.col("__hist")).list.join(" "),
        pl.lit(" Given the data, At "), pl.col("target_time_text"), pl.lit(", Which POI id will user "), user,
        pl.lit(f" visit? Note that POI id is an integer in the range from 0 to {num_pois}."),
    )
    answer = pl.concat_str(
        pl.lit("<answer>: At "), pl.col("target_time_text"), pl.lit(", user "), user, pl.lit(" will visit POI id "),
        pl.col("target_poi").cast(pl.String), pl.lit("."),
    )
    return traj.select(
        user_id=user,
        trajectory_id=pl.col("pseudo_session_trajectory_id").cast(pl.String),
        question=question,
        answer=answer,
        target_poi=pl.col("target_poi"),
        target_category=pl.col("target_category"),
        target_time_text=pl.col("target_time_text"),
        target_epoch=pl.col("target_epoch"),
        history_pois=pl.col("history_pois"),
        n_history=n_prev.cast(pl.Int64),
    )


# -------------------------------------------------------------------------------------------- GenUP


def genup_prompt_expr(system: pl.Expr, instruction: pl.Expr) -> pl.Expr:
    """GenUP's ``LLAMA_PROMPT`` up to and including ``[/INST]`` (the record's prompt)."""
    return pl.concat_str(pl.lit(GENUP_PROMPT_HEAD), system, pl.lit(GENUP_SYS_END), instruction, pl.lit(GENUP_INST_END))


def genup_completion_expr(answer: pl.Expr) -> pl.Expr:
    """The rest of GenUP's ``LLAMA_PROMPT``: `` {answer} </s>``."""
    return pl.concat_str(pl.lit(" "), answer, pl.lit(GENUP_EOS))


def genup_records_from_qa(
    qa: pl.DataFrame,
    profiles: pl.DataFrame | Mapping[str, Mapping[str, Any]] | None,
    *,
    split: str,
    profile_fields: str = "all",
    default_system: str | None = None,
) -> pl.DataFrame:
    """GenUP's ``process_qa_pair`` over LLM4POI ``question``/``answer`` pairs: pairs without
    ``<question>:`` are dropped; the answer loses ``<answer>: ``; the instruction is the question
    without ``<question>: ``, cut at ``There is also historical data:`` and stripped, a newline, and
    the ``Given the data, ...`` sentence (so a question without history carries that sentence twice,
    as in GenUP); the system prompt is :func:`genup_system_prompt` of the user's profile; the record is
    GenUP's ``LLAMA_PROMPT`` (``<s>`` in the text) split at ``[/INST]``.

    Users without a profile get ``default_system`` (GenUP has no such case: its run stops); with
    ``default_system=None`` they are an error naming the first one.
    """
    require_columns(qa, ["question", "answer"], source="question/answer pairs")
    kept = qa.filter(pl.col("question").str.contains("<question>:", literal=True))
    if kept.height < qa.height:
        logger.info("genup: dropped %d pairs without '<question>:' (as GenUP does)", qa.height - kept.height)
    q = pl.col("question").str.replace_all("<question>: ", "", literal=True)
    current = q.str.split("There is also historical data:").list.first().str.strip_chars()
    recs = kept.with_columns(
        targets=pl.col("answer").str.replace_all("<answer>: ", "", literal=True).str.strip_chars(),
        __current=current,
        __question=q.str.extract(_QUESTION_RE, 1),
        __user=current.str.extract(_USER_RE, 1),
    )
    bad = recs.filter(pl.col("__question").is_null() | pl.col("__user").is_null())
    if bad.height:
        raise SftDataError(
            f"genup: question {bad['question'][0][:160]!r} has no LLM4POI trajectory header or "
            "'Given the data, At ..., Which POI id will user ... visit? ...' sentence"
        )
    recs = recs.with_columns(inputs=pl.concat_str(pl.col("__current"), pl.lit("\n"), pl.col("__question")))

    table = genup_profiles_map(profiles)
    users = recs["__user"].unique().sort().to_list()
    missing = [u for u in users if u not in table]
    if missing and profiles is not None:
        if default_system is None:
            raise SftDataError(f"genup: user {missing[0]} has no profile ({len(missing)} users in all)")
        logger.warning("genup: %d users have no usable profile and get the default system prompt (first: %s)",
                       len(missing), missing[0])
    systems = pl.DataFrame(
        {
            "__user": users,
            "system_prompt": [
                genup_system_prompt(table[u], u, profile_fields=profile_fields) if u in table else default_system
                for u in users
            ],
            "has_profile": [u in table for u in users],
        },
        schema={"__user": pl.String, "system_prompt": pl.String, "has_profile": pl.Boolean},
    )
    if systems["system_prompt"].null_count():
        raise SftDataError("genup: records need profiles or a default system prompt")
    recs = recs.join(systems, on="__user", how="left", maintain_order="left")
    return recs.with_columns(
        split=pl.lit(split),
        prompt=genup_prompt_expr(pl.col("system_prompt"), pl.col("inputs")),
        completion=genup_completion_expr(pl.col("targets")),
        llama_prompt=pl.concat_str(
            genup_prompt_expr(pl.col("system_prompt"), pl.col("inputs")), genup_completion_expr(pl.col("targets"))
        ),
        messages=pl.concat_list(
            pl.struct(role=pl.lit("system"), content=pl.col("system_prompt")),
            pl.struct(role=pl.lit("user"), content=pl.col("inputs")),
            pl.struct(role=pl.lit("assistant"), content=pl.col("targets")),
        ),
        protocol=pl.lit("genup"),
        text_has_bos=pl.lit(True),
    ).drop("__current", "__question")


def build_genup_records(
    data: PreparedData | str | Path,
    profiles: pl.DataFrame | Mapping[str, Mapping[str, Any]] | None = None,
    *,
    config: NextPoiConfig | None = None,
    num_pois: int | None = None,
    reasoning: pl.DataFrame | Sequence[Any] | None = None,
) -> dict[str, pl.DataFrame]:
    """next_poi records per split exactly as GenUP builds them from LLM4POI's data (module docstring):
    LLM4POI's question/answer pairs over each split's trajectories (history from train, as LLM4POI's
    test pairs take it), then GenUP's record builder. ``num_pois`` defaults to the prepared data's N.

    Columns: genrec_core's ``SFT_RECORDS`` (prompt = GenUP's ``<s>[INST] <<SYS>> ... [/INST]``,
    completion = `` <answer> </s>``) plus GenUP's own ``system_prompt``, ``inputs``, ``targets``,
    ``llama_prompt`` (= prompt + completion), ``protocol`` = ``"genup"``, ``text_has_bos`` = true (the
    text carries ``<s>``: a trainer adds no BOS of its own, as GenUP turns the tokenizer's off),
    ``has_profile``, ``history_poi_idx``, ``num_pois``,
    ``target_category_idx``, ``n_cut`` (always 0: GenUP keeps trajectories whole).

    ``reasoning`` (``genrec_profiler.write_cot_reasoning``'s table, or one reasoning object per train
    record): GenUP's chain-of-thought variant (``--use_cot``), :func:`build_genup_cot_records`.
    """
    cfg = config or NextPoiConfig(protocol="genup")
    if not isinstance(data, PreparedData):
        data = load_prepared(data)
    n = data.num_pois if num_pois is None else num_pois
    checkins = validated(CHECKINS, data.checkins, source="build_genup_records: checkins")
    # A target or step without a train code has no id to show (prepare already drops such val/test rows).
    coded = checkins.filter(pl.col("poi_idx").is_not_null())
    lf = llm4poi_frame(coded).with_columns(coded["split"].alias("__split"))
    train = lf.filter(pl.col("__split") == "train").drop("__split")
    result: dict[str, pl.DataFrame] = {}
    for split in cfg.splits:
        main = lf.filter(pl.col("__split") == split).drop("__split")
        qa = llm4poi_qa_pairs(main, train, num_pois=n, history="presence")
        recs = genup_records_from_qa(qa, profiles, split=split, profile_fields=cfg.profile_fields,
                                     default_system=cfg.system_prompt)
        recs = recs.with_columns(
            record_id=pl.concat_str(pl.lit(f"next_poi:{split}:"), pl.col("trajectory_id")),
            task=pl.lit("next_poi"),
            target_poi_idx=pl.col("target_poi").cast(pl.Int64),
            target_category_idx=pl.col("target_category").cast(pl.Int64),
            target_time=pl.col("target_time_text").str.strptime(pl.Datetime("us"), TIME_FORMAT),
            history_poi_idx=pl.col("history_pois").cast(pl.List(pl.Int64)),
            n_checkins=pl.col("n_history"),
            num_pois=pl.lit(n, dtype=pl.Int64),
            n_cut=pl.lit(0, dtype=pl.Int64),
        )
        recs = recs.select(
            "record_id", "task", "user_id", "split", "prompt", "completion", "messages", "target_poi_idx",
            "trajectory_id", "n_checkins", "target_time", "history_poi_idx", "num_pois", "target_category_idx",
            "n_cut", "system_prompt", "inputs", "targets", "llama_prompt", "protocol", "text_has_bos", "has_profile",
        )
        result[split] = validated(SFT_RECORDS, recs, source=f"build_genup_records: {split}")
        logger.info("build_genup_records: %s has %d records", split, recs.height)
    if reasoning is not None:
        result = build_genup_cot_records(result, reasoning)
    return result


# ------------------------------------------------------------------------------ GenUP chain of thought

#: create_sft_dataset.py's ``LLAMA_COT_PROMPT`` after ``[/INST]`` (the prompt before it is ``LLAMA_PROMPT``'s).
GENUP_COT_COMPLETION = "<think>{reasoning}</think><output>{answer}</output></s>"


def genup_cot_reasoning_text(reasoning: Mapping[str, Any]) -> str:
    """create_sft_dataset.py's ``_stringify_reasoning``: one ``Title Cased Key: value`` line per key of
    the reasoning object, in its order, each ending in a newline (values as Python's ``str``)."""
    return "".join(f"{str(k).replace('_', ' ').title()}: {v}\n" for k, v in reasoning.items())


def _reasoning_texts(reasoning: pl.DataFrame | Sequence[Any]) -> tuple[str, list[Any]]:
    """(key column, reasoning texts) of a reasoning table or a list (one entry per train row)."""
    if isinstance(reasoning, pl.DataFrame):
        if "reasoning" not in reasoning.columns and "reasoning_json" not in reasoning.columns:
            raise SftDataError("genup cot: the reasoning table has no 'reasoning' or 'reasoning_json' column")
        if "reasoning" in reasoning.columns:
            texts = reasoning["reasoning"].to_list()
        else:
            texts = [None if t is None else genup_cot_reasoning_text(json.loads(t)) for t in reasoning["reasoning_json"]]
        key = "record_id" if "record_id" in reasoning.columns and reasoning["record_id"].null_count() == 0 else "index"
        return key, texts
    return "index", [genup_cot_reasoning_text(r) if isinstance(r, Mapping) else r for r in reasoning]


def build_genup_cot_records(
    records: pl.DataFrame | Mapping[str, pl.DataFrame],
    reasoning: pl.DataFrame | Sequence[Mapping[str, Any] | str | None],
    *,
    missing: str = "error",
) -> Any:
    """GenUP's chain-of-thought SFT records (``create_sft_dataset.py --use_cot``): the train records'
    text becomes ``LLAMA_COT_PROMPT``, ``<s>[INST] <<SYS>>\\n{profile}\\n<</SYS>>\\n\\n{instruction}
    [/INST]<think>{reasoning}</think><output>{answer}</output></s>`` (no space after ``[/INST]`` nor
    before ``</s>``), the reasoning being :func:`genup_cot_reasoning_text` of the record's reasoning
    object. Only the train split changes: GenUP's test records keep ``LLAMA_PROMPT``.

    ``records``: GenUP-layout records (``build_genup_records`` / ``read_genup_records``, protocol genup)
    or their dict of splits. ``reasoning``: ``genrec_profiler.write_cot_reasoning``'s table (matched by
    ``record_id``, else by ``index``, the row's position as GenUP numbers its files), or a list with
    one reasoning object (or text) per train row. A record without reasoning is an error (GenUP's run
    stops on the missing file); ``missing="drop"`` drops it, ``"plain"`` keeps its plain record.
    The record's ``prompt`` stays GenUP's up to ``[/INST]``; ``completion`` is the rest; ``messages``'
    assistant turn is the completion without ``</s>``; a ``reasoning`` column is added.
    """
    if missing not in ("error", "drop", "plain"):
        raise SftDataError(f"build_genup_cot_records: missing must be 'error', 'drop' or 'plain', got {missing!r}")
    if isinstance(records, Mapping):
        return {split: (build_genup_cot_records(frame, reasoning, missing=missing) if split == "train"
                        else frame.with_columns(reasoning=pl.lit(None, dtype=pl.String)))
                for split, frame in records.items()}
    require_columns(records, ["system_prompt", "inputs", "targets"], source="genup cot records")
    key, texts = _reasoning_texts(reasoning)
    if key == "record_id":
        assert isinstance(reasoning, pl.DataFrame)
        table = pl.DataFrame({"record_id": reasoning["record_id"].cast(pl.String), "reasoning": texts},
                             schema={"record_id": pl.String, "reasoning": pl.String})
        recs = records.drop("reasoning", strict=False).join(table, on="record_id", how="left", maintain_order="left")
    else:
        idx = (reasoning["index"].to_list() if isinstance(reasoning, pl.DataFrame) and "index" in reasoning.columns
               else list(range(len(texts))))
        by_index = dict(zip(idx, texts))
        recs = records.drop("reasoning", strict=False).with_columns(
            reasoning=pl.Series([by_index.get(i) for i in range(records.height)], dtype=pl.String))
    has = pl.col("reasoning").is_not_null()
    absent = recs.filter(~has)
    if absent.height:
        first = absent["record_id"][0] if "record_id" in absent.columns else "?"
        if missing == "error":
            raise SftDataError(f"genup cot: {absent.height} train records have no reasoning (first: {first})")
        logger.warning("genup cot: %d train records have no reasoning (%s)", absent.height, missing)
        if missing == "drop":
            recs = recs.filter(has)
    body = pl.concat_str(pl.lit("<think>"), pl.col("reasoning"), pl.lit("</think><output>"), pl.col("targets"),
                         pl.lit("</output>"))
    prompt = genup_prompt_expr(pl.col("system_prompt"), pl.col("inputs"))
    completion = pl.when(has).then(pl.concat_str(body, pl.lit("</s>"))).otherwise(genup_completion_expr(pl.col("targets")))
    out = recs.with_columns(prompt=prompt, completion=completion).with_columns(
        llama_prompt=pl.concat_str(pl.col("prompt"), pl.col("completion")),
        messages=pl.concat_list(
            pl.struct(role=pl.lit("system"), content=pl.col("system_prompt")),
            pl.struct(role=pl.lit("user"), content=pl.col("inputs")),
            pl.struct(role=pl.lit("assistant"), content=pl.when(has).then(body).otherwise(pl.col("targets"))),
        ),
        protocol=pl.lit("genup"),
        text_has_bos=pl.lit(True),
    )
    return validated(SFT_RECORDS, out, source="build_genup_cot_records")


def parse_cot_reasoning(text: str) -> str:
    """eval_next_poi_cot.py's first step: the first ``<think>...</think>`` span of the decoded text
    (any case, across lines), stripped; ``""`` when there is none (GenUP then goes on without one)."""
    found = re.findall(r"<think>(.*?)</think>", text, re.DOTALL | re.IGNORECASE)
    return found[0].strip() if found else ""


def parse_cot_answer(text: str) -> str | None:
    """The POI id of a chain-of-thought answer, as eval_next_poi_cot.py reads it: GenUP writes
    ``...</think><output>`` and the answer up to ``POI id `` itself and keeps every digit of what the
    model adds (``re.sub(r"[^0-9]", "", ...)`` of 5 new tokens). Here: the text after the last
    ``<output>`` (up to ``</output>`` or ``</s>``), after its last ``POI id`` when it has one (a bare
    continuation such as ``123. </s>`` is read whole), all its digits; None when there are none."""
    body = text
    opened = [m.end() for m in re.finditer(r"<output>", body, re.IGNORECASE)]
    if opened:
        body = body[opened[-1]:]
    body = re.split(r"</output>|</s>", body, maxsplit=1, flags=re.IGNORECASE)[0]
    if "POI id" in body:
        body = body.rsplit("POI id", 1)[1]
    digits = re.sub(r"[^0-9]", "", body)
    return digits or None
