"""A2D-Sentences (csv, txt, transposed .h5 masks, mp4 clips) and JHMDB-Sentences (.mat puppet masks)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import scipy.io
import torch

from data_fixtures import frame, save_png_rgb
from lvseg.data import A2DSentences, JHMDBSentences
from lvseg.data._jhmdb_frames import MTTR_EVAL_FRAMES
from lvseg.errors import DatasetError, InvalidInputError

h5py = pytest.importorskip("h5py")

H, W, N_FRAMES = 32, 48, 12


def _write_mp4(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"qscale": "2"}
        for t in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame(H, W, 20 * t), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _inst_mask(inst: int, f: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[inst * 3: inst * 3 + 6, f: f + 10] = 1
    return m


def _write_h5(path: Path, instances: list[int], f: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    masks = np.stack([_inst_mask(i, f) for i in instances])  # [N, H, W]
    stored = masks.transpose(0, 2, 1)  # MATLAB layout (N, W, H)
    if len(instances) == 1:
        stored = stored[0]  # a single instance is a 2-D (W, H) array
    with h5py.File(path, "w") as h:
        h["instance"] = np.array(instances, dtype=np.float64)
        h["reMask"] = stored
        h["reBBox"] = np.array([[f, i * 3, f + 9, i * 3 + 5] for i in instances], dtype=np.float64).T


def write_a2d(root: Path) -> None:
    rel = root / "Release"
    rel.mkdir(parents=True)
    rows = [("vidA", 1), ("vidB", 1), ("vidC", 0), ("T6bNPuKV-wY", 1), ("vidMissed", 1)]
    (rel / "videoset.csv").write_text("".join(f"{v},11,0,1,{H},{W},{N_FRAMES},3,{s}\n" for v, s in rows))
    ta = root / "text_annotations"
    ta.mkdir()
    (ta / "a2d_missed_videos.txt").write_text("vidMissed\n")
    (ta / "a2d_annotation.txt").write_text(
        "video_id,instance_id,query\n"
        "vidA,1,Man jumping on the left\n"
        "vidA,2,\"a dog, running\"\n"
        "vidB,0,the señor walking\n"
        "vidC,1,train video\n"
        "T6bNPuKV-wY,1 (copy),the bad row\n"
        "T6bNPuKV-wY,0,a good row\n"
        "vidMissed,0,never used\n", encoding="utf-8")
    inst = ta / "a2d_annotation_with_instances"
    _write_h5(inst / "vidA/00002.h5", [1, 2], 2)
    _write_h5(inst / "vidA/00010.h5", [1], 10)  # instance 2 absent here -> not a sample
    _write_h5(inst / "vidB/00001.h5", [0], 1)
    _write_h5(inst / "vidC/00005.h5", [1], 5)
    _write_h5(inst / "T6bNPuKV-wY/00006.h5", [0, 1], 6)
    for v in ("vidA", "vidB", "vidC", "T6bNPuKV-wY"):
        _write_mp4(rel / "clips320H" / f"{v}.mp4", N_FRAMES)


def test_a2d_samples_follow_mttr_rules(tmp_path: Path) -> None:
    write_a2d(tmp_path)
    cache = tmp_path / "cache.json"
    ds = A2DSentences(tmp_path, "test", num_frames=4, index_cache=cache)
    assert ds.samples == [("Man jumping on the left", "vidA", 2, 1), ("Man jumping on the left", "vidA", 10, 1),
                          ("a dog, running", "vidA", 2, 2), ("the señor walking", "vidB", 1, 0),
                          ("a good row", "T6bNPuKV-wY", 6, 0)]
    assert json.loads(cache.read_text())[0] == ["Man jumping on the left", "vidA", 2, 1]
    s = ds[2]  # instance 2 of vidA at frame 2 (1-based)
    assert s["image_id"] == "v_vidA_f_2_i_2" and s["text"] == "a dog, running"
    assert s["frame_indices"].tolist() == [0, 0, 1, 2] and s["center_index"] == 2  # clamped at the start
    assert s["frames"].shape == (4, H, W, 3)
    assert [int(v) for v in s["frames"][:, 16, 24, 0]] == pytest.approx([0, 0, 20, 40], abs=6)
    assert s["annotated"].tolist() == [False, False, True, False]
    assert torch.equal(s["masks"][2], torch.from_numpy(_inst_mask(2, 2).astype(bool)))
    assert not s["masks"][[0, 1, 3]].any() and s["valid"].tolist() == [False, False, True, False]
    assert s["ref_box"].tolist() == [2, 6, 11, 11]
    s1 = ds[1]  # single-instance (2-D) h5, near the end of the video
    assert torch.equal(s1["masks"][s1["center_index"]], torch.from_numpy(_inst_mask(1, 10).astype(bool)))
    assert s1["frame_indices"].tolist() == [7, 8, 9, 10]
    train = A2DSentences(tmp_path, "train", num_frames=1)
    assert [x[1] for x in train.samples] == ["vidC"] and train[0]["frames"].shape[0] == 1
    # the cache is reused as is
    cache.write_text(json.dumps([["cached", "vidB", 1, 0]]))
    assert A2DSentences(tmp_path, "test", index_cache=cache).samples == [("cached", "vidB", 1, 0)]


def test_a2d_frames_dir_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_a2d(tmp_path)
    fd = tmp_path / "Release/pngs320H"
    for t in range(N_FRAMES):
        save_png_rgb(fd / "vidB" / f"{t + 1:05d}.png", frame(H, W, 20 * t))
    ds = A2DSentences(tmp_path, "test", num_frames=3, frames_dir=fd)
    s = ds[3]
    assert s["video"] == "vidB" and s["frame_indices"].tolist() == [0, 0, 1]
    assert s["frames"][:, 0, 0, 0].tolist() == [0, 0, 20]  # lossless PNG frames
    (tmp_path / "Release/clips320H/vidB.mp4").unlink()
    with pytest.raises(DatasetError, match=r"clips320H/vidB\.mp4"):
        A2DSentences(tmp_path, "test")
    with pytest.raises(InvalidInputError):
        A2DSentences(tmp_path, "valid")
    monkeypatch.setitem(sys.modules, "h5py", None)  # simulate h5py not installed
    with pytest.raises(DatasetError, match="pip install h5py"):
        A2DSentences(tmp_path, "test", frames_dir=fd)


JH, JW = 24, 32


def write_jhmdb(root: Path, videos: dict[str, tuple[str, int, int]]) -> None:
    """videos: {video: (action, number of pngs, number of masks)}."""
    lines = ["video_id,query"]
    for video, (action, n_png, n_mask) in videos.items():
        for t in range(n_png):
            save_png_rgb(root / "Rename_Images" / action / video / f"{t + 1:05d}.png", frame(JH, JW, 10 * t))
        masks = np.zeros((JH, JW, n_mask), dtype=np.uint8)
        for k in range(n_mask):
            masks[2:10, k: k + 6, k] = 1
        (root / "puppet_mask" / action / video).mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(str(root / "puppet_mask" / action / video / "puppet_mask.mat"), {"part_mask": masks})
        lines.append(f"{video},\"the man, {action}ing\"")
    (root / "jhmdb_annotation.txt").write_text("\n".join(lines) + "\n")


def test_jhmdb_uses_mttr_frames_and_reads_mat_masks(tmp_path: Path) -> None:
    video = "100_pullups_pullup_f_nm_np1_fr_med_1"
    action, frames = MTTR_EVAL_FRAMES[video]
    assert (action, frames) == ("pullup", (2, 8, 18))
    write_jhmdb(tmp_path, {video: (action, 40, 38)})
    ds = JHMDBSentences(tmp_path, num_frames=3)
    assert [s[2] for s in ds.samples] == [2, 8, 18]
    s = ds[1]
    assert s["image_id"] == f"v_{video}_f_8" and s["text"] == "the man, pulluping" and s["action"] == "pullup"
    assert s["frame_indices"].tolist() == [6, 7, 8] and s["frames"][:, 0, 0, 0].tolist() == [60, 70, 80]
    expected = np.zeros((JH, JW), bool)
    expected[2:10, 7:13] = True  # mask index 7 <-> frame 8
    assert torch.equal(s["masks"][1], torch.from_numpy(expected)) and s["annotated"].tolist() == [False, True, False]
    assert len(MTTR_EVAL_FRAMES) == 928 and all(len(f) == 3 for _, f in MTTR_EVAL_FRAMES.values())


def test_jhmdb_all_frames_clamps_to_masks_and_errors(tmp_path: Path) -> None:
    write_jhmdb(tmp_path, {"my_video": ("wave", 6, 4)})  # 6 frames but only 4 masks
    with pytest.raises(DatasetError, match="MTTR's evaluation list"):
        JHMDBSentences(tmp_path)
    ds = JHMDBSentences(tmp_path, eval_frames="all", num_frames=4)
    assert [s[2] for s in ds.samples] == [1, 2, 3, 4]
    assert ds[3]["frame_indices"].tolist() == [1, 2, 3, 3]  # clamped to the last masked frame
    shutil.rmtree(tmp_path / "puppet_mask")
    with pytest.raises(DatasetError, match="puppet_mask.mat"):
        JHMDBSentences(tmp_path, eval_frames="all")
    with pytest.raises(InvalidInputError):
        JHMDBSentences(tmp_path, "train")
