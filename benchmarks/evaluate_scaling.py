"""Evaluation speed on CPU: ``lvseg.evaluate`` on 1 and 2 processes (torchrun, gloo), and its overhead vs ``predict``.

    python benchmarks/evaluate_scaling.py [--root data/shapes-eval] [--num-videos 12] [--out runs/evaluate-scaling]
        [--model referformer-tiny.shapes] [--threads 1] [--repeat 3]

A Shapes valid split (``--num-videos`` videos of seed 1, 8 frames of 96x96; generated under ``--root`` when missing)
is evaluated with the bundled model by ``torchrun --nproc_per_node=P`` for P = 1 and 2, each run from an empty
output folder, every process with ``--threads`` intra-op threads. The table shows, side by side, samples/s over the
``lvseg.evaluate`` call (from a barrier before it to its return on rank 0: sharding, the model, the atomic writes of
the predictions and rank 0's scoring), the same over the whole command (process start, imports and model loading
included), and the J&F, which must be equal. Each configuration runs ``--repeat`` times, in turn (1, 2, 1, 2, ...,
so that a change in machine load hits both alike), and the median time is shown.

Then, in this process (one thread), the evaluation pipeline against the fast path, each over the same samples, read
into memory first: a loop of ``model.predict(frames, text)``; ``lvseg.evaluate`` without an output folder (runner
and scoring); and ``lvseg.evaluate`` with one (plus the stored predictions). The masks of ``predict`` and of the
evaluation are compared pixel by pixel. The three paths also run ``--repeat`` times in turn (medians). The
pure-PyTorch deformable-attention op is used (no compile step). """

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

os.environ.setdefault("LVSEG_MSDA_BACKEND", "reference")


def _worker(args: argparse.Namespace) -> int:
    """One torchrun rank: time lvseg.evaluate between a barrier and its return; rank 0 prints the numbers."""
    import torch

    torch.set_num_threads(args.threads)
    import lvseg
    from lvseg.metrics import distributed
    from lvseg.metrics.evaluate import shapes_dataset
    from lvseg.train.distributed import barrier

    info = distributed.join_process_group("cpu")
    model = lvseg.load(args.model, device="cpu")
    dataset = shapes_dataset(args.root, "valid", num_videos=args.num_videos)
    barrier()
    start = time.perf_counter()
    result = lvseg.evaluate(model, dataset, output_dir=args.worker_out, progress=False)
    seconds = time.perf_counter() - start
    if info.is_main:
        print("WORKER " + json.dumps({"seconds": seconds, **result}), flush=True)
    return 0


def _scaling(args: argparse.Namespace, processes: int) -> dict:
    out = Path(args.out) / f"p{processes}"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           __file__, "--worker-out", str(out), "--root", str(args.root), "--num-videos", str(args.num_videos),
           "--model", args.model, "--threads", str(args.threads)]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"torchrun with {processes} process(es) failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("WORKER "))
    result = json.loads(line[len("WORKER ") :])
    result["wall"] = wall
    return result


