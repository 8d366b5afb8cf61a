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


# ---- PhotometricDistort (ReferFormer's SSD-style distortion) ----------------------------------------------------


def _np_bgr2hsv(img):
    """Independent NumPy version of OpenCV's float BGR->HSV (channel 0 = blue), H in degrees."""
    import numpy as np

    b, g, r = img[..., 0], img[..., 1], img[..., 2]
    v, vmin = img.max(-1), img.min(-1)
    diff = v - vmin
    s = diff / (np.abs(v) + 1.1920929e-07)
    k = 60.0 / (diff + 1.1920929e-07)
    h = np.where(v == r, (g - b) * k, np.where(v == g, (b - r) * k + 120.0, (r - g) * k + 240.0))
    return np.stack([np.where(h < 0, h + 360.0, h), s, v], -1)


def _np_hsv2bgr(hsv):
    import numpy as np

    h, s, v = hsv[..., 0] / 60.0 % 6.0, hsv[..., 1], hsv[..., 2]
    sector, f = np.floor(h).astype(int), h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = {0: (p, t, v), 1: (p, v, q), 2: (t, v, p), 3: (v, q, p), 4: (v, p, t), 5: (q, p, v)}  # (b, g, r)
    out = np.zeros(hsv.shape)
    for k, (bb, gg, rr) in table.items():
        m = sector == k
        out[m] = np.stack([bb, gg, rr], -1)[m]
    return out


def _np_official(img, p):
    """The official PhotometricDistort formula for one HWC frame and forced choices, in float64 NumPy."""
    import numpy as np

    x = img.astype(np.float64)
    if p.brightness is not None:
        x = x + p.brightness
    if p.contrast_first and p.contrast is not None:
        x = x * p.contrast
    hsv = _np_bgr2hsv(x)
    if p.saturation is not None:
        hsv[..., 1] *= p.saturation
    if p.hue is not None:
        hsv[..., 0] += p.hue
        hsv[..., 0][hsv[..., 0] > 360.0] -= 360.0
        hsv[..., 0][hsv[..., 0] < 0.0] += 360.0
    x = _np_hsv2bgr(hsv)
    if not p.contrast_first and p.contrast is not None:
        x = x * p.contrast
    if p.channel_order is not None:
        x = x[..., list(p.channel_order)]
    return x


