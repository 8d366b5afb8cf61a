"""VLMo (Bao et al., 2022) written for lvseg: a multiway transformer whose blocks share one self-attention and
switch between modality experts (V-FFN for image tokens, L-FFN for text tokens, VL-FFN in the top layers), with
the official VLMo ``.pt`` converter.

Facts taken from microsoft/unilm ``vlmo/`` (MIT; ``modules/multiway_transformer.py`` and ``modules/vlmo_module.py``,
read, not copied): pre-LN blocks with LayerNorm eps 1e-6; attention ``qkv`` without bias tensor but with separate
``q_bias``/``v_bias`` (k bias zero); layer scale ``gamma_1``/``gamma_2`` (init 0.1); one shared
``relative_position_bias_table [rows, heads * depth]`` sliced per layer, whose rows are, in order, the
``(2g-1)^2`` image-image offsets, cls->patch, patch->cls, cls->cls, text->image, image->text, ``2 * 196`` text
offsets and three text-cls entries; text embeddings are a BERT embedding (word, position, token type, LayerNorm
eps 1e-12) that adds positions only without relative positions (transformers 4.8's ``position_embedding_type``);
VLMo's own ``token_type_embeddings`` (0 text, 1 image) are added on top; a final ``transformer.norm``. Dual-encoder
features (VLP-RVOS's ``MODE='separate'``): ``infer_image`` runs all blocks with the V-FFN, and in parallel the
blocks from ``vlffn_start`` on with the VL-FFN from the output of block ``vlffn_start - 1``; retrieval features
are ``itc_*_proj`` of the normed cls token, L2-normalised.

Official state-dict keys (``VLMo.state_dict()``; files hold it as is, under ``state_dict`` (Lightning), ``model``,
or ``module`` with a ``module.`` prefix (DeepSpeed))::

    transformer.patch_embed.proj.{weight [D,3,16,16], bias}   transformer.cls_token [1,1,D]
    transformer.pos_embed [1,1+g*g,D] (base_plus only)       transformer.norm.{weight,bias}
    transformer.blocks.N.{norm1, attn.qkv.weight [3D,D], attn.q_bias, attn.v_bias, attn.proj, gamma_1, gamma_2,
        norm2_text, mlp_text.fc1, mlp_text.fc2, norm2_imag, mlp_imag.fc1, mlp_imag.fc2,
        norm2_vl, mlp_vl.fc1, mlp_vl.fc2 (N >= vlffn_start only)}.*
    relative_position_bias_table [(2g-1)^2 + 3 + 2*196 + 2, heads*depth]
    text_embeddings.{word_embeddings [30522,D], position_embeddings [40,D], token_type_embeddings [2,D],
        LayerNorm}.*, text_embeddings.position_ids [1,40] (a buffer in transformers 4.8)
    token_type_embeddings.weight [2,D]
    itc_text_proj.fc.weight, itc_image_proj.fc.weight, logit_scale           (retrieval: irtr / itc)
    itc_vl_text_proj.fc.weight, itc_vl_image_proj.fc.weight, logit_vl_scale  (pre-training: itc)
    pooler.dense.*, mlm_score.*, itm_score.*, vqa_classifier.*, nlvr2_classifier.*   (other tasks' heads)
    relative_position_index, text_relative_position_index, text_imag_relative_position_index (older files)

lvseg keeps the same names for what it uses (the converter is then a check, not a rename); the other tasks'
heads are dropped (named in the log); ``position_ids`` and the three index tensors are checked equal to lvseg's
and dropped (lvseg recomputes them).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CheckpointError, ConfigError, InvalidInputError
from ..convert_utils import count_groups, read_official_checkpoint

__all__ = [
    "VLMoConfig",
    "VLMo",
    "vlmo_config",
    "read_vlmo_state_dict",
    "infer_vlmo_config",
    "convert_vlmo",
    "resize_relative_position_table",
    "load_vlmo",
    "vlmo_backbone_class",
    "vlmo_config_from_sizes",
    "build_vlmo_backbone",
    "load_vlmo_backbone",
]

logger = logging.getLogger(__name__)

TEXT_CONTEXT_OF_INIT = 196  # max_text_len_of_initckpt: the text rows of the shared table (VLMo config)


@dataclass
class VLMoConfig:
    """Architecture of a VLMo multiway transformer (defaults: VLMo-B at 384 px, the VLP-RVOS checkpoint).

    Attributes:
        embed_dim, depth, num_heads, mlp_ratio: transformer sizes.
        patch_size, image_size: patch stride and the square input size (the relative positions are built for
            its ``image_size / patch_size`` grid).
        vlffn_start: first block with a VL-FFN expert (10 of 12 for base, 21 of 24 for large).
        max_text_len: text positions (40); vocab_size: BERT uncased WordPiece (30522).
        layer_scale: init of ``gamma_1``/``gamma_2`` (None: no layer scale, base_plus).
        relative_position: shared relative-position bias (base, large); False: absolute ``pos_embed`` (base_plus).
        itc, itc_vl: whether the retrieval projections ``itc_{text,image}_proj`` (+ ``logit_scale``) and the VL-FFN
            ones ``itc_vl_{text,image}_proj`` (+ ``logit_vl_scale``) are present.
    """

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    image_size: int = 384
    vlffn_start: int = 10
    max_text_len: int = 40
    vocab_size: int = 30522
    layer_scale: float | None = 0.1
    relative_position: bool = True
    text_context_of_init: int = TEXT_CONTEXT_OF_INIT
    itc: bool = True
    itc_vl: bool = False

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"VLMo embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"VLMo image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if not 0 <= self.vlffn_start <= self.depth:
            raise ConfigError(f"VLMo vlffn_start {self.vlffn_start} is outside 0..depth ({self.depth})")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SIZES = {
    "vlmo-b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "vlffn_start": 10},
    "vlmo-l": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "vlffn_start": 21},
}


def vlmo_config(name: str, **overrides: Any) -> VLMoConfig:
    """The config of ``"vlmo-b"`` / ``"vlmo-l"`` (official ``vlmo_{base,large}_patch16``, 384 px COCO-retrieval
    checkpoints: the ``itc_*_proj`` heads, no VL projections)."""
    if name not in _SIZES:
        raise ConfigError(f"unknown VLMo size {name!r}; choose one of {sorted(_SIZES)}")
    return VLMoConfig(**{**_SIZES[name], **overrides})


# ------------------------------------------------------------------------------------------------ modules
class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Attention(nn.Module):
    """Self-attention shared by all modalities: one ``qkv`` matrix, q and v biases, k bias fixed at zero."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x [B, N, D]; bias [B or 1, heads, N, N] additive (relative positions and -inf at padded keys)."""
        B, N, D = x.shape
        qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, qkv_bias).reshape(B, N, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x [B, heads, N, D/heads]
        # VLMo computes the logits in fp32; the bias is fp32, so the attention runs in fp32 and returns x's dtype
        out = F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), attn_mask=None if bias is None else bias.float()
        )
        return self.proj(out.to(x.dtype).transpose(1, 2).reshape(B, N, D))


