"""Convert an official MTTR checkpoint (mttr2021/MTTR ``.pth.tar``) to an lvseg model.

Official files are either the trainer's dict ``{'epoch', 'total_epochs', 'model_state_dict',
'optimizer_state_dict', 'scheduler_state_dict', 'grad_scaler_state_dict', 'best_mAP' | 'best_loss'}`` or a bare
state dict. They are read with ``torch.load(weights_only=True)`` and an explicit allow-list (``collections.Counter``
of the LR scheduler's milestones and NumPy scalars of the best metric), so no arbitrary pickled code runs.

The lvseg model keeps the official parameter names, so the mapping is the identity except for what is dropped:

* ``transformer.text_encoder.embeddings.position_ids`` / ``token_type_ids``: buffers saved by transformers 4.11
  (the official version) that current transformers no longer stores (the "stale position_ids" strict-load error);
* ``backbone.layers.S.blocks.B.attn.relative_position_index``: deterministic from the window size, recomputed
  by lvseg (each one is checked equal before it is dropped).

The architecture (Swin width/depths/heads, model width, queries, layers, text encoder sizes) is inferred from the
shapes; attention-head counts, which shapes cannot tell, are the official ones unless given. Any other key left
over, or missing, is an error that names it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from ...errors import CheckpointError
from ..convert_utils import (
    check_converted_tokenizer,
    count_groups,
    load_roberta_tokenizer,
    read_official_checkpoint,
)
from ..layers.swin import _relative_position_index
from .config import MTTRConfig

__all__ = ["load_official_checkpoint", "infer_config", "convert_state_dict", "convert", "convert_to_folder"]

logger = logging.getLogger(__name__)

TEXT = "transformer.text_encoder."
_DROPPED_TEXT_BUFFERS = (TEXT + "embeddings.position_ids", TEXT + "embeddings.token_type_ids")
_INDEX_RX = re.compile(r"backbone\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index$")


def load_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official MTTR checkpoint safely and return its model state dict (wrapped or plain layout)."""
    ckpt = read_official_checkpoint(
        path, "an official MTTR checkpoint (the trainer's dict with 'model_state_dict', or a bare state dict)"
    )
    if isinstance(ckpt, dict):
        for key in ("model_state_dict", "model", "state_dict"):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict) or not ckpt or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(
            f"{path} holds neither a state dict nor a dict with a 'model_state_dict' state dict: it is not an "
            "official MTTR checkpoint"
        )
    return dict(ckpt)


def _require(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"key {key!r} is missing: this is not an official MTTR checkpoint")
    return state[key]


