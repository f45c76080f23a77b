"""ITRA (genrec_otcoreset.select) against the faithful published GORACS procedure (``_published.py``).

Both run in this process on the same problem: cost, greedy initialisation, swap refinement with the
same number of candidates and the same swap cap; the ratio is baseline wall time / ours, and both final
selections are scored with the exact solver under one cost matrix (ours), so ``poo_ours <=
poo_baseline`` compares like with like.

``GENREC_BENCH_SIZE=quick`` (default): the issue's shape at a third of its scale (4,500 x 1,500,
budget 300), where the published procedure takes about 80 s on 2 cores; at 2,000 x 600 our fixed costs
(greedy, screening) weighed so much that the ratio (15-22x) said little about the full size. ``full``:
the issue's 15,000 x 5,000, budget 1,000, 100 swaps (the published procedure alone takes about 18
minutes there on an idle 2-core Xeon: a 4.6-minute greedy, then about 1,000 from-scratch EMDs), plus
a 140,000 x 5,000 memory check.
"""

from __future__ import annotations

import importlib.util
import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from genrec_otcoreset import select
from genrec_otcoreset._cost import build_cost, exact_poo

SIZE = os.environ.get("GENREC_BENCH_SIZE", "quick")
if SIZE not in ("quick", "full"):
    raise ValueError(f"GENREC_BENCH_SIZE must be quick or full, got {SIZE!r}")
TARGET = 20.0
# (train, validation, budget, swaps) per size; quick keeps the shape (budget = val / 5).
RANDOM_SIZE = {"quick": (4500, 1500, 300, 15), "full": (15000, 5000, 1000, 100)}[SIZE]
REAL_SIZE = {"quick": (1500, 500, 100, 12), "full": (15000, 5000, 1000, 100)}[SIZE]
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
# Both sides run single-threaded: on an oversubscribed 2-core box, torch's second intra-op thread turns
# every small op into a wait (a greedy of 120 picks went from 0.25 s to 15 s); POT's network simplex,
# the bulk of both procedures, is single-threaded anyway.
THREADS = int(os.environ.get("GENREC_BENCH_THREADS", "1"))
# GENREC_BENCH_BASELINE_LIMIT_S: stop the published procedure after this many seconds (it can run for
# hours at full size). Its time is then a lower bound of what it needs, so the ratio is a lower bound
# too, and its POO is the one it had reached; both are recorded as such (``baseline_stopped``).
BASELINE_LIMIT_S = float(os.environ["GENREC_BENCH_BASELINE_LIMIT_S"]) if os.environ.get("GENREC_BENCH_BASELINE_LIMIT_S") else None


