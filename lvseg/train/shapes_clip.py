"""A tiny CLIP pre-trained contrastively on Shapes: the frozen vision-language backbone of the VLP-RVOS proof.

VLP-RVOS's thesis is that a backbone whose image and text spaces are already aligned (CLIP, VLMo) can be kept
frozen. No such backbone exists for the Shapes world, so this module makes one the way CLIP was made: a
``transformers`` CLIPModel (ViT image tower, causal text transformer, QuickGELU) trained with the symmetric
InfoNCE loss on (frame, expression) pairs, in-batch negatives. The pairs are the training videos of the Shapes
recipe (``lvseg.data.shapes.make_video(seed=0, "train", i, 8, 96, 96)``, the videos :func:`~.presets.shapes_data`
writes), one random frame with one of the video's expressions that name no motion (a single frame cannot show one).
Held-out retrieval uses the test videos of the Shapes recipes (seed 1, split ``valid``).

The result is a ``CLIPModel.save_pretrained`` folder with its tokenizer (a word-level tokenizer of the Shapes
words laid out like OpenAI's: ``<|startoftext|>`` and ``<|endoftext|>`` are the last two ids, so CLIP's end-token
pooling applies unchanged), loadable with :func:`lvseg.models.vlp_rvos.backbones.load_clip`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.shapes import (
    COLORS,
    MOTION_PHRASES,
    MOTIONS,
    SHAPES,
    SIZES,
    VOCABULARY,
    ShapeObject,
    expression_motion,
    expression_semantics,
    make_video,
)
from ..errors import ConfigError
from ..models.vlp_rvos.backbones import (
    IMAGE_POOLS,
    best_patch_cosine,
    clip_cosine,
    clip_patch_features,
    clip_text_features,
)

__all__ = [
    "ShapesClipConfig",
    "shapes_clip_tokenizer",
    "shapes_clip_towers",
    "shapes_clip_model_config",
    "ShapesPairs",
    "contrastive_loss",
    "normalise_frames",
    "train_shapes_clip",
    "retrieval_accuracy",
    "attribute_probe",
    "patch_attribute_probe",
    "pointing_game",
    "cell_attributes",
    "CELL_ATTRIBUTES",
    "pretrain_patch_attributes",
    "referent_coverage",
    "grounding_loss",
    "motion_class",
    "motion_separation",
]

logger = logging.getLogger(__name__)

# CLIP's input normalisation (OpenAI's mean/std), used for the Shapes CLIP too so it reads frames like CLIP does.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ShapesClipConfig:
    """Sizes and schedule of the tiny Shapes CLIP (defaults: the measured run of docs/models/vlp_rvos.md).

    The sizes are the one source of truth for the frozen backbone of the tiny Shapes VLP-RVOS too
    (:func:`lvseg.train.vlp_rvos_presets.vlp_shapes_tiny_config` reads them through :func:`shapes_clip_towers`).

    Attributes:
        width, layers, heads: image tower (patch ``patch`` on ``size`` x ``size`` frames); mlp_ratio: both towers'
            MLP width over their width.
        text_width, text_layers, text_heads: text tower (``context`` positions); embed: joint embedding size.
        steps, batch, lr, weight_decay, warmup: AdamW with linear warm-up then cosine decay to 0.
        num_train: training videos (seed 0, split "train"); frames: frames per video (the Shapes recipes' 8).
        targets: ``"diagonal"`` (CLIP's InfoNCE: the i-th frame and text are the only pair) or ``"fits"`` (every
            frame of the batch whose video the text describes is a positive of that text, with equal weight: the
            in-batch false negatives of CLIP's loss are not pushed apart; :func:`contrastive_loss`).
        pool: how an image is compared with a text: ``"cls"`` (OpenAI CLIP's class token), ``"mean"`` (the mean
            of the projected patch tokens, open_clip's ``pool_type="avg"``) or ``"max"`` (the patch token that
            matches the text best, token-wise as in FILIP: the text must match some patch, so the dense features
            that VLP-RVOS reads are trained); :func:`~lvseg.models.vlp_rvos.backbones.clip_cosine`. Saved in the
            CLIP's ``config.json`` as ``lvseg_image_pool``.
        attribute_steps: steps of dense attribute pre-training of the image tower before the contrastive stage
            (0: none, the recipe). A linear head per attribute reads each projected patch token
            (:func:`~lvseg.models.vlp_rvos.backbones.clip_patch_features`) and is trained with cross-entropy on the
            shape, size and colour of the object covering more than half of the patch (:func:`cell_attributes`),
            frames of the training videos, batch ``batch``, AdamW at ``lr`` with the warm-up; the heads are
            discarded. It plays the part of the supervised initialisation a CLIP tower can start from, and teaches
            the patch tokens what the VLP-RVOS head reads from them.
        grounding_weight: weight of a dense text-to-patch grounding loss added to the contrastive loss (0: none,
            the recipe): each text is compared with every projected patch token of its own frame, and the softmax
            over the patches is trained towards the share of each patch that the text's referent(s) cover
            (:func:`grounding_loss`, :func:`referent_coverage`), as GLIP-style grounded pre-training aligns words
            with regions. A frame-level contrastive loss cannot teach a word such as "leftmost" (every frame has a
            leftmost object, so the text fits every frame); this loss can, because it asks *where*.
        motion_weight: weight of a text-side motion loss added to the contrastive stage (0: none, the recipe): a
            linear head on the text embedding is trained with cross-entropy to tell which motion phrase an
            expression names (:func:`motion_class`: none, or one of :data:`~lvseg.data.shapes.MOTIONS`), on
            ``batch`` expressions that name one and the batch's expressions that name none; the head is discarded.
            A single frame cannot show a motion, so the contrastive stage never sees the motion phrases and the
            text tower learns to ignore them ("moving left" and "moving right" end up with nearly the same
            features); a CLIP trained on web captions has read verbs of motion. This plays that part for the text
            tower, as ``attribute_steps`` does for the image tower. Its samples come from a generator of their
            own (seed + 1), so the contrastive stage sees the same batches with and without it.
    """

    size: int = 96
    patch: int = 8
    width: int = 64
    layers: int = 4
    heads: int = 4
    mlp_ratio: int = 2
    text_width: int = 48
    text_layers: int = 2
    text_heads: int = 4
    embed: int = 32
    context: int = 40
    steps: int = 800
    batch: int = 48
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 50
    num_train: int = 1200
    frames: int = 8
    seed: int = 0
    targets: str = "diagonal"
    pool: str = "cls"
    attribute_steps: int = 0
    grounding_weight: float = 0.0
    motion_weight: float = 0.0


def shapes_clip_tokenizer(context: int = 40) -> Any:
    """A word-level tokenizer of the Shapes words: ``<pad>`` = 0, ``<unk>`` = 1, the words, then
    ``<|startoftext|>`` and ``<|endoftext|>`` (the last id, as in OpenAI CLIP); every text is wrapped in them."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = list(VOCABULARY)
    vocab = {"<pad>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    sot, eot = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": sot, "<|endoftext|>": eot})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", sot), ("<|endoftext|>", eot)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=context,
    )


