"""Official LAVT video checkpoints (Yxxxb/LAVT-RS ``lavt_video``) -> lvseg ``lavt_video`` weights and config.

An official file is ``{'model': state_dict, 'optimizer', 'epoch', 'args': argparse.Namespace, 'lr_scheduler'
[, 'scaler']}`` with BERT inside the model under ``text_encoder.`` (no pooler). Everything the architecture needs
is read from the tensors: Video Swin sizes (patch embedding, blocks per stage, heads from the bias tables), the 3-D
window from the bias-table rows and the ``relative_position_index`` size, the PWAM kernels from its Conv3d
weights, whether the last stage has its (unused) language gate, and the BERT sizes. Only ``--mha`` (PWAM heads,
invisible in shapes) comes from the saved args, default 1-1-1-1. ``lvseg convert lavt`` routes video checkpoints
here (:func:`is_video_state`).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch

from ...errors import CheckpointError
from ..convert_utils import count_groups
from ..layers.swin import _relative_position_index
from ..layers.text import BERT_BASE_CONFIG
from .video_config import VIDEO_SWIN_SIZES, LAVTVideoConfig

__all__ = ["is_video_state", "infer_video_config", "convert_video_state_dict", "VIDEO_BACKBONES"]

logger = logging.getLogger(__name__)

# --backbone names -> official swin_type of the video model
VIDEO_BACKBONES = {"video-swin-t": "tiny", "video-swin-s": "small", "video-swin-b": "base"}

_IGNORED_SUFFIXES = ("num_batches_tracked", "total_ops", "total_params")
# the released fusion (SepTPWAM with --w_t3x3_s1x1 --mm_t3x3_s1x1): its Conv3d modules and their kernel kind
_FUSION_CONVS = {
    "temporal_vis_project.0": "t",
    "spatial_vis_project.0": "s",
    "f_query_t.0": "t",
    "f_query_s.0": "s",
    "W_t.0": "t",
    "W_s.0": "1",
    "project_mm_t.0": "t",
    "project_mm_s.0": "1",
}


def is_video_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether an official LAVT state dict is the video model's (Conv3d patch embedding)."""
    weight = state.get("backbone.patch_embed.proj.weight")
    return weight is not None and weight.dim() == 5


