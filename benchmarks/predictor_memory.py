"""Peak memory of lvseg.Predictor versus video length: windows keep it flat.

Writes synthetic H.264 videos (360x640) of increasing length, runs the Predictor with a small pixel-wise model in a
fresh process per length (so ru_maxrss is per run), and prints peak RSS, the size of the output masks, and the
peak minus the masks. With windowed, lazy decoding the last column stays flat as the video grows.

    python benchmarks/predictor_memory.py [--lengths 50 200 800] [--window 24]
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


def write_video(path: Path, frames: int) -> None:
    import numpy as np

    from lvseg.video import write_video as write

    def gen():
        for t in range(frames):
            frame = np.zeros((360, 640, 3), dtype=np.uint8)
            frame[100:200, (t * 4) % 540:(t * 4) % 540 + 100] = 255
            yield frame

    write(gen(), path, fps=25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 800])
    parser.add_argument("--window", type=int, default=24)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
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


if __name__ == "__main__":
    main()
