"""Grounding pre-training of a Locater's two encoders on Shapes: its ViT and its LSTM made a small CLIP first.

The tiny Locater trained from scratch on Shapes grounds colour and no other word (docs/models/locater.md): its
fusion reads patch tokens and word features that were never trained to meet. The tiny VLP-RVOS had the same
failure until its frozen backbone was a Shapes CLIP whose contrastive stage carried a dense text-to-patch
grounding loss (docs/models/vlp_rvos.md, items 9-17). This module gives a Locater's own encoders that stage: the
ViT's patch tokens and the LSTM's sentence feature (the mean of its word features over the real tokens) are each
projected by a linear head into a shared space and trained with

* CLIP's symmetric InfoNCE over the batch, an image compared with a text through its best-matching patch
  (:func:`~lvseg.models.vlp_rvos.backbones.best_patch_cosine`), every frame a text describes counted as a
  positive (:meth:`~.shapes_clip.ShapesPairs.fits`), and
* the dense grounding loss (:func:`~.shapes_clip.grounding_loss`): the softmax over a text's own frame's patches
  trained towards the share of each patch its referent covers,

on one frame and one expression naming no motion of each of ``batch_size`` training videos a step
(:class:`~.shapes_clip.ShapesPairs`: the videos of the Shapes recipes, seed 0, split ``train``). The heads are
discarded; the ViT and the text encoder keep what they learned, and the referring training starts from them
(``benchmarks/train_shapes_locater.py --ground-steps``, an experiment: not part of the ``locater-tiny-shapes``
preset).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.shapes import expression_kind
from ..errors import ConfigError
from ..models.vlp_rvos.backbones import best_patch_cosine
from .shapes_clip import ShapesPairs, _info_nce, grounding_loss, warmup_cosine_adamw

__all__ = ["GroundingHeads", "locater_grounding_features", "pretrain_locater_grounding", "pointing_accuracy"]

logger = logging.getLogger(__name__)

FRAME_SIZE = 96  # the Shapes recipes' frames (lvseg.train.presets.SHAPES_SIZE)


class GroundingHeads(nn.Module):
    """The throw-away heads of the grounding pre-training: linear projections of the patch tokens and of the
    sentence feature into a shared ``embed``-wide space, and CLIP's learnable temperature (``log(1 / 0.07)``)."""

    def __init__(self, dim: int, embed: int) -> None:
        super().__init__()
        self.patch_proj = nn.Linear(dim, embed)
        self.text_proj = nn.Linear(dim, embed)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


def _check_locater(model: Any, size: int) -> int:
    """The frame pixels one patch token covers (``size`` / grid); raises unless ``model`` is a Locater whose grid
    divides ``size``."""
    from ..models.locater.model import Locater

    if not isinstance(model, Locater):
        raise ConfigError(
            f"the grounding pre-training needs a Locater (lvseg.models.locater); got {type(model).__name__}"
        )
    cfg = model.config
    if size % cfg.grid:
        raise ConfigError(
            f"Shapes frames of {size} pixels do not split into the model's {cfg.grid} x {cfg.grid} token grid; "
            f"use frames whose size is a multiple of {cfg.grid}"
        )
    return size // cfg.grid


