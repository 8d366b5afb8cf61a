"""Build cache location and keys, and the fallback to the reference backend when a build cannot work."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lvseg.ops import build

# Runs the op on CPU with the automatic backend twice, and reports warnings, the backend and the parity.
FALLBACK_SCRIPT = textwrap.dedent(
    """
    import warnings, torch
    warnings.simplefilter("always")
    from lvseg.ops import ms_deform_attn, ms_deform_attn_reference, select_backend
    from lvseg.ops.build import MSDABuildWarning
    g = torch.Generator().manual_seed(0)
    value = torch.randn(2, 12 + 2, 2, 4, generator=g)
    shapes = torch.tensor([[3, 4], [1, 2]])
    starts = torch.tensor([0, 12])
    loc = torch.rand(2, 5, 2, 2, 3, 2, generator=g)
    attn = torch.rand(2, 5, 2, 2, 3, generator=g)
    with warnings.catch_warnings(record=True) as caught:
        out1 = ms_deform_attn(value, shapes, starts, loc, attn)
        out2 = ms_deform_attn(value, shapes, starts, loc, attn)
        backend = select_backend("cpu")
    ours = [w for w in caught if issubclass(w.category, MSDABuildWarning)]
    ref = ms_deform_attn_reference(value, shapes, loc, attn)
    print("WARNINGS", len(ours))
    for w in ours:
        print("MESSAGE", str(w.message).replace("\\n", " "))
    print("BACKEND", backend)
    print("EQUAL", bool(torch.equal(out1, ref) and torch.equal(out2, ref)))
    """
)


def run_fallback(tmp_path: Path, **env_overrides: str) -> str:
    env = dict(os.environ)
    env.pop("LVSEG_MSDA_BACKEND", None)
    env["LVSEG_CACHE_DIR"] = str(tmp_path / "cache")  # never reuse a good build from the user cache
    env.update(env_overrides)
    proc = subprocess.run(
        [sys.executable, "-c", FALLBACK_SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_missing_compiler_falls_back_with_one_warning(tmp_path):
    out = run_fallback(tmp_path, CXX=str(tmp_path / "no-such-compiler"))
    assert "WARNINGS 1" in out
    assert "no-such-compiler" in out and "was not found" in out and "$CXX" in out
    assert "reference" in out.split("MESSAGE", 1)[1]  # says what it does instead
    assert "BACKEND reference" in out and "EQUAL True" in out


def test_broken_compiler_falls_back_with_one_warning(tmp_path):
    # a "compiler" that answers --version but fails every compilation
    fake = tmp_path / "fakecc"
    fake.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "fakecc 1.0"; exit 0; fi\n'
                    'echo "fakecc: cannot compile anything" >&2\nexit 1\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    out = run_fallback(tmp_path, CXX=str(fake))
    assert "WARNINGS 1" in out
    assert "compiling the cpu extension" in out and "fakecc" in out
    assert "LVSEG_VERBOSE_BUILD=1" in out  # tells how to see the full log
    assert "BACKEND reference" in out and "EQUAL True" in out
    # nothing half-built is taken for a good build later
    assert not list((tmp_path / "cache").rglob("lvseg-build.json"))


def test_missing_ninja_is_reported(tmp_path, monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.setenv("LVSEG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    with pytest.raises(build.BuildError, match="pip install ninja"):
        build.build("cpu")


def test_cache_root_precedence(monkeypatch, tmp_path):
    for var in ("LVSEG_CACHE_DIR", "TORCH_EXTENSIONS_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert build.cache_root() == Path.home() / ".cache" / "lvseg" / "ops"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.cache_root() == tmp_path / "xdg" / "lvseg" / "ops"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "te"))
    assert build.cache_root() == tmp_path / "te" / "lvseg"
    monkeypatch.setenv("LVSEG_CACHE_DIR", str(tmp_path / "lv"))
    assert build.cache_root() == tmp_path / "lv" / "ops"
    assert build.build_info("cpu").directory.parent == tmp_path / "lv" / "ops"


def test_cache_key_tracks_compiler_and_sources(monkeypatch):
    base = build.build_info("cpu")
    assert base.key_parts["torch"] == torch.__version__
    assert base.key_parts["torch_cuda"] == str(torch.version.cuda)
    assert base.key_parts["sources"] == build._sources_digest()
    assert base.name.startswith("lvseg_msda_cpu_")
    other = next((c for c in ("g++", "clang++", "gcc") if build.shutil.which(c)), None)
    if other is None:
        pytest.skip("only one C++ compiler on this machine")
    monkeypatch.setenv("CXX", other)
    assert build.build_info("cpu").name != base.name


def test_verbose_env_is_read(monkeypatch):
    monkeypatch.setenv("LVSEG_VERBOSE_BUILD", "1")
    assert build._verbose()
    monkeypatch.setenv("LVSEG_VERBOSE_BUILD", "0")
    assert not build._verbose()


def test_sources_ship_as_plain_files():
    names = {p.name for p in build.CSRC.iterdir() if p.is_file()}
    for kind_sources in build._SOURCES.values():
        assert set(kind_sources) <= names
    assert "ms_deform_attn_cuda.h" in names
