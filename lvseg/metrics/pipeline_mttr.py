"""MTTR's official evaluation pipelines (mttr2021/MTTR 2cc35ab) for Ref-YouTube-VOS and A2D-Sentences.

Both are registered with :func:`~.pipeline.register_pipeline`.

Ref-YouTube-VOS follows ``Trainer.evaluate_refer_youtube_vos`` with ``ReferYouTubeVOSDataset('test')`` and
``ReferYoutubeVOSPostProcess`` (``configs/refer_youtube_vos.yaml``: ``eval_short_size`` 360, ``eval_max_size`` 640,
one video per batch). What it does and lvseg's fast :class:`~lvseg.Predictor` path does not:

* **DETR's resize rule** (``datasets/transforms.py``: ``RandomResize([360], max_size=640)``): where the long side
  would exceed 640 the short side becomes ``int(round(640 * short / long))``, and the long side is then
  ``int(short_side * long / short)`` (truncated); this is not torchvision's ``max_size`` rule (a 100x333 frame
  becomes 192x639, not 192x640), and the image is resized with PIL's bilinear filter, not torch's antialiased one;
* **contiguous NCHW inputs** (``ToTensor``, ``Normalize``, ``torch.stack``), not a channels-last view;
* **the text cleaned** as the dataset does (``" ".join(text.lower().split())``), not only lower-cased;
* **every annotated frame of the video in one window** (Video Swin pads time to a multiple of 8 above 8 frames),
  where the fast path cuts long videos into the demo's 24-frame windows;
* **one query per video**: the argmax of the time-averaged referred probability (``softmax[..., 0]``), its logits
  bilinear (``align_corners=False``) to the resized input, ``sigmoid() > 0.5``, then *nearest* to the frame size,
  saved as 0/255 PNGs under ``Annotations/<video>/<exp_id>/``.

A2D-Sentences follows ``Trainer.evaluate_a2d_sentences`` (``configs/a2d_sentences.yaml``: 320 / 576, one clip per
batch): the same resize rule, inputs and text cleaning on the window around the annotated frame, and
``A2DSentencesPostProcess`` on every query of that frame (:func:`mttr_a2d_queries`).

Both pipelines run the model with its eager attention (``MTTR.eager_attention``: Video Swin windows and the
multimodal transformer as the official code computes them, bit for bit on CPU), whatever ``config.fused_attention``
says; the fused kernels (the default of ``model.predict``) round differently and can flip pixels whose logit is at
the threshold (docs/metrics.md gives the measured counts).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .pipeline import OfficialPipeline, Runner, _sample_frames, _sample_text, register_pipeline

__all__ = [
    "MTTR_YTVOS_SIZE",
    "detr_resize_size",
    "mttr_input",
    "clean_text",
    "mttr_ytvos_masks",
    "MTTR_A2D_SIZE",
    "mttr_a2d_queries",
]

logger = logging.getLogger(__name__)

#: ``configs/refer_youtube_vos.yaml``: (eval_short_size, eval_max_size)
MTTR_YTVOS_SIZE: tuple[int, int] = (360, 640)
#: ``configs/a2d_sentences.yaml``: (eval_short_size, eval_max_size)
MTTR_A2D_SIZE: tuple[int, int] = (320, 576)


def detr_resize_size(height: int, width: int, short_side: int, max_size: int | None) -> tuple[int, int]:
    """The output ``(h, w)`` of DETR's ``resize`` (MTTR ``datasets/transforms.py``) for a ``height x width`` image.

    Where ``long / short * short_side > max_size`` the short side becomes ``int(round(max_size * short / long))``;
    the long side is ``int(short_side * long / short)`` (truncated); an image whose short side already has the size
    is left as it is.
    """
    size = short_side
    if max_size is not None:
        small, large = float(min(height, width)), float(max(height, width))
        if large / small * size > max_size:
            size = int(round(max_size * small / large))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def mttr_input(
    frames: np.ndarray,
    short_side: int,
    max_size: int | None,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Frames as MTTR's evaluation datasets feed them: DETR resize of each PIL frame, ``ToTensor``, ``Normalize``.

    Args:
        frames: ``uint8 [T, H, W, 3]`` RGB frames (the JPEG frames decoded with PIL).
        short_side, max_size: see :func:`detr_resize_size`.
        mean, std: ``Normalize`` statistics.

    Returns:
        contiguous float32 ``[T, 3, h, w]``.
    """
    from torchvision.transforms import functional as TF

    height, width = frames.shape[1:3]
    size = list(detr_resize_size(height, width, short_side, max_size))
    out = []
    for frame in frames:
        image = TF.resize(Image.fromarray(frame), size)  # PIL bilinear, as F.resize(image, (h, w)) in the script
        out.append(TF.normalize(TF.to_tensor(image), list(mean), list(std)))
    return torch.stack(out, dim=0)


def clean_text(text: str) -> str:
    """The expression as MTTR's datasets hand it to the tokenizer: lower-cased, whitespace collapsed."""
    return " ".join(text.lower().split())