class MultiwayBlock(nn.Module):
    """Shared attention, then the modality expert: ``"image"`` (V-FFN), ``"text"`` (L-FFN) or ``"vl"`` (the
    VL-FFN where the block has one, else L-FFN on the first ``text_len`` tokens and V-FFN on the rest)."""

    def __init__(self, config: VLMoConfig, with_vl: bool) -> None:
        super().__init__()
        dim, hidden = config.embed_dim, int(config.embed_dim * config.mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, config.num_heads)
        self.norm2_text = nn.LayerNorm(dim, eps=1e-6)
        self.norm2_imag = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_text = _Mlp(dim, hidden)
        self.mlp_imag = _Mlp(dim, hidden)
        self.mlp_vl: _Mlp | None = _Mlp(dim, hidden) if with_vl else None
        self.norm2_vl = nn.LayerNorm(dim, eps=1e-6) if with_vl else None
        scale = config.layer_scale
        self.gamma_1 = nn.Parameter(torch.full((dim,), scale)) if scale is not None else None
        self.gamma_2 = nn.Parameter(torch.full((dim,), scale)) if scale is not None else None

    def _scaled(self, gamma: nn.Parameter | None, x: torch.Tensor) -> torch.Tensor:
        return x if gamma is None else gamma * x

    def forward(
        self, x: torch.Tensor, modality: str, bias: torch.Tensor | None = None, text_len: int = 0
    ) -> torch.Tensor:
        """x [B, N, D] -> [B, N, D]."""
        x = x + self._scaled(self.gamma_1, self.attn(self.norm1(x), bias))
        if modality == "image":
            return x + self._scaled(self.gamma_2, self.mlp_imag(self.norm2_imag(x)))
        if modality == "text":
            return x + self._scaled(self.gamma_2, self.mlp_text(self.norm2_text(x)))
        if modality != "vl":
            raise InvalidInputError(f"modality {modality!r} is not 'image', 'text' or 'vl'")
        if self.mlp_vl is not None and self.norm2_vl is not None:
            return x + self._scaled(self.gamma_2, self.mlp_vl(self.norm2_vl(x)))
        t, i = x[:, :text_len], x[:, text_len:]
        t = t + self._scaled(self.gamma_2, self.mlp_text(self.norm2_text(t)))
        i = i + self._scaled(self.gamma_2, self.mlp_imag(self.norm2_imag(i)))
        return torch.cat([t, i], dim=1)


class _PatchEmbed(nn.Module):
    def __init__(self, config: VLMoConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, config.embed_dim, config.patch_size, stride=config.patch_size)