def shapes_clip_towers(config: ShapesClipConfig, tokenizer: Any) -> tuple[dict[str, Any], dict[str, Any], int]:
    """``(vision, text, projection_dim)``: the ``transformers.CLIPVisionConfig`` / ``CLIPTextConfig`` arguments of
    the tiny Shapes CLIP (QuickGELU, ``tokenizer``'s vocabulary and special ids)."""
    vision = {
        "hidden_size": config.width,
        "intermediate_size": config.mlp_ratio * config.width,
        "num_hidden_layers": config.layers,
        "num_attention_heads": config.heads,
        "image_size": config.size,
        "patch_size": config.patch,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": config.text_width,
        "intermediate_size": config.mlp_ratio * config.text_width,
        "num_hidden_layers": config.text_layers,
        "num_attention_heads": config.text_heads,
        "max_position_embeddings": config.context,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return vision, text, config.embed


def shapes_clip_model_config(config: ShapesClipConfig, tokenizer: Any) -> Any:
    """The ``transformers.CLIPConfig`` of the tiny Shapes CLIP; a pooling other than OpenAI's class token is
    written down as ``lvseg_image_pool`` (:func:`~lvseg.models.vlp_rvos.backbones.clip_image_pool` reads it)."""
    from transformers import CLIPConfig

    vision, text, embed = shapes_clip_towers(config, tokenizer)
    clip = CLIPConfig(
        text_config={**text, "projection_dim": embed},
        vision_config={**vision, "projection_dim": embed},
        projection_dim=embed,
    )
    if config.pool != "cls":
        clip.lvseg_image_pool = config.pool
    return clip


# What a patch is labelled with (:func:`cell_attributes`): each attribute's classes, in the labels' column order.
CELL_ATTRIBUTES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "size": SIZES, "color": tuple(COLORS)}


def _is_motion(text: str) -> bool:
    return expression_motion(text) is not None


def motion_class(text: str) -> int:
    """Which motion phrase a Shapes expression ends with: 0 for none, ``1 + i`` for ``MOTIONS[i]``
    (:func:`~lvseg.data.shapes.expression_motion`; :data:`~lvseg.data.shapes.MOTION_PHRASES`: "moving left",
    ..., "bouncing around")."""
    motion = expression_motion(text)
    return 0 if motion is None else 1 + MOTIONS.index(motion)


