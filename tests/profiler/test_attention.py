"""The compiled decode-attention kernel against a float64 reference and PyTorch's SDPA."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def compiler() -> str | None:
    import os
    import shutil

    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


@pytest.fixture(scope="module")
def attend():
    from genrec_profiler._attention import decode_attention

    kernel = decode_attention()
    if kernel is None:
        # Without a compiler the backend keeps SDPA; with one, a kernel that fails to build or
        # disagrees with its own check is a bug, not a skip.
        assert compiler() is None, "a C compiler is here but the decode attention kernel is unavailable"
        pytest.skip("no C compiler here: the decode attention kernel did not build")
    return kernel


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("head_dim", "kv_heads", "group"), [(64, 3, 3), (64, 2, 4), (64, 1, 7), (128, 2, 2),
                                                               (128, 1, 1), (128, 1, 3), (32, 2, 2), (16, 2, 2), (48, 1, 9), (64, 1, 10)])
def test_kernel_matches_float64_and_sdpa(attend, dtype, head_dim: int, kv_heads: int, group: int) -> None:
    """Random queries against views of a larger cache (room after the filled part, as our cache
    keeps it), each row from its own start: within rounding of a float64 computation, and as close
    to it as SDPA with the equivalent padding mask is."""
    from genrec_profiler._attention import _reference

    gen = torch.Generator().manual_seed(head_dim * 100 + kv_heads * 10 + group)
    rows, length, capacity = 5, 203, 260
    q = (torch.randn(rows, kv_heads * group, 1, head_dim, generator=gen) * 2).to(dtype)
    k = (torch.randn(rows, kv_heads, capacity, head_dim, generator=gen) * 2).to(dtype)[:, :, :length]
    v = torch.randn(rows, kv_heads, capacity, head_dim, generator=gen).to(dtype)[:, :, :length]
    starts = torch.tensor([0, 1, 57, 150, 202])
    scale = head_dim**-0.5
    ours = attend(q, k, v, starts, scale)
    assert ours.shape == (rows, 1, kv_heads * group, head_dim) and ours.dtype == dtype
    ref = _reference(q.double(), k.double(), v.double(), starts, scale)
    mask = (torch.arange(length)[None, :] >= starts[:, None]).view(rows, 1, 1, length)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scale, enable_gqa=True).transpose(1, 2)
    err_ours = float((ours.double() - ref).abs().max())
    err_sdpa = float((sdpa.double() - ref).abs().max())
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert err_ours <= max(tol, 1.5 * err_sdpa), (err_ours, err_sdpa)
    # the last row attends to one position: its value row exactly (up to the output rounding)
    torch.testing.assert_close(ours[4, 0].double(), v[4, :, 202].double().repeat_interleave(group, 0),
                               atol=tol, rtol=tol)


def test_kernel_refuses_what_it_cannot_serve(attend) -> None:
    q = torch.randn(2, 4, 1, 64)
    k = v = torch.randn(2, 2, 9, 64)
    with pytest.raises(ValueError, match="unsupported"):
        attend(q.half(), k.half(), v.half(), torch.zeros(2, dtype=torch.int64), 0.1)
    with pytest.raises(ValueError, match="unsupported"):
        attend(torch.randn(2, 4, 3, 64), k, v, torch.zeros(2, dtype=torch.int64), 0.1)  # a prompt, not a step
    with pytest.raises(ValueError, match="unsupported"):
        attend(torch.randn(2, 3, 1, 64), k, v, torch.zeros(2, dtype=torch.int64), 0.1)  # 3 heads over 2 KV heads
