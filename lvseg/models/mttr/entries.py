"""Registry entries for the three released MTTR checkpoints (no model code imported here).

Numbers and Google-Drive file ids are those of the official README (mttr2021/MTTR at commit 2cc35ab). No weights
are on the Hugging Face Hub yet (``hub_revision=None``): convert the official file with
``lvseg convert mttr FILE.pth.tar -o DIR --name NAME`` and load the folder.
"""

from __future__ import annotations

from ...registry import ModelEntry, PaperMetric, SourceCheckpoint, register

_PAPER = (
    "Botach, Zheltonozhskii, Baskin, End-to-End Referring Video Object Segmentation with Multimodal "
    "Transformers, CVPR 2022 (arXiv:2111.14821)"
)
_README = "MTTR README (2cc35ab)"
_LICENSE = "apache-2.0"


def _drive(file_id: str, notes: str, filename: str | None = None) -> SourceCheckpoint:
    return SourceCheckpoint(url=f"https://drive.google.com/file/d/{file_id}/view", filename=filename, notes=notes)


def _a2d_config(window: int) -> dict:
    # A2D/JHMDB evaluation resize (short side 320, max 576); windows of the training length; per-frame top query
    return {
        "preprocessing": {"short_side": 320, "max_size": 576, "window": window, "overlap": 0, "max_text_tokens": 512},
        "protocol": "frame",
    }


def _a2d_metrics(a2d_map: float, jhmdb_map: float, window: int) -> tuple[PaperMetric, ...]:
    return (
        PaperMetric("A2D-Sentences", "test", "mAP", a2d_map, f"{_README}, A2D-Sentences table (window {window})"),
        PaperMetric(
            "JHMDB-Sentences",
            "test",
            "mAP",
            jhmdb_map,
            f"{_README}, JHMDB-Sentences table (window {window}; A2D checkpoint, no fine-tuning)",
        ),
    )


register(
    ModelEntry(
        name="mttr-swin-t.a2d",
        family="mttr",
        backbone="Video-Swin-T (1x4x4 patch, 3 stages)",
        training_data="A2D-Sentences (window 10)",
        config=_a2d_config(10),
        paper_metrics=_a2d_metrics(46.1, 39.2, 10),
        source=_drive("1evEmZyv82vHHpY-chvoVDjUWWW1disun", "A2D-Sentences, window size 10 (official README)"),
        license=_LICENSE,
        paper=_PAPER,
        description="MTTR trained on A2D-Sentences with 10-frame windows; also evaluated on JHMDB-Sentences.",
    )
)

register(
    ModelEntry(
        name="mttr-swin-t.a2d-w8",
        family="mttr",
        backbone="Video-Swin-T (1x4x4 patch, 3 stages)",
        training_data="A2D-Sentences (window 8)",
        config=_a2d_config(8),
        paper_metrics=_a2d_metrics(44.7, 36.6, 8),
        source=_drive("1lKKeUwm-GZEAW5c3uOrl7e9bbLSPq28S", "A2D-Sentences, window size 8 (official README)"),
        license=_LICENSE,
        paper=_PAPER,
        description="MTTR trained on A2D-Sentences with 8-frame windows; also evaluated on JHMDB-Sentences.",
    )
)

register(
    ModelEntry(
        name="mttr-swin-t.ytvos",
        family="mttr",
        backbone="Video-Swin-T (1x4x4 patch, 3 stages)",
        training_data="Refer-YouTube-VOS (window 12)",
        # the official demo: 24-frame windows overlapping by 6, short side 360, max 640, Ref-YouTube-VOS rule
        config={
            "preprocessing": {"short_side": 360, "max_size": 640, "window": 24, "overlap": 6, "max_text_tokens": 512},
            "protocol": "ytvos",
        },
        paper_metrics=(
            PaperMetric("Ref-YouTube-VOS", "valid", "J&F", 55.32, f"{_README}, Refer-YouTube-VOS table (window 12)"),
        ),
        source=_drive(
            "1R_F0ETKipENiJUnVwarHnkPmUIcKXRaL",
            "Refer-YouTube-VOS, window size 12 (official README; also the torch.hub / demo model)",
            filename="refer-youtube-vos_window-12.pth.tar",
        ),
        license=_LICENSE,
        paper=_PAPER,
        description="MTTR trained on Refer-YouTube-VOS with 12-frame windows; the model of the official demo.",
        default=True,  # a bare "mttr-swin-t" is the general-purpose (demo) model
    )
)
