"""The compiled-op cache checks what it loads, repairs itself, and survives concurrent builds.

Loading a damaged shared library can kill a process with SIGBUS (no exception, no message), so every scenario
that touches a damaged or concurrently built entry runs in a subprocess, and the test asserts its exit status.
The tests start from a copy of the entry that ``build.load_extension("cpu")`` builds once into the current cache
(the one tests/test_ops_cpu.py uses too); four of them compile the extension again (about a minute each on 2
cores), which is what they test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from lvseg.ops import build

# Runs the op through the automatic backend choice, as a model does, and checks it against the reference.
# With "log" as argument it configures logging the way the CLI does; without, the user sees what a script sees.
OP_SCRIPT = textwrap.dedent(
    """
    import logging, sys, torch
    if "log" in sys.argv[1:]:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from lvseg.ops import build, ms_deform_attn, ms_deform_attn_reference, select_backend
    g = torch.Generator().manual_seed(0)
    value = torch.randn(2, 12 + 2, 2, 8, generator=g)
    shapes = torch.tensor([[3, 4], [1, 2]])
    starts = torch.tensor([0, 12])
    loc = torch.rand(2, 5, 2, 2, 3, 2, generator=g) * 1.2 - 0.1
    attn = torch.rand(2, 5, 2, 2, 3, generator=g).softmax(-1)
    out = ms_deform_attn(value, shapes, starts, loc, attn)
    assert select_backend("cpu") == "cpu", select_backend("cpu")
    torch.testing.assert_close(out, ms_deform_attn_reference(value, shapes, loc, attn), atol=1e-5, rtol=1e-5)
    print("LIBRARY", build.load_extension("cpu").__file__)
    """
)


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LVSEG_MSDA_BACKEND", None)
    env.pop("LVSEG_VERBOSE_BUILD", None)
    env["LVSEG_CACHE_DIR"] = str(cache)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run_op(cache: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", OP_SCRIPT, *args], capture_output=True, text=True, check=False,
                          env=_env(cache), timeout=900)


def _library_line(stdout: str) -> Path:
    return Path(next(line for line in stdout.splitlines() if line.startswith("LIBRARY ")).split(" ", 1)[1])


@pytest.fixture(scope="module")
def entry() -> Path:
    """The folder of a valid cpu build (built once per machine in the current cache)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", build.MSDABuildWarning)  # a failed build fails these tests loudly
        assert build.load_extension("cpu") is not None
    info = build.build_info("cpu")
    assert build.verify_installed(info) is not None
    return info.directory


