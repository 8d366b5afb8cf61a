"""Stage 1 of the Shapes recipes: dense attribute pre-training of the visual encoder, from scratch.

Official ReferFormer models start from an ImageNet-pretrained backbone; the embedded model cannot download one and
a CNN trained from scratch on the referring loss alone learns colour within a few hundred steps but not shape in
thousands (a measured failure: "the green diamond" and "the green square" got the same mask). This stage plays
ImageNet's part with the Shapes generator's own ground truth: every pixel of a training clip is labelled with
the shape, colour, size and motion of the object drawn there (0 = background), and a 1x1 convolution per
backbone level and attribute is trained to predict them. The heads are discarded afterwards; only the backbone
weights (and its temporal mixing layers, which see the motion) carry over to the referring training.

A Locater's ViT can be pre-trained the same way (one level: the patch tokens as a map; shape, colour and size only,
since the ViT encodes each frame on its own and cannot see motion): ``benchmarks/train_shapes_locater.py
--pretrain-steps``, an experiment that did not help the tiny Locater's grounding (docs/models/locater.md), so the
``locater-tiny-shapes`` preset has no such stage.

Only the ``train`` split's annotations are used (the same videos as the referring training), and no expression
text: the stage teaches the backbone what is drawn, not which object an expression means.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.shapes import COLORS, MOTIONS, SHAPES, SIZES, frame_names
from ..errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from ..models.base import RVOSModel

__all__ = ["ATTRIBUTES", "ShapesAttributeClips", "AttributeHeads", "pretrain_backbone_on_shapes"]

logger = logging.getLogger(__name__)


ATTRIBUTES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "color": tuple(COLORS), "size": SIZES, "motion": MOTIONS}
_INDEX = {name: i for i, name in enumerate(ATTRIBUTES)}  # the attribute's row in the labels
_SWAP = {"left": "right", "right": "left"}


class ShapesAttributeClips(Dataset):
    """Clips of a generated Shapes split with per-pixel attribute labels.

    Each item: ``frames`` uint8 [T, H, W, 3] (``T = num_frames`` frames of the video in order, a random subset
    with a random horizontal flip, whose motion labels left/right are swapped) and ``labels`` int64
    [len(ATTRIBUTES), T, H, W]: for each attribute the class index + 1 of the object drawn at each pixel,
    0 for background. Frames are resized to ``size`` (square, bilinear; labels nearest) when given.

    Args:
        root: a Shapes root written by :func:`lvseg.data.shapes.generate` (``<root>/<split>/Annotations`` and
            ``<root>/shapes_info/<split>.json`` are read).
        split: a split with annotations (``"train"``).
        num_frames: clip length.
        size: model input size (e.g. 192 for 96-pixel videos upscaled 2x), or None for the stored size.
        flip: apply the random horizontal flip.
    """

    def __init__(
        self, root: str | Path, split: str = "train", num_frames: int = 4, size: int | None = None, flip: bool = True
    ) -> None:
        root = Path(root)
        info_path = root / "shapes_info" / f"{split}.json"
        if not info_path.is_file() or not (root / split / "Annotations").is_dir():
            raise DatasetError(
                f"no Shapes {split!r} split with annotations under {root} (expected {info_path} "
                f"and {root / split / 'Annotations'}); generate it with "
                f"lvseg.data.shapes.generate(root, {split!r}, ...)"
            )
        info = json.loads(info_path.read_text())
        self.root, self.split, self.num_frames, self.size, self.flip = root, split, num_frames, size, flip
        self.videos = sorted(info["videos"])
        self.objects = {v: info["videos"][v]["objects"] for v in self.videos}
        self.frame_names = frame_names(int(info["frames"]))
        if num_frames > len(self.frame_names):
            raise ConfigError(f"num_frames={num_frames} exceeds the {len(self.frame_names)} frames per video")

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        vid = self.videos[index]
        chosen = sorted(random.sample(range(len(self.frame_names)), self.num_frames))
        names = [self.frame_names[i] for i in chosen]
        frames = np.stack(
            [
                np.asarray(Image.open(self.root / self.split / "JPEGImages" / vid / f"{n}.jpg").convert("RGB"))
                for n in names
            ]
        )
        ids = np.stack(
            [np.asarray(Image.open(self.root / self.split / "Annotations" / vid / f"{n}.png")) for n in names]
        ).astype(np.int64)
        flip = self.flip and random.random() < 0.5
        tables = []
        for attr, classes in ATTRIBUTES.items():
            table = np.zeros(256, dtype=np.int64)
            for oid, obj in self.objects[vid].items():
                value = obj[attr]
                if flip and attr == "motion":
                    value = _SWAP.get(value, value)
                table[int(oid)] = classes.index(value) + 1
            tables.append(table)
        labels = torch.from_numpy(np.stack([t[ids] for t in tables]))  # [A, T, H, W]
        ids_t = torch.from_numpy(ids)
        video = torch.from_numpy(frames)
        if flip:
            video, labels, ids_t = video.flip(2), labels.flip(-1), ids_t.flip(-1)
        if self.size is not None and self.size != video.shape[1]:
            x = video.permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
            video = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
            labels = F.interpolate(labels.float(), size=(self.size, self.size), mode="nearest").long()
            ids_t = F.interpolate(ids_t[None].float(), size=(self.size, self.size), mode="nearest")[0].long()
        return {"frames": video.contiguous(), "labels": labels.contiguous(), "ids": ids_t.contiguous()}


class AttributeHeads(nn.Module):
    """One 1x1 convolution per backbone level and attribute (class 0 = background).

    Args:
        channels: the channels of each level.
        attributes: the names (keys of :data:`ATTRIBUTES`) to predict; all of them by default.
    """

    def __init__(self, channels: Sequence[int], attributes: Sequence[str] | None = None) -> None:
        super().__init__()
        names = list(ATTRIBUTES) if attributes is None else list(attributes)
        unknown = [a for a in names if a not in ATTRIBUTES]
        if unknown or not names:
            raise ConfigError(f"attributes must be a non-empty subset of {list(ATTRIBUTES)}, got {names}")
        self.heads = nn.ModuleList(
            nn.ModuleDict({a: nn.Conv2d(c, len(ATTRIBUTES[a]) + 1, kernel_size=1) for a in names}) for c in channels
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """feats: per level [N, C_l, h_l, w_l] -> per level {attribute: logits [N, K_a + 1, h_l, w_l]}."""
        return [{a: head(f) for a, head in cast(nn.ModuleDict, heads).items()} for heads, f in zip(self.heads, feats)]


def _attribute_loss(
    outputs: list[dict[str, torch.Tensor]], labels: torch.Tensor, background_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per level and attribute: cross-entropy over the object classes on object pixels only, plus (weighted by
    ``background_weight``) the object-vs-background cross-entropy of the background logit.

    labels: [B, A, T, H, W] sampled at each level's cell centres; outputs' maps are [B*T, K + 1, h, w].
    Returns the loss and the foreground accuracy per ``attribute/level``.
    """
    b, a, t, h, w = labels.shape
    flat = labels.permute(0, 2, 1, 3, 4).reshape(b * t, a, h, w).float()
    total = labels.new_zeros((), dtype=torch.float32)
    acc: dict[str, float] = {}
    for lvl, out in enumerate(outputs):
        size = next(iter(out.values())).shape[-2:]
        target = F.interpolate(flat, size=size, mode="nearest").long()  # [B*T, A, h, w]
        for attr, logits in out.items():
            logits = logits.float()
            tgt = target[:, _INDEX[attr]]
            fg = tgt > 0
            objectness = torch.stack([logits[:, 0], torch.logsumexp(logits[:, 1:], 1)], 1)
            total = total + background_weight * F.cross_entropy(objectness, fg.long())
            if fg.any():
                fg_logits = logits[:, 1:].permute(0, 2, 3, 1)[fg]  # [P, K]
                total = total + F.cross_entropy(fg_logits, tgt[fg] - 1)
                acc[f"{attr}/{lvl}"] = float((fg_logits.argmax(1) == tgt[fg] - 1).float().mean())
    return total / (len(outputs) * len(outputs[0])), acc


