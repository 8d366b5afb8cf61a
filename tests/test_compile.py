"""``lvseg.load(..., compile=True)``: a clear error without a C++ compiler on CPU (before any download), the parts
handed to ``torch.compile``, and compiled outputs equal to the eager ones within float rounding."""

from __future__ import annotations

import shutil

import pytest
import torch
from parity import RELATIVE_TOLERANCE
from toymodels import TiedConfig, TiedModel

import lvseg
from lvseg import hub as lvhub
from lvseg.errors import ConfigError

HAVE_CXX = any(shutil.which(name) for name in ("c++", "g++", "clang++"))


def test_compile_on_cpu_without_a_compiler_fails_before_any_download(monkeypatch, tmp_path):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler found on it
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a download would fail with a HubError/OfflineError
    with pytest.raises(ConfigError, match=r"compile=True on CPU needs a C\+\+ compiler .*apt-get install g\+\+"):
        lvseg.load("hf-hub:nobody/no-such-model", device="cpu", compile=True)


def test_compile_hands_the_family_parts_to_torch_compile():
    model = lvseg.load("referformer-tiny.shapes", device="cpu")
    parts = model.compile_parts()
    lvhub.compile_model(model)
    assert [p._compiled_call_impl is not None for p in parts] == [True] * len(parts)
    eager = [m for m in model.children() if not any(m is p for p in parts)]
    assert eager and all(m._compiled_call_impl is None for m in eager)  # text encoder, heads: left eager

    toy = TiedModel(TiedConfig())  # no compile_parts(): every direct submodule
    lvhub.compile_model(toy)
    assert all(m._compiled_call_impl is not None for m in toy.children())


@pytest.mark.slow  # inductor compiles three tiny graphs: ~10-60 s on 2 cores
@pytest.mark.skipif(not HAVE_CXX, reason="torch.compile on CPU needs a C++ compiler")
def test_a_compiled_model_predicts_what_the_eager_one_does(tmp_path):
    torch.manual_seed(0)
    lvhub.save_pretrained(TiedModel(TiedConfig(width=8)), tmp_path / "m")
    eager = lvseg.load(tmp_path / "m", device="cpu")
    compiled = lvseg.load(tmp_path / "m", device="cpu", compile=True)
    frames = torch.randn(2, 3, 3, 16, 16)
    with torch.no_grad():
        want, got = eager.segment(frames, ["a", "b"])[0], compiled.segment(frames, ["a", "b"])[0]
    assert got.shape == want.shape
    assert (got - want).abs().max() <= RELATIVE_TOLERANCE * want.abs().max()
