"""Scoring continuations with a causal LM: one forward pass over the shared context, whose KV cache is
then read by every candidate; the candidates' tokens are packed as a prefix trie into one sequence with
a tree-shaped attention mask, so ranking 1,000 POI ids costs one prompt plus about one token per distinct
id prefix (~1,100 tokens for ids 0..999 with digit tokens), not 1,000 prompts. Imports torch lazily.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from genrec_evaluator._errors import EvaluatorError
from genrec_evaluator._protocols import Query

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class GenerationParams:
    """GenUP's sampling parameters, plus a seed so that runs repeat."""

    temperature: float = field(default=0.6, metadata={"help": "sampling temperature (0 = greedy)"})
    top_k: int = field(default=50, metadata={"help": "top-k sampling"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling"})
    typical_p: float = field(default=1.0, metadata={"help": "typical sampling"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "repetition penalty"})
    max_new_tokens: int = field(default=8, metadata={"help": "tokens to generate after 'POI id'"})


def _wide(x: Any) -> Any:
    """Half-precision logits in float32 for the softmax; float32/float64 as they are."""
    import torch

    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n


class HFScorer:
    """:class:`~genrec_evaluator.Scorer` over a transformers causal LM and its tokenizer.

    ``fmt`` follows genrec-trainer: ``prompt`` tokenizes the prompt with special tokens and the
    completion without; ``messages`` renders the chat template with the generation prompt;
    ``auto`` picks ``messages`` when the tokenizer has a chat template and the query has messages.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        fmt: str = "auto",
        max_nodes: int = 1024,
        generation: GenerationParams | None = None,
    ) -> None:
        if fmt not in {"auto", "prompt", "messages"}:
            raise EvaluatorError(f"format must be auto, prompt or messages, got {fmt!r}")
        from genrec_core.models import takes_logits_to_keep

        self.model = model
        self._last_logits_only = takes_logits_to_keep(model)
        self.tokenizer = tokenizer
        self.fmt = fmt
        if max_nodes < 1:
            raise EvaluatorError(f"max_nodes must be >= 1, got {max_nodes}")
        self.max_nodes = max_nodes
        self.generation = generation or GenerationParams()

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    # -- tokenization -----------------------------------------------------------------------------
    def _encode(self, text: str, *, special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _head(self, query: Query) -> list[int]:
        """Token ids of the prompt side, exactly as genrec-trainer builds them."""
        use_chat = self.fmt == "messages" or (
            self.fmt == "auto" and query.messages is not None and getattr(self.tokenizer, "chat_template", None)
        )
        if not use_chat:
            return self._encode(query.prompt, special=True)
        messages = [dict(m) for m in (query.messages or ({"role": "user", "content": query.prompt},))]
        if messages and messages[-1].get("role") == "assistant":
            messages = messages[:-1]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self._encode(str(text), special=False)

    def token_sequences(self, query: Query, continuations: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        """(shared context ids, per-candidate suffix ids); context + suffix is each candidate's full text."""
        if not continuations:
            raise EvaluatorError("no candidates to score")
        head = self._head(query)
        tails = self.tokenizer([query.completion_prefix + c for c in continuations], add_special_tokens=False)[
            "input_ids"
        ]
        # Every candidate keeps at least one token of its own to score.
        common = min(_common_prefix_len(tails), min(len(t) for t in tails) - 1)
        if common < 0:
            raise EvaluatorError("a candidate continuation tokenizes to nothing")
        shared = head + list(tails[0][:common])
        if not shared:
            raise EvaluatorError("empty context: the prompt and completion prefix tokenize to nothing")
        return shared, [list(t[common:]) for t in tails]

    # -- ranked scoring ---------------------------------------------------------------------------
    def score(self, query: Query, continuations: Sequence[str]) -> np.ndarray:
        """Log-likelihood of each continuation: one pass over the shared context, then the candidates'
        tokens packed as a prefix trie into one sequence that reads the context's KV cache."""
        import torch

        shared, suffixes = self.token_sequences(query, continuations)
        if any(len(s) == 0 for s in suffixes):
            raise EvaluatorError("a candidate continuation tokenizes to nothing")
        device = self.device
        with torch.inference_mode():
            # Only the last position's logits are read: skip the LM head over the rest of the context.
            extra = {"logits_to_keep": 1} if self._last_logits_only else {}
            out = self.model(input_ids=torch.tensor([shared], device=device), use_cache=True, **extra)
            first = torch.log_softmax(_wide(out.logits[0, -1]), dim=-1).double().cpu().numpy()
            kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        scores = first[[s[0] for s in suffixes]].astype(np.float64)
        # Candidates in token order so that those sharing prefixes share trie nodes (and chunks).
        order = sorted(range(len(suffixes)), key=lambda i: suffixes[i])
        group: list[int] = []
        nodes: dict[tuple[int, ...], int] = {}
        for i in order:
            new = [tuple(suffixes[i][:j]) for j in range(1, len(suffixes[i])) if tuple(suffixes[i][:j]) not in nodes]
            if group and len(nodes) + len(new) > self.max_nodes:
                self._score_trie(group, suffixes, nodes, kv, len(shared), scores)
                group, nodes = [], {}
                new = [tuple(suffixes[i][:j]) for j in range(1, len(suffixes[i]))]
            for key in new:
                nodes[key] = len(nodes)
            group.append(i)
        if group:
            self._score_trie(group, suffixes, nodes, kv, len(shared), scores)
        return scores

    def _score_trie(
        self,
        group: list[int],
        suffixes: list[list[int]],
        nodes: dict[tuple[int, ...], int],
        kv: list[tuple[Any, Any]],
        n_context: int,
        scores: np.ndarray,
    ) -> None:
        """Add to ``scores[group]`` the log-probabilities of every suffix token after the first.

        Node ``k`` of the trie is the proper prefix ``key`` of some suffix; it is fed the token
        ``key[-1]`` at position ``n_context + len(key) - 1`` and attends to the whole context and to its
        own ancestors only (a 4-D additive mask), so its logits are exactly those of a separate forward
        pass over context + key.
        """
        import torch
        from transformers import DynamicCache

        if not nodes:
            return  # every suffix is a single token: the context's last logits said it all
        device = self.device
        n = len(nodes)
        keys = list(nodes)  # insertion order: a parent always comes before its children
        tokens = [k[-1] for k in keys]
        depth = [len(k) - 1 for k in keys]
        ancestors = np.zeros((n, n), dtype=bool)
        for idx, key in enumerate(keys):
            if len(key) > 1:
                ancestors[idx] = ancestors[nodes[key[:-1]]]
            ancestors[idx, idx] = True
        dtype = kv[0][0].dtype
        allowed = torch.ones(n, n_context + n, dtype=torch.bool, device=device)
        allowed[:, n_context:] = torch.from_numpy(ancestors).to(device)
        mask = torch.zeros(1, 1, n, n_context + n, dtype=dtype, device=device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        # A fresh cache around the same context tensors (the update appends to a copy, never in place).
        past = DynamicCache([(k, v) for k, v in kv])
        with torch.inference_mode():
            logits = self.model(
                input_ids=torch.tensor([tokens], device=device),
                position_ids=torch.tensor([[n_context + d for d in depth]], device=device),
                attention_mask=mask,
                past_key_values=past,
                use_cache=True,
            ).logits[0]
            rows, cols, owners = [], [], []
            for i in group:
                s = suffixes[i]
                for j in range(1, len(s)):
                    rows.append(nodes[tuple(s[:j])])
                    cols.append(s[j])
                    owners.append(i)
            if not rows:
                return
            logp = torch.log_softmax(_wide(logits), dim=-1)
            picked = logp[torch.tensor(rows, device=device), torch.tensor(cols, device=device)].double().cpu().numpy()
        np.add.at(scores, np.asarray(owners), picked)

    def score_each(self, query: Query, continuations: Sequence[str]) -> np.ndarray:
        """The brute-force reference: one full forward pass per candidate (same token sequences)."""
        import torch

        shared, suffixes = self.token_sequences(query, continuations)
        scores = np.empty(len(suffixes), dtype=np.float64)
        with torch.inference_mode():
            for i, suffix in enumerate(suffixes):
                ids = torch.tensor([shared + suffix], device=self.device)
                logp = torch.log_softmax(_wide(self.model(input_ids=ids).logits[0]), dim=-1)
                n = len(shared)
                positions = torch.arange(n - 1, n - 1 + len(suffix), device=self.device)
                scores[i] = float(logp[positions, torch.tensor(suffix, device=self.device)].double().sum())
        return scores

    # -- generation -------------------------------------------------------------------------------
    def generate(self, query: Query, *, seed: int) -> str:
        """Sample after the completion prefix with :class:`GenerationParams`, seeded."""
        import torch

        p = self.generation
        ids = self._head(query) + self._encode(query.completion_prefix, special=False)
        inputs = torch.tensor([ids], device=self.device)
        sample = p.temperature > 0
        kwargs: dict[str, Any] = {"do_sample": sample, "max_new_tokens": p.max_new_tokens}
        if sample:
            kwargs.update(temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, typical_p=p.typical_p)
        else:
            kwargs.update(temperature=None, top_k=None, top_p=None)
        if p.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = p.repetition_penalty
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=inputs, attention_mask=torch.ones_like(inputs), pad_token_id=pad, **kwargs
            )
        return str(self.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True))

    # -- CTR --------------------------------------------------------------------------------------
    def first_token_ids(self, words: Sequence[str]) -> list[int]:
        """The first token id of each word, looked up from the tokenizer (not hard-coded)."""
        ids = []
        for w in words:
            toks = self._encode(w, special=False)
            if not toks:
                raise EvaluatorError(f"the tokenizer turns {w!r} into no tokens")
            ids.append(toks[0])
        if len(set(ids)) < len(ids):
            raise EvaluatorError(f"words {list(words)} share their first token {ids}; cannot tell them apart")
        return ids

    def next_token_logprobs(self, query: Query, token_ids: Sequence[int]) -> np.ndarray:
        """Log-probabilities of ``token_ids`` as the next token after the completion prefix."""
        import torch

        ids = self._head(query) + self._encode(query.completion_prefix, special=False)
        with torch.inference_mode():
            logits = _wide(self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0, -1])
        logp = torch.log_softmax(logits, dim=-1)
        return logp[torch.tensor(list(token_ids), device=self.device)].double().cpu().numpy()
