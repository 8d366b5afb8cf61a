"""Model-agnostic inference: decode -> windows -> ``model.segment_window`` -> resize -> :class:`VideoSegmentation`.

Windowing policy: the video is decoded lazily and cut into windows of ``window`` frames that overlap by
``overlap`` frames (both from the model's preprocessing config unless given). Only one window of frames is in
memory at a time. Frames covered by two windows get the mean of the two windows' mask logits and scores. A model
that links the referred object across windows does so through the ``state`` of
:meth:`~lvseg.models.base.RVOSModel.segment_window`.

Mask logits come back at the model's resolution and are brought to the original frame size by one of the
:data:`UPSAMPLING` rules, each the post-processing of an official code base (see :func:`upsample_mask_logits`).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .errors import InvalidInputError
from .models.base import RVOSModel, validate_texts
from .utils import atomic_folder
from .video import (
    IMAGE_EXTENSIONS,
    PALETTE,
    VideoSource,
    open_video,
    overlay_frame,
    preprocess_frames,
    write_image,
    write_video,
)

__all__ = ["Predictor", "VideoSegmentation", "save_overlay", "UPSAMPLING", "upsample_mask_logits", "check_window"]

logger = logging.getLogger(__name__)

# a model whose config says window=0 gets a warning on videos longer than this (memory grows with the length)
_WHOLE_VIDEO_WARN = 100


@dataclass
class VideoSegmentation:
    """The masks of one referring expression over a video, or over one image (a one-frame video, ``T == 1``).

    Attributes:
        masks: ``bool [T, H, W]`` at the video's original (displayed) resolution; ``[1, H, W]`` for an image.
        scores: ``float [T]`` confidence per frame, in [0, 1].
        text: the expression.
        fps: frame rate of the source (30 for inputs that carry none).
        frame_names: one name per frame (file stems for a frame folder, else ``00000``, ``00001``, ...).
        probabilities: ``float32 [T, H, W]`` foreground probabilities at the original resolution when the
            Predictor was asked for them (``return_probabilities=True``), else None. ``masks`` equals
            ``probabilities > sigmoid(threshold)`` (0.5 by default) up to float32 rounding of the sigmoid for
            logits within ~1e-7 of the threshold.
    """

    masks: torch.Tensor
    scores: torch.Tensor
    text: str
    fps: float = 30.0
    frame_names: list[str] = field(default_factory=list)
    source: VideoSource | None = field(default=None, repr=False)
    probabilities: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def is_image(self) -> bool:
        """True when the input was one still image (a file, a PIL image, an ``[H, W, 3]`` array)."""
        return self.source is not None and self.source.is_image

    def to_numpy(self) -> np.ndarray:
        """The masks as a ``bool [T, H, W]`` numpy array."""
        return self.masks.cpu().numpy()

    def to_rle(self) -> list[dict[str, Any]]:
        """One COCO RLE per frame (``{"size": [H, W], "counts": str}``, JSON-serialisable; pycocotools format)."""
        from pycocotools import mask as mask_utils

        rles = []
        for mask in self.to_numpy():  # one frame at a time: no [H, W, T] copy of a long video's masks
            rle = mask_utils.encode(np.asfortranarray(mask[:, :, None].astype(np.uint8)))[0]
            rle["counts"] = rle["counts"].decode("ascii")
            rles.append(rle)
        return rles

    def save_pngs(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write one palette PNG per frame (0 background, 1 object; the DAVIS/Ref-YouTube-VOS palette).

        The PNGs are written into a temporary folder beside ``directory`` that replaces it when all are written,
        so ``directory`` holds exactly this result's PNGs, never a mix with an earlier one, even after Ctrl-C.

        Args:
            directory: the folder to write; it must be absent or empty unless ``overwrite``.
            overwrite: replace an existing non-empty ``directory`` and everything in it.

        Raises:
            OutputError: ``directory`` is a file, not writable, or not empty (without ``overwrite``); checked
                before any PNG is written.
        """
        from PIL import Image

        names = self.frame_names or [f"{i:05d}" for i in range(len(self))]
        with atomic_folder(directory, overwrite=overwrite) as tmp:
            for name, mask in zip(names, self.to_numpy()):
                image = Image.fromarray(mask.astype(np.uint8), mode="P")
                image.putpalette(PALETTE)
                image.save(tmp / f"{name}.png", format="PNG")
        return Path(directory)

    def save_overlay(
        self,
        path: str | Path,
        *,
        alpha: float = 0.5,
        caption: bool = True,
        color: tuple[int, int, int] | None = None,
        progress: bool | None = None,
    ) -> Path:
        """Write the video with the mask blended in colour, outlined, and the expression as a caption.

        ``.mp4``/``.mkv``/``.webm``/``.avi``/``.mov`` are encoded with PyAV, ``.gif`` with Pillow. A one-frame result
        (an image) can also be written as a still image, ``.png``/``.jpg``/``.jpeg``/``.bmp``/``.webp``/``.tif``,
        at its exact size; a result of several frames refuses those with :class:`~lvseg.errors.InvalidInputError`
        (use a video suffix or :meth:`save_pngs`). Video codecs
        need even sizes (yuv420p): an odd height or width is padded by one pixel (the last row or column
        repeated), so a 853x481 video gives an 854x482 overlay; a ``.gif`` keeps the original size, and so do
        the masks (:meth:`save_pngs`, :meth:`to_rle`). ``progress``: a tqdm bar (default: for 50 frames or more).
        """
        return save_overlay(
            [self], path, alpha=alpha, caption=caption, colors=[color] if color else None, progress=progress
        )


