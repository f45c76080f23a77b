"""SFT records → token ids with labels masked to the completion / assistant tokens."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genrec_trainer._errors import TrainerError

if TYPE_CHECKING:
    import polars as pl
    import torch

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass(frozen=True, kw_only=True, slots=True)
class Example:
    """One training sequence: token ids, labels (``-100`` where no loss is taken), optional positions."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    position_ids: tuple[int, ...] | None = None
    n_records: int = 1


@dataclass(frozen=True, kw_only=True)
class TokenizedSet:
    examples: list[Example]
    n_records: int
    n_truncated: int
    format: str


def read_records(path: str | Path, *, role: str = "train") -> pl.DataFrame:
    """Read SFT records from .parquet, .jsonl/.ndjson, .json (a list), a datasets save_to_disk folder,
    a folder of parquet/jsonl files (a hub dataset snapshot), or a hub dataset id (``org/name[@rev]``,
    fetched with :func:`genrec_core.models.resolve_dataset`)."""
    import polars as pl

    given = str(path)
    if not given or given == ".":
        raise TrainerError(f"config field {role!r}: no {role} records given")
    path = Path(given).expanduser()
    if not path.exists():
        from genrec_core.models import ModelNotFoundError, is_hub_id, resolve_dataset

        if not is_hub_id(given):
            raise TrainerError(f"{role} records: path does not exist: {path}")
        try:
            path = resolve_dataset(given)
        except ModelNotFoundError as exc:
            raise TrainerError(f"{role} records: {exc}") from exc
    try:
        if path.is_dir():
            frame = _read_folder(path, role)
        elif path.suffix == ".parquet":
            frame = pl.read_parquet(path)
        elif path.suffix in (".jsonl", ".ndjson"):
            frame = pl.read_ndjson(path) if path.stat().st_size else pl.DataFrame()
        elif path.suffix == ".json":
            frame = pl.read_json(path)
        else:
            raise TrainerError(f"{role} records: {path}: unknown format (use .parquet, .jsonl or a folder)")
    except TrainerError:
        raise
    except Exception as exc:  # polars / pyarrow raise many types for unreadable files
        raise TrainerError(f"{role} records: cannot read {path}: {exc}") from exc
    if frame.height == 0:
        raise TrainerError(f"{role} records: {given} holds no records")
    return frame


#: Split names a hub dataset may use for each records role.
_SPLIT_NAMES = {"train": ("train",), "val": ("val", "validation", "valid", "dev")}


def _read_folder(path: Path, role: str) -> pl.DataFrame:
    """A datasets save_to_disk folder, or the ``role`` split of a folder of parquet/jsonl files."""
    import polars as pl

    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if role not in ds and len(ds) != 1:
                raise TrainerError(f"{role} records: {path} holds splits {list(ds)}, none named {role!r}")
            ds = ds[role] if role in ds else next(iter(ds.values()))
        frame = pl.from_arrow(ds.data.table)
        assert isinstance(frame, pl.DataFrame)
        return frame
    files = sorted(
        p for p in path.rglob("*") if p.suffix in (".parquet", ".jsonl") and not p.name.startswith(".")
    )
    if not files:
        raise TrainerError(
            f"{role} records: {path} is a folder with neither a datasets save_to_disk layout nor "
            ".parquet/.jsonl files"
        )
    # Hub layouts name the split in a folder (train/x.parquet) or a file prefix (data/train-00000-of-00001).
    splits = {p: _split_of(p.relative_to(path)) for p in files}
    names = _SPLIT_NAMES.get(role, (role,))
    chosen = [p for p, split in splits.items() if split in names]
    if not chosen:
        found = sorted({s for s in splits.values() if s})
        if found:
            raise TrainerError(f"{role} records: {path} holds splits {found}, none named {role!r}")
        chosen = files
    frames = [pl.read_parquet(p) if p.suffix == ".parquet" else pl.read_ndjson(p) for p in chosen]
    return pl.concat(frames, how="diagonal_relaxed")


def _split_of(relative: Path) -> str | None:
    known = {name for names in _SPLIT_NAMES.values() for name in names} | {"test"}
    for part in (*relative.parent.parts, relative.stem):
        head = part.split("-", 1)[0].split(".", 1)[0]
        if head in known:
            return head
    return None


#: Columns each trainable format reads (TRL's dataset formats, standard or conversational).
_FORMAT_COLUMNS = {"prompt": ("prompt", "completion"), "messages": ("messages",), "text": ("text",)}

_PROMPT_ONLY = (
    "prompt-only records (TRL's format for online methods) have no completion to learn; add a "
    "'completion' column, or name the column 'text' to train on the whole text"
)


