"""End-to-end speed and peak memory of ReferFormer inference (random weights, real sizes).

Usage::

    python benchmarks/referformer_speed.py                              # CPU, 2 threads: R50 and Swin-T
    python benchmarks/referformer_speed.py --backbones resnet50 --dtypes float32 --backends cpu reference
    python benchmarks/referformer_speed.py --device cuda --backbones swin-l video-swin-b --frames 36

Every configuration (backbone x MSDA backend x dtype) runs in its own subprocess, so the reported peak RSS
(CPU) or peak allocated GPU memory is that configuration's alone. A clip is ``--frames`` frames of
``--height`` x ``--width`` with one expression, run through ``model.segment`` (the Ref-YouTube-VOS protocol,
one pass). Models are built from the full-size configs (roberta-base text encoder) with random weights: speed
does not depend on the values. A backend that is not available (e.g. the compiled CPU op failed to build) is
reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def run_one(args: argparse.Namespace) -> dict:
    import torch
    from transformers import RobertaTokenizerFast

    from lvseg.models.referformer.config import ReferFormerConfig
    from lvseg.models.referformer.model import ReferFormer
    from lvseg.ops import select_backend

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    os.environ["LVSEG_MSDA_BACKEND"] = args.backend
    if select_backend(device, args.backend) != args.backend:
        return {"status": f"MSDA backend {args.backend!r} unavailable on {device.type}"}
    tok = RobertaTokenizerFast.from_pretrained(args.tokenizer)
    config = ReferFormerConfig(backbone=args.backbone, max_frames_per_pass=0)
    if tok.vocab_size < config.text_encoder["vocab_size"]:
        config.text_encoder["vocab_size"] = max(tok.vocab_size, 512)  # only the embedding table shrinks
    torch.manual_seed(0)
    model = ReferFormer(config, tokenizer=tok).eval().to(device=device, dtype=dtype)
    frames = torch.randn(1, args.frames, 3, args.height, args.width, device=device, dtype=dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.no_grad():
        for _ in range(args.warmup + args.repeat):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.segment(frames, ["the man riding a bike"])
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    times = times[args.warmup:]
    out = {"status": "ok", "seconds_per_clip": min(times), "frames_per_second": args.frames / min(times)}
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["resnet50", "swin-t"])
    ap.add_argument("--backends", nargs="+", default=["cpu", "reference"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--tokenizer", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures",
                                                          "referformer", "tokenizer"),
                    help="RoBERTa tokenizer folder (default: the small test tokenizer; speed is the same)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backbone", help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_one(args)))
        return
    print(f"ReferFormer inference, {args.frames} frames of {args.height}x{args.width}, device {args.device}, "
          f"{args.threads} threads, best of {args.repeat} after {args.warmup} warm-up")
    print(f"{'backbone':14s} {'MSDA':10s} {'dtype':9s} {'s/clip':>8s} {'frames/s':>9s} {'peak RSS MiB':>13s}"
          f" {'peak GPU MiB':>13s}")
    for backbone in args.backbones:
        for dtype in args.dtypes:
            for backend in args.backends:
                cmd = [sys.executable, __file__, "--child", "--backbone", backbone, "--backend", backend,
                       "--dtype", dtype, "--device", args.device, "--threads", str(args.threads),
                       "--frames", str(args.frames), "--height", str(args.height), "--width", str(args.width),
                       "--repeat", str(args.repeat), "--warmup", str(args.warmup), "--tokenizer", args.tokenizer]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
                if proc.returncode or not lines:
                    res = {"status": "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]}
                else:
                    res = json.loads(lines[-1])
                if res["status"] != "ok":
                    print(f"{backbone:14s} {backend:10s} {dtype:9s} {res['status']}")
                    continue
                gpu = f"{res['peak_gpu_mib']:13.0f}" if "peak_gpu_mib" in res else f"{'-':>13s}"
                print(f"{backbone:14s} {backend:10s} {dtype:9s} {res['seconds_per_clip']:8.2f} "
                      f"{res['frames_per_second']:9.2f} {res['peak_rss_mib']:13.0f} {gpu}", flush=True)


if __name__ == "__main__":
    main()
