"""Official Locater checkpoints (leonnnop/Locater, ``VLFTrans``) -> lvseg ``locater`` weights and config.

The official evaluation passes ``torch.load(snapshot)`` straight to ``VLFTrans.load_state_dict``, so a checkpoint
is a flat state dict (369 tensors for the released architecture), its keys bare or prefixed with ``module.``
(DDP). The official loader **silently keeps the random initialisation** of any tensor whose shape differs; this
converter fails instead, naming every missing, unexpected and mis-shaped key.

lvseg keeps the official parameter names, so the mapping is the identity once the prefix is stripped. Everything
the architecture needs is read from the tensors (input size from the position embedding, ViT and fusion depths,
fusion stages, vocabulary rows, LSTM layers, MLP ratio); head counts are not visible in shapes and are the
official ones (12 / 8). The memory sizes are not parameters either: they come from the registry entry
(``--name``) or default to the official HEAD setting (local 2.0, global 1.5).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ...errors import CheckpointError
from ..convert_utils import count_groups, load_bert_tokenizer, read_official_checkpoint
from .config import LocaterConfig

__all__ = ["BACKBONES", "infer_config", "convert_state_dict", "convert", "convert_to_folder", "strip_prefix"]

logger = logging.getLogger(__name__)

BACKBONES = ("vit-b/16",)
_EXPECTED = "an official Locater checkpoint (a flat state dict of VLFTrans, keys bare or prefixed with 'module.')"


def strip_prefix(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Drop DDP's ``module.`` prefix from every key that has it (the official loader accepts either form)."""
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"the file does not hold a state dict: expected {_EXPECTED}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"entry {key!r} ({type(value).__name__}) is not a tensor: expected {_EXPECTED}; a training "
                "checkpoint with optimizer state must be reduced to the model's state dict first"
            )
        bare = key[len("module.") :] if key.startswith("module.") else key
        if bare in out:
            raise CheckpointError(f"the checkpoint holds {bare!r} twice (with and without the 'module.' prefix)")
        out[bare] = value
    return out


def _require(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"the checkpoint lacks {key!r}, which every Locater checkpoint has: expected {_EXPECTED}")
    return state[key]


def infer_config(state: dict[str, torch.Tensor], **overrides: Any) -> LocaterConfig:
    """The :class:`LocaterConfig` an official state dict (prefix stripped) was built with, from its shapes;
    ``overrides`` set the other fields (memory sizes, preprocessing, ...), e.g. a registry entry's config."""
    pos = _require(state, "vision_encoder.pos_embed")
    patch = _require(state, "vision_encoder.patch_embed.proj.weight")
    emb = _require(state, "lang_encoder.emb.weight")
    fc1 = _require(state, "vision_encoder.blocks.0.mlp.fc1.weight")
    tokens = int(pos.shape[1]) - 1
    grid = int(round(tokens**0.5))
    if grid * grid != tokens or tuple(patch.shape[1:]) != (3, 16, 16):
        raise CheckpointError(
            f"position embedding {tuple(pos.shape)} and patch embedding {tuple(patch.shape)} are not a square grid "
            "of 16x16-pixel patches of RGB frames, as every Locater model has"
        )
    dim = int(pos.shape[2])
    fields: dict[str, Any] = dict(
        image_size=grid * 16,
        embed_dim=dim,
        vision_depth=count_groups(state, r"vision_encoder\.blocks\.(\d+)\."),
        fusion_stages=count_groups(state, r"trans_fusion\.(\d+)\."),
        fuse_depth=count_groups(state, r"trans_fusion\.0\.blocks\.(\d+)\."),
        post_depth=count_groups(state, r"trans_fusion\.0\.pos_blocks\.(\d+)\."),
        mlp_ratio=int(fc1.shape[0]) / dim,
        vocab_size=int(emb.shape[0]),
        word_dim=int(emb.shape[1]),
        text_layers=count_groups(state, r"lang_encoder\.lang_model\.weight_ih_l(\d+)$"),
    )
    fields.update(overrides)
    try:
        return LocaterConfig(**fields)
    except TypeError as exc:
        raise CheckpointError(f"cannot build a Locater config from the checkpoint: {exc}") from exc


