"""Shapes: a procedural referring-video dataset that anyone can regenerate bit-for-bit from a seed.

Each video shows 2-5 coloured shapes (circle, square, triangle, star, diamond; small or big) moving with
distinct motions (left, right, up, down, still, bouncing) over a textured background; later objects occlude
earlier ones. Each video comes with expressions that single out one object (by colour+shape, size, position,
motion, or motion alone) or, MeViS-style, several objects ("the red objects"). Every expression is unambiguous:
exactly the referred objects satisfy it (see :func:`expression_semantics`).

:func:`generate` writes the Ref-YouTube-VOS layout, so :class:`lvseg.data.RefYouTubeVOS` reads it unchanged::

    <root>/<split>/JPEGImages/<video>/<frame>.jpg         frames, named 00000, 00005, ... like Ref-YouTube-VOS
    <root>/<split>/Annotations/<video>/<frame>.png        palette PNG, pixel value = object id (train only)
    <root>/<split>/meta.json                              {"videos": {vid: {"objects": {id: {category, frames}}}}}
    <root>/meta_expressions/<split>/meta_expressions.json {"videos": {vid: {"expressions": {...}, "frames": [...]}}}
    <root>/<split>_gt/{Annotations, meta.json, meta_expressions.json}   ground-truth copy (valid/test only)
    <root>/shapes_info/<split>.json                       generator record: parameters, object attributes, tracks

As in the official data, the ``valid``/``test`` ``meta_expressions.json`` carry only the text (no ``obj_id``) and
those splits have no ``Annotations``; the ``<split>_gt`` copy holds them so J&F can be computed locally.
An expression that refers to several objects stores ``"obj_id"`` as a list of strings (MeViS style) instead of a
single string.

Determinism: all randomness comes from the raw output of NumPy's PCG64 bit generator seeded by
``(seed, split, video index)`` (so video ``i`` is identical whatever ``num_videos`` is) and turned into numbers
with lvseg's own arithmetic (NumPy's ``Generator`` methods may change between versions, its bit generators do
not); shapes are rasterised with integer arithmetic in 1/16-pixel fixed point. So masks, texts and raw frames
are identical on every machine. Frames are JPEG-encoded
with Pillow (``quality=90``); the JPEG bytes depend on the libjpeg build, the decoded pixels barely.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from lvseg.errors import DatasetError, InvalidInputError
from lvseg.utils import atomic_write_text

logger = logging.getLogger("lvseg.data.shapes")

__all__ = [
    "COLORS",
    "SHAPES",
    "SIZES",
    "MOTIONS",
    "MOTION_PHRASES",
    "POSITIONS",
    "VOCABULARY",
    "ShapeObject",
    "ShapesVideo",
    "davis_palette",
    "render_video",
    "generate",
    "expression_semantics",
    "expression_kind",
    "expression_motion",
    "frame_names",
]

# ---------------------------------------------------------------------------------------------------------------
# Vocabulary (small and regular on purpose: a tiny tokenizer is trained on it).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 175, 60),
    "blue": (45, 85, 225),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 205),
    "cyan": (40, 205, 215),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond")
SIZES: tuple[str, ...] = ("small", "big")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still", "bouncing")
MOTION_PHRASES: dict[str, str] = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "still": "standing still",
    "bouncing": "bouncing around",
}
POSITIONS: tuple[str, ...] = ("leftmost", "rightmost", "topmost", "bottommost")
VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        {
            "the",
            "object",
            "objects",
            *COLORS,
            *SHAPES,
            *(s + "s" for s in SHAPES),
            *SIZES,
            *POSITIONS,
            *(w for p in MOTION_PHRASES.values() for w in p.split()),
        }
    )
)

_FP = 16  # fixed point: 1 pixel = 16 units
_RADIUS_FRACTION = {"small": 0.075, "big": 0.14}  # of min(H, W)
# Unit 5-point star (outer radius 1, inner 0.45), vertices listed clockwise from the top. The decimals are
# written out (not computed with sin/cos) so that no libm difference can change a pixel.
_STAR = (
    (0.0, -1.0),
    (0.264503, -0.364058),
    (0.951057, -0.309017),
    (0.427975, 0.139058),
    (0.587785, 0.809017),
    (0.0, 0.45),
    (-0.587785, 0.809017),
    (-0.427975, 0.139058),
    (-0.951057, -0.309017),
    (-0.264503, -0.364058),
)
_TRIANGLE = ((0.0, -1.0), (0.866025, 0.5), (-0.866025, 0.5))
# Scale of each shape relative to the object radius, chosen so the shapes have similar areas.
_SHAPE_SCALE = {"circle": 1.0, "square": 0.85, "triangle": 1.3, "star": 1.3, "diamond": 1.15}
# Distance from the centre to the farthest pixel of each shape, in radii (for keeping objects inside the frame).
_EXTENT = {"circle": 1.0, "square": 0.85 * 1.4143, "triangle": 1.3, "star": 1.3, "diamond": 1.15}


def davis_palette() -> list[int]:
    """The 256-colour palette of DAVIS / YouTube-VOS annotation PNGs (PASCAL VOC colour map), flat RGB list."""
    pal: list[int] = []
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


_PALETTE = davis_palette()


@dataclass
class ShapeObject:
    """One object of a Shapes video. Positions are centres in 1/16 pixel, one per frame."""

    obj_id: int
    color: str
    shape: str
    size: str
    motion: str
    radius: int  # 1/16 px
    xs: np.ndarray  # int64 [T]
    ys: np.ndarray  # int64 [T]

    def to_json(self) -> dict:
        return {
            "color": self.color,
            "shape": self.shape,
            "size": self.size,
            "motion": self.motion,
            "radius": self.radius / _FP,
            "x": [int(v) / _FP for v in self.xs],
            "y": [int(v) / _FP for v in self.ys],
        }


@dataclass
class ShapesVideo:
    """A generated video before it is written: objects, background and expressions ``(text, obj_ids)``."""

    name: str
    height: int
    width: int
    num_frames: int
    objects: list[ShapeObject]
    background: np.ndarray  # uint8 [H, W, 3]
    noise_seed: int
    expressions: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)


class _Stream:
    """Random numbers drawn from the raw 64-bit output of PCG64 with our own (documented) arithmetic.

    NumPy keeps bit generators stable across versions but not the algorithms of ``Generator.integers`` and
    friends, so integers (``raw % n``; the bias is below n / 2**64), floats (top 53 bits) and permutations
    (Fisher-Yates) are derived here, which makes Shapes independent of the NumPy version.
    """

    def __init__(self, seed_sequence: np.random.SeedSequence | int) -> None:
        self._bits = np.random.PCG64(seed_sequence)

    def integers(self, low: int, high: int | None = None, size: int | tuple[int, ...] | None = None) -> Any:
        """Uniform integers in ``[low, high)`` (``[0, low)`` with one argument): an int, or int64 array of ``size``."""
        if high is None:
            low, high = 0, low
        n = int(high) - int(low)
        if n <= 0:
            raise ValueError(f"empty range [{low}, {high})")
        if size is None:
            return int(low) + int(self._bits.random_raw()) % n
        raw = self._bits.random_raw(int(np.prod(size)))
        return (raw % np.uint64(n)).astype(np.int64).reshape(size) + int(low)

    def random(self) -> float:
        """A float in ``[0, 1)`` with 53 random bits."""
        return (int(self._bits.random_raw()) >> 11) * (1.0 / 9007199254740992.0)

    def permutation(self, n: int) -> list[int]:
        """A random permutation of ``range(n)`` (Fisher-Yates)."""
        out = list(range(n))
        for i in range(n - 1, 0, -1):
            j = self.integers(i + 1)
            out[i], out[j] = out[j], out[i]
        return out


# ---------------------------------------------------------------------------------------------------------------
# Rasterisation (integer arithmetic only).
def _shape_mask(obj: ShapeObject, t: int, height: int, width: int) -> tuple[slice, slice, np.ndarray] | None:
    """Bool mask of ``obj`` at frame ``t`` restricted to its bounding box: ``(rows, cols, mask [h, w])``."""
    cx, cy = int(obj.xs[t]), int(obj.ys[t])
    r = obj.radius * _SHAPE_SCALE[obj.shape]
    ext = int(obj.radius * _EXTENT[obj.shape]) + _FP
    x0, x1 = max(0, (cx - ext) // _FP), min(width, (cx + ext) // _FP + 1)
    y0, y1 = max(0, (cy - ext) // _FP), min(height, (cy + ext) // _FP + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    # pixel centres in 1/16 px, relative to the object centre
    X = (np.arange(x0, x1, dtype=np.int64) * _FP + _FP // 2 - cx)[None, :]
    Y = (np.arange(y0, y1, dtype=np.int64) * _FP + _FP // 2 - cy)[:, None]
    if obj.shape == "circle":
        R = int(round(r))
        m = X * X + Y * Y <= R * R
    elif obj.shape == "square":
        s = int(round(r))
        m = (np.abs(X) <= s) & (np.abs(Y) <= s)
    elif obj.shape == "diamond":
        d = int(round(r))
        m = np.abs(X) + np.abs(Y) <= d
    else:
        unit = _STAR if obj.shape == "star" else _TRIANGLE
        verts = [(int(round(ux * r)), int(round(uy * r))) for ux, uy in unit]
        m = _polygon_mask(verts, X, Y)
    return slice(y0, y1), slice(x0, x1), np.broadcast_to(m, (y1 - y0, x1 - x0))


def _polygon_mask(verts: Sequence[tuple[int, int]], X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test on integer pixel-centre coordinates ``X [1, w]``, ``Y [h, 1]``."""
    inside = np.zeros((Y.shape[0], X.shape[1]), dtype=bool)
    n = len(verts)
    for i in range(n):
        x1, y1 = verts[i]
        x2, y2 = verts[(i + 1) % n]
        if y1 == y2:
            continue
        spans = (y1 > Y) != (y2 > Y)  # [h, 1]
        lhs = (X - x1) * (y2 - y1)  # [1, w]
        rhs = (Y - y1) * (x2 - x1)  # [h, 1]
        left_of_edge = lhs < rhs if y2 > y1 else lhs > rhs  # the edge crosses the ray to the right of the point
        inside ^= spans & left_of_edge
    return inside


