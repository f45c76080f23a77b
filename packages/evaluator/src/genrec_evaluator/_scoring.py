"""Scoring continuations with a causal LM: one forward pass over the shared context, whose KV cache is
then read by every candidate; the candidates' tokens are packed as a prefix trie into one sequence with
a tree-shaped attention mask, so ranking 1,000 POI ids costs one prompt plus about one token per distinct
id prefix (~1,100 tokens for ids 0..999 with digit tokens), not 1,000 prompts. Imports torch lazily.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from genrec_evaluator._errors import EvaluatorError
from genrec_evaluator._protocols import Query

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class GenerationParams:
    """Sampling parameters of generate mode. The defaults are genrec's own (not GenUP's: those are
    :func:`genrec_evaluator.genup_generation_settings`); the seed comes with each call."""

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


# The completion prefix's last word with the whitespace before it ("…POI id" -> " id"): tokenizers
# start a new piece there, so what a candidate tokenizes to does not depend on the text before it.
_LAST_WORD = re.compile(r"\s*\S*\Z")
_MAX_PROBES = 32


@dataclass(frozen=True, slots=True)
class _Chunk:
    """One forward pass of the candidate trie (see :meth:`HFScorer._score_trie`), with everything that
    does not depend on the record: it only needs the context length added to ``depth``."""

    tokens: Any  # (1, n) token ids fed, one per trie node
    depth: Any  # (n,) node depth below the context
    ancestors: Any  # (n, n) bool, node -> the nodes it may attend to
    rows: Any  # picked (node, token) pairs and the candidate each one adds to
    cols: Any
    owners: np.ndarray


@dataclass(frozen=True, slots=True)
class _Plan:
    """The candidates of one completion prefix's last word, tokenized once and packed as a trie."""

    anchor_shared: list[int]  # tokens of anchor + candidate before the candidates differ
    suffixes: list[list[int]]
    first: np.ndarray  # each suffix's first token, read from the context's last logits
    chunks: list[_Chunk]
    probes: list[int]  # candidates re-tokenized with each record's full prefix to check the reuse


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
        reuse_candidates: bool = True,
        cache_size: int = 8,
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
        # Every record of a run ranks the same candidate strings: tokenizing them and building their
        # trie is done once per (last word of the prefix, candidates), in memory, a few entries at most.
        self.reuse_candidates = reuse_candidates
        self._plans: OrderedDict[tuple[str, tuple[str, ...]], _Plan] = OrderedDict()
        self._cache_size = max(cache_size, 1)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    # -- tokenization -----------------------------------------------------------------------------
    def _encode(self, text: str, *, special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _head(self, query: Query) -> list[int]:
        """Token ids of the prompt side, exactly as genrec-trainer builds them."""
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        use_chat = query.conversational or self.fmt == "messages" or (
            self.fmt == "auto" and query.messages is not None and has_template
        )
        if not use_chat:
            return self._encode(query.prompt, special=True)
        if not has_template:
            raise EvaluatorError(
                "a conversational record (prompt as {role, content} messages) needs a chat template, "
                "and the tokenizer of the model has none"
            )
        messages = [dict(m) for m in (query.messages or ({"role": "user", "content": query.prompt},))]
        if messages and messages[-1].get("role") == "assistant":
            messages = messages[:-1]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self._encode(str(text), special=False)

    def _tails(self, prefix: str, continuations: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        """(tokens shared by every ``prefix + c``, each one's own tokens): every candidate keeps at
        least one token of its own to score."""
        tails = self.tokenizer([prefix + c for c in continuations], add_special_tokens=False)["input_ids"]
        common = min(_common_prefix_len(tails), min(len(t) for t in tails) - 1)
        if common < 0:
            raise EvaluatorError("a candidate continuation tokenizes to nothing")
        return list(tails[0][:common]), [list(t[common:]) for t in tails]

    def _plan(self, anchor: str, continuations: Sequence[str]) -> _Plan:
        key = (anchor, tuple(continuations))
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            return plan
        shared, suffixes = self._tails(anchor, continuations)
        # Probe every distinct first token (where a boundary effect would show), the longest suffix and
        # both ends of the list.
        probes: dict[int, int] = {}
        for i, s in enumerate(suffixes):
            probes.setdefault(s[0], i)
        picked = sorted({0, len(suffixes) - 1, max(range(len(suffixes)), key=lambda i: len(suffixes[i])),
                         *list(probes.values())[:_MAX_PROBES]})
        plan = _Plan(
            anchor_shared=shared,
            suffixes=suffixes,
            first=np.asarray([s[0] for s in suffixes], dtype=np.int64),
            chunks=self._chunks(suffixes),
            probes=picked,
        )
        self._plans[key] = plan
        while len(self._plans) > self._cache_size:
            self._plans.popitem(last=False)
        return plan

    def _reused(self, query: Query, continuations: Sequence[str]) -> tuple[list[int], _Plan] | None:
        """(shared context ids, plan) from the cached plan of the prefix's last word, when this record's
        own tokenization of the probe candidates agrees with it; else ``None`` (tokenize in full)."""
        prefix = query.completion_prefix
        anchor = prefix[_LAST_WORD.search(prefix).start() :]  # type: ignore[union-attr]
        plan = self._plan(anchor, continuations)
        full = self.tokenizer([prefix + continuations[i] for i in plan.probes], add_special_tokens=False)[
            "input_ids"
        ]
        n_shared = len(full[0]) - len(plan.suffixes[plan.probes[0]])
        if n_shared < 0:
            return None
        shared = list(full[0][:n_shared])
        for i, ids in zip(plan.probes, full):
            if list(ids[:n_shared]) != shared or list(ids[n_shared:]) != plan.suffixes[i]:
                log.debug("candidate tokens depend on the prefix %r; tokenizing them per record", prefix)
                return None
        return shared, plan

    def token_sequences(self, query: Query, continuations: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        """(shared context ids, per-candidate suffix ids); context + suffix is each candidate's full text."""
        shared, plan = self._sequences(query, continuations)
        return shared, plan.suffixes

    def _sequences(self, query: Query, continuations: Sequence[str]) -> tuple[list[int], _Plan]:
        if not continuations:
            raise EvaluatorError("no candidates to score")
        head = self._head(query)
        reused = self._reused(query, continuations) if self.reuse_candidates else None
        if reused is not None:
            tail, plan = reused
        else:
            tail, suffixes = self._tails(query.completion_prefix, continuations)
            plan = _Plan(anchor_shared=tail, suffixes=suffixes, first=np.asarray([s[0] for s in suffixes]),
                         chunks=self._chunks(suffixes), probes=[])
        shared = head + tail
        if not shared:
            raise EvaluatorError("empty context: the prompt and completion prefix tokenize to nothing")
        return shared, plan

    # -- ranked scoring ---------------------------------------------------------------------------
    def score(self, query: Query, continuations: Sequence[str]) -> np.ndarray:
        """Log-likelihood of each continuation: one pass over the shared context, then the candidates'
        tokens packed as a prefix trie into one sequence that reads the context's KV cache."""
        import torch

        shared, plan = self._sequences(query, continuations)
        device = self.device
        with torch.inference_mode():
            # Only the last position's logits are read: skip the LM head over the rest of the context.
            extra = {"logits_to_keep": 1} if self._last_logits_only else {}
            out = self.model(input_ids=torch.tensor([shared], device=device), use_cache=True, **extra)
            first = torch.log_softmax(_wide(out.logits[0, -1]), dim=-1).double().cpu().numpy()
            kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        scores = first[plan.first].astype(np.float64)
        for chunk in plan.chunks:
            self._score_trie(chunk, kv, len(shared), scores)
        return scores

    def _chunks(self, suffixes: list[list[int]]) -> list[_Chunk]:
        """The candidates' trie cut into passes of at most ``max_nodes`` nodes."""
        if any(len(s) == 0 for s in suffixes):
            raise EvaluatorError("a candidate continuation tokenizes to nothing")
        # Candidates in token order so that those sharing prefixes share trie nodes (and chunks).
        order = sorted(range(len(suffixes)), key=lambda i: suffixes[i])
        chunks: list[_Chunk] = []
        group: list[int] = []
        nodes: dict[tuple[int, ...], int] = {}
        for i in order:
            new = [tuple(suffixes[i][:j]) for j in range(1, len(suffixes[i])) if tuple(suffixes[i][:j]) not in nodes]
            if group and len(nodes) + len(new) > self.max_nodes:
                chunks += self._chunk(group, suffixes, nodes)
                group, nodes = [], {}
                new = [tuple(suffixes[i][:j]) for j in range(1, len(suffixes[i]))]
            for key in new:
                nodes[key] = len(nodes)
            group.append(i)
        if group:
            chunks += self._chunk(group, suffixes, nodes)
        return chunks

    def _chunk(self, group: list[int], suffixes: list[list[int]], nodes: dict[tuple[int, ...], int]) -> list[_Chunk]:
        """Node ``k`` of the trie is the proper prefix ``key`` of some suffix; it is fed the token
        ``key[-1]`` at depth ``len(key) - 1`` below the context and attends to the whole context and to
        its own ancestors only, so its logits are exactly those of a separate forward pass over
        context + key. No chunk when every suffix is a single token (the context's logits said it all).
        """
        import torch

        if not nodes:
            return []
        device = self.device
        n = len(nodes)
        keys = list(nodes)  # insertion order: a parent always comes before its children
        ancestors = np.zeros((n, n), dtype=bool)
        for idx, key in enumerate(keys):
            if len(key) > 1:
                ancestors[idx] = ancestors[nodes[key[:-1]]]
            ancestors[idx, idx] = True
        rows, cols, owners = [], [], []
        for i in group:
            s = suffixes[i]
            for j in range(1, len(s)):
                rows.append(nodes[tuple(s[:j])])
                cols.append(s[j])
                owners.append(i)
        if not rows:
            return []
        return [
            _Chunk(
                tokens=torch.tensor([[k[-1] for k in keys]], device=device),
                depth=torch.tensor([len(k) - 1 for k in keys], device=device),
                ancestors=torch.from_numpy(ancestors).to(device),
                rows=torch.tensor(rows, device=device),
                cols=torch.tensor(cols, device=device),
                owners=np.asarray(owners),
            )
        ]

    def _score_trie(self, chunk: _Chunk, kv: list[tuple[Any, Any]], n_context: int, scores: np.ndarray) -> None:
        """Add to ``scores`` the log-probabilities of the suffix tokens after the first that ``chunk``
        reads (a 4-D additive mask: every node sees the context and its own ancestors)."""
        import torch
        from transformers import DynamicCache

        n = chunk.tokens.shape[1]
        dtype = kv[0][0].dtype
        mask = torch.zeros(1, 1, n, n_context + n, dtype=dtype, device=chunk.tokens.device)
        mask[0, 0, :, n_context:].masked_fill_(~chunk.ancestors, torch.finfo(dtype).min)
        # A fresh cache around the same context tensors (the update appends to a copy, never in place).
        past = DynamicCache([(k, v) for k, v in kv])
        with torch.inference_mode():
            logits = self.model(
                input_ids=chunk.tokens,
                position_ids=(chunk.depth + n_context).unsqueeze(0),
                attention_mask=mask,
                past_key_values=past,
                use_cache=True,
            ).logits[0]
            logp = torch.log_softmax(_wide(logits), dim=-1)
            picked = logp[chunk.rows, chunk.cols].double().cpu().numpy()
        np.add.at(scores, chunk.owners, picked)

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

    def genup_input_ids(self, text: str) -> list[int]:
        """``text`` tokenized in one piece as GenUP's ``eval_next_poi.py`` does: its ``llama_prompt``
        starts with ``<s>``, and GenUP switches the tokenizer's own BOS off where it has one to switch
        (Llama-2), so a text that starts with the tokenizer's BOS gets no second one; any other text
        (Llama-3, whose BOS is ``<|begin_of_text|>``) gets the tokenizer's usual special tokens."""
        bos = getattr(self.tokenizer, "bos_token", None)
        return self._encode(text, special=not (bos and text.startswith(bos)))

    def generate_genup(self, text: str, *, seed: int) -> str:
        """GenUP's generation: sample after ``text`` (the prompt up to ``"POI id "``) with
        :class:`GenerationParams` (always sampling, every penalty passed as given), stopping at the
        tokenizer's EOS, which also pads; the new tokens decoded without special tokens. GenUP sets no
        seed; we seed each call so that runs repeat."""
        import torch

        p = self.generation
        ids = self.genup_input_ids(text)
        inputs = torch.tensor([ids], device=self.device)
        eos = self.tokenizer.eos_token_id
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=inputs, attention_mask=torch.ones_like(inputs), do_sample=True, use_cache=True,
                max_new_tokens=p.max_new_tokens, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
                typical_p=p.typical_p, repetition_penalty=p.repetition_penalty, eos_token_id=eos,
                pad_token_id=eos, num_return_sequences=1,
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
