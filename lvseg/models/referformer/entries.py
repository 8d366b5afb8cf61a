"""Registry entries for every released ReferFormer checkpoint (no model code imported here).

Numbers and Google-Drive file ids are those of the official README (wjn922/ReferFormer at commit
06fc218f5d8f04730f81471a15ed89ea7e4d30d8). No weights are on the Hugging Face Hub yet (``hub_repo=None``):
convert the official file with ``lvseg convert referformer FILE.pth -o DIR`` and load the folder.
"""

from __future__ import annotations

from ...registry import ModelEntry, PaperMetric, SourceCheckpoint, register

_PAPER = "Wu et al., Language as Queries for Referring Video Object Segmentation, CVPR 2022 (arXiv:2201.00487)"
_README = "ReferFormer README (06fc218)"

# lvseg architecture name -> (config backbone, human-readable backbone)
_ARCHS = {
    "referformer-r50": ("resnet50", "ResNet-50"),
    "referformer-r101": ("resnet101", "ResNet-101"),
    "referformer-swin-t": ("swin-t", "Swin-T"),
    "referformer-swin-l": ("swin-l", "Swin-L"),
    "referformer-video-swin-t": ("video-swin-t", "Video-Swin-T"),
    "referformer-video-swin-s": ("video-swin-s", "Video-Swin-S"),
    "referformer-video-swin-b": ("video-swin-b", "Video-Swin-B"),
}


def _drive(file_id: str, notes: str) -> SourceCheckpoint:
    return SourceCheckpoint(url=f"https://drive.google.com/file/d/{file_id}/view", notes=notes)


def _ytvos(jf: float) -> tuple[PaperMetric, ...]:
    return (PaperMetric("Ref-YouTube-VOS", "valid", "J&F", jf, f"{_README}, table 'Ref-Youtube-VOS'"),)


def _davis(jf: float, j: float, f: float) -> tuple[PaperMetric, ...]:
    src = f"{_README}, table 'Ref-DAVIS17' (Ref-YouTube-VOS model, no DAVIS fine-tuning)"
    return (
        PaperMetric("Ref-DAVIS17", "val", "J&F", jf, src),
        PaperMetric("Ref-DAVIS17", "val", "J", j, src),
        PaperMetric("Ref-DAVIS17", "val", "F", f, src),
    )


def _joint(jf: float, j: float, f: float) -> tuple[PaperMetric, ...]:
    src = f"{_README}, table 'Joint training with Ref-COCO/+/g'"
    return (
        PaperMetric("Ref-YouTube-VOS", "valid", "J&F", jf, src),
        PaperMetric("Ref-YouTube-VOS", "valid", "J", j, src),
        PaperMetric("Ref-YouTube-VOS", "valid", "F", f, src),
    )


def _a2d(a2d: tuple[float, float, float], jhmdb: tuple[float, float, float]) -> tuple[PaperMetric, ...]:
    src = f"{_README}, table 'A2D-Sentences & JHMDB-Sentences'"
    out = []
    for dataset, values in (("A2D-Sentences", a2d), ("JHMDB-Sentences", jhmdb)):
        for metric, value in zip(("oIoU", "mIoU", "mAP"), values):
            out.append(PaperMetric(dataset, "test", metric, value, src))
    return tuple(out)


def _refcoco(rec: tuple[float, float, float], ris: tuple[float, float, float]) -> tuple[PaperMetric, ...]:
    src = f"{_README}, table 'RefCOCO/+/g' (pre-trained weights, 1 frame)"
    out = []
    for dataset, p, o in zip(("RefCOCO", "RefCOCO+", "RefCOCOg"), rec, ris):
        out.append(PaperMetric(dataset, "val", "P@0.5", p, src))
        out.append(PaperMetric(dataset, "val", "oIoU", o, src))
    return tuple(out)