class ShapesPairs:
    """Shapes videos rendered in memory, with their expressions that name no motion.

    Attributes:
        frames: uint8 ``[N, T, H, W, 3]``; ids: uint8 ``[N, T, H, W]`` object-id maps (0 = background);
        objects: each video's objects; texts: each video's expressions that name no motion; motion_texts: the
        expressions of these videos that name one (all videos together).
    """

    def __init__(
        self, seed: int, split: str, num_videos: int, frames: int = 8, size: int = 96, progress: bool = False
    ) -> None:
        if num_videos < 2:
            raise ConfigError(f"ShapesPairs needs at least 2 videos (contrast needs negatives), got {num_videos}")
        clips, maps, self.objects, self.texts = [], [], [], []
        self.motion_texts: list[str] = []
        for i in tqdm(range(num_videos), desc=f"render Shapes {split}", disable=not progress):
            video, rendered, ids = make_video(seed, split, i, frames, size, size)
            texts = [t for t, _ in video.expressions if not _is_motion(t)]
            if not texts:
                continue
            clips.append(np.stack(rendered))
            maps.append(np.stack(ids))
            self.objects.append(list(video.objects))
            self.texts.append(texts)
            self.motion_texts.extend(t for t, _ in video.expressions if _is_motion(t))
        self.frames = np.stack(clips)
        self.ids = np.stack(maps)

    def __len__(self) -> int:
        return len(self.texts)

    def sample(self, batch: int, generator: np.random.Generator) -> tuple[np.ndarray, list[str]]:
        """``batch`` distinct videos, a random frame and a random expression of each: ``(frames [B, H, W, 3],
        texts)``."""
        frames, texts, _ = self.sample_with_videos(batch, generator)
        return frames, texts

    def sample_with_videos(self, batch: int, generator: np.random.Generator) -> tuple[np.ndarray, list[str], list[int]]:
        """As :meth:`sample`, with the index of each sample's video: ``(frames, texts, videos)``."""
        frames, texts, videos, _ = self.sample_indexed(batch, generator)
        return frames, texts, videos

    def sample_indexed(
        self, batch: int, generator: np.random.Generator
    ) -> tuple[np.ndarray, list[str], list[int], list[int]]:
        """As :meth:`sample`, with each sample's video and frame index: ``(frames, texts, videos, times)``."""
        videos = generator.choice(len(self), size=min(batch, len(self)), replace=False)
        t = generator.integers(0, self.frames.shape[1], size=len(videos))
        texts = [self.texts[v][int(generator.integers(len(self.texts[v])))] for v in videos]
        return self.frames[videos, t], texts, [int(v) for v in videos], [int(f) for f in t]

    def referent_coverage(
        self, texts: Sequence[str], videos: Sequence[int], times: Sequence[int], patch: int
    ) -> torch.Tensor:
        """float ``[len(texts), P]``: for text i, the share of each ``patch`` x ``patch`` cell of frame
        ``times[i]`` of video ``videos[i]`` that its referent(s) cover (:func:`referent_coverage`)."""
        return torch.from_numpy(
            np.stack(
                [
                    referent_coverage(self.ids[v, t], expression_semantics(text, self.objects[v]) or (), patch)
                    for text, v, t in zip(texts, videos, times)
                ]
            )
        )

    def fits(self, texts: Sequence[str], videos: Sequence[int]) -> torch.Tensor:
        """bool ``[len(texts), len(videos)]``: whether text i describes something in video j (its referent exists
        there, :func:`~lvseg.data.shapes.expression_semantics`)."""
        return torch.tensor([[_matches(t, self.objects[v]) for v in videos] for t in texts], dtype=torch.bool)


def normalise_frames(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> CLIP-normalised float ``[B, 3, H, W]``."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def contrastive_loss(
    model: Any,
    pixels: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: cross-entropy of image->text and text->image logits ``[B, B]``, scaled by
    ``exp(logit_scale)``, averaged over both directions. The image embedding is pooled as the model's config says
    (:func:`~lvseg.models.vlp_rvos.backbones.clip_image_pool`; ``"cls"``: ``model(...).logits_per_image``).

    Args:
        pixels: ``[B, 3, H, W]``; input_ids, attention_mask: ``[B, L]`` (the i-th image and text are a pair).
        positives: optional bool ``[B, B]``, ``positives[i, j]``: text i describes image j (the diagonal must be
            True). None: the diagonal only (CLIP). Otherwise each row's (and column's) target is spread evenly over
            its positives, so a text is not pushed away from the other images it describes.
    """
    return _text_contrastive_loss(model, pixels, clip_text_features(model, input_ids, attention_mask), positives)


def _text_contrastive_loss(
    model: Any, pixels: torch.Tensor, text: torch.Tensor, positives: torch.Tensor | None
) -> torch.Tensor:
    """:func:`contrastive_loss` on text embeddings ``[B, E]`` already computed."""
    return _info_nce(model.logit_scale.exp() * clip_cosine(model, pixels, text), positives)


def _info_nce(logits: torch.Tensor, positives: torch.Tensor | None) -> torch.Tensor:
    """CLIP's symmetric cross-entropy of scaled image x text logits ``[B, B]`` (see :func:`contrastive_loss`)."""
    if positives is None:
        target = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    if positives.shape != logits.shape or not bool(positives.diagonal().all()):
        raise ConfigError(
            f"positives must be a bool [B, B] = {tuple(logits.shape)} matrix with a True diagonal (each text "
            f"describes its own image), got {tuple(positives.shape)}"
        )
    fit = positives.to(device=logits.device, dtype=logits.dtype)  # [text, image]
    per_image = fit.t() / fit.t().sum(dim=1, keepdim=True)  # image i: its texts
    per_text = fit / fit.sum(dim=1, keepdim=True)  # text j: its images
    return (F.cross_entropy(logits, per_image) + F.cross_entropy(logits.t(), per_text)) / 2


