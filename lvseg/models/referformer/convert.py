"""Convert an official ReferFormer checkpoint (wjn922/ReferFormer ``.pth``) to an lvseg model.

The official files hold ``{'model': state_dict, 'optimizer', 'lr_scheduler', 'epoch', 'args': Namespace}``
(or a bare state dict). They are read with ``torch.load(weights_only=True)`` and an explicit allow-list
(``argparse.Namespace``, ``collections.Counter``), so no arbitrary pickled code runs.

Key mapping (everything not listed keeps its name, which is the official one):

* ``backbone.0.body.*`` -> ``backbone.*``; 2-D Swin ``layers.S.downsample.*`` -> ``downsamples.S.*`` and
  ``normS.*`` -> ``out_norms.S.*`` (Video Swin already uses ``downsamples.S``).
* dropped: ``transformer.decoder.bbox_embed.*`` (aliases of ``bbox_embed.*``, checked equal),
  ``text_encoder.embeddings.position_ids`` / ``token_type_ids`` (buffers of old transformers versions),
  Swin ``relative_position_index`` (recomputed; checked equal), ``num_batches_tracked``, thop's
  ``total_ops`` / ``total_params``.

The architecture (backbone, sizes, text encoder) is inferred from the tensor shapes; ``args`` is only used for
the few hyper-parameters that shapes cannot tell (attention heads, dynamic-mask channels).
Any key left over, or missing for the inferred architecture, is an error that names it.
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
from ..convert_utils import (
    check_converted_tokenizer,
    count_groups,
    load_roberta_tokenizer,
    read_official_checkpoint,
)
from ..layers.swin import _relative_position_index
from .config import SWIN_PRESETS, ReferFormerConfig, SwinConfig

__all__ = ["convert", "convert_state_dict", "convert_to_folder", "load_official_checkpoint", "detect_backbone"]

logger = logging.getLogger(__name__)

_IGNORED_SUFFIXES = ("total_ops", "total_params", "num_batches_tracked")


def load_official_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an official ``.pth`` safely; returns (model state dict, args as a dict or {})."""
    ckpt = read_official_checkpoint(
        path, "an official ReferFormer .pth (torch.save of {'model': ..., 'args': argparse.Namespace, ...})"
    )
    if isinstance(ckpt, dict) and "model" in ckpt and isinstance(ckpt["model"], dict):
        state, args = ckpt["model"], ckpt.get("args")
    elif isinstance(ckpt, dict) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state, args = ckpt, None
    else:
        raise CheckpointError(f"{path} holds neither a state dict nor a dict with a 'model' state dict")
    return dict(state), (vars(args) if isinstance(args, argparse.Namespace) else dict(args or {}))


def detect_backbone(state: dict[str, torch.Tensor]) -> str:
    """The lvseg backbone name of an official state dict, from its keys and shapes."""
    p = "backbone.0.body."
    if p + "conv1.weight" in state:
        blocks = count_groups(state, re.escape(p) + r"layer3\.(\d+)\.")
        return {6: "resnet50", 23: "resnet101"}.get(blocks) or _fail(f"ResNet with {blocks} layer3 blocks")
    if p + "patch_embed.proj.weight" not in state:
        raise CheckpointError("no backbone.0.body.* keys: this is not an official ReferFormer checkpoint")
    video = state[p + "patch_embed.proj.weight"].dim() == 5
    dim = state[p + "patch_embed.proj.weight"].shape[0]
    depth3 = count_groups(state, re.escape(p) + r"layers\.2\.blocks\.(\d+)\.")
    prefix = "video-swin" if video else "swin"
    for name, (e, depths, _, _) in SWIN_PRESETS.items():
        if name.startswith(prefix + "-") and e == dim and depths[2] == depth3 and (video or name.startswith("swin")):
            return name
    return prefix  # a non-standard size; the sizes are read from the shapes


def _fail(what: str) -> str:
    raise CheckpointError(f"unsupported backbone in the checkpoint: {what}")


