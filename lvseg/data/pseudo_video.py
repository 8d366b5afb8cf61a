"""Pseudo-videos from referring-image datasets (RefCOCO/+/g), as in ReferFormer's joint training.

ReferFormer (``datasets/refexp2seq.py`` with ``datasets/image_to_seq_augmenter.py``, which it takes from SeqFormer
and STEm-Seg) turns each RefCOCO image into a clip of ``num_frames`` frames: the image itself plus
``num_frames - 1`` independently augmented copies, put in a random order, then passes the clip through the same
video training transforms as Ref-YouTube-VOS. Every copy gets, with its own random draws (imgaug, library
defaults unless stated):

1. a photometric change, ``SomeOf((1, None), [Add((-40, 40)), AddToHueAndSaturation((-5, 5))])``: one or both
   (the number drawn uniformly from {1, 2}, the subset uniformly, applied in list order);

   * ``Add``: one value ``round(uniform(-40, 40))`` added to every channel, saturated to [0, 255];
   * ``AddToHueAndSaturation``: one integer ``v`` uniform in [-5, 5]; in OpenCV's uint8 HSV (hue in [0, 180))
     the hue moves by ``int(v / 255 * 180)`` (so -3 .. 3 steps of 2 degrees, modulo 180) and the saturation by
     ``v`` (clipped);

2. a geometric change applied to the image (bilinear, black outside) and to the mask (nearest, background
   outside) alike:

   * ``PerspectiveTransform(scale=0.08)``: every corner moves inwards by ``|N(0, 0.08)| mod 1`` of the width and
     of the height (8 draws); the quadrilateral is warped onto the full frame (``keep_size``);
   * ``Affine(rotate=(-20, 20), translate_percent=(-0.1, 0.1), scale=1.0, order=1)``: rotation by
     ``uniform(-20, 20)`` degrees about the frame centre, then a shift by ``t * width`` and ``t * height`` with
     **one** ``t = uniform(-0.1, 0.1)`` for both axes (imgaug's behaviour for a tuple; the shift is diagonal);

3. with probability 0.25 a ``MotionBlur`` of the image only, kernel size 9 or 11 (uniform), angle
   ``uniform(0, 360)``, direction ``uniform(-1, 1)``: a line kernel whose weights go linearly from
   ``(d + 1) / 2`` to ``1 - (d + 1) / 2``, quantised to uint8, rotated (bilinear) and normalised to sum 1;
   correlation with reflect-101 borders.

Differences from the official implementation, all below one pixel or one grey level, or in the random source:
imgaug's random generators are replaced by Python's ``random`` (the official code seeds imgaug from the clock,
so it is not reproducible at all; here ``random.seed`` makes a pseudo-video deterministic); the perspective warp,
its resize back to the frame size and the affine warp are composed into one homography and one resampling
(the official code resamples three times, with a cubic resize in between); the uint8 HSV conversion is OpenCV's
formula evaluated in float and rounded, not OpenCV's fixed-point tables.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lvseg.data._common import target_fields
from lvseg.data.transforms import _bgr_to_hsv, _hsv_to_bgr
from lvseg.errors import DatasetError, InvalidInputError

__all__ = ["ImageToClip", "PseudoVideo", "homography"]

Sample = dict[str, Any]


def homography(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The 3x3 projective map (float64) taking the 4 points ``src`` ``[4, 2]`` (x, y) to ``dst`` ``[4, 2]``."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src.double().tolist(), dst.double().tolist()):
        rows.append([x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y])
        rows.append([0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y])
        rhs += [u, v]
    sol = torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64))
    return torch.cat([sol, sol.new_ones(1)]).view(3, 3)


def _warp(img: torch.Tensor, matrix: torch.Tensor, mode: str) -> torch.Tensor:
    """Warp ``[C, H, W]`` float so that output pixel ``p`` takes the input at ``matrix^-1 p`` (pixel-index
    coordinates); outside the input is 0."""
    _, h, w = img.shape
    inv = torch.linalg.inv(matrix)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1) @ inv.T  # [H, W, 3]
    sx, sy = pts[..., 0] / pts[..., 2], pts[..., 1] / pts[..., 2]
    grid = torch.stack([2.0 * sx / max(w - 1, 1) - 1.0, 2.0 * sy / max(h - 1, 1) - 1.0], dim=-1)
    out = F.grid_sample(img[None].float(), grid[None].float(), mode=mode, padding_mode="zeros", align_corners=True)
    return out[0]


def _order_corners(pts: torch.Tensor) -> torch.Tensor:
    """Order 4 points as top-left, top-right, bottom-right, bottom-left (by x + y and y - x)."""
    s, d = pts.sum(1), pts[:, 1] - pts[:, 0]
    return torch.stack([pts[s.argmin()], pts[d.argmin()], pts[s.argmax()], pts[d.argmax()]])


def _to_uint8(img: torch.Tensor) -> torch.Tensor:
    return img.round().clamp(0, 255).to(torch.uint8)


class ImageToClip:
    """One augmented copy of an image and its mask, re-expressing ReferFormer's ``ImageToSeqAugmenter`` with the
    arguments ``refexp2seq.py`` gives it (see the module docstring for every step and range).

    Call with ``frame`` uint8 ``[H, W, 3]`` and ``mask`` bool ``[H, W]``; returns the augmented pair (same shapes
    and dtypes). Random draws come from Python's ``random``.
    """

    def __init__(
        self,
        brightness: float = 40.0,
        hue_saturation: int = 5,
        perspective: float = 0.08,
        rotation: float = 20.0,
        translate: float = 0.1,
        blur_prob: float = 0.25,
        blur_kernels: tuple[int, ...] = (9, 11),
    ) -> None:
        if min(brightness, hue_saturation, perspective, rotation, translate) < 0 or not 0 <= blur_prob <= 1:
            raise InvalidInputError("ImageToClip ranges must be >= 0 and blur_prob in [0, 1].")
        if not blur_kernels or any(k < 3 or k % 2 == 0 for k in blur_kernels):
            raise InvalidInputError(f"ImageToClip blur_kernels must be odd sizes >= 3, got {blur_kernels}.")
        self.brightness, self.hue_saturation = brightness, int(hue_saturation)
        self.perspective, self.rotation, self.translate = perspective, rotation, translate
        self.blur_prob, self.blur_kernels = blur_prob, tuple(blur_kernels)

    # --- photometric ----------------------------------------------------------------------------------------
    def _photometric(self, img: torch.Tensor) -> torch.Tensor:
        """imgaug ``SomeOf((1, None), [Add, AddToHueAndSaturation])`` on uint8 ``[3, H, W]``."""
        n = random.randint(1, 2)
        active = [True, True] if n == 2 else random.choice([[True, False], [False, True]])
        if active[0]:
            value = round(random.uniform(-self.brightness, self.brightness))
            img = (img.to(torch.int16) + value).clamp(0, 255).to(torch.uint8)
        if active[1]:
            v = random.randint(-self.hue_saturation, self.hue_saturation)
            img = self._hue_saturation(img, int(v / 255.0 * 180.0), v)
        return img

    @staticmethod
    def _hue_saturation(img: torch.Tensor, hue_steps: int, saturation: int) -> torch.Tensor:
        """OpenCV uint8 RGB->HSV (hue in [0, 180)), hue + ``hue_steps`` modulo 180, saturation + ``saturation``
        clipped to [0, 255], back to RGB."""
        hsv = _bgr_to_hsv(img.flip(0).to(torch.float32))  # RGB read the right way round: blue first
        h8 = torch.remainder(torch.round(hsv[0] / 2.0), 180.0)
        s8 = torch.round(hsv[1] * 255.0).clamp(0, 255)
        h8 = torch.remainder(h8 + hue_steps, 180.0)
        s8 = (s8 + saturation).clamp(0, 255)
        bgr = _hsv_to_bgr(torch.stack([h8 * 2.0, s8 / 255.0, hsv[2]]))
        return _to_uint8(bgr.flip(0))

    # --- geometry -------------------------------------------------------------------------------------------
    def _perspective_matrix(self, h: int, w: int) -> torch.Tensor:
        jitter = [abs(random.gauss(0.0, self.perspective)) % 1.0 for _ in range(8)]
        pts = torch.tensor(
            [
                [jitter[0] * w, jitter[1] * h],
                [(1 - jitter[2]) * w, jitter[3] * h],
                [(1 - jitter[4]) * w, (1 - jitter[5]) * h],
                [jitter[6] * w, (1 - jitter[7]) * h],
            ],
            dtype=torch.float64,
        )
        tl, tr, br, bl = _order_corners(pts).clone()
        # imgaug widens / heightens a quadrilateral thinner than 2 pixels, half a step on each side
        while min(torch.dist(tr, tl), torch.dist(br, bl)) < 2:
            step = (2 - int(min(torch.dist(tr, tl), torch.dist(br, bl)))) / 2
            tl[0] -= step
            bl[0] -= step
            tr[0] += step
            br[0] += step
        while min(torch.dist(tr, br), torch.dist(tl, bl)) < 2:
            step = (2 - int(min(torch.dist(tr, br), torch.dist(tl, bl)))) / 2
            tl[1] -= step
            tr[1] -= step
            bl[1] += step
            br[1] += step
        dst = torch.tensor([[0, 0], [w, 0], [w, h], [0, h]], dtype=torch.float64)  # warp + resize to the frame
        return homography(torch.stack([tl, tr, br, bl]), dst)

    def _affine_matrix(self, h: int, w: int) -> torch.Tensor:
        angle = math.radians(random.uniform(-self.rotation, self.rotation))
        t = random.uniform(-self.translate, self.translate)  # one draw for x and y
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        cos, sin = math.cos(angle), math.sin(angle)
        return torch.tensor(
            [
                [cos, -sin, cx - cos * cx + sin * cy + t * w],
                [sin, cos, cy - sin * cx - cos * cy + t * h],
                [0.0, 0.0, 1.0],
            ],
            dtype=torch.float64,
        )

    # --- motion blur ----------------------------------------------------------------------------------------
    @staticmethod
    def motion_kernel(k: int, angle: float, direction: float) -> torch.Tensor:
        """imgaug's motion-blur kernel ``float32 [k, k]`` (sums to 1) for angle in degrees, direction in [-1, 1]."""
        d = (min(max(direction, -1.0), 1.0) + 1.0) / 2.0
        line = torch.zeros((1, k, k), dtype=torch.float32)
        line[0, :, k // 2] = torch.linspace(d, 1.0 - d, k)
        line = (line * 255).to(torch.uint8).float()  # imgaug quantises the kernel to uint8 before rotating it
        c = (k - 1) / 2.0
        a = math.radians(angle)
        rot = torch.tensor(
            [
                [math.cos(a), -math.sin(a), c - math.cos(a) * c + math.sin(a) * c],
                [math.sin(a), math.cos(a), c - math.sin(a) * c - math.cos(a) * c],
                [0.0, 0.0, 1.0],
            ],
            dtype=torch.float64,
        )
        kernel = _to_uint8(_warp(line, rot, "bilinear"))[0].float() / 255.0
        total = kernel.sum()
        return kernel / total if total > 0 else line[0] / line[0].sum()

    def _motion_blur(self, img: torch.Tensor) -> torch.Tensor:
        k = random.choice(self.blur_kernels)
        kernel = self.motion_kernel(k, random.uniform(0.0, 360.0), random.uniform(-1.0, 1.0))
        x = F.pad(img[:, None].float(), (k // 2,) * 4, mode="reflect")  # reflect-101, as cv2.filter2D
        return _to_uint8(F.conv2d(x, kernel[None, None])[:, 0])

    def __call__(self, frame: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if frame.dtype != torch.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
            raise InvalidInputError(
                f"ImageToClip needs a uint8 [H, W, 3] frame, got {frame.dtype} {tuple(frame.shape)}."
            )
        if tuple(mask.shape) != tuple(frame.shape[:2]):
            raise InvalidInputError(f"mask {tuple(mask.shape)} does not match frame {tuple(frame.shape[:2])}.")
        img = self._photometric(frame.permute(2, 0, 1))
        h, w = frame.shape[:2]
        persp = self._perspective_matrix(h, w)  # drawn first: perspective, then affine (the official order)
        matrix = self._affine_matrix(h, w) @ persp
        img = _to_uint8(_warp(img.float(), matrix, "bilinear"))
        out_mask = _warp(mask[None].float(), matrix, "nearest")[0] > 0.5
        if random.random() < self.blur_prob:
            img = self._motion_blur(img)
        return img.permute(1, 2, 0).contiguous(), out_mask

    def __repr__(self) -> str:
        return (
            f"ImageToClip(brightness={self.brightness}, hue_saturation={self.hue_saturation}, "
            f"perspective={self.perspective}, rotation={self.rotation}, translate={self.translate}, "
            f"blur_prob={self.blur_prob}, blur_kernels={self.blur_kernels})"
        )


class PseudoVideo(Dataset):
    """Turn a referring-image dataset (:class:`lvseg.data.RefCOCO`, built with ``transform=None``) into training
    clips of ``num_frames`` frames, as ReferFormer's ``refexp2seq.py`` does for its joint training.

    Each sample: the image, plus ``num_frames - 1`` copies augmented independently by ``augment`` (default
    :class:`ImageToClip`, the official settings), shuffled into a random order (Python's ``random.shuffle``);
    then ``transform`` (e.g. :func:`lvseg.data.transforms.train_transforms`, the official choice) on the clip.
    Wrap the result in :class:`lvseg.data.RedrawInvisible` to redraw clips whose object was cropped away, as the
    official dataset does.

    Sample (before ``transform``), in the format of :class:`lvseg.data.RefYouTubeVOS` training clips:
    ``frames`` uint8 ``[T, H, W, 3]``, ``masks`` bool ``[T, H, W]``, ``object_masks`` bool ``[1, T, H, W]``,
    ``boxes`` float32 ``[T, 4]`` (xyxy, from the masks), ``valid``/``annotated`` bool ``[T]``, ``frame_order``
    int64 ``[T]`` (which copy each frame is: 0 = the untouched image, k = the k-th augmented copy), ``text``,
    ``orig_size`` and the image sample's other entries (ids, ``sent``, ``file_name``, ...).
    """

    def __init__(
        self,
        image_dataset: Any,
        num_frames: int = 5,
        transform: Callable[[Sample], Sample] | None = None,
        augment: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        shuffle: bool = True,
    ) -> None:
        if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
            raise InvalidInputError(
                f"PseudoVideo num_frames must be an integer >= 1 (ReferFormer uses 5), got {num_frames!r}."
            )
        if len(image_dataset) == 0:
            raise DatasetError("PseudoVideo got an empty image dataset; check the dataset's root and split.")
        self.dataset, self.num_frames, self.transform = image_dataset, num_frames, transform
        self.augment = augment if augment is not None else ImageToClip()
        self.shuffle = shuffle

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        image = self.dataset[index]
        frames, masks = image.get("frames"), image.get("masks")
        if not (
            isinstance(frames, torch.Tensor)
            and frames.dtype == torch.uint8
            and frames.ndim == 4
            and frames.shape[0] == 1
            and frames.shape[-1] == 3
        ):
            raise DatasetError(
                "PseudoVideo needs one-frame samples with uint8 frames [1, H, W, 3] (RefCOCO built "
                "with transform=None); pass the clip transform to PseudoVideo instead."
            )
        if not isinstance(masks, torch.Tensor) or tuple(masks.shape) != (1, *frames.shape[1:3]):
            raise DatasetError("PseudoVideo needs a ground-truth mask [1, H, W] per sample; use a split with masks.")
        copies = [(frames[0], masks[0].bool())]
        copies += [self.augment(frames[0], masks[0].bool()) for _ in range(self.num_frames - 1)]
        order = list(range(self.num_frames))
        if self.shuffle:
            random.shuffle(order)
        clip_masks = torch.stack([copies[i][1] for i in order])
        sample = {
            k: v
            for k, v in image.items()
            if k not in ("frames", "masks", "object_masks", "boxes", "valid", "annotated")
        }
        sample["frames"] = torch.stack([copies[i][0] for i in order])
        sample["frame_order"] = torch.tensor(order, dtype=torch.int64)
        sample["object_masks"] = clip_masks[None].clone()
        sample.update(target_fields(clip_masks))
        return self.transform(sample) if self.transform is not None else sample