def _overhead(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    import lvseg
    from lvseg.metrics.evaluate import _load_prediction, shapes_dataset

    model = lvseg.load(args.model, device="cpu")
    dataset = shapes_dataset(args.root, "valid", num_videos=args.num_videos)
    n = len(dataset)
    samples = [dataset[i] for i in range(n)]  # read once: the three paths below then time the model side only

    class Preloaded(type(dataset)):  # the same dataset (protocol, ground truth), its samples already in memory
        def __init__(self) -> None:
            self.__dict__.update(dataset.__dict__)

        def __getitem__(self, index: int) -> dict:
            return samples[index]

    data = Preloaded()
    with torch.inference_mode():
        model.predict(samples[0]["frames"], samples[0]["text"], progress=False)  # warm-up, not timed
    times: dict[str, list[float]] = {"predict": [], "evaluate": [], "evaluate_stored": []}
    stored = Path(args.out) / "overhead"
    for _ in range(args.repeat):
        start = time.perf_counter()
        with torch.inference_mode():
            predicted = [model.predict(s["frames"], s["text"], progress=False).masks.numpy() for s in samples]
        times["predict"].append(time.perf_counter() - start)
        start = time.perf_counter()
        lvseg.evaluate(model, data, progress=False)
        times["evaluate"].append(time.perf_counter() - start)
        shutil.rmtree(stored, ignore_errors=True)
        start = time.perf_counter()
        lvseg.evaluate(model, data, output_dir=stored, progress=False)
        times["evaluate_stored"].append(time.perf_counter() - start)
    files = sorted((stored / "predictions").glob("*.npz"))
    differ = total = 0
    for path, mask in zip(files, predicted):
        evaluated = _load_prediction(path).values.numpy()
        differ += int(np.count_nonzero(evaluated != mask))
        total += mask.size
    return {"samples": n, **{k: median(v) for k, v in times.items()}, "differ": differ, "pixels": total}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="data/shapes-eval", help="Shapes root (its valid split is generated if missing)")
    p.add_argument("--num-videos", type=int, default=12)
    p.add_argument("--out", default="runs/evaluate-scaling", help="scratch folder for the evaluations' outputs")
    p.add_argument("--model", default="referformer-tiny.shapes")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    p.add_argument("--repeat", type=int, default=3, help="runs of each configuration, in turn (median shown)")
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)  # set for the torchrun ranks
    args = p.parse_args(argv)
    if args.worker_out is not None:
        return _worker(args)

    from lvseg.metrics.evaluate import shapes_dataset

    n = len(shapes_dataset(args.root, "valid", num_videos=args.num_videos))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Shapes valid: {args.num_videos} videos, {n} samples (expressions); {os.cpu_count()} CPU core(s) "
          f"(load average {load:.1f}), {args.threads} thread(s) per process; model {args.model}; "
          f"median of {args.repeat} run(s)")  # fmt: skip
    trials: dict[int, list[dict]] = {1: [], 2: []}
    for _ in range(args.repeat):
        for k in trials:
            trials[k].append(_scaling(args, k))
    runs = {}
    for k, rs in trials.items():
        runs[k] = {**rs[0], "seconds": median([r["seconds"] for r in rs]), "wall": median([r["wall"] for r in rs])}
        if any(r[m] != rs[0][m] for r in rs for m in ("J&F", "J", "F")):
            sys.exit(f"{k} process(es): the metrics changed between repeats")
    print()
    print("| processes | evaluate() s | samples/s | whole command s | samples/s | J&F |")
    print("|---|---|---|---|---|---|")
    for k, r in runs.items():
        print(f"| {k} | {r['seconds']:.1f} | {r['samples'] / r['seconds']:.2f} | {r['wall']:.1f} | "
              f"{r['samples'] / r['wall']:.2f} | {r['J&F']:.4f} |")  # fmt: skip
    same = all(runs[1][k] == runs[2][k] for k in ("J&F", "J", "F", "samples"))
    print(f"speed-up of evaluate() with 2 processes: {runs[1]['seconds'] / runs[2]['seconds']:.2f}x; "
          f"metrics equal: {same}")  # fmt: skip

    o = _overhead(args)
    print()
    print(f"one process, one thread, {o['samples']} samples already in memory:")
    print("| path | s | samples/s | vs predict |")
    print("|---|---|---|---|")
    for name, key in (("model.predict loop", "predict"), ("lvseg.evaluate (no output folder)", "evaluate"),
                      ("lvseg.evaluate (predictions stored)", "evaluate_stored")):  # fmt: skip
        print(f"| {name} | {o[key]:.1f} | {o['samples'] / o[key]:.2f} | {o[key] / o['predict']:.2f}x |")
    print(f"predict vs evaluate masks: {o['differ']} of {o['pixels']} pixels differ")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
