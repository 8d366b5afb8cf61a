"""Video input and output: decoding (PyAV for files, Pillow for frame folders), preprocessing, overlays.

Decoding is lazy and sequential (no seeking), so a long video is never held in memory: :class:`VideoSource`
yields one ``uint8 [H, W, 3]`` RGB frame at a time and can be iterated again (a file is decoded again).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InvalidInputError, VideoDecodeError, VideoNotFoundError

__all__ = [
    "VideoSource",
    "open_video",
    "preprocess_frames",
    "overlay_frame",
    "write_video",
    "PALETTE",
    "VIDEO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
]

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".gif")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _davis_palette() -> list[int]:
    """The 256-colour palette of DAVIS / Ref-YouTube-VOS annotation PNGs (bit-interleaved label colours)."""
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


PALETTE = _davis_palette()


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _rotate(frame: np.ndarray, degrees: int) -> np.ndarray:
    """Rotate counter-clockwise by ``degrees`` (a multiple of 90)."""
    turns = (degrees // 90) % 4
    return np.ascontiguousarray(np.rot90(frame, k=turns)) if turns else frame


@dataclass
class VideoSource:
    """A video that can be iterated frame by frame (``uint8 [H, W, 3]`` RGB numpy arrays).

    Build one with :func:`open_video`. ``height``/``width`` are the displayed size (rotation applied),
    ``num_frames`` is exact for folders and arrays and the container's count (possibly ``None``) for files.
    """

    kind: str  # "file", "folder" or "array"
    height: int
    width: int
    num_frames: int | None
    fps: float
    frame_names: list[str] = field(default_factory=list)  # file stems for folders, else "00000", ...
    path: Path | None = None
    rotation: int = 0  # degrees counter-clockwise applied to decoded frames (from the display matrix)
    _frames: Any = None  # the frames for kind "array" / the files for kind "folder"

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.kind == "file":
            yield from self._decode_file()
        elif self.kind == "folder":
            yield from self._read_folder()
        else:
            for frame in self._frames:
                yield _as_rgb_array(frame)

    def _read_folder(self) -> Iterator[np.ndarray]:
        from PIL import Image

        for file in self._frames:
            try:
                with Image.open(file) as image:
                    frame = np.asarray(image.convert("RGB"))
            except OSError as exc:
                raise VideoDecodeError(f"cannot read frame {file} ({exc}); remove or replace the file") from exc
            if frame.shape[:2] != (self.height, self.width):
                raise VideoDecodeError(
                    f"frame {file.name} is {frame.shape[1]}x{frame.shape[0]} but the first frame is "
                    f"{self.width}x{self.height}: all frames of a folder must have one size"
                )
            yield frame

    def _decode_file(self) -> Iterator[np.ndarray]:
        import av

        assert self.path is not None
        count = 0
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    array = frame.to_ndarray(format="rgb24")
                    count += 1
                    yield _rotate(array, self.rotation)
        except av.error.FFmpegError as exc:
            if count == 0:
                raise VideoDecodeError(
                    f"{self.path} could not be decoded ({exc}); the file may be corrupt or truncated: re-encode it "
                    "(e.g. `ffmpeg -i in.mp4 -c:v libx264 out.mp4`) or extract its frames to a folder"
                ) from exc
            # A truncated file still yields the frames before the damage; keep them, but say so.
            logger.warning(
                "%s: decoding stopped after %d frames (%s); the file is probably truncated", self.path, count, exc
            )
        if count == 0:
            raise VideoDecodeError(f"{self.path} contains no decodable video frames")


def _as_rgb_array(frame: Any) -> np.ndarray:
    from PIL import Image

    if isinstance(frame, Image.Image):
        return np.asarray(frame.convert("RGB"))
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().numpy()
    array = np.asarray(frame)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise InvalidInputError(f"a frame must be [H, W, 3] (RGB), got shape {list(array.shape)}")
    if array.dtype != np.uint8:
        raise InvalidInputError(
            f"frames must be uint8 RGB (0-255), got {array.dtype}; convert with (x * 255).round().astype(np.uint8)"
        )
    return np.ascontiguousarray(array[:, :, :3])


def _open_file(path: Path) -> VideoSource:
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise VideoDecodeError(
            f"{path} is not a video that FFmpeg can read ({exc}). If it is truncated (e.g. an interrupted download "
            "or copy) get the complete file; supported: mp4, webm, avi, mkv, mov, gif, or a folder of frames."
        ) from exc
    with container:
        if not container.streams.video:
            raise VideoDecodeError(f"{path} has no video stream (audio only?)")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        rotation = 0
        try:
            # The display matrix of phone videos says how to rotate the decoded frames.
            first = next(container.decode(stream))
            rotation = _display_rotation(first, stream)
            height, width = first.height, first.width
        except StopIteration:
            raise VideoDecodeError(f"{path} contains no video frames") from None
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(
                f"{path} could not be decoded ({exc}); the file may be corrupt or truncated"
            ) from exc
        if (rotation // 90) % 2:
            height, width = width, height
        count = stream.frames or None
    return VideoSource("file", height, width, count, float(rate), path=path, rotation=rotation)


def _open_folder(path: Path) -> VideoSource:
    from PIL import Image, UnidentifiedImageError

    files = sorted(
        (p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()), key=_natural_key
    )
    if not files:
        raise VideoDecodeError(f"the folder {path} contains no frames (expected {', '.join(IMAGE_EXTENSIONS)} files)")
    sizes = {}
    for file in files:  # reading headers only: cheap, and a mixed-size folder fails before any model work
        try:
            with Image.open(file) as image:
                sizes[file] = image.size
        except (OSError, UnidentifiedImageError) as exc:
            raise VideoDecodeError(f"cannot read frame {file} ({exc}); remove or replace the file") from exc
    width, height = sizes[files[0]]
    odd = [f.name for f in files if sizes[f] != (width, height)]
    if odd:
        raise VideoDecodeError(
            f"frames in {path} have mixed sizes: {files[0].name} is {width}x{height} but "
            f"{', '.join(odd[:3])}{' ...' if len(odd) > 3 else ''} differ; resize them to one size"
        )
    return VideoSource(
        "folder", height, width, len(files), 30.0, frame_names=[f.stem for f in files], path=path, _frames=files
    )


def open_video(video: Any, *, fps: float | None = None) -> VideoSource:
    """Open any supported video input without decoding it all.

    Args:
        video: a video file path (mp4, webm, avi, mkv, mov, gif), a folder of frames (jpg/png/..., natural sort),
            a list of PIL images or ``uint8 [H, W, 3]`` arrays, or a ``uint8`` array/tensor ``[T, H, W, 3]``.
        fps: the frame rate for inputs that carry none (folders, arrays); default 30.

    Raises:
        VideoNotFoundError, VideoDecodeError, InvalidInputError.
    """
    if isinstance(video, VideoSource):
        return video
    if isinstance(video, (str, Path)):
        path = Path(video).expanduser()
        if not path.exists():
            raise VideoNotFoundError(f"video {str(path)!r} does not exist")
        source = _open_folder(path) if path.is_dir() else _open_file(path)
    else:
        if isinstance(video, torch.Tensor):
            if video.ndim != 4 or video.shape[-1] != 3:
                raise InvalidInputError(
                    f"a video tensor must be uint8 [T, H, W, 3], got shape {list(video.shape)}; "
                    "for [T, 3, H, W] use video.permute(0, 2, 3, 1)"
                )
            if video.dtype != torch.uint8:
                raise InvalidInputError(f"a video tensor must be uint8 (0-255), got {video.dtype}")
            frames: Any = video
        elif isinstance(video, np.ndarray):
            if video.ndim != 4 or video.shape[-1] != 3:
                raise InvalidInputError(f"a video array must be uint8 [T, H, W, 3], got shape {list(video.shape)}")
            frames = video
        elif isinstance(video, (list, tuple)):
            frames = video
        else:
            raise InvalidInputError(
                f"unsupported video input of type {type(video).__name__}: pass a file path, a frame folder, a list "
                "of PIL images / numpy arrays, or a uint8 tensor [T, H, W, 3]"
            )
        if len(frames) == 0:
            raise VideoDecodeError("the video has zero frames")
        first = _as_rgb_array(frames[0])
        height, width = first.shape[:2]
        if isinstance(frames, (list, tuple)):
            for i, frame in enumerate(frames):
                shape = _as_rgb_array(frame).shape[:2]
                if shape != (height, width):
                    raise VideoDecodeError(
                        f"frame {i} is {shape[1]}x{shape[0]} but frame 0 is {width}x{height}: all frames must have "
                        "one size"
                    )
        source = VideoSource("array", height, width, len(frames), 30.0, _frames=frames)
    if fps is not None:
        source.fps = float(fps)
    if not source.frame_names and source.num_frames:
        source.frame_names = [f"{i:05d}" for i in range(source.num_frames)]
    return source


def preprocess_frames(
    frames: np.ndarray | torch.Tensor,
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    interpolation: str = "bilinear",
    size_divisor: int = 1,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Resize and normalise frames for a model.

    Args:
        frames: ``uint8 [T, H, W, 3]`` RGB.
        size: output ``(h, w)``.
        mean, std: per-channel statistics of pixel values in [0, 1].
        size_divisor: zero-pad the bottom/right so ``h`` and ``w`` are multiples of it (after normalisation).

    Returns:
        float ``[T, 3, h', w']`` on ``device`` in ``dtype``.
    """
    x = torch.as_tensor(np.asarray(frames)).to(device)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)  # [T, 3, H, W]
    if tuple(x.shape[-2:]) != tuple(size):
        antialias = interpolation in ("bilinear", "bicubic")
        x = F.interpolate(
            x, size=size, mode=interpolation, antialias=antialias, **({"align_corners": False} if antialias else {})
        )
        if interpolation == "bicubic":
            x = x.clamp_(0.0, 1.0)
    mean_t = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    x = (x - mean_t) / std_t
    if size_divisor > 1:
        pad_h = -x.shape[-2] % size_divisor
        pad_w = -x.shape[-1] % size_divisor
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
    return x.to(dtype)