class _Transformer(nn.Module):
    """The image side and the blocks (``transformer.*`` in the official files)."""

    def __init__(self, config: VLMoConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.patch_embed = _PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = None if config.relative_position else nn.Parameter(torch.zeros(1, 1 + config.grid**2, dim))
        self.blocks = nn.ModuleList(MultiwayBlock(config, i >= config.vlffn_start) for i in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)


class _TextEmbeddings(nn.Module):
    """BERT's embedding layer with transformers 4.8 semantics (positions only in ``absolute`` mode)."""

    def __init__(self, config: VLMoConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.word_embeddings = nn.Embedding(config.vocab_size, dim, padding_idx=0)
        self.position_embeddings = nn.Embedding(config.max_text_len, dim)
        self.token_type_embeddings = nn.Embedding(2, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-12)
        self.absolute = not config.relative_position

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(ids) + self.token_type_embeddings(torch.zeros_like(ids))
        if self.absolute:
            x = x + self.position_embeddings(torch.arange(ids.shape[1], device=ids.device))
        return self.LayerNorm(x)


class _Projection(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def image_relative_position_index(grid: int) -> torch.Tensor:
    """``[1+g*g, 1+g*g]`` rows of the shared table for image tokens (cls first), VLMo's layout."""
    coords = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")).flatten(1)  # 2, g*g
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (grid - 1)  # g*g, g*g, 2 in [0, 2g-2]
    num = (2 * grid - 1) ** 2 + 3
    index = torch.zeros(grid * grid + 1, grid * grid + 1, dtype=torch.long)
    index[1:, 1:] = rel[..., 0] * (2 * grid - 1) + rel[..., 1]
    index[0, :] = num - 3
    index[:, 0] = num - 2
    index[0, 0] = num - 1
    return index


def text_relative_position_index(max_len: int, grid: int, context_of_init: int = TEXT_CONTEXT_OF_INIT) -> torch.Tensor:
    """``[L, L]`` rows for text tokens: offsets j - i of the non-cls tokens, then the three cls entries."""
    num = (2 * grid - 1) ** 2 + 3
    total = num + 2 * context_of_init + 2
    pos = torch.arange(max_len - 1)
    index = torch.zeros(max_len, max_len, dtype=torch.long)
    index[1:, 1:] = (pos[None, :] - pos[:, None]) - (2 - context_of_init) + num + 2
    index[0, :] = total - 3
    index[:, 0] = total - 2
    index[0, 0] = total - 1
    return index


def text_image_relative_position_index(
    max_len: int, grid: int, context_of_init: int = TEXT_CONTEXT_OF_INIT
) -> torch.Tensor:
    """``[L+1+g*g, L+1+g*g]`` for text followed by image tokens (the fused ``"vl"`` mode)."""
    num = (2 * grid - 1) ** 2 + 3
    text = text_relative_position_index(max_len, grid, context_of_init)
    image = image_relative_position_index(grid)
    n_img = image.shape[0]
    top = torch.cat([text, torch.full((max_len, n_img), num)], dim=1)
    bottom = torch.cat([torch.full((n_img, max_len), num + 1), image], dim=1)
    return torch.cat([top, bottom], dim=0)


class VLMo(nn.Module):
    """VLMo as a dual encoder (VLP-RVOS ``MODE='separate'``), with the fused mode for completeness.

    Inputs: images ``[B, 3, S, S]`` normalised (S = ``config.image_size``), token ids ``[B, L]`` with
    ``L <= max_text_len`` and a 0/1 attention mask ``[B, L]``. The blocks are public (``transformer.blocks``,
    :meth:`embed_image`, :meth:`embed_text`, :meth:`layer_biases`) so that a prompt-tuning model can run them one by
    one and insert its tokens between them.
    """

    def __init__(self, config: VLMoConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.transformer = _Transformer(config)
        rows = (2 * config.grid - 1) ** 2 + 3 + 2 * config.text_context_of_init + 2
        self.relative_position_bias_table = (
            nn.Parameter(torch.zeros(rows, config.num_heads * config.depth)) if config.relative_position else None
        )
        self.text_embeddings = _TextEmbeddings(config)
        self.token_type_embeddings = nn.Embedding(2, dim)
        if config.itc:
            self.itc_text_proj = _Projection(dim)
            self.itc_image_proj = _Projection(dim)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        if config.itc_vl:
            self.itc_vl_text_proj = _Projection(dim)
            self.itc_vl_image_proj = _Projection(dim)
            self.logit_vl_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        g, n, ctx = config.grid, config.max_text_len, config.text_context_of_init
        self.image_index: torch.Tensor
        self.text_index: torch.Tensor
        self.text_image_index: torch.Tensor
        self.register_buffer("image_index", image_relative_position_index(g), persistent=False)
        self.register_buffer("text_index", text_relative_position_index(n, g, ctx), persistent=False)
        self.register_buffer("text_image_index", text_image_relative_position_index(n, g, ctx), persistent=False)
        self.apply(self._init_weights)
        nn.init.trunc_normal_(self.transformer.cls_token, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    # -------------------------------------------------------------------------------------------- pieces
    def embed_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` -> image tokens ``[B, 1 + g*g, D]`` (cls first, image token type added)."""
        size = self.config.image_size
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise InvalidInputError(
                f"VLMo expects images [B, 3, {size}, {size}], got {tuple(pixels.shape)}: resize to the config's "
                "image_size (the relative positions are built for its grid)"
            )
        t = self.transformer
        x = t.patch_embed.proj(pixels).flatten(2).transpose(1, 2)  # [B, g*g, D]
        x = torch.cat([t.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if t.pos_embed is not None:
            x = x + t.pos_embed
        return x + self.token_type_embeddings.weight[1]

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, L]`` -> word tokens ``[B, L, D]`` (text token type added)."""
        if ids.dim() != 2 or ids.shape[1] > self.config.max_text_len:
            raise InvalidInputError(
                f"VLMo expects token ids [B, L] with L <= {self.config.max_text_len}, got {tuple(ids.shape)}: "
                "truncate to max_text_len"
            )
        return self.text_embeddings(ids) + self.token_type_embeddings.weight[0]

    def layer_biases(self, index: torch.Tensor, key_mask: torch.Tensor | None = None) -> list[torch.Tensor | None]:
        """One additive attention bias per block, ``[B or 1, heads, N, N]``: the block's slice of the shared
        relative-position table at ``index [N, N]``, plus -inf at keys where ``key_mask [B, N]`` is 0."""
        cfg = self.config
        pad = None
        if key_mask is not None:
            pad = torch.zeros(key_mask.shape, dtype=torch.float32, device=key_mask.device)
            pad = pad.masked_fill(key_mask == 0, float("-inf"))[:, None, None, :]  # [B, 1, 1, N]
        if self.relative_position_bias_table is None:
            return [pad] * cfg.depth
        table = F.embedding(index, self.relative_position_bias_table).permute(2, 0, 1)  # [heads*depth, N, N]
        out: list[torch.Tensor | None] = []
        for chunk in table.float().chunk(cfg.depth, dim=0):
            out.append(chunk[None] if pad is None else chunk[None] + pad)
        return out

    # -------------------------------------------------------------------------------------------- encoders
    def encode_image(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Image tower: ``{"tokens": [B, 1+g*g, D]`` (V-FFN path, final norm), ``"features": [B, D]``
        (normalised retrieval embedding, if ``itc``), ``"vl_features"`` (VL-FFN path, if ``itc_vl``)}."""
        return self._encode(self.embed_image(pixels), None, self.image_index, "image")

    def encode_text(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Text tower, the same outputs as :meth:`encode_image` for token ids ``[B, L]``; ``tokens [B, L, D]``."""
        L = ids.shape[1]
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask
        return self._encode(self.embed_text(ids), mask, self.text_index[:L, :L], "text")

    def _encode(
        self, x: torch.Tensor, mask: torch.Tensor | None, index: torch.Tensor, modality: str
    ) -> dict[str, torch.Tensor]:
        cfg = self.config
        biases = self.layer_biases(index, mask)
        blocks = self.transformer.blocks
        vl: torch.Tensor | None = None
        for i, block in enumerate(blocks):
            if cfg.itc_vl and i == cfg.vlffn_start:
                vl = x
            x = block(x, modality, biases[i])
        norm = self.transformer.norm
        out = {"tokens": norm(x)}
        if cfg.itc:
            proj = self.itc_image_proj if modality == "image" else self.itc_text_proj
            out["features"] = F.normalize(proj(out["tokens"][:, 0]), dim=-1)
        if cfg.itc_vl:
            assert vl is not None or cfg.vlffn_start == cfg.depth
            vl = x if vl is None else vl
            for i in range(cfg.vlffn_start, cfg.depth):
                vl = blocks[i](vl, "vl", biases[i])
            proj = self.itc_vl_image_proj if modality == "image" else self.itc_vl_text_proj
            out["vl_features"] = F.normalize(proj(norm(vl)[:, 0]), dim=-1)
        return out

    def encode_pair(self, ids: torch.Tensor, attention_mask: torch.Tensor | None, pixels: torch.Tensor) -> torch.Tensor:
        """Fused mode (VLMo ``infer``): text then image tokens through all blocks (``"vl"`` experts); ids must be
        padded to ``max_text_len``. Returns the normed tokens ``[B, max_text_len + 1 + g*g, D]``."""
        if ids.shape[1] != self.config.max_text_len:
            raise InvalidInputError(f"fused VLMo needs token ids padded to {self.config.max_text_len}")
        text = self.embed_text(ids)
        image = self.embed_image(pixels)
        mask = torch.cat(
            [
                torch.ones_like(ids) if attention_mask is None else attention_mask,
                torch.ones(image.shape[:2], dtype=ids.dtype, device=ids.device),
            ],
            dim=1,
        )
        x = torch.cat([text, image], dim=1)
        for block, bias in zip(self.transformer.blocks, self.layer_biases(self.text_image_index, mask)):
            x = block(x, "vl", bias, text_len=ids.shape[1])
        return self.transformer.norm(x)


# ------------------------------------------------------------------------------------------------ converter
# Heads of VLMo's other objectives (MLM, ITM, VQA, NLVR2) and its pooler: not part of the dual encoder.
_TASK_HEADS = ("pooler.", "mlm_score.", "itm_score.", "vqa_classifier.", "nlvr2_classifier.")
_INDEX_KEYS = ("relative_position_index", "text_relative_position_index", "text_imag_relative_position_index")


def read_vlmo_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official VLMo ``.pt`` safely (``weights_only``): its state dict, found the way the official loader
    finds it (``state_dict``, ``module`` with the ``module.`` prefix stripped, ``model``, or the file itself)."""
    path = Path(path)
    obj = read_official_checkpoint(path, "an official VLMo checkpoint (vlmo_*_patch16_*.pt)")
    state: Any = obj
    if isinstance(obj, dict):
        for key in ("state_dict", "module", "model"):
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors: it is not an official VLMo checkpoint")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if "transformer.patch_embed.proj.weight" not in state:
        raise CheckpointError(
            f"{path} has no transformer.patch_embed.proj.weight: not a VLMo checkpoint (first keys {sorted(state)[:4]})"
        )
    return dict(state)


def infer_vlmo_config(state: dict[str, torch.Tensor], **overrides: Any) -> VLMoConfig:
    """The :class:`VLMoConfig` of an official state dict, from its keys and shapes (``overrides`` win)."""
    patch = state["transformer.patch_embed.proj.weight"]
    dim, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    depth = count_groups(state, r"transformer\.blocks\.(\d+)\.")
    vl_rx = re.compile(r"transformer\.blocks\.(\d+)\.mlp_vl\.fc1\.weight$")
    with_vl = sorted(int(m.group(1)) for k in state if (m := vl_rx.match(k)))
    vlffn_start = with_vl[0] if with_vl else depth
    if with_vl != list(range(vlffn_start, depth)):
        raise CheckpointError(f"VL-FFN experts in blocks {with_vl}: expected a contiguous top range")
    table = state.get("relative_position_bias_table")
    fields: dict[str, Any] = {
        "embed_dim": dim,
        "depth": depth,
        "patch_size": patch_size,
        "vlffn_start": vlffn_start,
        "layer_scale": 0.1 if "transformer.blocks.0.gamma_1" in state else None,
        "relative_position": table is not None,
        "itc": "itc_text_proj.fc.weight" in state,
        "itc_vl": "itc_vl_text_proj.fc.weight" in state,
    }
    words = state.get("text_embeddings.word_embeddings.weight")
    positions = state.get("text_embeddings.position_embeddings.weight")
    if words is None or positions is None:
        raise CheckpointError("text_embeddings.* are missing: not a complete VLMo checkpoint")
    fields["vocab_size"], fields["max_text_len"] = int(words.shape[0]), int(positions.shape[0])
    context = int(overrides.get("text_context_of_init", TEXT_CONTEXT_OF_INIT))
    if table is not None:
        if table.shape[1] % depth:
            raise CheckpointError(f"relative_position_bias_table has {table.shape[1]} columns, not heads x {depth}")
        fields["num_heads"] = int(table.shape[1]) // depth
        side = math.isqrt(int(table.shape[0]) - 3 - 2 * context - 2)
        if side * side + 5 + 2 * context != table.shape[0] or side % 2 == 0:
            raise CheckpointError(
                f"relative_position_bias_table has {table.shape[0]} rows, not (2g-1)^2 + 3 + 2*{context} + 2"
            )
        fields["image_size"] = (side + 1) // 2 * patch_size
    else:
        pos = state.get("transformer.pos_embed")
        if pos is None:
            raise CheckpointError("neither relative_position_bias_table nor transformer.pos_embed: not VLMo")
        grid = math.isqrt(int(pos.shape[1]) - 1)
        fields["image_size"] = grid * patch_size
        fields["num_heads"] = max(1, dim // 64)
    fields.update(overrides)
    return VLMoConfig(**fields)


def resize_relative_position_table(table: torch.Tensor, old_grid: int, new_grid: int) -> torch.Tensor:
    """The shared table ``[rows, heads*depth]`` of a ``old_grid``-square image for a ``new_grid`` one, as the
    official ``VLMo.load_pretrained_weight`` does: the ``(2g-1)^2`` image-offset rows are resampled per column by a
    bicubic spline through source offsets spaced in a geometric progression (ratio found by bisection in
    [1.01, 1.5]); the other rows (cls and text entries) are kept. The official code calls SciPy's ``interp2d``
    (removed in SciPy 1.14); SciPy's documented replacement on a regular grid, ``RectBivariateSpline`` with cubic
    degree and no smoothing, is used here. The zero offset is a node of both grids, so its row is kept."""
    import numpy as np
    from scipy.interpolate import RectBivariateSpline

    src, dst = 2 * old_grid - 1, 2 * new_grid - 1
    extra = table.shape[0] - src * src
    if extra < 0:
        raise CheckpointError(f"a table of {table.shape[0]} rows cannot hold a {old_grid}x{old_grid} grid")
    if src == dst:
        return table.clone()

    def progression(ratio: float, n: int) -> float:
        return (1.0 - ratio**n) / (1.0 - ratio)

    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if progression(q, src // 2) > dst // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1.0
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    nodes = np.array([-d for d in reversed(dis)] + [0.0] + dis)
    half = dst // 2
    targets = np.arange(-half, half + 0.1, 1.0)
    grid_part = table[: src * src].float().numpy()
    columns = []
    for c in range(table.shape[1]):
        z = grid_part[:, c].reshape(src, src)
        # interp2d(x, y, z) has z[y, x]; with x == y the spline over (rows, cols) is the same surface
        spline = RectBivariateSpline(nodes, nodes, z, kx=3, ky=3, s=0)
        columns.append(torch.from_numpy(spline(targets, targets).astype(np.float32)).reshape(-1, 1))
    resized = torch.cat(columns, dim=1).to(table.dtype)
    return torch.cat([resized, table[src * src :]], dim=0)


def convert_vlmo(
    source: str | Path | dict[str, torch.Tensor], image_size: int | None = None, **overrides: Any
) -> tuple[dict[str, torch.Tensor], VLMoConfig]:
    """An official VLMo checkpoint (file or state dict) -> ``(lvseg state dict, config)``, checked strictly
    against :class:`VLMo` built from the config (missing, unexpected and mis-shaped keys are errors).

    ``image_size`` (e.g. 352, VLP-RVOS's input for VLMo-B) resizes the relative-position table from the
    checkpoint's grid with :func:`resize_relative_position_table`, as the official loader does."""
    state = dict(source) if isinstance(source, dict) else read_vlmo_state_dict(source)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    config = infer_vlmo_config(state, **overrides)
    if image_size is not None and image_size != config.image_size:
        if image_size % config.patch_size:
            raise ConfigError(f"image_size {image_size} is not a multiple of the patch size {config.patch_size}")
        if not config.relative_position:
            raise CheckpointError("resizing is implemented for relative positions (VLMo-B/L), not absolute ones")
        new_grid = image_size // config.patch_size
        state["relative_position_bias_table"] = resize_relative_position_table(
            state["relative_position_bias_table"], config.grid, new_grid
        )
        for key in _INDEX_KEYS:  # made for the old grid; lvseg recomputes them
            state.pop(key, None)
        logger.info("relative positions resized from %dx%d to %dx%d", config.grid, config.grid, new_grid, new_grid)
        config.image_size = image_size
    g, n = config.grid, config.max_text_len
    computed = {
        "relative_position_index": image_relative_position_index(g),
        "text_relative_position_index": text_relative_position_index(n, g, config.text_context_of_init),
        "text_imag_relative_position_index": text_image_relative_position_index(n, g, config.text_context_of_init),
    }
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if key.startswith(_TASK_HEADS) or (key == "logit_vl_scale" and not config.itc_vl):
            dropped.append(key)
            continue
        if key in _INDEX_KEYS:
            if value.shape != computed[key].shape or not torch.equal(value.long(), computed[key]):
                raise CheckpointError(f"{key} differs from VLMo's index for a {g}x{g} grid and {n} text tokens")
            continue
        if key == "text_embeddings.position_ids":
            if not torch.equal(value.reshape(-1).long(), torch.arange(value.numel())):
                raise CheckpointError(f"{key} is not 0, 1, 2, ...: this checkpoint was edited")
            continue
        out[key] = value
    if dropped:
        heads = sorted({k.split(".")[0] for k in dropped})
        logger.info("dropped %d tensors of VLMo task heads not used by a dual encoder: %s", len(dropped), heads)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in VLMo(config).state_dict().items()}
    missing = sorted(set(expected) - set(out))
    unexpected = sorted(set(out) - set(expected))
    shapes = [
        f"{k}: {tuple(out[k].shape)} vs {expected[k]}"
        for k in sorted(set(out) & set(expected))
        if tuple(out[k].shape) != expected[k]
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"the VLMo checkpoint does not match the architecture inferred from it: missing {missing[:6]}, "
            f"unexpected {unexpected[:6]}, shapes {shapes[:4]}. Is it a VLMo (unilm/vlmo) checkpoint?"
        )
    return out, config


def load_vlmo(source: str | Path | dict[str, torch.Tensor], image_size: int | None = None, **overrides: Any) -> VLMo:
    """A :class:`VLMo` with the weights of an official checkpoint, loaded strictly, in eval mode (at
    ``image_size`` if given: see :func:`convert_vlmo`)."""
    state, config = convert_vlmo(source, image_size, **overrides)
    model = VLMo(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------------ VLP-RVOS adapter
_ADAPTERS: dict[type, type] = {}


def vlmo_backbone_class(base: type[nn.Module] = nn.Module) -> type[nn.Module]:
    """The VLP-RVOS backbone adapter around :class:`VLMo`, derived from ``base`` (the model's ``VLBackbone``
    interface in :mod:`lvseg.models.vlp_rvos.modules`; ``nn.Module`` works too, for the adapter alone).

    The VLP-RVOS model drives the frozen vision layers itself, one by one, with prompt tokens appended after each
    frame's ``[cls, patches]`` tokens. The adapter gives it VLMo's pieces with that contract:

    * ``embed_frames(pixels [N, 3, S, S]) -> [N, 1 + g*g, D]``: patch embedding, cls, image token type; it records
      the grid ``g`` of the frames, for the relative positions of later ``attention`` calls.
    * ``attention(layer, query, context)``: the block's shared attention (q/v biases, k bias zero) scaled by its
      layer scale ``gamma_1``. When ``query is context`` (self-attention of a frame's tokens), the block's slice
      of the shared relative-position table is added between the leading ``1 + g*g`` image tokens, as VLMo's
      image encoding does; prompt tokens and cross-frame attention (``query`` other than ``context``, the
      temporal capture) get no position bias (lvseg's choice: VLMo has no position for them). A frame grid other
      than the checkpoint's (352 px frames on the 384 px VLMo-B) uses the table resampled by
      :func:`resize_relative_position_table` (computed once per grid and weights).
    * ``ffn(layer, x)``: the V-FFN expert (``gamma_2 * mlp_imag(norm2_imag(x))``) for image and prompt tokens.
    * ``project_patches(x)``: final norm, then ``itc_image_proj`` (VLMo's retrieval space; not normalised).
    * ``encode_text(ids [B, N], mask [B, N], prompts [B, P, D] | None)``: ``[CLS, prompts, words...]`` through all
      blocks with the L-FFN expert, padded keys masked, text relative positions for the whole sequence (prompts
      count as positions: VLMo's text positions are relative offsets, valid up to 196 + 1 tokens); returns the
      final states without the prompts ``[B, N, D]``, ``mask.bool()``, and the sentence ``itc_text_proj`` of the
      final cls state ``[B, D]``.
    """
    if base in _ADAPTERS:
        return _ADAPTERS[base]

    class VLMoBackbone(base):  # type: ignore[valid-type,misc]
        def __init__(self, config: VLMoConfig) -> None:
            super().__init__()
            if not config.itc or not config.relative_position:
                raise ConfigError("the VLP-RVOS VLMo backbone needs the itc projections and relative positions")
            self.vlmo = VLMo(config)
            self.vision_dim = self.text_dim = self.joint_dim = config.embed_dim
            self.num_layers = config.depth
            self.patch_size = config.patch_size
            self.vlmo.requires_grad_(False)
            self._grid = config.grid
            self._resized: dict[int, tuple[tuple[int, int], torch.Tensor]] = {}
            self._indices: dict[tuple[int, torch.device], torch.Tensor] = {}

        def embed_frames(self, pixels: torch.Tensor) -> torch.Tensor:
            cfg, t = self.vlmo.config, self.vlmo.transformer
            if pixels.shape[-1] != pixels.shape[-2] or pixels.shape[-1] % cfg.patch_size:
                raise InvalidInputError(
                    f"VLMo frames must be square multiples of {cfg.patch_size} px, got {tuple(pixels.shape[-2:])}"
                )
            self._grid = pixels.shape[-1] // cfg.patch_size
            x = t.patch_embed.proj(pixels).flatten(2).transpose(1, 2)  # [N, g*g, D]
            x = torch.cat([t.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
            return x + self.vlmo.token_type_embeddings.weight[1].to(x.dtype)

        def _table(self) -> torch.Tensor:
            table = self.vlmo.relative_position_bias_table
            assert table is not None
            grid = self._grid
            if grid == self.vlmo.config.grid:
                return table
            key = (table.data_ptr(), table._version)
            cached = self._resized.get(grid)
            if cached is None or cached[0] != key:
                resized = resize_relative_position_table(table.detach().float().cpu(), self.vlmo.config.grid, grid)
                cached = (key, resized.to(table.device))
                self._resized[grid] = cached
            return cached[1]

        def _image_bias(self, layer: int, length: int) -> torch.Tensor:
            """[1, heads, length, length]: the layer's relative positions among the leading image tokens."""
            cfg, g = self.vlmo.config, self._grid
            device = self.vlmo.image_index.device
            index = self._indices.get((g, device))
            if index is None:  # [1+g*g, 1+g*g], the same for every layer and call at this grid
                index = self._indices[(g, device)] = image_relative_position_index(g).to(device)
            heads = cfg.num_heads
            table = self._table()[:, layer * heads : (layer + 1) * heads]
            n = index.shape[0]
            bias = torch.zeros(heads, length, length, dtype=torch.float32, device=index.device)
            bias[:, :n, :n] = F.embedding(index, table).permute(2, 0, 1).float()
            return bias[None]

        def _block(self, layer: int) -> MultiwayBlock:
            return cast(MultiwayBlock, self.vlmo.transformer.blocks[layer])

        def norm1(self, layer: int, x: torch.Tensor) -> torch.Tensor:
            return self._block(layer).norm1(x)

        def _attend(self, block: MultiwayBlock, q_in: torch.Tensor, kv_in: torch.Tensor, bias: Any) -> torch.Tensor:
            a = block.attn
            d, h = q_in.shape[-1], a.heads
            w_q, w_k, w_v = a.qkv.weight.chunk(3, dim=0)
            n, lq, lk = q_in.shape[0], q_in.shape[1], kv_in.shape[1]
            q = F.linear(q_in, w_q, a.q_bias).view(n, lq, h, d // h).transpose(1, 2)
            k = F.linear(kv_in, w_k).view(n, lk, h, d // h).transpose(1, 2)
            v = F.linear(kv_in, w_v, a.v_bias).view(n, lk, h, d // h).transpose(1, 2)
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias)
            out = a.proj(out.to(q_in.dtype).transpose(1, 2).reshape(n, lq, d))
            return out if block.gamma_1 is None else block.gamma_1 * out

        def attention(self, layer: int, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            block = self._block(layer)
            bias = self._image_bias(layer, query.shape[1]) if query is context else None
            return self._attend(block, query, context, bias)

        def ffn(self, layer: int, x: torch.Tensor) -> torch.Tensor:
            block = self._block(layer)
            out = block.mlp_imag(block.norm2_imag(x))
            return out if block.gamma_2 is None else block.gamma_2 * out

        def project_patches(self, x: torch.Tensor) -> torch.Tensor:
            return self.vlmo.itc_image_proj(self.vlmo.transformer.norm(x))

        def encode_text(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompts: torch.Tensor | None
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            vlmo, cfg = self.vlmo, self.vlmo.config
            x = vlmo.text_embeddings(input_ids) + vlmo.token_type_embeddings.weight[0]  # [B, N, D]
            keep = attention_mask.long()
            p = 0 if prompts is None else prompts.shape[1]
            if prompts is not None and p:
                x = torch.cat([x[:, :1], prompts.to(x.dtype), x[:, 1:]], dim=1)
                keep = torch.cat([keep[:, :1], keep.new_ones(keep.shape[0], p), keep[:, 1:]], dim=1)
            length = x.shape[1]
            if length - 2 >= cfg.text_context_of_init:
                raise InvalidInputError(
                    f"{length} text tokens with prompts: VLMo's relative text positions reach "
                    f"{cfg.text_context_of_init + 1}; use fewer prompts or shorter expressions"
                )
            index = text_relative_position_index(length, cfg.grid, cfg.text_context_of_init).to(x.device)
            biases = vlmo.layer_biases(index, keep)
            for block, bias in zip(vlmo.transformer.blocks, biases):
                x = block(x, "text", bias)
            x = vlmo.transformer.norm(x)
            sentence = vlmo.itc_text_proj(x[:, 0])
            words = torch.cat([x[:, :1], x[:, 1 + p :]], dim=1) if p else x
            return words, attention_mask.bool(), sentence

    _ADAPTERS[base] = VLMoBackbone
    return VLMoBackbone


def vlmo_config_from_sizes(vision: dict[str, Any], text: dict[str, Any]) -> VLMoConfig:
    """A :class:`VLMoConfig` from VLP-RVOS's backbone size dicts (``CLIPVisionConfig``-style ``vision``:
    hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, patch_size, image_size, optional
    vlffn_start; ``text``: vocab_size, max_position_embeddings). ``vlffn_start`` defaults to VLMo's: depth - 2
    for 12 layers (10), depth - 3 for 24 (21)."""
    depth = int(vision["num_hidden_layers"])
    width = int(vision["hidden_size"])
    start = vision.get("vlffn_start", {12: 10, 24: 21}.get(depth, depth))
    return VLMoConfig(
        embed_dim=width,
        depth=depth,
        num_heads=int(vision["num_attention_heads"]),
        mlp_ratio=int(vision.get("intermediate_size", 4 * width)) / width,
        patch_size=int(vision.get("patch_size", 16)),
        image_size=int(vision.get("image_size", 384)),
        vlffn_start=int(start),
        max_text_len=int(text.get("max_position_embeddings", 40)),
        vocab_size=int(text.get("vocab_size", 30522)),
        itc=True,
        itc_vl=False,
    )


def build_vlmo_backbone(config: Any) -> nn.Module:
    """The frozen VLMo backbone of a VLP-RVOS config (``config.vision`` / ``config.text`` size dicts), as the
    model's ``VLBackbone`` (see :func:`vlmo_backbone_class`). Weights: :func:`load_vlmo_backbone`."""
    import importlib

    # the model's interface class (lvseg.models.vlp_rvos.modules imports this function lazily in turn)
    base = importlib.import_module(".modules", __package__).VLBackbone
    return vlmo_backbone_class(base)(vlmo_config_from_sizes(config.vision, config.text))


def load_vlmo_backbone(backbone: nn.Module, source: str | Path | dict[str, torch.Tensor]) -> None:
    """Load an official VLMo checkpoint strictly into a VLP-RVOS VLMo backbone (``backbone.vlmo``): the converted
    state dict must match the backbone's architecture key for key and shape for shape."""
    target = getattr(backbone, "vlmo", None)
    if not isinstance(target, VLMo):
        raise ConfigError(f"{type(backbone).__name__} is not a VLMo backbone (no .vlmo VLMo module)")
    state, config = convert_vlmo(source)
    # the VL-FFN retrieval heads of pre-training files are not used by VLP-RVOS's dual-encoder backbone
    state = {k: v for k, v in state.items() if not k.startswith(("itc_vl_", "logit_vl_scale"))}
    expected = target.state_dict()
    bad = [k for k in expected if k not in state or tuple(state[k].shape) != tuple(expected[k].shape)]
    extra = [k for k in state if k not in expected]
    if bad or extra:
        raise CheckpointError(
            f"the VLMo checkpoint ({config.embed_dim} wide, {config.depth} blocks, {config.image_size} px) does not "
            f"fit this backbone ({target.config.embed_dim} wide, {target.config.depth} blocks, "
            f"{target.config.image_size} px): missing or mis-shaped {bad[:6]}, unexpected {extra[:6]}"
        )
    target.load_state_dict(state, strict=True)
    target.requires_grad_(False)
