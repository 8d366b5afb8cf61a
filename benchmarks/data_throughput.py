"""Data-loading throughput on Shapes written to disk: generation speed and training-clip loading speed.

Measures
1. Shapes generation, frames/s on one core (128x128 and the benchmark resolution);
2. training sampling through ``DataLoader``: RefYouTubeVOS on the generated split, ReferFormer's 5-frame sampler,
   with and without ReferFormer's training transforms, ``--workers`` worker processes; clips/s.

Usage::

    python benchmarks/data_throughput.py                       # 360x640, 5-frame clips, 2 workers
    python benchmarks/data_throughput.py --height 128 --width 128 --workers 0
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from lvseg.data import ClipCollator, ClipSampling, RefYouTubeVOS, shapes
from lvseg.data.transforms import train_transforms


def generation_fps(root: Path, split: str, videos: int, frames: int, h: int, w: int) -> float:
    start = time.perf_counter()
    shapes.generate(root, split, num_videos=videos, frames=frames, size=(h, w), seed=0, progress=False, overwrite=True)
    return videos * frames / (time.perf_counter() - start)


def loader_clips_per_s(ds: RefYouTubeVOS, workers: int, batch_size: int, clips: int) -> float:
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                        collate_fn=ClipCollator(32), persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    next(it)  # start-up (worker spawn, first reads) is not counted
    n, start = 0, time.perf_counter()
    while n < clips:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        n += batch["frames"].shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=None, help="where to write Shapes (default: a temporary folder)")
    p.add_argument("--videos", type=int, default=24)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--clip-frames", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--clips", type=int, default=150, help="clips timed per configuration")
    args = p.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "shapes"
        fps_small = generation_fps(Path(tmp) / "shapes128", "train", 30, 20, 128, 128)
        fps_big = generation_fps(root, "train", args.videos, args.frames, args.height, args.width)
        print(f"Shapes generation, 1 process:  128x128: {fps_small:7.0f} frames/s   "
              f"{args.height}x{args.width}: {fps_big:6.0f} frames/s")
        sampling = ClipSampling(num_frames=args.clip_frames, mode="referformer")
        rows = []
        for name, transform in (("read only", None),
                                ("read + ReferFormer train transforms", train_transforms(max_size=640))):
            ds = RefYouTubeVOS(root, "train", sampling=sampling, transform=transform)
            cps = loader_clips_per_s(ds, args.workers, args.batch_size, args.clips)
            rows.append((name, cps))
        print(f"\nTraining sampling: {args.clip_frames}-frame clips, {args.height}x{args.width} JPEG frames, "
              f"{args.workers} workers, batch {args.batch_size}")
        print(f"{'pipeline':<40}{'clips/s':>10}{'ms/clip':>10}")
        for name, cps in rows:
            print(f"{name:<40}{cps:>10.1f}{1000 / cps:>10.1f}")


if __name__ == "__main__":
    main()
