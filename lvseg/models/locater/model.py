"""Locater (Liang et al., "Local-Global Context Aware Transformer for Language-Guided Video Segmentation", TPAMI
2023), re-implemented from the facts of leonnnop/Locater (HEAD 5da6daa; the model code of commit 4333da1).

Per frame (official ``_forward_testing``, one frame per step):

1. ViT (``vision_depth`` blocks, ``pre_logits`` Linear+Tanh on *every* token) -> [B, 1+P, C];
2. ``fusion_stages`` cascaded fusion stages over [visual; words] (the words pass unchanged), class token dropped
   -> ``cur`` [B, P, C];
3. adaptive query: pooled ``cur``, local and global memory -> one query per head attending over the words
   -> [B, Hq, C];
4. memory read: cross-attention of ``cur`` over [local; global] memory, LayerNorm, **no residual** -> [B, P, C];
5. mask decoder: per-head similarities of the read features and the queries, concatenated after the features,
   five 3x3 convolutions with four bilinear x2 upsamplings between them (no activations) -> logits [B, 1, S, S];
6. local memory write: the binarised mask (``sigmoid > 0.5``) encoded by a 3x3 convolution, resized to the patch
   grid, added to ``cur``; the memory fills up to its capacity, then a learned gated update rewrites it.

The global memory is written once per (video, expression) from ``global_frames`` frames sampled over the whole
video (:func:`global_frame_indices`). Both memories have a fixed size, so every frame costs the same and memory
does not grow with the video: :meth:`Locater.segment_window` carries them (:class:`LocaterState`) from window to
window, and the :class:`~lvseg.Predictor` builds the global memory from frames it reads ahead
(:meth:`Locater.stream_context_indices`) without keeping the video in memory.

Two computations are arranged differently from the official code, with the same results up to float rounding and
far less memory (see ``docs/models/locater.md``): the keep term of the memory update averages the gates over the
new tokens before multiplying (official: a [B, H, N, M, D] product, 1 GB per update at 320 px), and the mask
encoding is evaluated only where the bilinear resize samples it (official: a 768-channel map at full resolution).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError, InvalidInputError
from ..base import RVOSModel, check_clip_frames, validate_texts
from .config import LocaterConfig

__all__ = ["Locater", "LocaterConfig", "LocaterState", "global_frame_indices"]

logger = logging.getLogger(__name__)


def global_frame_indices(num_frames: int, count: int) -> list[int]:
    """0-based positions of the frames the global memory is written from (official ``_extract_global_imgs``).

    The official code reads frame numbers ``(1 + step) // 2 + i * step`` with ``step = int(num_frames / count)``
    from 1-based ``%05d.png`` files; the position is that number minus one. A video shorter than ``count`` frames
    (``step = 0``, a file the official code cannot read) uses its first frame ``count`` times.
    """
    if num_frames < 1:
        raise InvalidInputError("a video needs at least one frame")
    step = int(num_frames / count)
    return [min(max((1 + step) // 2 + i * step - 1, 0), num_frames - 1) for i in range(count)]


# ----------------------------------------------------------------------------------------------- building blocks
class Mlp(nn.Module):
    """Linear -> GELU -> Linear (``fc1``, ``fc2``)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim_in, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm ViT layout), eager softmax."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, C] -> [B, N, C]."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # 3 x [B, H, N, D]
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3, S, S] -> [N, P, C]."""
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionEncoder(nn.Module):
    """The official truncated ViT-B/16 (``vision_transformer(depth=6, representation_size=768)``)."""

    def __init__(self, cfg: LocaterConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.patch_num + 1, dim))
        self.blocks = nn.Sequential(
            *(Block(dim, cfg.vision_heads, cfg.mlp_ratio, 1e-6) for _ in range(cfg.vision_depth))
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pre_logits = nn.Sequential(OrderedDict([("fc", nn.Linear(dim, dim)), ("act", nn.Tanh())]))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3, S, S] -> [N, 1 + P, C] (``pre_logits`` applied to all tokens, as the official code does)."""
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.blocks(x + self.pos_embed)
        return self.pre_logits(self.norm(x))


