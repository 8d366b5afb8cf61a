"""``lvseg app``: a web demo (Gradio) that runs one or two models on a video and one or more expressions.

The page takes an uploaded video (or one of a few generated Shapes videos, so it works offline on the bundled
model), one expression per line and one or two models, and returns the overlay video (one colour per expression,
with a legend), a plot of each expression's per-frame score, the masks as a zip of palette PNGs and as COCO RLE
JSON, and, for two models, both overlays side by side with their mask agreement (IoU per frame).

Everything but :func:`build_app` and :func:`launch` is plain Python without Gradio, so it is tested without a
browser (``tests/test_app.py``); the page itself is tested in headless Chromium (``tests/test_app_browser.py``).
Gradio is an optional dependency: ``pip install "lvseg[app]"``.

Models are listed from the registry (or given with ``--model``): an entry is offered when its weights are on this
machine (bundled with the package, in the Hugging Face cache at the pinned revision, or a local folder), and the
others are shown as unavailable with the reason. The app never downloads weights: a Space that should serve a
published model fills the cache at build time (``lvseg download NAME``). A model is loaded once per process and
kept (:class:`ModelCache`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError, InvalidTextError, LVSegError, VideoDecodeError
from .registry import DEFAULT_MODEL

__all__ = [
    "Limits",
    "ModelChoice",
    "ModelCache",
    "Cancelled",
    "AppResult",
    "find_models",
    "parse_expressions",
    "open_upload",
    "mask_iou",
    "line_plot",
    "run_models",
    "make_examples",
    "build_app",
    "launch",
    "stop_runs",
    "main_cli",
]

logger = logging.getLogger(__name__)

#: file types the upload accepts: videos and still images (an image is a one-frame video; its overlay is a PNG)
VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".gif", ".mkv", ".mov", ".m4v")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
UPLOAD_SUFFIXES = VIDEO_SUFFIXES + IMAGE_SUFFIXES
#: one colour per expression, in the overlay, the legend and the plots (distinct from the Shapes colours' hues
#: where possible; the same list as the overlays of ``lvseg predict``)
COLORS: list[tuple[int, int, int]] = [
    (255, 56, 56),
    (56, 132, 255),
    (72, 219, 72),
    (255, 178, 29),
    (187, 84, 255),
    (0, 212, 212),
]
#: line styles of the two models in the plots: model 1 solid, model 2 dashed
_DASH = (None, (6, 4))


class Cancelled(Exception):
    """The user pressed Stop: raised between frames by the video source of a running job."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (a public Space needs bounds; ``lvseg app --max-frames ...`` sets them).

    Attributes:
        max_frames: frames per video (longer videos are refused with a message, not cut).
        max_side: the longer side of a frame, in pixels.
        max_expressions: expressions per request.
        max_models: models compared in one request (1 or 2).
        max_file_mb: size of an uploaded file, in MB (enforced by the web server before the upload is stored).
    """

    max_frames: int = 300
    max_side: int = 1280
    max_expressions: int = len(COLORS)
    max_models: int = 2
    max_file_mb: int = 200

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{f.name} must be a whole number >= 1, got {value!r}")
        if self.max_expressions > len(COLORS):
            raise InvalidInputError(f"max_expressions can be at most {len(COLORS)} (one colour each)")
        if self.max_models > 2:
            raise InvalidInputError("max_models can be 1 or 2 (two overlays side by side)")


# --------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelChoice:
    """A model the page can offer: ``folder`` holds its weights when ``available``, else ``reason`` says why not."""

    name: str
    available: bool
    reason: str = ""
    folder: Path | None = None


def _cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The Hugging Face cache folder of ``repo_id`` at ``revision`` when its weights are there (no network)."""
    from huggingface_hub import try_to_load_from_cache

    from .hub import CONFIG_NAME, WEIGHTS_NAME

    weights = try_to_load_from_cache(repo_id, WEIGHTS_NAME, revision=revision)
    config = try_to_load_from_cache(repo_id, CONFIG_NAME, revision=revision)
    if isinstance(weights, str) and isinstance(config, str):
        return Path(weights).parent
    return None


