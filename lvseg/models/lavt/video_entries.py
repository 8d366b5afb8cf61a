"""Registry entries for the released LAVT video checkpoints (``lavt_video``; no model code imported here).

Numbers and weight links are those of the official README (Yxxxb/LAVT-RS at commit c464cf8): results tables for
Video Swin-T/S/B under "train-from-scratch" and "pretrain-then-finetune" (pseudo-videos from RefCOCO/+/g, then the
target dataset), and Tsinghua-cloud folders ``Refcoco_pretrain`` (shared by both datasets), ``YTVOS_finetune``,
``A2D_finetune`` and ``A2D_scratch``. The README links no ``YTVOS_scratch`` weights (an empty link), so that setting
has no entry. The README does not list which backbones each folder holds (the cloud is not reachable from here to
check), so every entry names its folder and the backbone its numbers are for; ``lvseg convert lavt`` reads the
backbone from the file (``--backbone video-swin-t`` checks it). No weights are on the Hugging Face Hub yet
(``hub_revision=None``): convert the file with
``lvseg convert lavt FILE.pth -o DIR --tokenizer BERT_TOKENIZER_DIR --name NAME``.

The official code is GPL-3.0 and the weights come with no other license, so the entries say ``gpl-3.0``.
"""

from __future__ import annotations

from ...registry import ModelEntry, PaperMetric, SourceCheckpoint, register

_PAPER = (
    "Yang, Wang, Chen, Zhao, Torr, Zhao, Language-Aware Vision Transformer for Referring Segmentation, "
    "IEEE TPAMI 2024 (video LAVT)"
)
_README = "LAVT-RS README (c464cf8)"
_LICENSE = "gpl-3.0"
_CLOUD = "https://cloud.tsinghua.edu.cn/d/"
_FOLDERS = {
    "refcoco-pretrain": ("54044571899a4d0ebffd", "Refcoco_pretrain"),
    "ytvos": ("54d4499c22af48559fce", "YTVOS_finetune"),
    "a2d": ("282406a0385b4a62b857", "A2D_finetune"),
    "a2d-scratch": ("51dd4e5c1dea41428b45", "A2D_scratch"),
}
_BACKBONES = {"t": "Video Swin-T", "s": "Video Swin-S", "b": "Video Swin-B"}
# README tables, per backbone letter
_YTVOS_FINETUNE = {"t": (60.91, 59.37, 62.45), "s": (62.96, 60.35, 65.56), "b": (64.90, 62.22, 67.58)}
_A2D_FINETUNE = {"t": (77.9, 70.0), "s": (79.1, 70.4), "b": (80.7, 71.9)}
_A2D_SCRATCH = {"t": (74.4, 65.9), "s": (75.5, 67.7), "b": (77.0, 68.7)}


def _ytvos(values: tuple[float, float, float]) -> tuple[PaperMetric, ...]:
    src = f"{_README}, Refer-YouTube-VOS 'pretrain-then-finetune' table (server, valid)"
    return tuple(PaperMetric("Ref-YouTube-VOS", "valid", m, v, src) for m, v in zip(("J&F", "J", "F"), values))


def _a2d(values: tuple[float, float], setting: str) -> tuple[PaperMetric, ...]:
    src = f"{_README}, A2D-Sentences '{setting}' table"
    return tuple(PaperMetric("A2D-Sentences", "test", m, v, src) for m, v in zip(("oIoU", "mIoU"), values))


def _source(tag: str, backbone: str) -> SourceCheckpoint:
    folder, label = _FOLDERS[tag]
    return SourceCheckpoint(
        url=f"{_CLOUD}{folder}/",
        notes=(
            f"'{label}' folder of the official README (which backbones it holds is not listed there); the "
            f"{backbone} file, lavt_video layout (BERT under text_encoder.); code GPL-3.0"
        ),
    )


def _register(
    name: str,
    backbone: str,
    tag: str,
    training: str,
    metrics: tuple[PaperMetric, ...],
    description: str,
    default: bool = False,
) -> None:
    register(
        ModelEntry(
            name=name,
            family="lavt",
            backbone=f"{backbone} (window 8x7x7) + BERT-base",
            training_data=training,
            config={"architecture": "lavt_video"},
            paper_metrics=metrics,
            source=_source(tag, backbone),
            license=_LICENSE,
            paper=_PAPER,
            description=description,
            default=default,
        )
    )


for _letter, _backbone in _BACKBONES.items():
    _arch = f"lavt-video-swin-{_letter}"
    _register(
        f"{_arch}.ytvos",
        _backbone,
        "ytvos",
        "RefCOCO/+/g pseudo-videos, then Ref-YouTube-VOS",
        _ytvos(_YTVOS_FINETUNE[_letter]),
        f"LAVT video ({_backbone}) pre-trained on RefCOCO pseudo-videos, fine-tuned on Ref-YouTube-VOS.",
        default=True,
    )
    _register(
        f"{_arch}.a2d",
        _backbone,
        "a2d",
        "RefCOCO/+/g pseudo-videos, then A2D-Sentences",
        _a2d(_A2D_FINETUNE[_letter], "pretrain-then-finetune"),
        f"LAVT video ({_backbone}) pre-trained on RefCOCO pseudo-videos, fine-tuned on A2D-Sentences.",
    )
    _register(
        f"{_arch}.a2d-scratch",
        _backbone,
        "a2d-scratch",
        "A2D-Sentences (Kinetics-pretrained Video Swin, no RefCOCO pre-training)",
        _a2d(_A2D_SCRATCH[_letter], "train-from-scratch"),
        f"LAVT video ({_backbone}) trained on A2D-Sentences only.",
    )
    _register(
        f"{_arch}.refcoco-pretrain",
        _backbone,
        "refcoco-pretrain",
        "RefCOCO + RefCOCO+ + RefCOCOg (UMD) training images as pseudo-videos",
        (),
        f"LAVT video ({_backbone}) after pseudo-video pre-training only (the starting point of the "
        "Ref-YouTube-VOS and A2D fine-tuning); the README reports no numbers for it.",
    )
