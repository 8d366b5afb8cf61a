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

Implemented (see :data:`PIPELINES`): ReferFormer on Ref-YouTube-VOS (``inference_ytvos.py``) and Ref-DAVIS17
(``inference_davis.py``), both at wjn922/ReferFormer 06fc218. Other family/benchmark pairs keep the default runner of
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

# MTTR (Ref-YouTube-VOS): registered by its own module, imported here so that every pipeline is known
from . import pipeline_mttr  # noqa: E402, F401
