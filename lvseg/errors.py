"""Exceptions that lvseg raises on bad input, so users can catch them.

Every error message names the problem and the fix. Each class also derives from the closest built-in
exception (``ValueError``, ``FileNotFoundError``, ...) so that generic ``except`` clauses keep working.
"""

from __future__ import annotations

__all__ = [
    "LVSegError",
    "ModelNotFoundError",
    "WeightsNotPublishedError",
    "HubError",
    "OfflineError",
    "CheckpointError",
    "TokenizerError",
    "ConfigError",
    "VideoError",
    "VideoNotFoundError",
    "VideoDecodeError",
    "ImageDecodeError",
    "InvalidTextError",
    "InvalidInputError",
    "UnsupportedDtypeError",
    "DatasetError",
    "OutputError",
]


class LVSegError(Exception):
    """Base class of every error lvseg raises on purpose."""


class ModelNotFoundError(LVSegError, KeyError):
    """A model name that is not in the registry, not a local folder and not an ``hf-hub:`` id."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class WeightsNotPublishedError(LVSegError, RuntimeError):
    """A registry entry whose weights are not on the Hub yet: they must be converted from the official checkpoint."""


class HubError(LVSegError, RuntimeError):
    """The Hub could not serve a file (network, authentication, missing repo or revision)."""


class OfflineError(HubError):
    """Offline mode (``HF_HUB_OFFLINE=1`` or no network) and the files are not in the local cache."""


class CheckpointError(LVSegError, ValueError):
    """A weights file that is corrupt, of the wrong model, or whose keys do not match the architecture."""


class TokenizerError(CheckpointError):
    """A tokenizer that is not the one the model's text encoder was trained with: missing or empty tokenizer
    files, a vocabulary size other than the embedding's rows, special tokens at other ids, or one that cannot
    encode plain English. Such a model would run but ignore its text, so it is refused."""


class ConfigError(LVSegError, ValueError):
    """A ``config.json`` or configuration value that lvseg cannot use."""


class VideoError(LVSegError, ValueError):
    """Base class of the errors about an input video."""


class VideoNotFoundError(VideoError, FileNotFoundError):
    """The video file or frame folder does not exist."""


class VideoDecodeError(VideoError):
    """A video that cannot be decoded: not a video, truncated, no frames, or frames of mixed sizes."""


class ImageDecodeError(VideoDecodeError):
    """An image file (or PIL image) that cannot be read: not an image, truncated, an unsupported pixel mode, or
    larger than Pillow's decompression-bomb limit. A :class:`VideoDecodeError`, so one ``except`` covers both."""


class InvalidTextError(LVSegError, ValueError):
    """A referring expression that is empty, whitespace only, or not a string."""


class InvalidInputError(LVSegError, ValueError):
    """Any other argument that lvseg cannot use (wrong shape, type or value)."""


class UnsupportedDtypeError(LVSegError, TypeError):
    """A dtype that the requested device cannot run (e.g. float16 matmuls on a CPU build without support)."""


class DatasetError(LVSegError, FileNotFoundError):
    """A dataset root or file that is missing or not in the official layout."""


class OutputError(LVSegError, OSError):
    """A path lvseg cannot write its outputs to (an existing file, a read-only folder, a path under a file, a
    system folder such as ``/proc``), or an output folder that already holds files and may not be replaced."""
