"""ReferFormer inference, lvseg next to the official code (wjn922/ReferFormer 06fc218), CPU, side by side.

Usage::

    python benchmarks/referformer_vs_official.py --official /path/to/ReferFormer                 # R50 + Swin-T
    python benchmarks/referformer_vs_official.py --official DIR --backbones resnet50 --rounds 3
    python benchmarks/referformer_vs_official.py --official DIR --backbones resnet50 --profile  # per-module table
    python benchmarks/referformer_vs_official.py --official DIR --variants lvseg lvseg:compile official
    git archive COMMIT lvseg | tar -x -C /tmp/before &&
    python benchmarks/referformer_vs_official.py --official DIR --variants lvseg@/tmp/before lvseg official

The official checkout needs the CPU shims of ``tests/fixtures/referformer/generate_golden.py`` (its pure-PyTorch
MSDA core instead of the CUDA op, which does not build without CUDA; RoBERTa built from a config; no ImageNet
download; fvcore's init inlined). Both models are the full-size ones (roberta-base text encoder, 6+3 deformable
layers, 5 queries) with random weights: speed does not depend on the values.

Every forward runs in a fresh subprocess, and the variants are interleaved round by round (lvseg, official,
lvseg, official, ...), so a change of machine load hits both. Each child builds its model, runs one untimed
warm-up forward on a 1-frame clip of the same size (oneDNN primitive creation, lazy imports; the compiled variant:
on the full clip, its compile time) and then one timed
forward of the ``--frames`` x ``--height`` x ``--width`` clip, seeded so every child sees the same pixels and the
same expression. Timed: the official ``model([video], [text], [target])`` plus the Ref-YouTube-VOS query choice of
``inference_ytvos.py``; lvseg's ``model.segment(frames, [text])`` (the same protocol). Reported per variant: the
median wall seconds, CPU seconds (user + system of the process during the forward) and peak RSS of the child,
and the ratios official / lvseg. The 1-minute load average is printed before and after each round.

``--profile`` runs each variant once more under ``torch.profiler`` with a ``record_function`` range around every
module down to ``--depth`` levels, and prints the top entries (self CPU excluded: totals, so nested modules show
their own share).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "tests" / "fixtures" / "referformer"
OFFICIAL_BACKBONES = {"resnet50": "resnet50", "swin-t": "swin_t_p4w7", "video-swin-t": "video_swin_t_p4w7"}
ROBERTA_BASE = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                    pad_token_id=1, bos_token_id=0, eos_token_id=2)
EXPRESSION = "the man riding a bike"


def build_official(args: argparse.Namespace):
    official = Path(args.official).resolve()
    sys.path.insert(0, str(official))
    for extra in args.official_pythonpath:
        sys.path.append(extra)
    os.chdir(official)
    os.environ["SHIM_TOKENIZER"] = str(FIXTURES / "tokenizer")
    os.environ["SHIM_ROBERTA"] = json.dumps(ROBERTA_BASE)
    from models import build_model  # official
    from opts import get_args_parser  # official

    cli = ["--with_box_refine", "--binary", "--freeze_text_encoder", "--device", "cpu",
           "--backbone", OFFICIAL_BACKBONES[args.backbone]]
    ns = argparse.ArgumentParser(parents=[get_args_parser()], add_help=False).parse_args(cli)
    ns.masks = True
    model, _, _ = build_model(ns)
    model.eval()

    def run(frames):  # frames [1, T, 3, H, W]; inference_ytvos.py's forward + query choice
        import torch

        video = frames[0]
        out = model([video], [EXPRESSION], [{"size": torch.as_tensor(video.shape[-2:])}])
        scores = out["pred_logits"][0].sigmoid().mean(0)  # [q, k]
        best = scores.max(-1)[0].argmax()
        return out["pred_masks"][0][:, best]

    return model, run


def build_lvseg(args: argparse.Namespace, compile_model: bool, fused: bool):
    import dataclasses

    import torch
    from transformers import RobertaTokenizerFast

    from lvseg.models.referformer.config import ReferFormerConfig
    from lvseg.models.referformer.model import ReferFormer

    tok = RobertaTokenizerFast.from_pretrained(str(FIXTURES / "tokenizer"))
    config = ReferFormerConfig(backbone=args.backbone, max_frames_per_pass=0)
    config.text_encoder = dict(config.text_encoder, vocab_size=ROBERTA_BASE["vocab_size"])
    if fused:
        config = dataclasses.replace(config, fused_attention=True)
    model = ReferFormer(config, tokenizer=tok).eval()
    if compile_model:
        from lvseg.hub import compile_model as compile_fn

        model = compile_fn(model)

    def run(frames):
        with torch.no_grad():
            return model.segment(frames, [EXPRESSION])[0]

    return model, run


def module_ranges(model, depth: int) -> None:
    """A profiler range named after every module down to ``depth`` dots (e.g. ``backbone.body.layer1``)."""
    import torch

    stacks: dict[int, list] = {}
    for name, module in model.named_modules():
        if not name or name.count(".") >= depth:
            continue

        def pre(mod, inputs, name=name):
            ctx = torch.autograd.profiler.record_function(f"## {name}")
            ctx.__enter__()
            stacks.setdefault(id(mod), []).append(ctx)

        def post(mod, inputs, output):
            stacks[id(mod)].pop().__exit__(None, None, None)

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)


def child(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    variant = args.variant
    if variant == "official":
        model, run = build_official(args)
    else:
        options = variant.split("@")[0].split(":")[1:]
        model, run = build_lvseg(args, compile_model="compile" in options, fused="fused" in options)
    g = torch.Generator().manual_seed(1234)
    frames = torch.randn(1, args.frames, 3, args.height, args.width, generator=g)
    out: dict = {"status": "ok"}
    with torch.no_grad():
        t0 = time.perf_counter()
        # warm-up: a 1-frame clip (oneDNN primitives, lazy imports); compiled variants the full clip, since a new
        # shape recompiles (their warm-up is the compile time plus one forward)
        run(frames if ":compile" in variant else frames[:, :1])
        out["warmup_s"] = time.perf_counter() - t0
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            module_ranges(model, args.depth)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                run(frames)
                out["wall_s"] = time.perf_counter() - t0
            table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=args.rows, max_name_column_width=60)
            out["profile"] = table
            return out
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        result = run(frames)
        out["wall_s"] = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    out["peak_rss_mib"] = r1.ru_maxrss / 1024
    out["mask_shape"] = list(result.shape)
    return out


def spawn(args: argparse.Namespace, variant: str, backbone: str, profile: bool) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--variant", variant, "--backbone", backbone,
           "--official", args.official, "--threads", str(args.threads), "--frames", str(args.frames),
           "--height", str(args.height), "--width", str(args.width), "--depth", str(args.depth),
           "--rows", str(args.rows)]
    for extra in args.official_pythonpath:
        cmd += ["--official-pythonpath", extra]
    if profile:
        cmd.append("--profile")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    source = variant.split("@")[1] if "@" in variant else str(HERE.parent)  # lvseg@DIR: the lvseg tree in DIR
    env["PYTHONPATH"] = os.pathsep.join([source, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"status": "failed: " + " | ".join(proc.stderr.strip().splitlines()[-3:])}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", required=True, help="wjn922/ReferFormer checkout (06fc218) with the CPU shims")
    ap.add_argument("--official-pythonpath", action="append", default=[],
                    help="extra folder for the official code's imports (appended to sys.path)")
    ap.add_argument("--backbones", nargs="+", default=["resnet50", "swin-t"], choices=sorted(OFFICIAL_BACKBONES))
    ap.add_argument("--variants", nargs="+", default=["lvseg", "official"],
                    help="official, lvseg, lvseg:compile (what lvseg.load(..., compile=True) does), lvseg:fused "
                    "(config fused_attention=True); lvseg@DIR (also lvseg:compile@DIR) imports lvseg from DIR, "
                    "e.g. an export of an older commit for a before/after run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--profile", action="store_true", help="one profiled forward per variant instead of timing")
    ap.add_argument("--depth", type=int, default=2, help="module depth of the profiler ranges")
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--backbone", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    import torch

    print(f"ReferFormer {args.frames}x{args.height}x{args.width}, CPU fp32, {args.threads} threads, torch "
          f"{torch.__version__}, {os.cpu_count()} CPUs; official = wjn922/ReferFormer with its pure-PyTorch MSDA")
    for backbone in args.backbones:
        if args.profile:
            for variant in args.variants:
                res = spawn(args, variant, backbone, profile=True)
                print(f"\n=== {backbone} {variant}: {res.get('wall_s', float('nan')):.1f} s under the profiler, "
                      f"load {os.getloadavg()[0]:.1f}")
                print(res.get("profile", res["status"]))
            continue
        results: dict[str, list[dict]] = {v: [] for v in args.variants}
        for r in range(args.rounds):
            for variant in args.variants:
                load0 = os.getloadavg()[0]
                res = spawn(args, variant, backbone, profile=False)
                res["load"] = (load0, os.getloadavg()[0])
                results[variant].append(res)
                if res["status"] != "ok":
                    print(f"{backbone:10s} {variant:14s} round {r}: {res['status']}", flush=True)
                    continue
                print(f"{backbone:10s} {variant:14s} round {r}: wall {res['wall_s']:6.1f} s  cpu {res['cpu_s']:6.1f} s"
                      f"  peak RSS {res['peak_rss_mib']:6.0f} MiB  warm-up {res['warmup_s']:5.1f} s  load "
                      f"{res['load'][0]:.1f} -> {res['load'][1]:.1f}", flush=True)
        med = {}
        for variant, rows in results.items():
            ok = [x for x in rows if x["status"] == "ok"]
            if ok:
                med[variant] = {k: statistics.median(x[k] for x in ok) for k in ("wall_s", "cpu_s", "peak_rss_mib")}
        print(f"\n{backbone}: medians of {args.rounds} rounds")
        print(f"{'variant':14s} {'wall s':>8s} {'CPU s':>8s} {'RSS MiB':>8s} {'official/this wall':>19s} "
              f"{'CPU':>6s} {'RSS':>6s}")
        for variant, m in med.items():
            o = med.get("official")
            ratios = (f"{o['wall_s'] / m['wall_s']:19.2f} {o['cpu_s'] / m['cpu_s']:6.2f} "
                      f"{o['peak_rss_mib'] / m['peak_rss_mib']:6.2f}") if o else ""
            print(f"{variant:14s} {m['wall_s']:8.1f} {m['cpu_s']:8.1f} {m['peak_rss_mib']:8.0f} {ratios}", flush=True)


if __name__ == "__main__":
    main()