def _object_loss(
    outputs: list[dict[str, torch.Tensor]], labels: torch.Tensor, ids: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per level and attribute: cross-entropy of each object's logits averaged over its pixels (the heads are
    linear, so this classifies the object's mean feature). labels: [B, A, T, H, W]; ids: [B, T, H, W]."""
    b, a, t, h, w = labels.shape
    n_ids = int(ids.max()) + 1
    onehot = F.one_hot(ids.reshape(b * t, h, w), n_ids).permute(0, 3, 1, 2)[:, 1:].float()  # [BT, O, H, W]
    flat = labels.permute(0, 2, 1, 3, 4).reshape(b * t, a, h, w).float()
    total = labels.new_zeros((), dtype=torch.float32)
    acc: dict[str, float] = {}
    for lvl, out in enumerate(outputs):
        size = next(iter(out.values())).shape[-2:]
        cover = F.interpolate(onehot, size=size, mode="area")  # fraction of each cell covered by each object
        count = cover.sum((2, 3))  # [BT, O]
        present = count > 1e-3
        target = torch.einsum("nohw,nahw->noa", onehot, flat) / onehot.sum((2, 3)).clamp_min(1)[..., None]
        target = target.round().long()  # [BT, O, A] class + 1 of each object
        for attr, logits in out.items():
            i = _INDEX[attr]
            pooled = torch.einsum("nohw,nkhw->nok", cover, logits[:, 1:].float()) / count.clamp_min(1e-3)[..., None]
            sel = present & (target[..., i] > 0)
            if sel.any():
                total = total + F.cross_entropy(pooled[sel], target[..., i][sel] - 1)
                acc[f"{attr}/{lvl}"] = float((pooled[sel].argmax(1) == target[..., i][sel] - 1).float().mean())
    return total / (len(outputs) * len(outputs[0])), acc


def _recent_accuracy(history: list[dict[str, float]], last: int = 50) -> dict[str, float]:
    """Mean of each ``attribute/level`` accuracy over the last ``last`` steps that report it."""
    recent = history[-last:]
    keys = sorted({k for h in recent for k in h})
    return {k: float(np.mean([h[k] for h in recent if k in h])) for k in keys}


def _collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in batch]) for k in ("frames", "labels", "ids")}


