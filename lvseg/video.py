"""Video and image input and output: decoding (PyAV for video files, Pillow for images and frame folders),
preprocessing, overlays.

Decoding is lazy and sequential (no seeking), so a long video is never held in memory: :class:`VideoSource`
yields one ``uint8 [H, W, 3]`` RGB frame at a time and can be iterated again (a file is decoded again). A single
image is a one-frame video (``kind == "image"``): see :func:`is_image_input` for how an input is recognised as one
and :func:`image_to_rgb` for how its pixels become RGB.
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

from .errors import ImageDecodeError, InvalidInputError, VideoDecodeError, VideoNotFoundError

__all__ = [
    "VideoSource",
    "open_video",
    "is_image_input",
    "read_image",
    "image_to_rgb",
    "write_image",
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
# The first bytes of the still-image formats above: a file that starts with one is read as an image whatever its
# name ("photo" without an extension, a ".dat" download). GIF is not here: an animated GIF is a video (PyAV).
_IMAGE_SIGNATURES = (
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"\xff\xd8\xff",  # JPEG
    b"BM",  # BMP
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
)


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
    ``num_frames`` is exact for folders, arrays and images (1) and the container's count (possibly ``None``) for
    video files.
    """

    kind: str  # "file", "folder", "array" or "image" (one still image, decoded when opened)
    height: int
    width: int
    num_frames: int | None
    fps: float
    frame_names: list[str] = field(default_factory=list)  # file stems for folders, else "00000", ...
    path: Path | None = None
    rotation: int = 0  # degrees counter-clockwise applied to decoded frames (from the display matrix)
    _frames: Any = field(default=None, repr=False)  # the frames for kinds "array"/"image", the files for "folder"

    @property
    def is_image(self) -> bool:
        """True for a single still image (a one-frame source whose overlay is an image, not a video)."""
        return self.kind == "image"

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
                    frame = image_to_rgb(image, name=str(file))
            except (OSError, SyntaxError, ValueError) as exc:  # ImageDecodeError is a ValueError
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
        return image_to_rgb(frame)
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().numpy()
    array = np.asarray(frame)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise InvalidInputError(f"a frame must be [H, W, 3] (RGB), got shape {list(array.shape)}")
    if array.dtype != np.uint8:
        raise InvalidInputError(
            f"frames must be uint8 RGB (0-255), got {array.dtype}; convert with (x * 255).round().astype(np.uint8)"
        )
    return np.ascontiguousarray(array[:, :, :3])