def _entry(
    arch: str,
    tag: str,
    training: str,
    file_id: str,
    metrics: tuple[PaperMetric, ...],
    notes: str = "",
    default: bool = False,
    protocol: str = "ytvos",
) -> None:
    backbone, pretty = _ARCHS[arch]
    register(
        ModelEntry(
            name=f"{arch}.{tag}",
            family="referformer",
            backbone=pretty,
            training_data=training,
            config={"backbone": backbone, "protocol": protocol},
            hub_repo=None,
            hub_revision=None,
            paper_metrics=metrics,
            source=_drive(file_id, notes or f"official ReferFormer {pretty} checkpoint ({training})"),
            license="apache-2.0",
            paper=_PAPER,
            description=(
                f"ReferFormer with a {pretty} backbone, {training}. Not on the Hugging Face Hub yet "
                "(no planned repo id): convert the official file with `lvseg convert referformer`."
            ),
            default=default,
        )
    )


# Ref-YouTube-VOS fine-tuned from the RefCOCO/+/g-pretrained weights (also the Ref-DAVIS17 models)
_entry(
    "referformer-r50",
    "ytvos",
    "RefCOCO/+/g pre-training, Ref-YouTube-VOS fine-tuning",
    "1TBykzTRiOEbpM2YEYnDICyqjwkvlD2cR",
    _ytvos(55.6) + _davis(58.5, 55.8, 61.3),
)
_entry(
    "referformer-r101",
    "ytvos",
    "RefCOCO/+/g pre-training, Ref-YouTube-VOS fine-tuning",
    "1QJU8HC8xk_3gMcj-Yi4vkUHaeHeP8n82",
    _ytvos(57.3),
)
_entry(
    "referformer-swin-t",
    "ytvos",
    "RefCOCO/+/g pre-training, Ref-YouTube-VOS fine-tuning",
    "1AOHK6Qp8T0rUzgHT9twvWn4oGLS5MnuS",
    _ytvos(58.7),
    default=True,
)
_entry(
    "referformer-swin-l",
    "ytvos",
    "RefCOCO/+/g pre-training, Ref-YouTube-VOS fine-tuning",
    "103N96BbQnT9P57aGx7TCsZVyGr3ejFdl",
    _ytvos(62.4) + _davis(60.5, 57.6, 63.4),
)
_entry(
    "referformer-video-swin-t",
    "ytvos-scratch",
    "Ref-YouTube-VOS only (Kinetics-400 backbone init)",
    "14X_YysCXv13LzLoWy9ViIn623KQ-ol51",
    _ytvos(56.0),
    notes="the README's Video-Swin-T* row",
)
_entry(
    "referformer-video-swin-t",
    "ytvos",
    "RefCOCO/+/g pre-training, Ref-YouTube-VOS fine-tuning",
    "1vkG8nyUue9XOnScUMKo__khhxvuJP9R6",
    _ytvos(59.4),
)
_entry(
    "referformer-video-swin-s",
    "ytvos",
    "RefCOCO/+/g pre-training, Ref-YouTube-VOS fine-tuning",
    "1R0C5hYck6OwKko9tXOpIQ02SuE4mb1xj",
    _ytvos(60.1),
)
_entry(
    "referformer-video-swin-b",
    "ytvos",
    "RefCOCO/+/g pre-training, Ref-YouTube-VOS fine-tuning",
    "1_dS8hyZJFdijvsDVmoVcHjWhRE6sAXvS",
    _ytvos(62.9) + _davis(61.1, 58.1, 64.1),
)

# joint training on RefCOCO/+/g pseudo-videos + Ref-YouTube-VOS: the best Ref-YouTube-VOS model of each backbone
_JOINT = "joint RefCOCO/+/g + Ref-YouTube-VOS training"
_entry("referformer-r50", "joint", _JOINT, "1GAzI9zLEQKxp5KQHu1FOuqlw5PwAhMey", _joint(58.7, 57.4, 60.1), default=True)
_entry("referformer-r101", "joint", _JOINT, "1R4PThhYGqaanm3h46gygQ6strHVJBpn5", _joint(59.3, 58.1, 60.4), default=True)
_entry(
    "referformer-swin-l", "joint", _JOINT, "1_nGi5JjlRcOUI8kXXduOE5iv0apnSXgR", _joint(64.2, 62.3, 66.2), default=True
)
_entry(
    "referformer-video-swin-t",
    "joint",
    _JOINT,
    "1gPVVdAuX_0-H2McPPJYX6HldGQtekD8b",
    _joint(62.6, 59.9, 63.3),
    notes="README row is inconsistent: (J + F) / 2 = 61.6, not the listed J&F 62.6",
    default=True,
)
_entry(
    "referformer-video-swin-s",
    "joint",
    _JOINT,
    "1zm9URDfL19xi5LN9vCM2c58-W-A5RCz_",
    _joint(63.3, 61.4, 65.2),
    default=True,
)
_entry(
    "referformer-video-swin-b",
    "joint",
    _JOINT,
    "183AJLTtzwL15r-hhG9hUFrK5tfq37BH1",
    _joint(64.9, 62.8, 67.0),
    default=True,
)

