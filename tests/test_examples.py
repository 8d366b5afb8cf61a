"""The scripts in examples/ keep working."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from lvseg.video import write_video

from toymodels import color_video, make_color_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_predict_video_example(tmp_path, monkeypatch):
    frames, masks = color_video(num_frames=5)
    video = write_video(iter(frames), tmp_path / "clip.mp4", fps=5)
    model_dir = make_color_model().save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["predict_video.py", str(video), "red", "blue", "--model", str(model_dir),
                                      "--output", str(out), "--device", "cpu"])
    runpy.run_path(str(EXAMPLES / "predict_video.py"), run_name="__main__")
    assert (out / "overlay.mp4").stat().st_size > 0
    assert sorted(p.name for p in (out / "expression_1").iterdir())[:2] == ["00000.png", "00001.png"]
