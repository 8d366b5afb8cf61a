"""The compiled CPU backend of ms_deform_attn against the pure-PyTorch reference.

The extension is built once (about 30 s on 2 cores) into the user cache and reused by later runs.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from lvseg.ops import MSDeformAttn, build, ms_deform_attn, select_backend


@pytest.fixture(scope="module")
def ext():
    with warnings.catch_warnings():
        warnings.simplefilter("error", build.MSDABuildWarning)  # a failed build fails these tests loudly
        module = build.load_extension("cpu")
    assert module is not None
    return module


def make_inputs(n, shapes, lq, m, d, p, dtype=torch.float32, seed=0, loc_range=(-0.1, 1.1)):
    """Random inputs; attention weights are softmax-normalised as in the models."""
    g = torch.Generator().manual_seed(seed)
    shapes_t = torch.tensor(shapes, dtype=torch.int64)
    areas = shapes_t[:, 0] * shapes_t[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    n_levels = len(shapes)
    value = torch.randn(n, int(areas.sum()), m, d, generator=g, dtype=torch.float64)
    lo, hi = loc_range
    loc = torch.rand(n, lq, m, n_levels, p, 2, generator=g, dtype=torch.float64) * (hi - lo) + lo
    attn = torch.randn(n, lq, m, n_levels * p, generator=g, dtype=torch.float64).softmax(-1)
    attn = attn.view(n, lq, m, n_levels, p)
    return value.to(dtype), shapes_t, starts, loc.to(dtype), attn.to(dtype)


def forward_backward(backend, value, shapes, starts, loc, attn, grad_out=None):
    value, loc, attn = (t.detach().clone().requires_grad_() for t in (value, loc, attn))
    out = ms_deform_attn(value, shapes, starts, loc, attn, backend=backend)
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), value.grad, loc.grad, attn.grad


def assert_parity(inputs, atol=1e-5):
    """Forward and all three gradients of cpu vs reference (fp32): max abs diff <= atol, relative to the
    gradient's magnitude for the location gradients (they scale with the map size)."""
    ref = forward_backward("reference", *inputs)
    cpu = forward_backward("cpu", *inputs)
    for name, r, c in zip(("output", "grad_value", "grad_loc", "grad_attn"), ref, cpu):
        assert r.shape == c.shape and r.dtype == c.dtype, name
        scale = max(1.0, r.abs().max().item())
        diff = (r - c).abs().max().item()
        assert diff <= atol * scale, f"{name}: max abs diff {diff} > {atol} * {scale}"


CASES = [
    # (N, level shapes, Lq, M, D, P)
    (1, [(1, 1)], 3, 1, 4, 1),
    (2, [(3, 5)], 7, 2, 33, 2),
    (1, [(37, 61)], 20, 8, 32, 4),
    (3, [(6, 9), (3, 5)], 11, 4, 4, 3),
    (6, [(5, 7), (1, 1), (3, 5)], 5, 3, 32, 2),
    (2, [(37, 61), (19, 31), (10, 16), (5, 8)], 17, 8, 33, 4),
    (4, [(2, 2), (1, 1), (3, 5), (4, 3)], 9, 5, 32, 1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"N{c[0]}-L{len(c[1])}-M{c[3]}-D{c[4]}-P{c[5]}")
def test_cpu_matches_reference(ext, case):
    assert_parity(make_inputs(*case))


def test_cpu_matches_reference_on_borders_and_outside(ext):
    value, shapes, starts, loc, attn = make_inputs(2, [(3, 5), (6, 7), (1, 1)], 40, 2, 32, 4)
    # points exactly on the map borders and corners (0 and 1), on pixel centres, and far outside [0, 1]
    special = torch.tensor([0.0, 1.0, 0.5, -0.25, 1.25, -3.0, 4.0, 1.0 / 3.0, 0.1, 0.9])
    g = torch.Generator().manual_seed(3)
    loc = special[torch.randint(0, len(special), loc.shape, generator=g)]
    assert_parity((value, shapes, starts, loc, attn))
    # a point fully outside every level reads zeros, and gets zero gradients
    far = torch.full_like(loc, 5.0)
    out, gv, gl, ga = forward_backward("cpu", value, shapes, starts, far, attn)
    assert torch.count_nonzero(out) == 0 and torch.count_nonzero(gv) == 0
    assert torch.count_nonzero(gl) == 0 and torch.count_nonzero(ga) == 0


def test_cpu_isa_variants_agree(ext):
    inputs = make_inputs(2, [(9, 11), (5, 6)], 13, 4, 33, 3)
    best = ext.best_isa()
    variants = ["default"] + (["avx2"] if best == "avx2" else [])
    results = {}
    try:
        for isa in variants:
            ext.set_isa(isa)
            assert ext.isa() == isa
            results[isa] = forward_backward("cpu", *inputs)
    finally:
        ext.set_isa("auto")
    assert ext.isa() == best
    for isa, res in results.items():
        for a, b in zip(res, results["default"]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=isa)
    with pytest.raises(RuntimeError, match="unknown ISA"):
        ext.set_isa("sse9")


def test_cpu_gradcheck_float64(ext):
    value, shapes, starts, loc, attn = make_inputs(2, [(4, 5), (2, 3)], 3, 2, 3, 2, dtype=torch.float64)
    # keep points away from the pixel-grid kinks where bilinear sampling is not differentiable
    loc = (loc * 0.9 + 0.013).requires_grad_()
    value.requires_grad_()
    attn.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, sl, aw: ms_deform_attn(v, shapes, starts, sl, aw, backend="cpu"), (value, loc, attn)
    )