def infer_config(state: dict[str, torch.Tensor], **overrides: Any) -> MTTRConfig:
    """The :class:`MTTRConfig` of an official state dict, from its key names and shapes.

    ``overrides`` set fields that shapes cannot tell (``nheads``, ``num_heads``, ``text_encoder`` heads) or
    inference settings (``preprocessing``, ``protocol``).
    """
    patch = _require(state, "backbone.patch_embed.proj.weight")
    if patch.dim() != 5 or tuple(patch.shape[2:]) != (1, 4, 4):
        raise CheckpointError(
            f"backbone.patch_embed.proj.weight has shape {tuple(patch.shape)}; MTTR's Video Swin uses a (1, 4, 4) "
            "patch (a Kinetics (2, 4, 4) kernel must be summed over time first)"
        )
    stages = count_groups(state, r"backbone\.layers\.(\d+)\.")
    depths = tuple(count_groups(state, rf"backbone\.layers\.{s}\.blocks\.(\d+)\.") for s in range(stages))
    heads = tuple(
        int(_require(state, f"backbone.layers.{s}.blocks.0.attn.relative_position_bias_table").shape[1])
        for s in range(stages)
    )
    table = int(state["backbone.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0])
    if table != 15 * 13 * 13:
        raise CheckpointError(f"relative-position table of {table} rows; MTTR's (8, 7, 7) window needs 2535")
    queries = _require(state, "obj_queries.weight")
    words = _require(state, TEXT + "embeddings.word_embeddings.weight")
    positions = _require(state, TEXT + "embeddings.position_embeddings.weight")
    hidden = int(words.shape[1])
    text = {
        "vocab_size": int(words.shape[0]),
        "hidden_size": hidden,
        "num_hidden_layers": count_groups(state, re.escape(TEXT) + r"encoder\.layer\.(\d+)\."),
        "num_attention_heads": max(1, hidden // 64),
        "intermediate_size": int(_require(state, TEXT + "encoder.layer.0.intermediate.dense.weight").shape[0]),
        "max_position_embeddings": int(positions.shape[0]),
        "type_vocab_size": int(_require(state, TEXT + "embeddings.token_type_embeddings.weight").shape[0]),
    }
    from ..layers.text import ROBERTA_BASE_CONFIG

    fields: dict[str, Any] = {
        "embed_dim": int(patch.shape[0]),
        "depths": depths,
        "num_heads": heads,
        "d_model": int(queries.shape[1]),
        "num_queries": int(queries.shape[0]),
        "num_encoder_layers": count_groups(state, r"transformer\.encoder\.layers\.(\d+)\."),
        "num_decoder_layers": count_groups(state, r"transformer\.decoder\.layers\.(\d+)\."),
        "dim_feedforward": int(_require(state, "transformer.encoder.layers.0.linear1.weight").shape[0]),
        "mask_kernels_dim": int(_require(state, "instance_kernels_head.layers.1.weight").shape[0]),
        "text_encoder": {**ROBERTA_BASE_CONFIG, **text},
    }
    if "text_encoder" in overrides:
        fields["text_encoder"] = {**fields["text_encoder"], **overrides.pop("text_encoder")}
    fields.update(overrides)
    return MTTRConfig(**fields)


def convert_state_dict(state: dict[str, torch.Tensor], config: MTTRConfig) -> dict[str, torch.Tensor]:
    """Official state dict -> lvseg state dict (see the module docstring for what is dropped and checked)."""
    out: dict[str, torch.Tensor] = {}
    window = tuple(config.swin_window)
    expected_index = _relative_position_index(window)  # type: ignore[arg-type]
    for key, value in state.items():
        if key in _DROPPED_TEXT_BUFFERS:
            continue
        if _INDEX_RX.match(key):
            if not torch.equal(value.to(expected_index.dtype), expected_index):
                raise CheckpointError(f"{key} differs from the index of a {window} window: unexpected checkpoint")
            continue
        if key.startswith(TEXT + "pooler."):
            raise CheckpointError(
                f"{key}: official MTTR deletes the RoBERTa pooler, so this checkpoint is not an official MTTR one"
            )
        out[key] = value
    return out


def convert(checkpoint_path: str | Path, **overrides: Any) -> tuple[dict[str, torch.Tensor], MTTRConfig]:
    """Read an official checkpoint; returns (lvseg state dict, config). ``overrides`` go to :func:`infer_config`."""
    state = load_official_checkpoint(checkpoint_path)
    config = infer_config(state, **overrides)
    return convert_state_dict(state, config), config


def _entry_overrides(entry: Any) -> dict[str, Any]:
    """The config fields a registry entry sets (preprocessing and protocol), as MTTRConfig arguments."""
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
    """Convert an official checkpoint and write a Hub-format folder (config, safetensors, tokenizer, card).

    Args:
        tokenizer: a folder with RoBERTa tokenizer files, a ``transformers`` tokenizer, or ``None`` to fetch
            ``roberta-base``'s from the Hugging Face Hub.
        backbone: only ``"swin-t"`` / ``"video-swin-t"`` exists for MTTR (checked against the file if given).
        name: a registry name (``mttr-swin-t.a2d``, ``mttr-swin-t.a2d-w8``, ``mttr-swin-t.ytvos``) whose
            preprocessing (frames per window, resize) and inference protocol go into config.json and whose paper
            metrics and source go into the model card.
    """
    from ... import hub
    from ...registry import get_entry
    from .model import MTTR

    entry = get_entry(name) if name else None
    if entry is not None and entry.family != "mttr":
        raise CheckpointError(f"{name!r} is a {entry.family} model, not an MTTR one")
    if backbone not in (None, "swin-t", "video-swin-t"):
        raise CheckpointError(f"MTTR was released with a Video Swin-T backbone only, got --backbone {backbone!r}")
    # the tokenizer first: a missing or empty one fails in seconds, not after the checkpoint is read and converted
    text_tokenizer = load_roberta_tokenizer(tokenizer)
    official = load_official_checkpoint(checkpoint_path)  # memory-mapped: shapes only so far
    config = infer_config(official, **_entry_overrides(entry))
    check_converted_tokenizer(text_tokenizer, config.text_encoder, tokenizer)
    state = convert_state_dict(official, config)
    model = MTTR(config, tokenizer=text_tokenizer)
    hub.load_state_dict_strict(model, state, str(checkpoint_path))
    logger.info("converted %s (%d tensors)", checkpoint_path, len(state))
    return hub.save_pretrained(model, output_dir, entry=entry, name=name)
