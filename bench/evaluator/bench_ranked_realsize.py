"""Ranked next-POI scoring at NYC size: a ~1,000-token prompt and 570 or 5,000 candidate ids, on a tiny
random Llama, against the floor of one causal forward pass over the prompt plus the trie's tokens.

The floor is what any exact method must at least compute: every trie node is one token the model reads
once. The ratio is ours / floor (1.0 is the floor; the extra is tokenizing the candidates, building the
trie and its mask, and the chunked passes at ``max_nodes`` tokens each). ``extra_info`` also splits our
time into tokenizing, the prompt pass, and the trie passes, to show where time goes.

``GENREC_BENCH_SIZE=quick`` (default): 570 candidates. ``full``: 570 and 5,000.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from genrec_evaluator._models import load_model  # noqa: E402
from genrec_evaluator._protocols import Query  # noqa: E402
from genrec_evaluator._scoring import HFScorer  # noqa: E402

SIZE = os.environ.get("GENREC_BENCH_SIZE", "quick")
THREADS = int(os.environ.get("GENREC_BENCH_THREADS", "1"))
CANDIDATES = [570] if SIZE == "quick" else [570, 5000]
CATEGORIES = ["Coffee Shop", "Bar", "Gym", "Subway", "Office", "Park", "Deli / Bodega", "Home (private)"]
# About 1,000 tokens with the tiny model's tokenizer: a GenUP prompt with a history of check-ins.
CHECKINS = "\n".join(
    f"At 2012-12-{10 + i % 18} {8 + i % 12:02d}:{(7 * i) % 60:02d}:00, user 349 visited POI id {(37 * i) % 4981} "
    f"which is a/an {CATEGORIES[i % len(CATEGORIES)]} with category id {i % 200}."
    for i in range(10)
)
PROMPT = (
    "You are user 349 and your trajectory in New York City is as follows:\n"
    f"{CHECKINS}\n"
    "Given the data, at 2012-12-21 08:29:31, which POI id will user 349 visit? "
    "Note that POI id is an integer in the range from 0 to 4981.\n"
)
QUERY = Query(prompt=PROMPT, completion_prefix="At 2012-12-21 08:29:31, user 349 will visit POI id")


def _trie_tokens(suffixes: list[list[int]]) -> int:
    """Tokens the trie feeds the model: every distinct proper prefix of a suffix (the first token of each
    is read from the prompt's last logits)."""
    return len({tuple(s[:j]) for s in suffixes for j in range(1, len(s))})


@pytest.mark.parametrize("n_candidates", CANDIDATES)
def test_ranked_realsize_vs_floor(benchmark, n_candidates: int, tmp_path: Path) -> None:
    from genrec_core.models import build_tiny_model

    torch.set_num_threads(THREADS)
    model, tok = load_model(build_tiny_model(tmp_path / "tiny", hidden=64, max_positions=4096))
    scorer = HFScorer(model, tok, fmt="prompt")
    candidates = [f" {i}." for i in range(n_candidates)]

    start = time.perf_counter()
    shared, suffixes = scorer.token_sequences(QUERY, candidates)
    tokenize_s = time.perf_counter() - start
    n_trie = _trie_tokens(suffixes)
    with torch.inference_mode():
        ids = torch.tensor([shared])
        start = time.perf_counter()
        model(input_ids=ids, use_cache=True)
        prompt_s = time.perf_counter() - start
        floor_ids = torch.randint(0, model.config.vocab_size, (1, len(shared) + n_trie))
        model(input_ids=floor_ids)  # warm-up at this length
        start = time.perf_counter()
        model(input_ids=floor_ids)
        floor_s = time.perf_counter() - start

    benchmark.pedantic(scorer.score, args=(QUERY, candidates), rounds=3, iterations=1, warmup_rounds=1)
    ours_s = benchmark.stats.stats.median
    benchmark.extra_info.update(
        ratio=ours_s / floor_s,
        baseline="floor: one causal forward pass over prompt + trie tokens (no trie bookkeeping, no chunks)",
        floor_s=floor_s,
        tokenize_s=tokenize_s,
        prompt_pass_s=prompt_s,
        trie_and_rest_s=ours_s - tokenize_s - prompt_s,
        prompt_tokens=len(shared),
        trie_tokens=n_trie,
        max_nodes=scorer.max_nodes,
        size=f"{n_candidates} candidates, {len(shared)}-token prompt, tiny-llama",
        problem_size=n_candidates,
        threads=THREADS,
        device="cpu",
    )
