"""Evaluation mode: each family's *official* inference pipeline for a benchmark, from decoded frames to masks.

:func:`lvseg.evaluate` (and ``lvseg evaluate``) asks :func:`official_runner` for the pipeline of the model's family
and the benchmark; where one is implemented it replaces the fast :class:`~lvseg.Predictor` path, so that the masks
are those of the official evaluation script, not merely close to them. What the official scripts do and lvseg's
fast path does not:

* **resize with PIL**: ``torchvision.transforms.Resize`` on a PIL image (PIL's bilinear filter, torchvision's
  rounding of the long side, ``int(short * long / short_original)``), where the fast path uses torch's antialiased
  interpolation on tensors;
* **no long-side cap** where the official script has none (``inference_ytvos.py``: ``T.Resize(360)``), where the
  fast path caps the long side at ``preprocessing.max_size``;
* **contiguous NCHW input tensors** (``ToTensor`` + ``Normalize``), where the fast path hands the model a
  channels-last view of the decoded frames, which makes the convolutions pick other kernels;
* **the official clip composition**: the whole video in one forward pass where the script does so, where the fast
  path splits long videos into passes of ``max_frames_per_pass`` frames;
* **the official post-processing**: the chosen query's logits resized straight to the frame size with
  ``F.interpolate(..., mode="bilinear", align_corners=False)`` on ``[1, T, h, w]`` and ``sigmoid() > 0.5``
  (not ``logit > 0``, which differs where the sigmoid rounds to exactly 0.5).

Frames arrive decoded by the dataset readers of :mod:`lvseg.data`, which open JPEG frames with PIL and
``convert("RGB")`` as the official scripts do, so the pixels are the official ones.

Implemented (see :data:`PIPELINES`): ReferFormer on Ref-YouTube-VOS (``inference_ytvos.py``), Ref-DAVIS17
(``inference_davis.py``) and A2D-/JHMDB-Sentences (``main.py --eval``), all at wjn922/ReferFormer 06fc218. Other
family/benchmark pairs keep the default runner of
:func:`lvseg.metrics.evaluate.default_runner`.
A family being added registers its pipeline with :func:`register_pipeline`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InvalidInputError

__all__ = [
    "OfficialPipeline",
    "PIPELINES",
    "register_pipeline",
    "find_pipeline",
    "official_runner",
    "official_resize",
    "official_input",
    "referformer_ytvos_masks",
    "referformer_davis_probabilities",
    "detr_resize_size",
    "clean_a2d_text",
    "referformer_a2d_queries",
]

logger = logging.getLogger(__name__)

#: a runner: one dataset sample -> a :class:`~lvseg.metrics.evaluate.SamplePrediction`
Runner = Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class OfficialPipeline:
    """The official evaluation pipeline of one family on one benchmark protocol.

    Attributes:
        family: the model class name (``type(model).__name__``), e.g. ``"ReferFormer"``.
        protocol: the :func:`lvseg.evaluate` protocol (``"ytvos"``, ``"refdavis"``, ``"a2d"``, ...).
        source: the official script and commit it reproduces.
        steps: what it does, in order (shown in docs and logs).
        build: ``build(model) -> runner``.
    """

    family: str
    protocol: str
    source: str
    steps: tuple[str, ...]
    build: Callable[[Any], Runner]


PIPELINES: dict[tuple[str, str], OfficialPipeline] = {}


def register_pipeline(pipeline: OfficialPipeline) -> OfficialPipeline:
    """Add a family's official pipeline for a benchmark (the hook for families being added)."""
    key = (pipeline.family, pipeline.protocol)
    if key in PIPELINES and PIPELINES[key] != pipeline:
        raise ValueError(f"an official pipeline for {pipeline.family} on {pipeline.protocol!r} is already registered")
    PIPELINES[key] = pipeline
    return pipeline


def find_pipeline(model: Any, protocol: str) -> OfficialPipeline | None:
    """The official pipeline of ``model``'s family for ``protocol``, or None when lvseg has none."""
    for cls in type(model).__mro__:
        pipeline = PIPELINES.get((cls.__name__, protocol))
        if pipeline is not None:
            return pipeline
    return None