class _DenseEncoder:
    """What the pre-training trains in a model and how it reads its feature maps.

    ``module``: the trained part; ``channels`` / ``strides``: per level (strides in pixels of the frames as the
    model receives them); ``attributes``: what its features can know (a per-frame encoder cannot see motion);
    ``features(frames [B, T, 3, H, W]) -> per level [B*T, C_l, h_l, w_l]``.
    """

    def __init__(self, model: Any) -> None:
        backbone = getattr(model, "backbone", None)
        vision = getattr(model, "vision_encoder", None)
        if backbone is not None and hasattr(backbone, "num_channels"):  # ReferFormer (timm CNN + temporal mixing)
            self.module: nn.Module = backbone
            self.channels = list(backbone.num_channels)
            self.strides = [float(s) for s in getattr(backbone, "strides", range(len(self.channels)))]
            self.attributes = list(ATTRIBUTES)
            self.features = lambda frames: backbone(frames.flatten(0, 1), num_frames=frames.shape[1])
        elif vision is not None and hasattr(model, "_square") and hasattr(model.config, "grid"):  # Locater's ViT
            cfg = model.config
            self.module = vision
            self.channels = [cfg.embed_dim]
            # the ViT sees the frames resized to image_size: one patch covers patch_size * H / image_size pixels
            self.strides = [cfg.patch_size * model.preprocessing.short_side / cfg.image_size]
            # the ViT encodes each frame on its own: motion is not in its features (the memories see it later)
            self.attributes = [a for a in ATTRIBUTES if a != "motion"]

            def features(frames: torch.Tensor) -> list[torch.Tensor]:
                tokens = vision(model._square(frames).flatten(0, 1))[:, 1:]  # [B*T, P, C] without the class token
                return [tokens.transpose(1, 2).unflatten(2, (cfg.grid, cfg.grid))]

            self.features = features
        else:
            raise ConfigError(
                "pretrain_backbone_on_shapes needs a ReferFormer with a CNN .backbone (backbone='timm') or a "
                f"Locater (its ViT .vision_encoder); got {type(model).__name__}"
            )


