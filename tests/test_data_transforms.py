"""Joint video/mask/box transforms and clip collation."""

from __future__ import annotations

import pickle
import random

import pytest
import torch

from lvseg.data import ClipCollator, collate_clips
from lvseg.data import transforms as T
from lvseg.data._common import target_fields
from lvseg.errors import InvalidInputError


def _sample(t: int = 3, h: int = 20, w: int = 30, text: str = "the dog on the left of the bright car") -> dict:
    frames = torch.zeros((t, h, w, 3), dtype=torch.uint8)
    masks = torch.zeros((t, h, w), dtype=torch.bool)
    for i in range(t):
        frames[i, :, :, 0] = 10 * i  # frame identity in the red channel
        frames[i, :, : w // 2, 1] = 200  # left half green
        if i != 1:  # object absent in frame 1
            masks[i, 2:8, 1 + i:6 + i] = True
    s = {"frames": frames, "text": text, "video": "v", "orig_size": torch.tensor([h, w])}
    s.update(target_fields(masks))
    s["object_masks"] = masks[None].clone()
    return s


def test_resized_size_matches_detr_arithmetic() -> None:
    assert T.resized_size(480, 854, 360, 640) == (360, 640)
    assert T.resized_size(720, 1280, 360, 640) == (360, 640)
    assert T.resized_size(240, 320, 320, 576) == (320, 426)  # int() truncation of the long side
    assert T.resized_size(100, 1000, 360, 640) == (64, 640)  # capped long side, rounded short side
    assert T.resized_size(360, 500, 360, None) == (360, 500)  # already there: untouched
    assert T.resized_size(500, 300, 200, None) == (333, 200)  # portrait


def test_resize_keeps_frames_masks_boxes_consistent() -> None:
    s = _sample(h=20, w=30)
    out = T.ResizeShortSide(40, 100)(s)
    assert out["frames"].shape == (3, 40, 60, 3) and out["frames"].dtype == torch.uint8
    assert out["masks"].shape == (3, 40, 60) and out["masks"].dtype == torch.bool
    assert out["object_masks"].shape == (1, 3, 40, 60)
    assert torch.equal(out["masks"][:, ::2, ::2], s["masks"])  # nearest x2
    assert torch.allclose(out["boxes"], s["boxes"] * 2)
    assert out["boxes"][1].tolist() == [0, 0, 0, 0] and not out["valid"][1]
    assert out["size"].tolist() == [40, 60] and out["orig_size"].tolist() == [20, 30]
    assert [int(v) for v in out["frames"][:, 5, 5, 0]] == [0, 10, 20]  # same resize on every frame, order kept
    assert s["frames"].shape == (3, 20, 30, 3)  # input not modified


def test_flip_mirrors_everything_and_swaps_left_right() -> None:
    s = _sample()
    out = T.RandomHorizontalFlip(p=1.0)(s)
    assert torch.equal(out["frames"], s["frames"].flip(2))
    assert torch.equal(out["masks"], s["masks"].flip(2))
    x1, y1, x2, y2 = s["boxes"][0].tolist()
    assert out["boxes"][0].tolist() == [30 - x2, y1, 30 - x1, y2]
    assert out["boxes"][1].tolist() == [0, 0, 0, 0]
    assert out["text"] == "the dog on the right of the bright car"
    assert T.swap_left_right("Left of the rightmost LEFT") == "Right of the leftmost RIGHT"
    assert T.RandomHorizontalFlip(p=0.0)(s) is s


def test_crop_recomputes_validity_and_color_jitter_is_shared_by_frames() -> None:
    random.seed(3)
    s = _sample(h=40, w=40)
    out = T.RandomSizeCrop(10, 10)(s)
    assert out["frames"].shape == (3, 10, 10, 3) and out["masks"].shape == (3, 10, 10)
    for i in range(3):
        assert bool(out["valid"][i]) == bool(out["masks"][i].any())
    # same colour change on every frame: frames that were identical stay identical
    same = torch.full((4, 8, 8, 3), 100, dtype=torch.uint8)
    same[..., 1] = 30
    torch.manual_seed(0)
    j = T.ColorJitter(0.5, 0.5, 0.5, 0.1)({"frames": same})
    assert all(torch.equal(j["frames"][0], j["frames"][k]) for k in range(1, 4))
    assert not torch.equal(j["frames"], same)


def test_normalize_and_presets() -> None:
    s = _sample()
    out = T.Normalize()(s)
    assert out["frames"].shape == (3, 3, 20, 30) and out["frames"].dtype == torch.float32
    expected = (10 / 255 - T.IMAGENET_MEAN[0]) / T.IMAGENET_STD[0]
    assert out["frames"][1, 0, 0, 0].item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(InvalidInputError, match="already floating point"):
        T.Normalize()(out)
    random.seed(0)
    torch.manual_seed(0)
    s = _sample(h=48, w=64, text="  The  Man   on the LEFT ")
    tr = T.train_transforms(max_size=96, scales=[32, 48])(s)
    assert tr["frames"].dtype == torch.float32 and tr["frames"].shape[1] == 3
    assert tr["masks"].shape[-2:] == tr["frames"].shape[-2:] and max(tr["frames"].shape[-2:]) <= 96
    assert tr["text"] in ("the man on the left", "the man on the right")
    ev = T.eval_transforms(24, 40)(s)
    assert ev["frames"].shape == (3, 3, 24, 32) and ev["text"] == "the man on the left"


def test_collate_pads_clips_of_different_length_and_size() -> None:
    a = T.Normalize()(_sample(t=3, h=20, w=30))
    b = T.Normalize()(_sample(t=2, h=25, w=10, text="x"))
    batch = collate_clips([a, b], size_divisibility=8)
    assert batch["frames"].shape == (2, 3, 3, 32, 32)
    assert batch["padding_mask"].shape == (2, 3, 32, 32)
    assert not batch["padding_mask"][0, 0, :20, :30].any() and batch["padding_mask"][0, 0, 20:].all()
    assert batch["padding_mask"][1, 2].all()  # padded frame
    assert batch["frame_mask"].tolist() == [[True, True, True], [True, True, False]]
    assert torch.equal(batch["frames"][1, :2, :, :25, :10], b["frames"])
    assert batch["frames"][1, :, :, 25:].abs().sum() == 0
    assert torch.equal(batch["masks"][0, :, :20, :30], a["masks"]) and not batch["masks"][:, :, 25:].any()
    assert batch["valid"].tolist() == [[True, False, True], [True, False, False]]
    assert batch["boxes"].shape == (2, 3, 4) and batch["size"].tolist() == [[20, 30], [25, 10]]
    assert batch["text"] == [a["text"], "x"] and batch["video"] == ["v", "v"]
    assert [m.shape for m in batch["object_masks"]] == [(1, 3, 32, 32)] * 2
    raw = collate_clips([_sample(t=2, h=5, w=6), _sample(t=1, h=7, w=4)])
    assert raw["frames"].shape == (2, 2, 7, 6, 3) and raw["frames"].dtype == torch.uint8
    no_gt = {k: v for k, v in _sample().items() if k not in ("masks", "object_masks", "boxes", "valid", "annotated")}
    with pytest.raises(InvalidInputError, match="ground truth"):
        collate_clips([_sample(), no_gt])
    with pytest.raises(InvalidInputError, match="same kind"):
        collate_clips([_sample(), a])
    collator = pickle.loads(pickle.dumps(ClipCollator(4)))
    assert collator([a])["frames"].shape == (1, 3, 3, 20, 32)


def test_redraw_invisible_replaces_clips_without_the_object():
    from lvseg.data import RedrawInvisible
    from lvseg.errors import DatasetError

    class Clips(torch.utils.data.Dataset):
        def __init__(self, visible):
            self.visible = visible

        def __len__(self):
            return len(self.visible)

        def __getitem__(self, i):
            return {"index": i, "valid": torch.tensor([self.visible[i], False])}

    visible = [False, True, False, True, True, False]
    ds = RedrawInvisible(Clips(visible))
    assert len(ds) == 6 and ds[1]["index"] == 1  # a visible clip is returned as it is
    random.seed(0)
    drawn = [ds[0]["index"] for _ in range(30)]
    assert all(visible[i] for i in drawn) and len(set(drawn)) > 1  # random visible replacements
    random.seed(0)
    assert [ds[0]["index"] for _ in range(30)] == drawn  # reproducible under the caller's seed
    with pytest.raises(DatasetError, match="no sample with a visible"):
        RedrawInvisible(Clips([False] * 3), max_draws=5)[0]
    with pytest.raises(DatasetError, match="empty"):
        RedrawInvisible(Clips([]))
