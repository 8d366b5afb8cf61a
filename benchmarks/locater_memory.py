"""Locater: peak memory and time per frame against video length, and lvseg's per-frame step against the official one.

Part 1 (``--lengths``): for each length, an H.264 video of that many frames (random content, ``--video-size``
pixels square) is written, then a fresh process segments it through ``model.predict`` (the Predictor: the global
memory's frames read ahead, windows of ``preprocessing.window`` frames, memories carried across windows) and
reports its peak RSS (``ru_maxrss``) and the seconds per frame of the predict call. The model is the released
architecture (``--model full``, 320 px, random weights) or the tiny Shapes preset (``--model tiny``). The returned
masks grow with the video (1 bit per pixel while running, 1 byte at the end: ``--video-size`` 32 keeps 5,000
frames at 5 MB) and are reported beside the peak.

Part 2 (``--official DIR``, a copy of leonnnop/Locater): the official ``VLFTrans`` per-frame step
(``net(vis=frame, lang=words)`` after ``_prep_global_mem``) and lvseg's (``Locater.segment_window`` one frame at a
time) on the same random weights and inputs, fp32 CPU, ``--steps`` frames after one warm-up frame each, alternated
so that a load change on a shared machine hits both.

    python benchmarks/locater_memory.py --model tiny --lengths 50 500 5000
    python benchmarks/locater_memory.py --model full --lengths 50 500 --official /path/to/Locater --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build(kind: str):
    from lvseg.models.locater.model import Locater

    torch.manual_seed(0)
    if kind == "tiny":
        from lvseg.train.presets import build_locater_shapes_tiny

        return build_locater_shapes_tiny(image_size=96).eval()  # the 6x6 grid the docs' table was measured on
    from lvseg.models.locater.config import LocaterConfig
    from lvseg.train.presets import shapes_wordpiece_tokenizer

    return Locater(LocaterConfig(), tokenizer=shapes_wordpiece_tokenizer()).eval()


def write_video(path: Path, frames: int, size: int) -> None:
    from lvseg.video import write_video as write

    rng = np.random.default_rng(0)
    write((rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(frames)), path, fps=24)


def one_length(kind: str, video: str) -> dict:
    """Segment ``video`` (written by the parent process) in this fresh process; its peak RSS is the model's."""
    model = build(kind)
    before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    result = model.predict(video, "the big red circle", progress=False)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    frames = int(result.masks.shape[0])
    return {
        "frames": frames,
        "peak_rss_mb": round(peak_mb, 1),
        "peak_before_predict_mb": round(before_mb, 1),
        "s_per_frame": round(seconds / frames, 4),
        "masks_mb": round(result.masks.numel() / 2**20, 2),
    }


def compare_steps(official: str, steps: int) -> dict:
    sys.path.insert(0, official)
    from network.mainnetwork import VLFTrans

    torch.set_grad_enabled(False)
    net = VLFTrans(img_dim=320).eval()
    model = build("full")
    model.load_state_dict(net.state_dict())
    g = torch.Generator().manual_seed(0)
    video = torch.randn((1, steps + 4, 3, 320, 320), generator=g)
    ids = torch.randint(1000, 5000, (1, 22), generator=g)
    words = model.encode_text(ids)
    net._reset_memory()
    net._prep_global_mem(video[:, :3], {"input_ids": ids})
    from lvseg.models.locater.model import LocaterState

    fused = model.encode_frames(video[:, :3], words)
    state = LocaterState(words, model.global_memory(fused), None, 0, ("x",))
    times = {"official": [], "lvseg": []}
    for t in range(steps + 1):
        frame = video[:, 3 + t : 4 + t]
        a = time.perf_counter()
        net(vis=frame, lang={"input_ids": ids})
        b = time.perf_counter()
        _, _, state = model.segment_window(frame, ["x"], state)
        c = time.perf_counter()
        if t:  # the first frame warms up both
            times["official"].append(b - a)
            times["lvseg"].append(c - b)
    return {k: round(float(np.median(v)), 3) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--lengths", type=int, nargs="*", default=[50, 500, 5000])
    parser.add_argument("--video-size", type=int, default=32)
    parser.add_argument("--official", default=None, help="a copy of leonnnop/Locater (part 2)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_length(args.model, args.one)))
        return
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU(s), model {args.model}, fp32")
    rows = []
    for n in args.lengths:
        with tempfile.TemporaryDirectory() as tmp:
            video = Path(tmp) / "v.mp4"
            write_video(video, n, args.video_size)
            out = subprocess.run(
                [sys.executable, __file__, "--model", args.model, "--one", str(video)],
                check=True,
                capture_output=True,
                text=True,
            )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    if rows:
        print("| frames | peak RSS (MB) | s / frame | result masks (MB) |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['frames']} | {r['peak_rss_mb']} | {r['s_per_frame']} | {r['masks_mb']} |")
        if len(rows) > 1:
            growth = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"] - 1
            print(f"peak RSS {rows[0]['frames']} -> {rows[-1]['frames']} frames: {100 * growth:+.1f} %")
    if args.official:
        print("median seconds per frame (320 px, fp32 CPU):", compare_steps(args.official, args.steps))


if __name__ == "__main__":
    main()