def pretrain_backbone_on_shapes(
    model: RVOSModel,
    root: str | Path,
    steps: int = 1500,
    batch_size: int = 4,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    num_frames: int = 4,
    background_weight: float = 0.2,
    objective: str = "pixel",
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the visual encoder (in place) to predict per-pixel Shapes attributes; see the module docstring.

    Args:
        model: a ReferFormer with a timm backbone (``model.backbone(frames, num_frames=T)`` returning the four
            feature maps: all four attributes at every level) or a Locater (its ViT ``vision_encoder``, whose
            patch tokens form one level: shape, colour and size, not motion, which a per-frame encoder cannot
            see); its preprocessing (input size, mean/std) is used for the frames.
        root: the Shapes root of the referring training (its ``train`` split).
        steps, batch_size, lr, weight_decay: AdamW schedule (constant LR after a 5 % linear warm-up).
        background_weight: weight of the object-vs-background term (``objective="pixel"``).
        objective: ``"pixel"`` classifies every object pixel's feature (the recipe); ``"object"`` each object's
            mean feature (measured slower to learn shape).
        seed: seeds the clip order, sampling and head initialisation (deterministic on CPU).

    Returns:
        ``{"steps", "loss", "objective", "accuracy": {attribute: {"stride<s>": accuracy}}}``, the accuracy
        on object pixels (per object for ``"object"``) of each level's head over the last 50 steps.
    """
    from .engine import prepare_frames

    encoder = _DenseEncoder(model)
    backbone = encoder.module
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if objective not in ("pixel", "object"):
        raise ConfigError(f"objective must be 'pixel' or 'object', got {objective!r}")
    device = next(model.parameters()).device
    size = int(model.preprocessing.short_side)
    dataset = ShapesAttributeClips(root, "train", num_frames=num_frames, size=size)
    generator = torch.Generator().manual_seed(seed)
    random.seed(seed)
    heads = AttributeHeads(encoder.channels, encoder.attributes).to(device)
    params = [p for p in backbone.parameters() if p.requires_grad] + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    was_training = backbone.training
    backbone.train()
    history: list[dict[str, float]] = []
    losses: list[float] = []
    step = 0
    bar = tqdm(total=steps, desc="backbone pre-training", disable=not progress)
    while step < steps:
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            generator=generator,
            drop_last=True,
            collate_fn=_collate,
            num_workers=num_workers,
        )
        for batch in loader:
            frames = prepare_frames(batch["frames"], model, device)  # [B, T, 3, H, W]
            outputs = heads(encoder.features(frames))
            if objective == "object":
                loss, acc = _object_loss(outputs, batch["labels"].to(device), batch["ids"].to(device))
            else:
                loss, acc = _attribute_loss(outputs, batch["labels"].to(device), background_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(float(loss.detach()))
            history.append(acc)
            bar.update(1)
            if step % 25 == 0 or step == steps:
                shown = _recent_accuracy(history)
                bar.set_postfix(loss=f"{np.mean(losses[-25:]):.3f}")
                logger.info(
                    "backbone pre-training step %d: loss %.4f, foreground accuracy %s",
                    step,
                    np.mean(losses[-25:]),
                    ", ".join(f"{k} {v:.3f}" for k, v in shown.items()),
                )
            if step >= steps:
                break
    bar.close()
    backbone.train(was_training)
    recent = _recent_accuracy(history)
    levels = [(f"stride{s:g}", lvl) for lvl, s in enumerate(encoder.strides)]
    accuracy = {
        attr: {name: recent[f"{attr}/{lvl}"] for name, lvl in levels if f"{attr}/{lvl}" in recent}
        for attr in encoder.attributes
    }
    return {"steps": step, "loss": float(np.mean(losses[-25:])), "objective": objective, "accuracy": accuracy}