def _model_choice(name: str) -> ModelChoice:
    from .hub import CONFIG_NAME, HF_HUB_PREFIX, PACKAGE_ROOT
    from .registry import get_entry

    path = Path(name).expanduser()
    if path.is_dir():
        if (path / CONFIG_NAME).is_file():
            return ModelChoice(name, True, folder=path)
        return ModelChoice(name, False, f"{path} has no {CONFIG_NAME}: not an lvseg model folder")
    if name.startswith(HF_HUB_PREFIX):
        repo, _, revision = name[len(HF_HUB_PREFIX) :].partition("@")
        folder = _cached_snapshot(repo, revision or None)
        if folder is None:
            return ModelChoice(name, False, f"not in the Hugging Face cache: run `lvseg download {name}` first")
        return ModelChoice(name, True, folder=folder)
    if "/" in name or name.startswith((".", "~")):
        return ModelChoice(name, False, f"folder {name} does not exist")
    try:
        entry = get_entry(name)
    except LVSegError as exc:
        return ModelChoice(name, False, str(exc))
    if entry.bundled:
        return ModelChoice(entry.name, True, folder=PACKAGE_ROOT / entry.bundled)
    if not entry.published and entry.train_preset:
        return ModelChoice(
            entry.name,
            False,
            f"no official weights exist: train it (`lvseg train --preset {entry.train_preset}`) and pass the run's "
            "best/ folder with --model",
        )
    if not entry.published or entry.hub_repo is None:
        return ModelChoice(
            entry.name,
            False,
            "weights not on the Hub yet: convert the official checkpoint (`lvseg convert`) and pass the folder "
            "with --model",
        )
    folder = _cached_snapshot(entry.hub_repo, entry.hub_revision)
    if folder is None:
        return ModelChoice(entry.name, False, f"not in the Hugging Face cache: run `lvseg download {entry.name}` first")
    return ModelChoice(entry.name, True, folder=folder)


def find_models(names: Sequence[str] | None = None) -> list[ModelChoice]:
    """Which models the page can offer: ``names`` (registry names, ``hf-hub:`` ids, folders), or every registry
    entry when ``None``; available ones first (the bundled default model first of all), in the given order."""
    from .registry import list_models

    if names is None:
        names = list_models()
    choices = [_model_choice(str(n)) for n in dict.fromkeys(names)]
    return sorted(choices, key=lambda c: (not c.available, c.name != DEFAULT_MODEL))


class ModelCache:
    """Models loaded once per process, by ``(folder, device, dtype)``; loading is serialised by a lock."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str, str], Any] = {}
        self._lock = threading.Lock()

    def get(self, choice: ModelChoice, device: str | None = None, dtype: str | None = None) -> Any:
        from .hub import from_pretrained, resolve_device

        if not choice.available or choice.folder is None:
            raise InvalidInputError(f"model {choice.name} is not available here: {choice.reason}")
        torch_device = resolve_device(device)
        key = (str(choice.folder), str(torch_device), str(dtype or "float32"))
        with self._lock:
            if key not in self._models:
                logger.info("loading %s on %s (%s)", choice.name, torch_device, key[2])
                self._models[key] = from_pretrained(choice.folder, device=torch_device, dtype=dtype)
            return self._models[key]

    def __len__(self) -> int:
        return len(self._models)


# --------------------------------------------------------------------------------------------- inputs
def parse_expressions(text: str | None, limits: Limits = Limits()) -> list[str]:
    """One expression per non-empty line (surrounding spaces removed); raises
    :class:`~lvseg.errors.InvalidTextError` when there is none or more than ``limits.max_expressions``."""
    lines = [" ".join(line.split()) for line in (text or "").splitlines()]
    texts = [line for line in lines if line]
    if not texts:
        raise InvalidTextError("no expression given: type one referring expression per line (e.g. 'the red circle')")
    if len(texts) > limits.max_expressions:
        raise InvalidTextError(
            f"{len(texts)} expressions given; this demo takes at most {limits.max_expressions} per run "
            "(one line each): remove some or run them in two goes"
        )
    return texts


def _guarded_source_class() -> type:
    from .video import VideoSource

    @dataclass
    class GuardedSource(VideoSource):
        """A :class:`~lvseg.video.VideoSource` that stops when the user cancels and refuses frames beyond
        ``max_frames`` (checked while decoding, for containers that do not state their frame count)."""

        max_frames: int = 0
        cancel: threading.Event | None = field(default=None, repr=False)

        def __iter__(self) -> Any:
            frames = super().__iter__()
            try:
                for index, frame in enumerate(frames):
                    if self.cancel is not None and self.cancel.is_set():
                        raise Cancelled
                    if self.max_frames and index >= self.max_frames:
                        raise InvalidInputError(_too_long(f"more than {self.max_frames}", self.max_frames))
                    yield frame
            finally:
                # close the decoder now (PyAV's container and its threads), not whenever the generator is
                # collected: one left open at interpreter exit aborts the process
                close = getattr(frames, "close", None)  # a generator (file, folder, array) has one
                if close is not None:
                    close()

    return GuardedSource


_GUARDED: type | None = None


def _too_long(count: str, limit: int) -> str:
    return (
        f"the video has {count} frames; this demo accepts at most {limit} (`lvseg app --max-frames N` raises the "
        "limit): cut the video shorter or sample fewer frames per second"
    )


def open_upload(path: str | Path | None, limits: Limits = Limits(), cancel: threading.Event | None = None) -> Any:
    """Open an uploaded video or image for the Predictor, after checking its type, frame size and length.

    Returns a :class:`~lvseg.video.VideoSource` that raises :class:`Cancelled` once ``cancel`` is set and
    :class:`~lvseg.errors.InvalidInputError` past ``limits.max_frames`` frames. Raises
    :class:`~lvseg.errors.InvalidInputError` / :class:`~lvseg.errors.VideoError` for a missing, unsupported,
    undecodable, too large or too long video.
    """
    global _GUARDED
    from .video import open_video

    if path is None or not str(path).strip():
        raise InvalidInputError(
            "no video given: upload a video (mp4, webm, avi, gif, ...) or an image (jpg, png, ...), or pick an example"
        )
    path = Path(path)
    if path.suffix.lower() not in UPLOAD_SUFFIXES:
        raise InvalidInputError(
            f"{path.name} is not a video or image this demo reads: upload "
            f"{', '.join(s.lstrip('.') for s in UPLOAD_SUFFIXES)}"
        )
    source = open_video(path)
    if max(source.height, source.width) > limits.max_side:
        raise InvalidInputError(
            f"the {'image' if source.is_image else 'video'} is {source.width}x{source.height}; this demo accepts "
            f"frames up to {limits.max_side} pixels on "
            "the longer side (`lvseg app --max-side N` raises the limit): resize it first, e.g. "
            f"`ffmpeg -i in.mp4 -vf scale=-2:{min(limits.max_side, 720)} out.mp4`"
        )
    if source.num_frames is not None and source.num_frames > limits.max_frames:
        raise InvalidInputError(_too_long(str(source.num_frames), limits.max_frames))
    if _GUARDED is None:
        _GUARDED = _guarded_source_class()
    values = {f.name: getattr(source, f.name) for f in fields(source)}
    return _GUARDED(**values, max_frames=limits.max_frames, cancel=cancel)


# --------------------------------------------------------------------------------------------- outputs
def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame IoU of two ``bool [T, H, W]`` mask stacks -> ``float [T]``; two empty masks agree (1.0)."""
    if a.shape != b.shape:
        raise InvalidInputError(f"masks of different shapes cannot be compared: {a.shape} vs {b.shape}")
    inter = np.logical_and(a, b).reshape(len(a), -1).sum(1)
    union = np.logical_or(a, b).reshape(len(a), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0).astype(np.float64)


