"""Reading selected frames of a video file (PyAV) or of a numbered frame folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lvseg.errors import DatasetError

__all__ = ["count_and_read_frames"]


def count_and_read_frames(path: Path, wanted: set[int] | None = None) -> tuple[int, dict[int, np.ndarray]]:
    """Decode ``path`` to the end; return the frame count and the wanted frames (0-based) as ``uint8 [H, W, 3]``.

    ``wanted=None`` returns no frames (count only). Every frame is decoded, so the count is exact, like
    ``torchvision.io.read_video``; only the wanted ones are converted to RGB arrays.
    """
    import av  # deferred: only the readers that need video files import PyAV

    if not path.is_file():
        raise DatasetError(
            f"video not found: '{path}' is listed by the dataset's annotations but missing on disk; "
            "re-extract the dataset archive."
        )
    out: dict[int, np.ndarray] = {}
    count = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                if wanted is not None and count in wanted:
                    out[count] = frame.to_ndarray(format="rgb24")
                count += 1
    except (av.error.FFmpegError, IndexError) as exc:  # IndexError: no video stream
        raise DatasetError(f"cannot decode video '{path}' ({exc}); the file is corrupt or not a video.") from exc
    if count == 0:
        raise DatasetError(f"video '{path}' has no frames; re-extract the dataset archive.")
    return count, out
