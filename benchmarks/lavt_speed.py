"""LAVT CPU speed and memory: lvseg against the official forward, side by side in one run.

Cases: ``image`` (LAVT, Swin-B window 12 + BERT-base, one 480x480 image, one 20-token expression) and ``video``
(LAVT-RS ``lavt_video``, Video Swin-T window (8,7,7) with the released separable 3-D PWAM flags + BERT-base, one
8x480x480 clip, one 22-token expression). The official code is GPL-3.0 and not part of lvseg: pass its location
(``--official-image`` a yz93/LAVT-RIS tree, ``--official-video`` a Yxxxb/LAVT-RS tree with LAVT-RIS's ``bert/``
and the ``sr_ratio`` patch, see tests/fixtures/lavt_video/generate_golden.py); a case whose tree is missing is
skipped with a message. The vendored BERT imports ``requests``: put it on PYTHONPATH.

Procedure: a preparation subprocess per case builds the official model, fills it with the fixtures' seeded
random weights, saves an official-format checkpoint and converts it with ``lvseg.models.lavt.convert.convert``
(the code behind ``lvseg convert lavt``; default config: eager window attention for the image model, SDPA for
the video model). Then every (case, dtype, implementation) runs in its own fresh subprocess, lvseg and official
interleaved: build the model, load the weights, run ``--warmup`` untimed and ``--repeats`` timed forwards
(text encoder + backbone + decoder, logits at input size, ``torch.inference_mode``) with ``--threads`` threads.
bf16 is ``torch.autocast("cpu", torch.bfloat16)`` around the same fp32 model for both implementations.

Memory: ``peak RSS`` is the child's ``getrusage(RUSAGE_SELF).ru_maxrss`` over its whole life (imports, weights,
forwards); ``fwd peak`` is the high-water RSS during the forwards alone (reset through /proc/self/clear_refs
after the weights are loaded, read from VmHWM), ``base`` the RSS just before them. Wall seconds and process CPU
seconds are both reported; the machine may be shared, so the load average is printed with every row.

    PYTHONPATH=$PWD:/work/scratch/pydeps python benchmarks/lavt_speed.py \\
        --official-image /work/scratch/lavt-ris --official-video /work/scratch/lavt-rs

Measured on 2026-12-05 (Intel Xeon with AMX-bf16, 2 threads, shared machine; see docs/models/lavt.md):

    | case | dtype | impl | wall s | CPU s | peak RSS GB | fwd peak GB | base GB | load | wall ratio | RSS ratio |
    |---|---|---|---|---|---|---|---|---|---|---|
    | image | float32 | official | 17.9 | 10.1 | 2.42 | 1.96 | 1.61 | 7.7-7.1 | 1.00 | 1.00 |
    | image | float32 | lvseg | 21.4 | 9.5 | 2.47 | 1.95 | 1.63 | 7.1-7.3 | 1.19 | 1.02 |
    | image | bfloat16 | lvseg | 6.5 | 5.2 | 2.47 | 1.87 | 1.63 | 7.3-6.6 | 0.27 | 1.02 |
    | image | bfloat16 | official | 24.1 | 12.0 | 2.42 | 1.80 | 1.61 | 6.6-6.8 | 1.00 | 1.00 |
    | video | float32 | official | 77.4 | 38.9 | 3.41 | 3.41 | 1.66 | 6.3-7.0 | 1.00 | 1.00 |
    | video | float32 | lvseg | 55.1 | 30.2 | 2.70 | 2.70 | 1.70 | 7.0-6.6 | 0.71 | 0.79 |
    | video | bfloat16 | lvseg | 28.4 | 14.2 | 2.57 | 2.52 | 1.70 | 6.6-6.7 | 0.52 | 0.72 |
    | video | bfloat16 | official | 54.3 | 26.2 | 3.56 | 3.56 | 1.66 | 6.7-7.0 | 1.00 | 1.00 |

    (one timed forward per process, one warm-up for the image case, none for the video case; load = 1-min load
    average before-after; lvseg default attention: eager for the image model, SDPA for the video model)
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
IMAGE_TOKENS, VIDEO_TOKENS = 20, 22


def _load_module(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _enter_official(case: str, root: str) -> None:
    """Put the official tree on sys.path with the fixtures' stubs for mmseg / lib.mmcv_custom."""
    if case == "image":
        _load_module(FIXTURES / "lavt" / "generate_golden.py", "lavt_image_golden").install_stubs(root)
    else:
        sys.path.insert(0, root)
        os.chdir(root)
        _load_module(FIXTURES / "lavt_video" / "generate_golden.py", "lavt_video_golden").stub_modules()