def save_overlay(
    results: Sequence[VideoSegmentation],
    path: str | Path,
    *,
    alpha: float = 0.5,
    caption: bool = True,
    colors: Sequence[tuple[int, int, int]] | None = None,
    progress: bool | None = None,
) -> Path:
    """Write one overlay video showing several expressions' masks (one colour each) on the same video.

    ``progress``: a tqdm bar; ``None`` shows it for videos of 50 frames or more, ``False`` never (``lvseg
    predict -q``). Sizes as in :meth:`VideoSegmentation.save_overlay` (odd sizes padded by one pixel for video
    codecs). An image suffix (``.png``, ``.jpg``, ...) writes a still image and needs a one-frame result.
    """
    if not results:
        raise InvalidInputError("no results to draw")
    source = results[0].source
    if source is None:
        raise InvalidInputError("this result holds no reference to its video, so no overlay can be drawn")
    if any(r.source is not source for r in results):
        raise InvalidInputError("all results of one overlay must come from the same video")
    captions = [r.text for r in results] if caption else None
    total = len(results[0])
    if Path(path).suffix.lower() in IMAGE_EXTENSIONS:
        if total != 1:
            raise InvalidInputError(
                f"{Path(path).name} would be a still image but this result has {total} frames: write the overlay "
                "as a video (.mp4, .gif, ...) or the masks as one PNG per frame (save_pngs)"
            )
        frame = next(iter(source))
        return write_image(
            overlay_frame(frame, [r.masks[0].numpy() for r in results], colors=colors, alpha=alpha, captions=captions),
            path,
        )

    def frames() -> Any:
        for index, frame in enumerate(
            tqdm(
                source,
                total=total,
                desc="writing overlay",
                unit="frame",
                leave=False,
                disable=total < 50 if progress is None else not progress,
            )
        ):
            if index >= total:
                break
            yield overlay_frame(
                frame, [r.masks[index].numpy() for r in results], colors=colors, alpha=alpha, captions=captions
            )

    return write_video(frames(), path, fps=source.fps)


#: How mask logits at the model's resolution become masks and probabilities at the original frame size; each rule
#: is the post-processing of an official code base. Every rule drops the ``size_divisor`` padding.
UPSAMPLING: dict[str, str] = {
    "bilinear": "bilinear (align_corners=False) on the logits to the padded input size, crop the padding, bilinear "
    "to the original size, sigmoid (the default of families without an official rule)",
    "direct": "bilinear (align_corners=False) on the logits straight from the model's output (padding cropped) to "
    "the original size, sigmoid (ReferFormer inference_ytvos.py / inference_davis.py)",
    "threshold-nearest": "bilinear (align_corners=False) on the logits to the padded input size, sigmoid, crop the "
    "padding, nearest to the original size (MTTR, ReferFormer A2D/JHMDB, DETR PostProcessSegm)",
    "probability-aligned": "sigmoid at the model's resolution (padding cropped), bilinear with align_corners=True "
    "to the original size (Locater tools/evaluate.py)",
    "aligned": "bilinear with align_corners=True on the logits straight from the model's output (padding cropped) "
    "to the original size, sigmoid (LAVT video test_ytvos.py: the argmax of the upsampled 2-class logits)",
}
# rules whose values are probabilities (averaged and thresholded as probabilities); the others resize logits
_PROBABILITY_SPACE = ("threshold-nearest", "probability-aligned")


