"""ReferFormer end to end: `lvseg convert` -> local Hub -> `lvseg.load("referformer-swin-l")` -> `lvseg predict`.

A tiny Video-Swin ReferFormer (the golden fixture's official-format checkpoint) stands in for the Swin-L weights:
what is tested is the path from an official file to a prediction, not the weights.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

import lvseg
from lvseg import registry
from lvseg.cli import main

from hubserver import LocalHub

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "referformer"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_referformer import official_checkpoint  # noqa: E402


def test_convert_publish_load_by_name_and_predict(tmp_path, monkeypatch, capsys):
    ckpt, _ = official_checkpoint("video-swin", tmp_path / "official.pth")
    folder = tmp_path / "converted"
    assert main(["convert", "referformer", str(ckpt), "-o", str(folder), "--tokenizer",
                 str(FIXTURES / "tokenizer"), "--name", "referformer-swin-l.joint"]) == 0
    capsys.readouterr()
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer_config.json", "tokenizer.json"} <= names
    card = (folder / "README.md").read_text()
    assert "64.2" in card  # the registry entry's paper J&F went into the card
    # small frames keep the test fast; the converted config is otherwise untouched
    config = json.loads((folder / "config.json").read_text())
    config["preprocessing"].update(short_side=64, max_size=96)
    (folder / "config.json").write_text(json.dumps(config))

    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with LocalHub() as server:
        sha = server.add_commit("lvseg/referformer-swin-l.joint", files)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
        entry = registry.get_entry("referformer-swin-l")
        assert entry.name == "referformer-swin-l.joint" and not entry.published
        monkeypatch.setitem(registry._ENTRIES, entry.name,
                            dataclasses.replace(entry, hub_repo="lvseg/referformer-swin-l.joint", hub_revision=sha))

        model = lvseg.load("referformer-swin-l", device="cpu")
        assert type(model).__name__ == "ReferFormer" and model.tokenizer is not None

        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 255, (72, 108, 3), dtype=np.uint8) for _ in range(4)]
        result = model.predict(frames, "the man riding a bike", progress=False)
        assert result.masks.shape == (4, 72, 108) and result.masks.dtype == torch.bool
        assert result.scores.shape == (4,) and bool(((result.scores >= 0) & (result.scores <= 1)).all())

        from lvseg.video import write_video

        video = write_video(iter(frames), tmp_path / "clip.mp4", fps=4)
        out = tmp_path / "pred"
        assert main(["predict", str(video), "a dog jumping over the fence", "-m", "referformer-swin-l", "-o",
                     str(out), "--format", "png", "rle", "-q", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary[0]["text"] == "a dog jumping over the fence"
    assert len(list((out / "expression_0").glob("*.png"))) == 4
