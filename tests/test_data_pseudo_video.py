"""RefCOCO pseudo-videos (ReferFormer's refexp2seq.py): lvseg.data.PseudoVideo and its per-copy augmentation."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from data_fixtures import save_png_rgb, write_json
from lvseg.data import PseudoVideo, RefCOCO
from lvseg.data import transforms as T
from lvseg.data.pseudo_video import ImageToClip, homography
from lvseg.errors import DatasetError, InvalidInputError

H, W = 48, 64
RED, BLUE = (220, 30, 30), (30, 40, 200)


def write_refcoco_colour(root: Path) -> None:
    """A REFER-layout RefCOCO with one image: a red square object on a blue background (lossless, saved under
    the .jpg name the layout demands; PIL reads it by content)."""
    img = np.zeros((H, W, 3), dtype=np.uint8)
    img[:] = BLUE
    img[12:36, 20:44] = RED
    save_png_rgb(root / "images/mscoco/images/train2014/COCO_train2014_000000000001.jpg", img)
    refs = [{"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "train", "category_id": 1,
             "sentences": [{"raw": "The red square on the left", "sent": "the red square on the left",
                            "sent_id": 100, "tokens": []},
                           {"raw": "red box", "sent": "red box", "sent_id": 101, "tokens": []}]}]
    (root / "refcoco").mkdir(parents=True)
    with open(root / "refcoco/refs(unc).p", "wb") as fh:
        pickle.dump(refs, fh, protocol=2)
    write_json(root / "refcoco/instances.json", {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": H, "width": W}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [20, 12, 24, 24],
                         "segmentation": [[20, 12, 44, 12, 44, 36, 20, 36]]}],
        "categories": [{"id": 1, "name": "thing"}]})


@pytest.fixture
def refcoco(tmp_path: Path) -> RefCOCO:
    write_refcoco_colour(tmp_path)
    return RefCOCO(tmp_path, "train")


def test_pseudo_video_format_frames_and_masks(refcoco: RefCOCO) -> None:
    random.seed(0)
    image = refcoco[0]
    s = PseudoVideo(refcoco, num_frames=5)[0]
    assert s["frames"].shape == (5, H, W, 3) and s["frames"].dtype == torch.uint8
    assert s["masks"].shape == (5, H, W) and s["masks"].dtype == torch.bool
    assert s["object_masks"].shape == (1, 5, H, W) and torch.equal(s["object_masks"][0], s["masks"])
    assert s["boxes"].shape == (5, 4) and s["boxes"].dtype == torch.float32
    assert s["valid"].shape == (5,) and s["annotated"].all()
    assert s["text"] == "The red square on the left" and s["sent_id"] == 100 and s["ref_id"] == 0
    assert sorted(s["frame_order"].tolist()) == [0, 1, 2, 3, 4]
    # exactly the untouched image sits at the position of copy 0; every augmented copy differs from it
    original = s["frame_order"].tolist().index(0)
    assert torch.equal(s["frames"][original], image["frames"][0])
    assert torch.equal(s["masks"][original], image["masks"][0])
    for t in range(5):
        if t != original:
            assert not torch.equal(s["frames"][t], image["frames"][0])
            assert not torch.equal(s["masks"][t], image["masks"][0])  # the geometry moved the object
    # masks move with the frames: the mask pixels still lie on the (red) object, the rest on the background
    for t in range(5):
        frame, mask = s["frames"][t].int(), s["masks"][t]
        assert mask.sum() > 100
        on = frame[mask]
        assert (on[:, 0] > on[:, 2]).float().mean() > 0.9
        inside = frame[:, :, 0] > frame[:, :, 2] + 60  # clearly red pixels
        assert (inside & ~mask).sum() < 0.1 * mask.sum()
        # boxes follow the masks
        ys, xs = torch.nonzero(mask, as_tuple=True)
        x1, y1, x2, y2 = s["boxes"][t].tolist()
        assert abs(x1 - xs.min().item()) <= 1 and abs(y1 - ys.min().item()) <= 1
        assert abs(x2 - xs.max().item()) <= 1 and abs(y2 - ys.max().item()) <= 1


def test_pseudo_video_is_deterministic_and_feeds_the_training_transforms(refcoco: RefCOCO) -> None:
    pv = PseudoVideo(refcoco, num_frames=3)
    random.seed(7)
    a = pv[1]
    random.seed(7)
    b = pv[1]
    assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["masks"], b["masks"])
    random.seed(8)
    assert not torch.equal(pv[1]["frames"], a["frames"])
    single = PseudoVideo(refcoco, num_frames=1)[0]
    assert single["frames"].shape[0] == 1 and torch.equal(single["frames"][0], refcoco[0]["frames"][0])
    random.seed(1)
    torch.manual_seed(1)
    tr = PseudoVideo(refcoco, num_frames=4, transform=T.train_transforms(max_size=96, scales=[32, 48]))[0]
    assert tr["frames"].dtype == torch.float32 and tr["frames"].shape[:2] == (4, 3)
    assert tr["masks"].shape[-2:] == tr["frames"].shape[-2:] and tr["text"].startswith("the red square on the")
    unshuffled = PseudoVideo(refcoco, num_frames=3, shuffle=False)[0]
    assert unshuffled["frame_order"].tolist() == [0, 1, 2]


def test_pseudo_video_rejects_bad_arguments(refcoco: RefCOCO, tmp_path: Path) -> None:
    for bad in (0, -2, 2.5, True):
        with pytest.raises(InvalidInputError, match="num_frames"):
            PseudoVideo(refcoco, num_frames=bad)  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="empty"):
        PseudoVideo([], num_frames=5)
    resized = RefCOCO(refcoco.root, "train", transform=T.Normalize())
    with pytest.raises(DatasetError, match="transform=None"):
        PseudoVideo(resized)[0]
    with pytest.raises(InvalidInputError, match="blur_kernels"):
        ImageToClip(blur_kernels=(8,))


def test_geometry_and_photometry_of_one_copy() -> None:
    # homography: the 4 point pairs are matched exactly
    src = torch.tensor([[3.0, 2.0], [60.0, 5.0], [58.0, 44.0], [1.0, 40.0]])
    dst = torch.tensor([[0.0, 0.0], [64.0, 0.0], [64.0, 48.0], [0.0, 48.0]])
    m = homography(src, dst)
    mapped = torch.cat([src.double(), torch.ones(4, 1, dtype=torch.float64)], 1) @ m.T
    assert torch.allclose(mapped[:, :2] / mapped[:, 2:], dst.double(), atol=1e-9)
    # motion-blur kernel: sums to 1; angle 0 is a vertical line with weights from (d+1)/2 to 1-(d+1)/2
    k = ImageToClip.motion_kernel(9, 0.0, 1.0)
    assert k.sum().item() == pytest.approx(1.0) and k[:, :4].sum() == 0 and k[:, 5:].sum() == 0
    assert k[0, 4] > k[8, 4]  # direction 1: heavy at the top
    k90 = ImageToClip.motion_kernel(11, 90.0, 0.0)
    assert k90[5].sum().item() == pytest.approx(1.0, abs=1e-5)  # rotated into a horizontal line
    # with no photometric range and no blur the copy is a pure warp: a mask of the whole frame stays inside it
    aug = ImageToClip(brightness=0, hue_saturation=0, blur_prob=0.0)
    frame = torch.full((H, W, 3), 100, dtype=torch.uint8)
    random.seed(3)
    out, mask = aug(frame, torch.ones(H, W, dtype=torch.bool))
    # inside the warped frame (mask eroded by a pixel: bilinear border pixels blend with the black outside)
    padded = torch.nn.functional.pad(mask[None, None].float(), (1, 1, 1, 1))  # outside the frame counts as out
    inside = -torch.nn.functional.max_pool2d(-padded, 3, 1)[0, 0] > 0.5
    assert inside.sum() > 0.5 * H * W
    assert (out[inside].int() - 100).abs().max() <= 1  # the same grey where the image landed
    assert (out[~mask].int() <= 100).all()
    assert mask.float().mean() > 0.6  # perspective + affine keep most of the frame in view
    # hue/saturation step: hue moves in OpenCV uint8 units (2 degrees), saturation by the same integer
    px = torch.tensor([200, 100, 50], dtype=torch.uint8).view(3, 1, 1)
    assert torch.equal(ImageToClip._hue_saturation(px, 0, 0), px)
    shifted = ImageToClip._hue_saturation(px, 3, 5).flatten().tolist()
    assert shifted[0] == 200 and shifted[2] <= 50 and shifted[1] > 100  # hue 20 -> 26 degrees, a bit more saturated
