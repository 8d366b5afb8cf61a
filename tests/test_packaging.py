"""``python -m build`` makes an sdist and a wheel; the wheel installed into a fresh venv imports and lists models."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_sdist_and_wheel_contents(dist):
    wheel = next(dist.glob("lvseg-*.whl"))
    sdist = next(dist.glob("lvseg-*.tar.gz"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "lvseg/__init__.py" in names and "lvseg/py.typed" in names
    assert any(n.endswith("entry_points.txt") for n in names)
    csrc = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "lvseg/ops/csrc").rglob("*") if p.is_file()) \
        if (ROOT / "lvseg/ops/csrc").is_dir() else []
    assert set(csrc) <= set(names), "the op sources must ship in the wheel so it can JIT-compile"
    with tarfile.open(sdist) as tar:
        members = tar.getnames()
    assert any(m.endswith("/LICENSE") for m in members) and any(m.endswith("/pyproject.toml") for m in members)
    assert not any("/tests/" in n for n in names), "tests must not ship in the wheel"


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv(dist, tmp_path):
    wheel = next(dist.glob("lvseg-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # Dependencies (torch, ...) come from the test environment's site-packages, lvseg from the wheel only.
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   timeout=300)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    check = subprocess.run(
        [str(python), "-c", "import lvseg; print(lvseg.__file__); print(lvseg.list_models())"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert check.returncode == 0, check.stderr
    assert str(env_dir) in check.stdout.splitlines()[0], "lvseg must be imported from the installed wheel"
    cli = subprocess.run([str(env_dir / "bin" / "lvseg"), "list"], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=120)
    assert cli.returncode == 0 and "family" in cli.stdout, cli.stderr
    # The op sources ship in the wheel and the compiled CPU backend builds from the installed package.
    build_env = {**env, "LVSEG_CACHE_DIR": str(tmp_path / "ops-cache")}
    ops = subprocess.run([str(env_dir / "bin" / "lvseg"), "build-ops", "--kind", "cpu"], capture_output=True,
                         text=True, cwd=tmp_path, env=build_env, timeout=600)
    assert ops.returncode == 0, ops.stdout + ops.stderr
    assert "[ OK ] cpu" in ops.stdout and str(tmp_path / "ops-cache") in ops.stdout
    run = subprocess.run(
        [str(python), "-c", "import torch, lvseg.ops as o; from lvseg.ops.function import select_backend; "
         "print(select_backend('cpu'))"], capture_output=True, text=True, cwd=tmp_path, env=build_env,
        timeout=120)
    assert run.returncode == 0 and run.stdout.strip().endswith("cpu"), run.stdout + run.stderr


def _floors(requirements: list[str]) -> dict[str, str]:
    """{normalised name: floor} of requirements written ``name>=X`` (the form pyproject.toml uses)."""
    import re

    floors = {}
    for req in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:>=|==)([0-9][0-9.]*)", req.replace(" ", ""))
        assert match, f"pyproject.toml requirement {req!r} is not of the form name>=version (or name==version)"
        floors[match[1].lower().replace("_", "-")] = match[2]
    return floors


def test_oldest_constraints_pin_the_pyproject_floors():
    """.ci/constraints-oldest.txt (CI's oldest-dependencies job) pins every dependency of pyproject.toml (and of
    the dev extra) at its floor, so that the floors are what CI tests."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = _floors(project["dependencies"] + project["optional-dependencies"]["dev"])
    pins = {}
    for line in (ROOT / ".ci" / "constraints-oldest.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version

    def same(a: str, b: str) -> bool:  # 9.2 == 9.2.0
        pad = max(len(a.split(".")), len(b.split(".")))
        return a.split(".") + ["0"] * (pad - len(a.split("."))) == b.split(".") + ["0"] * (pad - len(b.split(".")))

    assert set(floors) <= set(pins), f"not pinned in .ci/constraints-oldest.txt: {sorted(set(floors) - set(pins))}"
    wrong = {name: (floor, pins[name]) for name, floor in floors.items() if not same(floor, pins[name])}
    assert not wrong, f"pyproject floor != oldest pin: {wrong}"


def test_ci_runs_exactly_the_readme_test_command():
    """.ci/run runs the README's second command (lint, format check, type check, tests) and nothing less."""
    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0].strip() for b in readme.split("```bash\n")[1:]]
    assert len(blocks) >= 2, "the README must open with two bash commands (install + demo, dev install + tests)"
    test_command = blocks[1]
    for step in ("ruff check lvseg", "ruff format --check lvseg", "mypy", "pytest"):
        assert step in test_command, f"the README's test command lacks {step!r}"
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert test_command in ci, f".ci/run does not run the README's test command {test_command!r}"