#: The protocol column value, and the literal text opening, of records written the way GenUP wrote its
#: SFT data: a literal Llama-2 chat text that carries its own ``<s>`` and ``</s>``.
GENUP_PROTOCOL = "genup"
GENUP_OPENING = "<s>"


def _format_columns(fmt: str, text_column: str) -> tuple[str, ...]:
    return (text_column,) if fmt == "text" else _FORMAT_COLUMNS[fmt]


def _genup_frame(frame: pl.DataFrame) -> bool:
    """Whether any record was written under GenUP's protocol (its text is the literal training text)."""
    import polars as pl

    protocol = frame.schema.get("protocol")
    if protocol == pl.String and bool((frame["protocol"] == GENUP_PROTOCOL).any()):
        return True
    if "prompt" in frame.columns and frame.schema["prompt"] == pl.String:
        return bool(frame["prompt"].str.starts_with(GENUP_OPENING).any())
    return False


def resolve_format(
    frame: pl.DataFrame, fmt: str, tokenizer: Any, *, path: str | Path, role: str, text_column: str = "text"
) -> str:
    """The format records are trained in: ``prompt`` (prompt + completion, strings or message lists),
    ``messages`` (a conversation, loss on assistant replies) or ``text`` (language modelling)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    columns = frame.columns
    if fmt == "auto":
        # GenUP trained on its literal text, never on a chat template's rendering of the messages
        # its records may also carry.
        prefer_messages = has_template and not _genup_frame(frame)
        if "messages" in columns and prefer_messages:
            fmt = "messages"
        elif "prompt" in columns and "completion" in columns:
            fmt = "prompt"
        elif "messages" in columns:
            fmt = "messages"
        elif text_column in columns:
            fmt = "text"
        elif "prompt" in columns:
            raise TrainerError(f"{role} records {path}: {_PROMPT_ONLY} (columns: {columns})")
        else:
            raise TrainerError(
                f"{role} records {path}: no known record format (columns: {columns}); expected "
                f"'prompt' + 'completion', 'messages' or {text_column!r} (strings or lists of {{role, content}} "
                "messages)"
            )
    need = _format_columns(fmt, text_column)
    missing = [c for c in need if c not in columns]
    if missing:
        hint = f"; {_PROMPT_ONLY}" if fmt == "prompt" and "prompt" in columns else ""
        raise TrainerError(
            f"{role} records {path}: missing column(s) {missing} needed by format {fmt!r} "
            f"(columns: {columns}){hint}"
        )
    if fmt == "messages" and not has_template:
        raise TrainerError("format 'messages' needs a chat template, and the tokenizer of the model has none")
    return fmt


def _render(tokenizer: Any, messages: list[dict[str, str]], *, generation: bool) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    return str(text)


def chat_segments(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[tuple[str, bool]]:
    """Split a rendered conversation into (text, trainable) pieces; assistant replies are trainable.

    Each assistant reply is the difference between the conversation rendered through that reply and
    the conversation before it rendered with the generation prompt, so the trained tokens are exactly
    what the model is asked to produce at inference time.
    """
    msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(msgs):
        if message["role"] != "assistant":
            continue
        prefix = _render_prefix(tokenizer, msgs[:i])
        through = _render(tokenizer, msgs[: i + 1], generation=False)
        if not prefix.startswith(done) or not through.startswith(prefix):
            raise ValueError("the chat template does not render conversations prefix-consistently")
        segments.append((prefix[len(done) :], False))
        segments.append((through[len(prefix) :], True))
        done = through
    rest = _render(tokenizer, msgs, generation=False)
    if rest.startswith(done) and len(rest) > len(done):
        segments.append((rest[len(done) :], False))
    return [(text, trainable) for text, trainable in segments if text]


def _render_prefix(tokenizer: Any, msgs: list[dict[str, str]]) -> str:
    if msgs:
        return _render(tokenizer, msgs, generation=True)
    try:  # a conversation that opens with the assistant: some templates cannot render no messages
        return _render(tokenizer, [], generation=True)
    except Exception:
        return ""


def _encode(tokenizer: Any, text: str, *, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def wants_bos(tokenizer: Any, text: str, add_bos: str) -> bool:
    """Whether the tokenizer's own BOS goes before ``text``.

    ``auto`` leaves it out when the text already opens with the tokenizer's BOS token: GenUP's records
    carry a literal ``<s>`` and its trainer switched the tokenizer's BOS off, so a Llama-2 model saw one
    BOS. For Llama 3 that ``<s>`` is plain text, not ``<|begin_of_text|>``, and GenUP's switch had no
    effect there (its fast tokenizer has no ``add_bos_token``): the real BOS stays, as here.
    """
    if add_bos == "auto":
        bos = getattr(tokenizer, "bos_token", None)
        return not (bos and text.startswith(bos))
    return add_bos == "always"


def _encode_after(tokenizer: Any, text: str, boundary: int, *, special: bool) -> tuple[list[int], list[int]]:
    """Token ids of the whole ``text`` and labels that keep the tokens starting at character ``boundary``
    or later: one tokenisation of the whole text, as GenUP's trainer fed it (encoding the two parts
    apart gives other ids at the seam with sentencepiece)."""
    try:
        enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    except NotImplementedError:  # slow tokenizers have no offsets: the prompt's own ids mark the seam
        ids = _encode(tokenizer, text, special=special)
        head = _encode(tokenizer, text[:boundary], special=special)
        if ids[: len(head)] != head:
            raise ValueError("the text does not tokenize with the prompt's tokens first") from None
        return ids, [IGNORE_INDEX] * len(head) + ids[len(head) :]
    ids = list(enc["input_ids"])
    # Added special tokens have empty spans (0, 0): never targets.
    labels = [
        tok if start >= boundary and end > start else IGNORE_INDEX
        for tok, (start, end) in zip(ids, enc["offset_mapping"], strict=True)
    ]
    return ids, labels


def _is_genup(protocol: Any, text: Any) -> bool:
    return protocol == GENUP_PROTOCOL or (isinstance(text, str) and text.startswith(GENUP_OPENING))


def tokenize_records(
    frame: pl.DataFrame,
    tokenizer: Any,
    *,
    fmt: str,
    max_length: int,
    truncation: bool,
    path: str | Path,
    role: str = "train",
    add_bos: str = "auto",
    train_eos: bool = True,
    text_column: str = "text",
    response_template: str = "",
    loss_on_prompt: bool = False,
    tokenize_joined: bool = False,
) -> TokenizedSet:
    """Token ids and labels for every record; labels are ``-100`` outside completion/assistant text,
    or nowhere with ``loss_on_prompt`` (alpaca-lora's ``train_on_inputs=True``).

    Records written under GenUP's protocol (a ``protocol`` column saying ``genup``, or a text opening with
    a literal ``<s>``) are fed as GenUP fed them: the whole text tokenised in one pass, with the BOS
    ``add_bos`` decides and no EOS added (the text carries its own ``</s>``).
    """
    fmt = resolve_format(frame, fmt, tokenizer, path=path, role=role, text_column=text_column)
    ids_col = frame["record_id"].cast(str).to_list() if "record_id" in frame.columns else None
    protocols = frame["protocol"].to_list() if "protocol" in frame.columns else [None] * frame.height
    eos = tokenizer.eos_token_id
    examples: list[Example] = []
    n_truncated = 0
    for row_no, row in enumerate(frame.select(_format_columns(fmt, text_column)).iter_rows(named=True)):
        rid = ids_col[row_no] if ids_col is not None else f"row {row_no}"
        where = _Where(role=role, path=path, rid=rid, row=row_no, columns=frame.columns)
        if fmt == "prompt":
            genup = _is_genup(protocols[row_no], row["prompt"])
            ids, labels = _prompt_completion(
                tokenizer,
                row["prompt"],
                row["completion"],
                where,
                add_bos=add_bos,
                genup=genup,
                joined=tokenize_joined,
            )
        elif fmt == "messages":
            ids, labels = _conversation(tokenizer, row["messages"], where)
        else:
            text = row[text_column]
            genup = _is_genup(protocols[row_no], text)
            ids, labels = _text(
                tokenizer,
                text,
                where,
                add_bos=add_bos,
                genup=genup,
                template=response_template,
                column=text_column,
            )
        if loss_on_prompt:
            # alpaca-lora's tokenize(): labels are a copy of the input ids; the collator masks padding.
            labels = list(ids)
        if not train_eos and eos is not None:
            labels = [IGNORE_INDEX if label == eos else label for label in labels]
        if all(label == IGNORE_INDEX for label in labels):
            raise TrainerError(
                f"{role} records {path}: record {rid!r} has nothing to train on "
                f"({'no assistant message' if fmt == 'messages' else 'empty completion'})"
            )
        if len(ids) > max_length:
            if not truncation:
                raise TrainerError(
                    f"{role} records {path}: record {rid!r} has {len(ids)} tokens, more than "
                    f"max_length={max_length} (raise max_length or set truncation = true)"
                )
            ids, labels = _truncate(ids, labels, max_length)
            n_truncated += 1
        examples.append(Example(input_ids=tuple(ids), labels=tuple(labels)))
    if n_truncated:
        logger.warning(
            "%s records %s: %d of %d records cut to max_length=%d",
            role,
            path,
            n_truncated,
            len(examples),
            max_length,
        )
    return TokenizedSet(examples=examples, n_records=len(examples), n_truncated=n_truncated, format=fmt)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Where:
    """Names a record in error messages."""

    role: str
    path: str | Path
    rid: str
    row: int
    columns: list[str]

    def error(self, problem: str) -> TrainerError:
        return TrainerError(
            f"{self.role} records {self.path}: record {self.rid!r} (row {self.row}): {problem}"
        )

    def shape_error(self, problem: str) -> TrainerError:
        return self.error(f"{problem} (columns: {self.columns})")


def _messages(value: Any, column: str, where: _Where) -> list[dict[str, str]]:
    """A list of {role, content} messages with string fields, or a one-line error naming the record."""
    expected = "a list of {role, content} messages"
    if column != "messages":
        expected = "a string or " + expected
    bad = where.shape_error(f"{column!r} must be {expected}, got {_shape(value)}")
    if not isinstance(value, list | tuple):
        raise bad
    out = []
    for m in value:
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise bad
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _shape(value: Any) -> str:
    if isinstance(value, list | tuple):
        inner = sorted(
            {
                type(v).__name__ if not isinstance(v, dict) else "{" + ", ".join(map(str, v)) + "}"
                for v in value
            }
        )
        return f"a list of {' / '.join(inner) or 'nothing'}"
    return type(value).__name__


def _prompt_completion(
    tokenizer: Any,
    prompt: Any,
    completion: Any,
    where: _Where,
    *,
    add_bos: str = "auto",
    genup: bool = False,
    joined: bool = False,
) -> tuple[list[int], list[int]]:
    if prompt is None or completion is None:
        raise TrainerError(
            f"{where.role} records {where.path}: record {where.rid!r} has a null prompt or completion"
        )
    if isinstance(prompt, str) and isinstance(completion, str):
        special = wants_bos(tokenizer, prompt, add_bos)
        if genup:
            # GenUP's trainer read prompt and completion as one text and trained what follows the
            # prompt's closing "[/INST]", which is where the completion starts.
            try:
                return _encode_after(tokenizer, prompt + completion, len(prompt), special=special)
            except ValueError as exc:
                raise where.error(str(exc)) from None
        eos = tokenizer.eos_token_id
        if joined:
            # alpaca-lora read prompt + output as one string: after an Alpaca prompt's closing "\n" a
            # LLaMA answer "Yes" is the bare "Yes" token (the id TALLRec scores), where a separately
            # encoded completion would start with the word-initial "▁Yes".
            try:
                ids, labels = _encode_after(tokenizer, prompt + completion, len(prompt), special=special)
            except ValueError as exc:
                raise where.error(str(exc)) from None
            if eos is not None and ids[-1] != eos:
                ids.append(eos)
                labels.append(eos)
            return ids, labels
        p_ids = _encode(tokenizer, prompt, special=special)
        c_ids = _encode(tokenizer, completion, special=False)
        if eos is not None and (not c_ids or c_ids[-1] != eos):
            c_ids.append(eos)
        return p_ids + c_ids, [IGNORE_INDEX] * len(p_ids) + c_ids
    if isinstance(prompt, str) or isinstance(completion, str):
        raise where.shape_error(
            f"prompt and completion must both be strings or both be message lists, got "
            f"{_shape(prompt)} and {_shape(completion)}"
        )
    p_msgs = _messages(prompt, "prompt", where)
    c_msgs = _messages(completion, "completion", where)
    if not getattr(tokenizer, "chat_template", None):
        raise where.error(
            "conversational prompt/completion needs a chat template, and the tokenizer of the model has none"
        )
    if not c_msgs:
        raise TrainerError(
            f"{where.role} records {where.path}: record {where.rid!r} has nothing to train on (empty completion)"
        )
    # The completion is what the template adds after the prompt's generation prompt: exactly the
    # tokens the model is asked to write when served the same prompt.
    try:
        prompt_text = _render(tokenizer, p_msgs, generation=True)
        full = _render(tokenizer, p_msgs + c_msgs, generation=False)
    except Exception as exc:  # jinja template errors
        raise where.error(f"the chat template cannot render it: {exc}") from None
    if not full.startswith(prompt_text):
        raise where.error(
            "the chat template's rendering of prompt + completion does not start with the prompt and its "
            "generation prompt (does the completion start with an assistant message?)"
        )
    p_ids = _encode(tokenizer, prompt_text, special=False)
    c_ids = _encode(tokenizer, full[len(prompt_text) :], special=False)
    return p_ids + c_ids, [IGNORE_INDEX] * len(p_ids) + c_ids


def _conversation(tokenizer: Any, messages: Any, where: _Where) -> tuple[list[int], list[int]]:
    if messages is None or (isinstance(messages, list | tuple) and not messages):
        raise TrainerError(f"{where.role} records {where.path}: record {where.rid!r} has no messages")
    msgs = _messages(messages, "messages", where)
    try:
        segments = chat_segments(tokenizer, msgs)
    except ValueError as exc:
        raise TrainerError(f"{where.role} records {where.path}: record {where.rid!r}: {exc}") from exc
    except Exception as exc:  # jinja template errors
        raise where.error(f"the chat template cannot render it: {exc}") from None
    ids: list[int] = []
    labels: list[int] = []
    for text, trainable in segments:
        piece = _encode(tokenizer, text, special=False)
        ids += piece
        labels += piece if trainable else [IGNORE_INDEX] * len(piece)
    return ids, labels


def _text(
    tokenizer: Any,
    text: Any,
    where: _Where,
    *,
    add_bos: str = "auto",
    genup: bool = False,
    template: str = "",
    column: str = "text",
) -> tuple[list[int], list[int]]:
    if not isinstance(text, str):
        raise where.shape_error(f"{column!r} must be a string, got {_shape(text)}")
    if not text:
        raise where.error(f"{column!r} is empty")
    special = wants_bos(tokenizer, text, add_bos)
    boundary = 0
    if template:
        at = text.find(template)
        if at < 0:
            # TRL's collator only warns and trains nothing on such a record; a silent no-op is worse.
            raise where.error(f"response_template {template!r} does not occur in {column!r}")
        boundary = at + len(template)
    try:
        ids, labels = _encode_after(tokenizer, text, boundary, special=special)
    except ValueError as exc:
        raise where.error(str(exc)) from None
    if not template:
        labels = list(ids)
    eos = tokenizer.eos_token_id
    # A GenUP text ends in its own "</s>" (plain text to Llama 3): GenUP's trainer added no EOS.
    if not genup and eos is not None and ids[-1] != eos:
        ids.append(eos)
        labels.append(eos)
    return ids, labels


def _truncate(ids: list[int], labels: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Drop masked (prompt) tokens from the left first, then completion tokens from the right."""
    excess = len(ids) - max_length
    first_trained = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    # Keep at least one context token before the first trained one: the first token of a sequence
    # is never predicted.
    cut = min(excess, max(first_trained - 1, 0))
    ids, labels = ids[cut:], labels[cut:]
    return ids[:max_length], labels[:max_length]