def _colour_clip(t: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, 256, (t, 9, 11, 3), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("params", [
    T.PhotometricParams(),
    T.PhotometricParams(brightness=-25.5),
    T.PhotometricParams(contrast_first=True, contrast=1.37),
    T.PhotometricParams(contrast_first=False, contrast=0.61, brightness=12.0),
    T.PhotometricParams(saturation=1.45),
    T.PhotometricParams(saturation=0.55, hue=-17.0),
    T.PhotometricParams(hue=17.5),
    T.PhotometricParams(channel_order=(2, 0, 1)),
    T.PhotometricParams(brightness=31.0, contrast_first=True, contrast=1.5, saturation=1.5, hue=18.0,
                        channel_order=(1, 2, 0)),
    T.PhotometricParams(brightness=-32.0, contrast_first=False, contrast=1.5, saturation=1.5, hue=-18.0),
])
def test_photometric_ops_match_an_independent_numpy_formula(params: T.PhotometricParams) -> None:
    import numpy as np

    frame = _colour_clip(1)[0]
    got = T.PhotometricDistort.apply(frame.permute(2, 0, 1), params).permute(1, 2, 0).double().numpy()
    want = _np_official(frame.numpy(), params)
    assert np.allclose(got, want, rtol=0, atol=2e-3)
    # uint8: truncation toward zero and wrap modulo 256, like NumPy's astype('uint8') of the official code
    w32 = (want * 1.7 - 60.0).astype(np.float32)  # spread beyond [0, 255] to exercise the wrap
    u8 = T.PhotometricDistort().to_uint8(torch.from_numpy(w32).permute(2, 0, 1)).permute(1, 2, 0)
    assert torch.equal(u8, torch.from_numpy(np.trunc(w32).astype(np.int64) % 256).to(torch.uint8))


def test_photometric_quirks_hue_direction_and_uint8_wrap() -> None:
    # RGB frames read as BGR: a +d hue shift turns the true hue by -d (pure red drifts towards magenta/blue)
    red = torch.tensor([255.0, 0.0, 0.0]).view(3, 1, 1)
    out = T.PhotometricDistort.apply(red, T.PhotometricParams(hue=18.0)).flatten().tolist()
    assert out[0] == pytest.approx(255.0) and out[1] == pytest.approx(0.0, abs=1e-3) and out[2] > 50
    # hue wraps: the hue of this pixel (read as BGR) is ~350 degrees; +18 lands at ~8 degrees, as a hue change
    px = torch.tensor([10.0, 0.0, 255.0]).view(3, 1, 1)  # B=10, R=255 as OpenCV reads it
    hsv = T._bgr_to_hsv(px)
    assert 0 <= float(hsv[0]) <= 360
    shifted = T.PhotometricDistort.apply(px, T.PhotometricParams(hue=-18.0))
    assert torch.all(shifted >= -1e-3) and torch.all(shifted <= 255.001)
    # values out of range are not clipped before the cast: 255 + 20 wraps to 19, 0 - 20 to 236
    pd = T.PhotometricDistort()
    bright = pd.to_uint8(torch.tensor([275.5, -19.5, 128.9]).view(3, 1, 1)).flatten().tolist()
    assert bright == [19, 237, 128]
    clip = T.PhotometricDistort(overflow="clip").to_uint8(torch.tensor([275.5, -19.5, 128.9]).view(3, 1, 1))
    assert clip.flatten().tolist() == [255, 0, 128]


def test_photometric_distort_draws_per_frame_and_is_deterministic() -> None:
    s = _sample(t=4, h=12, w=14)
    s["frames"] = _colour_clip(1).expand(4, -1, -1, -1)[:, :, :, :].repeat(1, 2, 2, 1)[:, :12, :14].contiguous()
    pd = T.PhotometricDistort()
    random.seed(11)
    a = pd(s)
    random.seed(11)
    b = pd(s)
    assert torch.equal(a["frames"], b["frames"])
    assert a["frames"].dtype == torch.uint8 and a["frames"].shape == s["frames"].shape
    # identical input frames come out different: every frame has its own draws, as in the official loop
    assert len({a["frames"][i].numpy().tobytes() for i in range(4)}) > 1
    random.seed(11)
    draws = [pd.draw() for _ in range(4)]
    for i in range(4):
        want = pd.to_uint8(T.PhotometricDistort.apply(s["frames"][i].permute(2, 0, 1), draws[i])).permute(1, 2, 0)
        assert torch.equal(a["frames"][i], want)
    for key in ("masks", "object_masks", "boxes", "valid", "text", "orig_size"):
        assert torch.equal(a[key], s[key]) if isinstance(s[key], torch.Tensor) else a[key] == s[key]
    # float [T, 3, H, W] frames in [0, 1] stay float channels-first, same draws, no uint8 rounding
    f = {"frames": s["frames"].permute(0, 3, 1, 2).float() / 255.0}
    random.seed(11)
    out = pd(f)["frames"]
    assert out.dtype == torch.float32 and out.shape == f["frames"].shape
    want = T.PhotometricDistort.apply(s["frames"][0].permute(2, 0, 1), draws[0]) / 255.0
    assert torch.allclose(out[0], want, atol=1e-5)


def test_photometric_draw_probabilities_and_ranges() -> None:
    random.seed(0)
    pd = T.PhotometricDistort()
    draws = [pd.draw() for _ in range(4000)]
    for name in ("brightness", "contrast", "saturation", "hue", "channel_order"):
        rate = sum(getattr(d, name) is not None for d in draws) / len(draws)
        assert 0.46 < rate < 0.54, name
    assert 0.46 < sum(d.contrast_first for d in draws) / len(draws) < 0.54
    assert all(-32 <= d.brightness <= 32 for d in draws if d.brightness is not None)
    assert all(0.5 <= d.contrast <= 1.5 for d in draws if d.contrast is not None)
    assert all(-18 <= d.hue <= 18 for d in draws if d.hue is not None)
    assert len({d.channel_order for d in draws if d.channel_order is not None}) == 6
    with pytest.raises(InvalidInputError, match="overflow"):
        T.PhotometricDistort(overflow="saturate")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="photometric"):
        T.train_transforms(photometric="color")  # type: ignore[arg-type]