def line_plot(
    series: Sequence[tuple[str, np.ndarray, tuple[int, int, int], tuple[int, int] | None]],
    *,
    title: str,
    width: int = 640,
    height: int = 260,
) -> np.ndarray:
    """Draw lines of values in [0, 1] over frames: ``series`` of ``(label, values [T], colour, dash)`` ->
    ``uint8 [height, width, 3]`` (Pillow only, so the page needs no plotting library or script from the web)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    left, right, top = 40, 12, 44  # room at the top for the label the page draws over the image's corner
    bottom = 22 + 14 * len(series)
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    draw.text((left, 26), title, fill=(0, 0, 0))
    for v in (0.0, 0.5, 1.0):
        y = y1 - v * (y1 - y0)
        draw.line((x0, y, x1, y), fill=(220, 220, 220))
        draw.text((4, y - 6), f"{v:.1f}", fill=(90, 90, 90))
    draw.rectangle((x0, y0, x1, y1), outline=(120, 120, 120))
    longest = max((len(values) for _, values, _, _ in series), default=1)
    draw.text((x0, y1 + 4), "frame 0", fill=(90, 90, 90))
    draw.text((x1 - 50, y1 + 4), f"frame {longest - 1}", fill=(90, 90, 90))

    def point(t: int, v: float) -> tuple[float, float]:
        x = x0 + (x1 - x0) * (t / max(longest - 1, 1))
        return x, y1 - float(np.clip(v, 0.0, 1.0)) * (y1 - y0)

    for k, (label, values, color, dash) in enumerate(series):
        points = [point(t, float(v)) for t, v in enumerate(values)]
        if len(points) == 1:
            points = points * 2
        for p, q in itertools.pairwise(points):
            if dash is None:
                draw.line((p, q), fill=color, width=2)
            else:  # dashed: draw `on` pixels of every `on + off` along the segment
                on, off = dash
                length = float(np.hypot(q[0] - p[0], q[1] - p[1]))
                s = 0.0
                while s < length:
                    e = min(s + on, length)
                    a = (p[0] + (q[0] - p[0]) * s / length, p[1] + (q[1] - p[1]) * s / length)
                    b = (p[0] + (q[0] - p[0]) * e / length, p[1] + (q[1] - p[1]) * e / length)
                    draw.line((a, b), fill=color, width=2)
                    s += on + off
        y = y1 + 20 + 14 * k
        draw.line((x0, y + 6, x0 + 20, y + 6), fill=color, width=3)
        draw.text((x0 + 26, y), label, fill=(0, 0, 0))
    return np.asarray(image)


@dataclass
class AppResult:
    """What one run of the page produced (every file in one fresh folder).

    Attributes:
        models: the model names, in the order of ``overlays``.
        texts: the expressions, in the order of ``COLORS``.
        masks: per model, ``bool [E, T, H, W]`` (expressions x frames) at the video's resolution.
        scores: per model, ``float [E, T]``.
        overlays: per model, the overlay video (``.mp4``, H.264), or ``.png`` for an image.
        masks_zip: palette PNGs ``MODEL/expression_I/FRAME.png`` (0 background, 1 object).
        rle_json: ``{"video", "frames", "models": {MODEL: [{"text", "scores", "rle": [COCO RLE per frame]}]}}``.
        score_plot: ``uint8 [h, w, 3]``, per-frame scores (model 1 solid, model 2 dashed).
        iou: ``float [E, T]`` agreement of the two models' masks per expression and frame (two models only).
        iou_plot: the same as an image.
        seconds: wall time of the run.
    """

    models: list[str]
    texts: list[str]
    masks: list[np.ndarray]
    scores: list[np.ndarray]
    overlays: list[Path]
    masks_zip: Path
    rle_json: Path
    score_plot: np.ndarray
    iou: np.ndarray | None = None
    iou_plot: np.ndarray | None = None
    seconds: float = 0.0

    @property
    def num_frames(self) -> int:
        return int(self.masks[0].shape[1])

    def summary(self) -> str:
        """A Markdown paragraph: what ran, how long it took, the mean score (and mean IoU) per expression."""
        lines = [
            f"Segmented {len(self.texts)} expression(s) in {self.num_frames} frames with "
            f"{' and '.join(f'`{m}`' for m in self.models)} in {self.seconds:.1f} s.",
            "",
            "| expression | "
            + " | ".join(f"mean score {m}" for m in self.models)
            + (" | mean IoU of the two |" if self.iou is not None else " |"),
            "|---" * (1 + len(self.models) + (self.iou is not None)) + "|",
        ]
        for i, text in enumerate(self.texts):
            row = [text.replace("|", "\\|")] + [f"{float(s[i].mean()):.3f}" for s in self.scores]
            if self.iou is not None:
                row.append(f"{float(self.iou[i].mean()):.3f}")
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines)


def legend_html(texts: Sequence[str]) -> str:
    """An HTML legend: one coloured swatch per expression, in the overlay's colours."""
    from html import escape

    items = []
    for i, text in enumerate(texts):
        r, g, b = COLORS[i % len(COLORS)]
        items.append(
            f'<span style="display:inline-block;margin-right:1em"><span style="display:inline-block;width:1em;'
            f'height:1em;background:rgb({r},{g},{b});vertical-align:middle;margin-right:0.3em"></span>'
            f'<span class="lvseg-legend-text">{escape(text)}</span></span>'
        )
    return '<div class="lvseg-legend">' + "".join(items) + "</div>"


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._") or "model"