def _window(state: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """(Wd, W, W) from the bias-table rows (2Wd-1)(2W-1)^2 and, when present, the index size Wd*W*W."""
    p = "backbone.layers.0.blocks.0.attn."
    rows = int(state[p + "relative_position_bias_table"].shape[0])
    index = state.get(p + "relative_position_index")
    volume = int(index.shape[0]) if index is not None else None
    found = [
        (wd, w, w)
        for wd in range(1, 65)
        for w in range(2, 65)
        if (2 * wd - 1) * (2 * w - 1) ** 2 == rows and (volume is None or wd * w * w == volume)
    ]
    if len(found) != 1:
        raise CheckpointError(
            f"cannot infer the Video Swin window from a relative-position table of {rows} rows"
            + (f" and an index over {volume} tokens" if volume else "")
            + f" (candidates: {found or 'none'}); the released models use (8, 7, 7)"
        )
    return found[0]


def _fusion_kernels(state: dict[str, torch.Tensor]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    p = "backbone.layers.0.fusion."
    if p + "temporal_vis_project.0.weight" not in state or p + "W_t.0.weight" not in state:
        names = sorted({k[len(p) :].split(".")[0] for k in state if k.startswith(p)})
        raise CheckpointError(
            f"the checkpoint's fusion modules ({', '.join(names) or 'none'}) are not the released separable 3-D "
            "PWAM (--sep_t_pwam --w_t3x3_s1x1 --mm_t3x3_s1x1, with temporal_vis_project / W_t / project_mm_t): "
            "lvseg converts only that configuration"
        )
    t = tuple(int(s) for s in state[p + "temporal_vis_project.0.weight"].shape[2:])
    s = tuple(int(s) for s in state[p + "spatial_vis_project.0.weight"].shape[2:])
    kernels = {"t": t, "s": s, "1": (1, 1, 1)}
    for key, kind in _FUSION_CONVS.items():
        weight = state.get(p + key + ".weight")
        if weight is None or tuple(weight.shape[2:]) != kernels[kind]:
            got = None if weight is None else tuple(weight.shape[2:])
            raise CheckpointError(
                f"backbone.layers.0.fusion.{key}.weight has kernel {got}, expected {kernels[kind]}: not the "
                "released separable 3-D PWAM configuration"
            )
    return t, s  # type: ignore[return-value]


def _text_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    p = "text_encoder."
    if p + "embeddings.word_embeddings.weight" not in state:
        raise CheckpointError("the checkpoint has no text_encoder.* keys: not an official lavt_video model dict")
    hidden = int(state[p + "embeddings.word_embeddings.weight"].shape[1])
    cfg = dict(BERT_BASE_CONFIG)
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


def _fusion_heads(args: dict[str, Any]) -> tuple[int, ...]:
    mha = args.get("mha") or ""
    if not mha:
        return (1, 1, 1, 1)
    try:
        heads = tuple(int(v) for v in str(mha).split("-"))
    except ValueError as exc:
        raise CheckpointError(f"the checkpoint's args hold mha={mha!r}, not 'a-b-c-d'") from exc
    if len(heads) != 4:
        raise CheckpointError(f"the checkpoint's args hold mha={mha!r}: 4 stages need 4 head counts")
    return heads


def infer_video_config(
    state: dict[str, torch.Tensor], args: dict[str, Any] | None = None, **overrides: Any
) -> LAVTVideoConfig:
    """The :class:`LAVTVideoConfig` an official ``lavt_video`` state dict was built with (from its shapes).

    ``args``: the file's training arguments as a dict (only ``mha`` is read); ``overrides`` set other fields
    (``preprocessing``, ``annotated_clip_frames``, ...), e.g. a registry entry's config.
    """
    args = args or {}
    try:
        patch = state["backbone.patch_embed.proj.weight"]
        if tuple(patch.shape[1:]) != (3, 1, 4, 4):
            raise CheckpointError(f"patch embedding {tuple(patch.shape)}: LAVT video uses 1x4x4 patches of RGB frames")
        stages = count_groups(state, r"backbone\.layers\.(\d+)\.")
        depths = tuple(count_groups(state, rf"backbone\.layers\.{s}\.blocks\.(\d+)\.") for s in range(stages))
        heads = tuple(
            int(state[f"backbone.layers.{s}.blocks.0.attn.relative_position_bias_table"].shape[1])
            for s in range(stages)
        )
        gates = [f"backbone.layers.{s}.res_gate.0.weight" in state for s in range(stages)]
        if not all(gates[:-1]):
            raise CheckpointError(
                f"stages {[s for s, g in enumerate(gates[:-1]) if not g]} lack their language gate (res_gate): only "
                "the last stage may lack it (checkpoints trained with --use_checkpoint)"
            )
        embed = int(patch.shape[0])
        drop_path = next(
            (rate for e, d, h, rate in VIDEO_SWIN_SIZES.values() if (e, d, h) == (embed, depths, heads)), 0.1
        )
        temporal, spatial = _fusion_kernels(state)
        fields: dict[str, Any] = dict(
            embed_dim=embed,
            depths=depths,
            num_heads=heads,
            window=_window(state),
            temporal_kernel=temporal,
            spatial_kernel=spatial,
            fusion_heads=_fusion_heads(args),
            drop_path_rate=drop_path,
            last_stage_gate=gates[-1],
            text_encoder=_text_config(state),
        )
    except KeyError as exc:
        raise CheckpointError(f"the checkpoint lacks {exc}, which every official lavt_video checkpoint has") from exc
    if "text_encoder" in overrides:
        fields["text_encoder"] = {**fields["text_encoder"], **overrides.pop("text_encoder")}
    fields.update(overrides)
    return LAVTVideoConfig(**fields)


def _map_key(key: str) -> str:
    key = re.sub(r"^backbone\.layers\.(\d+)\.downsample\.", r"backbone.downsamples.\1.", key)
    key = re.sub(r"^backbone\.layers\.(\d+)\.fusion\.", r"fusions.\1.", key)
    key = re.sub(r"^backbone\.layers\.(\d+)\.res_gate\.", r"gates.\1.res_gate.", key)
    return re.sub(r"^backbone\.norm(\d+)\.", r"backbone.out_norms.\1.", key)


def convert_video_state_dict(state: dict[str, torch.Tensor], config: LAVTVideoConfig) -> dict[str, torch.Tensor]:
    """Map an official ``lavt_video`` state dict to lvseg names; checks the recomputable index buffers and fails
    on any key or shape without a counterpart. Meta tensors are accepted (a dry run over names and shapes)."""
    out: dict[str, torch.Tensor] = {}
    expected_index = _relative_position_index(config.window)
    for key, value in state.items():
        if key.endswith(_IGNORED_SUFFIXES) and not key.startswith("classifier."):
            continue
        if key in ("text_encoder.embeddings.position_ids", "text_encoder.embeddings.token_type_ids"):
            continue
        if key.endswith("relative_position_index"):
            same = value.is_meta or torch.equal(value.cpu().long(), expected_index)
            if value.shape != expected_index.shape or not same:
                raise CheckpointError(f"{key} {tuple(value.shape)} differs from the index of window {config.window}")
            continue
        out[_map_key(key)] = value
    _check_keys(out, config)
    return out


def _check_keys(state: dict[str, torch.Tensor], config: LAVTVideoConfig) -> None:
    from .video import LAVTVideo

    with torch.device("meta"):
        expected = {k: v.shape for k, v in LAVTVideo(config).state_dict().items()}
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
            more = " ..." if len(missing) > 10 else ""
            parts.append(f"keys the model needs but the checkpoint lacks: {missing[:10]}{more}")
        if wrong:
            parts.append(f"shape mismatches: {wrong[:10]}")
        raise CheckpointError("cannot convert the LAVT video checkpoint: " + "; ".join(parts))
