"""The pure-PyTorch MSDA backend and the MSDeformAttn layer against golden values from the official code.

Golden numbers were computed with Deformable-DETR's ``ms_deform_attn_core_pytorch`` and ``MSDeformAttn``
(github.com/fundamentalvision/Deformable-DETR @ 11169a60c33333af00a4849f1808023eba96a931, models/ops) on the
seeded inputs built below, torch 2.15 CPU, float32.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from lvseg.errors import ConfigError, InvalidInputError, UnsupportedDtypeError
from lvseg.ops import MSDeformAttn, ms_deform_attn, ms_deform_attn_reference

GOLDEN_CORE_SUM = -11.133394002914429
GOLDEN_CORE_ABS_SUM = 115.88312938064337
GOLDEN_CORE_SLICE = [  # out[0, :3, :6]
    1.108615517616272, 0.3006551265716553, 0.055170558393001556, -0.5735116600990295, -0.6537215709686279,
    0.6423260569572449, -0.15199528634548187, 0.586270809173584, -2.405036687850952, -0.5425938367843628,
    0.386395126581192, -0.1731255054473877, 0.28560882806777954, 1.014876127243042, -0.2944042682647705,
    -0.5937963128089905, 0.20926496386528015, 0.7303145527839661,
]
GOLDEN_CORE_SLICE2 = [0.10417576134204865, -0.7805335521697998, 0.3044251799583435, -0.6117503643035889,
                      0.707486629486084]  # out[1, -1, -5:]
# MSDeformAttn(32, n_levels=2, n_heads=4, n_points=3).sampling_offsets.bias after the official init
GOLDEN_BIAS = [
    1.0, 0.0, 2.0, 0.0, 3.0, 0.0, 1.0, 0.0, 2.0, 0.0, 3.0, 0.0, -4.371138828673793e-08, 1.0,
    -8.742277657347586e-08, 2.0, -1.3113415775478643e-07, 3.0, -4.371138828673793e-08, 1.0,
    -8.742277657347586e-08, 2.0, -1.3113415775478643e-07, 3.0, -1.0, -8.742277657347586e-08, -2.0,
    -1.7484555314695172e-07, -3.0, -2.6226831550957286e-07, -1.0, -8.742277657347586e-08, -2.0,
    -1.7484555314695172e-07, -3.0, -2.6226831550957286e-07, 1.1924880638503055e-08, -1.0, 2.384976127700611e-08,
    -2.0, 3.5774640139152325e-08, -3.0, 1.1924880638503055e-08, -1.0, 2.384976127700611e-08, -2.0,
    3.5774640139152325e-08, -3.0,
]
GOLDEN_MOD2 = (3.4795621605589986, 115.35850414354354, [  # points, padding mask; out[1, :2, :4]
    0.5003591775894165, 0.20966625213623047, -0.2525821328163147, -0.3253207206726074, 0.406058669090271,
    0.18849432468414307, -0.06287303566932678, 0.10869996249675751])
GOLDEN_MOD4 = (-5.324082806939259, 142.85583912557922, [  # boxes, no mask; out[0, -1, :4]
    -0.23821710050106049, 0.07736904919147491, -0.547920286655426, -0.28814706206321716])


def _core_inputs():
    g = torch.Generator().manual_seed(0)
    shapes = torch.tensor([[6, 9], [3, 5], [2, 2], [1, 1]])
    starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    s = int((shapes[:, 0] * shapes[:, 1]).sum())
    value = torch.randn(2, s, 3, 5, generator=g)
    loc = torch.rand(2, 7, 3, 4, 2, 2, generator=g) * 1.4 - 0.2  # some points outside [0, 1]
    attn = torch.rand(2, 7, 3, 4, 2, generator=g)
    return value, shapes, starts, loc, attn


def test_reference_matches_official_core():
    value, shapes, starts, loc, attn = _core_inputs()
    out = ms_deform_attn_reference(value, shapes, loc, attn)
    assert out.shape == (2, 7, 15)
    assert out.double().sum().item() == pytest.approx(GOLDEN_CORE_SUM, abs=1e-5)
    assert out.double().abs().sum().item() == pytest.approx(GOLDEN_CORE_ABS_SUM, abs=1e-5)
    torch.testing.assert_close(out[0, :3, :6].flatten(), torch.tensor(GOLDEN_CORE_SLICE), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1, -1, -5:], torch.tensor(GOLDEN_CORE_SLICE2), atol=1e-6, rtol=0)
    # the dispatcher with the reference backend is the same function
    out2 = ms_deform_attn(value, shapes, starts, loc, attn, backend="reference")
    assert torch.equal(out, out2)
    # a list of (H, W) pairs is accepted as spatial_shapes
    assert torch.equal(out, ms_deform_attn_reference(value, [(6, 9), (3, 5), (2, 2), (1, 1)], loc, attn))


def _golden_module():
    torch.manual_seed(0)
    m = MSDeformAttn(32, n_levels=2, n_heads=4, n_points=3, backend="reference")
    g = torch.Generator().manual_seed(1)
    shapes = torch.tensor([[5, 7], [3, 4]])
    starts = torch.tensor([0, 35])
    x = torch.randn(2, 47, 32, generator=g)
    q = torch.randn(2, 6, 32, generator=g)
    r2 = torch.rand(2, 6, 2, 2, generator=g)
    r4 = torch.rand(2, 6, 2, 4, generator=g)
    mask = torch.zeros(2, 47, dtype=torch.bool)
    mask[1, 30:35] = True
    mask[1, 44:] = True
    return m, g, shapes, starts, x, q, r2, r4, mask


def test_module_init_and_forward_match_official():
    m, g, shapes, starts, x, q, r2, r4, mask = _golden_module()
    torch.testing.assert_close(m.sampling_offsets.bias.detach(), torch.tensor(GOLDEN_BIAS), atol=1e-7, rtol=0)
    assert torch.count_nonzero(m.sampling_offsets.weight) == 0
    assert torch.count_nonzero(m.attention_weights.weight) == 0 and torch.count_nonzero(m.attention_weights.bias) == 0
    assert set(m.state_dict()) == {
        f"{name}.{p}" for name in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
        for p in ("weight", "bias")
    }
    with torch.no_grad():
        for lin in (m.sampling_offsets, m.attention_weights, m.value_proj, m.output_proj):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.2)
            lin.bias.add_(torch.randn(lin.bias.shape, generator=g) * 0.1)
        o2 = m(q, r2, x, shapes, starts, mask)
        o4 = m(q, r4, x, shapes, starts, None)
    for out, (total, abs_total, head), sl in ((o2, GOLDEN_MOD2, o2[1, :2, :4]), (o4, GOLDEN_MOD4, o4[0, -1, :4])):
        assert out.shape == (2, 6, 32)
        assert out.double().sum().item() == pytest.approx(total, abs=1e-4)
        assert out.double().abs().sum().item() == pytest.approx(abs_total, abs=1e-4)
        torch.testing.assert_close(sl.flatten(), torch.tensor(head), atol=1e-6, rtol=0)


def test_module_returns_sampling_like_referformer():
    m, g, shapes, starts, x, q, r2, r4, mask = _golden_module()
    out, loc, attn = m(q, r2, x, shapes, starts, mask, return_sampling=True)
    assert out.shape == (2, 6, 32) and loc.shape == (2, 6, 4, 2, 3, 2) and attn.shape == (2, 6, 4, 2, 3)
    # weights are a softmax over levels x points per head
    torch.testing.assert_close(attn.sum((-1, -2)), torch.ones(2, 6, 4))
    # padded positions do not contribute: changing their features changes nothing
    x2 = x.clone()
    x2[mask] = 100.0
    torch.testing.assert_close(m(q, r2, x2, shapes, starts, mask), out)


def test_module_rejects_bad_input():
    m, g, shapes, starts, x, q, r2, r4, mask = _golden_module()
    with pytest.raises(InvalidInputError, match="2 \\(points\\) or 4 \\(boxes\\)"):
        m(q, torch.rand(2, 6, 2, 3), x, shapes, starts)
    with pytest.raises(InvalidInputError, match="batch"):
        m(q[:1], r2[:1], x, shapes, starts)
    with pytest.raises(InvalidInputError, match="sum to"):
        m(q, r2, x[:, :40], shapes, starts)
    with pytest.raises(InvalidInputError, match="level_start_index"):
        m(q, r2, x, shapes, torch.tensor([0, 30]))
    with pytest.raises(ConfigError, match="divisible"):
        MSDeformAttn(30, 2, 4, 3)


def test_op_rejects_bad_input():
    value, shapes, starts, loc, attn = _core_inputs()
    with pytest.raises(InvalidInputError, match="unknown backend"):
        ms_deform_attn(value, shapes, starts, loc, attn, backend="tpu")
    with pytest.raises(InvalidInputError, match="attention_weights"):
        ms_deform_attn(value, shapes, starts, loc, attn[..., :1], backend="reference")
    with pytest.raises(UnsupportedDtypeError):
        ms_deform_attn(value.to(torch.int32), shapes, starts, loc, attn, backend="reference")
    with pytest.raises(InvalidInputError, match="levels"):
        ms_deform_attn(value, shapes[:3], starts[:3], loc, attn, backend="reference")
    with pytest.raises(InvalidInputError, match="cannot run tensors on 'cpu'"):
        ms_deform_attn(value, shapes, starts, loc, attn, backend="cuda")


def test_backend_env_override(monkeypatch):
    value, shapes, starts, loc, attn = _core_inputs()
    monkeypatch.setenv("LVSEG_MSDA_BACKEND", "bogus")
    with pytest.raises(InvalidInputError, match="LVSEG_MSDA_BACKEND"):
        ms_deform_attn(value, shapes, starts, loc, attn)
    monkeypatch.setenv("LVSEG_MSDA_BACKEND", "reference")
    assert torch.equal(ms_deform_attn(value, shapes, starts, loc, attn),
                       ms_deform_attn_reference(value, shapes, loc, attn))


def test_reference_gradcheck_float64():
    value, shapes, starts, loc, attn = _core_inputs()
    # keep points away from pixel-grid kinks, where bilinear sampling is not differentiable
    value = value[:1, :, :2, :3].double().requires_grad_()
    loc = (loc[:1, :3, :2].double() * 0.9 + 0.013).requires_grad_()
    attn = attn[:1, :3, :2].double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, sl, aw: ms_deform_attn(v, shapes, starts, sl, aw, backend="reference"), (value, loc, attn)
    )


def test_tracing_uses_the_reference_graph():
    value, shapes, starts, loc, attn = _core_inputs()
    expected = ms_deform_attn_reference(value, shapes, loc, attn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings: the level shapes become constants
        traced = torch.jit.trace(lambda v, sl, aw: ms_deform_attn(v, shapes, starts, sl, aw), (value, loc, attn))
    torch.testing.assert_close(traced(value, loc, attn), expected)
    # the traced graph is plain PyTorch: it recomputes for new values
    torch.testing.assert_close(traced(value * 2, loc, attn), expected * 2)