def test_cpu_float64_matches_reference_tightly(ext):
    inputs = make_inputs(2, [(37, 61), (3, 5)], 9, 3, 4, 4, dtype=torch.float64)
    ref = forward_backward("reference", *inputs)
    cpu = forward_backward("cpu", *inputs)
    for r, c in zip(ref, cpu):
        torch.testing.assert_close(c, r, atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_cpu_reduced_precision_inputs(ext, dtype, tol):
    inputs32 = make_inputs(2, [(10, 13), (5, 7)], 15, 4, 32, 4)
    inputs = [t.to(dtype) if t.is_floating_point() else t for t in inputs32]
    # the fp32 result on the same (rounded) inputs: what is left is the kernel's own error
    ref = forward_backward("cpu", *[t.float() if t.is_floating_point() else t for t in inputs])
    low = forward_backward("cpu", *inputs)
    for name, r, c in zip(("output", "grad_value", "grad_loc", "grad_attn"), ref, low):
        assert c.dtype == dtype, name
        scale = max(1.0, r.abs().max().item())
        diff = (r - c.float()).abs().max().item()
        # fp32 accumulation: only the final rounding to the dtype (eps / 2 relative) remains
        assert diff <= tol * scale, f"{name}: {diff} > {tol} * {scale}"
    # mixed: reduced-precision values with float32 locations/weights (as under autocast) keep the locations'
    # precision: close to the all-fp32 result
    mixed = forward_backward("cpu", inputs[0], inputs32[1], inputs32[2], inputs32[3], inputs32[4])
    exact = forward_backward("cpu", inputs[0].float(), *inputs32[1:])
    assert mixed[0].dtype == dtype and mixed[2].dtype == torch.float32
    assert (mixed[0].float() - exact[0]).abs().max().item() <= tol * max(1.0, exact[0].abs().max().item())
    torch.testing.assert_close(mixed[2], exact[2], atol=tol * max(1.0, exact[2].abs().max().item()), rtol=0)


def test_cpu_value_grad_not_requested(ext):
    value, shapes, starts, loc, attn = make_inputs(2, [(5, 6)], 4, 2, 8, 2)
    loc.requires_grad_()
    out = ms_deform_attn(value, shapes, starts, loc, attn, backend="cpu")
    out.sum().backward()
    assert value.grad is None and loc.grad is not None
    ref_loc = loc.detach().clone().requires_grad_()
    ms_deform_attn(value, shapes, starts, ref_loc, attn, backend="reference").sum().backward()
    torch.testing.assert_close(loc.grad, ref_loc.grad, atol=1e-4, rtol=1e-5)


def test_cpu_backward_is_deterministic_and_thread_count_independent(ext):
    inputs = make_inputs(1, [(16, 20), (8, 10)], 300, 1, 32, 4)  # one (n, m) pair: query chunking kicks in
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = forward_backward("cpu", *inputs)
        torch.set_num_threads(max(2, threads))
        parallel = forward_backward("cpu", *inputs)
        again = forward_backward("cpu", *inputs)
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(serial, parallel, again):
        assert torch.equal(b, c)  # run to run: bit identical
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_module_cpu_backend_matches_reference(ext):
    torch.manual_seed(0)
    layer = MSDeformAttn(64, n_levels=2, n_heads=4, n_points=3)
    shapes = torch.tensor([[6, 8], [3, 4]])
    starts = torch.tensor([0, 48])
    x = torch.randn(3, 60, 64)
    q = torch.randn(3, 10, 64)
    ref_pts = torch.rand(3, 10, 2, 2)
    mask = torch.zeros(3, 60, dtype=torch.bool)
    mask[2, 40:48] = True
    assert select_backend("cpu") == "cpu"
    outs = {}
    for backend in ("reference", "cpu"):
        layer.backend = backend
        layer.zero_grad()
        out = layer(q, ref_pts, x, shapes, starts, mask)
        out.square().mean().backward()
        outs[backend] = (out.detach(), [p.grad.clone() for p in layer.parameters()])
    torch.testing.assert_close(outs["cpu"][0], outs["reference"][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(outs["cpu"][1], outs["reference"][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_empty_queries(ext):
    value, shapes, starts, loc, attn = make_inputs(2, [(3, 4)], 0, 2, 8, 2)
    out = ms_deform_attn(value, shapes, starts, loc, attn, backend="cpu")
    assert out.shape == (2, 0, 16)


def test_build_is_cached(ext):
    info = build.build_info("cpu")
    assert info.marker.is_file() and info.library.is_file()
    assert info.directory.parent == build.cache_root()
    # a new process imports the cached library without compiling (fast, and says so)
    code = (
        "import time, torch; from lvseg.ops import build; t = time.perf_counter(); "
        "m = build.load_extension('cpu'); assert m is not None; print(round(time.perf_counter() - t, 2))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.strip().splitlines()[-1]) < 5.0
    assert "MSDABuildWarning" not in proc.stderr


def test_build_cli_reports(ext):
    proc = subprocess.run(
        [sys.executable, "-m", "lvseg.ops.build", "--kind", "cpu"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[ OK ] cpu" in proc.stdout and build.build_info("cpu").name in proc.stdout