def render_video(video: ShapesVideo) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Rasterise a video: frames ``uint8 [H, W, 3]`` and object-id maps ``uint8 [H, W]`` (0 = background)."""
    H, W = video.height, video.width
    noise_rng = _Stream(video.noise_seed)
    frames, ids = [], []
    for t in range(video.num_frames):
        # mild per-frame sensor noise so that no frame is an exact copy of another
        noise = noise_rng.integers(-4, 5, size=(H, W, 1)).astype(np.int16)
        frame = np.clip(video.background.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        idmap = np.zeros((H, W), dtype=np.uint8)
        for obj in video.objects:  # later objects are drawn on top
            drawn = _shape_mask(obj, t, H, W)
            if drawn is None:
                continue
            rows, cols, m = drawn
            frame[rows, cols][m] = COLORS[obj.color]
            idmap[rows, cols][m] = obj.obj_id
        frames.append(frame)
        ids.append(idmap)
    return frames, ids


def _background(rng: _Stream, H: int, W: int) -> np.ndarray:
    """A low-saturation textured background ``uint8 [H, W, 3]`` (stripes, checks or blocks plus noise)."""
    base = int(rng.integers(70, 151))
    tint = rng.integers(-12, 13, size=3)
    amp = int(rng.integers(10, 31))
    period = int(rng.integers(6, 21))
    kind = int(rng.integers(0, 5))
    yy = np.arange(H, dtype=np.int64)[:, None]
    xx = np.arange(W, dtype=np.int64)[None, :]
    if kind == 0:
        pat = (yy // period) % 2 + 0 * xx
    elif kind == 1:
        pat = (xx // period) % 2 + 0 * yy
    elif kind == 2:
        pat = ((xx + yy) // period) % 2
    elif kind == 3:
        pat = (xx // period + yy // period) % 2
    else:
        blocks = rng.integers(0, 2, size=((H + period - 1) // period, (W + period - 1) // period))
        pat = blocks[yy // period, xx // period]
    lum = base + amp * (2 * pat - 1) + rng.integers(-6, 7, size=(H, W))
    img = lum[:, :, None] + tint[None, None, :]
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Scene sampling.
def _trajectory(rng: _Stream, motion: str, ext: int, T: int, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame centres (1/16 px) for a motion; axis motions stay inside the frame, bouncing reflects off it."""
    lo_x, hi_x = ext, W * _FP - ext
    lo_y, hi_y = ext, H * _FP - ext
    t = np.arange(T, dtype=np.int64)
    if motion == "still":
        x0, y0 = int(rng.integers(lo_x, hi_x + 1)), int(rng.integers(lo_y, hi_y + 1))
        return np.full(T, x0, dtype=np.int64), np.full(T, y0, dtype=np.int64)
    if motion == "bouncing":
        # fast enough to cross the whole range in x with two frames to spare, so that with >= 5 frames the
        # object visibly bounces off a wall at least once; odd speeds never give a zero step at a wall
        steps = T - 3 if T >= 5 else T - 1
        vx = (-(-(hi_x - lo_x) // steps) * int(rng.integers(100, 131)) // 100) | 1
        vy = max(_FP // 2, (hi_y - lo_y) // (T - 1) * int(rng.integers(50, 151)) // 100) | 1
        vx *= 1 if rng.integers(0, 2) else -1
        vy *= 1 if rng.integers(0, 2) else -1
        x0, y0 = int(rng.integers(lo_x, hi_x + 1)), int(rng.integers(lo_y, hi_y + 1))
        return _reflect(x0 + vx * t, lo_x, hi_x), _reflect(y0 + vy * t, lo_y, hi_y)
    horizontal = motion in ("left", "right")
    lo, hi, lo_o, hi_o = (lo_x, hi_x, lo_y, hi_y) if horizontal else (lo_y, hi_y, lo_x, hi_x)
    span = (W if horizontal else H) * _FP
    avail = hi - lo
    disp = min(int(rng.integers(span * 20 // 100, span * 45 // 100 + 1)), avail)
    v = max(1, disp // (T - 1))
    start = int(rng.integers(lo, hi - v * (T - 1) + 1))
    pos = start + v * t
    if motion in ("left", "up"):
        pos = (lo + hi) - pos  # mirror: same track, opposite direction
    other = np.full(T, int(rng.integers(lo_o, hi_o + 1)), dtype=np.int64)
    return (pos, other) if horizontal else (other, pos)


def _reflect(u: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Fold positions into ``[lo, hi]`` as a ball bouncing between two walls."""
    length = hi - lo
    if length <= 0:
        return np.full_like(u, lo)
    w = (u - lo) % (2 * length)
    return lo + np.where(w > length, 2 * length - w, w)


def _sample_objects(rng: _Stream, T: int, H: int, W: int) -> list[ShapeObject]:
    n = int(rng.integers(2, 6))
    colors, shapes = list(COLORS), list(SHAPES)
    objs: list[ShapeObject] = []
    for i in range(n):
        color = colors[int(rng.integers(len(colors)))]
        shape = shapes[int(rng.integers(len(shapes)))]
        if objs and rng.random() < 0.6:  # a distractor sharing the colour or the shape of an earlier object
            ref = objs[int(rng.integers(len(objs)))]
            if rng.random() < 0.5:
                color = ref.color
            else:
                shape = ref.shape
        size = SIZES[int(rng.integers(2))]
        motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
        radius = int(min(H, W) * _FP * _RADIUS_FRACTION[size]) * int(rng.integers(92, 109)) // 100
        ext = int(radius * _EXTENT[shape]) + _FP
        xs, ys = _trajectory(rng, motion, ext, T, H, W)
        objs.append(ShapeObject(i + 1, color, shape, size, motion, radius, xs, ys))
    return objs


# ---------------------------------------------------------------------------------------------------------------
# Expressions and their semantics.
def _dominant(objs: Sequence[ShapeObject], position: str) -> ShapeObject | None:
    """The object of ``objs`` that is strictly (by >= 1 px) the most extreme in every frame, if any."""
    if len(objs) < 2:
        return None
    key = {
        "leftmost": lambda o: o.xs,
        "rightmost": lambda o: -o.xs,
        "topmost": lambda o: o.ys,
        "bottommost": lambda o: -o.ys,
    }[position]
    for cand in objs:
        if all(bool(np.all(key(cand) + _FP <= key(o))) for o in objs if o is not cand):
            return cand
    return None


@dataclass(frozen=True)
class _Parsed:
    position: str | None
    size: str | None
    color: str | None
    shape: str | None
    motion: str | None
    plural: bool


def _split_motion(words: list[str]) -> tuple[str | None, list[str]]:
    """``(motion, the words before its phrase)`` if ``words`` end with a motion phrase, else ``(None, words)``."""
    for motion, phrase in MOTION_PHRASES.items():
        p = phrase.split()
        if words[-len(p) :] == p:
            return motion, words[: -len(p)]
    return None, words


def expression_motion(text: str) -> str | None:
    """The motion (a key of :data:`MOTION_PHRASES`: ``"left"``, ..., ``"bouncing"``) whose phrase a Shapes
    expression ends with, ignoring case and the rest of the grammar; ``None`` if it names no motion.

    ``"The Star Standing Still"`` -> ``"still"``, ``"the leftmost object"`` -> ``None``.
    """
    return _split_motion(text.lower().split())[0]


def _parse(text: str) -> _Parsed | None:
    """The parts of a Shapes expression, or None if the text is not in the grammar (see
    :func:`expression_semantics`)."""
    words = text.split()
    if len(words) < 2 or words[0] != "the":
        return None
    motion, words = _split_motion(words[1:])
    if not words:
        return None
    noun = words[-1]
    plural = noun == "objects" or (noun.endswith("s") and noun[:-1] in SHAPES)
    shape = noun[:-1] if plural and noun != "objects" else (noun if noun in SHAPES else None)
    if noun not in ("object", "objects") and shape is None:
        return None
    position = size = color = None
    for w in words[:-1]:
        if w in POSITIONS and position is None:
            position = w
        elif w in SIZES and size is None:
            size = w
        elif w in COLORS and color is None:
            color = w
        else:
            return None
    if position is not None and plural:
        return None
    return _Parsed(position, size, color, shape, motion, plural)


def expression_semantics(text: str, objects: Sequence[ShapeObject]) -> set[int] | None:
    """The ids of the objects that satisfy a Shapes expression, or ``None`` if the text is not in the grammar.

    Grammar: ``the [POSITION] [SIZE] [COLOR] (SHAPE | object) [MOTION PHRASE]`` for one object, and
    ``the [COLOR] (SHAPEs | objects) [MOTION PHRASE]`` for several. Attributes are a conjunction; a position
    word picks the object that is the most extreme among those matching the rest of the phrase in every frame.
    """
    parsed = _parse(text)
    if parsed is None:
        return None
    match = [
        o
        for o in objects
        if (parsed.shape is None or o.shape == parsed.shape)
        and (parsed.size is None or o.size == parsed.size)
        and (parsed.color is None or o.color == parsed.color)
        and (parsed.motion is None or o.motion == parsed.motion)
    ]
    if parsed.position is not None:
        dom = _dominant(match, parsed.position)
        return {dom.obj_id} if dom is not None else set()
    return {o.obj_id for o in match}


def expression_kind(text: str) -> str | None:
    """The kind of a Shapes expression, as the generator names it, or None if the text is not in the grammar.

    The kind lists the parts the text names, in the grammar's order (``position``, ``size``, ``color``,
    ``shape``, ``motion``), joined by ``_`` and prefixed ``plural_`` for several objects: ``"the red circle"`` ->
    ``color_shape``, ``"the object moving left"`` -> ``motion``, ``"the circles"`` -> ``plural_shape``; ``"the
    object"`` alone -> ``object``. Used to break scores down by what an expression asks the model to read.
    """
    parsed = _parse(text)
    if parsed is None:
        return None
    parts = [
        name
        for name, value in (
            ("position", parsed.position),
            ("size", parsed.size),
            ("color", parsed.color),
            ("shape", parsed.shape),
            ("motion", parsed.motion),
        )
        if value is not None
    ]
    kind = "_".join(parts) or "object"
    return f"plural_{kind}" if parsed.plural else kind


def _candidate_expressions(objs: Sequence[ShapeObject]) -> list[tuple[str, str, tuple[int, ...]]]:
    """Every unambiguous expression of the grammar for these objects: ``(kind, text, referred ids)``."""
    out: list[tuple[str, str, tuple[int, ...]]] = []

    def add(kind: str, text: str, plural: bool) -> None:
        ids = expression_semantics(text, objs)
        assert ids is not None, text
        if (plural and len(ids) >= 2) or (not plural and len(ids) == 1):
            out.append((kind, text, tuple(sorted(ids))))

    for o in objs:
        mp = MOTION_PHRASES[o.motion]
        add("color_shape", f"the {o.color} {o.shape}", False)
        add("size_color_shape", f"the {o.size} {o.color} {o.shape}", False)
        add("size_shape", f"the {o.size} {o.shape}", False)
        add("shape_motion", f"the {o.shape} {mp}", False)
        add("color_shape_motion", f"the {o.color} {o.shape} {mp}", False)
        add("motion", f"the object {mp}", False)
        add("color", f"the {o.color} object", False)
        for pos in POSITIONS:
            same_shape = [p for p in objs if p.shape == o.shape]
            if len(same_shape) >= 2:
                add("position_shape", f"the {pos} {o.shape}", False)
            add("position", f"the {pos} object", False)
        add("plural_color", f"the {o.color} objects", True)
        add("plural_shape", f"the {o.shape}s", True)
        add("plural_motion", f"the objects {mp}", True)
    seen: set[str] = set()
    unique = []
    for kind, text, ids in out:
        if text not in seen:
            seen.add(text)
            unique.append((kind, text, ids))
    return unique


def _choose_expressions(
    rng: _Stream, objs: Sequence[ShapeObject], per_object: int
) -> list[tuple[str, tuple[int, ...]]]:
    cands = _candidate_expressions(objs)
    chosen: list[tuple[str, tuple[int, ...]]] = []
    for o in objs:
        mine = [c for c in cands if c[2] == (o.obj_id,)]
        # prefer distinct kinds: shuffle, then take the first candidate of each new kind
        order = rng.permutation(len(mine))
        kinds: set[str] = set()
        for i in order:
            kind, text, ids = mine[int(i)]
            if kind in kinds:
                continue
            kinds.add(kind)
            chosen.append((text, ids))
            if len(kinds) == per_object:
                break
    plural = [c for c in cands if len(c[2]) >= 2]
    if plural and rng.random() < 0.5:
        _, text, ids = plural[int(rng.integers(len(plural)))]
        chosen.append((text, ids))
    return chosen


def _visible_enough(video: ShapesVideo, ids: list[np.ndarray]) -> bool:
    """Every object shows >= 25% of its own area in at least half of the frames (occlusion is allowed)."""
    H, W = video.height, video.width
    for obj in video.objects:
        good = 0
        for t, idmap in enumerate(ids):
            drawn = _shape_mask(obj, t, H, W)
            if drawn is None:
                continue
            rows, cols, m = drawn
            full = int(m.sum())
            seen = int((idmap[rows, cols][m] == obj.obj_id).sum())
            good += full > 0 and seen * 4 >= full
        if good * 2 < video.num_frames:
            return False
    return True


def _video_rng(seed: int, split: str, index: int) -> _Stream:
    key = [int(seed), len(split), *split.encode("utf-8"), int(index)]
    return _Stream(np.random.SeedSequence(key))


def make_video(
    seed: int, split: str, index: int, num_frames: int, height: int, width: int, expressions_per_object: int = 2
) -> tuple[ShapesVideo, list[np.ndarray], list[np.ndarray]]:
    """Sample and render video ``index`` of ``split``: ``(video, frames [H, W, 3] list, id maps [H, W] list)``."""
    rng = _video_rng(seed, split, index)
    for _ in range(100):
        objs = _sample_objects(rng, num_frames, height, width)
        video = ShapesVideo(
            f"video{index:05d}",
            height,
            width,
            num_frames,
            objs,
            _background(rng, height, width),
            int(rng.integers(0, 2**63 - 1)),
        )
        video.expressions = _choose_expressions(rng, objs, expressions_per_object)
        if not video.expressions:
            continue
        frames, ids = render_video(video)
        if _visible_enough(video, ids):
            return video, frames, ids
    raise DatasetError(
        f"could not place the objects of video {index} visibly at {height}x{width}; "
        "use a larger size (>= 64 px) for Shapes."
    )


# ---------------------------------------------------------------------------------------------------------------
# Writing the Ref-YouTube-VOS layout.
def frame_names(num_frames: int) -> list[str]:
    """The file stems of a generated video's frames: ``00000``, ``00005``, ... (Ref-YouTube-VOS ships every 5th
    frame, and Shapes is written in its layout)."""
    return [f"{5 * t:05d}" for t in range(num_frames)]


def _save_png(idmap: np.ndarray, path: Path) -> None:
    img = Image.fromarray(idmap, mode="P")
    img.putpalette(_PALETTE)
    img.save(path, format="PNG")


def _dump(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def generate(
    root: str | Path,
    split: str = "train",
    num_videos: int = 100,
    frames: int = 8,
    size: int | tuple[int, int] = 128,
    seed: int = 0,
    *,
    expressions_per_object: int = 2,
    jpeg_quality: int = 90,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``num_videos`` Shapes videos of ``split`` under ``root`` in the Ref-YouTube-VOS layout.

    Args:
        root: dataset root (created if missing); read it back with ``RefYouTubeVOS(root, split)``.
        split: ``"train"`` (with ``Annotations`` and ``obj_id``), ``"valid"`` or ``"test"`` (text only, like the
            official release, plus a ground-truth copy in ``<root>/<split>_gt``).
        num_videos: number of videos; video ``i`` does not depend on ``num_videos``.
        frames: frames per video (>= 2, motions need time).
        size: ``H`` (square) or ``(H, W)`` in pixels, >= 48.
        seed: everything is a function of ``(seed, split, video index)``.
        expressions_per_object: at most this many single-object expressions per object (of different kinds).
        overwrite: replace an existing split; otherwise an existing split is an error.
        progress: show a tqdm bar.

    Returns:
        ``Path(root)``.
    """
    if split not in ("train", "valid", "test"):
        raise InvalidInputError(f"Shapes split must be 'train', 'valid' or 'test', got {split!r}.")
    H, W = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(H, W) < 48:
        raise InvalidInputError(f"Shapes size must be at least 48 pixels per side, got {H}x{W}.")
    if frames < 2:
        raise InvalidInputError(f"Shapes needs at least 2 frames per video (motions need time), got {frames}.")
    if num_videos < 1:
        raise InvalidInputError(f"num_videos must be >= 1, got {num_videos}.")
    root = Path(root)
    has_gt = split == "train"
    split_dir, gt_dir = root / split, root / f"{split}_gt"
    meta_path = root / "meta_expressions" / split / "meta_expressions.json"
    targets = [split_dir, meta_path.parent] + ([] if has_gt else [gt_dir])
    if any(p.exists() for p in targets):
        if not overwrite:
            raise DatasetError(
                f"Shapes split '{split}' already exists under '{root}'; pass overwrite=True to "
                "replace it or choose another root."
            )
        for p in targets:
            shutil.rmtree(p, ignore_errors=True)
    img_root = split_dir / "JPEGImages"
    ann_root = (split_dir if has_gt else gt_dir) / "Annotations"
    names = frame_names(frames)
    meta_videos: dict[str, dict] = {}
    gt_videos: dict[str, dict] = {}
    objects_meta: dict[str, dict] = {}
    info_videos: dict[str, dict] = {}
    for index in tqdm(range(num_videos), desc=f"Shapes {split}", disable=not progress, unit="video"):
        video, rgb, ids = make_video(seed, split, index, frames, H, W, expressions_per_object)
        (img_root / video.name).mkdir(parents=True, exist_ok=True)
        (ann_root / video.name).mkdir(parents=True, exist_ok=True)
        for name, frame, idmap in zip(names, rgb, ids):
            Image.fromarray(frame, mode="RGB").save(
                img_root / video.name / f"{name}.jpg", format="JPEG", quality=jpeg_quality
            )
            _save_png(idmap, ann_root / video.name / f"{name}.png")
        exps_gt = {}
        for k, (text, obj_ids) in enumerate(video.expressions):
            ref = str(obj_ids[0]) if len(obj_ids) == 1 else [str(i) for i in obj_ids]
            exps_gt[str(k)] = {"exp": text, "obj_id": ref}
        gt_videos[video.name] = {"expressions": exps_gt, "frames": names}
        meta_videos[video.name] = (
            gt_videos[video.name]
            if has_gt
            else {"expressions": {k: {"exp": v["exp"]} for k, v in exps_gt.items()}, "frames": names}
        )
        objects_meta[video.name] = {
            "objects": {
                str(o.obj_id): {
                    "category": o.shape,
                    "frames": [n for n, m in zip(names, ids) if bool((m == o.obj_id).any())],
                }
                for o in video.objects
            }
        }
        info_videos[video.name] = {
            "background_seed": video.noise_seed,
            "objects": {str(o.obj_id): o.to_json() for o in video.objects},
        }
    meta_dir = split_dir if has_gt else gt_dir
    atomic_write_text(meta_dir / "meta.json", _dump({"videos": objects_meta}))
    if not has_gt:
        atomic_write_text(gt_dir / "meta_expressions.json", _dump({"videos": gt_videos}))
    info = {
        "generator": "lvseg.data.shapes",
        "version": 1,
        "split": split,
        "num_videos": num_videos,
        "frames": frames,
        "height": H,
        "width": W,
        "seed": seed,
        "expressions_per_object": expressions_per_object,
        "videos": info_videos,
    }
    atomic_write_text(root / "shapes_info" / f"{split}.json", _dump(info))
    # written last: a crash mid-way leaves no expression file, so the loader fails loudly instead of half-reading
    atomic_write_text(meta_path, _dump({"videos": meta_videos}))
    logger.info("wrote %d Shapes videos (%d frames, %dx%d) to %s", num_videos, frames, H, W, root / split)
    return root


def load_objects(info_path: str | Path, video: str) -> list[ShapeObject]:
    """Rebuild a video's :class:`ShapeObject` list from ``shapes_info/<split>.json`` (for checking expressions)."""
    with open(info_path, encoding="utf-8") as fh:
        info = json.load(fh)
    out = []
    for oid, o in info["videos"][video]["objects"].items():
        out.append(
            ShapeObject(
                int(oid),
                o["color"],
                o["shape"],
                o["size"],
                o["motion"],
                int(round(o["radius"] * _FP)),
                np.array([round(v * _FP) for v in o["x"]], dtype=np.int64),
                np.array([round(v * _FP) for v in o["y"]], dtype=np.int64),
            )
        )
    return out
