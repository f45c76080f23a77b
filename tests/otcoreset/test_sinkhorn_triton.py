"""Triton Sinkhorn kernels (issue 5) under ``TRITON_INTERPRET=1`` on CPU tensors, against a float64 loop.

Triton's own helpers (``tl.max``, ``tl.sum``) are jitted when triton is imported, so the interpreter
must be on before that import: unless this process already runs with ``TRITON_INTERPRET=1``, one
test re-runs this file in a child process that does. Sizes stay small: the interpreter runs every
tile in numpy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
child_only = pytest.mark.skipif(not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 child process")

from genrec_otcoreset import OtCoresetError, sinkhorn, sinkhorn_gathered  # noqa: E402
from genrec_otcoreset._torch_sinkhorn import TorchBackend  # noqa: E402


@pytest.mark.skipif(INTERPRETED, reason="this process is the interpreter run")
def test_kernels_in_an_interpreter_subprocess():
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q", "-p", "no:cacheprovider",
         "-m", "not slow and not gpu"],
        cwd=root, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


def _problem(n, m, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g, dtype=torch.float64)
    y = torch.rand(m, 3, generator=g, dtype=torch.float64)
    cost = torch.cdist(x, y) ** 2
    cost /= cost.max()
    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.3
    b = torch.rand(m, generator=g, dtype=torch.float64) + 0.3
    return cost.to(dtype), (a / a.sum()).to(dtype), (b / b.sum()).to(dtype)


def _float64_loop(cost, a, b, eps, n_iter, f=None, g=None):
    cost, a, b = cost.double(), a.double(), b.double()
    if g is not None:
        f = eps * (a.log() - torch.logsumexp((g.double()[None, :] - cost) / eps, 1))
    f = torch.zeros(cost.shape[0], dtype=torch.float64) if f is None else f.double()
    for _ in range(n_iter):
        g = eps * (b.log() - torch.logsumexp((f[:, None] - cost) / eps, 0))
        f = eps * (a.log() - torch.logsumexp((g[None, :] - cost) / eps, 1))
    return f, g


def _atol(dtype):
    return 1e-5 if dtype == torch.float32 else 1e-10


@child_only
@pytest.mark.parametrize(
    ("n", "m", "eps", "n_iter", "dtype"),
    [
        (7, 5, 0.1, 8, torch.float32),
        (7, 5, 0.1, 8, torch.float64),
        (100, 70, 0.01, 6, torch.float32),
        (100, 70, 0.01, 6, torch.float64),
        (256, 256, 0.05, 3, torch.float32),
    ],
    ids=["7x5-f32", "7x5-f64", "100x70-f32", "100x70-f64", "256x256-f32"],
)
def test_triton_matches_float64_loop(n, m, eps, n_iter, dtype):
    cost, a, b = _problem(n, m, seed=n, dtype=dtype)
    res = sinkhorn(cost, a, b, eps=eps, max_iter=n_iter, tol=0, backend="triton")
    assert res.backend == "triton" and res.n_iter == n_iter and res.f.dtype == dtype
    f_ref, g_ref = _float64_loop(cost, a, b, eps, n_iter)
    torch.testing.assert_close(res.f.double(), f_ref, rtol=0, atol=_atol(dtype))
    torch.testing.assert_close(res.g.double(), g_ref, rtol=0, atol=_atol(dtype))
    plan = torch.exp((f_ref[:, None] + g_ref[None, :] - cost.double()) / eps)
    assert abs(float(res.cost) - float((plan * cost.double()).sum())) < _atol(dtype)
    ref = sinkhorn(cost, a, b, eps=eps, max_iter=n_iter, tol=0, backend=TorchBackend(method="log"))
    assert abs(float(res.objective) - float(ref.objective)) < _atol(dtype)
    assert abs(float(res.marginal_error) - float(ref.marginal_error)) < 10 * _atol(dtype)


@child_only
def test_triton_tall_matrix_uses_split_columns_and_warm_start():
    from genrec_otcoreset._triton_sinkhorn import _Launcher

    cost, a, b = _problem(300, 20, seed=1, dtype=torch.float64)
    assert _Launcher(cost, None, 1, 300, 0.05).n_split > 1  # partial column reductions are merged
    g0 = 0.05 * torch.randn(20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    res = sinkhorn(cost, a, b, eps=0.05, max_iter=4, tol=0, g0=g0, backend="triton")
    f_ref, g_ref = _float64_loop(cost, a, b, 0.05, 4, g=g0)
    torch.testing.assert_close(res.f, f_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(res.g, g_ref, rtol=0, atol=1e-10)


@child_only
def test_triton_tolerance_stops_where_torch_does():
    cost, a, b = _problem(40, 30, seed=2, dtype=torch.float64)
    res = sinkhorn(cost, a, b, eps=0.2, tol=1e-7, backend="triton")
    ref = sinkhorn(cost, a, b, eps=0.2, tol=1e-7, backend="torch")
    assert res.n_iter == ref.n_iter < 1000
    assert float(res.marginal_error) < 1e-7
    torch.testing.assert_close(res.f, ref.f, rtol=0, atol=1e-10)


@child_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_triton_gathered_reads_rows_in_place(dtype):
    g = torch.Generator().manual_seed(5)
    cost = torch.rand(90, 70, generator=g, dtype=torch.float64).to(dtype)
    rows = torch.randint(0, 90, (3, 37), generator=g)  # duplicates allowed
    b = torch.rand(70, generator=g, dtype=torch.float64) + 0.5
    b = (b / b.sum()).to(dtype)
    f0 = 0.01 * torch.randn(3, 37, generator=g, dtype=torch.float64).to(dtype)
    res = sinkhorn_gathered(cost, rows, b, eps=0.05, max_iter=5, tol=0, f0=f0, backend="triton")
    assert res.f.shape == (3, 37) and res.g.shape == (3, 70) and res.cost.shape == (3,)
    for i in range(3):
        a = torch.full((37,), 1 / 37, dtype=torch.float64)
        f_ref, g_ref = _float64_loop(cost[rows[i]], a, b, 0.05, 5, f=f0[i])
        torch.testing.assert_close(res.f[i].double(), f_ref, rtol=0, atol=_atol(dtype))
        torch.testing.assert_close(res.g[i].double(), g_ref, rtol=0, atol=_atol(dtype))
    ref = sinkhorn_gathered(cost, rows, b, eps=0.05, max_iter=5, tol=0, f0=f0, backend="torch")
    torch.testing.assert_close(res.cost, ref.cost, rtol=0, atol=_atol(dtype))


@pytest.mark.skipif(INTERPRETED, reason="needs the compiler mode")
def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(OtCoresetError, match="needs CUDA tensors"):
        sinkhorn(torch.rand(4, 3), eps=0.1, backend="triton")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_triton_on_cuda_matches_torch(dtype):
    cost, a, b = _problem(2048, 1500, seed=0, dtype=dtype)
    cost, a, b = cost.cuda(), a.cuda(), b.cuda()
    res = sinkhorn(cost, a, b, eps=0.01, max_iter=50, tol=0)  # auto -> triton on CUDA
    assert res.backend == "triton"
    ref = sinkhorn(cost.cpu().double(), a.cpu().double(), b.cpu().double(), eps=0.01, max_iter=50, tol=0,
                   backend="torch")
    torch.testing.assert_close(res.f.cpu().double(), ref.f, rtol=0, atol=_atol(dtype))
    rows = torch.randint(0, 2048, (16, 300), device="cuda")
    gat = sinkhorn_gathered(cost, rows, b, eps=0.05, max_iter=20, tol=0)
    sep = sinkhorn_gathered(cost, rows, b, eps=0.05, max_iter=20, tol=0, backend="torch")
    torch.testing.assert_close(gat.f, sep.f, rtol=0, atol=_atol(dtype))
