"""Registry entries for the released Locater checkpoints (no model code imported here).

The official README (leonnnop/Locater) publishes "trained weights" for A2D-S and A2D-S+ in one Baidu Pan share
(``https://pan.baidu.com/s/1xdgYwhFIslr7-XEy9N5keQ``, extraction code ``rvos``), together with the reformatted
A2D-S / JHMDB-S annotations and the A2D-S+ data. The share is not reachable from here, so file names, their number
and checksums are unknown, and no weights are on the Hugging Face Hub (``hub_revision=None``): convert the file with
``lvseg convert locater FILE.pth -o DIR --tokenizer BERT_TOKENIZER_DIR --name NAME``.

No numbers are given: the paper's tables (TPAMI, DOI 10.1109/TPAMI.2023.3262578) could not be read here and the
README reports none. JHMDB-S is evaluated with the A2D-S model (the usual protocol; the README names no JHMDB
weights).

Memory setting: the entries use the pre-refactor sizes (local 1.5, global 2.0 frames of tokens), the defaults of
the code published with the weights (commit d80056d, 2022-03-19; the weights' share is announced 2022-03-18). The
refactor 4333da1 (2022-04-08) swapped them (local 2.0, global 1.5) and changed nothing else in the model code;
which setting reproduces the paper is not known. ``lvseg.load(NAME)`` then set ``config.local_mem_size`` /
``global_mem_size`` in the converted folder's config.json to run the other one (see docs/models/locater.md).
"""

from __future__ import annotations

from ...registry import ModelEntry, SourceCheckpoint, register

_PAPER = (
    "Liang, Wang, Yang, Li, Zhuang, Yang, Local-Global Context Aware Transformer for Language-Guided Video "
    "Segmentation, IEEE TPAMI 2023"
)
_SHARE = "https://pan.baidu.com/s/1xdgYwhFIslr7-XEy9N5keQ"
# config.PRE_REFACTOR_MEMORY, written out: importing config would load torch when the registry is listed
_MEMORY = {"local_mem_size": 1.5, "global_mem_size": 2.0}
_NOTE = (
    "Baidu Pan share of the official README (extraction code 'rvos'; file names and checksums not known here); a "
    "flat state dict, keys possibly prefixed with 'module.'; code MIT"
)


def _register(name: str, training: str, weights: str, description: str, default: bool = False) -> None:
    register(
        ModelEntry(
            name=name,
            family="locater",
            backbone="ViT-B/16 (6 blocks) + BiLSTM over BERT WordPiece ids",
            training_data=training,
            config={"architecture": "locater", **_MEMORY},
            paper_metrics=(),
            source=SourceCheckpoint(url=_SHARE, notes=f"the {weights} weights; {_NOTE}"),
            license="mit",
            paper=_PAPER,
            description=description,
            default=default,
        )
    )


_register(
    "locater-vit-b.a2d",
    "A2D-Sentences",
    "A2D-S",
    "Locater trained on A2D-Sentences; evaluate on A2D-S (A2D-S+ 'NORM' subset) and JHMDB-S. No paper numbers: "
    "the tables could not be read here.",
    default=True,
)
_register(
    "locater-vit-b.a2d-plus",
    "A2D-S+ (built on A2D-Sentences)",
    "A2D-S+",
    "Locater trained for A2D-S+ (MUL / SPAT / TEMP subsets). No paper numbers: the tables could not be read here.",
)
