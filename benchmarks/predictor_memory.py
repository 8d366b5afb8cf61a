"""Peak memory of lvseg.Predictor versus video length: windows keep it flat.

Two cases, each in a fresh process per run (so ru_maxrss is per run):

* ``pixel``: synthetic H.264 videos (360x640) of increasing length through the Predictor with a small pixel-wise
  model; prints peak RSS, the size of the output masks, and the peak minus the masks. With windowed, lazy decoding
  the last column stays flat as the video grows.
* ``default-model``: ``lvseg predict long.mp4 "the red circle"`` with the default (bundled) model and default
  settings on a 320x240 H.264 video of ``--default-frames`` frames (3000), writing the default outputs (overlay
  and PNGs); ``--default-args`` adds options (e.g. ``"--window 0"`` for the whole video in one pass).

    python benchmarks/predictor_memory.py [--case pixel default-model] [--lengths 50 200 800] [--window 24]
        [--default-frames 3000] [--default-args "--window 48 --overlap 8"]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys
from dataclasses import dataclass
import torch
import lvseg
from lvseg.models import register_family
from lvseg.models.base import ModelConfig, PreprocessConfig, RVOSModel

@dataclass
class BrightConfig(ModelConfig):
    architecture: str = "bench-bright"

@register_family
class Bright(RVOSModel):
    # segments bright pixels; has one conv so it does real (small) work per frame
    config_class = BrightConfig
    architecture = "bench-bright"
    def __init__(self, config):
        super().__init__(config)
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)
        torch.nn.init.constant_(self.conv.weight, 1 / 27)
        torch.nn.init.zeros_(self.conv.bias)
    def segment(self, frames, text):
        b, t = frames.shape[:2]
        logits = self.conv(frames.flatten(0, 1)).view(b, t, *frames.shape[-2:])
        return logits, torch.sigmoid(logits).mean((-1, -2))

path, window = sys.argv[1], int(sys.argv[2])
model = Bright(BrightConfig(preprocessing=PreprocessConfig(window=window, overlap=0))).eval()
result = model.predict(path, "the bright thing", progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"frames": len(result), "peak": peak, "masks": result.masks.numel()}))
"""


# `lvseg predict` in a process of its own; prints its peak RSS as the last line of stderr
CLI_CHILD = r"""
import json, resource, sys
from lvseg.cli import main
code = main(sys.argv[1:])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"code": code, "peak": peak}), file=sys.stderr)
"""


def write_video(path: Path, frames: int, height: int = 360, width: int = 640, circle: bool = False) -> None:
    import numpy as np

    from lvseg.video import write_video as write

    yy, xx = np.mgrid[:height, :width]

    def gen():
        for t in range(frames):
            frame = np.zeros((height, width, 3), dtype=np.uint8)
            if circle:  # a red circle of radius 30 moving left and right (a Shapes-world object)
                cx = 40 + abs((t * 3) % (2 * (width - 80)) - (width - 80))
                frame[(yy - height // 2) ** 2 + (xx - cx) ** 2 <= 30 ** 2] = (220, 30, 30)
            else:
                frame[100:200, (t * 4) % 540:(t * 4) % 540 + 100] = 255
            yield frame

    write(gen(), path, fps=25)


def pixel_case(args: argparse.Namespace, tmp: str) -> None:
    rows = []
    for n in args.lengths:
        path = Path(tmp) / f"v{n}.mp4"
        write_video(path, n)
        out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(args.window)], capture_output=True,
                             text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"Predictor peak RSS, 360x640 H.264, window={args.window}")
    print(f"{'frames':>7} {'peak RSS MiB':>13} {'masks MiB':>10} {'peak - masks MiB':>17}")
    for r in rows:
        mib = 1 << 20
        print(f"{r['frames']:>7} {r['peak'] / mib:>13.1f} {r['masks'] / mib:>10.1f} {(r['peak'] - r['masks']) / mib:>17.1f}")


def default_model_case(args: argparse.Namespace, tmp: str) -> None:
    import time

    n, height, width = args.default_frames, 240, 320
    path = Path(tmp) / "long.mp4"
    write_video(path, n, height, width, circle=True)
    command = ["predict", str(path), "the red circle", "-o", str(Path(tmp) / "out"), "-q",
               *args.default_args.split()]
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CLI_CHILD, *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"lvseg predict failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stderr.strip().splitlines()[-1])
    masks = n * height * width  # bool masks at the original resolution, one byte per pixel
    mib = 1 << 20
    print(f"lvseg predict, default model, {width}x{height} H.264, {n} frames, options: {args.default_args or '(defaults)'}")
    print(f"{'frames':>7} {'peak RSS MiB':>13} {'masks MiB':>10} {'peak - masks MiB':>17} {'seconds':>8}")
    print(f"{n:>7} {result['peak'] / mib:>13.1f} {masks / mib:>10.1f} {(result['peak'] - masks) / mib:>17.1f} "
          f"{seconds:>8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs="+", default=["pixel", "default-model"], choices=["pixel", "default-model"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 800])
    parser.add_argument("--window", type=int, default=24)
    parser.add_argument("--default-frames", type=int, default=3000)
    parser.add_argument("--default-args", default="", help="extra `lvseg predict` options for the default-model case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if "pixel" in args.case:
            pixel_case(args, tmp)
        if "default-model" in args.case:
            default_model_case(args, tmp)


if __name__ == "__main__":
    main()
