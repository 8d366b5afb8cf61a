"""Writers of miniature datasets in the official on-disk formats, used by tests/test_data_*.py.

Frames are written as PNG-compressed-like lossless images where the tests compare pixels (JPEG is lossy), except
where the official layout demands .jpg; tests on .jpg frames compare with a tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from lvseg.data.shapes import davis_palette


def frame(h: int, w: int, value: int) -> np.ndarray:
    """A flat RGB frame ``uint8 [h, w, 3]`` whose channels encode ``value`` (so frames are told apart)."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[..., 0] = value % 256
    img[..., 1] = (value * 7) % 256
    img[..., 2] = 128
    return img


def save_jpg(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=95)


def save_png_rgb(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def save_palette_png(path: Path, ids: np.ndarray) -> None:
    """An indexed PNG (mode 'P', DAVIS palette) whose pixel values are object ids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    im.putpalette(davis_palette())
    im.save(path)


def write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


def id_map(h: int, w: int, boxes: dict[int, tuple[int, int, int, int]]) -> np.ndarray:
    """Object-id map ``uint8 [h, w]`` with object ``k`` filling ``y0:y1, x0:x1`` (later keys on top)."""
    m = np.zeros((h, w), dtype=np.uint8)
    for k, (y0, y1, x0, x1) in boxes.items():
        m[y0:y1, x0:x1] = k
    return m
