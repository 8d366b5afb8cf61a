"""lvseg.load / from_pretrained build models with their parameters on the meta device and take the file's tensors.

The loaded model must be exactly the saved one (every parameter and buffer, non-persistent buffers included, and
the same outputs), tied parameters must stay one object, the file must never be written through the loaded
weights, and the patch of ``nn.Module.register_parameter`` must not leak out of the load (nor into another
thread)."""

from __future__ import annotations

import hashlib
import threading

import pytest
import torch
from parity import relative_deviation
from torch import nn
from toymodels import TiedConfig, TiedModel

import lvseg
from lvseg import hub as lvhub
from lvseg.errors import CheckpointError
from lvseg.models.base import RVOSModel
from lvseg.train import presets
from lvseg.train.vlp_rvos_presets import build_vlp_shapes_tiny

REGISTER = nn.Module.register_parameter  # torch's, before any load


def _mttr() -> RVOSModel:
    from test_mttr import tiny_model

    return tiny_model()


def _lavt_video() -> RVOSModel:
    from test_lavt_video import LAVTVideo, small_config, tokenizer

    return LAVTVideo(small_config(), tokenizer=tokenizer())


# Computed values (outputs, gradients) are compared up to rounding relative to their magnitude: a meta-loaded
# parameter is a view of the weights file at the file's offset (not a fresh 64-byte-aligned allocation), and some
# CPUs' kernels round the last bits differently on differently aligned operands (measured on an AMD EPYC:
# gradients 1e-15 apart, 2e-7 relative). The parameter values themselves are compared exactly.
ROUNDING = 1e-5

BUILDERS = {
    "mttr": _mttr,
    "lavt_video": _lavt_video,
    "referformer": presets.build_shapes_tiny,
    "lavt": presets.build_lavt_shapes_tiny,
    "locater": presets.build_locater_shapes_tiny,
    "vlp_rvos": build_vlp_shapes_tiny,
}


def all_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, persistent or not, by name."""
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return {k: v.detach() for k, v in named}


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_a_loaded_model_is_the_saved_one(family, tmp_path):
    torch.manual_seed(0)
    original = BUILDERS[family]().eval()
    with torch.no_grad():  # away from any initialisation a constructor could reproduce
        for p in original.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    lvhub.save_pretrained(original, tmp_path / "m")
    loaded = lvseg.load(tmp_path / "m", device="cpu")
    want, got = all_tensors(original), all_tensors(loaded)
    assert want.keys() == got.keys()
    assert not [k for k, t in got.items() if t.is_meta]
    assert [k for k in want if not torch.equal(want[k], got[k]) or want[k].dtype != got[k].dtype] == []
    assert [p.requires_grad for p in original.parameters()] == [p.requires_grad for p in loaded.parameters()]
    size = min(original.preprocessing.short_side, 96)
    frames = torch.randn(2, 3, 3, size, size, generator=torch.Generator().manual_seed(1))
    texts = ["the red circle", "a big blue square moving left"]
    with torch.no_grad():
        (a, sa), (b, sb) = original.segment(frames, texts), loaded.segment(frames, texts)
    assert relative_deviation(b, a) <= ROUNDING and relative_deviation(sb, sa) <= ROUNDING
    assert nn.Module.register_parameter is REGISTER


def test_a_loaded_model_trains_without_writing_to_its_file(tmp_path):
    torch.manual_seed(0)
    original = presets.build_locater_shapes_tiny().train()  # has an LSTM (flat weights)
    lvhub.save_pretrained(original, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    model = lvseg.load(tmp_path / "m", device="cpu").train()
    frames = torch.randn(1, 3, 3, 96, 96)
    for m in (original, model):
        m(frames, ["the red circle"])["logits"].float().square().mean().backward()
    grads = [(k, p.grad, q.grad) for (k, p), (_, q) in zip(original.named_parameters(), model.named_parameters())]
    assert sum(g is not None for _, g, _ in grads) > len(grads) // 2
    assert [k for k, g, h in grads if (g is None) != (h is None)] == []
    # all gradients as one tensor, so relative to the largest: one that is zero in exact arithmetic is rounding noise
    flat = [(g.flatten(), h.flatten()) for _, g, h in grads if g is not None]
    assert relative_deviation(torch.cat([h for _, h in flat]), torch.cat([g for g, _ in flat])) <= ROUNDING
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == digest
    reloaded = lvseg.load(tmp_path / "m", device="cpu")
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), reloaded.parameters()))


def test_tied_parameters_stay_one_object_and_buffers_keep_their_values(tmp_path):
    torch.manual_seed(0)
    original = TiedModel(TiedConfig())
    lvhub.save_pretrained(original, tmp_path / "m")
    loaded = lvseg.load(tmp_path / "m", device="cpu")
    assert loaded.built_on_meta and not original.built_on_meta  # no random initialisation on load
    assert loaded.head[0].weight is loaded.decode.weight and loaded.head[0].bias is loaded.decode.bias
    assert torch.equal(loaded.offsets, torch.arange(4, dtype=torch.float32))
    assert len(list(loaded.parameters())) == 4
    assert all(torch.equal(a, b) for a, b in zip(original.parameters(), loaded.parameters()))


def test_the_patch_is_undone_after_a_failing_build_and_other_threads_build_as_usual(tmp_path):
    register = REGISTER
    with pytest.raises(RuntimeError, match="boom"):
        with lvhub.parameters_on_meta():
            assert nn.Linear(2, 2).weight.is_meta
            raise RuntimeError("boom")
    assert nn.Module.register_parameter is register and not nn.Linear(2, 2).weight.is_meta

    built: dict[str, torch.Tensor] = {}
    inside, done = threading.Event(), threading.Event()

    def other_thread() -> None:
        inside.wait(timeout=60)
        built["other"] = nn.Linear(2, 2).weight
        done.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with lvhub.parameters_on_meta():
        inside.set()
        assert done.wait(timeout=60)
        built["inside"] = nn.Linear(2, 2).weight
    worker.join()
    assert built["inside"].is_meta and not built["other"].is_meta
    assert nn.Module.register_parameter is register


def test_a_file_that_does_not_fit_still_names_the_keys(tmp_path):
    torch.manual_seed(0)
    lvhub.save_pretrained(TiedModel(TiedConfig(width=4)), tmp_path / "m")
    config = (tmp_path / "m" / "config.json").read_text().replace('"width": 4', '"width": 5')
    (tmp_path / "m" / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match=r"shape mismatches .*encode\.weight: file \(4, 3\) vs model \(5, 3\)"):
        lvseg.load(tmp_path / "m", device="cpu")
    assert nn.Module.register_parameter is REGISTER
