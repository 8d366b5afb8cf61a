"""The parts of VLP-RVOS: the frozen backbone interface (CLIP through transformers), temporal-aware prompt
generation, reference-guided cross-attention, parameter-reusing temporal capture, VL feature fusion, cube-frame
attention, spatial-temporal reasoning and the released ``Segmentor`` decoder.

Which of these follow the paper's figure and abstract and which are lvseg's choices is listed in
docs/models/vlp_rvos.md. No official model code exists; nothing here is derived from one.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError

__all__ = [
    "VLBackbone",
    "CLIPBackbone",
    "VLMoBackbone",
    "build_backbone",
    "frozen_attention",
    "PromptEncoder",
    "ReferenceGuide",
    "FeatureFusion",
    "CubeFrameAttention",
    "LocalMotion",
    "ShallowDecoderLayer",
    "Segmentor",
]


# ------------------------------------------------------------------------------------------------ backbone
class VLBackbone(nn.Module):
    """What VLP-RVOS needs of a frozen vision-language backbone (CLIP here; a VLMo adapter implements the same).

    The model drives the vision layers itself, so that prompt tokens and reference guidance enter *inside* the
    frozen layers. A backbone exposes, per vision layer ``i``: :meth:`norm1`, :meth:`attention` (its frozen
    multi-head attention with separate query and key/value token sets, which parameter-reusing temporal capture
    needs) and :meth:`ffn` (the layer's second residual branch, norm included).
    """

    vision_dim: int
    text_dim: int
    joint_dim: int
    num_layers: int
    patch_size: int

    def embed_frames(self, pixels: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """[N, 3, H, W] normalised -> tokens [N, 1 + h*w, Dv] (class token first, position table resized)."""
        raise NotImplementedError

    def norm1(self, layer: int, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """Layer ``layer``'s pre-attention norm: [..., Dv] -> [..., Dv]."""
        raise NotImplementedError

    def attention(
        self, layer: int, query: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:  # pragma: no cover - interface
        """Layer ``layer``'s frozen attention: normed queries [N, Lq, Dv] over normed ``context`` [N, Lk, Dv]
        -> [N, Lq, Dv] (output projection and layer scale included, no residual). ``context=None``: the frame's own
        self-attention over ``query`` = ``[CLS, patches, prompts...]`` (where a backbone adds its position bias)."""
        raise NotImplementedError

    def ffn(self, layer: int, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """Layer ``layer``'s second branch ``mlp(norm2(x))``: [N, L, Dv] -> [N, L, Dv] (no residual)."""
        raise NotImplementedError

    def project_patches(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """Last-layer patch tokens [..., Dv] -> the joint vision-language space [..., J] (post-norm + projection)."""
        raise NotImplementedError

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompts: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # pragma: no cover - interface
        """The frozen text encoder with ``prompts`` [B, P, Dt] inserted after the start token.

        Returns ``(words [B, N, Dt], word_mask [B, N] bool (True = real word token), sentence [B, J])``: the final
        states of the expression's tokens (prompts removed), and the end token's state in the joint space.
        """
        raise NotImplementedError


def frozen_attention(
    q_proj: nn.Linear,
    k_proj: nn.Linear,
    v_proj: nn.Linear,
    out_proj: nn.Linear,
    heads: int,
    query: torch.Tensor,
    context: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-head attention with pretrained projections: [N, Lq, D] over [N, Lk, D] -> [N, Lq, D].

    ``mask``: additive float or bool (True = attend) mask broadcastable to [N, heads, Lq, Lk].
    """
    n, lq, d = query.shape
    lk = context.shape[1]
    q = q_proj(query).view(n, lq, heads, d // heads).transpose(1, 2)  # [N, heads, Lq, d/heads]
    k = k_proj(context).view(n, lk, heads, d // heads).transpose(1, 2)
    v = v_proj(context).view(n, lk, heads, d // heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out_proj(out.transpose(1, 2).reshape(n, lq, d))


class CLIPBackbone(VLBackbone):
    """A frozen ``transformers.CLIPModel`` (``self.clip``: its state dict is the HF CLIP layout, so converted
    OpenAI / open_clip / HF weights load into it unchanged)."""

    def __init__(self, vision: dict[str, Any], text: dict[str, Any], projection_dim: int) -> None:
        super().__init__()
        from transformers import CLIPConfig, CLIPModel

        config = CLIPConfig(text_config=dict(text), vision_config=dict(vision), projection_dim=projection_dim)
        self.clip = CLIPModel(config)
        self.vision_dim = int(vision["hidden_size"])
        self.text_dim = int(text["hidden_size"])
        self.joint_dim = projection_dim
        self.num_layers = int(vision["num_hidden_layers"])
        self.patch_size = int(vision["patch_size"])
        self.vision_heads = int(vision["num_attention_heads"])
        self.text_heads = int(text["num_attention_heads"])
        self.clip.requires_grad_(False)

    def embed_frames(self, pixels: torch.Tensor) -> torch.Tensor:
        vm = self.clip.vision_model
        tokens = vm.embeddings(pixels.to(self.clip.dtype), interpolate_pos_encoding=True)
        return vm.pre_layrnorm(tokens)

    def _layer(self, layer: int) -> Any:
        return self.clip.vision_model.encoder.layers[layer]

    def norm1(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self._layer(layer).layer_norm1(x)

    def attention(self, layer: int, query: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        a = self._layer(layer).self_attn
        kv = query if context is None else context
        return frozen_attention(a.q_proj, a.k_proj, a.v_proj, a.out_proj, self.vision_heads, query, kv)

    def ffn(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        block = self._layer(layer)
        return block.mlp(block.layer_norm2(x))

    def project_patches(self, x: torch.Tensor) -> torch.Tensor:
        return self.clip.visual_projection(self.clip.vision_model.post_layernorm(x))

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompts: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tm = self.clip.text_model
        emb = tm.embeddings.token_embedding(input_ids)  # [B, N, Dt]
        b, n = input_ids.shape
        keep = attention_mask.bool()
        p = 0 if prompts is None else prompts.shape[1]
        if p:
            assert prompts is not None
            # CoOp-style context: [start, prompts, words..., end]; CLIP's causal mask lets every word and the end
            # token see the prompts (prompts after the end token would change nothing the model reads)
            emb = torch.cat([emb[:, :1], prompts.to(emb.dtype), emb[:, 1:]], 1)
            keep = torch.cat([keep[:, :1], keep.new_ones(b, p), keep[:, 1:]], 1)
        length = n + p
        positions = tm.embeddings.position_ids[:, :length]
        x = emb + tm.embeddings.position_embedding(positions)
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        mask = causal[None, None] & keep[:, None, None, :]  # [B, 1, L, L], True = attend
        additive = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, torch.finfo(x.dtype).min)
        for block in tm.encoder.layers:
            h = block.layer_norm1(x)
            a = block.self_attn
            x = x + frozen_attention(a.q_proj, a.k_proj, a.v_proj, a.out_proj, self.text_heads, h, h, additive)
            x = x + block.mlp(block.layer_norm2(x))
        x = tm.final_layer_norm(x)
        # the end token is the last real token (any tokenizer that ends an expression with its end token)
        last = attention_mask.long().sum(1) - 1 + p  # [B]
        sentence = self.clip.text_projection(x[torch.arange(b, device=x.device), last])
        words = torch.cat([x[:, :1], x[:, 1 + p :]], 1) if p else x
        return words, attention_mask.bool(), sentence


class VLMoBackbone(VLBackbone):
    """A frozen VLMo (the multiway transformer of :mod:`lvseg.models.vlp_rvos.vlmo`, ``self.vlmo``: its state dict is
    the converted official layout) used as a dual encoder, as VLP-RVOS's ``MODE='separate'``.

    Vision layers use the shared attention with the block's relative-position bias on ``[CLS, patches]`` (prompt
    tokens have no position: zero bias) and the image expert FFN, both scaled by the block's layer-scale ``gamma``;
    the text runs bidirectionally through the text experts with the prompts after ``[CLS]``; the sentence is the
    retrieval projection of the text ``[CLS]`` (VLMo's text feature), the patches use the image retrieval projection.
    """

    def __init__(self, vlmo_module: Any, vision: dict[str, Any], text: dict[str, Any], image_size: int) -> None:
        super().__init__()
        width, depth = int(vision["hidden_size"]), int(vision["num_hidden_layers"])
        config = vlmo_module.VLMoConfig(
            embed_dim=width,
            depth=depth,
            num_heads=int(vision["num_attention_heads"]),
            mlp_ratio=int(vision["intermediate_size"]) / width,
            patch_size=int(vision["patch_size"]),
            image_size=image_size,
            vlffn_start=int(vision.get("vlffn_start", depth)),
            max_text_len=int(text["max_position_embeddings"]),
            vocab_size=int(text["vocab_size"]),
        )
        self.vlmo = vlmo_module.VLMo(config)
        self.vlmo.requires_grad_(False)
        self.vision_dim = self.text_dim = self.joint_dim = width
        self.num_layers = depth
        self.patch_size = int(vision["patch_size"])
        self.heads = int(vision["num_attention_heads"])
        self._bias: list[torch.Tensor | None] = []

    def embed_frames(self, pixels: torch.Tensor) -> torch.Tensor:
        # the per-layer relative-position biases of [CLS, patches], reused by every layer call of this forward
        self._bias = self.vlmo.layer_biases(self.vlmo.image_index)
        return self.vlmo.embed_image(pixels)

    def norm1(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self.vlmo.transformer.blocks[layer].norm1(x)

    def _attend(
        self, layer: int, query: torch.Tensor, context: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        block = self.vlmo.transformer.blocks[layer]
        attn = block.attn
        d = query.shape[-1]
        w_q, w_k, w_v = attn.qkv.weight.chunk(3, 0)
        n, lq, lk, h = query.shape[0], query.shape[1], context.shape[1], self.heads
        q = F.linear(query, w_q, attn.q_bias).view(n, lq, h, d // h).transpose(1, 2)
        k = F.linear(context, w_k).view(n, lk, h, d // h).transpose(1, 2)  # VLMo's key bias is zero
        v = F.linear(context, w_v, attn.v_bias).view(n, lk, h, d // h).transpose(1, 2)
        # VLMo computes attention in fp32
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias)
        out = attn.proj(out.to(query.dtype).transpose(1, 2).reshape(n, lq, d))
        return out if block.gamma_1 is None else block.gamma_1 * out

    def attention(self, layer: int, query: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        bias = None
        if context is None and self._bias and self._bias[layer] is not None:
            table = self._bias[layer]
            assert table is not None
            extra = query.shape[1] - table.shape[-1]  # prompt tokens after [CLS, patches]: no relative position
            bias = F.pad(table, (0, extra, 0, extra)) if extra > 0 else table
        return self._attend(layer, query, query if context is None else context, bias)

    def ffn(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        block = self.vlmo.transformer.blocks[layer]
        out = block.mlp_imag(block.norm2_imag(x))
        return out if block.gamma_2 is None else block.gamma_2 * out

    def project_patches(self, x: torch.Tensor) -> torch.Tensor:
        return self.vlmo.itc_image_proj(self.vlmo.transformer.norm(x))

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompts: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        v = self.vlmo
        x = v.embed_text(input_ids)  # [B, N, D]
        keep = attention_mask.long()
        p = 0 if prompts is None else prompts.shape[1]
        if p:
            assert prompts is not None
            # after [CLS], so the relative positions of the words stay those of a text of N + p tokens
            x = torch.cat([x[:, :1], prompts.to(x.dtype) + v.token_type_embeddings.weight[0], x[:, 1:]], 1)
            keep = torch.cat([keep[:, :1], keep.new_ones(keep.shape[0], p), keep[:, 1:]], 1)
        length = x.shape[1]
        biases = v.layer_biases(v.text_index[:length, :length], keep)
        for block, bias in zip(v.transformer.blocks, biases):
            x = block(x, "text", bias)
        x = v.transformer.norm(x)
        sentence = v.itc_text_proj(x[:, 0])
        words = torch.cat([x[:, :1], x[:, 1 + p :]], 1) if p else x
        return words, attention_mask.bool(), sentence


def build_backbone(config: Any) -> VLBackbone:
    """The frozen backbone a :class:`~lvseg.models.vlp_rvos.config.VLPRVOSConfig` names."""
    if config.backbone == "clip":
        return CLIPBackbone(config.vision, config.text, config.projection_dim)
    try:  # the VLMo multiway transformer lives in its own module (lvseg.models.vlp_rvos.vlmo)
        vlmo_module = importlib.import_module(".vlmo", __package__)
        vlmo_module.VLMo, vlmo_module.VLMoConfig  # noqa: B018 - what the adapter needs
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            "this lvseg has no VLMo module (lvseg.models.vlp_rvos.vlmo with VLMo and VLMoConfig): use "
            "backbone='clip', or upgrade lvseg"
        ) from exc
    return VLMoBackbone(vlmo_module, config.vision, config.text, config.image_size)


# ------------------------------------------------------------------------------------------------ prompts
class PromptEncoder(nn.Module):
    """Temporal-aware prompt generation: learnable language / vision / temporal tokens and the clip's historical
    tokens pass through one small transformer encoder (the released ``uprompt_encoder``), so the prompts of a clip
    depend on what the previous clip saw.

    ``forward(history [B, H, Dv])`` -> ``(text [B, Pt, Dt], vision [B, Pv, Dv], temporal [B, Pm, Dv])``.
    """

    def __init__(
        self,
        text_prompts: int,
        vision_prompts: int,
        temporal_prompts: int,
        history: int,
        text_dim: int,
        vision_dim: int,
        dim: int,
        heads: int,
        layers: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.counts = (text_prompts, vision_prompts, temporal_prompts)
        total = sum(self.counts)
        self.tokens = nn.Parameter(torch.randn(total, dim) * 0.02)
        self.history_in = nn.Linear(vision_dim, dim)
        self.type_embed = nn.Parameter(torch.zeros(4, dim))  # text, vision, temporal, history
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers else None
        self.norm = nn.LayerNorm(dim)
        self.text_out = nn.Linear(dim, text_dim)
        self.vision_out = nn.Linear(dim, vision_dim)
        self.temporal_out = nn.Linear(dim, vision_dim)
        types = torch.cat([torch.full((c,), i) for i, c in enumerate(self.counts)])
        self.types: torch.Tensor
        self.register_buffer("types", types, persistent=False)

    def forward(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = history.shape[0]
        prompts = (self.tokens + self.type_embed[self.types]).unsqueeze(0).expand(b, -1, -1)
        hist = self.history_in(history) + self.type_embed[3]
        x = torch.cat([prompts, hist], 1)
        if self.encoder is not None:
            x = self.encoder(x)
        x = self.norm(x[:, : prompts.shape[1]])
        t, v, _ = self.counts
        return self.text_out(x[:, :t]), self.vision_out(x[:, t : t + v]), self.temporal_out(x[:, t + v :])


class ReferenceGuide(nn.Module):
    """Reference-guided encoding: a cross-attention from a vision layer's normed tokens to the words, added to the
    same residual as the frozen self-attention, behind a zero-initialised tanh gate (the frozen layer is unchanged
    at the start of training). Written with ``scaled_dot_product_attention`` and a boolean mask: under CPU bf16
    autocast ``nn.MultiheadAttention`` with a key padding mask took 14x longer (docs/models/vlp_rvos.md).

    ``forward(x [N, L, Dv], words [N, Lw, Dv], word_pad [N, Lw] bool True = padding)`` -> [N, L, Dv].
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, words: torch.Tensor, word_pad: torch.Tensor) -> torch.Tensor:
        keep = ~word_pad[:, None, None, :]  # [N, 1, 1, Lw], True = attend
        out = frozen_attention(self.q, self.k, self.v, self.out, self.heads, x, words, keep)
        return torch.tanh(self.gate) * out


# ------------------------------------------------------------------------------------------------ after extraction
class _CrossBlock(nn.Module):
    """Pre-norm cross-attention + FFN: ``x + attn(norm(x), kv)`` then ``+ ffn``."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, kv_pad: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm_kv(kv)
        out, _ = self.attn(self.norm_q(x), h, h, key_padding_mask=kv_pad, need_weights=False)
        x = x + self.drop(out)
        return x + self.drop(self.ffn(self.norm_ffn(x)))


class FeatureFusion(nn.Module):
    """VL feature fusion, "dual propagation & fusion": the words gather the clip's visual context, the visual
    tokens gather the updated words, then the sentence feature modulates every visual token.

    ``forward(vis [B, L, d], words [B, Lw, d], word_pad [B, Lw], sentence [B, d])`` -> ``(fused [B, L, d],
    words [B, Lw, d])``.
    """

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float, layers: int) -> None:
        super().__init__()
        self.to_text = nn.ModuleList(_CrossBlock(dim, heads, ffn, dropout) for _ in range(layers))
        self.to_vision = nn.ModuleList(_CrossBlock(dim, heads, ffn, dropout) for _ in range(layers))
        self.modulate = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, vis: torch.Tensor, words: torch.Tensor, word_pad: torch.Tensor, sentence: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for to_text, to_vision in zip(self.to_text, self.to_vision):
            words = to_text(words, vis)
            vis = to_vision(vis, words, word_pad)
        fused = self.norm(vis + vis * self.modulate(sentence).unsqueeze(1))
        return fused, words


def _sine(index: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [..., dim] of positions ``index`` (float)."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=index.device, dtype=torch.float32) / half)
    angle = index.float()[..., None] * freq
    out = torch.cat([angle.sin(), angle.cos()], -1)
    return F.pad(out, (0, dim - 2 * half))


def volume_position(t: int, h: int, w: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Fixed sinusoidal embedding [t, h, w, dim] of each token's (row, column, frame): ``dim`` split into three
    even parts (row, column; the frame takes the rest), each :func:`_sine` of the integer index."""
    part = (dim // 3) // 2 * 2
    rows = _sine(torch.arange(h, device=device), part)[None, :, None].expand(t, h, w, part)
    cols = _sine(torch.arange(w, device=device), part)[None, None, :].expand(t, h, w, part)
    frames = _sine(torch.arange(t, device=device), dim - 2 * part)[:, None, None].expand(t, h, w, dim - 2 * part)
    return torch.cat([rows, cols, frames], -1)


class LocalMotion(nn.Module):
    """Where each token's content was one frame earlier (lvseg's option, ``VLPRVOSConfig.volume_motion``): the
    cosine of every token of frame t with the tokens of frame t - 1 in a (2r + 1) x (2r + 1) window around it (a
    local correlation, as a flow network's cost volume), softmax over the window with a learnable temperature, and
    the K = (2r + 1)^2 weights projected to the token width. The projection starts at zero, so the module adds
    nothing until training finds a use for it. Frame 0 of a clip is compared with itself; windows past the border
    read zeros.

    ``forward(x [B, T, H, W, d])`` -> [B, T, H, W, d] (to be added to ``x``); :meth:`weights` gives the
    [B, T, H, W, K] softmax (offsets row-major, (-r, -r) first).
    """

    def __init__(self, dim: int, radius: int) -> None:
        super().__init__()
        if radius < 1:
            raise ConfigError(
                f"LocalMotion needs radius >= 1 (VLPRVOSConfig.volume_motion = 0 turns it off), got {radius}"
            )
        self.radius = radius
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.proj = nn.Linear((2 * radius + 1) ** 2, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h, w, d = x.shape
        r = self.radius
        unit = F.normalize(x, dim=-1).permute(0, 1, 4, 2, 3).reshape(b * t, d, h, w)
        previous = torch.cat([unit.view(b, t, d, h, w)[:, :1], unit.view(b, t, d, h, w)[:, :-1]], 1)
        padded = F.pad(previous.reshape(b * t, d, h, w), (r, r, r, r))
        cosine = torch.stack(
            [
                (unit * padded[:, :, dy : dy + h, dx : dx + w]).sum(1)
                for dy in range(2 * r + 1)
                for dx in range(2 * r + 1)
            ],
            -1,
        )  # [B*T, H, W, K]
        return (self.scale * cosine).softmax(-1).view(b, t, h, w, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.weights(x))


class CubeFrameAttention(nn.Module):
    """Cube-frame attention (one layer of the spatial-temporal encoder), lvseg's reading of the name: every token
    attends within its local spatio-temporal cube of ``cube`` = (t, h, w) tokens (local motion), then to per-frame
    summary tokens that have attended to each other (clip-level context); pre-norm, FFN last. Cost
    O(T·H·W·(|cube| + T)) instead of O((T·H·W)²) for full attention.

    ``forward(x [B, T, H, W, d])`` -> [B, T, H, W, d].
    """

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float, cube: tuple[int, int, int]) -> None:
        super().__init__()
        self.cube = cube
        self.cube_pos = nn.Parameter(torch.zeros(cube[0] * cube[1] * cube[2], dim))
        nn.init.trunc_normal_(self.cube_pos, std=0.02)
        self.norm_cube = nn.LayerNorm(dim)
        self.cube_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_frame = nn.LayerNorm(dim)
        self.frame_self = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_read = nn.LayerNorm(dim)
        self.frame_read = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, dim))
        self.drop = nn.Dropout(dropout)

    def _cubes(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h, w, d = x.shape
        ct, ch, cw = min(self.cube[0], t), min(self.cube[1], h), min(self.cube[2], w)
        pt, ph, pw = (-t) % ct, (-h) % ch, (-w) % cw
        y = self.norm_cube(x)
        valid = torch.ones(b, t, h, w, dtype=torch.bool, device=x.device)
        if pt or ph or pw:
            y = F.pad(y, (0, 0, 0, pw, 0, ph, 0, pt))
            valid = F.pad(valid, (0, pw, 0, ph, 0, pt))
        tt, hh, ww = t + pt, h + ph, w + pw
        shape = (b, tt // ct, ct, hh // ch, ch, ww // cw, cw)
        # [B, nt, ct, nh, ch, nw, cw, d] -> [B*nt*nh*nw, ct*ch*cw, d]
        cubes = y.view(*shape, d).permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, ct * ch * cw, d)
        pad = ~valid.view(*shape).permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, ct * ch * cw)
        pos = self.cube_pos.view(*self.cube, d)[:ct, :ch, :cw].reshape(1, -1, d)
        qk = cubes + pos
        out, _ = self.cube_attn(qk, qk, cubes, key_padding_mask=pad, need_weights=False)
        out = out.view(b, tt // ct, hh // ch, ww // cw, ct, ch, cw, d).permute(0, 1, 4, 2, 5, 3, 6, 7)
        return out.reshape(b, tt, hh, ww, d)[:, :t, :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h, w, d = x.shape
        x = x + self.drop(self._cubes(x))
        frames = self.norm_frame(x).mean((2, 3)) + _sine(torch.arange(t, device=x.device), d).to(x.dtype)  # [B,T,d]
        frames = frames + self.frame_self(frames, frames, frames, need_weights=False)[0]
        tokens = self.norm_read(x).reshape(b, t * h * w, d)
        read, _ = self.frame_read(tokens, frames, frames, need_weights=False)
        x = x + self.drop(read).view(b, t, h, w, d)
        return x + self.drop(self.ffn(self.norm_ffn(x)))


class ShallowDecoderLayer(_CrossBlock):
    """The transformer decoder of spatial-temporal reasoning: shallow visual features as queries, the fused words
    as keys/values (cross-attention + FFN per token; no self-attention over the T·H·W queries, which the
    cube-frame encoder beside it already provides). ``forward(q [B, L, d], words [B, Lw, d], pad [B, Lw])``."""


class Segmentor(nn.Module):
    """The released ``segmentor.py`` mask head: 1x1 conv to ``hidden``, 3x3 conv then x2 bilinear up, 3x3 conv to
    ``hidden/2`` then x2, 3x3 conv, 1x1 conv to ``out_dim`` (GroupNorm(8) + ReLU after every conv but the last;
    xavier init); the last x4 upsampling goes to ``size`` (= x4 for patch 16; exactly the input for patch 14).

    ``forward(x [N, C, h, w], size)`` -> [N, out_dim, *size].
    """

    def __init__(self, in_dim: int, out_dim: int = 1, hidden: int = 256) -> None:
        super().__init__()

        def block(cin: int, cout: int, k: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), nn.GroupNorm(8, cout), nn.ReLU(inplace=True))

        half = hidden // 2
        self.conv_in = block(in_dim, hidden, 1)
        self.conv_16x = block(hidden, hidden, 3)
        self.conv_8x = block(hidden, half, 3)
        self.conv_4x = block(half, half, 3)
        self.conv_out = nn.Conv2d(half, out_dim, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.conv_16x(self.conv_in(x))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        x = self.conv_8x(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        x = self.conv_out(self.conv_4x(x))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
