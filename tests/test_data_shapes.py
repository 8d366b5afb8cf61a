"""Shapes: determinism, unambiguous expressions, rendering consistent with the recorded scene, loader round trip."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lvseg.data import RefYouTubeVOS, shapes
from lvseg.errors import DatasetError, InvalidInputError

_COLOR = "|".join(shapes.COLORS)
_SHAPE = "|".join(shapes.SHAPES)
_MOTION = {"moving left": "left", "moving right": "right", "moving up": "up", "moving down": "down",
           "standing still": "still", "bouncing around": "bouncing"}
# An independent reading of the grammar (deliberately not lvseg's own parser).
_GRAMMAR = re.compile(
    rf"^the (?:(?P<pos>leftmost|rightmost|topmost|bottommost) )?(?:(?P<size>small|big) )?(?:(?P<color>{_COLOR}) )?"
    rf"(?P<noun>objects?|(?:{_SHAPE})s?)(?: (?P<motion>{'|'.join(_MOTION)}))?$")


def _referents(text: str, objects: list[dict]) -> set[int]:
    """Which objects (dicts from shapes_info, with 'id') a text describes, by the documented semantics."""
    m = _GRAMMAR.match(text)
    assert m is not None, f"expression outside the grammar: {text!r}"
    noun = m["noun"]
    plural = noun.endswith("s")
    shape = None if noun.startswith("object") else noun.rstrip("s")
    motion = _MOTION[m["motion"]] if m["motion"] else None
    hits = [o for o in objects
            if (shape is None or o["shape"] == shape) and (m["size"] is None or o["size"] == m["size"])
            and (m["color"] is None or o["color"] == m["color"]) and (motion is None or o["motion"] == motion)]
    if m["pos"] is None:
        assert plural == (len(hits) >= 2), text
        return {o["id"] for o in hits}
    assert not plural
    axis, sign = {"leftmost": ("x", 1), "rightmost": ("x", -1), "topmost": ("y", 1), "bottommost": ("y", -1)}[m["pos"]]
    winners = set()
    for cand in hits:
        others = [o for o in hits if o is not cand]
        # strictly more extreme, by at least one pixel, in every frame
        if others and all(np.all(sign * (np.array(o[axis]) - np.array(cand[axis])) >= 1) for o in others):
            winners.add(cand["id"])
    return winners


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for root, seed in ((a, 7), (b, 7), (c, 8)):
        shapes.generate(root, "train", num_videos=4, frames=5, size=64, seed=seed, progress=False)
        shapes.generate(root, "valid", num_videos=2, frames=5, size=(64, 96), seed=seed, progress=False)
    da, db, dc = _tree_digest(a), _tree_digest(b), _tree_digest(c)
    assert da == db
    assert any(k.endswith(".png") for k in da) and any(k.endswith(".jpg") for k in da)
    assert da.keys() == dc.keys()
    assert sum(da[k] != dc[k] for k in da) > len(da) // 2


def test_generator_output_is_pinned() -> None:
    # Masks, raw frames and texts are pure integer arithmetic on PCG64's raw stream: identical on every machine and
    # NumPy version. A change of this digest changes every Shapes dataset ever generated (bump the version then).
    h = hashlib.sha256()
    for i in range(3):
        video, frames, ids = shapes.make_video(seed=0, split="train", index=i, num_frames=6, height=64, width=80)
        for a in frames + ids:
            h.update(a.tobytes())
        h.update(repr(video.expressions).encode())
    assert h.hexdigest() == "a66ebe89352620677b140b4048847a7f9d3d08f2a2b26c7c89976842ac554e72"


def test_video_does_not_depend_on_num_videos_and_split_changes_it() -> None:
    v3, f3, i3 = shapes.make_video(seed=3, split="train", index=2, num_frames=6, height=64, width=64)
    v3b, f3b, i3b = shapes.make_video(seed=3, split="train", index=2, num_frames=6, height=64, width=64)
    assert v3.expressions == v3b.expressions
    assert all(np.array_equal(x, y) for x, y in zip(f3 + i3, f3b + i3b))
    vv, fv, _ = shapes.make_video(seed=3, split="valid", index=2, num_frames=6, height=64, width=64)
    assert not all(np.array_equal(x, y) for x, y in zip(f3, fv))


def test_expressions_are_unambiguous_and_rendering_matches_scene() -> None:
    kinds_seen = {"plural": 0, "position": 0, "motion_only": 0, "size": 0}
    for index in range(120):
        video, frames, ids = shapes.make_video(seed=11, split="train", index=index, num_frames=8, height=96, width=96)
        objs = [dict(o.to_json(), id=o.obj_id) for o in video.objects]
        assert 2 <= len(objs) <= 5 and video.expressions
        for text, referred in video.expressions:
            assert _referents(text, objs) == set(referred), (index, text)
            kinds_seen["plural"] += len(referred) > 1
            kinds_seen["position"] += "most" in text
            kinds_seen["motion_only"] += text.startswith("the object ")
            kinds_seen["size"] += " small " in text or " big " in text
            assert set(text.split()) <= set(shapes.VOCABULARY)
        for o in video.objects:
            xs, ys = o.xs, o.ys
            steps = np.sign(np.diff(xs)), np.sign(np.diff(ys))
            expected = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
            if o.motion in expected:
                ex, ey = expected[o.motion]
                assert np.all(steps[0] == ex) and np.all(steps[1] == ey), (index, o.motion)
            else:  # bouncing: diagonal, and reverses its horizontal direction at least once
                assert np.all(steps[0] != 0) and np.all(steps[1] != 0)
                assert len(set(steps[0].tolist())) == 2
            for frame, idmap in zip(frames, ids):
                px = frame[idmap == o.obj_id]
                if len(px):  # raw (pre-JPEG) pixels of an object are exactly its colour
                    assert np.all(px == np.array(shapes.COLORS[o.color], dtype=np.uint8))
            if o.shape in ("circle", "square", "diamond"):  # symmetric: centroid of an unoccluded mask = centre
                for t, idmap in enumerate(ids):
                    yy, xx = np.nonzero(idmap == o.obj_id)
                    r = o.radius / 16
                    x, y = xs[t] / 16, ys[t] / 16
                    window = idmap[max(0, int(y - 2 * r)):int(y + 2 * r) + 1, max(0, int(x - 2 * r)):int(x + 2 * r) + 1]
                    if len(xx) and set(np.unique(window).tolist()) <= {0, o.obj_id}:
                        assert abs(xx.mean() + 0.5 - x) < 0.75 and abs(yy.mean() + 0.5 - y) < 0.75
    assert all(v > 5 for v in kinds_seen.values()), kinds_seen


def test_expression_kind_names_what_the_generator_chose() -> None:
    """``expression_kind`` recovers the generator's kind of every candidate expression (all twelve kinds occur),
    and is None outside the grammar."""
    from lvseg.data.shapes import _candidate_expressions, expression_kind

    seen: set[str] = set()
    for index in range(30):
        video, _, _ = shapes.make_video(seed=3, split="train", index=index, num_frames=8, height=96, width=96)
        for kind, text, _ in _candidate_expressions(video.objects):
            assert shapes.expression_kind(text) == kind, text
            seen.add(kind)
    assert len(seen) == 12, seen
    assert expression_kind("the object") == "object"
    assert expression_kind("the small red circles moving up") == "plural_size_color_shape_motion"
    for text in ("a red circle", "the red", "the leftmost circles", "the purple banana", "the"):
        assert expression_kind(text) is None, text


def test_expression_motion_reads_the_trailing_motion_phrase() -> None:
    """``expression_motion`` names the motion of every generated expression whose kind has one (and no other),
    ignores case, and does not read a motion word inside another word."""
    from lvseg.data.shapes import _candidate_expressions

    for index in range(10):
        video, _, _ = shapes.make_video(seed=3, split="train", index=index, num_frames=8, height=96, width=96)
        by_id = {o.obj_id: o for o in video.objects}
        for kind, text, ids in _candidate_expressions(video.objects):
            motion = shapes.expression_motion(text)
            if "motion" in kind:
                assert motion is not None and {by_id[i].motion for i in ids} == {motion}, text
            else:
                assert motion is None, text
    assert shapes.expression_motion("The Star Standing Still") == "still"
    assert shapes.expression_motion("the leftmost object") is None
    assert shapes.expression_motion("the object moving left quickly") is None  # the phrase must end the text
    assert shapes.expression_motion("") is None


def test_generate_writes_ytvos_layout_that_the_loader_reads(tmp_path: Path) -> None:
    shapes.generate(tmp_path, "train", num_videos=3, frames=6, size=(64, 80), seed=5, progress=False)
    shapes.generate(tmp_path, "valid", num_videos=2, frames=6, size=64, seed=5, progress=False)
    meta = json.loads((tmp_path / "meta_expressions/train/meta_expressions.json").read_text())
    assert list(meta["videos"]["video00000"]["frames"]) == ["00000", "00005", "00010", "00015", "00020", "00025"]
    with Image.open(tmp_path / "train/Annotations/video00000/00000.png") as im:
        assert im.mode == "P"
    # valid is text-only, like the official release; the ground truth sits in valid_gt
    valid_meta = json.loads((tmp_path / "meta_expressions/valid/meta_expressions.json").read_text())
    assert all("obj_id" not in e for v in valid_meta["videos"].values() for e in v["expressions"].values())
    assert not (tmp_path / "valid/Annotations").exists() and (tmp_path / "valid_gt/Annotations").is_dir()

    ds = RefYouTubeVOS(tmp_path, "train")
    video, frames, ids = shapes.make_video(seed=5, split="train", index=1, num_frames=6, height=64, width=80)
    n = 0
    for i in range(len(ds)):
        s = ds[i]
        if s["video"] != "video00001":
            continue
        text, referred = video.expressions[int(s["exp_id"])]
        assert s["text"] == text and s["obj_ids"] == list(referred)
        expect = np.isin(np.stack(ids), referred)
        assert torch.equal(s["masks"], torch.from_numpy(expect))
        assert s["frames"].shape == (6, 64, 80, 3)
        raw = torch.from_numpy(np.stack(frames)).float()
        err = (s["frames"].float()[:, None] - raw[None]).abs().mean(dim=(2, 3, 4))  # [decoded t, raw t']
        assert err.diagonal().max() < 8 and torch.equal(err.argmin(dim=1), torch.arange(6))  # JPEG: own frame closest
        n += 1
    assert n == len(video.expressions)
    valid = RefYouTubeVOS(tmp_path, "valid")
    assert valid.has_ground_truth and valid[0]["masks"].any()
    assert "masks" not in RefYouTubeVOS(tmp_path, "valid", gt_root=None)[0]


def test_generate_refuses_to_overwrite_and_rejects_bad_arguments(tmp_path: Path) -> None:
    shapes.generate(tmp_path, "train", num_videos=1, frames=3, size=64, seed=0, progress=False)
    with pytest.raises(DatasetError, match="overwrite=True"):
        shapes.generate(tmp_path, "train", num_videos=1, frames=3, size=64, seed=0, progress=False)
    shapes.generate(tmp_path, "train", num_videos=2, frames=3, size=64, seed=0, progress=False, overwrite=True)
    assert len(list((tmp_path / "train/JPEGImages").iterdir())) == 2
    with pytest.raises(InvalidInputError, match="at least 2 frames"):
        shapes.generate(tmp_path / "x", "train", num_videos=1, frames=1)
    with pytest.raises(InvalidInputError, match="split"):
        shapes.generate(tmp_path / "x", "val", num_videos=1)
    with pytest.raises(InvalidInputError, match="48"):
        shapes.generate(tmp_path / "x", "train", num_videos=1, size=16)


def test_end_to_end_training_batches_with_worker_processes(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from lvseg.data import ClipCollator, ClipSampling
    from lvseg.data.transforms import train_transforms

    shapes.generate(tmp_path, "train", num_videos=2, frames=6, size=64, seed=2, progress=False)
    ds = RefYouTubeVOS(tmp_path, "train", sampling=ClipSampling(num_frames=3, mode="referformer"),
                       transform=train_transforms(max_size=96, scales=[48, 64], crop=False))
    loader = DataLoader(ds, batch_size=2, shuffle=True, num_workers=1, collate_fn=ClipCollator(16),
                        generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert sum(b["frames"].shape[0] for b in batches) == len(ds)
    b = batches[0]
    assert b["frames"].dtype == torch.float32 and b["frames"].shape[1:3] == (3, 3)
    assert b["frames"].shape[-1] % 16 == 0 and b["masks"].shape == b["padding_mask"].shape
    assert all(t.split()[0] == "the" for t in b["text"])


def test_held_out_test_set_is_generated_once_and_its_size_is_checked(tmp_path: Path) -> None:
    """The Shapes benchmarks' held-out videos (``<root>-test``, seed 1): generated when missing, then reused; an
    existing folder of another size is refused with the fix (``--num-test`` used to be ignored silently)."""
    from lvseg.train.presets import shapes_test_data

    root = tmp_path / "shapes"
    test = shapes_test_data(root, 2)
    assert sorted(test.videos) == ["video00000", "video00001"]
    stamp = (tmp_path / "shapes-test" / "meta_expressions" / "valid" / "meta_expressions.json").stat().st_mtime_ns
    again = shapes_test_data(root, 2)
    assert len(again) == len(test)
    assert (tmp_path / "shapes-test" / "meta_expressions" / "valid" / "meta_expressions.json").stat().st_mtime_ns == stamp
    assert not (tmp_path / "shapes").exists()  # the training root is not touched
    with pytest.raises(DatasetError, match=r"holds 2 held-out Shapes videos, not the 3 asked for; pass --num-test 2"):
        shapes_test_data(root, 3)


def test_grid_bound_benchmark_scores_ground_truth_through_a_grid(tmp_path: Path) -> None:
    """benchmarks/shapes_grid_bound.py: a grid as fine as the frame gives the ground truth back (J&F 100); a
    coarse grid loses small objects and scores lower than a finer one."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "shapes_grid_bound.py"
    root = tmp_path / "shapes"
    out = subprocess.run(
        [sys.executable, str(script), "--data-root", str(root), "--num-test", "2", "--grids", "96", "24", "4"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = {r["grid"]: r for r in map(json.loads, out.splitlines())}
    assert rows[96]["J&F"] == 100.0 and rows[96]["expressions"] > 0
    assert rows[4]["J&F"] < rows[24]["J&F"] < 100.0
