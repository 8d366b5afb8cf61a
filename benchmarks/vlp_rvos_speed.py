"""VLP-RVOS speed and memory: frames/s and peak RSS for CLIP ViT-B/16 at the released input size (352 x 352) and
clip length (6 frames), fp32 and bf16, and the share of time in the frozen backbone vs the added modules.

No weights exist (the authors released none), so the model is ``lvseg.models.vlp_rvos.build(...)`` with random
weights: speed does not depend on the values. Every dtype runs in its own fresh subprocess: build the model, run
``--warmup`` untimed and ``--repeats`` timed ``segment`` calls on one clip and one expression (``torch.inference_mode``;
bf16 is ``torch.autocast`` around the fp32 model on CPU, the bf16 model on CUDA), with ``--threads`` threads.

Time split: the backbone's methods are wrapped with timers. "frozen backbone" is the frozen layers on each frame's
own tokens (patch embedding, norms, self-attention, MLPs, text encoder, final projections); "temporal capture" is
the frozen attention reused across the clip for the temporal prompts (parameter-reusing temporal capture, new
computation on frozen weights); "added modules" is the rest (prompt encoder, reference-guided cross-attention, VL
fusion, cube-frame attention, decoder). On CUDA every timed call synchronises, which slows the split run: the
frames/s column comes from a separate, unsplit run.

Memory: ``peak RSS`` is the child's ``getrusage(RUSAGE_SELF).ru_maxrss`` over its whole life; on CUDA also
``torch.cuda.max_memory_allocated``.

    PYTHONPATH=$PWD python benchmarks/vlp_rvos_speed.py --threads 2
    PYTHONPATH=$PWD python benchmarks/vlp_rvos_speed.py --device cuda --dtypes float32 bfloat16 float16

Measured results and the machine: docs/models/vlp_rvos.md ("Speed and memory").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from lvseg.models.vlp_rvos.entries import build
    from lvseg.train.presets import train_bpe_tokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # a BPE tokenizer on a few words: the CLIP tokenizer's files are not on this machine; the expression's token
    # count (not the vocabulary) is what costs time
    tokenizer = train_bpe_tokenizer(["the person on the left riding a brown horse"] * 4, vocab_size=300)
    model = build(args.model, tokenizer=tokenizer).eval()
    dtype = getattr(torch, args.dtype)
    device = args.device
    if device.startswith("cuda"):
        model = model.to(device=device, dtype=dtype)
        autocast: Any = contextlib.nullcontext()
    else:
        autocast = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    size, t = model.config.image_size, model.config.clip_frames
    frames = torch.randn(1, t, 3, size, size, device=device)
    text = ["the person on the left riding a brown horse"]

    def run() -> None:
        with torch.inference_mode(), autocast:
            model.segment(frames, text)
        _sync(device)

    for _ in range(args.warmup):
        run()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)

    # time split: wrap the backbone's methods (a second set of runs, so the timers do not slow the one above)
    bb = model.backbone
    spent = {"frozen backbone": 0.0, "temporal capture": 0.0}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            _sync(device)
            start = time.perf_counter()
            out = fn(*a, **k)
            _sync(device)
            key = "temporal capture" if name == "attention" and len(a) > 2 and a[2] is not None else "frozen backbone"
            spent[key] += time.perf_counter() - start
            return out

        return wrapper

    originals = {}
    for name in ("embed_frames", "norm1", "attention", "ffn", "project_patches", "encode_text"):
        originals[name] = getattr(bb, name)
        setattr(bb, name, timed(name, originals[name]))
    split_total = 0.0
    for _ in range(args.repeats):
        _sync(device)
        start = time.perf_counter()
        run()
        split_total += time.perf_counter() - start
    for name, fn in originals.items():
        setattr(bb, name, fn)
    # norm1 runs for the temporal capture too (on its few tokens): counted as frozen backbone, a slight overcount
    added = split_total - spent["frozen backbone"] - spent["temporal capture"]
    row = {
        "model": args.model,
        "device": device,
        "dtype": args.dtype,
        "threads": args.threads,
        "frames": t,
        "size": size,
        "seconds per clip": min(times),
        "frames/s": t / min(times),
        "peak RSS GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "frozen backbone %": 100 * spent["frozen backbone"] / split_total,
        "temporal capture %": 100 * spent["temporal capture"] / split_total,
        "added modules %": 100 * added / split_total,
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    if device.startswith("cuda"):
        row["max CUDA memory GB"] = torch.cuda.max_memory_allocated() / 2**30
        row["gpu"] = torch.cuda.get_device_name()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vlp-rvos-clip-b16.ytvos", help="a VLP-RVOS registry name")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.dtype = args.child
        print(json.dumps(run_one(args)))
        return
    rows = []
    for dtype in args.dtypes:
        cmd = [sys.executable, __file__, "--child", dtype, "--model", args.model, "--device", args.device]
        cmd += ["--threads", str(args.threads), "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            print(f"{dtype}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    keys = ["device", "dtype", "frames/s", "seconds per clip", "peak RSS GB", "frozen backbone %",
            "temporal capture %", "added modules %", "load"]
    if any("max CUDA memory GB" in r for r in rows):
        keys.insert(5, "max CUDA memory GB")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    if rows:
        print(f"\n{rows[0]['model']}: {rows[0]['frames']} frames of {rows[0]['size']}x{rows[0]['size']} per clip, "
              f"{rows[0]['threads']} threads, random weights")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
