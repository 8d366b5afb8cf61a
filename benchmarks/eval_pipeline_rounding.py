"""Which pixels of the evaluation mode's masks another CPU's rounding flips (run under other kernel settings).

    ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default PYTHONPATH=$PWD:$PWD/tests \\
        python benchmarks/eval_pipeline_rounding.py

Runs lvseg's evaluation mode (reference MSDA op) with the ReferFormer e2e checkpoint on the miniature datasets of
tests/test_eval_pipeline.py and compares with the official golden outputs: per Ref-YouTube-VOS expression the
differing pixels and the largest |logit| among them (against 1e-4 x max |logit|, the tests' bound); for the
Ref-DAVIS17 video ``blackswan`` per annotator the differing label pixels, their largest distance of a probability
from 0.5 and their largest gap between the two most probable objects.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "eval_pipeline"


def main() -> None:
    os.environ["LVSEG_MSDA_BACKEND"] = "reference"
    sys.path[:0] = [str(ROOT / "tests"), str(FIXTURES)]
    from e2e_models import referformer_checkpoint

    from lvseg.data import RefDAVIS17, RefYouTubeVOS
    from lvseg.hub import from_pretrained
    from lvseg.metrics.pipeline import referformer_davis_probabilities, referformer_ytvos_masks
    from lvseg.metrics.refdavis import objects_to_labels
    from lvseg.models.referformer.convert import convert_to_folder

    print(
        f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '')} "
        f"ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', '')}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, _ = referformer_checkpoint(Path(tmp) / "official.pth")
        tokenizer = str(ROOT / "tests" / "fixtures" / "referformer" / "tokenizer")
        model = from_pretrained(convert_to_folder(ckpt, Path(tmp) / "model", tokenizer=tokenizer), device="cpu")
    golden = FIXTURES / "golden" / "referformer_ytvos"
    for s in RefYouTubeVOS(FIXTURES / "ytvos_mini", "valid"):
        masks, _, logits = referformer_ytvos_masks(model, np.asarray(s["frames"]), s["text"])
        gold = np.stack(
            [np.array(Image.open(golden / s["video"] / s["exp_id"] / f"{n}.png")) > 0 for n in s["frame_ids"]]
        )
        differ = masks.numpy() != gold
        worst = float(np.abs(logits.numpy())[differ].max()) if differ.any() else 0.0
        print(
            f"ytvos {s['video']}/{s['exp_id']}: {int(differ.sum())} of {differ.size} pixels differ, "
            f"largest |logit| among them {worst:.3g} (bound {1e-4 * logits.abs().max().item():.3g})"
        )
    dataset = RefDAVIS17(FIXTURES / "davis_mini", "valid")
    groups: dict[int, list[np.ndarray]] = {}
    for i in range(len(dataset)):
        s = dataset[i]
        if s["video"] == "blackswan":
            probs, _ = referformer_davis_probabilities(model, np.asarray(s["frames"]), s["text"])
            groups.setdefault(s["annotator"], []).append(probs.numpy())
    for annotator, objects in sorted(groups.items()):
        probs = np.stack(objects)
        labels = objects_to_labels(probs)
        folder = FIXTURES / "golden" / "referformer_davis" / f"anno_{annotator}" / "blackswan"
        gold = np.stack([np.array(Image.open(p)) for p in sorted(folder.glob("*.png"))])
        differ = labels != gold
        near = np.abs(probs - 0.5).min(0)[differ]
        top2 = np.sort(probs, 0)[-2:]
        gap = (top2[1] - top2[0])[differ]
        print(
            f"davis blackswan anno_{annotator}: {int(differ.sum())} of {differ.size} label pixels differ; "
            f"|p - 0.5| of the nearest object {np.round(near, 7).tolist()}, top-2 gap {np.round(gap, 7).tolist()}"
        )


if __name__ == "__main__":
    main()
