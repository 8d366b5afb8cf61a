"""Registry entries for the released LAVT image checkpoints (no model code imported here).

Numbers and Google-Drive file ids are those of the official README (yz93/LAVT-RIS at commit 1da0af9). No weights
are on the Hugging Face Hub yet (``hub_revision=None``): convert the official file with
``lvseg convert lavt FILE.pth -o DIR --tokenizer BERT_TOKENIZER_DIR --name NAME`` and load the folder.

The official code is GPL-3.0 and the weights come with no other license, so the entries say ``gpl-3.0``.
The ``lavt_one`` README table is titled "multi-class Dice loss, new implementation"; it was added a year after
the ``lavt_one`` weights were uploaded and the repository has no Dice code, so it is not established that the
Drive weights reproduce it (the metric sources say so).
"""

from __future__ import annotations

from ...registry import ModelEntry, PaperMetric, SourceCheckpoint, register

_PAPER = (
    "Yang, Wang, Chen, Zhao, Torr, Zhao, LAVT: Language-Aware Vision Transformer for Referring Image "
    "Segmentation, CVPR 2022 (arXiv:2112.02244)"
)
_README = "LAVT-RIS README (1da0af9)"
_LICENSE = "gpl-3.0"
_BACKBONE = "Swin-B (window 12) + BERT-base"
_METRICS = ("P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9", "oIoU", "mIoU")

# README tables: (dataset, split) -> P@0.5 ... P@0.9, oIoU, mIoU
_LAVT = {
    ("RefCOCO", "val"): (84.46, 80.90, 75.28, 64.71, 34.30, 72.73, 74.46),
    ("RefCOCO", "testA"): (88.07, 85.17, 79.90, 68.52, 35.69, 75.82, 76.89),
    ("RefCOCO", "testB"): (79.12, 74.94, 69.17, 59.37, 34.45, 68.79, 70.94),
    ("RefCOCO+", "val"): (74.44, 70.91, 65.58, 56.34, 30.23, 62.14, 65.81),
    ("RefCOCO+", "testA"): (80.68, 77.96, 72.90, 62.21, 32.36, 68.38, 70.97),
    ("RefCOCO+", "testB"): (65.66, 61.85, 55.94, 47.56, 27.24, 55.10, 59.23),
    ("G-Ref (UMD)", "val"): (70.81, 65.28, 58.60, 47.49, 22.73, 61.24, 63.34),
    ("G-Ref (UMD)", "test"): (71.54, 66.38, 59.00, 48.21, 23.10, 62.09, 63.62),
    ("G-Ref (Google)", "val"): (71.16, 67.21, 61.76, 51.98, 27.30, 60.50, 63.66),
}
_LAVT_ONE = {
    ("RefCOCO", "val"): (85.87, 82.13, 76.64, 65.45, 35.30, 73.50, 75.41),
    ("RefCOCO", "testA"): (88.47, 85.63, 80.57, 68.84, 35.71, 75.97, 77.31),
    ("RefCOCO", "testB"): (80.20, 76.49, 70.34, 60.12, 34.94, 69.33, 71.86),
    ("RefCOCO+", "val"): (76.19, 72.27, 66.82, 56.87, 30.15, 63.79, 67.65),
    ("RefCOCO+", "testA"): (82.50, 79.44, 74.00, 63.27, 31.99, 69.79, 72.53),
    ("RefCOCO+", "testB"): (68.03, 63.35, 57.29, 47.92, 26.98, 56.49, 61.22),
    ("G-Ref (UMD)", "val"): (75.82, 71.06, 63.99, 52.98, 27.31, 64.02, 67.41),
    ("G-Ref (UMD)", "test"): (76.12, 71.13, 64.58, 53.62, 28.03, 64.49, 67.45),
    ("G-Ref (Google)", "val"): (72.57, 68.65, 63.09, 53.33, 28.14, 61.31, 64.84),
}

# tag -> (dataset in the tables, training data, lavt Drive id, lavt_one Drive id)
_DATASETS = {
    "refcoco": (
        "RefCOCO",
        "RefCOCO (UNC splits)",
        "13D-OeEOijV8KTC3BkFP-gOJymc6DLwVT",
        "1xFMEXr6AGU97Ypj1yr8oo00uObbeIQvJ",
    ),
    "refcoco+": (
        "RefCOCO+",
        "RefCOCO+ (UNC splits)",
        "1B8Q44ZWsc8Pva2xD_M-KFh7-LgzeH2-2",
        "1HS8ZnGaiPJr-OmoUn4-4LVnVtD_zHY6w",
    ),
    "gref-umd": (
        "G-Ref (UMD)",
        "G-Ref / RefCOCOg (UMD split)",
        "1BjUnPVpALurkGl7RXXvQiAHhA-gQYKvK",
        "14g8NzgZn6HzC6tP_bsQuWmh5LnOcovsE",
    ),
    "gref-google": (
        "G-Ref (Google)",
        "G-Ref / RefCOCOg (Google split)",
        "1weiw5UjbPfo3tCBPfB8tu6xFXCUG16yS",
        "1IJeahFVLgKxu_BVmWacZs3oUzgTCeWcz",
    ),
}


def _metrics(table: dict, dataset: str, source: str) -> tuple[PaperMetric, ...]:
    return tuple(
        PaperMetric(ds, split, metric, value, source)
        for (ds, split), values in table.items()
        if ds == dataset
        for metric, value in zip(_METRICS, values)
    )


def _drive(file_id: str, notes: str) -> SourceCheckpoint:
    return SourceCheckpoint(url=f"https://drive.google.com/file/d/{file_id}/view", notes=notes)


for _tag, (_dataset, _training, _lavt_id, _one_id) in _DATASETS.items():
    register(
        ModelEntry(
            name=f"lavt-swin-b.{_tag}",
            family="lavt",
            backbone=_BACKBONE,
            training_data=_training,
            paper_metrics=_metrics(_LAVT, _dataset, f"{_README}, 'lavt' table (CE loss, = CVPR paper)"),
            source=_drive(_lavt_id, f"lavt (BERT in 'bert_model'), {_training} (official README); code GPL-3.0"),
            license=_LICENSE,
            paper=_PAPER,
            description=f"LAVT (original implementation, CE loss) trained on {_training}; one image at a time.",
            default=_tag == "refcoco",
        )
    )
    register(
        ModelEntry(
            name=f"lavt-one-swin-b.{_tag}",
            family="lavt",
            backbone=_BACKBONE,
            training_data=_training,
            paper_metrics=_metrics(
                _LAVT_ONE,
                _dataset,
                f"{_README}, 'lavt_one' table (titled multi-class Dice loss; not established to be these weights)",
            ),
            source=_drive(_one_id, f"lavt_one (BERT inside the model), {_training} (official README); code GPL-3.0"),
            license=_LICENSE,
            paper=_PAPER,
            description=f"LAVT-One (BERT inside the model, same network as lavt) trained on {_training}.",
            default=_tag == "refcoco",
        )
    )