# --------------------------------------------------------------------------------------------- output
OVERLAY_COLORS = [(255, 56, 56), (56, 132, 255), (72, 219, 72), (255, 178, 29), (187, 84, 255), (0, 212, 212)]


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (a 1-pixel inner boundary)."""
    padded = np.pad(mask, 1, mode="constant")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~interior


def overlay_frame(
    frame: np.ndarray,
    masks: Sequence[np.ndarray],
    *,
    colors: Sequence[tuple[int, int, int]] | None = None,
    alpha: float = 0.5,
    captions: Sequence[str] | None = None,
) -> np.ndarray:
    """Blend coloured masks with outlines (and optional captions) onto one ``uint8 [H, W, 3]`` frame."""
    colors = list(colors or OVERLAY_COLORS)
    out = frame.astype(np.float32)
    for i, mask in enumerate(masks):
        color = np.array(colors[i % len(colors)], dtype=np.float32)
        out[mask] = out[mask] * (1 - alpha) + color * alpha
        out[_outline(mask)] = color
    out = out.round().clip(0, 255).astype(np.uint8)
    if captions:
        from PIL import Image, ImageDraw

        image = Image.fromarray(out)
        draw = ImageDraw.Draw(image)
        y = 4
        for i, caption in enumerate(captions):
            text_color = tuple(colors[i % len(colors)])
            box = draw.textbbox((6, y), caption)
            draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
            draw.text((6, y), caption, fill=text_color)
            y = int(box[3]) + 6
        out = np.asarray(image)
    return out


def write_video(frames: Iterable[np.ndarray], path: str | Path, *, fps: float = 30.0) -> Path:
    """Encode ``uint8 [H, W, 3]`` frames to ``path``: H.264 mp4 (or another container PyAV knows) or an animated gif.

    The file is written under a temporary name and renamed when complete, so an interrupted write never leaves a
    broken video at ``path``.
    """
    import av

    from .utils import atomic_path

    path = Path(path)
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".gif":
            from PIL import Image

            images = [Image.fromarray(f) for f in frames]
            if not images:
                raise InvalidInputError("no frames to write")
            images[0].save(
                tmp,
                format="GIF",
                save_all=True,
                append_images=images[1:],
                duration=max(1, int(round(1000 / fps))),
                loop=0,
            )
            return path
        fmt = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
        if suffix not in fmt:
            raise InvalidInputError(f"cannot write {path.name}: use .mp4, .mkv, .webm, .avi, .mov or .gif")
        codec = {"webm": "libvpx-vp9"}.get(fmt[suffix], "libx264" if fmt[suffix] != "avi" else "mpeg4")
        rate = Fraction(fps).limit_denominator(1001)
        with av.open(str(tmp), mode="w", format=fmt[suffix]) as container:
            stream = None
            for frame in frames:
                if stream is None:
                    stream = container.add_stream(codec, rate=rate)
                    # yuv420p needs even sizes: pad by one pixel where needed
                    stream.height = frame.shape[0] + frame.shape[0] % 2
                    stream.width = frame.shape[1] + frame.shape[1] % 2
                    stream.pix_fmt = "yuv420p"
                    if codec == "libx264":
                        stream.options = {"crf": "20", "preset": "veryfast"}
                if frame.shape[0] % 2 or frame.shape[1] % 2:
                    frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), mode="edge")
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            if stream is None:
                raise InvalidInputError("no frames to write")
            for packet in stream.encode():
                container.mux(packet)
    return path


def _display_rotation(frame: Any, stream: Any) -> int:
    """Degrees counter-clockwise of the display matrix: ``VideoFrame.rotation`` (PyAV >= 14.1), else computed
    from the frame's ``DISPLAYMATRIX`` side data as FFmpeg's ``av_display_rotation_get`` does (PyAV 12-14.0,
    which have no ``rotation``); 0 without a matrix."""
    import struct

    degrees = getattr(frame, "rotation", None)
    if degrees is None:
        for side in getattr(frame, "side_data", None) or ():
            if getattr(getattr(side, "type", None), "name", None) == "DISPLAYMATRIX" and len(bytes(side)) >= 36:
                m = struct.unpack("=9i", bytes(side)[:36])  # 3x3, 16.16 fixed point in the first two columns
                scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
                if scale0 and scale1:
                    degrees = -math.degrees(math.atan2(m[1] / scale1, m[0] / scale0))
                break
    try:
        degrees = float(degrees or 0)
    except (TypeError, ValueError):
        return 0
    return int(round(degrees)) if math.isfinite(degrees) else 0