class TextEncoder(nn.Module):
    """Word embedding of BERT WordPiece ids (``vocab_size`` rows) -> bidirectional LSTM -> LayerNorm.

    Every position runs through the LSTM, padding included (the official code ignores the attention mask)."""

    def __init__(self, cfg: LocaterConfig) -> None:
        super().__init__()
        self.emb = nn.Embedding(cfg.vocab_size, cfg.word_dim)
        self.lang_model = nn.LSTM(cfg.word_dim, cfg.embed_dim // 2, num_layers=cfg.text_layers, bidirectional=True)
        self.norm = nn.LayerNorm(cfg.embed_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: long [B, L] -> word features [B, L, C]."""
        x = self.emb(ids).transpose(0, 1)  # the LSTM is sequence-first: [L, B, E]
        x, _ = self.lang_model(x)
        return self.norm(x.transpose(0, 1))


class FusionStage(nn.Module):
    """One official ``EncodeNet``: blocks over [visual; words] with modality embeddings, the shared ``norm``,
    then blocks over the visual tokens only and the **same** ``norm`` again."""

    def __init__(self, cfg: LocaterConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.modal_embed = nn.Parameter(torch.zeros(1, 2, dim))
        self.blocks = nn.ModuleList(Block(dim, cfg.fusion_heads, cfg.mlp_ratio, 1e-5) for _ in range(cfg.fuse_depth))
        self.pos_blocks = nn.ModuleList(
            Block(dim, cfg.fusion_heads, cfg.mlp_ratio, 1e-5) for _ in range(cfg.post_depth)
        )
        self.norm = nn.LayerNorm(dim)
        nn.init.trunc_normal_(self.modal_embed, std=0.02)

    def forward(self, vis: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """vis: [B*T, 1+P, C] (video-major), words: [B, L, C] -> visual tokens [B*T, 1+P, C]."""
        n_vis = vis.shape[1]
        b, n_words, c = words.shape
        lang = words + self.modal_embed[:, 1:]
        if vis.shape[0] != b:  # T frames per expression
            t = vis.shape[0] // b
            lang = lang.view(b, 1, n_words, c).repeat(1, t, 1, 1).view(-1, n_words, c)
        x = torch.cat([vis + self.modal_embed[:, :1], lang], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)[:, :n_vis]
        for blk in self.pos_blocks:
            x = blk(x)
        return self.norm(x)


class ProjectDot(nn.Module):
    """Scaled per-head dot products of projected ``x`` and ``y`` (official ``ProjectDotDistance``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: [B, N, C], y: [B, M, C] -> similarities [B, H, N, M]."""
        b, n, c = x.shape
        m = y.shape[1]
        q = self.q(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        k = self.k(y).reshape(b, m, self.heads, c // self.heads).transpose(1, 2)
        return (q @ k.transpose(-2, -1)) * self.scale


class CrossAttention(nn.Module):
    """Multi-head cross-attention with separate ``q``, ``k``, ``v`` projections and an output ``proj``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """query: [B, N, C], memory: [B, M, C] -> [B, N, C]."""
        b, n, c = query.shape
        m = memory.shape[1]
        h, d = self.heads, c // self.heads
        q = self.q(query).reshape(b, n, h, d).transpose(1, 2)
        k = self.k(memory).reshape(b, m, h, d).transpose(1, 2)
        v = self.v(memory).reshape(b, m, h, d).transpose(1, 2)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class MemoryWriter(nn.Module):
    """Official ``GlobalMemoryNet`` / ``LocalMemoryNet``: fill the memory up to ``capacity`` tokens, then rewrite
    it with the learned gated update (:meth:`update`) once per new frame, each followed by ``norm2``.

    The local writer (``mask_encoder=True``) adds the encoded mask of the frame before ``norm1`` and has a LayerNorm
    after ``c_func``'s MLP.
    """

    def __init__(self, dim: int, capacity: int, heads: int, mlp_ratio: float, mask_encoder: bool) -> None:
        super().__init__()
        self.capacity = capacity
        self.heads = heads
        hidden = int(dim * mlp_ratio)
        c_func: list[nn.Module] = [Mlp(2 * dim, hidden, dim)]
        if mask_encoder:
            c_func.append(nn.LayerNorm(dim))
        self.c_func = nn.Sequential(*c_func)
        self.o_func = nn.Sequential(ProjectDot(dim, heads), nn.Sigmoid())
        self.m_func = Mlp(dim, hidden, dim)
        self.post_func = Mlp(dim, hidden, dim)
        self.mask_enc = nn.Conv2d(1, dim, kernel_size=3, padding=1) if mask_encoder else None
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def update(self, fea: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        """Official ``update_function``: fea [B, N, C] (one frame), mem [B, M, C] -> the new memory [B, M, C].

        ``c = c_func([fea, mean(mem)])``; gates ``o = sigmoid(q(c) . k(mem))`` [B, H, N, M]; the memory becomes
        ``post_func(o^T c) + mean_N(1 - o) * m_func(mem)`` per head. The keep term averages the gates before the
        product (the official code averages a [B, H, N, M, D] product: the same up to rounding).
        """
        b, n, c = fea.shape
        m = mem.shape[1]
        h = self.heads
        d = c // h
        pooled = mem.mean(dim=1, keepdim=True)  # [B, 1, C]
        ctx = self.c_func(torch.cat([fea, pooled.expand_as(fea)], dim=2))  # [B, N, C]
        gates = self.o_func[1](self.o_func[0](ctx, mem))  # [B, H, N, M]
        ctx_heads = ctx.reshape(b, n, h, d).transpose(1, 2)  # [B, H, N, D]
        written = self.post_func((gates.transpose(-1, -2) @ ctx_heads).transpose(1, 2).reshape(b, m, c))
        kept = (1 - gates).mean(dim=2).unsqueeze(-1) * self.m_func(mem).reshape(b, m, h, d).transpose(1, 2)
        return written + kept.transpose(1, 2).reshape(b, m, c)

    def _pad(self, mem: torch.Tensor) -> torch.Tensor:
        """Official ``_check_memory``: fill up to ``capacity`` with the mean token (computed without gradient)."""
        missing = self.capacity - mem.shape[1]
        if missing <= 0:
            return mem
        with torch.no_grad():
            return torch.cat([mem, mem.mean(dim=1, keepdim=True).repeat(1, missing, 1)], dim=1)

    def write(self, fea: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        """fea: [B, T, N, C] (``norm1`` applied), prev: [B, M, C] or None -> memory [B, <= capacity, C]."""
        b, t, n, c = fea.shape
        cap = self.capacity
        if prev is None:
            if t * n <= cap:
                return fea.reshape(b, -1, c)
            with torch.no_grad():
                start = int(cap // float(n))
                prev = fea[:, :start].reshape(b, -1, c) if start > 0 else fea[:, 0].mean(1).view(b, 1, c)
        elif prev.shape[1] == cap:
            start = 0
        elif t * n + prev.shape[1] <= cap:
            return torch.cat([prev, fea.reshape(b, -1, c)], dim=1)
        else:
            with torch.no_grad():
                start = int((cap - prev.shape[1]) // float(n))
                if start > 0:
                    prev = torch.cat([prev, fea[:, :start].reshape(b, -1, c)], dim=1)
        mem = self._pad(prev)
        for i in range(start, t):
            mem = self.norm2(self.update(fea[:, i], mem))
        return mem

    def encode_mask(self, mask: torch.Tensor, grid: int) -> torch.Tensor:
        """Official ``interpolate(mask_enc(mask), grid, bilinear, align_corners=False)``, flattened: mask
        [B, 1, S, S] -> [B, grid * grid, C].

        The bilinear resize by the integer factor ``s = S / grid`` reads the convolution at two rows and two
        columns per cell (``s*i + s/2 - 1`` and ``s*i + s/2`` with weights 1/2 for even ``s``; ``s*i + (s-1)/2``
        for odd ``s``), all inside the image. Their mean is one 4x4 (even) or 3x3 (odd) convolution of the mask
        with stride ``s``, which is what runs here: the same values without the C x S x S map.
        """
        assert self.mask_enc is not None
        size = mask.shape[-1]
        if size % grid or mask.shape[-2] != size:
            encoded = F.interpolate(self.mask_enc(mask), size=grid, mode="bilinear", align_corners=False)
            return encoded.flatten(2).transpose(1, 2)
        s = size // grid
        weight = self.mask_enc.weight  # [C, 1, 3, 3]
        if s % 2 == 0:
            # mean of the 3x3 kernel at the 2x2 sampled offsets = one 4x4 kernel; its window starts at s/2 - 2
            kernel = 0.25 * (
                F.pad(weight, (0, 1, 0, 1))
                + F.pad(weight, (1, 0, 0, 1))
                + F.pad(weight, (0, 1, 1, 0))
                + F.pad(weight, (1, 0, 1, 0))
            )
            start = s // 2 - 2
        else:
            kernel, start = weight, (s - 1) // 2 - 1
        if start < 0:  # s = 2 (or 1): the window reaches the zero padding; pad as the convolution does
            mask, start = F.pad(mask, (1, 1, 1, 1)), start + 1
        encoded = F.conv2d(mask[..., start:, start:], kernel, self.mask_enc.bias, stride=s)[..., :grid, :grid]
        return encoded.flatten(2).transpose(1, 2)


class QueryGenerator(nn.Module):
    """Official ``QueryNet``: the pooled frame, local and global memory give one query per head over the words."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.vis_proj = Mlp(3 * dim, hidden, dim)
        self.lin_proj = Mlp(dim, hidden, dim)
        self.value_proj = Mlp(dim, hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, words: torch.Tensor, cur: torch.Tensor, local: torch.Tensor, global_mem: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """words [B, L, C], cur [B, P, C], local [B, M, C], global_mem [B, G, C] -> (queries [B, H, C], attention
        over the words [B, H, L]; no padding mask, as the official code)."""
        b, n_words, c = words.shape
        h = self.heads
        pooled = torch.cat([cur.mean(dim=1), local.mean(dim=1), global_mem.mean(dim=1)], dim=1)
        vis = self.vis_proj(pooled).view(b, h, c // h, 1)
        keys = self.lin_proj(words).reshape(b, n_words, h, c // h).transpose(1, 2)  # [B, H, L, D]
        values = self.value_proj(words)
        attn = ((keys @ vis).squeeze(-1) * self.scale).softmax(dim=-1)  # [B, H, L]
        return self.norm(torch.bmm(attn, values)), attn


class MaskDecoder(nn.Module):
    """Official ``ProjectDotDecode`` ('concat', no cosine norm): the read features [C] and the H x M per-head
    similarities to the queries (channel ``h * M + m``) -> five 3x3 convolutions, bilinear x2 between them."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        in_c = dim + heads * heads
        mid = in_c // 4
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip([in_c, mid, mid, mid, mid], [mid, mid, mid, mid, 1])):
            layers.append(nn.Conv2d(cin, cout, kernel_size=3, padding=1))
            if i != 4:
                layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        self.mask_head = nn.Sequential(*layers)

    def forward(self, feats: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """feats [B, P, C], queries [B, M, C] -> mask logits [B, 1, 16 sqrt(P), 16 sqrt(P)]."""
        b, p, c = feats.shape
        m = queries.shape[1]
        h = self.heads
        grid = int(round(p**0.5))
        q = self.q(feats).reshape(b, p, h, c // h).transpose(1, 2)
        k = self.k(queries).reshape(b, m, h, c // h).transpose(1, 2)
        sim = ((q @ k.transpose(-2, -1)) * self.scale).transpose(-1, -2).reshape(b, h * m, p)  # [B, H*M, P]
        x = torch.cat([feats.transpose(-1, -2), sim], dim=1).view(b, -1, grid, grid)
        return self.mask_head(x)


# ----------------------------------------------------------------------------------------------------- model
@dataclass
class LocaterState:
    """What :meth:`Locater.segment_window` carries from window to window (one entry per expression).

    ``words``: word features [B, L, C]; ``global_mem``: [B, G, C], written once per video; ``local_mem``:
    [B, <= local capacity, C] or None before the first frame; ``frames``: frames segmented so far; ``texts``: the
    expressions the state belongs to.
    """

    words: torch.Tensor
    global_mem: torch.Tensor
    local_mem: torch.Tensor | None
    frames: int
    texts: tuple[str, ...]


class Locater(RVOSModel):
    """Locater: ViT + LSTM text encoder, cascaded fusion, finite local and global memory, adaptive query, mask
    decoder; one frame per step (see the module docstring).

    ``segment`` runs a clip as a whole video (global memory from frames sampled over the clip); ``segment_window``
    continues a video window by window with a :class:`LocaterState`; the Predictor starts that state from frames
    sampled over the whole video (:meth:`stream_context_indices`, :meth:`init_stream_state`).
    """

    config_class = LocaterConfig
    architecture = "locater"
    config: LocaterConfig

    def __init__(self, config: LocaterConfig, tokenizer: Any = None) -> None:
        super().__init__(config)
        cfg = config
        if cfg.query_heads * cfg.query_heads + cfg.embed_dim <= 0:  # pragma: no cover - checked by the config
            raise ConfigError("invalid Locater sizes")
        self.tokenizer = tokenizer
        dim = cfg.embed_dim
        self.vision_encoder = VisionEncoder(cfg)
        self.lang_encoder = TextEncoder(cfg)
        self.trans_fusion = nn.ModuleList(FusionStage(cfg) for _ in range(cfg.fusion_stages))
        self.localmem_writer = MemoryWriter(dim, cfg.local_tokens, cfg.memory_heads, cfg.mlp_ratio, True)
        self.globalmem_writer = MemoryWriter(dim, cfg.global_tokens, cfg.memory_heads, cfg.mlp_ratio, False)
        self.mem_reader = nn.Sequential(CrossAttention(dim, cfg.memory_heads), nn.LayerNorm(dim))
        self.aux_decoders = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dim, dim, 1),
                nn.BatchNorm2d(dim),
                nn.ReLU(),
                nn.Conv2d(dim, 1, 1),
                nn.Upsample(scale_factor=cfg.patch_size, mode="bilinear", align_corners=False),
            )
            for _ in range(cfg.fusion_stages)
        )
        self.query_generator = QueryGenerator(dim, cfg.query_heads, cfg.mlp_ratio)
        self.main_dec_net = MaskDecoder(dim, cfg.query_heads)
        self.apply(_init_weights)

    # ------------------------------------------------------------------------------------------- inputs
    def _check_frames(self, frames: torch.Tensor, texts: Sequence[str]) -> None:
        check_clip_frames(frames, texts, "mean/std 0.5")
        if frames.shape[1] < 1 or min(frames.shape[-2:]) < 2:
            raise InvalidInputError(f"frames of shape {tuple(frames.shape)} are too small for Locater")

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """BERT WordPiece ids long [B, L] as the official loader makes them: lower-cased, ``[CLS] ... [SEP]``
        truncated to ``L = preprocessing.max_text_tokens`` (22) keeping ``[SEP]``, padded with id 0 (the padding
        is not masked: it runs through the LSTM).

        The embedding has ``vocab_size`` (30000) rows but BERT's vocabulary 30522 ids: an id past the embedding
        (rare ``##`` word pieces; the official code fails with an index error) is mapped to ``[UNK]``
        (``unk_token_id``, 100) with a warning.
        """
        if self.tokenizer is None:
            raise ConfigError(
                "this Locater model has no tokenizer: load it with lvseg.load(...) / from_pretrained, or set "
                "model.tokenizer = transformers.BertTokenizer.from_pretrained('bert-base-uncased')"
            )
        budget = self.config.preprocessing.max_text_tokens
        lowered = [t.lower() for t in texts]
        encoded = self.tokenizer(lowered, padding="max_length", max_length=budget, truncation=True)
        ids = torch.tensor(encoded["input_ids"], dtype=torch.long)
        outside = ids >= self.config.vocab_size
        if outside.any():
            pieces = sorted({str(p) for p in self.tokenizer.convert_ids_to_tokens(ids[outside].tolist())})
            logger.warning(
                "word piece(s) %s have ids >= %d, past Locater's word embedding: read as [UNK] (id %d)",
                ", ".join(pieces),
                self.config.vocab_size,
                self.config.unk_token_id,
            )
            ids = ids.masked_fill(outside, self.config.unk_token_id)
        return ids

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """ids long [B, L] -> word features [B, L, C]."""
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise InvalidInputError(
                f"token ids must lie in [0, {self.config.vocab_size}) (the word embedding's rows), got "
                f"[{int(ids.min())}, {int(ids.max())}]; use Locater.tokenize, which maps the others to [UNK]"
            )
        return self.lang_encoder(ids.to(self.device))

    def _square(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] -> [B, T, 3, S, S] (official ``Resize``: bilinear, ``align_corners=True``, aspect not
        kept; here after normalisation, which is affine per channel, so the same up to rounding)."""
        size = self.config.image_size
        if tuple(frames.shape[-2:]) == (size, size):
            return frames
        if _is_shared_clip(frames):  # one clip expanded for several expressions: resize it once, keep the view
            return self._square(frames[:1]).expand(frames.shape[0], -1, -1, -1, -1)
        flat = F.interpolate(frames.flatten(0, 1), size=(size, size), mode="bilinear", align_corners=True)
        return flat.unflatten(0, frames.shape[:2])

    # ------------------------------------------------------------------------------------------- network
    def encode_frames(
        self, frames: torch.Tensor, words: torch.Tensor, intermediate: bool = False, tokens: torch.Tensor | None = None
    ) -> Any:
        """ViT + cascaded fusion of square frames.

        Args:
            frames: [B, T, 3, S, S] normalised frames.
            words: [B, L, C] word features.
            intermediate: also return every fusion stage's visual tokens (for the auxiliary decoders).
            tokens: the ViT's output for these frames when already computed ([B*T, 1+P, C]); ``frames`` is then
                only read for its shape.

        Returns:
            fused visual tokens without the class token [B, T, P, C] (and, with ``intermediate``, a list of the K
            stage outputs [B, T, P, C]).

        The ViT never sees the text: when ``frames`` is one clip expanded for several expressions (batch stride 0,
        as the Predictor passes it) it runs once on that clip's T frames, and the fusion, which reads the words,
        runs expression by expression on those tokens (each expression's output is then that of a call with it
        alone; batched, the fusion cost more than linearly in the expressions).
        """
        b, t = frames.shape[:2]
        if tokens is None and _is_shared_clip(frames):
            shared = self.vision_encoder(frames[0])  # [T, 1+P, C]
            outs = [self.encode_frames(frames[:1], words[i : i + 1], intermediate, shared) for i in range(b)]
            if intermediate:
                return torch.cat([o[0] for o in outs]), [torch.cat(k) for k in zip(*(o[1] for o in outs))]
            return torch.cat(outs)
        x = self.vision_encoder(frames.flatten(0, 1)) if tokens is None else tokens  # [B*T, 1+P, C]
        stages = []
        for stage in self.trans_fusion:
            x = stage(x, words)
            stages.append(x[:, 1:].unflatten(0, (b, t)))
        if intermediate:
            return stages[-1], stages
        return stages[-1]

    def global_memory(self, fused: torch.Tensor) -> torch.Tensor:
        """fused tokens of the sampled frames [B, N1, P, C] -> global memory [B, G, C] (official
        ``_prep_global_mem``)."""
        return self.globalmem_writer.write(self.globalmem_writer.norm1(fused))

    def step(
        self, cur: torch.Tensor, words: torch.Tensor, global_mem: torch.Tensor, local_mem: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One frame of the recurrence (official ``_forward_testing`` after the fusion).

        Args:
            cur: the frame's fused tokens [B, P, C].
            words: [B, L, C]; global_mem: [B, G, C]; local_mem: [B, M, C] or None (first frame).

        Returns:
            (mask logits [B, 1, S, S], the new local memory [B, M', C], the query's word attention [B, H, L]).
        """
        local = cur if local_mem is None else local_mem
        query, attn = self.query_generator(words, cur, local, global_mem)
        memory = torch.cat([local, global_mem], dim=1)
        context = self.mem_reader[1](self.mem_reader[0](cur, memory))
        logits = self.main_dec_net(context, query)
        mask = (torch.sigmoid(logits) > 0.5).to(cur.dtype)
        writer = self.localmem_writer
        fea = writer.norm1(cur + writer.encode_mask(mask, self.config.grid))
        return logits, writer.write(fea.unsqueeze(1), local_mem), attn

    # ------------------------------------------------------------------------------------------- streaming
    def stream_context_indices(self, num_frames: int) -> list[int]:
        """Positions of the frames the global memory is written from (:func:`global_frame_indices`): the
        Predictor reads them ahead of the windows and passes them to :meth:`init_stream_state`."""
        return global_frame_indices(num_frames, self.config.global_frames)

    @torch.no_grad()
    def init_stream_state(self, context: torch.Tensor, text: str | Sequence[str]) -> LocaterState:
        """The state before the first frame: word features and the global memory.

        Args:
            context: the sampled frames [B, N1, 3, H, W] (normalised; resized to the square here).
            text: ``B`` expressions.
        """
        texts = validate_texts(text)
        self._check_frames(context, texts)
        square = self._square(context.to(self.dtype))
        if _is_shared_clip(context):  # one ViT pass on the sampled frames, the rest expression by expression
            tokens = self.vision_encoder(square[0])
            return _merge_states([self._init_state(square[:1], [t], tokens) for t in texts])
        return self._init_state(square, texts)

    def _init_state(self, square: torch.Tensor, texts: list[str], tokens: torch.Tensor | None = None) -> LocaterState:
        """:meth:`init_stream_state` on square frames [B, N1, 3, S, S] (``tokens``: their ViT output if known)."""
        words = self.encode_text(self.tokenize(texts))
        fused = self.encode_frames(square, words, tokens=tokens)
        return LocaterState(words, self.global_memory(fused), None, 0, tuple(texts))

    @torch.no_grad()
    def segment_window(
        self, frames: torch.Tensor, text: Sequence[str], state: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor, LocaterState]:
        """Continue a video by the frames of one window.

        Args:
            frames: normalised frames [B, T, 3, H, W]; one expression per video.
            text: ``B`` expressions.
            state: the :class:`LocaterState` of the previous window, one from :meth:`init_stream_state`, or None
                (then the global memory is written from frames sampled over this window alone).

        Returns:
            (mask logits [B, T, S, S], scores [B, T], the state after the window's last frame).
        """
        texts = validate_texts(text)
        self._check_frames(frames, texts)
        if state is not None and (not isinstance(state, LocaterState) or state.texts != tuple(texts)):
            raise InvalidInputError(
                "the state passed to Locater.segment_window belongs to other expressions; start a new video with "
                "state=None"
            )
        if _is_shared_clip(frames):
            return self._segment_shared_window(frames, texts, state)
        if state is None:
            state = self.init_stream_state(frames[:, self.stream_context_indices(frames.shape[1])], texts)
        return self._segment_window(frames, state)

    def _segment_shared_window(
        self, frames: torch.Tensor, texts: list[str], state: LocaterState | None
    ) -> tuple[torch.Tensor, torch.Tensor, LocaterState]:
        """:meth:`segment_window` on one clip expanded for B expressions: the ViT runs once on the clip (and once
        on the sampled global-memory frames), everything that reads the text runs expression by expression, so
        each expression's outputs are those of a call with it alone and N expressions cost one ViT pass plus N
        times the rest."""
        if state is None:
            picks = self.stream_context_indices(frames.shape[1])
            state = self.init_stream_state(frames[:1, picks].expand(len(texts), -1, -1, -1, -1), texts)
        square = self._square(frames[:1].to(self.dtype))
        tokens = self.vision_encoder(square[0])  # [T, 1+P, C], shared by every expression
        outs = [self._segment_window(square, s, tokens) for s in _split_state(state)]
        logits = torch.cat([o[0] for o in outs])
        return logits, torch.cat([o[1] for o in outs]), _merge_states([o[2] for o in outs])

    def _segment_window(
        self, frames: torch.Tensor, state: LocaterState, tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, LocaterState]:
        """The recurrence over one window's frames [B, T, 3, H, W] from ``state`` (``tokens``: the frames' ViT
        output when already computed)."""
        fused = self.encode_frames(self._square(frames.to(self.dtype)), state.words, tokens=tokens)
        local = state.local_mem
        out = []
        for t in range(fused.shape[1]):
            logits, local, _ = self.step(fused[:, t], state.words, state.global_mem, local)
            out.append(logits[:, 0])
        logits = torch.stack(out, dim=1)  # [B, T, S, S]
        scores = logits.flatten(2).amax(-1).float().sigmoid()
        new_state = LocaterState(state.words, state.global_mem, local, state.frames + frames.shape[1], state.texts)
        return logits, scores, new_state

    @torch.no_grad()
    def segment(self, frames: torch.Tensor, text: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Official protocol on a clip taken as a whole video: reset the memories, write the global memory from
        ``global_frames`` frames sampled over the clip, then run every frame in order.

        Args:
            frames: normalised frames [B, T, 3, H, W] (resized to ``image_size`` squares here).
            text: ``B`` expressions.

        Returns:
            mask logits [B, T, S, S] (``> 0`` is the official ``sigmoid > 0.5``) and scores [B, T] (the frame's
            highest foreground probability).
        """
        logits, scores, _ = self.segment_window(frames, validate_texts(text), None)
        return logits, scores

    def output_upsampling(self, protocol: str | None = None) -> str:
        """``tools/evaluate.py``: sigmoid at 320 x 320, bilinear with ``align_corners=True`` to the frame size."""
        return "probability-aligned"

    def annotated_clip_frames(self) -> int | None:
        """Locater runs every frame of the video (no fixed clip)."""
        return None

    # ------------------------------------------------------------------------------------------- training
    def forward(self, frames: torch.Tensor, text: Sequence[str]) -> dict[str, torch.Tensor]:
        """Training pass: the memory unrolled over the clip as at inference (global memory from frames sampled
        over the clip, local memory written from each frame's binarised prediction), plus the auxiliary decoders
        on every fusion stage's output.

        Args:
            frames: normalised clips [B, T, 3, H, W]; one expression per clip.
            text: ``B`` expressions.

        Returns:
            ``{"logits": [B, T, S, S], "aux_logits": [B, T, K, S, S] (one per fusion stage), "query_attention":
            [B, T, H, L]}`` with S = ``image_size``.
        """
        texts = validate_texts(text)
        self._check_frames(frames, texts)
        words = self.encode_text(self.tokenize(texts))
        clip = self._square(frames.to(self.dtype))
        b, t = clip.shape[:2]
        fused, stages = self.encode_frames(clip, words, intermediate=True)
        picks = self.stream_context_indices(t)
        global_mem = self.global_memory(fused[:, picks])
        local = None
        logits, attns = [], []
        for i in range(t):
            out, local, attn = self.step(fused[:, i], words, global_mem, local)
            logits.append(out[:, 0])
            attns.append(attn)
        grid = self.config.grid
        aux = [
            dec(s.flatten(0, 1).transpose(1, 2).reshape(b * t, -1, grid, grid))[:, 0].unflatten(0, (b, t))
            for dec, s in zip(self.aux_decoders, stages)
        ]
        return {
            "logits": torch.stack(logits, 1),
            "aux_logits": torch.stack(aux, 2),
            "query_attention": torch.stack(attns, 1),
        }


def _split_state(state: LocaterState) -> list[LocaterState]:
    """One :class:`LocaterState` per expression."""
    local = state.local_mem
    return [
        LocaterState(
            state.words[i : i + 1],
            state.global_mem[i : i + 1],
            None if local is None else local[i : i + 1],
            state.frames,
            (text,),
        )
        for i, text in enumerate(state.texts)
    ]


def _merge_states(states: list[LocaterState]) -> LocaterState:
    """The states of single expressions (the same frames seen) as one."""
    local = [s.local_mem for s in states]
    return LocaterState(
        torch.cat([s.words for s in states]),
        torch.cat([s.global_mem for s in states]),
        None if any(m is None for m in local) else torch.cat(local),  # type: ignore[arg-type]
        states[0].frames,
        tuple(t for s in states for t in s.texts),
    )


def _is_shared_clip(frames: torch.Tensor) -> bool:
    """Whether frames [B, T, 3, H, W] are one clip expanded for B > 1 expressions (batch stride 0)."""
    return frames.shape[0] > 1 and frames.stride(0) == 0


def _init_weights(m: nn.Module) -> None:
    """timm-style initialisation of the official modules (truncated normal 0.02 for linear layers)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
