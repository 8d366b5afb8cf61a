"""The frozen vision-language backbones of VLP-RVOS: CLIP ViT-B/16 and ViT-L/14 (as ``transformers`` CLIP
modules) and VLMo-B / VLMo-L (lvseg's multiway transformer, :mod:`.vlmo`).

``build_backbone(name)`` makes the architecture with random weights and no download; ``load_backbone(source)``
reads weights from a CLIP checkpoint in any layout :mod:`.clip_convert` accepts (OpenAI ``clip``, open_clip, a
``CLIPModel.save_pretrained`` folder such as the tiny Shapes CLIP of ``benchmarks/train_shapes_clip.py``) or an
official VLMo ``.pt`` (:func:`.vlmo.convert_vlmo`), strictly. :func:`freeze` makes a backbone frozen as the paper
keeps it (no gradients, eval mode).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CheckpointError, ConfigError

__all__ = [
    "BackboneSpec",
    "BACKBONES",
    "clip_config",
    "build_backbone",
    "build_clip",
    "load_clip",
    "load_clip_tokenizer",
    "load_backbone",
    "freeze",
    "clip_image_features",
    "clip_image_pool",
    "clip_patch_features",
    "clip_cosine",
    "best_patch_cosine",
    "IMAGE_POOLS",
    "clip_text_features",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """What the VLP-RVOS model needs to know about a backbone.

    Attributes:
        kind: "clip" or "vlmo".
        vision_width: channels of the image tokens; text_width: of the word tokens.
        patch_size: stride of the patch embedding (the feature map is input / patch_size).
        layers: transformer layers of the image tower (where prompts are inserted).
        pretrain_size: the square input size of the released weights (position embeddings are made for it).
        paper_size: the input size VLP-RVOS uses: 352 (``IMG_SIZE`` of its released config) for the /16
            backbones; 336 for L/14 is inferred from the experiment name ``..._s336_...``; None where nothing says.
        context_length: text positions of the weights (77 for CLIP, 40 for VLMo).
        source: the official weights' URL (not downloaded by lvseg: the file is read from disk).
        sha256: the file's SHA-256 where the publisher states it (OpenAI's URLs carry it), else None.
    """

    kind: str
    vision_width: int
    text_width: int
    patch_size: int
    layers: int
    pretrain_size: int
    paper_size: int | None
    context_length: int
    source: str
    sha256: str | None = None


_OPENAI_URL = "https://openaipublic.azureedge.net/clip/models/"
_VLMO_URL = "https://conversationhub.blob.core.windows.net/beit-share-public/vlmo/"
# OpenAI's clip.py (1.0.1, ``_MODELS``) names each file by its SHA-256 and checks it after download.
_B16_SHA = "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"
_L14_SHA = "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"
BACKBONES: dict[str, BackboneSpec] = {
    "clip-vit-b-16": BackboneSpec(
        "clip", 768, 512, 16, 12, 224, 352, 77, f"{_OPENAI_URL}{_B16_SHA}/ViT-B-16.pt", _B16_SHA
    ),
    "clip-vit-l-14": BackboneSpec(
        "clip", 1024, 768, 14, 24, 224, 336, 77, f"{_OPENAI_URL}{_L14_SHA}/ViT-L-14.pt", _L14_SHA
    ),
    "vlmo-b": BackboneSpec("vlmo", 768, 768, 16, 12, 384, 352, 40, _VLMO_URL + "vlmo_base_patch16_384_coco.pt"),
    # VLP-RVOS's scripts name the VLMo-B file only; the VLMo-L one is assumed to be its COCO-retrieval sibling
    "vlmo-l": BackboneSpec("vlmo", 1024, 1024, 16, 24, 384, None, 40, _VLMO_URL + "vlmo_large_patch16_384_coco.pt"),
}

# transformers.CLIPConfig arguments of OpenAI's ViT CLIPs (clip/model.py build_model: heads = width / 64,
# QuickGELU, context 77, the 49408-token BPE vocabulary whose last two ids are <|startoftext|>, <|endoftext|>).
_CLIP_SIZES: dict[str, dict[str, Any]] = {
    "clip-vit-b-16": {"width": 768, "layers": 12, "patch": 16, "text_width": 512, "embed": 512},
    "clip-vit-l-14": {"width": 1024, "layers": 24, "patch": 14, "text_width": 768, "embed": 768},
}


def clip_config(name: str, **vision_overrides: Any) -> Any:
    """The ``transformers.CLIPConfig`` of OpenAI's ``ViT-B/16`` (``"clip-vit-b-16"``) or ``ViT-L/14``
    (``"clip-vit-l-14"``); ``vision_overrides`` change vision-tower fields (e.g. ``image_size=352``)."""
    from transformers import CLIPConfig

    if name not in _CLIP_SIZES:
        raise ConfigError(f"unknown CLIP backbone {name!r}; choose one of {sorted(_CLIP_SIZES)}")
    s = _CLIP_SIZES[name]
    text = {
        "vocab_size": 49408,
        "hidden_size": s["text_width"],
        "intermediate_size": 4 * s["text_width"],
        "num_hidden_layers": 12,
        "num_attention_heads": s["text_width"] // 64,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": s["embed"],
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 0,
    }
    vision = {
        "hidden_size": s["width"],
        "intermediate_size": 4 * s["width"],
        "num_hidden_layers": s["layers"],
        "num_attention_heads": s["width"] // 64,
        "image_size": 224,
        "patch_size": s["patch"],
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": s["embed"],
        **vision_overrides,
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=s["embed"])


def build_clip(config: str | Any) -> Any:
    """A ``transformers.CLIPModel`` with random weights, from a backbone name or a ``CLIPConfig`` (no download)."""
    from transformers import CLIPModel

    return CLIPModel(clip_config(config) if isinstance(config, str) else config)


def build_backbone(name: str) -> nn.Module:
    """The architecture of a :data:`BACKBONES` entry with random weights (CLIPModel or :class:`.vlmo.VLMo`)."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown VLP-RVOS backbone {name!r}; choose one of {sorted(BACKBONES)}")
    if BACKBONES[name].kind == "clip":
        return build_clip(name)
    from .vlmo import VLMo, vlmo_config

    return VLMo(vlmo_config(name))


