"""How far ``model.predict`` masks are from the official evaluation pipeline's (and the compiled op's from both).

    PYTHONPATH=$PWD:$PWD/tests python benchmarks/eval_pipeline_diff.py [--threads 2]

On the miniature Ref-YouTube-VOS dataset of the end-to-end test (tests/fixtures/eval_pipeline/ytvos_mini) with the
ReferFormer e2e checkpoint (tests/fixtures/eval_pipeline/e2e_models.py), for every expression it prints the pixels
that differ from the official ``inference_ytvos.py`` golden masks for:

* ``eval/ref``: :func:`lvseg.metrics.pipeline.referformer_ytvos_masks` (what ``lvseg evaluate`` runs), reference op;
* ``eval/cpu``: the same with the compiled CPU MSDA op;
* ``predict/ref``: ``model.predict(frames, text)`` (the fast path: torch antialiased resize, long side capped at
  ``preprocessing.max_size``, channels-last input), reference op;

plus the model input size of each path, the largest difference of the normalised inputs where the sizes agree, and
the seconds per expression of each path.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "eval_pipeline"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path[:0] = [str(ROOT / "tests"), str(FIXTURES)]
    import tempfile

    from e2e_models import referformer_checkpoint

    from lvseg.data import RefYouTubeVOS
    from lvseg.hub import from_pretrained
    from lvseg.metrics.pipeline import official_input, referformer_ytvos_masks
    from lvseg.models.referformer.convert import convert_to_folder
    from lvseg.ops import MSDeformAttn
    from lvseg.video import preprocess_frames

    golden_root = FIXTURES / "golden" / "referformer_ytvos"
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, _ = referformer_checkpoint(Path(tmp) / "official.pth")
        folder = convert_to_folder(
            ckpt, Path(tmp) / "model", tokenizer=str(ROOT / "tests/fixtures/referformer/tokenizer")
        )
        model = from_pretrained(folder, device="cpu")

    def backend(name: str) -> None:
        for module in model.modules():
            if isinstance(module, MSDeformAttn):
                module.backend = name

    pre = model.preprocessing
    rows = []
    totals = {"eval/ref": 0, "eval/cpu": 0, "predict/ref": 0, "pixels": 0}
    seconds = {"eval": 0.0, "predict": 0.0}
    for sample in RefYouTubeVOS(FIXTURES / "ytvos_mini", "valid"):
        frames = np.asarray(sample["frames"])
        gold = np.stack(
            [
                np.array(Image.open(golden_root / sample["video"] / sample["exp_id"] / f"{n}.png")) > 0
                for n in sample["frame_ids"]
            ]
        )
        official = official_input(frames, pre.short_side, pre.mean, pre.std)
        fast_size = pre.output_size(*frames.shape[1:3])
        fast = preprocess_frames(frames, fast_size, pre.mean, pre.std, interpolation=pre.interpolation)
        input_diff = (fast - official).abs().max().item() if fast.shape == official.shape else float("nan")
        counts = {}
        backend("reference")
        t0 = time.perf_counter()
        masks, _, _ = referformer_ytvos_masks(model, frames, sample["text"])
        seconds["eval"] += time.perf_counter() - t0
        counts["eval/ref"] = int((masks.numpy() != gold).sum())
        t0 = time.perf_counter()
        result = model.predict(frames, sample["text"], progress=False)
        seconds["predict"] += time.perf_counter() - t0
        counts["predict/ref"] = int((result.masks.numpy() != gold).sum())
        backend("cpu")
        masks, _, _ = referformer_ytvos_masks(model, frames, sample["text"])
        counts["eval/cpu"] = int((masks.numpy() != gold).sum())
        backend("reference")
        for k, v in counts.items():
            totals[k] += v
        totals["pixels"] += gold.size
        rows.append(
            (
                f"{sample['video']}/{sample['exp_id']}",
                "x".join(map(str, frames.shape[1:3])),
                "x".join(map(str, official.shape[-2:])),
                "x".join(map(str, fast.shape[-2:])),
                f"{input_diff:.4f}",
                gold.size,
                counts["eval/ref"],
                counts["eval/cpu"],
                counts["predict/ref"],
            )
        )
    header = (
        "expression",
        "frame",
        "official input",
        "predict input",
        "max|input diff|",
        "pixels",
        "eval/ref",
        "eval/cpu",
        "predict/ref",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    print(
        f"| total | | | | | {totals['pixels']} | {totals['eval/ref']} | {totals['eval/cpu']} | "
        f"{totals['predict/ref']} |"
    )
    n = len(rows)
    print(
        f"\nseconds per expression (reference op, {args.threads} threads): evaluation pipeline "
        f"{seconds['eval'] / n:.2f}, predict {seconds['predict'] / n:.2f}"
    )


if __name__ == "__main__":
    main()
