"""RefYouTubeVOS on a miniature dataset written in the official layout, with the awkward cases."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from data_fixtures import frame, id_map, save_jpg, save_palette_png, write_json
from lvseg.data import ClipSampling, RefYouTubeVOS, sample_frame_indices
from lvseg.errors import DatasetError, InvalidInputError

H, W = 24, 32
FRAMES = ["00000", "00005", "00010", "00015"]


def _boxes(t: int) -> dict[int, tuple[int, int, int, int]]:
    # object 1 in every frame; object 2 only in frames 1 and 3; object 3 (never referred) in frame 0
    b = {1: (2, 10, 3 + t, 12 + t)}
    if t in (1, 3):
        b[2] = (12, 20, 20, 30)
    if t == 0:
        b[3] = (15, 18, 0, 4)
    return b


def write_ytvos(root: Path) -> None:
    train = {
        "vid_a": {"expressions": {"0": {"exp": "a person riding a bike", "obj_id": "1"},
                                  "1": {"exp": "der Hund läuft nach links", "obj_id": "2"}},  # non-ASCII text
                  "frames": list(reversed(FRAMES))},  # unsorted on purpose: loaders sort
        "vid_b": {"expressions": {"0": {"exp": "the cat", "obj_id": "1"}}, "frames": FRAMES[:2]},
    }
    for vid, entry in train.items():
        for t, name in enumerate(sorted(entry["frames"])):
            save_jpg(root / "train/JPEGImages" / vid / f"{name}.jpg", frame(H, W, 40 * t + len(vid)))
            save_palette_png(root / "train/Annotations" / vid / f"{name}.png", id_map(H, W, _boxes(t)))
    write_json(root / "meta_expressions/train/meta_expressions.json", {"videos": train})
    valid = {"vid_v": {"expressions": {"0": {"exp": "the left dog"}}, "frames": FRAMES[:3]},
             "vid_t": {"expressions": {"0": {"exp": "a test video"}}, "frames": FRAMES[:2]}}
    for vid, entry in valid.items():
        for t, name in enumerate(entry["frames"]):
            save_jpg(root / "valid/JPEGImages" / vid / f"{name}.jpg", frame(H, W, t))
    write_json(root / "meta_expressions/valid/meta_expressions.json", {"videos": valid})
    write_json(root / "meta_expressions/test/meta_expressions.json",
               {"videos": {"vid_t": valid["vid_t"]}})


@pytest.fixture()
def ytvos_root(tmp_path: Path) -> Path:
    write_ytvos(tmp_path)
    return tmp_path


def test_train_samples_carry_the_encoded_masks_and_texts(ytvos_root: Path) -> None:
    ds = RefYouTubeVOS(ytvos_root, "train")
    assert len(ds) == 3
    by_key = {(ds[i]["video"], ds[i]["exp_id"]): ds[i] for i in range(len(ds))}
    s = by_key[("vid_a", "0")]
    assert s["text"] == "a person riding a bike"
    assert s["frame_ids"] == FRAMES
    assert s["frames"].dtype == torch.uint8 and s["frames"].shape == (4, H, W, 3)
    # frame t was written with red channel 40*t + 5 (JPEG: tolerance)
    assert [int(v) for v in s["frames"][:, 5, 5, 0]] == pytest.approx([5, 45, 85, 125], abs=3)
    expect = np.stack([id_map(H, W, _boxes(t)) == 1 for t in range(4)])
    assert s["masks"].dtype == torch.bool and torch.equal(s["masks"], torch.from_numpy(expect))
    assert s["boxes"][2].tolist() == [5.0, 2.0, 13.0, 9.0]  # x1, y1, x2, y2 with inclusive last pixel
    assert s["valid"].all() and s["annotated"].all() and s["obj_ids"] == [1]
    assert s["orig_size"].tolist() == [H, W]

    s2 = by_key[("vid_a", "1")]
    assert s2["text"] == "der Hund läuft nach links"
    assert s2["valid"].tolist() == [False, True, False, True]  # object absent in some frames
    assert s2["boxes"][0].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert s2["object_masks"].shape == (1, 4, H, W)


def test_clip_sampling_modes(ytvos_root: Path) -> None:
    ds = RefYouTubeVOS(ytvos_root, "train", sampling=ClipSampling(num_frames=2, stride=2, mode="fixed"))
    # anchors 0, 2 for the 4-frame video (2 expressions) and 0 for the 2-frame one
    assert len(ds) == 5
    assert [ds[i]["frame_indices"].tolist() for i in range(2)] == [[0, 2], [2, 3]]
    random.seed(0)
    rf = ClipSampling(num_frames=5, mode="referformer")
    for anchor in range(10):
        idx = sample_frame_indices(10, anchor, rf)
        assert len(idx) == 5 and anchor in idx and idx == sorted(idx)
    short = sample_frame_indices(2, 0, rf)
    assert len(short) == 5 and set(short) == {0, 1}
    rnd = ClipSampling(num_frames=3, stride=2, mode="random")
    for _ in range(20):
        idx = sample_frame_indices(10, 0, rnd)
        assert np.all(np.diff(idx) == 2)
    assert sample_frame_indices(2, 0, ClipSampling(3)) == [0, 1, 1]
    with pytest.raises(InvalidInputError):
        ClipSampling(num_frames=0)


def test_valid_drops_competition_test_videos_and_has_no_masks(ytvos_root: Path) -> None:
    ds = RefYouTubeVOS(ytvos_root, "val")
    assert ds.split == "valid" and [s[0] for s in ds.samples] == ["vid_v"]
    s = ds[0]
    assert s["text"] == "the left dog" and s["frames"].shape == (3, H, W, 3)
    assert "masks" not in s and not ds.has_ground_truth
    test = RefYouTubeVOS(ytvos_root, "test")  # frames live in valid/JPEGImages, as in the competition
    assert [s[0] for s in test.samples] == ["vid_t"] and test[0]["frames"].shape[0] == 2


def test_valid_with_507_videos_needs_the_test_list(tmp_path: Path) -> None:
    videos = {f"v{i:03d}": {"expressions": {"0": {"exp": "x"}}, "frames": ["00000"]} for i in range(507)}
    write_json(tmp_path / "meta_expressions/valid/meta_expressions.json", {"videos": videos})
    (tmp_path / "valid/JPEGImages").mkdir(parents=True)
    with pytest.raises(DatasetError, match="meta_expressions/test/meta_expressions.json"):
        RefYouTubeVOS(tmp_path, "valid")


def test_missing_video_folder_and_missing_frame_name_the_path(ytvos_root: Path) -> None:
    import shutil
    shutil.rmtree(ytvos_root / "train/JPEGImages/vid_b")
    with pytest.raises(DatasetError, match=r"vid_b"):
        RefYouTubeVOS(ytvos_root, "train")
    write_ytvos(ytvos_root)
    (ytvos_root / "train/JPEGImages/vid_a/00010.jpg").unlink()  # listed in the json, missing on disk
    ds = RefYouTubeVOS(ytvos_root, "train")
    with pytest.raises(DatasetError, match=r"vid_a/00010\.jpg"):
        ds[0]
    (ytvos_root / "train/JPEGImages/vid_a/00010.jpg").touch()
    write_ytvos(ytvos_root)
    (ytvos_root / "train/Annotations/vid_a/00005.png").unlink()
    with pytest.raises(DatasetError, match=r"vid_a/00005\.png"):
        ds[0]


def test_bad_arguments_and_layouts(ytvos_root: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="valid"):
        RefYouTubeVOS(ytvos_root, "training")
    with pytest.raises(DatasetError, match="root"):
        RefYouTubeVOS(tmp_path / "nope", "train")
    (ytvos_root / "meta_expressions/train/meta_expressions.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        RefYouTubeVOS(ytvos_root, "train")
    with pytest.raises(DatasetError, match="ground-truth folder"):
        RefYouTubeVOS(ytvos_root, "valid", gt_root=tmp_path / "missing_gt")


def test_transform_is_applied(ytvos_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lvseg.data"):
        ds = RefYouTubeVOS(ytvos_root, "train", transform=lambda s: {**s, "text": s["text"].upper()})
    assert ds[0]["text"] == "A PERSON RIDING A BIKE"
    assert any("samples" in r.message for r in caplog.records)