def load_clip(source: str | Path | dict[str, torch.Tensor], **options: Any) -> Any:
    """A ``transformers.CLIPModel`` with the weights of ``source``, loaded strictly.

    Args:
        source: an OpenAI ``clip`` / open_clip checkpoint file, a ``.safetensors`` file, a
            ``CLIPModel.save_pretrained`` folder (its ``config.json`` is used), or a state dict.
        options: for :func:`.clip_convert.convert_clip` (``hidden_act``, ``num_heads``, ``config``).

    Raises:
        CheckpointError: unreadable file, unknown layout, or keys/shapes that do not match.
    """
    from transformers import CLIPModel

    from .clip_convert import convert_clip, load_clip_state_dict

    state, config = convert_clip(source, **options)
    model = CLIPModel(config)
    load_clip_state_dict(model, state)
    return model.eval()


def load_clip_tokenizer(folder: str | Path) -> Any:
    """The tokenizer saved beside a CLIP folder (``tokenizer.json`` or CLIP's ``vocab.json`` + ``merges.txt``).

    Raises:
        TokenizerError: the folder has no tokenizer files, or they cannot be read.
    """
    from transformers import AutoTokenizer

    from ...errors import TokenizerError

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        raise TokenizerError(
            f"{folder} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt). OpenAI's CLIP checkpoints "
            "carry none: on a machine with network get them with `hf download openai/clip-vit-base-patch16 "
            f"vocab.json merges.txt tokenizer.json tokenizer_config.json --local-dir {folder}` (the same BPE for "
            "every OpenAI CLIP)"
        )
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # OSError, ValueError, and the Rust tokenizers' plain Exception for a bad file
        raise TokenizerError(f"cannot load the CLIP tokenizer in {folder} ({exc})") from exc


def load_backbone(source: str | Path, kind: str | None = None, **options: Any) -> nn.Module:
    """Load a CLIP (``kind="clip"``) or VLMo (``kind="vlmo"``) backbone from a checkpoint file or folder, strictly.

    ``kind=None`` tells them apart by the key names (VLMo files have ``transformer.blocks.N.mlp_imag``)."""
    if kind is None:
        kind = _guess_kind(Path(source))
    if kind == "clip":
        return load_clip(source, **options)
    if kind == "vlmo":
        from .vlmo import load_vlmo

        return load_vlmo(source, **options)
    raise ConfigError(f"unknown backbone kind {kind!r}; choose 'clip' or 'vlmo'")


def _guess_kind(path: Path) -> str:
    from .clip_convert import _is_torchscript, read_clip_state_dict
    from .vlmo import read_vlmo_state_dict

    if path.is_dir() or (path.is_file() and _is_torchscript(path)):  # OpenAI's CLIP files are TorchScript
        return "clip"
    try:
        keys = read_vlmo_state_dict(path).keys()
    except CheckpointError:
        keys = read_clip_state_dict(path).keys()
    return "vlmo" if any(".mlp_imag." in k for k in keys) else "clip"