def pack(examples: Sequence[Example], max_length: int) -> list[Example]:
    """Greedy packing in the given order; position ids restart at each record so attention stays inside it."""
    packs: list[Example] = []
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    n = 0

    def flush() -> None:
        nonlocal ids, labels, pos, n
        if ids:
            packs.append(
                Example(input_ids=tuple(ids), labels=tuple(labels), position_ids=tuple(pos), n_records=n)
            )
        ids, labels, pos, n = [], [], [], 0

    for ex in examples:
        if len(ids) + len(ex.input_ids) > max_length:
            flush()
        ids += ex.input_ids
        # The first token of a record is never a target (nothing precedes it inside the record).
        labels += [IGNORE_INDEX, *ex.labels[1:]]
        pos += range(len(ex.input_ids))
        n += 1
    flush()
    return packs


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; packed batches carry position ids instead of an attention mask."""
    import torch

    width = max(len(ex.input_ids) for ex in batch)
    n = len(batch)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    packed = batch[0].position_ids is not None
    if packed:
        position_ids = torch.zeros((n, width), dtype=torch.long)
    else:
        attention_mask = torch.zeros((n, width), dtype=torch.long)
    for i, ex in enumerate(batch):
        k = len(ex.input_ids)
        input_ids[i, :k] = torch.tensor(ex.input_ids)
        labels[i, :k] = torch.tensor(ex.labels)
        if packed:
            assert ex.position_ids is not None
            position_ids[i, :k] = torch.tensor(ex.position_ids)
            # Padding forms its own trailing "record" so that real tokens never attend to it.
            position_ids[i, k:] = torch.arange(width - k)
        else:
            attention_mask[i, :k] = 1
    out = {"input_ids": input_ids, "labels": labels}
    if packed:
        out["position_ids"] = position_ids
    else:
        out["attention_mask"] = attention_mask
    return out