# A2D-Sentences (JHMDB-Sentences numbers are the same checkpoint without fine-tuning)
_A2D = "RefCOCO/+/g pre-training, A2D-Sentences fine-tuning"
_entry(
    "referformer-video-swin-t",
    "a2d-scratch",
    "A2D-Sentences only (Kinetics-400 backbone init, 6 frames)",
    "1lK3Hulc8K6croRTrzJmz8QMhndQYDzsf",
    _a2d((72.3, 64.1, 48.6), (70.0, 69.3, 39.1)),
    protocol="frame",
    notes="the README's Video-Swin-T* row",
)
_entry(
    "referformer-video-swin-t",
    "a2d",
    _A2D,
    "1b56oyvJZTY70ztCgDhD5vBG7fZohqzYE",
    _a2d((77.6, 69.6, 52.8), (71.9, 71.0, 42.2)),
    protocol="frame",
)
_entry(
    "referformer-video-swin-s",
    "a2d",
    _A2D,
    "1edp5ZjCr4OG-8E9Co2_UgknoKMWUCB5y",
    _a2d((77.7, 69.8, 53.9), (72.8, 71.5, 42.4)),
    protocol="frame",
)
_entry(
    "referformer-video-swin-b",
    "a2d",
    _A2D,
    "11UdnixY1ZQLpFqEq3_mdM4ELXGhrG7YD",
    _a2d((78.6, 70.3, 55.0), (73.0, 71.8, 43.7)),
    protocol="frame",
)

# RefCOCO/+/g image-level pre-training (the init of the .ytvos and .a2d models)
_PRE = "RefCOCO/+/g image-level pre-training"
_entry(
    "referformer-r50",
    "refcoco",
    _PRE,
    "1zFBTmWhHQn_QxN84hpT-fA0C5TzZUAZK",
    _refcoco((85.0, 79.2, 79.0), (71.1, 64.1, 64.1)),
    protocol="frame",
)
_entry(
    "referformer-r101",
    "refcoco",
    _PRE,
    "1FKIdXM9UEHSn93Xhbqi2hYBktDRMBsLr",
    _refcoco((85.4, 75.8, 79.9), (71.8, 61.1, 64.9)),
    protocol="frame",
)
_entry(
    "referformer-swin-t",
    "refcoco",
    _PRE,
    "1TcGsseTVftkpdw_glFOwG-Zvg3NMEPuw",
    _refcoco((86.7, 77.2, 80.6), (72.9, 62.4, 66.1)),
    protocol="frame",
)
_entry(
    "referformer-swin-l",
    "refcoco",
    _PRE,
    "1pM7mBgvHtI_XNbfkX5eKT4jsUaLL3Qa4",
    _refcoco((89.8, 80.0, 83.9), (77.1, 65.8, 69.3)),
    protocol="frame",
)
for _arch, _file_id in (
    ("referformer-video-swin-t", "1qaEuOocLOZoj89unhZP3oN708ofmqopS"),
    ("referformer-video-swin-s", "1SHzlzxE-KQeoGoYucdnPZtw_uz2ymgxn"),
    ("referformer-video-swin-b", "1gbyknvuOiKpxK1kljxFnt1k5Jxp3R1jv"),
):
    # released as the init of the .ytvos/.a2d models; the README reports no RefCOCO numbers for them
    _entry(
        _arch,
        "refcoco",
        _PRE,
        _file_id,
        (),
        protocol="frame",
        notes="RefCOCO/+/g pre-trained weights; no paper metrics are reported for this backbone",
    )
