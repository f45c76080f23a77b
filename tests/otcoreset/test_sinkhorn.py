"""Sinkhorn engine (issue 5): parity with POT and a float64 loop, gathered batches, stability, errors."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
ot = pytest.importorskip("ot")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from genrec_otcoreset import (  # noqa: E402
    OtCoresetError,
    SinkhornBackend,
    SinkhornResult,
    exact_ot,
    sinkhorn,
    sinkhorn_gathered,
)
from genrec_otcoreset._torch_sinkhorn import TorchBackend  # noqa: E402

METHODS = ("scaling", "log")


def _problem(n: int, m: int, seed: int, *, kind: str = "points") -> tuple:
    g = torch.Generator().manual_seed(seed)
    if kind == "points":
        x = torch.rand(n, 3, generator=g, dtype=torch.float64)
        y = torch.rand(m, 3, generator=g, dtype=torch.float64)
        cost = torch.cdist(x, y) ** 2
        cost /= cost.max()
    else:
        cost = torch.rand(n, m, generator=g, dtype=torch.float64)
    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.3
    a /= a.sum()
    b = torch.rand(m, generator=g, dtype=torch.float64) + 0.3
    b /= b.sum()
    return cost, a, b


def _float64_loop(cost, a, b, eps, n_iter, f=None, g=None):
    """Independent reference: textbook log-domain Sinkhorn in float64 (g from f, then f from g)."""
    cost, a, b = cost.double(), a.double(), b.double()
    if g is not None:
        f = eps * (a.log() - torch.logsumexp((g.double()[None, :] - cost) / eps, 1))
    f = torch.zeros(cost.shape[0], dtype=torch.float64) if f is None else f.double()
    for _ in range(n_iter):
        g = eps * (b.log() - torch.logsumexp((f[:, None] - cost) / eps, 0))
        f = eps * (a.log() - torch.logsumexp((g[None, :] - cost) / eps, 1))
    return f, g


_POT_CACHE: dict = {}


def _pot_reference(n, m, eps, kind, n_iter=60):
    key = (n, m, eps, kind, n_iter)
    if key not in _POT_CACHE:
        cost, a, b = _problem(n, m, seed=n + 7 * m, kind=kind)
        plan, log = ot.bregman.sinkhorn_log(a, b, cost, eps, numItermax=n_iter, stopThr=-1.0, log=True, warn=False)
        _POT_CACHE[key] = (cost, a, b, plan, eps * log["log_u"], eps * log["log_v"])
    return _POT_CACHE[key]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("eps", [0.5, 0.05, 0.01])
@pytest.mark.parametrize(("n", "m", "kind"), [(7, 5, "uniform"), (64, 48, "points"), (150, 200, "points")])
def test_matches_pot_sinkhorn_log(n, m, kind, eps, dtype, method):
    cost, a, b, plan, f_ref, g_ref = _pot_reference(n, m, eps, kind)
    res = sinkhorn(
        cost.to(dtype), a.to(dtype), b.to(dtype), eps=eps, max_iter=60, tol=0,
        backend=TorchBackend(method=method), return_plan=True,
    )
    assert res.n_iter == 60
    assert res.f.dtype == dtype and res.f.shape == (n,) and res.g.shape == (m,)
    torch.testing.assert_close(res.f.double(), f_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(res.g.double(), g_ref, rtol=0, atol=1e-5)
    assert abs(float(res.cost) - float((plan * cost).sum())) < 1e-5
    torch.testing.assert_close(res.plan.double(), plan, rtol=0, atol=1e-5)
    # objective: <P,C> + eps KL(P | a b^T), from POT's plan
    kl = float((plan * (plan / (a[:, None] * b[None, :])).log()).sum() - plan.sum() + 1.0)
    assert abs(float(res.objective) - (float((plan * cost).sum()) + eps * kl)) < 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_warm_start_matches_pot_and_float64_loop(method):
    cost, a, b = _problem(40, 30, seed=3)
    eps = 0.05
    f0 = 0.1 * torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, log = ot.bregman.sinkhorn_log(
        a, b, cost, eps, numItermax=25, stopThr=-1.0, log=True, warn=False,
        warmstart=(f0 / eps, torch.zeros(30, dtype=torch.float64)),
    )
    res = sinkhorn(cost, a, b, eps=eps, max_iter=25, tol=0, f0=f0, backend=TorchBackend(method=method))
    torch.testing.assert_close(res.f, eps * log["log_u"], rtol=0, atol=1e-10)
    # g0 alone: f starts as its exact update from g0
    g0 = 0.1 * torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    res = sinkhorn(cost, a, b, eps=eps, max_iter=25, tol=0, g0=g0, backend=TorchBackend(method=method))
    f_ref, g_ref = _float64_loop(cost, a, b, eps, 25, g=g0)
    torch.testing.assert_close(res.f, f_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(res.g, g_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_tolerance_stops_with_small_marginal_error(method, dtype):
    cost, a, b = _problem(80, 60, seed=5)
    res = sinkhorn(cost.to(dtype), a.to(dtype), b.to(dtype), eps=0.05, tol=1e-5, backend=TorchBackend(method=method))
    assert 0 < res.n_iter < 1000
    assert float(res.marginal_error) < 1e-5
    # the stopped potentials equal the float64 loop run for the same number of iterations
    f_ref, g_ref = _float64_loop(cost, a, b, 0.05, res.n_iter)
    torch.testing.assert_close(res.f.double(), f_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(res.g.double(), g_ref, rtol=0, atol=1e-5)
    # a converged warm start stops at once
    again = sinkhorn(cost.to(dtype), a.to(dtype), b.to(dtype), eps=0.05, tol=1e-4, g0=res.g,
                     backend=TorchBackend(method=method))
    assert again.n_iter == 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_gathered_equals_separate_solves(method, dtype):
    g = torch.Generator().manual_seed(11)
    cost = torch.rand(120, 50, generator=g, dtype=torch.float64).to(dtype)
    rows = torch.stack([torch.randperm(120, generator=g)[:20] for _ in range(6)])
    b = torch.rand(50, generator=g, dtype=torch.float64) + 0.5
    b = (b / b.sum()).to(dtype)
    backend = TorchBackend(method=method)
    res = sinkhorn_gathered(cost, rows, b, eps=0.05, max_iter=40, tol=0, backend=backend)
    assert res.f.shape == (6, 20) and res.g.shape == (6, 50) and res.cost.shape == (6,)
    for i in range(6):
        one = sinkhorn(cost[rows[i]], None, b, eps=0.05, max_iter=40, tol=0, backend=backend)
        torch.testing.assert_close(res.f[i], one.f)
        torch.testing.assert_close(res.g[i], one.g)
        torch.testing.assert_close(res.cost[i], one.cost)
        f_ref, _ = _float64_loop(cost[rows[i]], torch.full((20,), 1 / 20, dtype=torch.float64), b, 0.05, 40)
        torch.testing.assert_close(res.f[i].double(), f_ref, rtol=0, atol=1e-5)


def test_gathered_warm_start_and_tolerance():
    cost, _, b = _problem(90, 40, seed=8)
    rows = torch.randint(0, 90, (4, 15), generator=torch.Generator().manual_seed(0))
    first = sinkhorn_gathered(cost, rows, b, eps=0.1, tol=1e-8)
    assert float(first.marginal_error.max()) < 1e-8
    # shared g0 (m,) and per-problem g0 (B, m) both accepted; warm start from the solution stops at once
    again = sinkhorn_gathered(cost, rows, b, eps=0.1, tol=1e-6, g0=first.g)
    assert again.n_iter == 0
    shared = sinkhorn_gathered(cost, rows, b, eps=0.1, max_iter=10, tol=0, g0=first.g[0])
    for i in range(4):
        one = sinkhorn(cost[rows[i]], None, b, eps=0.1, max_iter=10, tol=0, g0=first.g[0])
        torch.testing.assert_close(shared.f[i], one.f)
    plans = sinkhorn_gathered(cost, rows, b, eps=0.1, tol=1e-8, return_plan=True).plan
    assert plans.shape == (4, 15, 40)
    torch.testing.assert_close(plans.sum(1), b.expand(4, 40), rtol=0, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("seed", [0, 1])
def test_eps_scaling_to_1e3_is_within_one_percent_of_emd(seed, dtype):
    cost, a, b = _problem(60, 80, seed=seed)
    exact = float(ot.emd2(a, b, cost))
    res = sinkhorn(cost.to(dtype), a.to(dtype), b.to(dtype), eps=1e-3, eps_schedule="geometric", tol=1e-5,
                   max_iter=5000)
    assert float(res.marginal_error) < 1e-5
    assert abs(float(res.cost) - exact) < 0.01 * exact
    # an explicit schedule gives the same answer
    explicit = sinkhorn(cost, a, b, eps=1e-3, eps_schedule=[0.1, 0.03, 0.01, 0.003], tol=1e-5, max_iter=5000)
    assert abs(float(explicit.cost) - exact) < 0.01 * exact


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "cost",
    [
        torch.zeros(30, 20),
        torch.ones(30, 20),
        torch.randint(0, 3, (30, 20), generator=torch.Generator().manual_seed(0)).float() / 2,
        torch.cat([torch.zeros(15, 20), torch.full((15, 20), 1e3)]).double(),
    ],
    ids=["zeros", "constant", "ties", "huge-range"],
)
@pytest.mark.parametrize("eps", [1.0, 1e-2, 1e-4])
def test_no_nan_or_inf_with_ties_zeros_and_tiny_eps(cost, eps, method):
    res = sinkhorn(cost, eps=eps, max_iter=300, tol=1e-6, backend=TorchBackend(method=method))
    for t in (res.f, res.g, res.cost, res.objective, res.marginal_error):
        assert bool(torch.isfinite(t).all())
    # float32 potentials carry ~1e-7 * max|C| absolute error, i.e. ~1e-7 * max|C| / eps relative in P
    floor = 50 * torch.finfo(cost.dtype).eps * max(1.0, float(cost.max())) / eps
    assert float(res.marginal_error) < max(1e-4, floor)
    f_ref, g_ref = _float64_loop(cost, torch.full((30,), 1 / 30), torch.full((20,), 1 / 20), eps, res.n_iter)
    assert float((res.f.double() - f_ref).abs().max()) < 1e-4 * max(1.0, float(cost.max()))
    assert float((res.g.double() - g_ref).abs().max()) < 1e-4 * max(1.0, float(cost.max()))


def test_point_clouds_match_the_cost_matrix(monkeypatch):
    g = torch.Generator().manual_seed(4)
    x = torch.rand(50, 4, generator=g, dtype=torch.float64)
    y = torch.rand(70, 4, generator=g, dtype=torch.float64)
    for metric, cost in (("sqeuclidean", ot.dist(x, y)), ("euclidean", ot.dist(x, y, metric="euclidean"))):
        ref = sinkhorn(cost, eps=0.05, max_iter=50, tol=0)
        res = sinkhorn(x=x, y=y, metric=metric, eps=0.05, max_iter=50, tol=0)
        torch.testing.assert_close(res.f, ref.f)
        # force the on-the-fly path (cost recomputed chunk by chunk, never stored)
        import genrec_otcoreset._sinkhorn as mod

        monkeypatch.setattr(mod, "_MATERIALISE_BYTES", 0)
        fly = sinkhorn(x=x, y=y, metric=metric, eps=0.05, max_iter=50, tol=0, return_plan=True,
                       backend=TorchBackend(chunk_bytes=4096))
        monkeypatch.undo()
        torch.testing.assert_close(fly.f, ref.f)
        torch.testing.assert_close(fly.cost, ref.cost)
        assert fly.plan.shape == (50, 70)


def test_small_chunks_do_not_change_the_log_path():
    cost, a, b = _problem(33, 17, seed=9)
    big = sinkhorn(cost, a, b, eps=0.05, max_iter=30, tol=0, backend=TorchBackend(method="log"))
    small = sinkhorn(cost, a, b, eps=0.05, max_iter=30, tol=0, backend=TorchBackend(method="log", chunk_bytes=100))
    torch.testing.assert_close(big.f, small.f)
    torch.testing.assert_close(big.cost, small.cost)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 12),
    m=st.integers(1, 12),
    eps=st.floats(1e-3, 2.0),
    seed=st.integers(0, 2**16),
)
def test_scaling_and_log_paths_agree(n, m, eps, seed):
    cost, a, b = _problem(n, m, seed=seed, kind="uniform")
    s = sinkhorn(cost, a, b, eps=eps, max_iter=20, tol=0, backend=TorchBackend(method="scaling"))
    lg = sinkhorn(cost, a, b, eps=eps, max_iter=20, tol=0, backend=TorchBackend(method="log"))
    f_ref, g_ref = _float64_loop(cost, a, b, eps, 20)
    torch.testing.assert_close(s.f, f_ref, rtol=0, atol=1e-9)
    torch.testing.assert_close(lg.f, f_ref, rtol=0, atol=1e-9)
    torch.testing.assert_close(s.g, g_ref, rtol=0, atol=1e-9)


def test_exact_ot_matches_pot_and_duals_are_feasible():
    cost, a, b = _problem(40, 55, seed=2)
    res = exact_ot(cost, a, b, return_plan=True)
    assert res.converged
    assert abs(res.cost - float(ot.emd2(a, b, cost))) < 1e-12
    assert float((res.f[:, None] + res.g[None, :] - cost).max()) < 1e-9
    assert abs(float(a @ res.f + b @ res.g) - res.cost) < 1e-9
    torch.testing.assert_close(res.plan.sum(1), a)
    # zero-mass points are fine for the exact solver
    a0 = a.clone()
    a0[:5] = 0
    a0 /= a0.sum()
    assert abs(exact_ot(cost, a0, b).cost - float(ot.emd2(a0, b, cost))) < 1e-12
    # float32 input and uniform marginals
    res32 = exact_ot(cost.float())
    assert abs(res32.cost - float(ot.emd2(torch.full((40,), 1 / 40), torch.full((55,), 1 / 55), cost.float()))) < 1e-6


class _Recording:
    """A user backend: satisfies the protocol by delegation, no subclassing."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.inner = TorchBackend()

    def solve(self, cost, a, b, *, eps, max_iter, tol, f0=None, g0=None) -> SinkhornResult:
        self.calls.append("solve")
        return self.inner.solve(cost, a, b, eps=eps, max_iter=max_iter, tol=tol, f0=f0, g0=g0)

    def solve_gathered(self, cost, rows, a, b, *, eps, max_iter, tol, f0=None, g0=None) -> SinkhornResult:
        self.calls.append("gathered")
        return self.inner.solve_gathered(cost, rows, a, b, eps=eps, max_iter=max_iter, tol=tol, f0=f0, g0=g0)


