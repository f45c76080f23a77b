"""Sinkhorn engine benchmarks (issue 5): our backends against POT, baselines timed in the same process.

``GENREC_BENCH_SIZE=quick`` (default; each benchmark well under a minute on 2 CPU cores) or ``full``
(the issue's sizes). Every benchmark records ``ratio`` (baseline time / our time, higher is better),
``baseline``, ``target`` (the minimum ratio the issue asks for), ``size`` and ``device``; memory-bound
ones add ``gbps`` (bytes of cost read per second: two passes per iteration).

Run: ``uv run --no-sync pytest bench/otcoreset -o python_files='bench_*.py' -p no:cacheprovider``.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")
ot = pytest.importorskip("ot")

from genrec_otcoreset import sinkhorn, sinkhorn_gathered  # noqa: E402

SIZE = os.environ.get("GENREC_BENCH_SIZE", "quick")
if SIZE not in ("quick", "full"):
    raise ValueError(f"GENREC_BENCH_SIZE must be 'quick' or 'full', got {SIZE!r}")
FULL = SIZE == "full"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _best(fn: Callable[[], object], rounds: int, sync: bool = False, warmup: bool = True) -> float:
    """Best wall time of ``rounds`` calls (after one warm-up call unless ``warmup=False``)."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(rounds):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def _cpu_name() -> str:
    return f"cpu:{platform.processor() or platform.machine()}:{torch.get_num_threads()}threads"


def _problem(n: int, m: int, device: str = "cpu", dtype=None) -> tuple:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 8, generator=g)
    y = torch.rand(m, 8, generator=g)
    cost = torch.cdist(x, y) ** 2
    cost /= cost.max()
    cost = cost.to(device=device, dtype=dtype or torch.float32).contiguous()
    a = torch.full((n,), 1.0 / n, dtype=cost.dtype, device=device)
    b = torch.full((m,), 1.0 / m, dtype=cost.dtype, device=device)
    return cost, a, b


def _record(benchmark, *, ours: float, base: float, baseline: str, target: float, size: str, device: str,
            bytes_moved: float | None = None) -> None:
    benchmark.extra_info.update(
        ratio=base / ours, baseline=baseline, target=target, size=size, device=device,
        ours_s=ours, baseline_s=base, size_mode=SIZE,
    )
    if bytes_moved is not None:
        benchmark.extra_info["gbps"] = bytes_moved / ours / 1e9


# --- CPU: stored cost, fixed iterations ---------------------------------------------------------

N_CPU = 2048 if FULL else 1024
ITERS = 100
EPS = 0.05


def _ours_cpu(cost, a, b):
    return lambda: sinkhorn(cost, a, b, eps=EPS, max_iter=ITERS, tol=0, backend="torch")


def test_cpu_torch_vs_pot_sinkhorn_log(benchmark):
    cost, a, b = _problem(N_CPU, N_CPU)
    # seconds per call and nothing to warm up: one timed call keeps the quick run short
    base = _best(lambda: ot.bregman.sinkhorn_log(a, b, cost, EPS, numItermax=ITERS, stopThr=0, warn=False),
                 rounds=1, warmup=False)
    benchmark.pedantic(_ours_cpu(cost, a, b), rounds=5, iterations=1, warmup_rounds=1)
    _record(benchmark, ours=benchmark.stats.stats.min, base=base, baseline="ot.bregman.sinkhorn_log (torch, fp32)",
            target=3.0, size=f"{N_CPU}x{N_CPU} fp32, {ITERS} it, eps={EPS}", device=_cpu_name(),
            bytes_moved=8.0 * N_CPU * N_CPU * ITERS)


def test_cpu_torch_vs_pot_sinkhorn_knopp(benchmark):
    cost, a, b = _problem(N_CPU, N_CPU)
    base = _best(lambda: ot.sinkhorn(a, b, cost, EPS, numItermax=ITERS, stopThr=0, warn=False), rounds=5)
    benchmark.pedantic(_ours_cpu(cost, a, b), rounds=5, iterations=1, warmup_rounds=1)
    _record(benchmark, ours=benchmark.stats.stats.min, base=base, baseline="ot.sinkhorn Sinkhorn-Knopp (torch, fp32)",
            target=1.0, size=f"{N_CPU}x{N_CPU} fp32, {ITERS} it, eps={EPS}", device=_cpu_name(),
            bytes_moved=8.0 * N_CPU * N_CPU * ITERS)


# --- CPU: gathered batch ------------------------------------------------------------------------

if FULL:
    G_B, G_K, G_M, G_N = 64, 1000, 5000, 15000
else:
    G_B, G_K, G_M, G_N = 8, 250, 1250, 3750
G_ITERS = 50
# 64 separate POT solves of 1000 x 5000 take tens of minutes here: time a few and scale linearly
# (the calls are independent and identical in size, so the total is count x per-call time).
G_TIMED = min(G_B, 3 if FULL else G_B)


