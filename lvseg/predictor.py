"""Model-agnostic inference: decode -> windows -> ``model.segment_window`` -> resize -> :class:`VideoSegmentation`.

Windowing policy: the video is decoded lazily and cut into windows of ``window`` frames that overlap by
``overlap`` frames (both from the model's preprocessing config unless given). Only one window of frames is in
memory at a time. Frames covered by two windows get the mean of the two windows' mask logits and scores. A model
that links the referred object across windows does so through the ``state`` of
:meth:`~lvseg.models.base.RVOSModel.segment_window`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .errors import InvalidInputError
from .models.base import RVOSModel, validate_texts
from .utils import atomic_path
from .video import PALETTE, VideoSource, open_video, overlay_frame, preprocess_frames, write_video

__all__ = ["Predictor", "VideoSegmentation", "save_overlay"]

logger = logging.getLogger(__name__)


@dataclass
class VideoSegmentation:
    """The masks of one referring expression over a video.

    Attributes:
        masks: ``bool [T, H, W]`` at the video's original (displayed) resolution.
        scores: ``float [T]`` confidence per frame, in [0, 1].
        text: the expression.
        fps: frame rate of the source (30 for inputs that carry none).
        frame_names: one name per frame (file stems for a frame folder, else ``00000``, ``00001``, ...).
    """

    masks: torch.Tensor
    scores: torch.Tensor
    text: str
    fps: float = 30.0
    frame_names: list[str] = field(default_factory=list)
    source: VideoSource | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def to_numpy(self) -> np.ndarray:
        """The masks as a ``bool [T, H, W]`` numpy array."""
        return self.masks.cpu().numpy()

    def to_rle(self) -> list[dict[str, Any]]:
        """One COCO RLE per frame (``{"size": [H, W], "counts": str}``, JSON-serialisable; pycocotools format)."""
        from pycocotools import mask as mask_utils

        array = np.asfortranarray(self.to_numpy().transpose(1, 2, 0).astype(np.uint8))  # [H, W, T]
        rles = mask_utils.encode(array)
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii")
        return list(rles)

    def save_pngs(self, directory: str | Path) -> Path:
        """Write one palette PNG per frame (0 background, 1 object; the DAVIS/Ref-YouTube-VOS palette)."""
        from PIL import Image

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        names = self.frame_names or [f"{i:05d}" for i in range(len(self))]
        for name, mask in zip(names, self.to_numpy()):
            image = Image.fromarray(mask.astype(np.uint8), mode="P")
            image.putpalette(PALETTE)
            with atomic_path(directory / f"{name}.png") as tmp:
                image.save(tmp, format="PNG")
        return directory

    def save_overlay(self, path: str | Path, *, alpha: float = 0.5, caption: bool = True,
                     color: tuple[int, int, int] | None = None) -> Path:
        """Write the video with the mask blended in colour, outlined, and the expression as a caption.

        ``.mp4``/``.mkv``/``.webm``/``.avi``/``.mov`` are encoded with PyAV, ``.gif`` with Pillow.
        """
        return save_overlay([self], path, alpha=alpha, caption=caption, colors=[color] if color else None)


def save_overlay(
    results: Sequence[VideoSegmentation],
    path: str | Path,
    *,
    alpha: float = 0.5,
    caption: bool = True,
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> Path:
    """Write one overlay video showing several expressions' masks (one colour each) on the same video."""
    if not results:
        raise InvalidInputError("no results to draw")
    source = results[0].source
    if source is None:
        raise InvalidInputError("this result holds no reference to its video, so no overlay can be drawn")
    if any(r.source is not source for r in results):
        raise InvalidInputError("all results of one overlay must come from the same video")
    captions = [r.text for r in results] if caption else None
    total = len(results[0])

    def frames() -> Any:
        for index, frame in enumerate(tqdm(source, total=total, desc="writing overlay", unit="frame",
                                           leave=False, disable=total < 50)):
            if index >= total:
                break
            yield overlay_frame(frame, [r.masks[index].numpy() for r in results], colors=colors, alpha=alpha,
                                captions=captions)

    return write_video(frames(), path, fps=source.fps)