# ------------------------------------------------------------------------------------------------ images
def _has_image_signature(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return any(head.startswith(signature) for signature in _IMAGE_SIGNATURES)


def is_image_input(source: Any) -> bool:
    """Whether :func:`open_video` reads ``source`` as one still image (a one-frame video) rather than a video.

    The rule, in order:

    - a path (``str``/``Path``) to an existing file whose first bytes are a PNG, JPEG, BMP, WebP or TIFF signature,
      whatever its name, or a file named ``.png/.jpg/.jpeg/.bmp/.webp/.tif/.tiff`` (whose content Pillow must
      then read); other files are videos (PyAV), folders are frame folders. A ``.gif`` is a video (it may be
      animated); a one-frame GIF is a one-frame video.
    - a single ``PIL.Image.Image`` (a list of them is a video);
    - a numpy array or tensor with 2 dimensions (``[H, W]`` grayscale) or 3 (``[H, W, C]``, channels last,
      ``C`` 1, 3 or 4); 4 dimensions (``[T, H, W, 3]``) is a video.
    """
    from PIL import Image

    if isinstance(source, VideoSource):
        return source.is_image
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.is_dir():
            return False
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return True
        return path.is_file() and _has_image_signature(path)
    if isinstance(source, Image.Image):
        return True
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return source.ndim in (2, 3)
    return False


def image_to_rgb(image: Any, *, name: str = "the image") -> np.ndarray:
    """Pixels of a PIL image as ``uint8 [H, W, 3]`` RGB, one documented rule per mode (no EXIF rotation here).

    - ``RGB``: as is. ``L`` (grayscale) and ``1`` (bilevel, 0/255): the value in all three channels.
    - ``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa``: the alpha channel is dropped (the colours are kept as stored, not
      blended onto a background), as for RGBA frames of a video.
    - ``P`` (palette, with or without transparency): the palette colours (transparency dropped).
    - ``I;16``/``I;16L``/``I;16B``/``I;16N`` (16-bit grayscale PNG/TIFF) and ``I`` (32-bit integer): 16-bit values
      ``v`` (clipped to 0-65535) become ``round(v / 257)`` (0 -> 0, 65535 -> 255), then grayscale as ``L``.
      16-bit RGB PNGs are reduced to 8 bits per channel by Pillow itself when read (mode ``RGB``).
    - ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's conversion to ``RGB``.
    - ``F`` (32-bit float) has no agreed range and is refused with :class:`~lvseg.errors.ImageDecodeError`.
    """
    mode = image.mode
    if mode == "F":
        raise ImageDecodeError(
            f"{name} has 32-bit float pixels (mode F), whose range lvseg cannot know; save it as an 8- or 16-bit "
            "image, or pass a uint8 array [H, W, 3]"
        )
    if mode == "I" or mode.startswith("I;16"):
        values = np.asarray(image).astype(np.int64).clip(0, 65535)
        gray = ((values + 128) // 257).astype(np.uint8)  # == round(v / 257) for integers (no ties)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "RGB":
        return np.asarray(image)
    if mode in ("P", "PA"):
        image = image.convert("RGBA")  # the palette colours; Pillow warns on P -> RGB with transparency bytes
    elif mode not in ("RGBA", "RGBa", "LA", "La", "L", "1"):
        return np.asarray(image.convert("RGB"))
    if image.mode in ("LA", "La"):
        image = image.convert("L")  # drops alpha, keeps the gray values as stored (La: premultiplied, as Pillow)
    if image.mode in ("L", "1"):
        gray = np.asarray(image.convert("L"))
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    return np.ascontiguousarray(np.asarray(image.convert("RGBA") if image.mode == "RGBa" else image)[:, :, :3])


def read_image(image: Any) -> np.ndarray:
    """Read one image file or PIL image as ``uint8 [H, W, 3]`` RGB, as it is displayed.

    The EXIF ``Orientation`` tag (phone photos) is applied (``PIL.ImageOps.exif_transpose``), so the masks line up
    with the image a viewer shows; then :func:`image_to_rgb`'s rule per pixel mode.

    Raises:
        VideoNotFoundError: a path that does not exist.
        ImageDecodeError: a file that is not an image Pillow can read, truncated, too large, or of mode ``F``.
    """
    from PIL import Image, ImageOps

    if isinstance(image, Image.Image):
        name = str(getattr(image, "filename", "") or "the PIL image")
        try:
            return image_to_rgb(ImageOps.exif_transpose(image), name=name)
        except (OSError, SyntaxError, ValueError) as exc:
            if isinstance(exc, ImageDecodeError):
                raise
            raise ImageDecodeError(f"{name} could not be read ({exc}); the image data may be truncated") from exc
    path = Path(image).expanduser()
    if not path.exists():
        raise VideoNotFoundError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(path) as opened:
            return image_to_rgb(ImageOps.exif_transpose(opened), name=str(path))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(
            f"{path} is larger than Pillow's limit of {Image.MAX_IMAGE_PIXELS} pixels ({exc}); resize it, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        ) from exc
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # UnidentifiedImageError is an OSError
        raise ImageDecodeError(
            f"{path} is not an image that Pillow can read ({exc}). If it is truncated (an interrupted download or "
            "copy) get the complete file; otherwise re-save it as PNG or JPEG. Images: "
            f"{', '.join(IMAGE_EXTENSIONS)}; videos: mp4, webm, avi, mkv, mov, gif, or a folder of frames."
        ) from exc


def _image_array(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """A 2-D or 3-D array/tensor (one image, channels last) -> ``uint8 [H, W, 3]``; channels-first is refused."""
    shape = list(image.shape)
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            raise InvalidInputError(
                f"an image tensor must be uint8 (0-255), got {image.dtype}; convert with (x * 255).round().byte()"
            )
        image = image.detach().cpu().numpy()
    if image.ndim == 3 and image.shape[-1] not in (1, 3, 4):
        hint = (
            "it looks channels-first [C, H, W]: pass x.permute(1, 2, 0) (tensor) or x.transpose(1, 2, 0) (numpy)"
            if shape[0] in (1, 3, 4)
            else "a video is [T, H, W, 3] (a grayscale video [T, H, W] needs the channel axis: "
            "np.repeat(x[..., None], 3, axis=-1))"
        )
        raise InvalidInputError(f"a 3-D array is one image [H, W, 3] (channels last), got shape {shape}; {hint}")
    if image.dtype != np.uint8:
        raise InvalidInputError(
            f"an image array must be uint8 RGB (0-255), got {image.dtype}; convert with "
            "(x * 255).round().astype(np.uint8) for values in [0, 1], or (x + 128) // 257 for 16-bit values"
        )
    return _as_rgb_array(image)


def _image_source(frame: np.ndarray, name: str = "00000", path: Path | None = None) -> VideoSource:
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ImageDecodeError(f"the image {name} is empty ({frame.shape[1]}x{frame.shape[0]} pixels)")
    height, width = frame.shape[:2]
    return VideoSource("image", height, width, 1, 30.0, frame_names=[name], path=path, _frames=[frame])


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
            a list of PIL images or ``uint8 [H, W, 3]`` arrays, or a ``uint8`` array/tensor ``[T, H, W, 3]``; or one
            image: an image file, a PIL image, or a ``uint8`` array/tensor ``[H, W, 3]`` (a one-frame video of
            kind ``"image"``, see :func:`is_image_input` and :func:`read_image`).
        fps: the frame rate for inputs that carry none (folders, arrays, images); default 30.

    Raises:
        VideoNotFoundError, VideoDecodeError (ImageDecodeError for an image), InvalidInputError.
    """
    from PIL import Image

    if isinstance(video, VideoSource):
        return video
    if isinstance(video, (str, Path)):
        path = Path(video).expanduser()
        if not path.exists():
            what = "image" if path.suffix.lower() in IMAGE_EXTENSIONS else "video"
            raise VideoNotFoundError(f"{what} {str(path)!r} does not exist")
        if path.is_dir():
            source = _open_folder(path)
        elif is_image_input(path):
            source = _image_source(read_image(path), name=path.stem, path=path)
        else:
            source = _open_file(path)
    elif isinstance(video, Image.Image):
        source = _image_source(read_image(video))
    elif isinstance(video, (np.ndarray, torch.Tensor)) and video.ndim in (2, 3):
        source = _image_source(_image_array(video))
    else:
        if isinstance(video, torch.Tensor):
            if video.ndim != 4 or video.shape[-1] != 3:
                raise InvalidInputError(
                    f"a video tensor must be uint8 [T, H, W, 3] (an image: [H, W, 3]), got shape "
                    f"{list(video.shape)}; for [T, 3, H, W] use video.permute(0, 2, 3, 1)"
                )
            if video.dtype != torch.uint8:
                raise InvalidInputError(f"a video tensor must be uint8 (0-255), got {video.dtype}")
            frames: Any = video
        elif isinstance(video, np.ndarray):
            if video.ndim != 4 or video.shape[-1] != 3:
                raise InvalidInputError(
                    f"a video array must be uint8 [T, H, W, 3] (an image: [H, W, 3]), got shape {list(video.shape)}"
                )
            frames = video
        elif isinstance(video, (list, tuple)):
            frames = video
        else:
            raise InvalidInputError(
                f"unsupported video input of type {type(video).__name__}: pass a file path, a frame folder, a list "
                "of PIL images / numpy arrays, a uint8 tensor [T, H, W, 3], or one image (a file, a PIL image, "
                "a uint8 array [H, W, 3])"
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


# Pillow format names of the still-image overlays (IMAGE_EXTENSIONS)
_IMAGE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}


def write_image(frame: np.ndarray, path: str | Path) -> Path:
    """Write one ``uint8 [H, W, 3]`` frame as a still image at its exact size; the format follows the suffix
    (``.png``, ``.jpg``/``.jpeg`` at quality 95, ``.bmp``, ``.webp`` lossless, ``.tif``/``.tiff``). Written under a
    temporary name and renamed when complete."""
    from PIL import Image

    from .utils import atomic_path

    path = Path(path)
    fmt = _IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InvalidInputError(f"cannot write {path.name} as an image: use {', '.join(IMAGE_EXTENSIONS)}")
    options: dict[str, Any] = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(frame)).save(tmp, format=fmt, **options)
    return path


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
            raise InvalidInputError(
                f"cannot write {path.name}: use .mp4, .mkv, .webm, .avi, .mov or .gif (a one-frame result can also "
                f"be written as an image: {', '.join(IMAGE_EXTENSIONS)})"
            )
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