def _write_masks_zip(path: Path, models: Sequence[str], results: Sequence[Sequence[Any]]) -> Path:
    """Palette PNGs ``MODEL/expression_I/FRAME.png`` in one zip, written atomically."""
    import io

    from PIL import Image

    from .utils import atomic_path
    from .video import PALETTE

    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for model, model_results in zip(models, results):
            for i, result in enumerate(model_results):
                names = result.frame_names or [f"{t:05d}" for t in range(len(result))]
                for name, mask in zip(names, result.to_numpy()):
                    image = Image.fromarray(mask.astype(np.uint8), mode="P")
                    image.putpalette(PALETTE)
                    buffer = io.BytesIO()
                    image.save(buffer, format="PNG")
                    archive.writestr(f"{_safe_name(model)}/expression_{i}/{name}.png", buffer.getvalue())
    return path


def run_models(
    video: str | Path,
    texts: Sequence[str],
    models: Sequence[ModelChoice],
    *,
    cache: ModelCache,
    output_dir: str | Path,
    limits: Limits = Limits(),
    window: int | None = None,
    overlap: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    cancel: threading.Event | None = None,
    report: Callable[[float, str], None] | None = None,
) -> AppResult:
    """Run one or two models on ``video`` for ``texts`` and write every output of the page into ``output_dir``.

    Each model goes through :class:`lvseg.Predictor` with the given ``window``/``overlap`` (``None``: the
    model's defaults), exactly as ``model.predict(video, texts, window=..., overlap=...)``.

    Raises:
        LVSegError subclasses for bad input (checked before any model runs where possible), :class:`Cancelled`
        when ``cancel`` is set while it runs.
    """
    from .predictor import Predictor, check_window, save_overlay
    from .utils import atomic_write_text, ensure_folder

    start = time.perf_counter()
    say = report or (lambda fraction, text: None)
    if not models:
        raise InvalidInputError("no model chosen: pick one model (or two to compare them)")
    if len(models) > limits.max_models:
        raise InvalidInputError(f"{len(models)} models chosen; pick at most {limits.max_models}")
    texts = list(texts)
    if not texts:
        raise InvalidTextError("no expression given: type one referring expression per line")
    check_window(window, overlap)
    out = ensure_folder(output_dir)
    say(0.0, "opening the video")
    source = open_upload(video, limits, cancel)
    names = [m.name for m in models]
    all_results: list[list[Any]] = []
    overlays: list[Path] = []
    for k, choice in enumerate(models):
        say(k / len(models), f"loading {choice.name}")
        model = cache.get(choice, device=device, dtype=dtype)
        if cancel is not None and cancel.is_set():
            raise Cancelled
        say(k / len(models), f"segmenting with {choice.name}")
        predictor = Predictor(model, window=window, overlap=overlap, progress=True)
        results = predictor(source, texts)
        if len(results[0]) == 0:
            raise VideoDecodeError("the video has no frames")
        all_results.append(results)
        say((k + 0.9) / len(models), f"writing the overlay of {choice.name}")
        # an image's overlay is an image
        overlay = out / f"overlay_{k + 1}_{_safe_name(choice.name)}{'.png' if source.is_image else '.mp4'}"
        # captions only where they fit: on a small video (a 96-pixel Shapes clip) they would hide the frame, and
        # the page shows the legend anyway
        caption = source.width >= 320
        overlays.append(save_overlay(results, overlay, colors=COLORS, caption=caption, progress=False))
    say(0.95, "writing the masks")
    masks = [np.stack([r.to_numpy() for r in results]) for results in all_results]
    scores = [np.stack([r.scores.float().numpy() for r in results]) for results in all_results]
    masks_zip = _write_masks_zip(out / "masks_png.zip", names, all_results)
    rle = {
        "video": Path(video).name,
        "frames": all_results[0][0].frame_names,
        "models": {
            name: [{"text": r.text, "scores": [round(float(s), 6) for s in r.scores], "rle": r.to_rle()} for r in rs]
            for name, rs in zip(names, all_results)
        },
    }
    rle_json = out / "masks_rle.json"
    atomic_write_text(rle_json, json.dumps(rle, ensure_ascii=False))
    series = [
        (f"{text} ({name})" if len(names) > 1 else text, scores[k][i], COLORS[i % len(COLORS)], _DASH[k])
        for k, name in enumerate(names)
        for i, text in enumerate(texts)
    ]
    score_plot = line_plot(series, title="score per frame" + (" (model 1 solid, model 2 dashed)" * (len(names) > 1)))
    iou = iou_plot = None
    if len(names) == 2:
        iou = np.stack([mask_iou(masks[0][i], masks[1][i]) for i in range(len(texts))])
        iou_plot = line_plot(
            [(text, iou[i], COLORS[i % len(COLORS)], None) for i, text in enumerate(texts)],
            title=f"mask IoU per frame: {names[0]} vs {names[1]}",
        )
    say(1.0, "done")
    return AppResult(
        names, texts, masks, scores, overlays, masks_zip, rle_json, score_plot, iou, iou_plot,
        time.perf_counter() - start,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------- examples
@dataclass(frozen=True)
class Example:
    """A generated Shapes video written to ``path`` and two expressions about two of its objects."""

    path: Path
    texts: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.path.stem}: " + " / ".join(self.texts)