def referent_coverage(idmap: np.ndarray, referents: Sequence[int] | set[int], patch: int) -> np.ndarray:
    """Per ``patch`` x ``patch`` cell of an object-id map ``[H, W]`` (row-major, as a ViT orders its patch tokens):
    the share of the cell's pixels that belong to one of ``referents`` (object ids): ``float32 [P]``, in [0, 1]."""
    cells = _cells(idmap, patch)
    return np.isin(cells, np.asarray(sorted(referents), dtype=cells.dtype)).mean(axis=1).astype(np.float32)


def grounding_loss(
    patches: torch.Tensor, text: torch.Tensor, coverage: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """Dense text-to-patch grounding: cross-entropy of the softmax over each text's own frame's patches
    (``scale`` x cosine) against the referent's coverage of each patch, normalised to sum to 1.

    Args:
        patches: projected patch tokens ``[B, P, E]`` (:func:`~lvseg.models.vlp_rvos.backbones.clip_patch_features`);
        text: text embeddings ``[B, E]`` (text i describes frame i); coverage: ``[B, P]`` (:func:`referent_coverage`),
        rows without any referent pixel (an occluded referent) are left out; scale: CLIP's ``logit_scale.exp()``.

    Returns:
        the mean loss over the rows with a referent (0 when there is none, with a gradient path).
    """
    if patches.shape[:2] != coverage.shape or patches.shape[0] != text.shape[0]:
        raise ConfigError(
            f"grounding_loss needs patches [B, P, E], text [B, E] and coverage [B, P]; got {tuple(patches.shape)}, "
            f"{tuple(text.shape)} and {tuple(coverage.shape)}"
        )
    logits = scale * torch.einsum("bpe,be->bp", F.normalize(patches, dim=-1), F.normalize(text, dim=-1))
    mass = coverage.sum(dim=1)
    keep = mass > 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    target = coverage[keep] / mass[keep, None]
    return F.cross_entropy(logits[keep], target.to(logits.dtype))


def _tokenize(tokenizer: Any, texts: Sequence[str], context: int) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=context, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def pretrain_patch_attributes(
    model: Any, data: ShapesPairs, config: ShapesClipConfig, rng: np.random.Generator, progress: bool = True
) -> dict[str, Any]:
    """Dense attribute pre-training of ``model``'s image tower (``config.attribute_steps`` steps; see
    :class:`ShapesClipConfig`). Trains ``model.vision_model`` and ``model.visual_projection`` in place.

    Returns:
        ``{"steps", "seconds", "accuracy_every_50_steps": [(step, {"shape", "size", "color"}), ...]}``: each
        attribute's accuracy on the labelled patches of the last 50 training batches.
    """
    patch = int(model.config.vision_config.patch_size)
    dim = int(model.config.projection_dim)
    torch.manual_seed(config.seed)
    names = tuple(CELL_ATTRIBUTES)
    heads = nn.ModuleList(nn.Linear(dim, len(classes)) for classes in CELL_ATTRIBUTES.values())
    params = [*model.vision_model.parameters(), *model.visual_projection.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, config.warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    correct = {n: 0 for n in names}
    total = {n: 0 for n in names}
    history: list[tuple[int, dict[str, float]]] = []
    start = time.time()
    for step in tqdm(range(config.attribute_steps), desc="Shapes CLIP attributes", disable=not progress):
        videos = rng.choice(len(data), size=min(config.batch, len(data)), replace=False)
        t = rng.integers(0, data.frames.shape[1], size=len(videos))
        labels = torch.from_numpy(
            np.stack([cell_attributes(data.ids[v, f], data.objects[v], patch) for v, f in zip(videos, t)])
        ).flatten(0, 1)  # [B*P, 3]
        tokens = clip_patch_features(model, normalise_frames(data.frames[videos, t])).flatten(0, 1)  # [B*P, E]
        loss = tokens.new_zeros(())
        for j, (name, head) in enumerate(zip(names, heads)):
            keep = labels[:, j] >= 0
            if not bool(keep.any()):
                continue
            logits = head(tokens[keep])
            loss = loss + F.cross_entropy(logits, labels[keep, j])
            correct[name] += int((logits.argmax(1) == labels[keep, j]).sum())
            total[name] += int(keep.sum())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if (step + 1) % 50 == 0 or step + 1 == config.attribute_steps:
            accuracy = {n: correct[n] / max(1, total[n]) for n in names}
            history.append((step + 1, accuracy))
            logger.info("attribute pre-training step %d: patch accuracy %s", step + 1, accuracy)
            correct = {n: 0 for n in names}
            total = {n: 0 for n in names}
    return {
        "steps": config.attribute_steps,
        "seconds": round(time.time() - start, 1),
        "accuracy_every_50_steps": history,
    }


def warmup_cosine_adamw(
    decay: list[nn.Parameter], rest: list[nn.Parameter], lr: float, weight_decay: float, warmup: int, steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """CLIP's optimiser: AdamW with ``weight_decay`` on ``decay`` and none on ``rest``, the learning rate rising
    linearly over ``warmup`` steps, then a cosine decay to 0 at ``steps``."""
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=lr
    )

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)


def train_shapes_clip(
    output_dir: str | Path | None,
    config: ShapesClipConfig | None = None,
    *,
    progress: bool = True,
    overwrite: bool = False,
) -> tuple[Any, Any, dict[str, Any]]:
    """Train the tiny Shapes CLIP and (if ``output_dir``) save it as a ``save_pretrained`` folder, atomically,
    with ``training.json`` (config, loss every 50 steps, time).

    Returns:
        ``(model, tokenizer, record)``.
    """
    from transformers import CLIPModel

    from ..utils import atomic_folder, check_output_folder

    config = config or ShapesClipConfig()
    if config.targets not in ("diagonal", "fits"):
        raise ConfigError(f"ShapesClipConfig.targets must be 'diagonal' or 'fits', got {config.targets!r}")
    if config.pool not in IMAGE_POOLS:
        raise ConfigError(f"ShapesClipConfig.pool must be one of {IMAGE_POOLS}, got {config.pool!r}")
    if config.attribute_steps < 0:
        raise ConfigError(f"ShapesClipConfig.attribute_steps must be >= 0, got {config.attribute_steps}")
    if not config.grounding_weight >= 0:
        raise ConfigError(f"ShapesClipConfig.grounding_weight must be >= 0, got {config.grounding_weight}")
    if not config.motion_weight >= 0:
        raise ConfigError(f"ShapesClipConfig.motion_weight must be >= 0, got {config.motion_weight}")
    if output_dir is not None:
        check_output_folder(output_dir, overwrite=overwrite, option="--overwrite")
    torch.manual_seed(config.seed)
    tokenizer = shapes_clip_tokenizer(config.context)
    model = CLIPModel(shapes_clip_model_config(config, tokenizer)).train()
    data = ShapesPairs(config.seed, "train", config.num_train, config.frames, config.size, progress=progress)
    if config.motion_weight and not data.motion_texts:
        raise ConfigError("ShapesClipConfig.motion_weight needs training expressions that name a motion; none found")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embedding" not in n)]
    motion_head = None
    if config.motion_weight:
        with torch.random.fork_rng():  # the model's own random stream stays that of a run without the head
            torch.manual_seed(config.seed + 1)
            motion_head = nn.Linear(int(model.config.projection_dim), 1 + len(MOTIONS))
        decay.append(motion_head.weight)
        rest.append(motion_head.bias)
    optimizer, scheduler = warmup_cosine_adamw(decay, rest, config.lr, config.weight_decay, config.warmup, config.steps)
    rng = np.random.default_rng(config.seed)
    attributes = pretrain_patch_attributes(model, data, config, rng, progress) if config.attribute_steps else None
    motion_rng = np.random.default_rng(config.seed + 1)  # motion samples do not shift the contrastive batches
    losses: list[tuple[int, float]] = []
    grounding: list[tuple[int, float]] = []
    motion: list[tuple[int, float, float]] = []
    start = time.time()
    running = running_grounding = running_motion = 0.0
    motion_correct = motion_total = 0
    bar = tqdm(range(config.steps), desc="Shapes CLIP", disable=not progress)
    for step in bar:
        frames, texts, videos, times = data.sample_indexed(config.batch, rng)
        ids, mask = _tokenize(tokenizer, texts, config.context)
        positives = data.fits(texts, videos) if config.targets == "fits" else None
        pixels = normalise_frames(frames)
        text = clip_text_features(model, ids, mask)  # [B, E], shared by every loss below
        if config.grounding_weight:
            patches = clip_patch_features(model, pixels)  # [B, P, E]
            if config.pool == "max":  # one image forward for both losses
                cosine = best_patch_cosine(patches, text)
            else:
                cosine = clip_cosine(model, pixels, text)
            scale = model.logit_scale.exp()
            dense = grounding_loss(patches, text, data.referent_coverage(texts, videos, times, config.patch), scale)
            loss = _info_nce(scale * cosine, positives) + config.grounding_weight * dense
            running_grounding += float(dense.detach())
        else:
            loss = _text_contrastive_loss(model, pixels, text, positives)
        if motion_head is not None:
            few = len(data.motion_texts) < config.batch
            picks = motion_rng.choice(len(data.motion_texts), size=config.batch, replace=few)
            extra = [data.motion_texts[int(i)] for i in picks]
            labels = torch.tensor([motion_class(t) for t in [*texts, *extra]])
            m_ids, m_mask = _tokenize(tokenizer, extra, config.context)
            logits = motion_head(torch.cat([text, clip_text_features(model, m_ids, m_mask)]))
            motion_loss = F.cross_entropy(logits, labels)
            loss = loss + config.motion_weight * motion_loss
            running_motion += float(motion_loss.detach())
            motion_correct += int((logits.argmax(1) == labels).sum())
            motion_total += len(labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():  # CLIP clips the temperature at 100
            model.logit_scale.clamp_(0, math.log(100))
        running += float(loss.detach())
        if (step + 1) % 50 == 0:
            losses.append((step + 1, running / 50))
            bar.set_postfix(loss=f"{running / 50:.3f}")
            logger.info("step %d: loss %.4f", step + 1, running / 50)
            if config.grounding_weight:
                grounding.append((step + 1, running_grounding / 50))
                logger.info("step %d: grounding loss %.4f", step + 1, running_grounding / 50)
            if motion_head is not None:
                motion.append((step + 1, running_motion / 50, motion_correct / max(1, motion_total)))
                logger.info("step %d: motion loss %.4f, accuracy %.3f", step + 1, *motion[-1][1:])
            running = running_grounding = running_motion = 0.0
            motion_correct = motion_total = 0
    model.eval()
    record = {
        "config": asdict(config),
        "loss_every_50_steps": losses,
        "grounding_loss_every_50_steps": grounding,
        "motion_loss_accuracy_every_50_steps": motion,
        "train_seconds": round(time.time() - start, 1),
        "train_videos": len(data),
        "attribute_pretraining": attributes,
        "torch_threads": torch.get_num_threads(),
    }
    if output_dir is not None:
        with atomic_folder(output_dir, overwrite=overwrite, option="--overwrite") as tmp:
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return model, tokenizer, record


def _matches(text: str, objects: Sequence[ShapeObject]) -> bool:
    ids = expression_semantics(text, objects)
    return bool(ids)


@torch.no_grad()
def retrieval_accuracy(
    model: Any, tokenizer: Any, data: ShapesPairs, frame: int | None = None, context: int = 40
) -> dict[str, float]:
    """Text -> frame retrieval over held-out videos: for each expression of each video, rank one frame of every
    video by CLIP similarity.

    Returns:
        ``top1``: share of expressions whose top frame shows what the expression describes (its referent exists
        there: :func:`~lvseg.data.shapes.expression_semantics` is non-empty), ``own_top1``: share whose top frame
        is their own video's, and ``chance``: the expected ``top1`` of a random ranking (the mean share of frames
        that fit each expression).
    """
    model.eval()
    t = data.frames.shape[1] // 2 if frame is None else frame
    pixels = normalise_frames(data.frames[:, t])
    queries = [(v, text) for v, texts in enumerate(data.texts) for text in texts]
    ids, mask = _tokenize(tokenizer, [q[1] for q in queries], context)
    text = clip_text_features(model, ids, mask)  # [Q, E]
    best = clip_cosine(model, pixels, text).argmax(dim=0).tolist()  # [N, Q] -> each query's best frame
    fits = data.fits([q for _, q in queries], range(len(data)))  # [Q, N]
    top1 = float(fits[torch.arange(len(best)), torch.tensor(best)].double().mean())
    own = float(np.mean([b == v for (v, _), b in zip(queries, best)]))
    chance = float(fits.double().mean())
    return {"top1": top1, "own_top1": own, "chance": chance, "queries": float(len(queries)), "frames": float(len(data))}


@torch.no_grad()
def attribute_probe(model: Any, tokenizer: Any, data: ShapesPairs, context: int = 40) -> dict[str, dict[str, float]]:
    """What the encoder tells apart: text -> frame retrieval (as :func:`retrieval_accuracy`, middle frames) for
    fixed one-attribute query families, each query over every held-out frame: ``{family: {"top1", "chance"}}``.

    Families: ``color`` ("the red object", one per colour), ``plural_shape`` ("the circles"), ``color_shape``
    ("the red circle", every pair), ``size_shape`` ("the small circle"), ``position`` ("the leftmost object").
    """
    from ..data.shapes import POSITIONS

    families = {
        "color": [f"the {c} object" for c in COLORS],
        "plural_shape": [f"the {s}s" for s in SHAPES],
        "color_shape": [f"the {c} {s}" for c in COLORS for s in SHAPES],
        "size_shape": [f"the {z} {s}" for z in SIZES for s in SHAPES],
        "position": [f"the {p} object" for p in POSITIONS],
    }
    model.eval()
    pixels = normalise_frames(data.frames[:, data.frames.shape[1] // 2])
    out: dict[str, dict[str, float]] = {}
    for family, queries in families.items():
        ids, mask = _tokenize(tokenizer, queries, context)
        text = clip_text_features(model, ids, mask)
        best = clip_cosine(model, pixels, text).argmax(dim=0)  # [frames, queries] -> each query's best frame
        fits = data.fits(queries, range(len(data)))  # [queries, frames]
        top1 = float(fits[torch.arange(len(queries)), best].double().mean())
        chance = float(fits.double().mean())
        out[family] = {"top1": top1, "chance": chance}
    return out


@torch.no_grad()
def motion_separation(model: Any, tokenizer: Any, context: int = 40) -> dict[str, float]:
    """How far apart the text tower puts expressions that differ only in their motion phrase, next to ones that
    differ only in their colour: the mean cosine between the text embeddings of every pair of variants, over a
    fixed set of expressions ("the object moving left" vs "the object moving right", ...; "the red circle" vs
    "the blue circle", ...). 1.0: the tower does not tell them apart.

    Returns:
        ``{"motion": mean cosine over the motion variants, "color": the same over the colour variants}``.
    """
    model.eval()

    def mean_pair_cosine(groups: list[list[str]]) -> float:
        values = []
        for texts in groups:
            ids, mask = _tokenize(tokenizer, texts, context)
            unit = F.normalize(clip_text_features(model, ids, mask), dim=-1)
            cos = unit @ unit.t()
            off = ~torch.eye(len(texts), dtype=torch.bool)
            values.append(cos[off].mean())
        return float(torch.stack(values).mean())

    bases = ["the object", *(f"the {c} {s}" for c in list(COLORS)[:3] for s in SHAPES), "the big circles"]
    motion = [[f"{b} {phrase}" for phrase in MOTION_PHRASES.values()] for b in bases]
    color = [[f"the {c} {s}" for c in COLORS] for s in SHAPES] + [[f"the {c} object" for c in COLORS]]
    return {"motion": mean_pair_cosine(motion), "color": mean_pair_cosine(color)}


def cell_attributes(idmap: np.ndarray, objects: Sequence[ShapeObject], patch: int) -> np.ndarray:
    """Per ``patch`` x ``patch`` cell of an object-id map ``[H, W]`` (row-major, as a ViT orders its patch tokens):
    the class index of each of :data:`CELL_ATTRIBUTES` (shape, size, colour) of the object that covers more than
    half of the cell, -1 where none does: ``int64 [P, 3]``."""
    top = max([o.obj_id for o in objects] + [int(idmap.max())])
    table = np.full((top + 1, len(CELL_ATTRIBUTES)), -1, dtype=np.int64)  # object id -> its classes (0: background)
    for o in objects:
        table[o.obj_id] = [classes.index(getattr(o, name)) for name, classes in CELL_ATTRIBUTES.items()]
    cells = _cells(idmap, patch).astype(np.int64)
    counts = (cells[:, :, None] == np.arange(top + 1)).sum(axis=1)  # [P, ids]: pixels of each id in each cell
    best = counts.argmax(axis=1)
    covered = (best != 0) & (counts[np.arange(len(cells)), best] * 2 > patch * patch)
    labels = np.full((len(cells), len(CELL_ATTRIBUTES)), -1, dtype=np.int64)
    labels[covered] = table[best[covered]]
    return labels


def _cells(idmap: np.ndarray, patch: int) -> np.ndarray:
    """The ``patch`` x ``patch`` cells of an ``[H, W]`` map, row-major: ``[P, patch * patch]``."""
    gh, gw = idmap.shape[0] // patch, idmap.shape[1] // patch
    cells = idmap[: gh * patch, : gw * patch].reshape(gh, patch, gw, patch).transpose(0, 2, 1, 3)
    return cells.reshape(gh * gw, patch * patch)


def _patch_labels(seed: int, split: str, num_videos: int, size: int, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """The middle frame of each video ``uint8 [N, H, W, 3]`` and its :func:`cell_attributes` ``int64 [N, P, 3]``."""
    frames, labels = [], []
    for i in range(num_videos):
        video, rendered, ids = make_video(seed, split, i, 8, size, size)
        t = len(rendered) // 2
        frames.append(rendered[t])
        labels.append(cell_attributes(ids[t], video.objects, patch))
    return np.stack(frames), np.stack(labels)


def patch_attribute_probe(
    model: Any, num_train: int = 400, num_test: int = 100, steps: int = 300, seed: int = 0
) -> dict[str, dict[str, float]]:
    """What each patch token of the image tower knows about the object under it: a linear probe (softmax
    regression on standardised tokens, Adam, ``steps`` full-batch steps) of the object's shape, size and colour
    from the patch tokens after each layer, trained on the middle frames of ``num_train`` training videos (seed 0)
    and scored on ``num_test`` held-out ones (seed 1, split ``valid``). Only patches more than half covered by
    one object count.

    This is the question the dense features of VLP-RVOS answer: the head reads patch tokens, not the pooled
    embedding, so an attribute that only the pooled embedding separates is invisible to it.

    Returns:
        ``{"layer<i>": {"shape", "size", "color"}}`` (held-out accuracy, i = 1 .. layers) and ``"majority"`` (the
        accuracy of always answering the most frequent held-out class).
    """
    vision = model.config.vision_config
    size, patch = int(vision.image_size), int(vision.patch_size)
    x_train, y_train = _patch_labels(0, "train", num_train, size, patch)
    x_test, y_test = _patch_labels(1, "valid", num_test, size, patch)
    model.eval()
    with torch.no_grad():
        train_states = model.vision_model(pixel_values=normalise_frames(x_train), output_hidden_states=True)
        test_states = model.vision_model(pixel_values=normalise_frames(x_test), output_hidden_states=True)
    classes = {name: len(values) for name, values in CELL_ATTRIBUTES.items()}
    yt, ye = torch.from_numpy(y_train.reshape(-1, 3)), torch.from_numpy(y_test.reshape(-1, 3))
    out: dict[str, dict[str, float]] = {}
    generator = torch.Generator().manual_seed(seed)
    for layer in range(1, len(train_states.hidden_states)):
        a = train_states.hidden_states[layer][:, 1:].reshape(-1, vision.hidden_size)
        b = test_states.hidden_states[layer][:, 1:].reshape(-1, vision.hidden_size)
        scores = {}
        for j, (name, n) in enumerate(classes.items()):
            keep, keep_test = yt[:, j] >= 0, ye[:, j] >= 0
            xa, xb = a[keep], b[keep_test]
            mean, std = xa.mean(0), xa.std(0) + 1e-6
            xa, xb = (xa - mean) / std, (xb - mean) / std
            weight = (torch.randn(xa.shape[1], n, generator=generator) * 0.01).requires_grad_()
            bias = torch.zeros(n, requires_grad=True)
            optimizer = torch.optim.Adam([weight, bias], lr=1e-2, weight_decay=1e-4)
            for _ in range(steps):
                optimizer.zero_grad()
                F.cross_entropy(xa @ weight + bias, yt[keep, j]).backward()
                optimizer.step()
            with torch.no_grad():
                scores[name] = float(((xb @ weight + bias).argmax(1) == ye[keep_test, j]).double().mean())
        out[f"layer{layer}"] = scores
    out["majority"] = {
        name: float(torch.bincount(ye[ye[:, j] >= 0, j]).max() / (ye[:, j] >= 0).sum())
        for j, name in enumerate(classes)
    }
    return out


@torch.no_grad()
def pointing_game(model: Any, tokenizer: Any, num_videos: int = 100, context: int = 40) -> dict[str, dict[str, float]]:
    """Do CLIP's dense features point at what a text names? For each expression without motion of the middle frame
    of ``num_videos`` held-out videos (seed 1, split ``valid``), the patch whose projected token
    (:func:`~lvseg.models.vlp_rvos.backbones.clip_patch_features`) has the largest cosine with the text is a hit
    when its cell holds a pixel of the expression's referent(s).

    This is what VLP-RVOS's pixel-text similarity needs from the frozen backbone; the pooled embedding that the
    retrieval scores can be right while no patch is.

    Returns:
        ``{kind: {"hits", "chance", "expressions"}}`` per :func:`~lvseg.data.shapes.expression_kind` and ``"all"``;
        ``chance``: the mean share of cells that hold the referent (a random patch's hit rate).
    """
    from ..data.shapes import expression_kind

    model.eval()
    vision = model.config.vision_config
    size, patch = int(vision.image_size), int(vision.patch_size)
    hits: dict[str, list[float]] = {}
    chance: dict[str, list[float]] = {}
    for i in range(num_videos):
        video, rendered, ids = make_video(1, "valid", i, 8, size, size)
        t = len(rendered) // 2
        texts = [text for text, _ in video.expressions if not _is_motion(text)]
        if not texts:
            continue
        patches = F.normalize(clip_patch_features(model, normalise_frames(rendered[t][None])), dim=-1)[0]  # [P, E]
        enc_ids, enc_mask = _tokenize(tokenizer, texts, context)
        text = F.normalize(clip_text_features(model, enc_ids, enc_mask), dim=-1)  # [Q, E]
        best = (patches @ text.t()).argmax(dim=0).tolist()
        cells = _cells(ids[t], patch)
        for expression, b in zip(texts, best):
            referents = sorted(expression_semantics(expression, video.objects) or ())
            on = np.asarray(np.isin(cells, referents).any(axis=1), dtype=bool)  # [P]: cells holding a referent
            for key in (expression_kind(expression) or "other", "all"):
                hits.setdefault(key, []).append(float(on[b]))
                chance.setdefault(key, []).append(float(on.mean()))
    return {
        key: {"hits": float(np.mean(v)), "chance": float(np.mean(chance[key])), "expressions": float(len(v))}
        for key, v in sorted(hits.items())
    }