def _inputs(case: str, size: int, frames: int) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(7)
    tokens = IMAGE_TOKENS if case == "image" else VIDEO_TOKENS
    words = torch.randint(1000, 30000, (tokens - 2,), generator=g)
    ids = torch.cat([torch.tensor([101]), words, torch.tensor([102])])
    shape = (1, 3, size, size) if case == "image" else (1, frames, 3, size, size)
    return {
        "pixels": torch.randn(shape, generator=g),
        "ids": ids[None],
        "mask": torch.ones(1, tokens, dtype=torch.long),
    }


def prepare(args: argparse.Namespace) -> None:
    """Child: official model with seeded random weights -> official checkpoint -> lvseg conversion."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    out = Path(args.workdir)
    _enter_official(args.case, args.official)
    from args import get_parser  # official
    from bert.modeling_bert import BertConfig, BertModel  # official (vendored transformers 3.0.2)

    bert_base = dict(
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        type_vocab_size=2,
    )
    with tempfile.TemporaryDirectory() as bert_dir:
        BertModel(BertConfig(**bert_base)).save_pretrained(bert_dir)
        if args.case == "image":
            from lib import segmentation  # official

            fill = _load_module(FIXTURES / "lavt" / "lavt_weights.py", "lavt_weights").fill_official_state
            cli = [
                "--model",
                "lavt",
                "--swin_type",
                "base",
                "--window12",
                "--ck_bert",
                bert_dir,
                "--bert_tokenizer",
                bert_dir,
                "--ddp_trained_weights",
            ]
            official_args = get_parser().parse_args(cli)
            model = segmentation.lavt(pretrained="", args=official_args)
            bert = BertModel(BertConfig(**bert_base))
            bert.pooler = None
            shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if v.is_floating_point()}
            shapes.update({"text_encoder." + k: tuple(v.shape) for k, v in bert.state_dict().items()})
            filled = fill(shapes)
            state = {k: filled.get(k, v) for k, v in model.state_dict().items()}
            bert_state = {k: filled["text_encoder." + k] for k in bert.state_dict()}
            ckpt = {"model": state, "bert_model": bert_state, "args": official_args}
        else:
            from lib import segmentation  # official

            fill = _load_module(FIXTURES / "referformer" / "referformer_weights.py", "rf_weights").fill_official_state
            golden = _load_module(FIXTURES / "lavt_video" / "generate_golden.py", "lavt_video_golden")
            cli = [*golden.RELEASED_FLAGS, "--ck_bert", bert_dir, "--bert_tokenizer", bert_dir]
            official_args = get_parser().parse_args(cli)
            model = segmentation.lavt_video(pretrained="", args=official_args)
            full = model.state_dict()
            filled = fill({k: tuple(v.shape) for k, v in full.items() if v.is_floating_point()})
            ckpt = {"model": {**full, **filled}, "args": official_args}
    torch.save(ckpt, out / f"{args.case}.official.pth")
    del ckpt, model
    gc.collect()
    from lvseg.models.lavt.convert import convert

    converted, config = convert(out / f"{args.case}.official.pth")
    save_file({k: v.contiguous() for k, v in converted.items()}, str(out / f"{args.case}.lvseg.safetensors"))
    (out / f"{args.case}.lvseg.json").write_text(json.dumps(config.to_dict()))


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def build(args: argparse.Namespace) -> tuple[Any, Any]:
    """Child: (model, forward(inputs) -> logits) for one implementation, weights loaded from the work folder."""
    import torch

    out = Path(args.workdir)
    if args.impl in ("lvseg", "lvseg-base"):  # lvseg-base: the same code path from --baseline-lvseg's tree
        from safetensors.torch import load_file

        if args.case == "image":
            from lvseg.models.lavt.config import LAVTConfig as Config
            from lvseg.models.lavt.model import LAVT as Model
        else:
            from lvseg.models.lavt.video import LAVTVideo as Model
            from lvseg.models.lavt.video_config import LAVTVideoConfig as Config
        from lvseg import hub

        config = Config.from_dict(json.loads((out / f"{args.case}.lvseg.json").read_text()))
        state = load_file(str(out / f"{args.case}.lvseg.safetensors"))
        on_meta = getattr(hub, "parameters_on_meta", None)
        if on_meta is not None:  # what lvseg.load does since 2026-12-06: parameters built on the meta device
            with on_meta():
                model = Model(config)
            hub.load_state_dict_strict(model, state, str(out))
        else:  # an older lvseg tree (--baseline-lvseg): random initialisation, then the weights
            model = Model(config)
            model.load_state_dict(state, strict=True)
        model.eval()
        del state

        def forward(x: dict[str, Any]) -> Any:
            return model.forward_features(x["pixels"], model.encode_text(x["ids"], x["mask"]), x["mask"])

        return model, forward
    _enter_official(args.case, args.official)
    ckpt = torch.load(out / f"{args.case}.official.pth", map_location="cpu", weights_only=False)
    from lib import segmentation  # official

    if args.case == "image":
        from bert.modeling_bert import BertConfig, BertModel  # official

        model = segmentation.lavt(pretrained="", args=ckpt["args"])
        bert = BertModel(BertConfig(vocab_size=30522))  # bert-base sizes
        bert.pooler = None
        bert.load_state_dict(ckpt["bert_model"], strict=True)
        model.load_state_dict(ckpt["model"], strict=True)
        model.eval(), bert.eval()
        del ckpt

        def forward(x: dict[str, Any]) -> Any:
            words = bert(x["ids"], attention_mask=x["mask"])[0].permute(0, 2, 1)
            return model(x["pixels"], words, x["mask"].unsqueeze(-1))

        return (model, bert), forward
    with tempfile.TemporaryDirectory() as bert_dir:  # lavt_video builds BERT with from_pretrained(--ck_bert)
        from bert.modeling_bert import BertConfig, BertModel  # official

        BertModel(BertConfig(vocab_size=30522)).save_pretrained(bert_dir)
        ckpt["args"].ck_bert = bert_dir
        model = segmentation.lavt_video(pretrained="", args=ckpt["args"])
    model.load_state_dict(ckpt["model"], strict=True)
    model.eval()
    del ckpt

    def forward_video(x: dict[str, Any]) -> Any:
        return model(x["pixels"], x["ids"], l_mask=x["mask"])

    return model, forward_video


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    start_build = time.perf_counter()
    model, forward = build(args)
    build_seconds = time.perf_counter() - start_build
    inputs = _inputs(args.case, args.size, args.frames)
    gc.collect()
    load_peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    base_kb = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark (Linux >= 4.0)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    times, cpu_times = [], []
    with torch.inference_mode(), autocast:
        for i in range(args.warmup + args.repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            logits = forward(inputs)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
    forward_peak_kb = _rss_kb("VmHWM")
    profile = _profile(model, forward, inputs, args) if args.profile else {}
    return {
        **profile,
        "case": args.case,
        "impl": args.impl,
        "dtype": args.dtype,
        "threads": args.threads,
        "seconds": statistics.median(times),
        "all_seconds": times,
        "cpu_seconds": statistics.median(cpu_times),
        "build_seconds": build_seconds,
        "peak_rss_gb": max(load_peak_kb, forward_peak_kb) / 1024**2,
        "forward_peak_gb": forward_peak_kb / 1024**2,
        "base_rss_gb": base_kb / 1024**2,
        "logits_shape": list(logits.shape),
        "logits_dtype": str(logits.dtype).replace("torch.", ""),
        "logits_mean": float(logits.float().mean()),
        "logits_sum_abs": float(logits.float().abs().sum()),
        "lvseg_from": _lvseg_origin() if args.impl != "official" else None,
    }


def _lvseg_origin() -> str:
    import lvseg

    return str(Path(lvseg.__file__).resolve().parents[1])


def _profile(model: Any, forward: Any, inputs: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One more forward (after the measured ones) under torch.profiler, plus wall time per module (depth <= 2)."""
    import torch

    seconds: dict[str, float] = {}
    starts: dict[str, float] = {}
    handles = []
    roots = model if isinstance(model, tuple) else (model,)
    for r, root in enumerate(roots):
        for name, module in root.named_modules():
            if name and name.count(".") <= 1:
                key = f"{r}:{name}" if len(roots) > 1 else name

                def pre(m: Any, a: Any, key: str = key) -> None:
                    starts[key] = time.perf_counter()

                def post(m: Any, a: Any, o: Any, key: str = key) -> None:
                    seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - starts[key]

                handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    with torch.inference_mode(), autocast, torch.profiler.profile() as prof:
        forward(inputs)
    for handle in handles:
        handle.remove()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile)
    top = dict(sorted(seconds.items(), key=lambda kv: -kv[1])[: args.profile])
    return {"profile_ops": table, "profile_modules": top}


