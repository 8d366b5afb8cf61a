"""The Python examples of README.md and docs/ run, or say what they need.

Every ```python block is marked on the line above it: ``<!-- runnable -->`` blocks are executed here (in order, one
namespace per file, in a folder holding a ``clip.mp4``, offline); ``<!-- not run: REASON -->`` blocks are not. A
block that loads a registry name whose weights are not published (before: the first example of docs/predict.md
and docs/hub.md, ``lvseg.load("referformer-swin-l")``, raised WeightsNotPublishedError) cannot be runnable, and
its reason must say that it needs converted weights.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^(?:<!-- (runnable|not run: [^>]*?) -->\n)?```python\n(.*?)^```", re.M | re.S)
LOAD = re.compile(r"""lvseg\.load\(\s*["']([^"']+)["']""")


def blocks(path: Path) -> list[tuple[str | None, str, int]]:
    text = path.read_text(encoding="utf-8")
    return [(m.group(1), m.group(2), text[: m.start()].count("\n") + 1) for m in BLOCK.finditer(text)]


def unpublished_names(code: str) -> list[str]:
    """The registry names (``arch`` or ``arch.tag``) that ``code`` loads and whose weights are not published."""
    from lvseg.errors import ModelNotFoundError
    from lvseg.registry import get_entry

    out = []
    for name in LOAD.findall(code):
        try:
            if not get_entry(name).published:
                out.append(name)
        except ModelNotFoundError:  # a folder or hf-hub id
            pass
    return out


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_every_python_example_is_marked(path):
    for marker, code, line in blocks(path):
        where = f"{path.relative_to(ROOT)}:{line}"
        assert marker is not None, f"{where}: mark the block <!-- runnable --> or <!-- not run: REASON -->"
        missing = unpublished_names(code)
        if missing:
            assert marker != "runnable", f"{where} loads {missing}, whose weights are not published"
            assert "converted weights" in marker, f"{where}: say that {missing} need converted weights"


RUNNABLE = [p for p in DOCS if any(m == "runnable" for m, _, _ in blocks(p))]


@pytest.mark.parametrize("path", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_runnable_examples_run(path, tmp_path, monkeypatch):
    from lvseg.data.shapes import make_video
    from lvseg.video import write_video

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LVSEG_MSDA_BACKEND", "reference")
    monkeypatch.chdir(tmp_path)
    _, frames, _ = make_video(0, "demo", 0, 6, 96, 96)
    write_video(iter(np.stack(frames)), tmp_path / "clip.mp4", fps=6)
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for marker, code, line in blocks(path):
        if marker == "runnable":
            exec(compile(code, f"{path.name}:{line}", "exec"), namespace)  # noqa: S102 - our own docs
            ran += 1
    assert ran