class Predictor:
    """Run a model on whole videos of any length.

    Args:
        model: an :class:`~lvseg.models.base.RVOSModel` (e.g. from :func:`lvseg.load`).
        window: frames per model pass (default: the model's ``preprocessing.window``; 0 = whole video at once).
        overlap: frames shared by consecutive windows (default: ``preprocessing.overlap``).
        threshold: logit threshold for foreground (0.0 = probability 0.5).
        progress: show a tqdm bar.
        fps: frame rate for inputs that carry none (folders, arrays).

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
    ) -> None:
        if not isinstance(model, RVOSModel):
            raise InvalidInputError(f"Predictor needs an lvseg model, got {type(model).__name__}")
        pre = model.preprocessing
        self.model = model
        self.window = pre.window if window is None else int(window)
        self.overlap = pre.overlap if overlap is None else int(overlap)
        if self.window < 0 or self.overlap < 0 or (self.window and self.overlap >= self.window):
            raise InvalidInputError(
                f"need window >= 0 and 0 <= overlap < window, got window={self.window}, overlap={self.overlap}"
            )
        self.threshold = threshold
        self.progress = progress
        self.fps = fps

    def __call__(self, video: Any, text: str | Sequence[str]) -> VideoSegmentation | list[VideoSegmentation]:
        texts = validate_texts(text)
        source = open_video(video, fps=self.fps)
        masks, scores = self._run(source, texts)
        names = source.frame_names[: masks.shape[1]] if source.frame_names else []
        if len(names) < masks.shape[1]:
            names = [f"{i:05d}" for i in range(masks.shape[1])]
        results = [
            VideoSegmentation(masks[i], scores[i], texts[i], fps=source.fps, frame_names=names, source=source)
            for i in range(len(texts))
        ]
        return results[0] if isinstance(text, str) else results

    # ------------------------------------------------------------------------------------------------ internals
    def _prepare(self, frames: list[np.ndarray], source: VideoSource) -> tuple[torch.Tensor, tuple[int, int]]:
        pre = self.model.preprocessing
        size = pre.output_size(source.height, source.width)
        x = preprocess_frames(np.stack(frames), size, pre.mean, pre.std, interpolation=pre.interpolation,
                              size_divisor=pre.size_divisor, device=self.model.device, dtype=self.model.dtype)
        return x, size

    def _logits_to_original(self, logits: torch.Tensor, padded: tuple[int, int], size: tuple[int, int],
                            source: VideoSource) -> torch.Tensor:
        """[E, t, h, w] logits at model resolution -> [E, t, H, W] float32 on CPU at the original resolution."""
        e, t = logits.shape[:2]
        x = logits.float().flatten(0, 1).unsqueeze(1)  # [E*t, 1, h, w]
        if tuple(x.shape[-2:]) != padded:
            x = F.interpolate(x, size=padded, mode="bilinear", align_corners=False)
        x = x[..., : size[0], : size[1]]  # drop the size_divisor padding
        x = F.interpolate(x, size=(source.height, source.width), mode="bilinear", align_corners=False)
        return x.view(e, t, source.height, source.width).cpu()

    @torch.inference_mode()
    def _run(self, source: VideoSource, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        model.eval()
        n_text = len(texts)
        window = self.window or None
        overlap = self.overlap if window else 0
        step = (window - overlap) if window else None
        mask_chunks: list[torch.Tensor] = []
        score_chunks: list[torch.Tensor] = []
        pending: tuple[torch.Tensor, torch.Tensor] | None = None  # logits/scores of the last `overlap` frames
        state: Any = None
        buffer: list[np.ndarray] = []
        processed = 0  # frames of the buffer already covered by a window (the overlap carried over)
        bar = tqdm(total=source.num_frames, desc="segmenting", unit="frame", disable=not self.progress)

        def run_window(frames: list[np.ndarray], final: bool) -> None:
            nonlocal pending, state
            x, size = self._prepare(frames, source)
            batch = x.unsqueeze(0).expand(n_text, *x.shape)  # [E, t, 3, h, w], a view: one copy for all texts
            logits, scores, state = model.segment_window(batch, texts, state)
            if logits.shape[:2] != (n_text, len(frames)) or scores.shape != (n_text, len(frames)):
                raise RuntimeError(
                    f"{type(model).__name__}.segment returned logits {tuple(logits.shape)} and scores "
                    f"{tuple(scores.shape)} for {n_text} expression(s) x {len(frames)} frames"
                )
            logits = self._logits_to_original(logits, tuple(x.shape[-2:]), size, source)
            scores = scores.float().cpu()
            if pending is not None:
                k = pending[0].shape[1]
                logits[:, :k] = (logits[:, :k] + pending[0]) / 2
                scores[:, :k] = (scores[:, :k] + pending[1]) / 2
            keep = len(frames) if final else len(frames) - overlap
            mask_chunks.append(logits[:, :keep] > self.threshold)
            score_chunks.append(scores[:, :keep])
            pending = (logits[:, keep:], scores[:, keep:]) if keep < len(frames) else None
            bar.update(keep)

        for frame in source:
            buffer.append(frame)
            if window and len(buffer) == window:
                run_window(buffer, final=False)
                buffer = buffer[step:]
                processed = len(buffer)
        if len(buffer) > processed or not mask_chunks:
            run_window(buffer, final=True)
        elif pending is not None:  # the video ended exactly on a window: its overlap frames are final as they are
            mask_chunks.append(pending[0] > self.threshold)
            score_chunks.append(pending[1])
            bar.update(pending[0].shape[1])
        bar.close()
        return _concat_freeing(mask_chunks), torch.cat(score_chunks, dim=1)


def _concat_freeing(chunks: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(chunks, dim=1)`` that frees each chunk once copied, so the peak is one result, not two."""
    total = sum(c.shape[1] for c in chunks)
    out = torch.empty((chunks[0].shape[0], total, *chunks[0].shape[2:]), dtype=chunks[0].dtype)
    start = 0
    for i in range(len(chunks)):
        n = chunks[i].shape[1]
        out[:, start: start + n] = chunks[i]
        chunks[i] = None  # type: ignore[call-overload]
        start += n
    return out