def official_runner(model: Any, protocol: str) -> Runner | None:
    """The runner of the official pipeline of ``model``'s family on ``protocol`` (None when there is none)."""
    pipeline = find_pipeline(model, protocol)
    if pipeline is None:
        return None
    logger.info("evaluation mode: %s on %s follows %s", pipeline.family, protocol, pipeline.source)
    return pipeline.build(model)


# ------------------------------------------------------------------------------------------------ preprocessing
def official_resize(image: Image.Image, short_side: int, max_size: int | None = None) -> Image.Image:
    """``torchvision.transforms.Resize(short_side, max_size=max_size)`` on a PIL image (PIL's bilinear filter).

    The short side becomes ``short_side`` and the long side ``int(short_side * long / short)`` (truncated, as
    torchvision computes it); ``max_size=None`` means no cap on the long side (``inference_ytvos.py``).
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    resized = TF.resize(image, [short_side], interpolation=InterpolationMode.BILINEAR, max_size=max_size)
    assert isinstance(resized, Image.Image)
    return resized


def official_input(
    frames: np.ndarray,
    short_side: int,
    mean: Sequence[float],
    std: Sequence[float],
    max_size: int | None = None,
) -> torch.Tensor:
    """Frames as the official scripts feed them: PIL resize, ``ToTensor``, ``Normalize``, stacked.

    Args:
        frames: ``uint8 [T, H, W, 3]`` RGB, decoded with PIL (``Image.open(path).convert("RGB")``).
        short_side, max_size: see :func:`official_resize`.
        mean, std: ``Normalize`` statistics.

    Returns:
        contiguous float32 ``[T, 3, h, w]`` (NCHW memory layout, as ``torch.stack`` of ``ToTensor`` outputs).
    """
    from torchvision.transforms import functional as TF

    out = []
    for frame in frames:
        image = official_resize(Image.fromarray(frame), short_side, max_size)
        out.append(TF.normalize(TF.to_tensor(image), list(mean), list(std)))
    return torch.stack(out, dim=0)


def _sample_frames(sample: Mapping[str, Any]) -> np.ndarray:
    frames = sample.get("frames")
    if frames is None:
        raise InvalidInputError("the sample has no 'frames': evaluation needs uint8 [T, H, W, 3] frames")
    array = np.asarray(frames.cpu() if isinstance(frames, torch.Tensor) else frames)
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise InvalidInputError(
            f"sample['frames'] must be uint8 [T, H, W, 3] (as lvseg.data readers return them), got "
            f"{array.dtype} {array.shape}; the official pipeline starts from decoded 8-bit RGB frames"
        )
    return array


def _sample_text(sample: Mapping[str, Any]) -> str:
    text = sample.get("text")
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(f"the sample's 'text' must be a non-empty string, got {text!r}")
    return text


# --------------------------------------------------------------------------------------------------- ReferFormer
@contextlib.contextmanager
def _one_pass(model: Any) -> Iterator[None]:
    """Run every video in one forward pass (``max_frames_per_pass = 0``), as ``inference_ytvos.py`` does."""
    config = model.config
    previous = config.max_frames_per_pass
    config.max_frames_per_pass = 0
    try:
        yield
    finally:
        config.max_frames_per_pass = previous


def referformer_ytvos_masks(
    model: Any, frames: np.ndarray, text: str, threshold: float = 0.5, *, keep_logits: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """ReferFormer's ``inference_ytvos.py`` on one video and expression.

    Args:
        model: a :class:`~lvseg.models.referformer.ReferFormer`.
        frames: ``uint8 [T, H, W, 3]`` RGB frames of the whole video.
        text: the referring expression.
        threshold: the probability threshold (the script's ``--threshold``, 0.5).
        keep_logits: also return the upsampled logits (4 bytes per pixel and frame; :func:`lvseg.evaluate` does not
            keep them).

    Returns:
        ``(masks bool [T, H, W], scores float [T], logits float [T, H, W] or None)``: the binary masks, the chosen
        query's score per frame, and the upsampled logits the masks threshold (for margin checks).
    """
    pre = model.preprocessing
    x = official_input(frames, pre.short_side, pre.mean, pre.std)  # [T, 3, h, w], no long-side cap
    x = x.to(device=model.device, dtype=model.dtype)
    height, width = frames.shape[1:3]
    model.eval()
    with torch.inference_mode(), _one_pass(model):
        # one query for the whole video: argmax over queries of the frame-averaged max class score
        logits, scores = model.segment(x[None], [text], protocol="ytvos")  # [1, T, h/4, w/4], [1, T]
        # [1, T, h/4, w/4] straight to the original size, as the script does (no crop: nothing is padded)
        up = F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
        masks = up.sigmoid() > threshold
    return masks[0].cpu(), scores[0].float().cpu(), up[0].cpu() if keep_logits else None


def _referformer_ytvos_runner(model: Any) -> Runner:
    from .evaluate import SamplePrediction

    def run(sample: Mapping[str, Any]) -> SamplePrediction:
        masks, scores, _ = referformer_ytvos_masks(
            model, _sample_frames(sample), _sample_text(sample), keep_logits=False
        )
        return SamplePrediction("masks", masks, scores)

    return run


register_pipeline(
    OfficialPipeline(
        family="ReferFormer",
        protocol="ytvos",
        source="wjn922/ReferFormer inference_ytvos.py @ 06fc218",
        steps=(
            "frames decoded with PIL, convert('RGB')",
            "torchvision Resize(short_side) on the PIL image: bilinear, long side int(short * long / short), no cap",
            "ToTensor, Normalize(mean, std), stacked to a contiguous [T, 3, h, w]",
            "the whole video in one forward pass",
            "one query: argmax of the frame-averaged sigmoid class scores",
            "its [1, T, h/4, w/4] logits bilinear (align_corners=False) to the frame size, sigmoid > 0.5",
        ),
        build=_referformer_ytvos_runner,
    )
)


def referformer_davis_probabilities(model: Any, frames: np.ndarray, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """ReferFormer's ``inference_davis.py`` on one video and expression (one object of one annotator).

    The frames are prepared as in :func:`referformer_ytvos_masks`; the video runs in clips of
    ``config.davis_clip_frames`` (36) frames, each with its own query (argmax of the clip-averaged class scores),
    and the chosen logits are resized straight to the frame size and passed through the sigmoid. The
    :class:`~lvseg.metrics.refdavis.RefDAVIS17Evaluator` then merges the objects of one annotator as the script
    does (``p < 0.5`` -> 0, background 0.1, argmax).

    Args:
        model: a :class:`~lvseg.models.referformer.ReferFormer`.
        frames: ``uint8 [T, H, W, 3]`` RGB frames of the whole video.
        text: the referring expression.

    Returns:
        ``(probabilities float32 [T, H, W], scores float [T])``.
    """
    pre = model.preprocessing
    x = official_input(frames, pre.short_side, pre.mean, pre.std)
    x = x.to(device=model.device, dtype=model.dtype)
    height, width = frames.shape[1:3]
    model.eval()
    with torch.inference_mode():
        logits, scores = model.segment(x[None], [text], protocol="davis")  # [1, T, h/4, w/4], [1, T]
        # the script resizes each clip's [1, t, h/4, w/4]; bilinear works plane by plane, so the whole video at once
        # gives the same values
        probabilities = F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
        probabilities = probabilities.sigmoid()
    return probabilities[0].cpu(), scores[0].float().cpu()


def _referformer_davis_runner(model: Any) -> Runner:
    from .evaluate import SamplePrediction

    def run(sample: Mapping[str, Any]) -> SamplePrediction:
        probabilities, scores = referformer_davis_probabilities(model, _sample_frames(sample), _sample_text(sample))
        return SamplePrediction("probabilities", probabilities, scores)

    return run


register_pipeline(
    OfficialPipeline(
        family="ReferFormer",
        protocol="refdavis",
        source="wjn922/ReferFormer inference_davis.py @ 06fc218",
        steps=(
            "frames decoded with PIL, convert('RGB')",
            "torchvision Resize(short_side) on the PIL image: bilinear, long side int(short * long / short), no cap",
            "ToTensor, Normalize(mean, std), stacked to a contiguous [T, 3, h, w]",
            "clips of davis_clip_frames (36) frames, one forward pass and one query each",
            "its [1, t, h/4, w/4] logits bilinear (align_corners=False) to the frame size, sigmoid",
            "objects of one annotator merged: p < 0.5 -> 0, background 0.1, argmax (RefDAVIS17Evaluator)",
        ),
        build=_referformer_davis_runner,
    )
)


# ------------------------------------------------------------------------------- ReferFormer A2D / JHMDB-Sentences
def detr_resize_size(height: int, width: int, size: int, max_size: int | None = None) -> tuple[int, int]:
    """The output ``(h, w)`` of ReferFormer's ``datasets/transforms_video.resize`` (DETR's rule) for a scalar size.

    The short side becomes ``size`` unless the long side would exceed ``max_size``; then the short side becomes
    ``int(round(max_size * short / long))`` (so the long side may end a pixel below ``max_size``). The long side is
    ``int(short_target * long / short)`` (truncated). A frame whose short side already equals the target keeps its
    size (no resize at all).
    """
    if max_size is not None:
        smallest, largest = float(min(width, height)), float(max(width, height))
        if largest / smallest * size > max_size:
            size = int(round(max_size * smallest / largest))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def clean_a2d_text(text: str) -> str:
    """The official A2D/JHMDB datasets' text clean-up: lower-cased, whitespace runs collapsed to one space."""
    return " ".join(text.lower().split())