def convert_state_dict(state: dict[str, torch.Tensor], config: LocaterConfig) -> dict[str, torch.Tensor]:
    """Check an official state dict (prefix stripped) against the model ``config`` describes: the same names, the
    same shapes, nothing missing and nothing left over; returns it with float tensors as float32."""
    from .model import Locater

    with torch.device("meta"):
        expected = {k: v.shape for k, v in Locater(config).state_dict().items()}
    unmapped = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k])})"
        for k in state
        if k in expected and state[k].shape != expected[k]
    ]
    if unmapped or missing or wrong:

        def show(items: list[str]) -> str:
            return ", ".join(items[:10]) + (f" ... and {len(items) - 10} more" if len(items) > 10 else "")

        parts = []
        if unmapped:
            parts.append(f"keys with no Locater counterpart ({len(unmapped)}): {show(unmapped)}")
        if missing:
            parts.append(f"keys the model needs but the checkpoint lacks ({len(missing)}): {show(missing)}")
        if wrong:
            parts.append(
                f"shape mismatches ({len(wrong)}; the official loader would silently keep random weights for these): "
                f"{show(wrong)}"
            )
        raise CheckpointError("cannot convert the Locater checkpoint: " + "; ".join(parts))
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def convert(checkpoint_path: str | Path, **overrides: Any) -> tuple[dict[str, torch.Tensor], LocaterConfig]:
    """Read an official ``.pth`` (without running pickled code) -> (lvseg state dict, config)."""
    raw = read_official_checkpoint(checkpoint_path, _EXPECTED)
    if isinstance(raw, dict) and not any(isinstance(v, torch.Tensor) for v in raw.values()):
        wrapped = [k for k in ("state_dict", "model") if isinstance(raw.get(k), dict)]
        if wrapped:
            logger.info("reading the state dict under %r of %s", wrapped[0], checkpoint_path)
            raw = raw[wrapped[0]]
    state = strip_prefix(raw)
    config = infer_config(state, **overrides)
    return convert_state_dict(state, config), config


def _entry_overrides(entry: Any) -> dict[str, Any]:
    if entry is None:
        return {}
    return {k: v for k, v in entry.config.items() if k not in ("architecture",)}


def convert_to_folder(
    checkpoint_path: str | Path,
    output_dir: str | Path,
    *,
    tokenizer: Any = None,
    backbone: str | None = None,
    name: str | None = None,
) -> Path:
    """Convert an official Locater checkpoint and write a Hub-format folder (config, safetensors, WordPiece
    tokenizer, card).

    Args:
        tokenizer: a folder with bert-base-uncased's tokenizer files (``vocab.txt``), a ``transformers`` tokenizer,
            or ``None`` to fetch ``bert-base-uncased``'s from the Hugging Face Hub (or its cache).
        backbone: ``vit-b/16`` (the only Locater backbone; checked against the file if given).
        name: a registry name (e.g. ``locater-vit-b.a2d-plus``) whose settings (memory sizes) go into config.json
            and whose source goes into the model card.
    """
    from ... import hub
    from ...registry import get_entry
    from .model import Locater

    entry = get_entry(name) if name else None
    if entry is not None and entry.family != "locater":
        raise CheckpointError(f"{name!r} is a {entry.family} model, not a Locater one")
    if backbone is not None and backbone.lower() not in BACKBONES:
        raise CheckpointError(f"unknown Locater backbone {backbone!r}; Locater has one: {', '.join(BACKBONES)}")
    text_tokenizer = load_bert_tokenizer(tokenizer)  # first: a missing tokenizer fails in seconds
    state, config = convert(checkpoint_path, **_entry_overrides(entry))
    if backbone is not None and (config.embed_dim, config.vision_depth) != (768, 6):
        raise CheckpointError(
            f"--backbone {backbone}: the checkpoint's ViT has width {config.embed_dim} and {config.vision_depth} "
            "blocks, not the released ViT-B/16 truncated to 6 blocks"
        )
    model = Locater(config, tokenizer=text_tokenizer)
    hub.load_state_dict_strict(model, state, str(checkpoint_path))
    logger.info("converted %s (%d tensors)", checkpoint_path, len(state))
    card_entry = entry or _unnamed_entry(config)
    return hub.save_pretrained(model, output_dir, entry=card_entry, name=name or card_entry.name)


def _unnamed_entry(config: LocaterConfig) -> Any:
    """A registry-style description of a checkpoint converted without ``--name`` (for its model card)."""
    from ...registry import ModelEntry, SourceCheckpoint

    return ModelEntry(
        name="locater-converted",
        family="locater",
        backbone=f"ViT (width {config.embed_dim}, {config.vision_depth} blocks) + BiLSTM",
        training_data="unknown (an official Locater checkpoint converted without --name)",
        config={"local_mem_size": config.local_mem_size, "global_mem_size": config.global_mem_size},
        source=SourceCheckpoint(url="https://github.com/leonnnop/Locater", notes="official code MIT"),
        license="mit",
        description="Locater converted from an official checkpoint.",
    )