def _published():
    spec = importlib.util.spec_from_file_location("otcoreset_published", Path(__file__).with_name("_published.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _random_problem(n: int, m: int, seed: int = 0):
    """A 64-d Gaussian mixture (30 clusters) with log-normal gradient norms."""
    rng = np.random.default_rng(seed)
    d, k = 64, 30
    centres = rng.normal(size=(k, d)) * 1.5
    x = (centres[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)
    y = (centres[rng.integers(0, k, m)] + rng.normal(size=(m, d))).astype(np.float32)
    return x, rng.lognormal(size=n).astype(np.float32), y


def _compare(benchmark, x, g, y, *, budget, swaps, lam, label):
    import torch

    torch.set_num_threads(THREADS)
    pub = _published()
    t0 = time.perf_counter()
    sel_pub, trace_pub, n_emd = pub.published_select(
        x, g, y, budget=budget, lam=lam, max_iters=swaps, cut_num=30, time_limit=BASELINE_LIMIT_S
    )
    base_s = time.perf_counter() - t0
    stopped = BASELINE_LIMIT_S is not None and base_s >= BASELINE_LIMIT_S

    holder = {}

    def ours():
        holder["res"] = select(
            embeddings=x, grad_norms=g, val_embeddings=y, budget=budget, lam=lam, max_swaps=swaps,
            candidates=30, device="cpu",
        )

    benchmark.pedantic(ours, rounds=1, iterations=1, warmup_rounds=0)
    res = holder["res"]
    ours_s = res.seconds
    cost = build_cost(x, g, y, lam=lam)
    poo_pub = exact_poo(cost, sel_pub)
    ratio = base_s / ours_s
    benchmark.extra_info.update(
        {
            "ratio": ratio, "target": TARGET, "baseline": f"published GORACS ITRA ({label})",
            "size": f"{x.shape[0]}x{y.shape[0]} budget {budget} swaps {swaps}", "problem_size": x.shape[0] * y.shape[0],
            "device": "cpu", "threads": THREADS, "baseline_s": base_s, "ours_s": ours_s, "poo_ours": res.poo, "poo_baseline": poo_pub,
            "poo_greedy": res.trace[0], "swaps_ours": res.swaps, "swaps_baseline": len(trace_pub) - 1,
            "exact_solves_ours": res.exact_solves, "exact_solves_baseline": n_emd,
            "baseline_stopped": stopped,
        }
    )
    print(
        f"\n{label}: ours {ours_s:.2f}s POO {res.poo:.6f} ({res.swaps} swaps, {res.exact_solves} EMDs) | "
        f"published {base_s:.2f}s POO {poo_pub:.6f} ({len(trace_pub) - 1} swaps, {n_emd} EMDs"
        f"{', stopped at the time limit' if stopped else ''}) | ratio {ratio:.1f}x{' (lower bound)' if stopped else ''}"
    )
    assert res.poo <= poo_pub + 1e-12, f"final exact POO {res.poo} above the published {poo_pub}"
    assert ratio >= TARGET, f"ratio {ratio:.1f} below target {TARGET}"


def test_itra_vs_published_random(benchmark):
    n, m, budget, swaps = RANDOM_SIZE
    x, g, y = _random_problem(n, m)
    _compare(benchmark, x, g, y, budget=budget, swaps=swaps, lam=0.1, label="random features")


def _games_texts(n: int, m: int) -> tuple[list[str], list[str]]:
    """BIGRec-style SeqRec texts from the Amazon Games slice: history titles -> next title.

    Train records: each user's train sequence with its last item as the target; validation: the
    valid item after the train history. Users taken in file order, one record each.
    """
    import polars as pl

    items = pl.read_parquet(SHARED / "amazon_games" / "items.parquet")
    titles = dict(zip(items["item_id"].to_list(), items["title"].to_list()))
    inter = pl.read_parquet(SHARED / "amazon_games" / "interactions.parquet")

    def text(hist: list[int], target: int) -> str:
        h = ", ".join(f'"{titles.get(i, i)}"' for i in hist[-10:])
        return f"The user has played the following games in order: {h}. Next game: \"{titles.get(target, target)}\""

    train_rows = inter.filter((pl.col("split") == "train") & (pl.col("item_ids").list.len() >= 2)).head(n)
    train = [text(seq[:-1], seq[-1]) for seq in train_rows["item_ids"].to_list()]
    hist = dict(zip(*inter.filter(pl.col("split") == "train").select("user_id", "item_ids").to_dict(as_series=False).values()))
    val_rows = inter.filter(pl.col("split") == "valid").tail(m)
    val = [text(hist.get(u, []), seq[0]) for u, seq in zip(val_rows["user_id"].to_list(), val_rows["item_ids"].to_list())]
    return train, val


def test_itra_vs_published_games(benchmark):
    if not (SHARED / "amazon_games").is_dir():
        pytest.skip(f"real data not available: {SHARED / 'amazon_games'} does not exist")
    pytest.importorskip("sentence_transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from genrec_otcoreset._features import resolve_encoder

    n, m, budget, swaps = REAL_SIZE
    train, val = _games_texts(n, m)
    enc = SentenceTransformer(resolve_encoder(None), device="cpu")
    x = enc.encode(train, batch_size=64, convert_to_numpy=True).astype(np.float32)
    y = enc.encode(val, batch_size=64, convert_to_numpy=True).astype(np.float32)
    # lam = 0 (the release's default): the comparison is about selection on real embeddings; LoRA
    # gradient norms of thousands of records are out of reach of a CPU benchmark.
    g = np.ones(len(train), dtype=np.float32)
    _compare(benchmark, x, g, y, budget=budget, swaps=swaps, lam=0.0, label="Amazon Games SeqRec")


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys, time
    import numpy as np
    from genrec_otcoreset import select
    n, m = int(sys.argv[1]), int(sys.argv[2])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 384)).astype(np.float32)
    y = rng.normal(size=(m, 384)).astype(np.float32)
    g = rng.lognormal(size=n).astype(np.float32)
    torch_threads = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    if torch_threads:
        import torch
        torch.set_num_threads(torch_threads)
    t = time.perf_counter()
    res = select(embeddings=x, grad_norms=g, val_embeddings=y, budget=1000, max_swaps=int(sys.argv[3]), device="cpu")
    print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, res.poo, res.swaps)
    """
)


@pytest.mark.slow
def test_games_scale_memory(benchmark):
    """140,000 x 5,000 (Games scale) end to end in a fresh process; records the peak RSS."""
    if SIZE != "full":
        pytest.skip("the 140,000 x 5,000 memory check runs at GENREC_BENCH_SIZE=full")
    out = {}

    def run():
        proc = subprocess.run(
            [sys.executable, "-c", _MEMORY_SCRIPT, "140000", "5000", "3", str(THREADS)], capture_output=True, text=True, check=True
        )
        out["line"] = proc.stdout.strip().splitlines()[-1]

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    seconds, peak_gib, poo, swaps = (float(v) for v in out["line"].split())
    benchmark.extra_info.update(
        {"size": "140000x5000 budget 1000", "problem_size": 140000 * 5000, "device": "cpu", "peak_rss_gib": peak_gib,
         "seconds": seconds, "poo": poo, "swaps": int(swaps),
         "parent_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    )
    assert peak_gib < 20.0