def mttr_ytvos_masks(
    model: Any, frames: np.ndarray, text: str, *, keep_logits: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """MTTR's Ref-YouTube-VOS evaluation on one video and expression.

    Args:
        model: a :class:`~lvseg.models.mttr.MTTR`.
        frames: ``uint8 [T, H, W, 3]`` RGB frames: every annotated frame of the video, in order.
        text: the referring expression (cleaned as the official dataset does).
        keep_logits: also return the logits the masks threshold (for margin checks).

    Returns:
        ``(masks bool [T, H, W], scores float [T], logits float [T, H, W] or None)``: the masks at the frame size,
        the chosen query's referred probability per frame, and the chosen query's logits after the bilinear resize
        to the model input and the nearest resize to the frame size (``logits > 0`` where the masks are set, up to
        the sigmoid's rounding at 0.5).
    """
    short_side, max_size = MTTR_YTVOS_SIZE
    pre = model.preprocessing
    x = mttr_input(frames, short_side, max_size, pre.mean, pre.std)  # [T, 3, h, w]
    x = x.to(device=model.device, dtype=model.dtype)
    height, width = frames.shape[1:3]
    model.eval()
    with torch.inference_mode(), model.eager_attention():
        # the whole video in one window; one query: argmax over queries of the time-averaged referred probability
        logits, scores = model.segment(x[None], [clean_text(text)], protocol="ytvos")  # [1, T, h/4, w/4], [1, T]
        # ReferYoutubeVOSPostProcess: bilinear to the (unpadded: one video per batch) input size, threshold,
        # nearest to the frame size
        up = F.interpolate(logits.float(), size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
        masks = F.interpolate((up.sigmoid() > 0.5).float(), size=(height, width), mode="nearest") > 0.5
        kept = F.interpolate(up, size=(height, width), mode="nearest")[0].cpu() if keep_logits else None
    return masks[0].cpu(), scores[0].float().cpu(), kept


def _mttr_ytvos_runner(model: Any) -> Runner:
    from .evaluate import SamplePrediction

    def run(sample: Mapping[str, Any]) -> SamplePrediction:
        masks, scores, _ = mttr_ytvos_masks(model, _sample_frames(sample), _sample_text(sample), keep_logits=False)
        return SamplePrediction("masks", masks, scores)

    return run


register_pipeline(
    OfficialPipeline(
        family="MTTR",
        protocol="ytvos",
        source="mttr2021/MTTR trainer.py evaluate_refer_youtube_vos @ 2cc35ab",
        steps=(
            "frames decoded with PIL",
            "DETR RandomResize([360], max_size=640) on the PIL image: bilinear, short side int(round(640 * short / "
            "long)) where the long side would pass 640, long side truncated",
            "ToTensor, Normalize(mean, std), stacked to a contiguous [T, 3, h, w]",
            "text lower-cased, whitespace collapsed",
            "every annotated frame of the video in one window (one video per batch: no padding)",
            "one query: argmax of the time-averaged referred probability (softmax index 0)",
            "its [T, h/4, w/4] logits bilinear (align_corners=False) to the input size, sigmoid > 0.5, nearest to "
            "the frame size, 0/255 PNGs",
        ),
        build=_mttr_ytvos_runner,
    )
)


def mttr_a2d_queries(
    model: Any, frames: np.ndarray, text: str, center: int, *, keep_logits: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """MTTR's A2D-Sentences evaluation (``evaluate_a2d_sentences``, one clip per batch) on one annotated frame.

    Args:
        model: a :class:`~lvseg.models.mttr.MTTR`.
        frames: ``uint8 [T, H, W, 3]``: the window around the annotated frame (``lvseg.data.A2DSentences`` with
            ``num_frames`` = the model's window: the official ``[f - T // 2, f + (T + 1) // 2)``, clamped).
        text: the sentence (cleaned as the official dataset does).
        center: the annotated frame's position in ``frames`` (``T // 2``).

    Returns:
        ``(masks bool [Q, H, W], scores float [Q], logits float [Q, H, W] or None)``: every query's mask at the
        frame size (``A2DSentencesPostProcess``: bilinear to the input size, ``sigmoid() > 0.5``, nearest to the
        frame size), its referred probability, and the logits the masks threshold.
    """
    short_side, max_size = MTTR_A2D_SIZE
    pre = model.preprocessing
    x = mttr_input(frames, short_side, max_size, pre.mean, pre.std).to(device=model.device, dtype=model.dtype)
    height, width = frames.shape[1:3]
    model.eval()
    with torch.inference_mode(), model.eager_attention():
        logits, scores = model.segment_annotated_frame(x[None], [clean_text(text)], center)  # [1, Q, h/4, w/4]
        up = F.interpolate(logits.float(), size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
        masks = F.interpolate((up.sigmoid() > 0.5).float(), size=(height, width), mode="nearest") > 0.5
        kept = F.interpolate(up, size=(height, width), mode="nearest")[0].cpu() if keep_logits else None
    return masks[0].cpu(), scores[0].float().cpu(), kept


def _mttr_a2d_runner(model: Any) -> Runner:
    from .evaluate import SamplePrediction

    def run(sample: Mapping[str, Any]) -> SamplePrediction:
        frames = _sample_frames(sample)
        center = int(sample.get("center_index", frames.shape[0] // 2))
        masks, scores, _ = mttr_a2d_queries(model, frames, _sample_text(sample), center, keep_logits=False)
        return SamplePrediction("queries", masks, scores)

    return run


register_pipeline(
    OfficialPipeline(
        family="MTTR",
        protocol="a2d",
        source="mttr2021/MTTR trainer.py evaluate_a2d_sentences @ 2cc35ab",
        steps=(
            "the window of -ws frames centred on the annotated frame, clamped (lvseg.data.A2DSentences)",
            "DETR RandomResize([320], max_size=576) on the PIL frames, ToTensor, Normalize, contiguous",
            "text lower-cased, whitespace collapsed; one clip per batch (no padding)",
            "every query of the centre frame: logits bilinear to the input size, sigmoid > 0.5, nearest to the "
            "frame size; scores softmax index 0",
        ),
        build=_mttr_a2d_runner,
    )
)