def make_examples(
    folder: str | Path, seeds: Sequence[int] = (0, 1, 2), *, frames: int = 16, size: int = 96
) -> list[Example]:
    """Generate one Shapes video per seed (``.mp4``, written into ``folder``) with two single-object expressions
    each (the videos ``lvseg demo --seed N`` uses)."""
    from .data.shapes import make_video
    from .demo import _pick_expressions
    from .utils import ensure_folder
    from .video import write_video

    out = ensure_folder(folder)
    examples = []
    for seed in seeds:
        video, rgb, _ = make_video(seed, "demo", 0, frames, size, size)
        path = out / f"shapes_seed{seed}.mp4"
        if not path.is_file():
            write_video(rgb, path, fps=6.0)
        examples.append(Example(path, tuple(text for text, _ in _pick_expressions(video, None))))
    return examples


# --------------------------------------------------------------------------------------------- the page
def _quiet_gradio() -> None:
    """No analytics, no update check, no telemetry: the page must start and work offline."""
    for key, value in (
        ("GRADIO_ANALYTICS_ENABLED", "False"),
        ("GRADIO_CHECK_VERSION", "False"),  # not read by every Gradio release; harmless where it is not
        ("HF_HUB_DISABLE_TELEMETRY", "1"),
        ("DO_NOT_TRACK", "1"),
    ):
        os.environ.setdefault(key, value)


