"""``generate_profiles``: prompts per user, a backend, validation with feedback retries, and a
resumable, append-as-you-go profiles table."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import polars as pl

from genrec_core import PROFILES, FolderLock, atomic_write_parquet, read_table, redact
from genrec_profiler._client import Completion, LLMClient, ProfileRequest
from genrec_profiler._digest import compute_digests, user_sentences
from genrec_profiler._errors import ProfilerError
from genrec_profiler._prompt import (
    DRAFT_TEXT,
    GENUP_PROMPT,
    SCHEMA_TEXT,
    SYSTEM_PROMPT,
    FittedPrompt,
    feedback_messages,
    fit_prompt,
    genup_messages,
)
from genrec_profiler._schema import ParsedProfile, parse_profile
from genrec_profiler._template import template_profile

logger = logging.getLogger(__name__)

#: Columns of the profiles table: genrec_core's ``PROFILES`` contract first, then the profiler's own.
PROFILE_SCHEMA: dict[str, Any] = {
    **PROFILES.schema,
    "attempts": pl.Int32,
    "tokens_in": pl.Int64,
    "tokens_out": pl.Int64,
    "n_checkins": pl.Int32,
    "n_checkins_used": pl.Int32,
    "n_checkins_cut": pl.Int32,
    "seconds": pl.Float64,
    "repairs": pl.List(pl.String),
    "extra": pl.String,
    # JSON object field -> "model" | "repair" | "draft" (ParsedProfile.sources).
    "sources": pl.String,
    "finish_reason": pl.String,
    # What the row was written from (the user's check-ins, the prompt options, backend and model):
    # a resume keeps a row only while this still matches (see _input_keys).
    "inputs_sha256": pl.String,
}
# Batches are formed by prompt length within windows of this many batches (see generate_profiles).
_SORT_WINDOW = 32
REQUIRED_COLUMNS = ("user_id", "poi_id", "category_name", "latitude", "longitude", "local_time",
                    "poi_idx", "category_idx")


@dataclass(frozen=True, kw_only=True)
class ProfilerConfig:
    """Options of a profiling run (the backend's own options live on the backend)."""

    users: int | None = field(default=None, metadata={"help": "profile only the first N users"})
    user_ids: tuple[str, ...] | None = field(default=None, metadata={"help": "profile only these users"})
    batch_size: int = field(default=8, metadata={"help": "users sent to the backend at once"})
    max_retries: int = field(
        default=2, metadata={"help": "re-asks with feedback when the output is invalid (0 = none)"}
    )
    max_prompt_tokens: int | None = field(
        default=None, metadata={"help": "cap on prompt tokens below the backend's own budget"}
    )
    max_checkins: int | None = field(
        default=None, metadata={"help": "at most this many most recent check-ins in a prompt"}
    )
    draft_in_prompt: bool = field(
        default=False,
        metadata={"help": "show the statistical draft profile in the prompt as a starting point (the model then "
                  "tends to copy it; off by default: the statistics stay in the prompt as context)"},
    )
    no_draft: bool = field(
        default=False,
        metadata={"help": "no draft at all: neither in the prompt nor as the fallback of fields the model leaves "
                  "out (those then fail)"},
    )
    protocol: Literal["genrec", "genup"] = field(
        default="genrec",
        metadata={
            "help": "genrec: our prompt (check-ins that fit, digest, draft); genup: GenUP's prompt byte for byte over "
            "every training check-in, one user message, JSON mode"
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "start over instead of resuming"})
    progress: bool = field(default=False, metadata={"help": "show a progress bar"})
    accept_failures: bool = field(
        default=False,
        metadata={"help": "a run where some profiles failed still succeeds (exit 0); by default it exits 1, and a "
                  "rerun retries the failed users either way"},
    )

    def __post_init__(self) -> None:
        from genrec_profiler._checks import check_bool, check_int

        check_int("ProfilerConfig", "users", self.users, minimum=1, optional=True)
        check_int("ProfilerConfig", "batch_size", self.batch_size, minimum=1)
        check_int("ProfilerConfig", "max_retries", self.max_retries, minimum=0)
        check_int("ProfilerConfig", "max_prompt_tokens", self.max_prompt_tokens, minimum=1, optional=True)
        check_int("ProfilerConfig", "max_checkins", self.max_checkins, minimum=1, optional=True)
        for name in ("draft_in_prompt", "no_draft", "overwrite", "progress", "accept_failures"):
            check_bool("ProfilerConfig", name, getattr(self, name))
        if self.user_ids is not None:
            # A bare string would be taken character by character.
            if isinstance(self.user_ids, (str, bytes)) or not all(isinstance(u, str) and u for u in self.user_ids):
                raise ProfilerError(
                    f"ProfilerConfig.user_ids: must be a sequence of non-empty user id strings, got {self.user_ids!r}")
            object.__setattr__(self, "user_ids", tuple(self.user_ids))
        if self.protocol not in ("genrec", "genup"):
            raise ProfilerError(f"ProfilerConfig.protocol: must be 'genrec' or 'genup', got {self.protocol!r}")
        if self.protocol == "genup":
            for name in ("max_prompt_tokens", "max_checkins"):
                if getattr(self, name) is not None:
                    raise ProfilerError(
                        f"ProfilerConfig.{name}: a genrec option; protocol='genup' sends every training check-in "
                        "as GenUP does"
                    )


@dataclass(frozen=True, kw_only=True)
class ProfileRunResult:
    """What one :func:`generate_profiles` call did. Counts of ok/repaired/failed cover this run only."""

    path: Path
    n_users: int
    n_generated: int
    n_resumed: int
    no_train_users: tuple[str, ...]
    n_ok: int
    n_repaired: int
    n_failed: int
    tokens_in: int
    tokens_out: int
    seconds: float
    #: Users whose profile failed in this run (a rerun retries them).
    failed_users: tuple[str, ...] = ()
    #: ``ProfilerConfig.accept_failures`` of the run.
    accept_failures: bool = False
    #: Rows of an earlier run dropped because their inputs no longer match (or their user is gone).
    n_stale: int = 0

    @property
    def complete(self) -> bool:
        """Every profile of this run was written (none failed)."""
        return self.n_failed == 0

    @property
    def ok(self) -> bool:
        """The run succeeded: complete, or failures were accepted (``accept_failures``)."""
        return self.complete or self.accept_failures


def parts_dir(out: Path) -> Path:
    """Where finished batches wait (one parquet file each) until the run merges them into ``out``."""
    return out.with_name(out.name + ".parts")


def _load(data: Any) -> tuple[pl.DataFrame, pl.DataFrame, Path | None, str]:
    """(all check-ins, train check-ins, prepared folder or None, description)."""
    if hasattr(data, "checkins") and hasattr(data, "train"):  # genrec_sftdata.PreparedData
        return data.checkins, data.train, getattr(data, "path", None), "prepared data"
    if isinstance(data, pl.LazyFrame):
        data = data.collect()
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.is_dir():
            from genrec_sftdata import load_prepared

            prepared = load_prepared(path)
            return prepared.checkins, prepared.train, path, str(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such prepared-data folder or check-in file")
        if path.suffix.lower() == ".parquet":
            frame = read_table(path, what="check-in")
        elif path.suffix.lower() == ".csv":
            frame = read_table(path, what="check-in", try_parse_dates=True)
        else:
            raise ProfilerError(f"{path}: expected a prepared folder, a .parquet or a .csv check-in file")
        name = str(path)
    elif isinstance(data, pl.DataFrame):
        frame, name = data, "check-in frame"
    else:
        raise ProfilerError(f"data: expected a prepared folder, PreparedData or a DataFrame, got {type(data).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ProfilerError(f"{name}: missing column {missing[0]!r} of the check-in contract (docs/design.md §2)")
    if frame.height == 0:
        raise ProfilerError(f"{name}: no check-ins (the table has no rows)")
    if frame.schema["local_time"] == pl.String:
        try:
            frame = frame.with_columns(pl.col("local_time").str.to_datetime())
        except pl.exceptions.PolarsError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ProfilerError(f"{name}: column 'local_time' is not a date-time ({first})") from None
    train = frame.filter(pl.col("split") == "train") if "split" in frame.columns else frame
    return frame, train, None, name


def _user_order(checkins: pl.DataFrame) -> list[str]:
    order = checkins.select(pl.col("user_id").cast(pl.String), *(["user_idx"] if "user_idx" in checkins.columns else []))
    if "user_idx" in order.columns:
        order = order.group_by("user_id").agg(pl.col("user_idx").min()).sort("user_idx", "user_id", nulls_last=True)
    return order.unique("user_id", keep="first", maintain_order=True)["user_id"].to_list()


def _read_done(out: Path) -> pl.DataFrame:
    """Every row written so far: ``out``, then the part files in the order they were written; a user
    written twice (a failed profile retried) keeps its latest row."""
    if out.suffix.lower() != ".parquet":
        raise ProfilerError(f"{out}: expected a .parquet profiles table")
    frames = []
    if out.exists():
        frames.append(read_table(out, what="profiles"))
    parts = parts_dir(out)
    if parts.is_dir():
        frames.extend(read_table(p, what="profiles") for p in sorted(parts.glob("part-*.parquet")))
    if not frames:
        return pl.DataFrame(schema=PROFILE_SCHEMA)
    for frame, source in zip(frames, [out, *sorted(parts.glob("part-*.parquet"))] if parts.is_dir() else [out]):
        if "user_id" not in frame.columns:
            raise ProfilerError(f"{source}: not a profiles table (no user_id column)")
    return pl.concat(frames, how="diagonal_relaxed").unique("user_id", keep="last", maintain_order=True)


def _input_keys(users: list[str], sentences: dict[str, list[str]], digests: dict[str, Any],
                config: ProfilerConfig, client: LLMClient, budget: int | None) -> dict[str, str]:
    """Per user, the sha256 of what its profile is written from: its training check-ins (as the
    prompt states them, and the digest of all of them), the options that shape the prompt, the
    prompt texts, the backend and the model. A resumed row is kept only while its key matches."""
    shared = json.dumps({
        "protocol": config.protocol, "max_checkins": config.max_checkins, "budget": budget,
        "draft_in_prompt": config.draft_in_prompt, "no_draft": config.no_draft,
        "backend": client.backend, "model": client.model,
        "prompts": [SYSTEM_PROMPT, SCHEMA_TEXT, DRAFT_TEXT, GENUP_PROMPT],
    }, sort_keys=True, default=str)
    keys = {}
    for user in users:
        h = hashlib.sha256(shared.encode())
        for text in (user, digests[user].render(), *sentences[user]):
            h.update(b"\0" + text.encode())
        keys[user] = h.hexdigest()
    return keys


def _clear(out: Path) -> None:
    out.unlink(missing_ok=True)
    parts = parts_dir(out)
    if parts.is_dir():
        for p in parts.iterdir():
            p.unlink()
        parts.rmdir()


def _merge(out: Path) -> pl.DataFrame:
    """Fold the part files into ``out`` (atomically) and remove them; exactly one row per user."""
    table = PROFILES.validate(_read_done(out), source=out)
    atomic_write_parquet(out, table)
    parts = parts_dir(out)
    if parts.is_dir():
        for part in parts.glob("part-*.parquet"):
            part.unlink(missing_ok=True)
        for tmp in parts.glob(".*"):
            tmp.unlink(missing_ok=True)
        parts.rmdir()
    return table


def _row(user_id: str, parsed: ParsedProfile, *, raw: str, client: LLMClient, attempts: int,
         tokens_in: int, tokens_out: int, n_checkins: int, n_used: int, n_cut: int, seconds: float,
         finish_reason: str | None = None) -> dict[str, Any]:
    row = parsed.to_row()
    row.update(
        user_id=user_id, backend=client.backend, model=client.model, raw=raw, attempts=attempts,
        finish_reason=finish_reason,
        tokens_in=tokens_in, tokens_out=tokens_out, n_checkins=n_checkins, n_checkins_used=n_used,
        n_checkins_cut=n_cut, seconds=seconds,
    )
    return row


def _redacted(client: LLMClient, text: str) -> str:
    """``text`` without credentials: the client's own (``client.redact``, where it has one) and any
    that look like one (URL passwords, bearer tokens, API keys)."""
    own = getattr(client, "redact", None)
    if callable(own):
        text = str(own(text))
    return str(redact(text))


def _run_batch(client: LLMClient, requests: list[ProfileRequest], max_retries: int) -> list[tuple[ParsedProfile, Completion, int, int, int]]:
    """Ask, validate, re-ask the invalid ones with feedback. Per request: (parsed, last completion,
    attempts, tokens_in, tokens_out)."""
    final: dict[int, tuple[ParsedProfile, Completion, int, int, int]] = {}
    tokens = {i: [0, 0] for i in range(len(requests))}
    pending = list(enumerate(requests))
    for attempt in range(max_retries + 1):
        try:
            completions = client.complete([r for _, r in pending])
            if len(completions) != len(pending):
                raise ProfilerError(f"backend {client.backend}: {len(completions)} completions for {len(pending)} requests")
        except Exception as exc:
            # One bad batch must not stop the run: its users are recorded as failed with the reason.
            # Exceptions can carry URLs and server messages: redacted before they are logged or kept.
            reason = _redacted(client, f"{type(exc).__name__}: {exc}")
            logger.warning("backend %s failed on a batch of %d: %s", client.backend, len(pending), reason)
            if logger.isEnabledFor(logging.DEBUG):
                import traceback

                logger.debug("%s", _redacted(client, "".join(traceback.format_exception(exc))))
            completions = [Completion(text="", error=reason)] * len(pending)
        retry = []
        for (i, request), completion in zip(pending, completions):
            tokens[i][0] += completion.tokens_in
            tokens[i][1] += completion.tokens_out
            if completion.error is not None:
                parsed = ParsedProfile(status="failed", error=_redacted(client, f"backend error: {completion.error}"))
                final[i] = (parsed, completion, attempt + 1, tokens[i][0], tokens[i][1])
                continue
            parsed = parse_profile(completion.text, draft=request.draft)
            if parsed.ok or attempt == max_retries:
                final[i] = (parsed, completion, attempt + 1, tokens[i][0], tokens[i][1])
            else:
                logger.debug("user %s: invalid output (%s); retrying with feedback", request.user_id, parsed.error)
                messages = feedback_messages(request.messages, completion.text, parsed.error or "invalid JSON")
                retry.append((i, replace(request, messages=messages, attempt=attempt + 1)))
        pending = retry
        if not pending:
            break
    return [final[i] for i in range(len(requests))]


def generate_profiles(
    data: Any,
    *,
    config: ProfilerConfig | None = None,
    client: LLMClient | None = None,
    out: str | os.PathLike[str] | None = None,
) -> ProfileRunResult:
    """Write one profile per user with training check-ins to ``out`` (parquet; default
    ``<prepared dir>/profiles.parquet``).

    ``data`` is a prepared folder, a ``genrec_sftdata.PreparedData`` or a check-in frame/file with the
    contract columns (rows with ``split == "train"`` are used when there is a split column). Finished
    batches are written atomically as they complete, so a killed run loses at most the batch in flight;
    calling again with the same ``out`` skips users already profiled (``overwrite=True`` starts over).
    Users without training check-ins are logged and skipped. ``client`` defaults to
    :class:`LocalBackend` with SmolLM2.
    """
    config = config or ProfilerConfig()
    start = time.perf_counter()
    checkins, train, folder, name = _load(data)
    if out is None:
        if folder is None:
            raise ProfilerError("generate_profiles: out= is required unless data is a prepared folder")
        out = folder / "profiles.parquet"
    out_path = Path(out)
    if out_path.is_dir():
        raise ProfilerError(f"{out_path}: out must be a parquet file path, not a folder")
    # One run per output: a second run into the same table stops at once instead of mixing its parts
    # with this one's (the lock is a hidden folder beside the table; an flock, so a dead run never blocks).
    with FolderLock(out_path.with_name(f".{out_path.name}.lock"), what="profiles output", guards=str(out_path)):
        return _generate_locked(checkins, train, name, out_path, config, client, start)


def _generate_locked(
    checkins: pl.DataFrame,
    train: pl.DataFrame,
    name: str,
    out_path: Path,
    config: ProfilerConfig,
    client: LLMClient | None,
    start: float,
) -> ProfileRunResult:

    users = _user_order(checkins)
    if config.user_ids is not None:
        wanted = set(config.user_ids)
        unknown = sorted(wanted - set(users))
        if unknown:
            raise ProfilerError(f"{name}: user_ids: user {unknown[0]!r} has no check-ins")
        users = [u for u in users if u in wanted]
    if config.users is not None:
        users = users[: config.users]
    train_all = train
    train = train.filter(pl.col("user_id").cast(pl.String).is_in(users))
    with_train = set(train["user_id"].cast(pl.String).unique().to_list())
    no_train = tuple(u for u in users if u not in with_train)
    for user in no_train:
        logger.warning("user %s has no train check-ins in %s; skipped", user, name)
    users = [u for u in users if u in with_train]

    if config.overwrite:
        _clear(out_path)
    # An existing output must be a profiles table before any model is loaded: a run never writes
    # over a file it cannot read back (pass overwrite to replace it).
    existing = _read_done(out_path)
    if existing.height:
        PROFILES.validate(existing, source=out_path)

    if client is None:
        from genrec_profiler._local import LocalBackend

        client = LocalBackend()
    budget = client.prompt_token_budget
    if config.max_prompt_tokens is not None:
        budget = config.max_prompt_tokens if budget is None else min(budget, config.max_prompt_tokens)

    # Keys for the users of this run and for every other user with a row already (still in the data):
    # a row is kept only while the inputs it was written from are the same.
    written = existing["user_id"].cast(pl.String).to_list()
    in_data = set(train_all["user_id"].cast(pl.String).unique().to_list()) if existing.height else set()
    keyed = list(dict.fromkeys([*users, *(u for u in written if u in in_data)]))
    key_train = train_all.filter(pl.col("user_id").cast(pl.String).is_in(keyed))
    digests = compute_digests(key_train)
    sentences = user_sentences(key_train)
    keys = _input_keys(keyed, sentences, digests, config, client, budget)
    n_stale = 0
    if existing.height:
        have = existing["inputs_sha256"] if "inputs_sha256" in existing.columns else pl.Series([None] * existing.height)
        fresh = pl.Series([keys.get(u) is not None and keys.get(u) == k for u, k in zip(written, have.to_list())])
        n_stale = existing.height - int(fresh.sum())
        if n_stale:
            logger.warning("%s: %d of %d rows were written from other inputs (check-ins, prompt options, backend or "
                           "model) or for users no longer in %s; they are dropped and written afresh", out_path, n_stale,
                           existing.height, name)
            kept = existing.filter(fresh)
            _clear(out_path)
            if kept.height:
                atomic_write_parquet(out_path, PROFILES.validate(kept, source=out_path))
            existing = kept
    # Failed profiles are not done: a rerun retries them.
    done = set(existing.filter(pl.col("status").is_null() | (pl.col("status") != "failed"))["user_id"].to_list())
    todo = [u for u in users if u not in done]
    n_resumed = len(users) - len(todo)
    if n_resumed:
        logger.info("resuming %s: %d of %d users already done", out_path, n_resumed, len(users))

    from tqdm.auto import tqdm

    parts = parts_dir(out_path)
    counts = {"ok": 0, "repaired": 0, "failed": 0}
    failed_users: list[str] = []
    tokens_in = tokens_out = 0
    part_files = sorted(parts.glob("part-*.parquet")) if parts.is_dir() else []
    next_part = 1 + max((int(p.stem.split("-")[1]) for p in part_files), default=-1)
    def fitted(user: str) -> tuple[FittedPrompt, ProfileRequest]:
        digest = digests[user]
        if config.protocol == "genup":
            every = sentences[user]
            fit = FittedPrompt(messages=genup_messages(user, every), n_used=len(every), n_cut=0)
            return fit, ProfileRequest(user_id=user, messages=fit.messages, digest=digest, json_mode=True,
                                       protocol="genup")
        # The draft is the fallback of a field the model leaves out (recorded as "draft" in
        # ``sources``); it is shown in the prompt only when asked (the model then copies it).
        draft_obj = None if config.no_draft else template_profile(digest)
        shown = json.dumps(draft_obj) if draft_obj is not None and config.draft_in_prompt else None
        fit = fit_prompt(user, sentences[user], digest.render(), budget=budget,
                         count_tokens=client.count_tokens, max_checkins=config.max_checkins, draft=shown)
        if fit.n_cut:
            logger.debug("user %s: kept %d of %d check-ins", user, fit.n_used, fit.n_used + fit.n_cut)
        return fit, ProfileRequest(user_id=user, messages=fit.messages, digest=digest, draft=draft_obj)

    # A backend that pads its batches (``pads_batches``, the local one) gets users in windows of
    # _SORT_WINDOW batches, each window's batches formed by prompt length, so that a batch pads (and
    # decodes over) little: a batch mixing a 300-token prompt with a 7,000-token one attends over
    # 7,000 positions for every row. Other backends keep the users' order.
    by_length = bool(getattr(client, "pads_batches", False))
    window = config.batch_size * (_SORT_WINDOW if by_length else 1)
    with tqdm(total=len(todo), disable=not config.progress, desc="profiles", unit="user") as bar:
        for wlo in range(0, len(todo), window):
            prepared = {user: fitted(user) for user in todo[wlo : wlo + window]}
            order = list(prepared)
            if by_length and len(order) > config.batch_size:
                sizes = {u: sum(client.count_tokens([m["content"] for m in prepared[u][0].messages])) for u in order}
                order.sort(key=lambda u: sizes[u])
            for lo in range(0, len(order), config.batch_size):
                batch_start = time.perf_counter()
                batch = order[lo : lo + config.batch_size]
                fits = [prepared[u][0] for u in batch]
                results = _run_batch(client, [prepared[u][1] for u in batch], config.max_retries)
                seconds = (time.perf_counter() - batch_start) / len(batch)
                rows = []
                for user, fit, (parsed, completion, attempts, t_in, t_out) in zip(batch, fits, results):
                    rows.append(_row(user, parsed, raw=completion.text, client=client, attempts=attempts,
                                     tokens_in=t_in, tokens_out=t_out, n_checkins=digests[user].n_checkins,
                                     n_used=fit.n_used, n_cut=fit.n_cut, seconds=seconds,
                                     finish_reason=completion.finish_reason))
                    counts[parsed.status] += 1
                    tokens_in += t_in
                    tokens_out += t_out
                    rows[-1]["inputs_sha256"] = keys[user]
                    if parsed.status == "failed":
                        failed_users.append(user)
                        logger.warning("user %s: profile failed: %s", user, parsed.error)
                parts.mkdir(parents=True, exist_ok=True)
                part = parts / f"part-{next_part:06d}.parquet"
                atomic_write_parquet(part, PROFILES.validate(pl.DataFrame(rows, schema=PROFILE_SCHEMA), source=part))
                next_part += 1
                bar.update(len(batch))
    _merge(out_path)
    return ProfileRunResult(
        path=out_path,
        n_users=len(users),
        n_generated=len(todo),
        n_resumed=n_resumed,
        no_train_users=no_train,
        n_ok=counts["ok"],
        n_repaired=counts["repaired"],
        n_failed=counts["failed"],
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        seconds=time.perf_counter() - start,
        failed_users=tuple(failed_users),
        accept_failures=config.accept_failures,
        n_stale=n_stale,
    )


def read_profiles(path: str | os.PathLike[str], *, validate: bool = True) -> pl.DataFrame:
    """The profiles table at ``path``, including batches of an unfinished run still in part files,
    checked against genrec_core's ``PROFILES`` contract (the profiler's own columns come along).
    ``validate=False`` reads any table as it is (statistics and similar users need only a few
    columns)."""
    path = Path(path)
    if not path.is_file() and not parts_dir(path).is_dir():
        raise FileNotFoundError(f"{path}: no profiles table")
    table = _read_done(path)
    if validate:
        return PROFILES.validate(table, source=path)
    # Statistics and similar users read these; anything else is not a profiles table.
    missing = next((c for c in ("user_id", "status", "summary") if c not in table.columns), None)
    if missing is not None:
        raise ProfilerError(f"{path}: not a profiles table (no {missing!r} column)")
    return table