def _child(args: argparse.Namespace, mode: str, **extra: Any) -> dict[str, Any] | None:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--workdir",
        args.workdir,
        "--threads",
        str(args.threads),
        "--size",
        str(args.size),
        "--frames",
        str(args.frames),
        "--repeats",
        str(args.repeats),
        "--profile",
        str(args.profile),
    ]
    for key, value in extra.items():
        cmd += [f"--{key}", str(value)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if extra.get("impl") == "lvseg-base":
        env["PYTHONPATH"] = os.pathsep.join([str(args.baseline_lvseg), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"  FAILED ({mode} {extra}):\n{proc.stderr[-3000:]}", flush=True)
        return None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-image", type=Path, help="a yz93/LAVT-RIS tree (image case)")
    parser.add_argument("--official-video", type=Path, help="a Yxxxb/LAVT-RS tree (video case)")
    parser.add_argument("--cases", nargs="+", default=["image", "video"], choices=["image", "video"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--size", type=int, default=480, help="square input side")
    parser.add_argument("--frames", type=int, default=8, help="video clip length")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="timed forwards per process")
    parser.add_argument("--image-warmup", type=int, default=1, help="untimed forwards first (image case)")
    parser.add_argument("--video-warmup", type=int, default=0, help="untimed forwards first (video case)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="fresh processes per implementation, in alternating order"
    )
    parser.add_argument(
        "--baseline-lvseg",
        type=Path,
        help="another lvseg tree (e.g. `git archive OLD lvseg | tar -x -C DIR`): run it too, as lvseg-base",
    )
    parser.add_argument("--workdir", help="keep checkpoints here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--profile", type=int, default=0, help="N: also profile one forward (top N ops, modules)")
    parser.add_argument("--child", choices=["prepare", "run"], help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--official", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "prepare":
        prepare(args)
        return
    if args.child == "run":
        print(json.dumps(run_one(args)))
        return

    with tempfile.TemporaryDirectory(prefix="lavt_speed_") as tmp:
        args.workdir = args.workdir or tmp
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        trees = {"image": args.official_image, "video": args.official_video}
        rows: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        for case in args.cases:
            tree = trees[case]
            marker = "lib/segmentation.py"
            if tree is None or not (tree / marker).is_file():
                flag = f"--official-{case}"
                print(
                    f"skipping the {case} case: {flag} {'not given' if tree is None else f'{tree} has no {marker}'} "
                    f"(the official code is not part of lvseg; see this script's docstring)",
                    flush=True,
                )
                continue
            print(
                f"[{time.perf_counter() - t0:.0f} s] {case}: building the official model, saving and converting "
                "its checkpoint",
                flush=True,
            )
            if _child(args, "prepare", case=case, official=tree.resolve()) is None:
                continue
            warmup = args.image_warmup if case == "image" else args.video_warmup
            impls = ["official", "lvseg"] + (["lvseg-base"] if args.baseline_lvseg else [])
            for k, dtype in enumerate(d for d in args.dtypes for _ in range(args.rounds)):
                order = impls if k % 2 == 0 else impls[::-1]  # interleaved
                for impl in order:
                    load = os.getloadavg()[0]
                    row = _child(args, "run", case=case, impl=impl, dtype=dtype, official=tree.resolve(), warmup=warmup)
                    if row is None:
                        continue
                    row["load_before"], row["load_after"] = load, os.getloadavg()[0]
                    rows.append(row)
                    ops = row.pop("profile_ops", "")
                    print(f"[{time.perf_counter() - t0:.0f} s] {json.dumps(row)}", flush=True)
                    if ops:
                        print(ops, flush=True)
        total = time.perf_counter() - t0
        print(f"\n{args.threads} threads, {args.repeats} timed forward(s) per process, total {total:.0f} s")
        print(format_table(rows))
        if args.rounds > 1:
            print(f"\nmedians over {args.rounds} processes per implementation:")
            print(format_table(_median_rows(rows)))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1) + "\n")


def _median_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (case, dtype, impl): the median of each number over that implementation's processes."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["case"], r["dtype"], r["impl"]), []).append(r)
    numbers = ("seconds", "cpu_seconds", "peak_rss_gb", "forward_peak_gb", "base_rss_gb")
    out = []
    for (case, dtype, impl), group in groups.items():
        row = {"case": case, "dtype": dtype, "impl": f"{impl} (n={len(group)})"}
        row.update({k: statistics.median(g[k] for g in group) for k in numbers})
        row["load_before"] = min(g["load_before"] for g in group)
        row["load_after"] = max(g["load_after"] for g in group)
        row["_impl"] = impl
        out.append(row)
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| case | dtype | impl | wall s | CPU s | peak RSS GB | fwd peak GB | base GB | load | "
        "wall / official | peak RSS / official |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    official = {(r["case"], r["dtype"]): r for r in rows if r.get("_impl", r["impl"]) == "official"}
    for r in rows:
        ref = official.get((r["case"], r["dtype"]))
        ratio_t = f"{r['seconds'] / ref['seconds']:.2f}" if ref else "-"
        ratio_m = f"{r['peak_rss_gb'] / ref['peak_rss_gb']:.2f}" if ref else "-"
        lines.append(
            f"| {r['case']} | {r['dtype']} | {r['impl']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
            f"{r['peak_rss_gb']:.2f} | {r['forward_peak_gb']:.2f} | {r['base_rss_gb']:.2f} | "
            f"{r['load_before']:.1f}-{r['load_after']:.1f} | {ratio_t} | {ratio_m} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
