"""Registry entry of the model lvseg ships inside the package (trained by ``benchmarks/train_shapes.py``)."""

from __future__ import annotations

from ..registry import ModelEntry, register

register(ModelEntry(
    name="referformer-tiny.shapes",
    family="referformer",
    backbone="timm test_convnext (from scratch) + temporal conv",
    training_data="Shapes (procedural, lvseg.data.shapes, 96x96)",
    bundled="assets/referformer-tiny-shapes",
    license="apache-2.0",
    paper="Wu et al., Language as Queries for Referring Video Object Segmentation, CVPR 2022 (architecture)",
    description="A ~1 M-parameter ReferFormer trained by lvseg on its procedural Shapes videos (CPU, offline). "
                "It only knows the Shapes world: coloured shapes, sizes, positions and motions. Used by "
                "`lvseg demo` and the quick start; reproduce it with benchmarks/train_shapes.py (stage 1: backbone "
                "pre-training on the Shapes attributes; stage 2: referring training). Measured on 100 held-out "
                "Shapes videos (744 expressions): J&F 75.0 (J 66.1, F 83.9); the same recipe on shuffled "
                "expressions (text-blind control) scores 32.3. It is a demonstration model, not an accurate one.",
    default=True,
))