def check_window(window: Any, overlap: Any) -> None:
    """Check the Predictor's ``window``/``overlap`` arguments (None = the model's default) before any work.

    Raises :class:`~lvseg.errors.InvalidInputError` naming the argument for a value that is not a whole number of
    frames, a negative value, or ``overlap >= window`` (when both are given; a window of 0 takes no overlap).
    """
    for name, value in (("window", window), ("overlap", overlap)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InvalidInputError(
                f"{name} must be a whole number of frames (e.g. {name}={36 if name == 'window' else 0}), "
                f"got {value!r} ({type(value).__name__})"
            )
        if value < 0:
            hint = "0 runs the whole video in one pass" if name == "window" else "0 means no shared frames"
            raise InvalidInputError(f"{name} must be >= 0 ({hint}), got {value}")
    if window is not None and overlap is not None and window and overlap >= window:
        raise InvalidInputError(
            f"overlap must be smaller than window, got window={window}, overlap={overlap}; pass a smaller overlap"
        )


def _check_upsampling(mode: str) -> str:
    if mode not in UPSAMPLING:
        raise InvalidInputError(f"unknown upsampling {mode!r}; choose one of {', '.join(UPSAMPLING)}")
    return mode


def _resize(x: torch.Tensor, size: Sequence[int], mode: str, align_corners: bool | None = None) -> torch.Tensor:
    """[N, h, w] -> [N, *size]; the identity when the size is already right."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "bilinear":
        return F.interpolate(x.unsqueeze(1), size=tuple(size), mode=mode, align_corners=align_corners)[:, 0]
    return F.interpolate(x.unsqueeze(1), size=tuple(size), mode=mode)[:, 0]


def _crop_output(x: torch.Tensor, input_size: Sequence[int], resized_size: Sequence[int]) -> torch.Tensor:
    """Drop the padding from model-resolution maps [N, h, w] (the rows/columns that cover the resized frame)."""
    if tuple(input_size) == tuple(resized_size):
        return x
    h, w = x.shape[-2:]
    keep_h = math.ceil(h * resized_size[0] / input_size[0])
    keep_w = math.ceil(w * resized_size[1] / input_size[1])
    return x[..., :keep_h, :keep_w]


def _upsample(
    logits: torch.Tensor,
    input_size: Sequence[int],
    resized_size: Sequence[int],
    original_size: Sequence[int],
    mode: str,
) -> torch.Tensor:
    """[N, h, w] logits -> float32 [N, H, W]: logits for the logit-space rules, probabilities for the others."""
    x = logits.float()
    if mode == "bilinear":
        x = _resize(x, input_size, "bilinear", align_corners=False)[..., : resized_size[0], : resized_size[1]]
        return F.interpolate(x.unsqueeze(1), size=tuple(original_size), mode="bilinear", align_corners=False)[:, 0]
    if mode == "direct":
        return _resize(_crop_output(x, input_size, resized_size), original_size, "bilinear", align_corners=False)
    if mode == "threshold-nearest":
        x = _resize(x, input_size, "bilinear", align_corners=False).sigmoid()
        return _resize(x[..., : resized_size[0], : resized_size[1]], original_size, "nearest")
    if mode == "probability-aligned":
        x = _crop_output(x, input_size, resized_size).sigmoid()
        return _resize(x, original_size, "bilinear", align_corners=True)
    if mode == "aligned":
        return _resize(_crop_output(x, input_size, resized_size), original_size, "bilinear", align_corners=True)
    raise InvalidInputError(f"unknown upsampling {mode!r}; choose one of {', '.join(UPSAMPLING)}")


def _foreground(values: torch.Tensor, mode: str, threshold: float) -> torch.Tensor:
    """Masks from :func:`_upsample` values: ``logit > threshold`` or ``probability > sigmoid(threshold)``."""
    if mode in _PROBABILITY_SPACE:
        return values > torch.sigmoid(torch.tensor(float(threshold), dtype=torch.float32))
    return values > threshold


def _probabilities(values: torch.Tensor, mode: str) -> torch.Tensor:
    return values if mode in _PROBABILITY_SPACE else values.sigmoid()


def upsample_mask_logits(
    logits: torch.Tensor,
    input_size: Sequence[int],
    resized_size: Sequence[int],
    original_size: Sequence[int],
    mode: str = "bilinear",
    threshold: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring mask logits from the model's resolution to the original frame size with an official rule.

    Args:
        logits: ``[N, h, w]`` mask logits as a model returns them (any number of masks: frames or queries).
        input_size: the (padded) size of the frames the model saw.
        resized_size: the resized frame inside it, without the ``size_divisor`` padding.
        original_size: the frame size to return.
        mode: a key of :data:`UPSAMPLING`.
        threshold: logit threshold (0 = probability 0.5).

    Returns:
        ``(masks bool [N, H, W], probabilities float32 [N, H, W])``.
    """
    if logits.dim() != 3:
        raise InvalidInputError(f"logits must be [N, h, w], got shape {tuple(logits.shape)}")
    _check_upsampling(mode)
    values = _upsample(logits, tuple(input_size), tuple(resized_size), tuple(original_size), mode)
    return _foreground(values, mode, threshold), _probabilities(values, mode)


class Predictor:
    """Run a model on whole videos of any length.

    Args:
        model: an :class:`~lvseg.models.base.RVOSModel` (e.g. from :func:`lvseg.load`).
        window: frames per model pass (default: the model's ``preprocessing.window``; 0 = whole video at once).
        overlap: frames shared by consecutive windows (default: ``preprocessing.overlap``).
        threshold: logit threshold for foreground (0.0 = probability 0.5).
        progress: show a tqdm bar.
        fps: frame rate for inputs that carry none (folders, arrays).
        return_probabilities: also return ``float32 [T, H, W]`` foreground probabilities at the original
            resolution (:attr:`VideoSegmentation.probabilities`; 4 bytes per pixel and frame in memory).
        upsampling: how logits are brought to the original size, a key of :data:`UPSAMPLING` (default: the
            model's :meth:`~lvseg.models.base.RVOSModel.output_upsampling`, its official post-processing).
        protocol: run every window through ``model.segment(frames, texts, protocol=protocol)``, one of the
            family's named inference protocols (e.g. ReferFormer's ``"davis"``), instead of
            :meth:`~lvseg.models.base.RVOSModel.segment_window`; windows are then independent. Benchmarks whose
            official scripts run a whole video at once use it with ``window=0``.

    Calling the predictor with one expression returns a :class:`VideoSegmentation`; with a list of expressions it
    returns a list (the video is decoded once for all of them).
    """

    def __init__(
        self,
        model: RVOSModel,
        *,
        window: int | None = None,
        overlap: int | None = None,
        threshold: float = 0.0,
        progress: bool = True,
        fps: float | None = None,
        return_probabilities: bool = False,
        upsampling: str | None = None,
        protocol: str | None = None,
    ) -> None:
        if not isinstance(model, RVOSModel):
            raise InvalidInputError(f"Predictor needs an lvseg model, got {type(model).__name__}")
        pre = model.preprocessing
        self.model = model
        check_window(window, overlap)
        self.window = pre.window if window is None else int(window)
        self.overlap = pre.overlap if overlap is None else int(overlap)
        if self.window and self.overlap >= self.window:
            raise InvalidInputError(
                f"overlap must be smaller than window, got window={self.window}, overlap={self.overlap}"
                f"{' (from the model config)' if window is None or overlap is None else ''}; pass a smaller "
                "overlap (e.g. overlap=0) or a larger window"
            )
        # window 0 from the config (an older config.json): whole video at once, memory grows with its length
        self._window_from_config = window is None and self.window == 0
        if protocol is not None and "protocol" not in inspect.signature(model.segment).parameters:
            raise InvalidInputError(
                f"{type(model).__name__}.segment() has no named inference protocols; leave protocol=None"
            )
        self.threshold = threshold
        self.progress = progress
        self.fps = fps
        self.return_probabilities = bool(return_probabilities)
        self.protocol = protocol
        self.upsampling = _check_upsampling(upsampling or model.output_upsampling(protocol))

    @overload
    def __call__(self, video: Any, text: str) -> VideoSegmentation: ...

    @overload
    def __call__(self, video: Any, text: Sequence[str]) -> list[VideoSegmentation]: ...

    def __call__(self, video: Any, text: str | Sequence[str]) -> VideoSegmentation | list[VideoSegmentation]:
        texts = validate_texts(text)
        source = open_video(video, fps=self.fps)
        masks, scores, probs = self._run(source, texts)
        names = source.frame_names[: masks.shape[1]] if source.frame_names else []
        if len(names) < masks.shape[1]:
            names = [f"{i:05d}" for i in range(masks.shape[1])]
        results = [
            VideoSegmentation(
                masks[i],
                scores[i],
                texts[i],
                fps=source.fps,
                frame_names=names,
                source=source,
                probabilities=probs[i] if probs is not None else None,
            )
            for i in range(len(texts))
        ]
        return results[0] if isinstance(text, str) else results

    # ------------------------------------------------------------------------------------------------ internals
    def _prepare(self, frames: list[np.ndarray], source: VideoSource) -> tuple[torch.Tensor, tuple[int, int]]:
        pre = self.model.preprocessing
        size = pre.output_size(source.height, source.width)
        x = preprocess_frames(
            np.stack(frames),
            size,
            pre.mean,
            pre.std,
            interpolation=pre.interpolation,
            size_divisor=pre.size_divisor,
            device=self.model.device,
            dtype=self.model.dtype,
        )
        return x, size

    def _logits_to_original(
        self, logits: torch.Tensor, padded: tuple[int, int], size: tuple[int, int], source: VideoSource
    ) -> torch.Tensor:
        """[E, t, h, w] logits at model resolution -> [E, t, H, W] float32 on CPU at the original resolution.

        The values are logits or probabilities depending on the upsampling rule (see :data:`UPSAMPLING`).
        """
        e, t = logits.shape[:2]
        values = _upsample(logits.flatten(0, 1), padded, size, (source.height, source.width), self.upsampling)
        return values.view(e, t, source.height, source.width).cpu()

    def _stream_state(self, source: VideoSource, texts: list[str]) -> Any:
        """The model's state before the first window, from the frames it asks for ahead of the windows
        (:meth:`~lvseg.models.base.RVOSModel.stream_context_indices`); the video is read up to the last of them
        and only those frames are kept. None when the model asks for none."""
        if type(self.model).stream_context_indices is RVOSModel.stream_context_indices:
            return None  # the family needs no frames ahead
        total = source.num_frames
        if total is None:  # a container without a frame count: count by decoding once (nothing is kept)
            total = sum(1 for _ in source)
        indices = self.model.stream_context_indices(max(int(total), 1))
        if not indices:
            return None
        last = max(indices)
        picked: dict[int, np.ndarray] = {}
        seen: np.ndarray | None = None
        for position, frame in enumerate(source):
            seen = frame
            if position in indices:
                picked[position] = frame
            if position >= last:
                break
        if seen is None:
            raise InvalidInputError("the video has no frames")
        # a container may overstate its frame count: a position past the end reads the last frame
        frames = [picked.get(i, seen) for i in indices]
        x, _ = self._prepare(frames, source)
        logger.debug("read %d context frame(s) at %s ahead of the windows", len(indices), indices)
        return self.model.init_stream_state(x.unsqueeze(0).expand(len(texts), *x.shape), texts)

    @torch.inference_mode()
    def _run(self, source: VideoSource, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        model = self.model
        model.eval()
        n_text = len(texts)
        window = self.window or None
        overlap = self.overlap if window else 0
        step = (window - overlap) if window else None
        # masks of finished windows, bit-packed along W (uint8 [E, t, H, ceil(W/8)]): an eighth of the final masks
        mask_chunks: list[np.ndarray] = []
        prob_chunks: list[torch.Tensor] = []
        score_chunks: list[torch.Tensor] = []
        pending: tuple[torch.Tensor, torch.Tensor] | None = None  # values/scores of the last `overlap` frames
        state: Any = None if self.protocol is not None else self._stream_state(source, texts)
        buffer: list[np.ndarray] = []
        processed = 0  # frames of the buffer already covered by a window (the overlap carried over)
        done = [0]  # frames whose masks are final
        if self._window_from_config and (source.num_frames is None or source.num_frames > _WHOLE_VIDEO_WARN):
            logger.warning(
                "%s's config has window=0: the whole video (%s frames) goes through the model at once and memory "
                "grows with its length; pass window=36 (lvseg predict --window 36) or set preprocessing.window in "
                "its config.json to stream it in windows",
                type(model).__name__,
                source.num_frames or "unknown",
            )
        # updated once per window (the frames whose masks are final), and redrawn at every update
        bar = tqdm(
            total=source.num_frames,
            desc="segmenting",
            unit="frame",
            disable=not self.progress,
            mininterval=0,
            miniters=1,
        )

        def keep_values(values: torch.Tensor, scores: torch.Tensor) -> None:
            mask_chunks.append(np.packbits(_foreground(values, self.upsampling, self.threshold).numpy(), axis=-1))
            if self.return_probabilities:
                prob_chunks.append(_probabilities(values, self.upsampling))
            score_chunks.append(scores)
            bar.update(values.shape[1])

        def run_window(frames: list[np.ndarray], final: bool) -> None:
            nonlocal pending, state
            x, size = self._prepare(frames, source)
            batch = x.unsqueeze(0).expand(n_text, *x.shape)  # [E, t, 3, h, w], a view: one copy for all texts
            if self.protocol is not None:
                logits, scores = model.segment(batch, texts, protocol=self.protocol)  # type: ignore[call-arg]
            else:
                logits, scores, state = model.segment_window(batch, texts, state)
            if logits.shape[:2] != (n_text, len(frames)) or scores.shape != (n_text, len(frames)):
                raise RuntimeError(
                    f"{type(model).__name__}.segment returned logits {tuple(logits.shape)} and scores "
                    f"{tuple(scores.shape)} for {n_text} expression(s) x {len(frames)} frames"
                )
            values = self._logits_to_original(logits, (int(x.shape[-2]), int(x.shape[-1])), size, source)
            scores = scores.float().cpu()
            if pending is not None:  # frames shared with the previous window: mean of both (logits or probabilities)
                k = pending[0].shape[1]
                values[:, :k] = (values[:, :k] + pending[0]) / 2
                scores[:, :k] = (scores[:, :k] + pending[1]) / 2
            keep = len(frames) if final else len(frames) - overlap
            logger.debug(
                "segmented a window of %d frames; frames %d-%d are final", len(frames), done[0], done[0] + keep - 1
            )
            done[0] += keep
            keep_values(values[:, :keep], scores[:, :keep])
            pending = (values[:, keep:], scores[:, keep:]) if keep < len(frames) else None

        for frame in source:
            buffer.append(frame)
            if window and len(buffer) == window:
                run_window(buffer, final=False)
                buffer = buffer[step:]
                processed = len(buffer)
        if len(buffer) > processed or not mask_chunks:
            run_window(buffer, final=True)
        elif pending is not None:  # the video ended exactly on a window: its overlap frames are final as they are
            keep_values(*pending)
        bar.close()
        probs = _concat_freeing(prob_chunks) if self.return_probabilities else None
        return _unpack_freeing(mask_chunks, source.width), torch.cat(score_chunks, dim=1), probs


def _unpack_freeing(chunks: list[np.ndarray], width: int) -> torch.Tensor:
    """Bit-packed mask chunks uint8 [E, t, H, ceil(W/8)] -> one bool [E, T, H, W] tensor, each chunk freed once
    unpacked: the peak is the result plus an eighth of it, and memory does not grow with the video beyond that."""
    total = sum(c.shape[1] for c in chunks)
    e, _, h, _ = chunks[0].shape
    out = torch.empty((e, total, h, width), dtype=torch.bool)
    target = out.numpy().view(np.uint8)
    start = 0
    for i in range(len(chunks)):
        n = chunks[i].shape[1]
        target[:, start : start + n] = np.unpackbits(chunks[i], axis=-1, count=width)
        chunks[i] = None  # type: ignore[call-overload]
        start += n
    return out


def _concat_freeing(chunks: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(chunks, dim=1)`` that frees each chunk once copied, so the peak is one result, not two."""
    total = sum(c.shape[1] for c in chunks)
    out = torch.empty((chunks[0].shape[0], total, *chunks[0].shape[2:]), dtype=chunks[0].dtype)
    start = 0
    for i in range(len(chunks)):
        n = chunks[i].shape[1]
        out[:, start : start + n] = chunks[i]
        chunks[i] = None  # type: ignore[call-overload]
        start += n
    return out
