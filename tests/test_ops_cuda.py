"""The CUDA backend: the source compiles with nvcc (no GPU needed); kernels checked when a GPU is present."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lvseg.ops import MSDeformAttn, build, ms_deform_attn

from test_ops_cpu import CASES, forward_backward, make_inputs


def _nvcc_available() -> bool:
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    return bool(home) and (shutil.which("nvcc") is not None or (Path(home) / "bin" / "nvcc").exists())


@pytest.mark.skipif(torch.version.cuda is None, reason="torch is built without CUDA headers")
@pytest.mark.skipif(not _nvcc_available(), reason="nvcc is not installed")
def test_cuda_source_compiles(tmp_path):
    """Compile only (no linking, no GPU): catches API breaks such as the official kernel's `.type()`."""
    obj = build.compile_cuda_object(tmp_path, arch="80")
    assert obj.is_file() and obj.stat().st_size > 10_000


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _to_cuda(inputs):
    return [t.cuda() for t in inputs]


@pytest.fixture(scope="module")
def cuda_ext():
    module = build.load_extension("cuda")
    assert module is not None, "the CUDA extension failed to build on a machine with a GPU"
    return module


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"N{c[0]}-L{len(c[1])}-M{c[3]}-D{c[4]}-P{c[5]}")
def test_cuda_matches_reference(cuda_ext, case):
    inputs = _to_cuda(make_inputs(*case))
    ref = forward_backward("reference", *inputs)
    got = forward_backward("cuda", *inputs)
    for r, c in zip(ref, got):
        scale = max(1.0, r.abs().max().item())
        assert (r - c).abs().max().item() <= 1e-5 * scale


@pytest.mark.gpu
@gpu
def test_cuda_gradcheck_float64(cuda_ext):
    value, shapes, starts, loc, attn = _to_cuda(make_inputs(2, [(4, 5), (2, 3)], 3, 2, 3, 2, dtype=torch.float64))
    loc = (loc * 0.9 + 0.013).requires_grad_()
    value.requires_grad_()
    attn.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, sl, aw: ms_deform_attn(v, shapes, starts, sl, aw, backend="cuda"), (value, loc, attn)
    )


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_cuda_reduced_precision(cuda_ext, dtype, tol):
    inputs = [t.to(dtype) if t.is_floating_point() else t for t in _to_cuda(make_inputs(2, [(10, 13), (5, 7)], 15, 4, 32, 4))]
    ref = forward_backward("cuda", *[t.float() if t.is_floating_point() else t for t in inputs])
    low = forward_backward("cuda", *inputs)
    for r, c in zip(ref, low):
        assert c.dtype == dtype
        assert (r - c.float()).abs().max().item() <= tol * max(1.0, r.abs().max().item())


@pytest.mark.gpu
@gpu
def test_cuda_deterministic_backward(cuda_ext, monkeypatch):
    inputs = _to_cuda(make_inputs(3, [(20, 30), (10, 15)], 500, 4, 32, 4))
    atomic = forward_backward("cuda", *inputs)
    monkeypatch.setenv("LVSEG_MSDA_DETERMINISTIC", "1")
    first = forward_backward("cuda", *inputs)
    second = forward_backward("cuda", *inputs)
    for a, b, c in zip(first, second, atomic):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@gpu
def test_cuda_any_batch_size(cuda_ext):
    # the official kernel asserts batch % im2col_step == 0 (e.g. 70 frames fail); ours takes any batch
    inputs = _to_cuda(make_inputs(70, [(6, 7), (3, 4)], 9, 2, 8, 2))
    ref = forward_backward("reference", *inputs)
    got = forward_backward("cuda", *inputs)
    for r, c in zip(ref, got):
        assert (r - c).abs().max().item() <= 1e-5 * max(1.0, r.abs().max().item())


@pytest.mark.gpu
@gpu
def test_cuda_module(cuda_ext):
    torch.manual_seed(0)
    layer = MSDeformAttn(64, n_levels=2, n_heads=4, n_points=3).cuda()
    shapes = torch.tensor([[6, 8], [3, 4]], device="cuda")
    starts = torch.tensor([0, 48], device="cuda")
    x = torch.randn(3, 60, 64, device="cuda")
    q = torch.randn(3, 10, 64, device="cuda")
    ref_pts = torch.rand(3, 10, 2, 4, device="cuda")
    layer.backend = None
    out = layer(q, ref_pts, x, shapes, starts)
    layer.backend = "reference"
    torch.testing.assert_close(out, layer(q, ref_pts, x, shapes, starts), atol=1e-5, rtol=1e-5)
