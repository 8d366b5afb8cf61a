"""The contract every lvseg model family implements.

A family provides

* a config dataclass deriving from :class:`ModelConfig` (it round-trips through ``config.json``), and
* a model class deriving from :class:`RVOSModel` that implements :meth:`RVOSModel.forward` (raw outputs for the
  training losses) and :meth:`RVOSModel.segment` (the family's official inference protocol).

The :class:`~lvseg.predictor.Predictor` only talks to :meth:`RVOSModel.segment_window`, so it stays model-agnostic.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union

import torch
from torch import nn

from ..errors import ConfigError, InvalidInputError, InvalidTextError

__all__ = ["PreprocessConfig", "ModelConfig", "RVOSModel", "validate_texts", "check_ranges"]

C = TypeVar("C", bound="ModelConfig")


@dataclass
class PreprocessConfig:
    """How frames must be prepared for a model (it travels with the weights, like timm's ``pretrained_cfg``).

    Frames are resized so that the short side is ``short_side`` unless that makes the long side exceed
    ``max_size`` (then the long side is ``max_size``), converted to float in [0, 1] and normalised with
    ``mean``/``std``. The Predictor runs the model on windows of ``window`` frames that overlap by
    ``overlap`` frames; ``window=0`` means the whole video in one pass.
    """

    short_side: int = 360
    max_size: int = 640
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    size_divisor: int = 1
    window: int = 36
    overlap: int = 0
    max_text_tokens: int = 77

    # every field is required in a config.json (see ModelConfig.from_dict)
    optional_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        check_ranges(
            self,
            {
                "short_side": (1, None),
                "max_size": (1, None),
                "mean": (0.0, 1.0),
                "std": (0.0, None),
                "size_divisor": (1, None),
                "window": (0, None),
                "overlap": (0, None),
                "max_text_tokens": (1, None),
            },
        )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(
                f"preprocessing needs 3 mean values and 3 std values > 0 (one per RGB channel), got "
                f"mean={self.mean}, std={self.std}"
            )
        if self.short_side <= 0 or self.max_size < self.short_side:
            raise ConfigError(
                f"preprocessing needs 0 < short_side <= max_size, got short_side={self.short_side}, "
                f"max_size={self.max_size}"
            )
        if self.window < 0 or self.overlap < 0 or (self.window and self.overlap >= self.window):
            raise ConfigError(
                f"preprocessing needs window >= 0 and 0 <= overlap < window, got window={self.window}, "
                f"overlap={self.overlap}"
            )
        if self.interpolation not in ("bilinear", "bicubic", "nearest", "area"):
            raise ConfigError(f"unknown interpolation {self.interpolation!r}; use bilinear, bicubic, nearest or area")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) a frame of size ``height x width`` is resized to (DETR's short-side rule)."""
        short, long = min(height, width), max(height, width)
        scale = self.short_side / short
        if long * scale > self.max_size:
            scale = self.max_size / long
        new_h, new_w = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
        return new_h, new_w


def check_ranges(config: Any, ranges: dict[str, tuple[float | None, float | None]]) -> None:
    """Raise :class:`~lvseg.errors.ConfigError` naming the first field of ``config`` outside its range.

    ``ranges`` maps a field name to ``(low, high)``, both inclusive, ``None`` meaning unbounded. For a tuple field
    every element is checked. Types are checked when a config is read (:meth:`ModelConfig.from_dict`); a value of
    the wrong type built in code is reported here too rather than failing later inside the model.
    """
    for name, (low, high) in ranges.items():
        value = getattr(config, name)
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise ConfigError(f"config field {name!r} of {type(config).__name__} must be a number, got {item!r}")
            if (low is not None and item < low) or (high is not None and item > high):
                bounds = (
                    f"between {low:g} and {high:g}"
                    if low is not None and high is not None
                    else f">= {low:g}"
                    if low is not None
                    else f"<= {high:g}"
                )
                raise ConfigError(f"config field {name!r} of {type(config).__name__} must be {bounds}, got {value!r}")


def _expected(hint: Any) -> str:
    """How a type hint reads in an error message."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if dataclasses.is_dataclass(hint) or origin is dict or hint is dict:
        return "an object ({...})"
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a list of {_expected(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin is tuple:
        return f"a list of {len(args)} {_expected(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin is list:
        return f"a list of {_expected(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    if origin in (Union, types.UnionType):
        parts = [_expected(a) if a is not type(None) else "null" for a in args]
        return " or ".join(parts)
    return str(hint)


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Check a JSON value against the type a dataclass field declares and convert it (nested dataclasses,
    tuples); a value of another type raises :class:`~lvseg.errors.ConfigError` naming the field."""

    def bad() -> ConfigError:
        return ConfigError(f"config field {where!r} must be {_expected(hint)}, got {value!r} ({type(value).__name__})")

    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise bad()
        return _from_dict(hint, value, where)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(hint)):
            return None
        for arg in args:
            try:
                return _convert(value, arg, where)
            except ConfigError:
                if len(args) == 1:
                    raise
        raise bad()
    if hint is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad()
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad()
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad()
        item_hints = typing.get_args(hint)
        if len(item_hints) == 2 and item_hints[1] is Ellipsis:
            return tuple(_convert(v, item_hints[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(item_hints):
            raise ConfigError(f"config field {where!r} must be {_expected(hint)}, got {len(value)} values: {value!r}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, item_hints)))
    if origin is list:
        if not isinstance(value, list):
            raise bad()
        (arg,) = typing.get_args(hint) or (Any,)
        return [_convert(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise bad()
        return dict(value)
    return value


def _from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = {f.name for f in fields}
    inside = f" in {where!r}" if where else ""
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config field(s) {unknown} for {cls.__name__}{inside}; check the spelling (known fields: "
            f"{', '.join(sorted(names))}), or the config was written by a newer lvseg: upgrade lvseg "
            "(pip install -U lvseg)"
        )
    # A field that decides the architecture must be present: a silent default would build another model whose
    # weights then fail to load with a long list of shape mismatches. Only fields added after the first release
    # of a family, whose default is the official behaviour (or that select a runtime path only), may be absent.
    optional = set(getattr(cls, "optional_fields", ()))
    missing = [f.name for f in fields if f.name not in data and f.name not in optional]
    if missing:
        raise ConfigError(
            f"config lacks the required field(s) {missing} of {cls.__name__}{inside}: lvseg does not guess "
            "architecture sizes. Use the config.json written with the weights (save_pretrained / `lvseg convert`), "
            "or re-convert the official checkpoint"
        )
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    check_raw = getattr(cls, "check_raw", None)
    if check_raw is not None:  # what a family checks only in a file (e.g. sizes that code may leave to defaults)
        check_raw(kwargs)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"invalid config for {cls.__name__}{inside}: {exc}") from exc
    except ConfigError as exc:
        if not where:
            raise
        raise ConfigError(f"in {where!r}: {exc}") from exc


@dataclass
class ModelConfig:
    """Base of every family's configuration. Subclasses add their architecture fields.

    ``architecture`` names the family (a key of :data:`lvseg.models.FAMILIES`); ``preprocessing`` says how to
    prepare the input. The whole dataclass round-trips through ``config.json``.
    """

    architecture: str = ""
    preprocessing: PreprocessConfig = field(default_factory=PreprocessConfig)

    # Fields that a config.json may omit: they were added after the family's first release with a default equal
    # to the official behaviour, or they select a runtime path only (same weights, same outputs up to rounding).
    # Every other field is required when a config is read (:meth:`from_dict`).
    optional_fields: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def check_raw(cls, data: dict[str, Any]) -> None:
        """Checks that apply to a config being read from a file only (its fields already type-checked); a family
        overrides this, e.g. to require sizes that a config built in code may leave to a library's defaults."""

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """The config a ``config.json`` describes. Every field is checked: unknown fields, missing required fields
        (all but :attr:`optional_fields`), values of the wrong type and values out of range raise
        :class:`~lvseg.errors.ConfigError` naming the field, the value and what is expected."""
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        data.pop("lvseg_version", None)
        return _from_dict(cls, data)

    def to_json_string(self) -> str:
        from .. import __version__

        return json.dumps({**self.to_dict(), "lvseg_version": __version__}, indent=2, sort_keys=True) + "\n"

    def save(self, path: str | Path) -> None:
        from ..utils import atomic_write_text

        atomic_write_text(Path(path), self.to_json_string())

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}); re-download or re-convert the model") from exc
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc


def validate_texts(text: str | Sequence[str]) -> list[str]:
    """Check referring expressions and return them as a list of stripped strings.

    Raises :class:`~lvseg.errors.InvalidTextError` for a non-string, an empty or a whitespace-only expression.
    """
    items = [text] if isinstance(text, str) else text
    if not isinstance(items, (list, tuple)):
        raise InvalidTextError(f"the expression must be a string or a list of strings, got {type(text).__name__}")
    if not items:
        raise InvalidTextError("no expression given: pass a sentence such as 'the man riding a bike'")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidTextError(f"expression {i} must be a string, got {type(item).__name__} ({item!r})")
        if not item.strip():
            raise InvalidTextError(
                f"expression {i} is empty or whitespace only: describe the object to segment, "
                "e.g. 'the man riding a bike'"
            )
        out.append(" ".join(item.split()))
    return out


def check_clip_frames(frames: Any, texts: Sequence[str], normalisation: str | None = None) -> None:
    """The checks every family's ``segment`` makes on its inputs: ``frames`` a floating tensor
    ``[B, T, 3, H, W]`` and one video per expression (``B == len(texts)``). ``normalisation`` names the
    normalisation the family expects, for the dtype error (e.g. ``"ImageNet mean/std"``). Each family checks its
    own minimum size after this."""
    if not isinstance(frames, torch.Tensor) or frames.dim() != 5 or frames.shape[2] != 3:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise InvalidInputError(f"frames must be a float tensor [B, T, 3, H, W], got {shape}")
    if not frames.is_floating_point():
        what = f"normalised floats ({normalisation})" if normalisation else "normalised floats"
        raise InvalidInputError(f"frames must be {what}, got dtype {frames.dtype}")
    if frames.shape[0] != len(texts):
        raise InvalidInputError(
            f"got {frames.shape[0]} videos but {len(texts)} expressions: pass one video per expression "
            "(expand the frames for several expressions)"
        )


class RVOSModel(nn.Module):
    """Base class of every referring video segmentation model.

    Subclasses set ``config_class`` and ``architecture`` and implement :meth:`forward` and :meth:`segment`.
    A model that needs a tokenizer keeps it in ``self.tokenizer`` (a ``transformers`` tokenizer); it is saved
    with the weights by :func:`lvseg.hub.save_pretrained` and restored by :func:`lvseg.hub.from_pretrained`.
    """

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    architecture: ClassVar[str] = ""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config
        self.tokenizer: Any = None

    @property
    def preprocessing(self) -> PreprocessConfig:
        return self.config.preprocessing

    @property
    def device(self) -> torch.device:
        for param in self.parameters():
            return param.device
        for buffer in self.buffers():
            return buffer.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for tensor in self.parameters():
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.float32

    def forward(self, frames: torch.Tensor, text: Sequence[str]) -> Any:  # pragma: no cover - abstract
        """Raw per-query outputs used by the training losses.

        Args:
            frames: normalised frames, float [B, T, 3, H, W].
            text: ``B`` referring expressions.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def segment(self, frames: torch.Tensor, text: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the family's official inference protocol.

        Args:
            frames: normalised frames, float [B, T, 3, H, W] (one video per expression; the Predictor passes an
                expanded view, so a model must not write into it).
            text: ``B`` referring expressions.

        Returns:
            ``(mask_logits, scores)``: float [B, T, h, w] logits of the referred object (``> 0`` is foreground;
            ``h, w`` may be smaller than ``H, W``, the Predictor resizes) and float [B, T] confidences in [0, 1].
        """
        raise NotImplementedError(f"{type(self).__name__} must implement segment()")  # pragma: no cover

    def segment_window(
        self, frames: torch.Tensor, text: Sequence[str], state: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Segment one window of a longer video; ``state`` carries what a family links across windows.

        The default treats windows independently. A family that follows one object across windows (e.g. by
        matching its query to the previous window's choice) overrides this and returns its new state.
        """
        logits, scores = self.segment(frames, text)
        return logits, scores, None

    def stream_context_indices(self, num_frames: int) -> list[int]:
        """Positions (0-based) of frames a family needs before the first window of a video of ``num_frames``
        frames (e.g. Locater's global memory, written from frames sampled over the whole video). The
        :class:`~lvseg.Predictor` reads them ahead, without keeping the video in memory, and passes them to
        :meth:`init_stream_state`. Default: none."""
        return []

    def init_stream_state(self, context: torch.Tensor, text: Sequence[str]) -> Any:
        """The ``state`` for the first :meth:`segment_window` call, from the frames [B, K, 3, H, W] at
        :meth:`stream_context_indices` (normalised as the windows are). Default: None."""
        return None

    def segment_annotated_frame(
        self, frames: torch.Tensor, text: Sequence[str], frame_index: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every candidate mask of one frame, with its score (the A2D-/JHMDB-Sentences mAP protocol).

        Args:
            frames: normalised frames float [B, T, 3, H, W], the clip around the annotated frame.
            text: ``B`` referring expressions.
            frame_index: the annotated frame's position in the clip (default: the centre, ``T // 2``).

        Returns:
            ``(mask_logits [B, Q, h, w], scores [B, Q])``: all ``Q`` candidates (e.g. every object query) ranked
            by score for COCO mAP; the top-scoring one is the prediction for precision@K and IoU. The default
            has one candidate, :meth:`segment`'s mask of that frame; query-based families override it.
        """
        index = frames.shape[1] // 2 if frame_index is None else int(frame_index)
        if not 0 <= index < frames.shape[1]:
            raise InvalidInputError(f"frame_index {index} is outside a clip of {frames.shape[1]} frames")
        logits, scores = self.segment(frames, text)
        return logits[:, index : index + 1], scores[:, index : index + 1]

    def output_upsampling(self, protocol: str | None = None) -> str:
        """How this family's official code brings mask logits to the original frame size under ``protocol``.

        A key of :data:`lvseg.predictor.UPSAMPLING` (``"bilinear"``, ``"direct"``, ``"threshold-nearest"`` or
        ``"probability-aligned"``); the :class:`~lvseg.Predictor` uses it unless told otherwise. Default
        ``"bilinear"``.
        """
        return "bilinear"

    def annotated_clip_frames(self) -> int | None:
        """Frames per clip of the family's official A2D-/JHMDB-Sentences evaluation, or None when the family fixes
        none; :func:`lvseg.evaluate` warns when a dataset's clips differ. Default: ``preprocessing.window`` (MTTR's
        A2D models are evaluated on their training window)."""
        return self.preprocessing.window or None

    def benchmark_protocol(self, benchmark: str) -> str | None:
        """The inference protocol (a ``protocol=`` of :meth:`segment`) of the family's official script for a
        :func:`lvseg.evaluate` benchmark protocol (``"refdavis"``, ``"ytvos"``, ...), or None.

        When it names one, :func:`lvseg.evaluate` runs each video in one :meth:`segment` call with it, as the
        official evaluation scripts do; otherwise through :meth:`segment_window` with the model's windows.
        """
        return None

    def predict(self, video: Any, text: str | Sequence[str], **kwargs: Any) -> Any:
        """Segment ``text`` in ``video``; see :class:`lvseg.Predictor` for the accepted inputs and options."""
        from ..predictor import Predictor

        return Predictor(self, **kwargs)(video, text)

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> Path:
        """Write a Hub-format folder (see :func:`lvseg.hub.save_pretrained`)."""
        from ..hub import save_pretrained

        return save_pretrained(self, save_directory, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> RVOSModel:
        """Load a model from a registry name, ``hf-hub:`` id or local folder (see :func:`lvseg.load`)."""
        from ..hub import load

        model = load(name_or_path, **kwargs)
        if not isinstance(model, cls):
            raise ConfigError(f"{name_or_path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model
