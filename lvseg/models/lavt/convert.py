"""Convert an official LAVT checkpoint (yz93/LAVT-RIS or Yxxxb/LAVT-RS ``.pth``) to an lvseg model.

Official files are the training script's dict, read with ``torch.load(weights_only=True)`` and an explicit
allow-list (the ``args`` ``argparse.Namespace``, NumPy scalars), so no pickled code runs:

* ``lavt``: ``{'model', 'bert_model', 'optimizer', 'epoch', 'args', 'lr_scheduler'}``: BERT's state dict (no
  pooler) on its own;
* ``lavt_one``: ``{'model', 'optimizer', 'epoch', 'args', 'lr_scheduler'}``: BERT under ``text_encoder.``;
* ``lavt_video`` (LAVT-RS): the ``lavt_one`` layout (``+ 'scaler'``) with a Conv3d patch embedding; recognised by
  that and converted by :mod:`.video_convert` (same renames, plus the 3-D window and PWAM kernels from the tensors).

Key mapping (official -> lvseg), everything else unchanged:

* ``backbone.layers.S.downsample.*`` -> ``backbone.downsamples.S.*``; ``backbone.normS.*`` -> ``backbone.out_norms.S.*``
* ``backbone.layers.S.fusion.*`` -> ``fusions.S.*``; ``backbone.layers.S.res_gate.*`` -> ``gates.S.res_gate.*``
* ``bert_model`` keys ``K`` -> ``text_encoder.K`` (``lavt`` files)
* ``backbone.layers.S.blocks.B.attn.relative_position_index``: deterministic from the window, recomputed by
  lvseg; each one is checked equal before it is dropped.

The Swin size (width, depths, heads) and the window (7 or 12) come from the tensors, the BERT sizes too; the
PWAM head count (``--mha``), which shapes cannot tell, from the file's ``args`` when present (else 1-1-1-1).
A key that maps nowhere, or a tensor whose shape differs from the model built from the config, is an error.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from pathlib import Path
from typing import Any

import torch

from ...errors import CheckpointError
from ..convert_utils import check_converted_tokenizer, count_groups, load_bert_tokenizer, read_official_checkpoint
from ..layers.swin import _relative_position_index
from ..layers.text import BERT_BASE_CONFIG
from .config import SWIN_SIZES, LAVTConfig
from .video_config import VIDEO_SWIN_SIZES, LAVTVideoConfig
from .video_convert import VIDEO_BACKBONES, convert_video_state_dict, infer_video_config, is_video_state

__all__ = [
    "load_official_checkpoint",
    "infer_config",
    "convert_state_dict",
    "convert",
    "convert_to_folder",
    "BACKBONES",
]

logger = logging.getLogger(__name__)

TEXT = "text_encoder."
_INDEX_RX = re.compile(r"backbone\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index$")
_RENAMES = (
    (re.compile(r"^backbone\.layers\.(\d+)\.downsample\."), r"backbone.downsamples.\1."),
    (re.compile(r"^backbone\.norm(\d+)\."), r"backbone.out_norms.\1."),
    (re.compile(r"^backbone\.layers\.(\d+)\.fusion\."), r"fusions.\1."),
    (re.compile(r"^backbone\.layers\.(\d+)\.res_gate\."), r"gates.\1.res_gate."),
)
# --backbone names -> official swin_type
BACKBONES = {"swin-t": "tiny", "swin-s": "small", "swin-b": "base", "swin-l": "large"}


def load_official_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], str, argparse.Namespace | None]:
    """Read an official LAVT checkpoint safely.

    Returns:
        ``(state, variant, args)``: one state dict in the ``lavt_one`` layout (BERT under ``text_encoder.``),
        ``"lavt"`` or ``"lavt_one"`` (the file's layout) and the training ``args`` if the file has them.
    """
    ckpt = read_official_checkpoint(
        path, "an official LAVT checkpoint (the training script's dict with 'model' and, for lavt, 'bert_model')"
    )
    model = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model, dict) or not model or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise CheckpointError(
            f"{path} has no 'model' state dict: it is not an official LAVT checkpoint (LAVT-RIS train.py saves "
            "{'model': ..., 'bert_model': ..., 'args': ...})"
        )
    state = dict(model)
    bert = ckpt.get("bert_model")
    has_text = any(k.startswith(TEXT) for k in state)
    if bert is not None:
        if not isinstance(bert, dict) or not all(isinstance(v, torch.Tensor) for v in bert.values()):
            raise CheckpointError(f"{path}: 'bert_model' is not a state dict")
        if has_text:
            raise CheckpointError(
                f"{path} has BERT weights twice ('bert_model' and text_encoder.* in 'model'): not an official file"
            )
        state.update({TEXT + k: v for k, v in bert.items()})
        variant = "lavt"
    elif has_text:
        variant = "lavt_one"
    else:
        raise CheckpointError(
            f"{path} has no BERT weights (neither a 'bert_model' dict nor text_encoder.* keys in 'model'): "
            "LAVT checkpoints hold both; is this a backbone-only or a truncated file?"
        )
    args = ckpt.get("args")
    return state, variant, args if isinstance(args, argparse.Namespace) else None


def _require(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"key {key!r} is missing: this is not an official LAVT image checkpoint")
    return state[key]


def _fusion_heads(args: argparse.Namespace | None) -> tuple[int, ...]:
    mha = getattr(args, "mha", "") if args is not None else ""
    if not mha:
        return (1, 1, 1, 1)
    try:
        heads = tuple(int(a) for a in str(mha).split("-"))
    except ValueError as exc:
        raise CheckpointError(f"the checkpoint's args.mha {mha!r} is not of the form 'a-b-c-d'") from exc
    if len(heads) != 4:
        raise CheckpointError(f"the checkpoint's args.mha {mha!r} does not give 4 stages")
    return heads


def infer_config(
    state: dict[str, torch.Tensor], variant: str = "lavt", args: argparse.Namespace | None = None, **overrides: Any
) -> LAVTConfig:
    """The :class:`LAVTConfig` of an official state dict (``lavt_one`` layout), from key names and shapes.

    ``overrides`` set other fields (``preprocessing``, ``fusion_heads``, ...).
    """
    patch = _require(state, "backbone.patch_embed.proj.weight")
    if patch.dim() != 4:
        raise CheckpointError(
            f"backbone.patch_embed.proj.weight has shape {tuple(patch.shape)}: not a 2-D Swin (a video LAVT "
            "checkpoint has a Conv3d patch embedding; convert it as lavt_video)"
        )
    stages = count_groups(state, r"backbone\.layers\.(\d+)\.")
    depths = tuple(count_groups(state, rf"backbone\.layers\.{s}\.blocks\.(\d+)\.") for s in range(stages))
    tables = [_require(state, f"backbone.layers.{s}.blocks.0.attn.relative_position_bias_table") for s in range(stages)]
    heads = tuple(int(t.shape[1]) for t in tables)
    rows = int(tables[0].shape[0])
    side = math.isqrt(rows)
    if side * side != rows or side % 2 == 0:
        raise CheckpointError(f"relative-position table of {rows} rows is not (2w-1)^2 for a 2-D window w")
    window = (side + 1) // 2
    if args is not None and hasattr(args, "window12") and bool(args.window12) != (window == 12):
        # the official test also switches to 12 when the pretrained file name says so; the tensors decide
        logger.info("args.window12=%s but the bias tables are for window %d; using %d", args.window12, window, window)
    words = _require(state, TEXT + "embeddings.word_embeddings.weight")
    hidden = int(words.shape[1])
    text = {
        **BERT_BASE_CONFIG,
        "vocab_size": int(words.shape[0]),
        "hidden_size": hidden,
        "num_hidden_layers": count_groups(state, re.escape(TEXT) + r"encoder\.layer\.(\d+)\."),
        "num_attention_heads": max(1, hidden // 64),
        "intermediate_size": int(_require(state, TEXT + "encoder.layer.0.intermediate.dense.weight").shape[0]),
        "max_position_embeddings": int(_require(state, TEXT + "embeddings.position_embeddings.weight").shape[0]),
        "type_vocab_size": int(_require(state, TEXT + "embeddings.token_type_embeddings.weight").shape[0]),
    }
    fields: dict[str, Any] = {
        "embed_dim": int(patch.shape[0]),
        "depths": depths,
        "num_heads": heads,
        "window": window,
        "fusion_heads": _fusion_heads(args),
        "text_encoder": text,
        "variant": variant,
    }
    if "text_encoder" in overrides:
        fields["text_encoder"] = {**fields["text_encoder"], **overrides.pop("text_encoder")}
    fields.update(overrides)
    return LAVTConfig(**fields)


def convert_state_dict(state: dict[str, torch.Tensor], config: LAVTConfig) -> dict[str, torch.Tensor]:
    """Official state dict (``lavt_one`` layout) -> lvseg state dict (see the module docstring)."""
    out: dict[str, torch.Tensor] = {}
    window = (1, config.window, config.window)
    expected_index = _relative_position_index(window)
    for key, value in state.items():
        if _INDEX_RX.match(key):
            if not torch.equal(value.to(expected_index.dtype), expected_index):
                raise CheckpointError(f"{key} differs from the index of a {config.window}x{config.window} window")
            continue
        if key.startswith(TEXT + "pooler."):
            raise CheckpointError(f"{key}: official LAVT removes BERT's pooler, so this is not an official LAVT file")
        new = key
        for rx, repl in _RENAMES:
            new = rx.sub(repl, new)
        out[new] = value
    return out


def convert(
    checkpoint_path: str | Path, **overrides: Any
) -> tuple[dict[str, torch.Tensor], LAVTConfig | LAVTVideoConfig]:
    """Read an official checkpoint; returns (lvseg state dict, config). ``overrides`` go to :func:`infer_config`
    (or :func:`~.video_convert.infer_video_config` for a ``lavt_video`` file)."""
    state, variant, args = load_official_checkpoint(checkpoint_path)
    if is_video_state(state):
        video = infer_video_config(state, vars(args) if args is not None else {}, **overrides)
        return convert_video_state_dict(state, video), video
    config = infer_config(state, variant, args, **overrides)
    return convert_state_dict(state, config), config


def _entry_overrides(entry: Any) -> dict[str, Any]:
    from ..base import PreprocessConfig

    overrides = dict(entry.config) if entry is not None else {}
    if isinstance(overrides.get("preprocessing"), dict):
        overrides["preprocessing"] = PreprocessConfig(**overrides["preprocessing"])
    return overrides


def convert_to_folder(
    checkpoint_path: str | Path,
    output_dir: str | Path,
    *,
    tokenizer: Any = None,
    backbone: str | None = None,
    name: str | None = None,
) -> Path:
    """Convert an official ``lavt`` / ``lavt_one`` checkpoint and write a Hub-format folder (config, safetensors,
    WordPiece tokenizer, card).

    Args:
        tokenizer: a folder with bert-base-uncased's tokenizer files (``vocab.txt``), a ``transformers``
            tokenizer, or ``None`` to fetch ``bert-base-uncased``'s from the Hugging Face Hub.
        backbone: ``swin-t``, ``swin-s``, ``swin-b`` or ``swin-l``; checked against the file if given (the file
            decides).
        name: a registry name (e.g. ``lavt-swin-b.refcoco``) whose settings go into config.json and whose paper
            metrics and source go into the model card.
    """
    from ... import hub
    from ...registry import get_entry
    from .model import LAVT

    entry = get_entry(name) if name else None
    if entry is not None and entry.family != "lavt":
        raise CheckpointError(f"{name!r} is a {entry.family} model, not a LAVT one")
    if backbone is not None and backbone not in BACKBONES and backbone not in VIDEO_BACKBONES:
        known = ", ".join([*BACKBONES, *VIDEO_BACKBONES])
        raise CheckpointError(f"unknown LAVT backbone {backbone!r}; use one of {known}")
    # the tokenizer first: a missing or empty one fails in seconds, not after the checkpoint is read
    text_tokenizer = load_bert_tokenizer(tokenizer)
    state, variant, args = load_official_checkpoint(checkpoint_path)  # memory-mapped: shapes only so far
    video = is_video_state(state)
    entry_video = entry is not None and entry.config.get("architecture") == "lavt_video"
    if entry is not None and entry_video != video:
        kinds = ("an image", "a video")
        raise CheckpointError(
            f"{name!r} is {kinds[entry_video]} LAVT model but {checkpoint_path} holds {kinds[video]} one "
            "(a Conv3d patch embedding marks the video model): pass the matching --name"
        )
    if video:
        return _video_to_folder(
            state, args, text_tokenizer, tokenizer, entry, backbone, checkpoint_path, output_dir, name
        )
    if backbone is not None and backbone in VIDEO_BACKBONES:
        raise CheckpointError(f"--backbone {backbone} is a video backbone but {checkpoint_path} holds an image LAVT")
    config = infer_config(state, variant, args, **_entry_overrides(entry))
    if backbone is not None:
        size = BACKBONES[backbone]
        embed, depths, heads = SWIN_SIZES[size]
        if (config.embed_dim, tuple(config.depths), tuple(config.num_heads)) != (embed, depths, heads):
            raise CheckpointError(
                f"--backbone {backbone} (Swin-{size}: width {embed}, depths {depths}) does not match the checkpoint "
                f"(width {config.embed_dim}, depths {config.depths}, heads {config.num_heads})"
            )
    check_converted_tokenizer(text_tokenizer, config.text_encoder, tokenizer)
    converted = convert_state_dict(state, config)
    model = LAVT(config, tokenizer=text_tokenizer)
    hub.load_state_dict_strict(model, converted, str(checkpoint_path))
    logger.info("converted %s (%s layout, %d tensors)", checkpoint_path, variant, len(converted))
    # the weights come from GPL-3.0 code: the card says so even without a registry name
    card_entry = entry or _unnamed_entry(config)
    return hub.save_pretrained(model, output_dir, entry=card_entry, name=name or card_entry.name)


def _unnamed_entry(config: LAVTConfig) -> Any:
    """A registry-style description of a checkpoint converted without ``--name`` (for its model card)."""
    from ...registry import ModelEntry, SourceCheckpoint

    size = next((k for k, v in SWIN_SIZES.items() if v[0] == config.embed_dim and v[1] == tuple(config.depths)), "")
    backbone = f"Swin-{size[:1].upper()}" if size else f"Swin (width {config.embed_dim})"
    return ModelEntry(
        name="lavt-converted",
        family="lavt",
        backbone=f"{backbone} (window {config.window}) + BERT",
        training_data="unknown (an official LAVT checkpoint converted without --name)",
        source=SourceCheckpoint(url="https://github.com/yz93/LAVT-RIS", notes="official code GPL-3.0"),
        license="gpl-3.0",
        description=f"LAVT ({config.variant} layout) converted from an official checkpoint.",
    )


def _video_to_folder(
    state: dict[str, torch.Tensor],
    args: argparse.Namespace | None,
    text_tokenizer: Any,
    tokenizer_argument: Any,
    entry: Any,
    backbone: str | None,
    checkpoint_path: str | Path,
    output_dir: str | Path,
    name: str | None,
) -> Path:
    """:func:`convert_to_folder` for a ``lavt_video`` (LAVT-RS) checkpoint."""
    from ... import hub
    from .video import LAVTVideo

    config = infer_video_config(state, vars(args) if args is not None else {}, **_entry_overrides(entry))
    if backbone is not None:
        size = VIDEO_BACKBONES.get(backbone)
        if size is None:
            raise CheckpointError(
                f"--backbone {backbone} is an image backbone but {checkpoint_path} holds a video LAVT"
            )
        embed, depths, heads, _ = VIDEO_SWIN_SIZES[size]
        if (config.embed_dim, tuple(config.depths), tuple(config.num_heads)) != (embed, depths, heads):
            raise CheckpointError(
                f"--backbone {backbone} (Video Swin-{size}: width {embed}, depths {depths}) does not match the "
                f"checkpoint (width {config.embed_dim}, depths {config.depths}, heads {config.num_heads})"
            )
    check_converted_tokenizer(text_tokenizer, config.text_encoder, tokenizer_argument)
    converted = convert_video_state_dict(state, config)
    model = LAVTVideo(config, tokenizer=text_tokenizer)
    hub.load_state_dict_strict(model, converted, str(checkpoint_path))
    logger.info(
        "converted %s (lavt_video, window %s, last-stage gate %s, %d tensors)",
        checkpoint_path,
        config.window,
        config.last_stage_gate,
        len(converted),
    )
    return hub.save_pretrained(model, output_dir, entry=entry, name=name)