def _swin_config(state: dict[str, torch.Tensor], backbone: str) -> SwinConfig:
    p = "backbone.0.body."
    video = backbone.startswith("video")
    n_stages = count_groups(state, re.escape(p) + r"layers\.(\d+)\.")
    depths = tuple(count_groups(state, re.escape(p) + rf"layers\.{s}\.blocks\.(\d+)\.") for s in range(n_stages))
    heads = tuple(state[f"{p}layers.{s}.blocks.0.attn.relative_position_bias_table"].shape[1] for s in range(n_stages))
    table = state[f"{p}layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
    if video:  # (2Wd-1) * 13 * 13 with the official 7x7 spatial window
        wd = (table // 169 + 1) // 2
        window = (wd, 7, 7)
    else:
        ws = (math.isqrt(table) + 1) // 2
        window = (1, ws, ws)
    if (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1) != table:
        raise CheckpointError(f"cannot infer the Swin window from a relative-position table of {table} rows")
    preset = SWIN_PRESETS.get(backbone)
    return SwinConfig(
        embed_dim=int(state[p + "patch_embed.proj.weight"].shape[0]),
        depths=depths,
        num_heads=heads,
        window=window,
        drop_path_rate=preset[3] if preset else 0.2,
    )


def _text_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    from ..layers.text import ROBERTA_BASE_CONFIG

    p = "text_encoder."
    hidden = int(state[p + "embeddings.word_embeddings.weight"].shape[1])
    cfg = dict(ROBERTA_BASE_CONFIG)
    cfg.update(
        vocab_size=int(state[p + "embeddings.word_embeddings.weight"].shape[0]),
        hidden_size=hidden,
        num_hidden_layers=count_groups(state, re.escape(p) + r"encoder\.layer\.(\d+)\."),
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=int(state[p + "encoder.layer.0.intermediate.dense.weight"].shape[0]),
        max_position_embeddings=int(state[p + "embeddings.position_embeddings.weight"].shape[0]),
        type_vocab_size=int(state[p + "embeddings.token_type_embeddings.weight"].shape[0]),
    )
    return cfg


def infer_config(
    state: dict[str, torch.Tensor], args: dict[str, Any], backbone: str | None = None
) -> ReferFormerConfig:
    """The :class:`ReferFormerConfig` an official state dict was built with."""
    detected = detect_backbone(state)
    if backbone is not None and backbone != detected:
        raise CheckpointError(f"backbone {backbone!r} was given but the checkpoint holds a {detected} backbone")
    name = detected
    swin = _swin_config(state, name) if "swin" in name else None
    try:
        hidden = int(state["query_embed.weight"].shape[1])
        nheads = int(args.get("nheads", 8))
        n_levels = int(state["transformer.level_embed"].shape[0])
        enc_weights = state["transformer.encoder.layers.0.self_attn.attention_weights.weight"]
        dec_weights = state["transformer.decoder.layers.0.cross_attn.attention_weights.weight"]
        enc_points = enc_weights.shape[0] // (nheads * n_levels)
        dec_points = dec_weights.shape[0] // (nheads * n_levels)
        config = ReferFormerConfig(
            backbone=name,
            swin=swin,
            hidden_dim=hidden,
            num_queries=int(state["query_embed.weight"].shape[0]),
            enc_layers=count_groups(state, r"transformer\.encoder\.layers\.(\d+)\."),
            dec_layers=count_groups(state, r"transformer\.decoder\.layers\.(\d+)\."),
            dim_feedforward=int(state["transformer.encoder.layers.0.linear1.weight"].shape[0]),
            dropout=float(args.get("dropout", 0.1)),
            nheads=nheads,
            num_feature_levels=n_levels,
            enc_n_points=int(enc_points),
            dec_n_points=int(dec_points),
            num_classes=int(state["class_embed.0.weight"].shape[0]),
            mask_dim=int(state["pixel_decoder.mask_features.weight"].shape[0]),
            controller_layers=int(args.get("controller_layers", 3)),
            dynamic_mask_channels=int(args.get("dynamic_mask_channels", 8)),
            rel_coord=bool(args.get("rel_coord", True)),
            text_encoder=_text_config(state),
        )
    except KeyError as exc:
        raise CheckpointError(f"the checkpoint lacks {exc}, which every ReferFormer checkpoint has") from exc
    if "class_embed.weight" in state:
        raise CheckpointError("this checkpoint was trained without --with_box_refine, which lvseg does not support")
    return config


def _map_key(key: str) -> str:
    if key.startswith("backbone.0.body."):
        key = "backbone." + key[len("backbone.0.body.") :]
        key = re.sub(r"^backbone\.layers\.(\d+)\.downsample\.", r"backbone.downsamples.\1.", key)
        key = re.sub(r"^backbone\.norm(\d+)\.", r"backbone.out_norms.\1.", key)
    return key


def convert_state_dict(state: dict[str, torch.Tensor], config: ReferFormerConfig) -> dict[str, torch.Tensor]:
    """Map an official state dict to lvseg names; checks aliases and recomputable buffers, fails on leftovers.

    Meta tensors are accepted (a dry run that checks names and shapes only).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(_IGNORED_SUFFIXES) or key in (
            "text_encoder.embeddings.position_ids",
            "text_encoder.embeddings.token_type_ids",
        ):
            continue
        if key.startswith("transformer.decoder.bbox_embed."):
            twin = key[len("transformer.decoder.") :]
            if twin not in state or (not value.is_meta and not torch.equal(state[twin], value)):
                raise CheckpointError(f"{key} is not an exact copy of {twin}; the checkpoint is inconsistent")
            continue
        if key.endswith("relative_position_index"):
            window = tuple(config.swin.window) if config.swin else ()
            expected = _relative_position_index(window)  # type: ignore[arg-type]
            same = value.is_meta or torch.equal(value.cpu().long(), expected)
            if value.shape != expected.shape or not same:
                raise CheckpointError(f"{key} {tuple(value.shape)} differs from the index of window {window}")
            continue
        out[_map_key(key)] = value
    _check_keys(out, config)
    return out


def _expected_shapes(config: ReferFormerConfig) -> dict[str, torch.Size]:
    from .model import ReferFormer

    with torch.device("meta"):
        model = ReferFormer(config)
    return {k: v.shape for k, v in model.state_dict().items()}


def _check_keys(state: dict[str, torch.Tensor], config: ReferFormerConfig) -> None:
    expected = _expected_shapes(config)
    unmapped = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k])})"
        for k in state
        if k in expected and state[k].shape != expected[k]
    ]
    if unmapped or missing or wrong:
        parts = []
        if unmapped:
            parts.append(f"keys with no lvseg counterpart: {unmapped[:10]}{' ...' if len(unmapped) > 10 else ''}")
        if missing:
            parts.append(
                f"keys the {config.backbone} model needs but the checkpoint lacks: {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}"
            )
        if wrong:
            parts.append(f"shape mismatches: {wrong[:10]}")
        raise CheckpointError("cannot convert the ReferFormer checkpoint: " + "; ".join(parts))


def convert(
    checkpoint_path: str | Path, backbone: str | None = None
) -> tuple[dict[str, torch.Tensor], ReferFormerConfig]:
    """Read an official ReferFormer checkpoint; returns (lvseg state dict, config).

    ``backbone`` (e.g. ``"swin-l"``) checks the inferred backbone; it is inferred from the keys otherwise.
    """
    state, args = load_official_checkpoint(checkpoint_path)
    config = infer_config(state, args, backbone)
    logger.info("converting a ReferFormer %s checkpoint (%d tensors)", config.backbone, len(state))
    return convert_state_dict(state, config), config


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
        name: a registry name (e.g. ``"referformer-swin-l.joint"``) whose paper metrics and source go into the
            model card.
    """
    from ... import hub
    from ...registry import get_entry
    from .model import ReferFormer

    entry = get_entry(name) if name else None
    # the tokenizer first: a missing or empty one fails in seconds, not after the checkpoint is read and converted
    text_tokenizer = load_roberta_tokenizer(tokenizer)
    official, args = load_official_checkpoint(checkpoint_path)  # memory-mapped: shapes only so far
    config = infer_config(official, args, backbone)
    check_converted_tokenizer(text_tokenizer, config.text_encoder, tokenizer)
    logger.info("converting a ReferFormer %s checkpoint (%d tensors)", config.backbone, len(official))
    state = convert_state_dict(official, config)
    model = ReferFormer(config, tokenizer=text_tokenizer)
    model.load_state_dict(state, strict=True)
    return hub.save_pretrained(model, output_dir, entry=entry, name=name)
