"""MTTR CPU speed and memory: seconds per window and peak RSS, fused (SDPA) vs eager Video Swin attention.

Each configuration runs in its own process (so peak RSS is that configuration's own), with a full-size MTTR
(Video Swin-T, roberta-base-sized text encoder; random weights: speed does not depend on the values), one
expression, ``--threads`` intra-op threads, one warm-up pass and ``--repeats`` timed passes of ``segment``.
Wall seconds and process CPU seconds are both reported: on a shared machine the CPU seconds are the steadier
comparison.

    python benchmarks/mttr_speed.py                       # fp32 + bf16, 8 and 12 frames, 360x640, 2 threads
    python benchmarks/mttr_speed.py --frames 8 --dtypes float32 --repeats 2

"eager" is the unoptimised implementation of the same math (``MTTRConfig(fused_attention=False)``: explicit
``softmax(q k^T + bias + mask) v`` with the full [nW, N, N] shift mask in the Video Swin windows, and
``nn.MultiheadAttention`` with weights in the multimodal transformer, as the official code), kept for this
comparison.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER = REPO / "tests" / "fixtures" / "referformer" / "tokenizer"


def run_one(args: argparse.Namespace) -> dict:
    import torch
    from transformers import RobertaTokenizerFast

    from lvseg.models.mttr.config import MTTRConfig
    from lvseg.models.mttr.model import MTTR

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    tokenizer = RobertaTokenizerFast.from_pretrained(str(args.tokenizer))
    model = MTTR(MTTRConfig(fused_attention=args.mode == "fused"), tokenizer=tokenizer).eval().to(dtype)
    h, w = args.size
    frames = torch.randn(1, args.frames, 3, h, w, dtype=dtype)
    times, cpu_times = [], []
    with torch.inference_mode():
        for i in range(args.repeats + 1):
            start, cpu_start = time.perf_counter(), time.process_time()
            model.segment(frames, ["the man riding a bike"])
            if i:  # the first pass is a warm-up
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": args.mode, "dtype": args.dtype, "frames": args.frames, "size": f"{h}x{w}",
            "threads": args.threads, "seconds": statistics.median(times), "all_seconds": times,
            "cpu_seconds": statistics.median(cpu_times),
            "peak_rss_gb": peak_kb / 1024**2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 12])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--modes", nargs="+", default=["fused", "eager"], choices=["fused", "eager"])
    parser.add_argument("--size", type=lambda s: tuple(int(v) for v in s.split("x")), default=(360, 640))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER, help="RoBERTa tokenizer folder")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="fused", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.frames = args.frames[0]
        print(json.dumps(run_one(args)))
        return
    rows = []
    for dtype in args.dtypes:
        for frames in args.frames:
            for mode in args.modes:
                cmd = [sys.executable, __file__, "--child", "--mode", mode, "--dtype", dtype, "--frames", str(frames),
                       "--size", "x".join(map(str, args.size)), "--threads", str(args.threads),
                       "--repeats", str(args.repeats), "--tokenizer", str(args.tokenizer)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{dtype:9s} T={frames:<3d} {mode:6s} {row['seconds']:7.2f} s/window "
                      f"({row['cpu_seconds']:.2f} CPU s)  "
                      f"peak RSS {row['peak_rss_gb']:.2f} GB", flush=True)
    print("\n| dtype | frames | eager s (CPU s) | fused s (CPU s) | speed-up wall (CPU) | eager peak GB "
          "| fused peak GB |")
    print("|---|---|---|---|---|---|---|")
    for dtype in args.dtypes:
        for frames in args.frames:
            by_mode = {r["mode"]: r for r in rows if r["dtype"] == dtype and r["frames"] == frames}
            if set(by_mode) == {"fused", "eager"}:
                e, f = by_mode["eager"], by_mode["fused"]
                print(f"| {dtype} | {frames} | {e['seconds']:.2f} ({e['cpu_seconds']:.2f}) | "
                      f"{f['seconds']:.2f} ({f['cpu_seconds']:.2f}) | {e['seconds'] / f['seconds']:.2f}x "
                      f"({e['cpu_seconds'] / f['cpu_seconds']:.2f}x) | {e['peak_rss_gb']:.2f} | "
                      f"{f['peak_rss_gb']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