def locater_grounding_features(
    model: Any, heads: GroundingHeads, frames: np.ndarray, texts: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected patch tokens and sentence features of a Locater.

    Args:
        frames: uint8 ``[B, H, W, 3]`` Shapes frames (normalised with the model's preprocessing and resized to its
            square input here, as the referring training does); texts: ``B`` expressions.

    Returns:
        ``(patches [B, P, E], text [B, E])``: the ViT's patch tokens (class token dropped) and the mean of the text
        encoder's word features over the non-padding positions, each through its head.
    """
    device = next(model.parameters()).device
    pre = model.preprocessing
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - torch.tensor(pre.mean, device=device).view(1, 3, 1, 1)) / torch.tensor(pre.std, device=device).view(
        1, 3, 1, 1
    )
    tokens = model.vision_encoder(model._square(x[:, None])[:, 0])[:, 1:]  # [B, P, C]
    ids = model.tokenize(texts).to(device)
    words = model.encode_text(ids)  # [B, L, C]
    pad = getattr(model.tokenizer, "pad_token_id", 0)
    real = (ids != pad).to(words.dtype).unsqueeze(-1)
    sentence = (words * real).sum(dim=1) / real.sum(dim=1).clamp_min(1.0)
    return heads.patch_proj(tokens), heads.text_proj(sentence)


def _hits(patches: torch.Tensor, text: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """bool ``[B]``: whether each text's best-matching patch of its own frame covers some of its referent."""
    cosine = torch.einsum("bpe,be->bp", F.normalize(patches, dim=-1), F.normalize(text, dim=-1))
    return coverage.gather(1, cosine.argmax(dim=1, keepdim=True)).squeeze(1) > 0


@torch.no_grad()
def pointing_accuracy(model: Any, heads: GroundingHeads, data: ShapesPairs, batch_size: int = 64) -> dict[str, Any]:
    """Pointing game on every (video, expression) of ``data`` at its first frame: the share of texts whose
    best-matching patch lies on their referent (texts whose referent is absent from the frame left out), overall
    and per kind of expression (:func:`~lvseg.data.shapes.expression_kind`)."""
    patch = _check_locater(model, data.frames.shape[2])
    pairs = [(v, t) for v in range(len(data)) for t in data.texts[v]]
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        videos, texts = [v for v, _ in chunk], [t for _, t in chunk]
        coverage = data.referent_coverage(texts, videos, [0] * len(chunk), patch)
        patches, text = locater_grounding_features(model, heads, data.frames[videos, 0], texts)
        hits = _hits(patches, text, coverage.to(patches.device))
        for t, hit, present in zip(texts, hits.tolist(), (coverage.sum(1) > 0).tolist()):
            if present:
                by_kind[expression_kind(t) or "other"].append(hit)
    every = [h for hits in by_kind.values() for h in hits]
    return {
        "accuracy": float(np.mean(every)) if every else 0.0,
        "texts": len(every),
        "by_kind": {k: {"accuracy": float(np.mean(v)), "texts": len(v)} for k, v in sorted(by_kind.items())},
    }


def pretrain_locater_grounding(
    model: Any,
    steps: int = 3000,
    batch_size: int = 48,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    grounding_weight: float = 1.0,
    embed: int = 32,
    warmup: int = 50,
    num_videos: int = 1200,
    num_test: int = 100,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a Locater's ViT and text encoder (in place) with the contrastive and grounding losses of the module
    docstring.

    Args:
        model: a Locater (``lvseg.models.locater``) with its tokenizer; its other parts are not touched.
        steps, batch_size, lr, weight_decay, warmup: AdamW, linear warm-up then cosine decay (as the Shapes CLIP).
        grounding_weight: weight of the dense grounding loss (0: the contrastive loss alone).
        embed: width of the shared space of the heads.
        num_videos: training videos (seed 0, split ``train``: those of the Shapes recipes).
        num_test: held-out videos (seed 1, split ``valid``) for the pointing game at the end (0: none).
        seed: seeds the heads' initialisation and the sampling (deterministic on CPU); the videos are always
            the recipe's.

    Returns:
        ``{"steps", "loss_every_50_steps", "grounding_loss_every_50_steps", "train_pointing_every_50_steps",
        "held_out_pointing", "seconds"}``: the pointing accuracy on the training batches of the last 50 steps, and
        :func:`pointing_accuracy` on the held-out videos.
    """
    if steps < 1 or batch_size < 2:
        raise ConfigError(
            f"steps must be >= 1 and batch_size >= 2 (contrast needs negatives); got {steps}, {batch_size}"
        )
    if not grounding_weight >= 0:
        raise ConfigError(f"grounding_weight must be >= 0, got {grounding_weight}")
    patch = _check_locater(model, FRAME_SIZE)
    data = ShapesPairs(0, "train", num_videos, size=FRAME_SIZE, progress=progress)
    device = next(model.parameters()).device
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        heads = GroundingHeads(model.config.embed_dim, embed).to(device)
    encoders = [model.vision_encoder, model.lang_encoder]
    named = [(n, p) for m in [*encoders, heads] for n, p in m.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.dim() >= 2 and "emb" not in n]
    rest = [p for n, p in named if not (p.dim() >= 2 and "emb" not in n)]
    optimizer, scheduler = warmup_cosine_adamw(decay, rest, lr, weight_decay, warmup, steps)
    # the sampling's own stream, drawn from the seed through torch (the measured runs of docs/models/locater.md)
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(seed))))
    was_training = [m.training for m in encoders]
    for m in encoders:
        m.train()
    losses: list[tuple[int, float]] = []
    dense_losses: list[tuple[int, float]] = []
    pointing: list[tuple[int, float]] = []
    running = running_dense = 0.0
    hits = rows = 0
    start = time.time()
    for step in tqdm(range(steps), desc="grounding pre-training", disable=not progress):
        frames, texts, videos, times = data.sample_indexed(batch_size, rng)
        patches, text = locater_grounding_features(model, heads, frames, texts)
        scale = heads.logit_scale.exp()
        coverage = data.referent_coverage(texts, videos, times, patch).to(device)
        contrast = _info_nce(scale * best_patch_cosine(patches, text), data.fits(texts, videos).to(device))
        dense = grounding_loss(patches, text, coverage, scale)
        loss = contrast + grounding_weight * dense
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():  # CLIP clips the temperature at 100
            heads.logit_scale.clamp_(0, math.log(100))
            present = coverage.sum(dim=1) > 0
            hits += int((_hits(patches, text, coverage) & present).sum())
            rows += int(present.sum())
        running += float(loss.detach())
        running_dense += float(dense.detach())
        if (step + 1) % 50 == 0 or step + 1 == steps:
            n = (step % 50) + 1
            losses.append((step + 1, running / n))
            dense_losses.append((step + 1, running_dense / n))
            pointing.append((step + 1, hits / max(1, rows)))
            logger.info(
                "grounding pre-training step %d: loss %.4f, grounding %.4f, pointing %.3f",
                step + 1,
                running / n,
                running_dense / n,
                pointing[-1][1],
            )
            running = running_dense = 0.0
            hits = rows = 0
    seconds = time.time() - start
    for m, mode in zip(encoders, was_training):
        m.train(mode)
    held_out = None
    if num_test:
        model_mode = model.training
        model.eval()
        held_out = pointing_accuracy(model, heads, ShapesPairs(1, "valid", num_test, size=FRAME_SIZE))
        model.train(model_mode)
    return {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "grounding_weight": grounding_weight,
        "loss_every_50_steps": losses,
        "grounding_loss_every_50_steps": dense_losses,
        "train_pointing_every_50_steps": pointing,
        "held_out_pointing": held_out,
        "seconds": round(seconds, 1),
    }