def referformer_a2d_queries(
    model: Any,
    frames: np.ndarray,
    text: str,
    frame_index: int,
    *,
    short_side: int = 360,
    max_size: int = 640,
    size_divisibility: int = 32,
    keep_logits: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """ReferFormer's ``main.py --eval`` on one A2D-/JHMDB-Sentences sample: every query's mask of the annotated frame.

    The official path (wjn922/ReferFormer 06fc218, batch size 1): ``datasets/a2d.py`` (``jhmdb.py``) lower-cases the
    sentence and resizes the clip with ``RandomResize([360], max_size=640)`` (:func:`detr_resize_size`, PIL
    bilinear), ``ToTensor`` + ``Normalize``; ``collate_fn`` zero-pads the clip to a multiple of 32 with a padding
    mask; the model runs the backbone on every frame and decodes only the annotated one (``valid_indices``);
    ``A2DSentencesPostProcess`` resizes each query's ``[h/4, w/4]`` logits bilinearly to 4x their size (the padded
    input size), thresholds ``sigmoid > 0.5``, crops the padding and resizes to the annotation's size with
    ``nearest``.

    Args:
        model: a :class:`~lvseg.models.referformer.ReferFormer`.
        frames: ``uint8 [T, H, W, 3]`` RGB frames of the clip around the annotated frame.
        text: the sentence (cleaned here as the official dataset does).
        frame_index: the clip position the model decodes: the *first* position holding the annotated frame
            (``sample_indx.index(frame_id)``; clamped clips repeat edge frames).
        short_side, max_size: the official ``RandomResize([360], max_size=640)``.
        size_divisibility: the official ``collate_fn`` padding (32).
        keep_logits: also return the upsampled, cropped logits ``float [Q, h, w]`` at the model's input size (the
            threshold margin of each pixel, before the nearest resize).

    Returns:
        ``(masks bool [Q, H, W], scores float [Q], logits or None)``: every query's mask at the frame size and its
        sigmoid score (class 0, as the post-processor reads it).
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    t, height, width = frames.shape[:3]
    if not 0 <= frame_index < t:
        raise InvalidInputError(f"frame_index {frame_index} is outside the clip of {t} frames")
    pre = model.preprocessing
    h, w = detr_resize_size(height, width, short_side, max_size)
    clip = []
    for frame in frames:
        image = TF.resize(Image.fromarray(frame), [h, w], interpolation=InterpolationMode.BILINEAR)
        clip.append(TF.normalize(TF.to_tensor(image), list(pre.mean), list(pre.std)))
    padded_h = -(-h // size_divisibility) * size_divisibility
    padded_w = -(-w // size_divisibility) * size_divisibility
    x = torch.zeros((1, t, 3, padded_h, padded_w))  # contiguous NCHW, zero padding as nested_tensor_from_videos_list
    x[0, :, :, :h, :w] = torch.stack(clip)
    padding = torch.ones((1, t, padded_h, padded_w), dtype=torch.bool)
    padding[0, :, :h, :w] = False
    x, padding = x.to(device=model.device, dtype=model.dtype), padding.to(model.device)
    model.eval()
    with torch.inference_mode():
        out = model(x, [clean_a2d_text(text)], padding_mask=padding, valid_indices=[frame_index])
        scores = out["pred_logits"][0, 0, :, 0].float().sigmoid()  # [Q]
        logits = out["pred_masks"][0, 0].float()  # [Q, padded_h/4, padded_w/4]
        up = F.interpolate(logits[None], size=(4 * logits.shape[-2], 4 * logits.shape[-1]), mode="bilinear",
                           align_corners=False)[0]  # fmt: skip
        up = up[:, :h, :w]  # the padding cropped: the resized frame
        masks = F.interpolate((up.sigmoid() > 0.5)[:, None].float(), size=(height, width), mode="nearest")[:, 0]
    return masks.bool().cpu(), scores.cpu(), up.cpu() if keep_logits else None


def _annotated_position(sample: Mapping[str, Any], n_frames: int) -> int:
    """The clip position the official dataset decodes: the first one holding the annotated frame."""
    annotated = sample.get("annotated")
    if annotated is not None:
        flags = np.asarray(torch.as_tensor(annotated).cpu()).astype(bool).reshape(-1)
        positions = [int(p) for p in np.flatnonzero(flags)]
    elif "center_index" in sample:
        positions = [int(sample["center_index"])]
    else:
        positions = []
    if len(positions) != 1 or not 0 <= positions[0] < n_frames:
        raise InvalidInputError(
            f"an A2D/JHMDB-Sentences sample has one annotated frame (sample['annotated'] bool [T] or "
            f"'center_index'), got {positions} for {n_frames} frames; use lvseg.data.A2DSentences / JHMDBSentences"
        )
    indices = sample.get("frame_indices")
    if indices is None:
        return positions[0]
    order = [int(i) for i in torch.as_tensor(indices).reshape(-1).tolist()]
    if len(order) != n_frames:
        raise InvalidInputError(f"sample['frame_indices'] has {len(order)} entries for {n_frames} frames")
    return order.index(order[positions[0]])  # sample_indx.index(frame_id)


def _referformer_a2d_runner(model: Any) -> Runner:
    from .evaluate import SamplePrediction

    def run(sample: Mapping[str, Any]) -> SamplePrediction:
        frames = _sample_frames(sample)
        position = _annotated_position(sample, frames.shape[0])
        masks, scores, _ = referformer_a2d_queries(model, frames, _sample_text(sample), position)
        return SamplePrediction("queries", masks, scores)

    return run


_REFERFORMER_A2D_STEPS = (
    "the sentence lower-cased, whitespace collapsed",
    "the dataset's clip (num_frames around the annotated frame, clamped; ReferFormer's default is 5)",
    "RandomResize([360], max_size=640): DETR's size rule (short side round(640 * short / long) when capped, long "
    "side truncated), PIL bilinear",
    "ToTensor, Normalize(mean, std); zero-padded to a multiple of 32 with a padding mask (collate_fn)",
    "backbone on every frame, only the annotated one decoded (valid_indices = first position holding it)",
    "every query: [h/4, w/4] logits bilinear (align_corners=False) to 4x, sigmoid > 0.5, padding cropped, "
    "nearest to the annotation size; score = sigmoid of class 0",
    "COCO mAP over all queries (useCats = 0), P@K and IoU of the top-scoring one (MTTREvaluator)",
)

register_pipeline(
    OfficialPipeline(
        family="ReferFormer",
        protocol="a2d",
        source="wjn922/ReferFormer main.py --eval (datasets/a2d.py, engine.evaluate_a2d) @ 06fc218",
        steps=("frames decoded from the mp4 with PyAV, rgb24 (as torchvision.io.read_video)", *_REFERFORMER_A2D_STEPS),
        build=_referformer_a2d_runner,
    )
)

register_pipeline(
    OfficialPipeline(
        family="ReferFormer",
        protocol="jhmdb",
        source="wjn922/ReferFormer main.py --eval (datasets/jhmdb.py, engine.evaluate_a2d) @ 06fc218",
        steps=("PNG frames opened with PIL, convert('RGB')", *_REFERFORMER_A2D_STEPS),
        build=_referformer_a2d_runner,
    )
)

# MTTR (Ref-YouTube-VOS, A2D-Sentences): registered by its own module, imported here so that every pipeline is known
from . import pipeline_mttr  # noqa: E402, F401