def test_train_transforms_photometric_choice() -> None:
    kinds = lambda c: [type(t).__name__ for t in c.transforms]  # noqa: E731
    assert kinds(T.train_transforms())[:3] == ["CleanText", "RandomHorizontalFlip", "PhotometricDistort"]
    assert "ColorJitter" in kinds(T.train_transforms(photometric="jitter"))
    none = kinds(T.train_transforms(photometric=None))
    assert "ColorJitter" not in none and "PhotometricDistort" not in none


# Golden values: ReferFormer's PhotometricDistort op sequence (commit 06fc218, datasets/transforms_video.py) run with
# OpenCV (opencv-python-headless 5.0.0, cv2.cvtColor on float32) and NumPy's astype('uint8') on this 2x8 image,
# with the random choices forced as below. 16 pixels: OpenCV's vectorised path covers them all.
_GOLDEN_IMAGE = [[[128, 128, 128], [255, 0, 0], [0, 0, 255], [1, 43, 139], [250, 250, 5], [40, 177, 188],
                  [8, 29, 115], [100, 227, 132]],
                 [[107, 110, 170], [150, 44, 188], [193, 244, 201], [72, 81, 166], [166, 178, 222], [74, 240, 0],
                  [19, 249, 241], [76, 35, 80]]]
_GOLDEN = [
    (T.PhotometricParams(),
     [[[128, 128, 128], [255, 0, 0], [0, 0, 255], [0, 42, 139], [250, 249, 4], [39, 177, 188], [8, 29, 115],
       [100, 227, 131]],
      [[107, 110, 170], [149, 43, 188], [193, 244, 201], [72, 81, 166], [166, 178, 222], [74, 240, 0],
       [18, 249, 240], [75, 35, 80]]]),
    (T.PhotometricParams(brightness=21.5, contrast_first=True, contrast=1.31, saturation=1.42, hue=-12.25,
                         channel_order=(2, 0, 1)),
     [[[195, 195, 195], [144, 106, 241], [106, 241, 144], [210, 210, 236], [156, 6, 99], [18, 0, 197],
       [178, 238, 236], [197, 89, 69]],
      [[250, 152, 133], [18, 2, 6], [31, 252, 91], [245, 89, 70], [62, 214, 215], [153, 199, 86], [98, 183, 25],
       [123, 132, 49]]]),
    (T.PhotometricParams(brightness=-30.0, contrast_first=False, contrast=1.45, saturation=0.6, hue=17.5),
     [[[142, 142, 142], [70, 104, 169], [104, 169, 70], [37, 109, 158], [63, 0, 105], [100, 229, 201],
       [30, 75, 123], [179, 29, 175]],
      [[148, 166, 203], [159, 103, 229], [15, 54, 9], [115, 147, 197], [229, 254, 22], [220, 48, 95],
       [117, 61, 252], [57, 33, 72]]]),
    (T.PhotometricParams(brightness=31.0, contrast_first=True, contrast=1.5, saturation=1.5, hue=18.0,
                         channel_order=(1, 2, 0)),
     [[[238, 238, 238], [112, 27, 173], [27, 173, 112], [132, 255, 201], [0, 127, 165], [72, 253, 252],
       [97, 219, 235], [131, 101, 114]],
      [[209, 45, 159], [4, 72, 145], [156, 41, 58], [167, 39, 84], [62, 123, 253], [150, 123, 195],
       [164, 246, 159], [65, 166, 127]]]),
]


@pytest.mark.parametrize("case", range(len(_GOLDEN)))
def test_photometric_distort_matches_opencv_golden_values(case: int) -> None:
    params, want = _GOLDEN[case]
    image = torch.tensor(_GOLDEN_IMAGE, dtype=torch.uint8)
    got = T.PhotometricDistort().to_uint8(T.PhotometricDistort.apply(image.permute(2, 0, 1), params))
    assert got.permute(1, 2, 0).tolist() == want
