"""Registry entry of the model lvseg ships inside the package (trained by ``benchmarks/train_shapes.py``)."""

from __future__ import annotations

from ..registry import ModelEntry, register

register(
    ModelEntry(
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
        "pre-training on the Shapes attributes; stage 2: referring training with stride-4 masks; stage 3: "
        "training on with lvseg's image-guided stride-1 mask head, mask_refine=16). Measured on 100 "
        "held-out Shapes videos (744 expressions): J&F 89.7 (J 87.2, F 92.3); the same recipe on "
        "shuffled expressions (text-blind control) scores 38.4. It is a demonstration model for the "
        "Shapes world only.",
        default=True,
    )
)