@pytest.fixture
def cache(entry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache root holding a copy of the valid entry (marker + the build it names); the test process
    points LVSEG_CACHE_DIR at it (subprocesses get it through ``_env``)."""
    root = tmp_path / "cache"
    target = root / "ops" / entry.name
    target.mkdir(parents=True)
    record = json.loads((entry / "lvseg-build.json").read_text())
    shutil.copytree(entry / Path(record["library"]).parent, target / Path(record["library"]).parent)
    shutil.copy2(entry / "lvseg-build.json", target / "lvseg-build.json")
    monkeypatch.setenv("LVSEG_CACHE_DIR", str(root))
    return root


def _marker() -> dict:
    return json.loads(build.build_info("cpu").marker.read_text())


def _write_marker(record: dict) -> None:
    build.build_info("cpu").marker.write_text(json.dumps(record))


# ------------------------------------------------------------------------------------ verification (no build)


def test_marker_records_size_and_sha256_of_the_library(cache):
    info = build.build_info("cpu")
    record = _marker()
    installed = build.verify_installed(info)
    assert installed is not None and installed.library == info.library
    assert installed.library.parent.parent == info.directory and installed.library.parent.name.startswith("build-")
    data = installed.library.read_bytes()
    assert record["size"] == len(data) and record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["key"] == info.key_parts and record["module"] == installed.module_name


def _truncate(library: Path) -> None:
    os.truncate(library, 4096)


def _flip_byte(library: Path) -> None:
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF
    library.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda lib: _truncate(lib), "has 4096 bytes where the build wrote"),
        (lambda lib: _flip_byte(lib), "sha256 of .* is not the one recorded"),
        (lambda lib: lib.unlink(), "cannot be read"),
        (lambda lib: build.build_info("cpu").marker.write_text('{"layout": 2, "key"'), "not valid JSON"),
        (lambda lib: _write_marker({**_marker(), "sha256": "0" * 64}), "sha256 of .* is not the one recorded"),
        (lambda lib: _write_marker({k: v for k, v in _marker().items() if k != "sha256"}), "lacks valid sha256"),
        (lambda lib: _write_marker({**_marker(), "size": "401536"}), "lacks valid size"),
        (lambda lib: _write_marker({**_marker(), "library": "../../elsewhere/x.so"}), "outside the entry"),
        (lambda lib: _write_marker({**_marker(), "key": {**_marker()["key"], "torch": "0.0"}}),
         "written for another build"),
        (lambda lib: _write_marker({**_marker(), "module": "os"}), "names module 'os'"),
    ],
    ids=["truncated", "byte-flipped", "deleted", "marker-not-json", "marker-sha256", "marker-no-sha256",
         "marker-size-type", "marker-path-escape", "marker-other-key", "marker-module"],
)
def test_damage_is_detected_without_loading(cache, damage, message):
    info = build.build_info("cpu")
    damage(info.library)
    with pytest.raises(build.CacheDamaged, match=message):
        build.verify_installed(info)


def test_no_marker_means_not_installed(cache):
    info = build.build_info("cpu")
    info.marker.unlink()
    assert build.verify_installed(info) is None


def test_cache_key_changes_with_the_layout(monkeypatch):
    # entries written by releases that put the library into the entry folder itself are never reused
    info = build.build_info("cpu")
    assert info.key_parts["cache_layout"] == str(build.CACHE_LAYOUT)
    monkeypatch.setattr(build, "CACHE_LAYOUT", build.CACHE_LAYOUT + 1)
    assert build.build_info("cpu").name != info.name


def test_unwritable_cache_is_a_build_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LVSEG_CACHE_DIR", str(blocker))
    with pytest.raises(build.BuildError, match="cannot write the build cache .*LVSEG_CACHE_DIR"):
        build.build("cpu")


# ---------------------------------------------------------------------------------- repair (real builds, slow)


@pytest.mark.slow
def test_truncated_library_is_rebuilt_with_one_warning(cache):
    """Before: SIGBUS (exit 135) in the first op call, no message, until the file was deleted by hand."""
    info = build.build_info("cpu")
    old = info.library
    _truncate(old)
    proc = _run_op(cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.count("is damaged") == 1, proc.stderr
    assert "has 4096 bytes where the build wrote" in proc.stderr and "Rebuilding it." in proc.stderr
    new = _library_line(proc.stdout)
    assert new == info.library and new != old and build.verify_installed(info).library == new
    assert not old.parent.exists()  # the damaged build folder is gone
    # the next process loads the repaired entry quietly
    again = _run_op(cache)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "damaged" not in again.stderr and "building" not in again.stderr
    assert _library_line(again.stdout) == new


@pytest.mark.slow
def test_force_rebuilds_a_truncated_library(cache):
    """`lvseg build-ops --force` on a truncated library. Before: SIGBUS (exit 135): ninja found its outputs up to
    date and the truncated file was loaded."""
    info = build.build_info("cpu")
    old = info.library
    _truncate(old)
    old_marker = info.marker.stat()
    proc = subprocess.run([sys.executable, "-m", "lvseg.cli", "build-ops", "--kind", "cpu", "--force"], check=False,
                          capture_output=True, text=True, env=_env(cache), timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rebuilding the MSDA cpu extension (forced)" in proc.stderr
    assert "compiling the MSDA cpu op into" in proc.stderr and "built the MSDA cpu extension in" in proc.stderr
    new = info.library
    assert f"[ OK ] cpu: {new} " in proc.stdout
    assert new != old and not old.exists()
    assert info.marker.stat().st_ino != old_marker.st_ino  # replaced, not edited
    assert build.verify_installed(info).library == new


@pytest.mark.slow
def test_force_in_a_process_that_loaded_the_library(cache):
    """A library dlopen'ed by this process cannot be replaced in it: --force builds a new file and loads that."""
    script = textwrap.dedent(
        """
        import torch
        from lvseg.ops import build, ms_deform_attn, ms_deform_attn_reference
        first = build.load_extension("cpu")
        second = build.build("cpu", force=True)
        assert build.load_extension("cpu") is second  # the op uses the new build from now on
        g = torch.Generator().manual_seed(1)
        value, loc = torch.randn(1, 6, 1, 4, generator=g), torch.rand(1, 3, 1, 1, 2, 2, generator=g)
        attn, shapes = torch.rand(1, 3, 1, 1, 2, generator=g), torch.tensor([[2, 3]])
        out = ms_deform_attn(value, shapes, torch.tensor([0]), loc, attn)
        torch.testing.assert_close(out, ms_deform_attn_reference(value, shapes, loc, attn), atol=1e-5, rtol=1e-5)
        print("FIRST", first.__file__)
        print("SECOND", second.__file__)
        """
    )
    info = build.build_info("cpu")
    old = info.library
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                          env=_env(cache), timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("FIRST", "SECOND")))
    assert Path(lines["FIRST"]) == old
    assert Path(lines["SECOND"]) == info.library != old
    assert build.verify_installed(info).library == info.library


# --------------------------------------------------------------------------------------------- concurrency (slow)


@pytest.mark.slow
def test_concurrent_builds_into_an_empty_cache(tmp_path):
    """Two processes start at once on an empty cache: one builds, the other waits for it and loads its result;
    a third loads it without building. Before: both processes ran the build (the second one a ninja no-op in the
    folder the first had just written, under torch's lock) and both rewrote the marker."""
    root = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", OP_SCRIPT, "log"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(root)) for _ in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, out + err
    stderr = "".join(err for _, err in outputs)
    assert stderr.count("compiling the MSDA cpu op into") == 1, stderr
    libraries = {_library_line(out) for out, _ in outputs}
    assert len(libraries) == 1
    entry = next((root / "ops").iterdir())
    assert [p.name for p in entry.iterdir() if p.name.startswith("build-")] == [next(iter(libraries)).parent.name]
    marker = entry / "lvseg-build.json"
    before = marker.stat().st_mtime_ns
    third = _run_op(root, "log")
    assert third.returncode == 0, third.stdout + third.stderr
    assert "building" not in third.stderr and _library_line(third.stdout) in libraries
    assert marker.stat().st_mtime_ns == before