def test_user_backend_plugs_in():
    rec = _Recording()
    assert isinstance(rec, SinkhornBackend)
    assert isinstance(TorchBackend(), SinkhornBackend)
    cost, _, _ = _problem(10, 8, seed=1)
    sinkhorn(cost, eps=0.1, backend=rec)
    sinkhorn_gathered(cost, [[0, 1, 2]], eps=0.1, backend=rec)
    assert rec.calls == ["solve", "gathered"]
    assert sinkhorn(cost, eps=0.1).backend == "torch"  # auto on CPU tensors


def test_numpy_inputs_are_accepted():
    cost, a, b = _problem(10, 8, seed=1)
    res = sinkhorn(cost.numpy(), a.numpy(), b.numpy(), eps=0.1, max_iter=20, tol=0)
    ref = sinkhorn(cost, a, b, eps=0.1, max_iter=20, tol=0)
    torch.testing.assert_close(res.f, ref.f)


_C = torch.rand(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sinkhorn(torch.tensor([[0.0, math.nan], [1.0, 2.0]]), eps=0.1), "cost contains 1 non-finite"),
        (lambda: sinkhorn(torch.tensor([[0.0, math.inf], [1.0, 2.0]]), eps=0.1), "non-finite"),
        (lambda: sinkhorn(_C, -torch.ones(6) / 6, eps=0.1), "a must be non-negative"),
        (lambda: sinkhorn(_C, None, torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0]), eps=0.1), "b has 3 zero entries"),
        (lambda: sinkhorn(_C, torch.ones(6) / 6, torch.ones(5) / 4, eps=0.1), "equal mass"),
        (lambda: sinkhorn(_C, torch.ones(5) / 5, eps=0.1), r"a must have shape \(6,\)"),
        (lambda: sinkhorn(_C[0], eps=0.1), "2-D"),
        (lambda: sinkhorn(_C, eps=0.0), "eps must be a finite number > 0"),
        (lambda: sinkhorn(_C, eps=-1.0), "eps must be"),
        (lambda: sinkhorn(_C, eps=math.nan), "eps must be"),
        (lambda: sinkhorn(_C, eps=0.1, max_iter=0), "max_iter"),
        (lambda: sinkhorn(_C, eps=0.1, tol=-1.0), "tol"),
        (lambda: sinkhorn(_C, eps=0.1, backend="cuda"), "backend must be"),
        (lambda: sinkhorn(_C, eps=0.1, f0=torch.zeros(3)), "f0 must have shape"),
        (lambda: sinkhorn(_C, eps=0.1, eps_schedule="linear"), "eps_schedule"),
        (lambda: sinkhorn(_C, eps=0.1, eps_schedule=[0.5, -1.0]), "eps_schedule entry"),
        (lambda: sinkhorn(eps=0.1), "cost is required"),
        (lambda: sinkhorn(_C, x=_C, y=_C, eps=0.1), "not both"),
        (lambda: sinkhorn(x=_C, eps=0.1), "needs both x and y"),
        (lambda: sinkhorn(x=_C, y=_C[:, :3], eps=0.1), "same dimension"),
        (lambda: sinkhorn(x=_C, y=_C, metric="cosine", eps=0.1), "metric"),
        (lambda: sinkhorn_gathered(_C, [[0, 6]], eps=0.1), "rows out of range: index 6"),
        (lambda: sinkhorn_gathered(_C, [[-1, 2]], eps=0.1), "rows out of range: index -1"),
        (lambda: sinkhorn_gathered(_C, torch.zeros(2, 2), eps=0.1), "integer indices"),
        (lambda: sinkhorn_gathered(_C, [[0, 1]], torch.ones(4) / 4, eps=0.1), r"b must have shape \(5,\)"),
        (lambda: sinkhorn_gathered(_C, [[0, 1]], eps=0.1, g0=torch.zeros(3, 5)), "g0 must have shape"),
        (lambda: exact_ot(_C, torch.ones(6), torch.ones(5)), "equal mass"),
        (lambda: exact_ot(_C, torch.zeros(6), torch.zeros(5)), "positive total mass"),
        (lambda: exact_ot("cost"), "must be a torch.Tensor or a numpy array"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(call, message):
    with pytest.raises(OtCoresetError, match=message) as info:
        call()
    assert isinstance(info.value, ValueError)


def test_importing_the_solver_modules_does_not_import_torch():
    code = (
        "import sys, genrec_otcoreset._sinkhorn, genrec_otcoreset._exact, genrec_otcoreset._validate;"
        "bad = [m for m in ('torch', 'triton', 'ot') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