def freeze(module: nn.Module) -> nn.Module:
    """Freeze a backbone as VLP-RVOS does: no parameter requires a gradient, and eval mode (no dropout or drop
    path). Returns the module."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


IMAGE_POOLS = ("cls", "mean", "max")


def clip_image_pool(model: Any) -> str:
    """How ``model`` compares an image with a text: ``"cls"`` (OpenAI CLIP: the class token) unless its config's
    ``lvseg_image_pool`` says ``"mean"`` (the mean of the projected patch tokens, as open_clip's
    ``pool_type="avg"``) or ``"max"`` (the best-matching patch: the largest cosine of a projected patch token and
    the text, token-wise as in FILIP); set by :func:`lvseg.train.shapes_clip.train_shapes_clip` for a CLIP trained
    that way."""
    pool = getattr(model.config, "lvseg_image_pool", "cls")
    if pool not in IMAGE_POOLS:
        raise ConfigError(f"the CLIP config's lvseg_image_pool is {pool!r}; expected one of {IMAGE_POOLS}")
    return str(pool)


def clip_image_features(model: Any, pixels: torch.Tensor, pool: str | None = None) -> torch.Tensor:
    """CLIP image embeddings ``[B, E]`` (projected, not normalised) of normalised ``pixels [B, 3, H, W]``; another
    size than the config's interpolates the position embedding (bicubic, as transformers does).

    ``pool``: ``"cls"`` (the class token after ``post_layernorm``, projected: OpenAI CLIP) or ``"mean"`` (every
    patch token after ``post_layernorm``, projected, then averaged: the dense features that VLP-RVOS's pixel-text
    similarity reads); None: the model's own (:func:`clip_image_pool`). A ``"max"`` CLIP has no single image
    embedding (its score depends on the text): compare with :func:`clip_cosine`."""
    pool = clip_image_pool(model) if pool is None else pool
    if pool not in ("cls", "mean"):
        raise ConfigError(
            f"pool must be one of ('cls', 'mean') for an image embedding, got {pool!r}"
            + ("; a max-pooled CLIP compares images and texts with clip_cosine" if pool == "max" else "")
        )
    if pool == "cls":
        return model.visual_projection(_vision(model, pixels).pooler_output)
    return clip_patch_features(model, pixels).mean(dim=1)


def _vision(model: Any, pixels: torch.Tensor) -> Any:
    size = model.config.vision_config.image_size
    interpolate = tuple(pixels.shape[-2:]) != (size, size)
    return model.vision_model(pixel_values=pixels, interpolate_pos_encoding=interpolate)


def clip_patch_features(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """The projected patch tokens ``[B, P, E]`` (after ``post_layernorm``, not normalised) of normalised
    ``pixels [B, 3, H, W]``: CLIP's dense features in the joint space, as VLP-RVOS's pixel-text similarity reads
    them."""
    tokens = _vision(model, pixels).last_hidden_state[:, 1:]  # [B, P, Dv]
    return model.visual_projection(model.vision_model.post_layernorm(tokens))


def clip_cosine(model: Any, pixels: torch.Tensor, text: torch.Tensor, pool: str | None = None) -> torch.Tensor:
    """Cosine similarity ``[B, T]`` of images ``pixels [B, 3, H, W]`` and text embeddings ``text [T, E]``
    (:func:`clip_text_features`), with the model's pooling (:func:`clip_image_pool`) unless ``pool`` is given:
    ``"cls"``/``"mean"`` compare the image embedding, ``"max"`` the best-matching patch of each image."""
    pool = clip_image_pool(model) if pool is None else pool
    if pool not in IMAGE_POOLS:
        raise ConfigError(f"pool must be one of {IMAGE_POOLS}, got {pool!r}")
    if pool != "max":
        return F.normalize(clip_image_features(model, pixels, pool), dim=-1) @ F.normalize(text, dim=-1).t()
    return best_patch_cosine(clip_patch_features(model, pixels), text)


def best_patch_cosine(patches: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The ``"max"`` pooling of :func:`clip_cosine` on projected patch tokens already computed: for each image
    (``patches [B, P, E]``, :func:`clip_patch_features`) and text embedding (``text [T, E]``), the cosine of its
    best-matching patch, ``[B, T]``."""
    unit = F.normalize(patches, dim=-1)
    return torch.einsum("bpe,te->bpt", unit, F.normalize(text, dim=-1)).amax(dim=1)


def clip_text_features(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP text embeddings ``[B, E]`` (projected, not normalised) of token ids ``[B, L]``: the final state at the
    end token, as OpenAI CLIP pools."""
    out = model.text_model(input_ids=input_ids, attention_mask=attention_mask)
    return model.text_projection(out.pooler_output)