def test_cpu_gathered_vs_separate_pot_sinkhorn_log(benchmark):
    cost, _, b = _problem(G_N, G_M)
    rows = torch.stack([torch.randperm(G_N, generator=torch.Generator().manual_seed(i))[:G_K] for i in range(G_B)])
    a = torch.full((G_K,), 1.0 / G_K)

    def separate():
        for i in range(G_TIMED):
            ot.bregman.sinkhorn_log(a, b, cost[rows[i]], EPS, numItermax=G_ITERS, stopThr=0, warn=False)

    base = _best(separate, rounds=1, warmup=False) * (G_B / G_TIMED)
    benchmark.pedantic(
        lambda: sinkhorn_gathered(cost, rows, b, eps=EPS, max_iter=G_ITERS, tol=0, backend="torch"),
        rounds=3, iterations=1, warmup_rounds=1,
    )
    _record(benchmark, ours=benchmark.stats.stats.min, base=base,
            baseline=f"{G_B} separate ot.bregman.sinkhorn_log (torch, fp32; {G_TIMED} timed, scaled)",
            target=5.0, size=f"B={G_B} of {G_K}x{G_M} from {G_N}x{G_M} fp32, {G_ITERS} it", device=_cpu_name(),
            bytes_moved=8.0 * G_B * G_K * G_M * G_ITERS)


# --- GPU (CUDA): fused Triton kernels against the memory floor and POT -------------------------

N_GPU = 16384 if FULL else 4096


def _copy_bandwidth(nbytes: int) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    t = _best(lambda: dst.copy_(src), rounds=10, sync=True)
    return 2.0 * nbytes / t  # read + write


@pytest.mark.gpu
@cuda
def test_gpu_triton_vs_memory_floor(benchmark):
    cost, a, b = _problem(N_GPU, N_GPU, device="cuda")
    bw = _copy_bandwidth(cost.numel() * 4)
    floor = 8.0 * N_GPU * N_GPU * ITERS / bw

    def ours():
        sinkhorn(cost, a, b, eps=EPS, max_iter=ITERS, tol=0, backend="triton")
        torch.cuda.synchronize()

    benchmark.pedantic(ours, rounds=5, iterations=1, warmup_rounds=1)
    _record(benchmark, ours=benchmark.stats.stats.min, base=floor, baseline="memory floor (8 n m it / copy bandwidth)",
            target=1 / 1.5, size=f"{N_GPU}x{N_GPU} fp32, {ITERS} it", device=torch.cuda.get_device_name(),
            bytes_moved=8.0 * N_GPU * N_GPU * ITERS)
    benchmark.extra_info["copy_gbps"] = bw / 1e9


@pytest.mark.gpu
@cuda
def test_gpu_triton_vs_pot_sinkhorn_log(benchmark):
    cost, a, b = _problem(N_GPU, N_GPU, device="cuda")
    base = _best(lambda: ot.bregman.sinkhorn_log(a, b, cost, EPS, numItermax=ITERS, stopThr=0, warn=False),
                 rounds=2, sync=True)

    def ours():
        sinkhorn(cost, a, b, eps=EPS, max_iter=ITERS, tol=0, backend="triton")
        torch.cuda.synchronize()

    benchmark.pedantic(ours, rounds=5, iterations=1, warmup_rounds=1)
    _record(benchmark, ours=benchmark.stats.stats.min, base=base, baseline="ot.bregman.sinkhorn_log (torch CUDA, fp32)",
            target=5.0, size=f"{N_GPU}x{N_GPU} fp32, {ITERS} it", device=torch.cuda.get_device_name(),
            bytes_moved=8.0 * N_GPU * N_GPU * ITERS)


@pytest.mark.gpu
@cuda
def test_gpu_gathered_vs_separate_pot_sinkhorn_log(benchmark):
    B, k, m, n = (64, 1000, 5000, 15000) if FULL else (16, 500, 2000, 6000)
    cost, _, b = _problem(n, m, device="cuda")
    rows = torch.randint(0, n, (B, k), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    a = torch.full((k,), 1.0 / k, device="cuda")

    def separate():
        for i in range(B):
            ot.bregman.sinkhorn_log(a, b, cost[rows[i]], EPS, numItermax=G_ITERS, stopThr=0, warn=False)

    base = _best(separate, rounds=1, sync=True)

    def ours():
        sinkhorn_gathered(cost, rows, b, eps=EPS, max_iter=G_ITERS, tol=0, backend="triton")
        torch.cuda.synchronize()

    benchmark.pedantic(ours, rounds=3, iterations=1, warmup_rounds=1)
    _record(benchmark, ours=benchmark.stats.stats.min, base=base,
            baseline=f"{B} separate ot.bregman.sinkhorn_log (torch CUDA, fp32)", target=5.0,
            size=f"B={B} of {k}x{m} from {n}x{m} fp32, {G_ITERS} it", device=torch.cuda.get_device_name(),
            bytes_moved=8.0 * B * k * m * G_ITERS)
