"""Training throughput (clips/s) and peak memory of lvseg's ReferFormer training step.

    python benchmarks/train_throughput.py                 # tiny Shapes config on CPU (4x96x96 clips, batch 2),
                                                          # without and with the stride-1 mask head
    python benchmarks/train_throughput.py --gpu           # + ReferFormer-R50 at 5x360x640, fp32 vs bf16 autocast

Each configuration runs ``--warmup`` steps, then times ``--steps`` full optimisation steps (forward, matching,
losses, backward, clipping, AdamW) on random frames with a synthetic box target. CPU peak memory is the process's
maximum resident set size; GPU peak memory is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

os.environ.setdefault("LVSEG_MSDA_BACKEND", "reference")

import torch  # noqa: E402


def _batch(b: int, t: int, h: int, w: int) -> dict:
    masks = torch.zeros(b, t, h, w, dtype=torch.bool)
    masks[:, :, h // 4: h // 2, w // 4: w // 2] = True
    return {"frames": torch.randint(0, 255, (b, t, h, w, 3), dtype=torch.uint8), "masks": masks,
            "size": torch.tensor([[h, w]] * b), "text": ["the red circle moving left"] * b}


def bench(model, b: int, t: int, h: int, w: int, device: torch.device, precision: str, steps: int,
          warmup: int) -> dict:
    from lvseg.train.engine import build_targets, prepare_frames
    from lvseg.train.losses import ReferFormerCriterion

    model.to(device).train()
    crit = ReferFormerCriterion(mask_stride=model.config.mask_stride)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batch = _batch(b, t, h, w)
    frames = prepare_frames(batch["frames"], model, device)
    targets = build_targets(batch, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(frames, batch["text"])
        loss = crit(out, targets)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"clips_per_s": b / seconds, "s_per_step": seconds, "peak_MiB": peak / 2**20}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--gpu", action="store_true", help="also run ReferFormer-R50 on CUDA (fp32 and bf16)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from lvseg.train.presets import build_shapes_tiny

    rows = []
    torch.manual_seed(0)
    tiny = build_shapes_tiny()
    r = bench(tiny, 2, 4, 96, 96, torch.device("cpu"), "fp32", args.steps, args.warmup)
    rows.append(("referformer-tiny (Shapes)", "cpu", "fp32", "2x4x96x96", r))
    # the bundled model's architecture: + the stride-1 mask head (stage 3 of its recipe)
    from lvseg.train.api import with_config_changes

    r = bench(with_config_changes(tiny, {"mask_refine": 16}), 2, 4, 96, 96, torch.device("cpu"), "fp32", args.steps,
              args.warmup)
    rows.append(("referformer-tiny + mask_refine=16", "cpu", "fp32", "2x4x96x96", r))
    if args.gpu:
        if not torch.cuda.is_available():
            print("--gpu: CUDA is not available", file=sys.stderr)
            return 1
        from lvseg.models.referformer.config import ReferFormerConfig
        from lvseg.models.referformer.model import ReferFormer
        from lvseg.train.presets import shapes_tokenizer

        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            cfg = ReferFormerConfig()  # ReferFormer-R50, official sizes, roberta-base text encoder
            model = ReferFormer(cfg, tokenizer=shapes_tokenizer())  # tokenizer only feeds ids; size irrelevant
            for prm in model.text_encoder.parameters():  # official recipe: frozen text encoder
                prm.requires_grad_(False)
            r = bench(model, 1, 5, 360, 640, torch.device("cuda"), precision, args.steps, args.warmup)
            rows.append(("referformer-r50", "cuda", precision, "1x5x360x640", r))
            del model
            torch.cuda.empty_cache()
    print(f"{'model':34s} {'device':6s} {'prec':5s} {'clip':12s} {'clips/s':>8s} {'s/step':>7s} {'peak MiB':>9s}")
    for name, dev, prec, clip, r in rows:
        print(f"{name:34s} {dev:6s} {prec:5s} {clip:12s} {r['clips_per_s']:8.2f} {r['s_per_step']:7.3f} "
              f"{r['peak_MiB']:9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
