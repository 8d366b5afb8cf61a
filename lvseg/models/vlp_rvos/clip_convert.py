"""Convert CLIP checkpoints (OpenAI ``clip``, open_clip, Hugging Face ``CLIPModel``) to a ``transformers`` CLIPModel.

VLP-RVOS loads its CLIP backbone with the OpenAI ``clip`` package (``clip.load("ViT-B/16")``); lvseg runs it as
``transformers``' ``CLIPModel`` (the same architecture: pre-LN ViT and causal text transformer, QuickGELU). Three
state-dict layouts are read, from a TorchScript archive (OpenAI's released ``.pt`` files), a ``torch.save`` file
(read with ``weights_only=True``: no pickled code runs) or a ``.safetensors`` file:

* ``openai``: ``clip.model.CLIP.state_dict()`` (also open_clip's ``CLIP`` and its training checkpoints
  ``{"state_dict": {"module.visual...": ...}}``, which use the same names)::

      visual.conv1.weight [W, 3, p, p]          visual.class_embedding [W]     visual.positional_embedding [1+g*g, W]
      visual.ln_pre.*   visual.transformer.resblocks.N.{ln_1, attn.in_proj_weight [3W, W], attn.in_proj_bias,
      attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}.*   visual.ln_post.*   visual.proj [W, E]
      token_embedding.weight [V, w]   positional_embedding [L, w]   transformer.resblocks.N.* (as above)
      ln_final.*   text_projection [w, E]   logit_scale []
      (OpenAI's TorchScript files add input_resolution, context_length, vocab_size: dropped after a check)

* ``hf``: ``transformers.CLIPModel.state_dict()`` (``vision_model.*``, ``text_model.*``, ``visual_projection``,
  ``text_projection``, ``logit_scale``), passed through (``position_ids`` buffers dropped after a check).

Key mapping ``openai`` -> ``hf``: ``in_proj_weight``/``in_proj_bias`` are split in three equal row blocks into
``q_proj``/``k_proj``/``v_proj`` (the order of ``nn.MultiheadAttention``); ``ln_1``/``ln_2`` -> ``layer_norm1``/
``layer_norm2``; ``mlp.c_fc``/``c_proj`` -> ``mlp.fc1``/``fc2``; ``ln_pre``/``ln_post``/``ln_final`` ->
``pre_layrnorm``/``post_layernorm``/``final_layer_norm`` (sic: transformers' spelling); the projections are stored
transposed (``x @ proj`` there, ``Linear`` here).

The architecture comes from the tensors: widths, depths, patch size, grid (so the input size), MLP width,
vocabulary and context length. Two things shapes cannot tell: the head count (OpenAI CLIP uses width / 64 in
both towers, the default here; pass ``num_heads``/``text_num_heads`` otherwise) and the activation (QuickGELU for
OpenAI's weights and open_clip's ``-quickgelu`` models; open_clip's other models use GELU: pass
``hidden_act="gelu"``). A key that maps nowhere, a missing key, or a shape that differs from the model built from
the config is an error naming the keys.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ...errors import CheckpointError
from ..convert_utils import count_groups, read_official_checkpoint

__all__ = [
    "LAYOUTS",
    "read_clip_state_dict",
    "detect_layout",
    "infer_clip_config",
    "openai_to_hf",
    "check_clip_state_dict",
    "convert_clip",
    "load_clip_state_dict",
    "resize_position_embedding",
    "convert_to_folder",
]

logger = logging.getLogger(__name__)

LAYOUTS = ("openai", "hf")
# Integers OpenAI's TorchScript state dicts carry beside the weights (``clip.build_model`` deletes them too).
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")
# Parts of an OpenAI/open_clip CLIP that lvseg cannot represent as a transformers CLIPModel: name them clearly.
_UNSUPPORTED = {
    "visual.layer1.": "a ResNet CLIP (RN50, RN101, ...): VLP-RVOS and lvseg use the ViT CLIPs only",
    "visual.attnpool.": "a ResNet CLIP (RN50, RN101, ...): VLP-RVOS and lvseg use the ViT CLIPs only",
    "text.": "an open_clip CustomTextCLIP (Hugging Face or other text tower): only the CLIP text transformer is "
    "supported",
    "logit_bias": "a SigLIP-style model (logit_bias): not an OpenAI-CLIP architecture",
    "visual.attn_pool.": "an open_clip ViT with attentional pooling (CoCa and the like): not supported",
    "visual.trunk.": "an open_clip timm-trunk image tower: not supported",
}
_BLOCK_RENAMES = (
    ("ln_1.", "layer_norm1."),
    ("ln_2.", "layer_norm2."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
    ("attn.out_proj.", "self_attn.out_proj."),
)
_OPENAI_TOP = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_BLOCK_RX = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_POSITION_IDS = re.compile(r"^(text_model|vision_model)\.embeddings\.position_ids$")


# ------------------------------------------------------------------------------------------------ reading
def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive (``torch.jit.save``: a zip with ``*/code/__torch__*`` beside ``*/data.pkl``), as
    OpenAI's released CLIP ``.pt`` files are; ``torch.save`` zips have no ``code/`` folder."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any("/code/__torch__" in n for n in names) and any(n.endswith("/data.pkl") for n in names)


def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the weights of a CLIP checkpoint file (or a Hugging Face folder) as a flat ``{name: tensor}`` dict.

    Accepts a TorchScript archive (OpenAI's ``ViT-B-16.pt``; loaded with ``torch.jit.load``, which runs
    TorchScript only, no Python pickles), a ``torch.save`` file (plain state dict, or open_clip's
    ``{"state_dict": ...}`` with the ``module.`` prefix of DDP), a ``.safetensors`` file, or a folder with a
    ``model.safetensors`` / ``pytorch_model.bin`` (``CLIPModel.save_pretrained``).
    """
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return read_clip_state_dict(path / name)
        raise CheckpointError(
            f"{path} is a folder without model.safetensors or pytorch_model.bin: pass a CLIP checkpoint file or a "
            "CLIPModel.save_pretrained folder"
        )
    if not path.is_file():
        raise CheckpointError(f"CLIP checkpoint {path} does not exist")
    expected = "a CLIP checkpoint (OpenAI clip .pt, open_clip .pt/.bin, or a CLIPModel .safetensors)"
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {path} as safetensors ({exc}); it must be {expected}") from exc
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # torch.jit is deprecated, but it is how OpenAI's files are stored
                warnings.simplefilter("ignore", FutureWarning)
                scripted = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as exc:
            raise CheckpointError(f"cannot load the TorchScript archive {path} ({exc}); it must be {expected}") from exc
        return {k: v for k, v in scripted.state_dict().items()}
    obj = read_official_checkpoint(path, expected)
    return _unwrap(obj, path)


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded file: itself, or under ``state_dict``/``model``; without ``module.``."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} holds no state dict (a dict of tensors): it is not a CLIP checkpoint")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    others = sorted(k for k in obj if k not in state and k not in _OPENAI_EXTRAS)
    if others:
        raise CheckpointError(f"{path}: entries {others[:5]} are not tensors: this is not a CLIP state dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}  # open_clip trained with DDP
    return state


# ------------------------------------------------------------------------------------------------ layouts
def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """``"openai"`` (OpenAI ``clip`` and open_clip names) or ``"hf"`` (``transformers.CLIPModel``)."""
    for prefix, why in _UNSUPPORTED.items():
        if any(k.startswith(prefix) for k in state):
            raise CheckpointError(f"keys {prefix}* show {why}")
    if "visual.conv1.weight" in state:
        return "openai"
    if "vision_model.embeddings.patch_embedding.weight" in state:
        return "hf"
    if any(k.startswith(("vision_model.", "text_model.")) for k in state):
        raise CheckpointError(
            "the state dict has transformers CLIP names but no vision_model.embeddings.patch_embedding.weight: "
            "a text-only or vision-only CLIP cannot serve as the VLP-RVOS backbone, which needs both towers"
        )
    sample = sorted(state)[:5]
    raise CheckpointError(
        f"unrecognised CLIP layout (first keys {sample}): expected OpenAI clip / open_clip names "
        "(visual.conv1.weight, transformer.resblocks.N...) or transformers CLIPModel names (vision_model..., "
        "text_model...)"
    )


def _need(state: dict[str, torch.Tensor], key: str, layout: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"key {key!r} is missing: this is not a complete {layout}-layout CLIP checkpoint")
    return state[key]


def infer_clip_config(
    state: dict[str, torch.Tensor],
    layout: str | None = None,
    *,
    hidden_act: str = "quick_gelu",
    num_heads: int | None = None,
    text_num_heads: int | None = None,
    eos_token_id: int | None = None,
    bos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> Any:
    """The ``transformers.CLIPConfig`` of a CLIP state dict (either layout), from its key names and shapes.

    Args:
        hidden_act: "quick_gelu" (OpenAI CLIP) or "gelu" (open_clip's non-quickgelu models); shapes cannot tell.
        num_heads, text_num_heads: attention heads of the vision and text towers (default width / 64, OpenAI's
            rule; shapes cannot tell).
        eos_token_id, bos_token_id, pad_token_id: the tokenizer's ids (default OpenAI's: the last two ids of the
            vocabulary are ``<|startoftext|>`` and ``<|endoftext|>``; CLIP pools the text at the end token).
    """
    from transformers import CLIPConfig

    layout = layout or detect_layout(state)
    if layout == "openai":
        patch = _need(state, "visual.conv1.weight", layout)
        vpos = _need(state, "visual.positional_embedding", layout)
        vfc = _need(state, "visual.transformer.resblocks.0.mlp.c_fc.weight", layout)
        proj = _need(state, "visual.proj", layout)
        tok = _need(state, "token_embedding.weight", layout)
        tpos = _need(state, "positional_embedding", layout)
        tfc = _need(state, "transformer.resblocks.0.mlp.c_fc.weight", layout)
        tproj = _need(state, "text_projection", layout)
        vlayers = count_groups(state, r"visual\.transformer\.resblocks\.(\d+)\.")
        tlayers = count_groups(state, r"transformer\.resblocks\.(\d+)\.")
        projection_dim, text_projection_dim = int(proj.shape[1]), int(tproj.shape[1])
    elif layout == "hf":
        patch = _need(state, "vision_model.embeddings.patch_embedding.weight", layout)
        vpos = _need(state, "vision_model.embeddings.position_embedding.weight", layout)
        vfc = _need(state, "vision_model.encoder.layers.0.mlp.fc1.weight", layout)
        tok = _need(state, "text_model.embeddings.token_embedding.weight", layout)
        tpos = _need(state, "text_model.embeddings.position_embedding.weight", layout)
        tfc = _need(state, "text_model.encoder.layers.0.mlp.fc1.weight", layout)
        vlayers = count_groups(state, r"vision_model\.encoder\.layers\.(\d+)\.")
        tlayers = count_groups(state, r"text_model\.encoder\.layers\.(\d+)\.")
        projection_dim = int(_need(state, "visual_projection.weight", layout).shape[0])
        text_projection_dim = int(_need(state, "text_projection.weight", layout).shape[0])
    else:
        raise CheckpointError(f"unknown CLIP layout {layout!r}; expected one of {LAYOUTS}")
    if patch.dim() != 4 or patch.shape[1] != 3 or patch.shape[2] != patch.shape[3]:
        raise CheckpointError(f"patch embedding of shape {tuple(patch.shape)} is not [width, 3, p, p]")
    if projection_dim != text_projection_dim:
        raise CheckpointError(
            f"the image projection maps to {projection_dim} dims but the text projection to {text_projection_dim}: "
            "not a CLIP dual encoder"
        )
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    grid = int(round((vpos.shape[0] - 1) ** 0.5))
    if grid * grid + 1 != vpos.shape[0]:
        raise CheckpointError(f"vision position embedding of {vpos.shape[0]} rows is not 1 + g*g for a g x g grid")
    text_width = int(tok.shape[1])
    vocab = int(tok.shape[0])
    heads = num_heads or max(1, width // 64)
    text_heads = text_num_heads or max(1, text_width // 64)
    for what, w, h in (("vision", width, heads), ("text", text_width, text_heads)):
        if w % h:
            raise CheckpointError(f"{what} width {w} is not divisible by {h} heads: pass the right head count")
    eos = vocab - 1 if eos_token_id is None else eos_token_id
    bos = vocab - 2 if bos_token_id is None else bos_token_id
    text_config = {
        "vocab_size": vocab,
        "hidden_size": text_width,
        "intermediate_size": int(tfc.shape[0]),
        "num_hidden_layers": tlayers,
        "num_attention_heads": text_heads,
        "max_position_embeddings": int(tpos.shape[0]),
        "hidden_act": hidden_act,
        "layer_norm_eps": 1e-5,
        "projection_dim": projection_dim,
        "eos_token_id": eos,
        "bos_token_id": bos,
        # OpenAI pads with 0 (after the end token; the causal mask hides padding from the end token)
        "pad_token_id": 0 if pad_token_id is None else pad_token_id,
    }
    vision_config = {
        "hidden_size": width,
        "intermediate_size": int(vfc.shape[0]),
        "num_hidden_layers": vlayers,
        "num_attention_heads": heads,
        "image_size": grid * patch_size,
        "patch_size": patch_size,
        "hidden_act": hidden_act,
        "layer_norm_eps": 1e-5,
        "projection_dim": projection_dim,
    }
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim)


def openai_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI/open_clip CLIP names -> ``transformers.CLIPModel`` names (see the module docstring).

    Raises:
        CheckpointError: a key that maps nowhere, or an ``in_proj`` tensor whose rows are not 3 x width.
    """
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        if key in _OPENAI_EXTRAS:
            continue
        if key in _OPENAI_TOP:
            out[_OPENAI_TOP[key]] = value
            continue
        if key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
            continue
        m = _BLOCK_RX.match(key)
        if m is None:
            unmapped.append(key)
            continue
        tower = "vision_model" if m.group(1) else "text_model"
        base, rest = f"{tower}.encoder.layers.{m.group(2)}.", m.group(3)
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = "weight" if rest.endswith("weight") else "bias"
            if value.shape[0] % 3:
                raise CheckpointError(f"{key} has {value.shape[0]} rows, not 3 x width (q, k, v stacked)")
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{base}self_attn.{name}.{kind}"] = part.contiguous()
            continue
        for old, new in _BLOCK_RENAMES:
            if rest.startswith(old):
                out[base + new + rest[len(old) :]] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise CheckpointError(
            f"{len(unmapped)} key(s) of the OpenAI/open_clip CLIP checkpoint map to nothing in a transformers "
            f"CLIPModel: {sorted(unmapped)[:8]}; is this a CLIP ViT checkpoint?"
        )
    return out


def check_clip_state_dict(state: dict[str, torch.Tensor], config: Any) -> None:
    """Check an ``hf``-layout state dict against the ``CLIPModel`` that ``config`` builds: the same keys and the
    same shape for each (on the meta device: no memory, no init). Raises :class:`CheckpointError` naming the
    missing keys, the unexpected keys and the shape mismatches."""
    from transformers import CLIPModel

    with torch.device("meta"):
        reference = CLIPModel(config).state_dict()
    expected = {k: tuple(v.shape) for k, v in reference.items() if not _POSITION_IDS.match(k)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != expected[k]
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {missing[:6]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {unexpected[:6]}")
        if shapes:
            parts.append(f"shape mismatches {len(shapes)}: {shapes[:4]}")
        raise CheckpointError(
            "the CLIP weights do not match the architecture built from their config (" + "; ".join(parts) + "). "
            "Likely cause: a truncated or edited checkpoint, or a head count other than width/64 (pass num_heads)."
        )


def _drop_position_ids(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``position_ids`` buffers older transformers saved, after checking they are ``arange``."""
    out = {}
    for key, value in state.items():
        if _POSITION_IDS.match(key):
            flat = value.reshape(-1)
            if not torch.equal(flat.long(), torch.arange(flat.numel())):
                raise CheckpointError(f"{key} is not 0, 1, 2, ...: this checkpoint was edited")
            continue
        out[key] = value
    return out


_VISION_POSITIONS = "vision_model.embeddings.position_embedding.weight"


def resize_position_embedding(weight: torch.Tensor, patch_size: int, image_size: int) -> torch.Tensor:
    """A CLIP image position embedding ``[1 + g*g, D]`` resized for ``image_size`` px: the cls row kept, the
    ``g x g`` grid resampled bicubically (``align_corners=False``), the same operation as transformers'
    ``interpolate_pos_encoding``, done once instead of at every call."""
    if image_size % patch_size:
        raise CheckpointError(f"image_size {image_size} is not a multiple of the patch size {patch_size}")
    grid = int(round((weight.shape[0] - 1) ** 0.5))
    new = image_size // patch_size
    if new == grid:
        return weight
    dim = weight.shape[1]
    patches = weight[1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
    patches = torch.nn.functional.interpolate(patches.float(), size=(new, new), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(new * new, dim).to(weight.dtype)
    return torch.cat([weight[:1], patches], dim=0)


def convert_clip(
    source: str | Path | dict[str, torch.Tensor],
    *,
    config: Any = None,
    image_size: int | None = None,
    **config_options: Any,
) -> tuple[dict[str, torch.Tensor], Any]:
    """A CLIP checkpoint in any supported layout -> ``(transformers CLIPModel state dict, CLIPConfig)``.

    Args:
        source: a checkpoint file, a ``save_pretrained`` folder, or an already loaded state dict.
        config: a ``CLIPConfig`` to use instead of inferring one (a folder's ``config.json`` is used when present).
        image_size: another input size (e.g. 352, VLP-RVOS's for ViT-B/16): the image position embedding is
            resized once (:func:`resize_position_embedding`) and the config says the new size.
        config_options: passed to :func:`infer_clip_config` (``hidden_act``, ``num_heads``, ...).
    """
    from transformers import CLIPConfig

    if isinstance(source, dict):
        state = dict(source)
    else:
        state = read_clip_state_dict(source)
        folder = Path(source) if Path(source).is_dir() else None
        if config is None and folder is not None and (folder / "config.json").is_file():
            try:
                config = CLIPConfig.from_pretrained(str(folder))
            except (OSError, ValueError, json.JSONDecodeError) as exc:
                raise CheckpointError(f"cannot read {folder / 'config.json'} as a CLIPConfig ({exc})") from exc
    layout = detect_layout(state)
    if layout == "openai":
        for key in _OPENAI_EXTRAS:
            if key in state and state[key].numel() != 1:
                raise CheckpointError(f"{key} should be one integer, not a tensor of shape {tuple(state[key].shape)}")
        hf_state = openai_to_hf(state)
    else:
        hf_state = _drop_position_ids(state)
    if config is None:
        config = infer_clip_config(state, layout, **config_options)
    elif config_options:
        raise CheckpointError(f"pass either config or {sorted(config_options)}, not both")
    check_clip_state_dict(hf_state, config)
    if image_size is not None and image_size != config.vision_config.image_size:
        patch = config.vision_config.patch_size
        hf_state[_VISION_POSITIONS] = resize_position_embedding(hf_state[_VISION_POSITIONS], patch, image_size)
        logger.info("image position embedding resized from %d to %d px", config.vision_config.image_size, image_size)
        config.vision_config.image_size = image_size
        check_clip_state_dict(hf_state, config)
    logger.info("converted a %s-layout CLIP checkpoint: %d tensors", layout, len(hf_state))
    return hf_state, config


def load_clip_state_dict(model: Any, state: dict[str, torch.Tensor]) -> None:
    """Load an ``hf``-layout state dict into a ``CLIPModel`` strictly (position-id buffers aside)."""
    check_clip_state_dict(state, model.config)
    result = model.load_state_dict(state, strict=False)
    leftover = [k for k in result.missing_keys if not _POSITION_IDS.match(k)]
    if leftover or result.unexpected_keys:  # pragma: no cover - check_clip_state_dict catches these first
        raise CheckpointError(f"missing {leftover[:6]}, unexpected {list(result.unexpected_keys)[:6]}")


def convert_to_folder(
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    tokenizer: Any = None,
    image_size: int | None = None,
    overwrite: bool = False,
    **config_options: Any,
) -> Path:
    """Convert a CLIP checkpoint (any layout :func:`convert_clip` reads) into a ``CLIPModel.save_pretrained``
    folder (``config.json``, ``model.safetensors``), written atomically, with a tokenizer beside it when given:
    the folder a VLP-RVOS model's CLIP backbone loads (``lvseg.models.vlp_rvos.entries.build(name, backbone=DIR)``).

    Args:
        tokenizer: a folder with the CLIP tokenizer files (OpenAI's BPE: ``vocab.json`` + ``merges.txt`` or
            ``tokenizer.json``) or a loaded ``transformers`` tokenizer; its size must not exceed the embedding's rows.
        image_size: convert for another input size (:func:`resize_position_embedding`).
        overwrite: replace a non-empty ``output_dir``.
        config_options: for :func:`infer_clip_config` (``hidden_act``, ``num_heads``, ...).
    """
    from transformers import CLIPModel

    from ...errors import TokenizerError
    from ...utils import atomic_folder, check_output_folder

    check_output_folder(output_dir, overwrite=overwrite)
    loaded = None
    if tokenizer is not None:
        if isinstance(tokenizer, (str, Path)):
            from .backbones import load_clip_tokenizer

            loaded = load_clip_tokenizer(tokenizer)
        else:
            loaded = tokenizer
    state, config = convert_clip(checkpoint, image_size=image_size, **config_options)
    if loaded is not None and len(loaded) > config.text_config.vocab_size:
        raise TokenizerError(
            f"the tokenizer has {len(loaded)} tokens but the CLIP text embedding only {config.text_config.vocab_size} "
            "rows: it is not this model's tokenizer"
        )
    model = CLIPModel(config)
    load_clip_state_dict(model, state)
    with atomic_folder(output_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(str(tmp))
        if loaded is not None:
            loaded.save_pretrained(str(tmp))
    logger.info("wrote the converted CLIP to %s", output_dir)
    return Path(output_dir)
