"""Speed of the multi-scale deformable attention backends, side by side in one process.

Usage::

    python benchmarks/ops_msda.py                      # CPU, 2 threads, fp32, all shapes
    python benchmarks/ops_msda.py --threads 16 --shapes encoder
    python benchmarks/ops_msda.py --device cuda --dtype bfloat16

For each shape it times the forward and the forward+backward of every available backend (``reference``,
``cpu`` and/or ``cuda``), interleaving the backends repeat by repeat so that load on a shared machine hits
them alike, and prints the median time, the speedup over ``reference`` and the achieved bandwidth of the
gathered value data. "Gathered bytes" counts the bilinear corner accesses, N*Lq*M*L*P*4*D elements: once
for the forward, three times for the backward (read value, read and write grad_value).

Shapes (D = 32, M = 8, P = 4, 4 levels at strides 8/16/32/64, as in ReferFormer):
- encoder: 5 frames of 384x640 -> levels 48x80, 24x40, 12x20, 6x10; S = Lq = 5100 per frame, N = 5.
- decoder: the same value maps, Lq = 5 queries per frame, N = 5.
- image:   one 768x1280 image -> 96x160 ... 12x20; S = Lq = 20400, N = 1.

Measured (fp32, ``python benchmarks/ops_msda.py --repeat 5``; AMD EPYC VM (AVX2/AVX-512), 2 vCPUs, 24 GB, torch 2.15.0,
2 threads, GCC 12.2, AVX2 kernels; the machine was shared with other jobs at a load average of about 11, so
absolute times are inflated, while each speedup comes from one interleaved run):

    shape      pass      reference      cpu       speedup   cpu gathered GB/s
    encoder    fwd       3109 ms     200.7 ms      15.5x          8.3
    encoder    fwd+bwd   7326 ms     693.5 ms      10.6x          9.6
    decoder    fwd        131 ms       0.7 ms     200.9x          2.5
    decoder    fwd+bwd    280 ms      16.6 ms      16.9x          0.4
    image      fwd       3164 ms     192.3 ms      16.5x          7.0
    image      fwd+bwd   9205 ms     616.1 ms      14.9x          8.7

No GPU was available when this was written; ``--device cuda`` has not been measured yet.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from lvseg.ops import build, ms_deform_attn


@dataclass
class Shape:
    name: str
    n: int
    levels: list[tuple[int, int]]
    lq: Optional[int]  # None: one query per value position (encoder self-attention)
    m: int = 8
    d: int = 32
    p: int = 4


SHAPES = {
    "encoder": Shape("encoder (N=5, 384x640, Lq=S=5100)", 5, [(48, 80), (24, 40), (12, 20), (6, 10)], None),
    "decoder": Shape("decoder (N=5, 384x640, Lq=5)", 5, [(48, 80), (24, 40), (12, 20), (6, 10)], 5),
    "image": Shape("image (N=1, 768x1280, Lq=S=20400)", 1, [(96, 160), (48, 80), (24, 40), (12, 20)], None),
}


def make_inputs(shape: Shape, device: str, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(shape.levels, dtype=torch.int64)
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    s = int(areas.sum())
    lq = s if shape.lq is None else shape.lq
    n_levels = len(shape.levels)
    value = torch.randn(shape.n, s, shape.m, shape.d, generator=g)
    if shape.lq is None:
        # encoder: every value position is a query whose reference point is its own pixel centre (the same
        # normalised point on every level), as in Deformable-DETR's encoder
        centres = [torch.stack(torch.meshgrid((torch.arange(w) + 0.5) / w, (torch.arange(h) + 0.5) / h,
                                              indexing="xy"), -1).reshape(-1, 2) for h, w in shape.levels]
        ref = torch.cat(centres)[None, :, None, None, None, :].expand(shape.n, lq, 1, 1, 1, 2)
    else:
        # decoder: object queries with reference points anywhere
        ref = torch.rand(shape.n, lq, 1, 1, 1, 2, generator=g)
    # learned offsets of a few pixels of each level
    size = shapes.flip(-1).to(torch.float32)[None, None, None, :, None, :]  # (W, H)
    offsets = torch.randn(shape.n, lq, shape.m, n_levels, shape.p, 2, generator=g) * 2.0 / size
    loc = ref + offsets
    attn = torch.randn(shape.n, lq, shape.m, n_levels * shape.p, generator=g).softmax(-1)
    attn = attn.view(shape.n, lq, shape.m, n_levels, shape.p)
    cast = [value.to(dtype), shapes, starts, loc.to(dtype), attn.to(dtype)]
    return [t.to(device) for t in cast], lq


def gathered_bytes(shape: Shape, lq: int, dtype: torch.dtype) -> int:
    elem = torch.empty((), dtype=dtype).element_size()
    return shape.n * lq * shape.m * len(shape.levels) * shape.p * 4 * shape.d * elem


def timer(device: str) -> Callable[[Callable[[], None]], float]:
    def run(fn: Callable[[], None]) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return run


def bench_shape(shape: Shape, backends: list[str], device: str, dtype: torch.dtype, repeat: int) -> list[dict]:
    inputs, lq = make_inputs(shape, device, dtype)
    value, shapes, starts, loc, attn = inputs
    grad_value = value.clone().requires_grad_()
    grad_loc = loc.clone().requires_grad_()
    grad_attn = attn.clone().requires_grad_()
    measure = timer(device)

    def forward(backend: str) -> Callable[[], None]:
        def fn() -> None:
            with torch.no_grad():
                ms_deform_attn(value, shapes, starts, loc, attn, backend=backend)

        return fn

    def forward_backward(backend: str) -> Callable[[], None]:
        def fn() -> None:
            out = ms_deform_attn(grad_value, shapes, starts, grad_loc, grad_attn, backend=backend)
            out.backward(torch.ones_like(out))
            grad_value.grad = grad_loc.grad = grad_attn.grad = None

        return fn

    times: dict[tuple[str, str], list[float]] = {(b, k): [] for b in backends for k in ("fwd", "fwd+bwd")}
    for b in backends:  # warm up (first call builds/loads the extension, allocator warm-up)
        forward(b)()
        forward_backward(b)()
    for _ in range(repeat):
        for b in backends:  # interleaved: the same background load hits every backend
            times[(b, "fwd")].append(measure(forward(b)))
            times[(b, "fwd+bwd")].append(measure(forward_backward(b)))
    nbytes = gathered_bytes(shape, lq, dtype)
    rows = []
    for kind, factor in (("fwd", 1), ("fwd+bwd", 4)):
        ref = statistics.median(times[("reference", kind)]) if "reference" in backends else None
        for b in backends:
            t = statistics.median(times[(b, kind)])
            rows.append({
                "shape": shape.name, "pass": kind, "backend": b, "ms": t * 1e3,
                "speedup": (ref / t) if ref else float("nan"), "gbps": nbytes * factor / t / 1e9,
            })
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--dtype", choices=("float32", "float64", "float16", "bfloat16"), default="float32")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["encoder", "decoder", "image"])
    parser.add_argument("--backends", nargs="+", choices=("reference", "cpu", "cuda"), default=None,
                        help="default: reference and the compiled backend of --device")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    backends = args.backends or ["reference", args.device]
    for b in [b for b in backends if b != "reference"]:
        if build.load_extension(b) is None:
            print(f"(backend {b!r} unavailable, skipped)")
            backends.remove(b)
    ext = build.load_extension("cpu") if "cpu" in backends else None
    where = (torch.cuda.get_device_name() if args.device == "cuda"
             else f"{args.threads} CPU threads" + (f", {ext.isa()} kernels" if ext is not None else ""))
    print(f"torch {torch.__version__}, {where}, {args.dtype}, median of {args.repeat}")
    print()
    print("| shape | pass | backend | time (ms) | speedup vs reference | gathered value GB/s |")
    print("|---|---|---|---:|---:|---:|")
    for key in args.shapes:
        for row in bench_shape(SHAPES[key], backends, args.device, dtype, args.repeat):
            print(f"| {row['shape']} | {row['pass']} | {row['backend']} | {row['ms']:.2f} | "
                  f"{row['speedup']:.1f}x | {row['gbps']:.1f} |")


if __name__ == "__main__":
    main()
