"""How far this machine's rounding takes lvseg from the official golden outputs (relative to each output's size).

For every golden fixture of the test suite (ReferFormer R50, Swin, Video Swin, Video Swin 10 frames on the
reference MSDA op; MTTR fused and eager), prints the largest ``max|ours - golden| / max|golden|`` over its raw
outputs, and for R50 the compiled CPU op against the reference op. tests/parity.py's RELATIVE_TOLERANCE must stay
well above these numbers on every machine; run it under other rounding regimes to see how they move::

    python benchmarks/parity_rounding.py
    ATEN_CPU_CAPABILITY=default python benchmarks/parity_rounding.py
    ONEDNN_MAX_CPU_ISA=SSE41 OMP_NUM_THREADS=2 python benchmarks/parity_rounding.py

It reuses the tests' own fixture code (tests/test_referformer.py, tests/test_mttr_parity.py), so run it from a
checkout.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

import test_mttr_parity as mttr_tests  # noqa: E402
import test_referformer as referformer_tests  # noqa: E402
from parity import RELATIVE_TOLERANCE, relative_deviation  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from lvseg.models.referformer.convert import convert  # noqa: E402
from lvseg.models.referformer.model import ReferFormer  # noqa: E402


def worst(outputs: dict[str, torch.Tensor], golden: dict[str, torch.Tensor]) -> tuple[float, str]:
    """(largest relative deviation, its output's key)."""
    return max((relative_deviation(value, golden[key]), key) for key, value in outputs.items())


def main() -> None:
    rows = []
    tmp = Path(tempfile.mkdtemp())
    for name in ("r50", "swin", "video-swin", "video-swin-10f"):
        path, meta = referformer_tests.official_checkpoint(name, tmp / f"{name}.pth")
        state, config = convert(path)
        model = ReferFormer(config, tokenizer=referformer_tests.tokenizer()).eval()
        model.load_state_dict(state, strict=True)
        golden = load_file(str(referformer_tests.FIXTURES / f"{name}.safetensors"))
        frames = referformer_tests.golden_frames(meta, golden)
        reference = referformer_tests.raw_outputs(model, meta, frames, backend="reference")
        rows.append((f"referformer {name}, reference op vs golden", *worst(reference, golden)))
        if name == "r50":
            from lvseg.ops import select_backend

            if select_backend("cpu", "cpu") == "cpu":
                compiled = referformer_tests.raw_outputs(model, meta, frames, backend="cpu")
                rows.append(("referformer r50, compiled op vs reference op", *worst(compiled, reference)))
    checkpoint = tmp / "mttr.pth"
    torch.save(mttr_tests.official_state(), checkpoint)
    golden = load_file(str(mttr_tests.FIXTURES / "mttr" / "tiny.safetensors"))
    for fused in (True, False):
        net = mttr_tests.build(checkpoint, fused=fused)
        rows.append((f"mttr {'fused' if fused else 'eager'} vs golden", *worst(mttr_tests.raw_outputs(net), golden)))

    settings = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS")
                if k in os.environ}
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, {settings or 'no overrides'}; tolerance {RELATIVE_TOLERANCE:.0e}")
    print(f"| {'comparison':<52} | max relative deviation | output |")
    print(f"|{'-' * 54}|{'-' * 24}|{'-' * 8}|")
    for what, deviation, key in rows:
        print(f"| {what:<52} | {deviation:22.2e} | {key} |")


if __name__ == "__main__":
    main()