def _import_gradio() -> Any:
    _quiet_gradio()
    try:
        import gradio
    except ImportError as exc:
        raise InvalidInputError('the web demo needs Gradio: pip install "lvseg[app]"') from exc
    return gradio


def _optional_int(value: Any, name: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be a whole number of frames, got {value!r}") from exc
    if not number.is_integer():
        raise InvalidInputError(f"{name} must be a whole number of frames, got {value!r}")
    return int(number)


class _Jobs:
    """One cancel flag per browser session, so Stop ends that session's run between two frames, and a count of
    the runs in progress: Gradio answers Stop at once, while the run's thread ends at its next frame, and a
    process must not exit while a thread is inside the model (PyTorch aborts the interpreter then)."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._running = 0
        self._lock = threading.Condition()

    def start(self, session: str) -> threading.Event:
        with self._lock:
            event = self._events[session] = threading.Event()
            self._running += 1
        return event

    def finish(self) -> None:
        with self._lock:
            self._running -= 1
            self._lock.notify_all()

    def cancel(self, session: str) -> None:
        with self._lock:
            event = self._events.get(session)
        if event is not None:
            event.set()

    def cancel_all(self) -> None:
        with self._lock:
            for event in self._events.values():
                event.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no run is in progress; False if one still is after ``timeout`` seconds."""
        with self._lock:
            return self._lock.wait_for(lambda: self._running == 0, timeout)


def build_app(
    models: Sequence[str] | None = None,
    *,
    limits: Limits = Limits(),
    examples: bool = True,
    workdir: str | Path | None = None,
    cache: ModelCache | None = None,
) -> Any:
    """The Gradio ``Blocks`` of the demo (not launched).

    Args:
        models: registry names, ``hf-hub:`` ids or model folders to offer (default: the whole registry; those
            whose weights are not on this machine are listed as unavailable with the reason).
        limits: bounds on frames, frame size, expressions, models and upload size.
        examples: offer generated Shapes videos (written once into ``workdir``).
        workdir: where outputs and examples are written (default: a fresh temporary folder).
        cache: the models loaded so far (default: a new one; one per process is enough).
    """
    gr = _import_gradio()
    choices = find_models(models)
    available = [c for c in choices if c.available]
    by_name = {c.name: c for c in available}
    cache = cache or ModelCache()
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="lvseg-app-"))
    example_list = make_examples(root / "examples") if examples else []
    jobs = _Jobs()
    counter = [0]
    counter_lock = threading.Lock()
    unavailable = [c for c in choices if not c.available]
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )  # system fonts: the default theme would fetch fonts from the web

    def run(
        upload: Any,
        texts_text: str,
        model_names: Any,
        window: Any,
        overlap: Any,
        device: str,
        dtype: str,
        request: Any,
        progress: Any = gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's way to ask for a progress bar)
    ) -> tuple[Any, ...]:
        session = getattr(request, "session_hash", None) or "default"
        cancel = jobs.start(session)
        try:
            return run_job(cancel, upload, texts_text, model_names, window, overlap, device, dtype, progress)
        finally:
            jobs.finish()

    def run_job(
        cancel: threading.Event,
        upload: Any,
        texts_text: str,
        model_names: Any,
        window: Any,
        overlap: Any,
        device: str,
        dtype: str,
        progress: Any,
    ) -> tuple[Any, ...]:
        # after an error: no outputs, the video players shown (empty), the still-image ones and model 2's hidden
        hidden = gr.update(value=None, visible=False)
        shown = gr.update(value=None, visible=True)
        empty = (shown, shown, hidden, hidden) + (None,) * 4 + ("", gr.update(visible=False), gr.update(visible=False))
        try:
            texts = parse_expressions(texts_text, limits)
            names = [model_names] if isinstance(model_names, str) else list(model_names or [])
            unknown = [n for n in names if n not in by_name]
            if unknown:
                raise InvalidInputError(f"model {unknown[0]} is not available here")
            with counter_lock:
                counter[0] += 1
                out = root / f"run{counter[0]:05d}"
            result = run_models(
                upload,
                texts,
                [by_name[n] for n in names],
                cache=cache,
                output_dir=out,
                limits=limits,
                window=_optional_int(window, "window"),
                overlap=_optional_int(overlap, "overlap"),
                device=None if device == "auto" else device,
                dtype=None if dtype == "float32" else dtype,
                cancel=cancel,
                report=lambda fraction, text: progress(fraction, desc=text),
            )
        except Cancelled:
            return ("Cancelled.", *empty)
        except LVSegError as exc:
            return (f"**Error:** {exc}", *empty)
        except Exception as exc:  # a bug of ours: log it with its traceback, show one line in the page
            logger.exception("the demo failed")
            return (f"**Error:** lvseg failed unexpectedly ({type(exc).__name__}: {exc})", *empty)
        two = len(result.models) == 2
        still = result.overlays[0].suffix == ".png"  # an image was uploaded
        paths = [str(p) for p in result.overlays] + [None]
        return (
            result.summary(),
            gr.update(value=None if still else paths[0], visible=not still),
            gr.update(value=None if still else paths[1], visible=not still),
            gr.update(value=paths[0] if still else None, visible=still),
            gr.update(value=paths[1] if still else None, visible=still),
            result.score_plot,
            result.iou_plot,
            str(result.masks_zip),
            str(result.rle_json),
            legend_html(result.texts),
            gr.update(visible=two),
            gr.update(visible=two),
        )

    def stop(request: Any) -> str:
        jobs.cancel(getattr(request, "session_hash", None) or "default")
        return "Cancelled."

    # Gradio passes the request to a parameter annotated gr.Request; the annotations above are strings
    # (`from __future__ import annotations`) that Gradio cannot resolve inside this function, so set them here
    run.__annotations__["request"] = gr.Request
    stop.__annotations__["request"] = gr.Request

    with gr.Blocks(title="lvseg: language-guided video segmentation", analytics_enabled=False) as demo:
        gr.Markdown(
            "# lvseg: language-guided video segmentation\n"
            "Upload a video or an image (or pick a generated example), type one expression per line, pick one "
            "model (or two to compare), and run. Limits of this server: "
            f"{limits.max_frames} frames, {limits.max_side} px on the longer side, {limits.max_expressions} "
            f"expressions, {limits.max_file_mb} MB per upload."
        )
        with gr.Row():
            with gr.Column():
                upload = gr.File(
                    label="video or image (" + ", ".join(s.lstrip(".") for s in UPLOAD_SUFFIXES) + ")",
                    file_types=list(UPLOAD_SUFFIXES),
                    type="filepath",
                    elem_id="lvseg-upload",
                )
                texts_box = gr.Textbox(
                    label="expressions (one per line)",
                    lines=3,
                    placeholder="the red circle\nthe big square moving left",
                    elem_id="lvseg-texts",
                )
                model_box = gr.Dropdown(
                    choices=list(by_name),
                    value=[available[0].name] if available else [],
                    multiselect=True,
                    max_choices=limits.max_models,
                    label=f"model (pick {limits.max_models} to compare)" if limits.max_models > 1 else "model",
                    elem_id="lvseg-models",
                )
                with gr.Accordion("advanced", open=False):
                    window_box = gr.Number(label="window (frames per pass; empty: the model's default)", precision=0)
                    overlap_box = gr.Number(label="overlap (frames; empty: the model's default)", precision=0)
                    import torch

                    devices = ["auto", "cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
                    device_box = gr.Dropdown(choices=devices, value="auto", label="device")
                    dtype_box = gr.Dropdown(choices=["float32", "bfloat16", "float16"], value="float32", label="dtype")
                with gr.Row():
                    run_button = gr.Button("Run", variant="primary", elem_id="lvseg-run")
                    stop_button = gr.Button("Stop", elem_id="lvseg-stop")
                if unavailable:
                    with gr.Accordion(f"unavailable models ({len(unavailable)})", open=False):
                        gr.Markdown(
                            "\n".join(f"- `{c.name}`: {c.reason.splitlines()[0]}" for c in unavailable),
                            elem_id="lvseg-unavailable",
                        )
            with gr.Column():
                status = gr.Markdown(elem_id="lvseg-status")
                legend = gr.HTML(elem_id="lvseg-legend")
                with gr.Row():
                    with gr.Column():
                        overlay_1 = gr.Video(label="overlay (model 1)", elem_id="lvseg-overlay-1", format=None)
                        still_1 = gr.Image(
                            label="overlay (model 1)", type="filepath", elem_id="lvseg-still-1", visible=False
                        )
                    with gr.Column(visible=False) as second:
                        overlay_2 = gr.Video(label="overlay (model 2)", elem_id="lvseg-overlay-2", format=None)
                        still_2 = gr.Image(
                            label="overlay (model 2)", type="filepath", elem_id="lvseg-still-2", visible=False
                        )
                score_plot = gr.Image(label="score per frame", type="numpy", elem_id="lvseg-scores")
                with gr.Column(visible=False) as agreement:
                    iou_plot = gr.Image(label="mask agreement (IoU per frame)", type="numpy", elem_id="lvseg-iou")
                with gr.Row():
                    zip_file = gr.File(label="masks: palette PNGs (zip)", elem_id="lvseg-zip")
                    rle_file = gr.File(label="masks: COCO RLE (JSON)", elem_id="lvseg-rle")
        if example_list:
            gr.Examples(
                [[str(e.path), "\n".join(e.texts)] for e in example_list],
                inputs=[upload, texts_box],
                label="generated Shapes videos (the bundled model knows this world)",
            )
        outputs = [
            status,
            overlay_1,
            overlay_2,
            still_1,
            still_2,
            score_plot,
            iou_plot,
            zip_file,
            rle_file,
            legend,
            second,
            agreement,
        ]
        event = run_button.click(
            run,
            inputs=[upload, texts_box, model_box, window_box, overlap_box, device_box, dtype_box],
            outputs=outputs,
            concurrency_limit=1,
        )
        stop_button.click(stop, inputs=None, outputs=[status], cancels=[event], queue=False)
    demo.lvseg_workdir = root  # where the outputs go (tests and launch() read it)
    demo.lvseg_jobs = jobs  # the runs in progress (launch() and the tests wait for them to end)
    demo.lvseg_theme = theme  # Gradio 6 takes the theme in launch()
    return demo


def launch(
    models: Sequence[str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    limits: Limits = Limits(),
    block: bool = True,
    **kwargs: Any,
) -> Any:
    """Build the demo and serve it on ``host:port``; ``block=False`` returns the running ``Blocks`` (tests)."""
    demo = build_app(models, limits=limits, **kwargs)
    demo.queue(default_concurrency_limit=1, max_size=32)
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        max_file_size=f"{limits.max_file_mb}mb",
        allowed_paths=[str(demo.lvseg_workdir)],
        prevent_thread_lock=not block,
        show_error=False,
        quiet=not block,
        inbrowser=False,
        theme=demo.lvseg_theme,
        footer_links=[],
    )
    if block:  # the server has stopped (Ctrl-C): stop the runs in progress and let their threads leave the model
        stop_runs(demo)
    return demo


def stop_runs(demo: Any, timeout: float = 60.0) -> bool:
    """Cancel every run of a demo built by :func:`build_app` and wait until their threads have ended (each stops
    at its next frame); False if one is still running after ``timeout`` seconds. Call it before the process exits
    or ``demo.close()``."""
    jobs: _Jobs = demo.lvseg_jobs
    jobs.cancel_all()
    return jobs.wait_idle(timeout)


def main_cli(argv: Sequence[str] | None = None) -> int:
    """``lvseg app [--model NAME ...] [--host 127.0.0.1] [--port 7860] [--max-frames N] ...``."""
    p = argparse.ArgumentParser(prog="lvseg app", description="Serve the web demo (Gradio) on this machine.")
    p.add_argument(
        "-m",
        "--model",
        action="append",
        default=None,
        help="registry name, hf-hub:org/repo or model folder to offer (repeat; default: every registry entry "
        "whose weights are on this machine)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860)
    defaults = Limits()
    p.add_argument("--max-frames", type=int, default=defaults.max_frames, help="longest video accepted, in frames")
    p.add_argument("--max-side", type=int, default=defaults.max_side, help="largest frame side accepted, in pixels")
    p.add_argument("--max-expressions", type=int, default=defaults.max_expressions)
    p.add_argument("--max-file-mb", type=int, default=defaults.max_file_mb, help="largest upload, in MB")
    p.add_argument("--no-examples", action="store_true", help="do not offer the generated Shapes videos")
    args = p.parse_args(list(argv) if argv is not None else None)
    if not 0 < args.port < 65536:
        raise InvalidInputError(f"--port must be between 1 and 65535, got {args.port}")
    limits = Limits(
        max_frames=args.max_frames,
        max_side=args.max_side,
        max_expressions=args.max_expressions,
        max_file_mb=args.max_file_mb,
    )
    launch(args.model, host=args.host, port=args.port, limits=limits, examples=not args.no_examples)
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .cli import _run

    sys.exit(_run(lambda: main_cli()))
