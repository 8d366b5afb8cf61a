"""The training loop: data order, optimisation, evaluation, checkpoints and logs for one process of a run.

One :class:`Trainer` runs in every process (``torchrun`` starts one per GPU/CPU slot); rank 0 alone writes files.
Seeded runs are deterministic on CPU: the data order comes from :class:`~lvseg.train.distributed.EpochBatchSampler`,
each sample's own randomness from a per-position seed, and the model's (dropout) from the saved RNG states, so
``resume=True`` continues bit-identically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..errors import ConfigError, InvalidInputError
from ..models.base import RVOSModel
from .checkpoint import (
    list_checkpoints,
    load_latest_checkpoint,
    replace_folder,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .distributed import (
    DistInfo,
    EpochBatchSampler,
    all_gather_objects,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    broadcast_object,
)
from .losses import LocaterLossWeights, LossWeights, MTTRLossWeights, VLPRVOSLossWeights
from .objectives import Objective, build_mttr_targets, build_targets, make_objective
from .plot import plot_curves

__all__ = [
    "TrainConfig",
    "Trainer",
    "TrainResult",
    "build_targets",
    "build_mttr_targets",
    "evaluate_jf",
    "prepare_frames",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything that controls a run (the presets in :mod:`lvseg.train.presets` fill it with official recipes).

    Learning rates: ``lr`` for the heads/transformer, ``lr_backbone`` for parameters under ``backbone.``,
    ``lr_text_encoder`` for the text encoder (``text_encoder.``; MTTR's ``transformer.text_encoder.``), frozen
    when ``freeze_text_encoder``. ``loss_weights``: None for the family's official coefficients, or
    :class:`~lvseg.train.losses.LossWeights` (ReferFormer) / :class:`~lvseg.train.losses.MTTRLossWeights` (MTTR) /
    :class:`~lvseg.train.losses.VLPRVOSLossWeights` / :class:`~lvseg.train.losses.LocaterLossWeights`, or a dict
    of their fields (read with the class whose fields it names; keys several classes share, such as ``dice``
    alone, are read with the trained model's family).
    The LR is multiplied by ``lr_gamma`` at every epoch in ``lr_drops`` (or every step in ``lr_drop_steps``),
    after ``warmup_steps`` of linear warm-up. ``batch_size`` is per process; the global batch is
    ``batch_size * world_size * grad_accum``. ``max_steps`` (optimizer steps) stops the run early; ``epochs``
    otherwise. ``optimizer`` is ``"adamw"`` (every official recipe) or ``"sgd"`` (momentum 0.9; its update is
    linear in the gradient, so runs that differ only by float rounding stay close, which Adam's normalisation of
    near-zero gradients does not guarantee). ``prepare_steps``: length of a preset's preparation stage (the
    Shapes preset's backbone pre-training; None = the preset's own length, 0 = skip it).
    ``lr_schedule`` ``"poly"`` multiplies the LR by ``(1 - step / (steps_per_epoch * epochs)) ** poly_power``
    every optimizer step (LAVT) instead of the ``lr_drops`` steps. Parameters whose name contains one of
    ``no_decay_keywords`` get no weight decay; those matching one of the regular expressions
    ``frozen_parameters`` (``re.match`` on the name) are not trained (LAVT: BERT's embeddings and last two layers,
    which the official optimizer leaves out). ``lr_groups``: ``(regular expression, lr)`` pairs; a parameter of the
    ``lr`` group whose name matches one (``re.match``, first match wins) gets that learning rate instead (VLP-RVOS:
    the released 5e-5 / 1e-4 split). ``step_per_clip``: one optimizer step per clip of the sample instead of one
    per batch, the model's state carried to the next clip detached (VLP-RVOS's released ``engine.py``; the family's
    objective splits the sample); the LR schedule and ``max_steps`` still count batches.
    """

    output_dir: str = "runs/lvseg"
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 1
    lr: float = 1e-4
    lr_backbone: float = 5e-5
    lr_text_encoder: float = 1e-5
    weight_decay: float = 5e-4
    optimizer: str = "adamw"
    lr_drops: tuple[int, ...] = ()
    lr_drop_steps: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    warmup_steps: int = 0
    clip_max_norm: float = 0.1
    freeze_text_encoder: bool = False
    grad_accum: int = 1
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    disable_dropout: bool = False
    seed: int = 42
    num_workers: int = 0
    device: str | None = None
    log_every: int = 10
    eval_every: int = 0
    eval_max_samples: int | None = None
    checkpoint_every: int = 0
    keep_last: int = 2
    resume: bool = False
    loss_weights: LossWeights | MTTRLossWeights | VLPRVOSLossWeights | LocaterLossWeights | dict[str, float] | None = (
        None
    )
    prepare_steps: int | None = None
    progress: bool = True
    tensorboard: bool = True
    deterministic: bool = True
    lr_schedule: str = "step"
    poly_power: float = 0.9
    no_decay_keywords: tuple[str, ...] = ()
    frozen_parameters: tuple[str, ...] = ()
    lr_groups: tuple[tuple[str, float], ...] = ()
    step_per_clip: bool = False

    def __post_init__(self) -> None:
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "log_every": self.log_every,
            "keep_last": self.keep_last,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 (or None to run all epochs), got {self.max_steps}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be 'adamw' (the official recipes) or 'sgd', got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("lr", "lr_backbone", "lr_text_encoder", "weight_decay", "clip_max_norm"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.prepare_steps is not None and (not isinstance(self.prepare_steps, int) or self.prepare_steps < 0):
            raise ConfigError(f"prepare_steps must be an integer >= 0 (or None), got {self.prepare_steps!r}")
        if self.eval_every < 0 or self.checkpoint_every < 0 or self.warmup_steps < 0 or self.num_workers < 0:
            raise ConfigError("eval_every, checkpoint_every, warmup_steps and num_workers must be >= 0")
        if self.lr_schedule not in ("step", "poly"):
            raise ConfigError(f"lr_schedule must be 'step' or 'poly', got {self.lr_schedule!r}")
        self.no_decay_keywords = tuple(str(x) for x in self.no_decay_keywords)
        self.frozen_parameters = tuple(str(x) for x in self.frozen_parameters)
        for pattern in self.frozen_parameters:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"frozen_parameters entry {pattern!r} is not a regular expression: {exc}") from exc
        try:
            self.lr_groups = tuple((str(pattern), float(lr)) for pattern, lr in self.lr_groups)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"lr_groups must be (regular expression, lr) pairs, got {self.lr_groups!r}") from exc
        for pattern, lr in self.lr_groups:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"lr_groups pattern {pattern!r} is not a regular expression: {exc}") from exc
            if lr < 0 or not math.isfinite(lr):
                raise ConfigError(f"lr_groups learning rate for {pattern!r} must be a finite number >= 0, got {lr}")
        if self.step_per_clip and self.grad_accum > 1:
            raise ConfigError(
                "step_per_clip makes one optimizer step per clip, so it cannot accumulate gradients over batches: "
                "use grad_accum=1 (or step_per_clip=False)"
            )
        self.lr_drops = tuple(int(x) for x in self.lr_drops)
        self.lr_drop_steps = tuple(int(x) for x in self.lr_drop_steps)
        if isinstance(self.loss_weights, dict) and not self.loss_weights:
            self.loss_weights = None  # the family's official weights
        if isinstance(self.loss_weights, dict):
            kinds = (LossWeights, MTTRLossWeights, VLPRVOSLossWeights, LocaterLossWeights)
            names = {k: {f.name for f in fields(k)} for k in kinds}
            fit = [k for k in kinds if set(self.loss_weights) <= names[k]]
            if not fit:
                raise ConfigError(
                    f"loss_weights keys {sorted(self.loss_weights)} fit no family: ReferFormer takes "
                    f"{sorted(names[LossWeights])}, MTTR {sorted(names[MTTRLossWeights])}, VLP-RVOS "
                    f"{sorted(names[VLPRVOSLossWeights])}, Locater {sorted(names[LocaterLossWeights])}"
                )
            if len(fit) == 1:
                self.loss_weights = fit[0](**self.loss_weights)
            # keys several families share (e.g. only "dice") stay a dict: the trainer reads them with the model's
            # family (lvseg.train.objectives.make_objective)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """What a finished run left behind. ``best_checkpoint`` and ``final_checkpoint`` are Hub-format folders."""

    output_dir: Path
    final_checkpoint: Path | None
    best_checkpoint: Path | None
    best_metric: float | None
    steps: int
    history: list[dict[str, Any]]
    log_file: Path
    plot_file: Path | None

    @property
    def metrics(self) -> dict[str, Any]:
        """The last evaluation's metrics (empty when no validation data was given)."""
        evals = [h for h in self.history if h.get("kind") == "eval"]
        return evals[-1] if evals else {}


# ------------------------------------------------------------------------------------------------ batches
def prepare_frames(frames: torch.Tensor, model: RVOSModel, device: torch.device) -> torch.Tensor:
    """Collated frames -> normalised float [B, T, 3, H, W] on ``device``.

    uint8 ``[B, T, H, W, 3]`` (dataset output) is scaled and normalised with the model's preprocessing mean/std;
    float ``[B, T, 3, H, W]`` is taken as already normalised (e.g. by :class:`lvseg.data.transforms.Normalize`).
    """
    if frames.dtype == torch.uint8:
        pre = model.preprocessing
        x = frames.to(device).permute(0, 1, 4, 2, 3).float().div_(255.0)
        mean = torch.tensor(pre.mean, device=device).view(1, 1, 3, 1, 1)
        std = torch.tensor(pre.std, device=device).view(1, 1, 3, 1, 1)
        return (x - mean) / std
    if frames.dim() != 5 or frames.shape[2] != 3:
        raise InvalidInputError(
            f"batch frames must be uint8 [B, T, H, W, 3] or float [B, T, 3, H, W], got {tuple(frames.shape)}"
        )
    return frames.to(device).float()


class _SeededSamples(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` draws its randomness (clip sampling, augmentation) from
    ``seed`` alone, leaving the caller's generators untouched."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        index, seed = item
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                random.seed(seed)
                np.random.seed(seed % 2**32)
                torch.manual_seed(seed)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    from ..data.collate import collate_clips

    return collate_clips(samples)


# ------------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def check_validation_sample(sample: Any) -> None:
    """Raise :class:`ConfigError` unless ``sample`` is what :func:`evaluate_jf` scores: ``video``, ``exp_id``,
    ``text``, ``frames`` uint8 ``[T, H, W, 3]`` and ground-truth ``masks`` ``[T, H, W]``. Checked when a
    :class:`Trainer` is built, so that a wrong validation set fails before any training, not at the first evaluation."""
    if not isinstance(sample, dict):
        raise ConfigError(f"validation samples must be dicts (an lvseg dataset's samples), got {type(sample).__name__}")
    missing = [k for k in ("video", "exp_id", "text", "frames", "masks") if k not in sample]
    if "masks" in missing:
        raise ConfigError(
            "the validation samples have no ground-truth masks; give a split with ground "
            "truth (for Shapes valid/test, the generated <split>_gt folder)"
        )
    if missing:
        raise ConfigError(
            f"the validation samples lack {missing}: in-loop validation scores Ref-YouTube-VOS-style samples (video, "
            "exp_id, text, uint8 frames); pass no validation set and score the checkpoints with `lvseg evaluate`"
        )
    frames = sample["frames"]
    is_uint8 = isinstance(frames, torch.Tensor) and frames.dtype == torch.uint8
    if not is_uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ConfigError(
            f"validation frames must be uint8 [T, H, W, 3] (no Normalize/resize transform on the validation set), "
            f"got {getattr(frames, 'dtype', None)} {shape}"
        )


def evaluate_jf(
    model: RVOSModel,
    dataset: Dataset,
    dist_info: DistInfo | None = None,
    max_samples: int | None = None,
    progress: bool = False,
    group_by: Callable[[str], str | None] | None = None,
) -> dict[str, Any]:
    """Ref-YouTube-VOS-style J&F of ``model`` on a dataset whose samples carry ground-truth ``masks``.

    Each sample (all frames of one expression) goes through ``model.segment`` at the model's preprocessing size;
    logits are resized (bilinear) to the original size and thresholded at 0. With several ranks the samples are
    split between them and the per-expression scores gathered. Returns ``{"J&F", "J", "F"}`` in percent and
    ``num_expressions``.

    Args:
        group_by: optional, maps an expression's text to a group name (e.g.
            :func:`lvseg.data.shapes.expression_kind`); the result then has ``"groups"``: ``{name: {"J&F", "J",
            "F", "num_expressions"}}`` over the expressions of each group (texts mapped to None are in no group).
    """
    from ..metrics.rvos import ExpressionJF

    info = dist_info or DistInfo()
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ConfigError("the validation dataset is empty: check its root and split")
    indices = list(range(n if max_samples is None else min(n, max_samples)))
    mine = indices[info.rank :: info.world_size]
    was_training = model.training
    model.eval()
    device = model.device
    scores: dict[str, tuple[float, float, str]] = {}
    evaluator = ExpressionJF("Shapes/Ref-YouTube-VOS")
    for i in tqdm(mine, desc="eval", disable=not (progress and info.is_main), leave=False):
        sample = dataset[i]
        check_validation_sample(sample)
        frames = sample["frames"]
        h, w = int(frames.shape[1]), int(frames.shape[2])
        x = prepare_frames(frames[None], model, device)
        new_h, new_w = model.preprocessing.output_size(h, w)
        if (new_h, new_w) != (h, w):
            x = F.interpolate(x.flatten(0, 1), size=(new_h, new_w), mode="bilinear", align_corners=False)
            x = x.unflatten(0, (1, -1))
        logits, _ = model.segment(x.to(model.dtype), [sample["text"]])
        logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
        pred = (logits[0] > 0).cpu().numpy()
        j, f = evaluator.add(str(sample["video"]), str(sample["exp_id"]), pred, sample["masks"].numpy())
        scores[f"{sample['video']}_{sample['exp_id']}"] = (j, f, str(sample["text"]))
    if was_training:
        model.train()
    merged: dict[str, tuple[float, float, str]] = {}
    for part in all_gather_objects(scores):
        merged.update(part)
    result: dict[str, Any] = _jf_summary(list(merged.values()))
    if group_by is not None:
        groups: dict[str, list[tuple[float, float, str]]] = {}
        for item in merged.values():
            name = group_by(item[2])
            if name is not None:
                groups.setdefault(name, []).append(item)
        result["groups"] = {name: _jf_summary(items) for name, items in sorted(groups.items())}
    return result


def _jf_summary(items: Sequence[tuple[float, float, str]]) -> dict[str, Any]:
    """Mean J, F and J&F (percent) of per-expression ``(J, F, text)`` scores, and their number."""
    j_mean = float(np.mean([v[0] for v in items]))
    f_mean = float(np.mean([v[1] for v in items]))
    return {"J&F": 100 * (j_mean + f_mean) / 2, "J": 100 * j_mean, "F": 100 * f_mean, "num_expressions": len(items)}


# ------------------------------------------------------------------------------------------------ trainer
def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    groups: dict[str, list[nn.Parameter]] = {"main": [], "backbone": [], "text": []}
    no_decay: set[int] = set()
    frozen = [re.compile(p) for p in cfg.frozen_parameters]
    split = [(re.compile(pattern), f"main:{pattern}") for pattern, _ in cfg.lr_groups]
    for name, p in model.named_parameters():
        if any(rx.match(name) for rx in frozen):
            p.requires_grad_(False)
            continue
        if any(k in name for k in cfg.no_decay_keywords):
            no_decay.add(id(p))
        if name.startswith("text_encoder.") or ".text_encoder." in name:  # MTTR: transformer.text_encoder.
            if cfg.freeze_text_encoder:
                p.requires_grad_(False)
                continue
            groups["text"].append(p)
        elif name.startswith("backbone."):
            groups["backbone"].append(p)
        else:
            key = next((key for rx, key in split if rx.match(name)), "main")
            groups.setdefault(key, []).append(p)
    lrs = {"main": cfg.lr, "backbone": cfg.lr_backbone, "text": cfg.lr_text_encoder}
    lrs.update({f"main:{pattern}": lr for pattern, lr in cfg.lr_groups})
    out = []
    for key, params in groups.items():
        params = [p for p in params if p.requires_grad]
        if params and lrs[key] > 0:
            decayed = [p for p in params if id(p) not in no_decay]
            if decayed:
                out.append({"params": decayed, "lr": lrs[key], "name": key})
            if len(decayed) < len(params):
                plain = [p for p in params if id(p) in no_decay]
                out.append({"params": plain, "lr": lrs[key], "name": f"{key}_no_decay", "weight_decay": 0.0})
        elif params:
            for p in params:  # a learning rate of 0 freezes the group
                p.requires_grad_(False)
    if not out:
        raise ConfigError("no parameter would be trained: every group is frozen or has a learning rate of 0")
    return out


def _disable_dropout(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        elif isinstance(m, nn.MultiheadAttention):
            m.dropout = 0.0
    text = getattr(model, "text_encoder", None)
    if text is not None and hasattr(text, "config"):
        text.config.hidden_dropout_prob = 0.0
        text.config.attention_probs_dropout_prob = 0.0


def _is_oom(exc: BaseException) -> bool:
    text = str(exc)
    return (
        isinstance(exc, torch.OutOfMemoryError)
        or "out of memory" in text
        or "can't allocate memory" in text
        or "DefaultCPUAllocator" in text
    )


class Trainer:
    """Trains a ReferFormer or MTTR model (see :func:`lvseg.train` for the user-facing entry point).

    Args:
        model: the model (weights as they should start), with its tokenizer.
        train_data: a dataset of training samples (dicts as :class:`lvseg.data.RefYouTubeVOS` returns).
        config: the :class:`TrainConfig`.
        val_data: optional dataset with ground truth, scored with :func:`evaluate_jf`.
        dist_info: from :func:`lvseg.train.distributed.init_distributed`.
        criterion: the loss (default: the family's criterion, see :mod:`lvseg.train.objectives`, with
            ``config.loss_weights``).
    """

    def __init__(
        self,
        model: RVOSModel,
        train_data: Dataset,
        config: TrainConfig,
        val_data: Dataset | None = None,
        dist_info: DistInfo | None = None,
        criterion: nn.Module | None = None,
    ) -> None:
        self.cfg = config
        self.info = dist_info or DistInfo(device=torch.device(config.device or "cpu"))
        self.model = model
        self.train_data, self.val_data = train_data, val_data
        if len(train_data) == 0:  # type: ignore[arg-type]
            raise ConfigError("the training dataset is empty: check the data root and split (no samples found)")
        if val_data is not None:
            if len(val_data) == 0:  # type: ignore[arg-type]
                raise ConfigError("the validation dataset is empty: check its root and split")
            check_validation_sample(val_data[0])
        self._carry: dict[str, Any] = {}  # step_per_clip: what the last clip passes to the next
        self.objective: Objective = make_objective(
            model.config.architecture,
            config.loss_weights,
            criterion,
            mask_stride=getattr(model.config, "mask_stride", 4),
        )
        if config.gradient_checkpointing and hasattr(model.config, "gradient_checkpointing"):
            model.config.gradient_checkpointing = True
            backbone = getattr(model, "backbone", None)
            if backbone is not None and hasattr(backbone, "gradient_checkpointing"):
                backbone.gradient_checkpointing = True
        if config.disable_dropout:
            _disable_dropout(model)
        model.to(self.info.device)
        model.train()
        self.criterion = self.objective.criterion
        groups = _param_groups(model, config)
        if config.optimizer == "sgd":  # momentum SGD: updates linear in the gradient (exactness checks, ablations)
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay
            )
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        self.sampler = EpochBatchSampler(
            len(train_data),  # type: ignore[arg-type]
            config.batch_size,
            self.info.rank,
            self.info.world_size,
            config.seed,
        )
        self.micro_per_epoch = len(self.sampler)
        if self.micro_per_epoch < config.grad_accum:
            raise ConfigError(
                f"an epoch has {self.micro_per_epoch} batches per process, fewer than grad_accum="
                f"{config.grad_accum}: lower grad_accum or batch_size, or add data"
            )
        self.steps_per_epoch = max(self.micro_per_epoch // config.grad_accum, 1)
        total = self.steps_per_epoch * config.epochs
        self.total_steps = min(total, config.max_steps) if config.max_steps else total
        drops = sorted({e * self.steps_per_epoch for e in config.lr_drops} | set(config.lr_drop_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factory(drops))
        use_scaler = config.precision == "fp16" and self.info.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.info.device.type, enabled=use_scaler)
        if config.precision == "fp16" and self.info.device.type == "cpu":
            raise ConfigError("precision 'fp16' needs a GPU; use 'bf16' (or 'fp32') on CPU")
        self.ddp: nn.Module = model
        if self.info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
        self.out = Path(config.output_dir)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best_metric: float | None = None
        self.history: list[dict[str, Any]] = []
        self._tb: Any = None

    def _lr_factory(self, drops: list[int]) -> Callable[[int], float]:
        warmup, gamma = self.cfg.warmup_steps, self.cfg.lr_gamma
        poly_total = self.steps_per_epoch * self.cfg.epochs

        def factor(step: int) -> float:
            if self.cfg.lr_schedule == "poly":
                f = max(1.0 - step / poly_total, 0.0) ** self.cfg.poly_power
            else:
                f = gamma ** sum(step >= d for d in drops)
            if warmup and step < warmup:
                f *= (step + 1) / warmup
            return f

        return factor

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "best_metric": self.best_metric,
            "history": self.history,
            "train_config": self.cfg.to_dict(),
            "world_size": self.info.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("world_size", 1) != self.info.world_size:
            logger.warning(
                "the checkpoint was written by %d processes, this run has %d: the data order and RNG "
                "streams differ from an uninterrupted run",
                state.get("world_size"),
                self.info.world_size,
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        per_rank = state.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == self.info.world_size:
            set_rng_state(per_rank[self.info.rank])
        else:
            set_rng_state(state["rng"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best_metric = state["best_metric"]
        self.history = list(state["history"])

    # ----------------------------------------------------------------------------------------- logging
    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not self.info.is_main:
            return
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self._tb.add_scalar(f"{record['kind']}/{k}", v, record["step"])

    def _open_tensorboard(self) -> Any:
        if not (self.cfg.tensorboard and self.info.is_main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.out / "tensorboard"))

    # ----------------------------------------------------------------------------------------- steps
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.info.device.type, dtype=dtype)

    def _micro_step(
        self, batch: dict[str, Any], accum: int, sync: bool, carry: dict[str, Any] | None = None
    ) -> dict[str, float]:
        """Forward and backward of one batch; with ``carry`` (clip-by-clip training) its entries are extra model
        arguments and the objective's carry of this forward is left in ``self._carry`` for the next clip."""
        device = self.info.device
        frames = prepare_frames(batch["frames"], self.model, device)
        model_kwargs, targets = self.objective.prepare(batch, device)
        if carry is not None:
            model_kwargs.update(carry)
        # DETR normalisation: the global number of target-frames, averaged over ranks (DDP averages gradients)
        normaliser = all_reduce_sum(self.objective.count(targets), device) / self.info.world_size
        context = cast(Any, self.ddp).no_sync() if (not sync and self.info.distributed) else contextlib.nullcontext()
        with context:
            with self._autocast():
                outputs = self.ddp(frames, list(batch["text"]), **model_kwargs)
            if carry is not None:
                self._carry = self.objective.carry(outputs)
            losses = self.criterion(outputs, targets, max(normaliser, 1.0))
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss is {loss.item()} at step {self.step}: lower the learning rate, "
                    "keep gradient clipping on, or use precision='fp32'"
                )
            self.scaler.scale(loss / accum).backward()
        return {k: float(v.detach()) for k, v in losses.items()}

    def _clip_steps(self, batch: dict[str, Any]) -> tuple[dict[str, float], float]:
        """``step_per_clip``: the sample's clips in order (the objective splits it), each its own forward, backward
        and optimizer step, the model's state carried detached. Returns the clips' mean losses and largest
        gradient norm; the caller steps the LR schedule once for the batch."""
        carry: dict[str, Any] = {}
        losses, norms = [], []
        for piece in self.objective.split(batch, self.model):
            losses.append(self._micro_step(piece, 1, True, carry))
            carry = self._carry
            norms.append(self._optimizer_step(schedule=False))
        return {k: float(np.mean([x[k] for x in losses])) for k in losses[0]}, max(norms)

    def _optimizer_step(self, schedule: bool = True) -> float:
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.cfg.clip_max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_max_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if schedule:
            self.scheduler.step()
        return float(norm)

    def _loader(self) -> Iterable[dict[str, Any]]:
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
        # a private generator: creating the loader's iterator must not draw from the global RNG (resume exactness)
        generator = torch.Generator().manual_seed(self.cfg.seed + self.epoch)
        return DataLoader(
            _SeededSamples(self.train_data),
            batch_sampler=self.sampler,
            collate_fn=_collate,
            num_workers=self.cfg.num_workers,
            generator=generator,
        )

    def _save(self) -> None:
        rngs = all_gather_objects(rng_state())  # every rank's generators (dropout streams differ per rank)
        if self.info.is_main:
            state = self.state_dict()
            state["rng_per_rank"] = rngs
            save_checkpoint(self.out / "checkpoints", self.step, state, self.cfg.keep_last)
        barrier()

    def _save_model(self, name: str) -> Path:
        target = self.out / name
        if self.info.is_main:
            tmp = self.out / f".{name}.tmp"
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp)
            self.model.save_pretrained(tmp)
            replace_folder(tmp, target)
        barrier()
        return target

    def _evaluate(self) -> dict[str, Any] | None:
        if self.val_data is None:
            return None
        metrics = evaluate_jf(
            self.model, self.val_data, self.info, self.cfg.eval_max_samples, progress=self.cfg.progress
        )
        record = {"kind": "eval", "step": self.step, "epoch": self.epoch, **metrics}
        self._log(record)
        logger.info("step %d: J&F %.2f (J %.2f, F %.2f)", self.step, metrics["J&F"], metrics["J"], metrics["F"])
        if self.best_metric is None or metrics["J&F"] > self.best_metric:
            self.best_metric = metrics["J&F"]
            self._save_model("best")
        return record

    def fit(self) -> TrainResult:
        """Run (or resume) training to ``total_steps``; returns the :class:`TrainResult`."""
        cfg = self.cfg
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str) + "\n")
        barrier()
        if cfg.resume:
            # rank 0 reads (only it writes checkpoints, possibly on a disk the other nodes do not share)
            state = load_latest_checkpoint(self.out / "checkpoints") if self.info.is_main else None
            state = broadcast_object(state)
            if state is not None:
                self.load_state_dict(state)
                if self.info.is_main:  # drop log lines written after the checkpoint (they will be redone)
                    with open(self.out / "log.jsonl", "w", encoding="utf-8") as fh:
                        fh.writelines(json.dumps(r) + "\n" for r in self.history)
            else:
                logger.info("resume=True but %s has no checkpoint: starting from scratch", self.out / "checkpoints")
        elif self.info.is_main and list_checkpoints(self.out / "checkpoints"):
            raise ConfigError(
                f"{self.out} already holds checkpoints of a run: pass resume=True (--resume) to continue "
                "it, or choose another output_dir"
            )
        elif self.info.is_main:
            (self.out / "log.jsonl").write_text("")
        if not cfg.resume:
            torch.manual_seed(cfg.seed)
            random.seed(cfg.seed)
            np.random.seed(cfg.seed % 2**32)
        self._tb = self._open_tensorboard()
        previous_determinism = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        )
        if cfg.deterministic and self.info.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not (cfg.progress and self.info.is_main),
        )
        global_batch = cfg.batch_size * self.info.world_size * cfg.grad_accum
        window: list[dict[str, float]] = []
        tick = time.perf_counter()
        try:
            while self.step < self.total_steps:
                micro = 0
                for batch in self._loader():
                    micro += 1
                    sync = micro % cfg.grad_accum == 0
                    try:
                        if cfg.step_per_clip:
                            losses, clip_norm = self._clip_steps(batch)
                        else:
                            losses = self._micro_step(batch, cfg.grad_accum, sync)
                    except (RuntimeError, MemoryError) as exc:  # MemoryError: a failed allocation outside torch
                        if isinstance(exc, MemoryError) or _is_oom(exc):
                            raise ConfigError(
                                f"out of memory at batch_size={cfg.batch_size}: lower batch_size (and raise "
                                "grad_accum to keep the global batch), use precision='bf16', or enable "
                                "gradient_checkpointing=True"
                            ) from exc
                        raise
                    window.append(losses)
                    if not sync:
                        continue
                    self.batch_in_epoch += cfg.grad_accum
                    if cfg.step_per_clip:
                        norm = clip_norm
                        self.scheduler.step()  # the optimizer stepped once per clip; the schedule counts batches
                    else:
                        norm = self._optimizer_step()
                    self.step += 1
                    bar.update(1)
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        now = time.perf_counter()
                        mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                        mean = all_reduce_mean(mean, self.info.device)
                        clips_per_s = len(window) * cfg.batch_size * self.info.world_size / max(now - tick, 1e-9)
                        record = {
                            "kind": "train",
                            "step": self.step,
                            "epoch": self.epoch,
                            **mean,
                            "grad_norm": norm,
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "clips_per_s": clips_per_s,
                            "global_batch": global_batch,
                        }
                        self._log(record)
                        bar.set_postfix(loss=f"{mean['loss']:.3f}", clips_s=f"{clips_per_s:.1f}")
                        window, tick = [], now
                    last = self.step >= self.total_steps
                    end_of_epoch = self.batch_in_epoch + cfg.grad_accum > self.micro_per_epoch
                    if end_of_epoch:
                        self.epoch += 1
                        self.batch_in_epoch = 0
                    if (
                        (cfg.eval_every and self.step % cfg.eval_every == 0)
                        or last
                        or (not cfg.eval_every and end_of_epoch)
                    ):
                        self._evaluate()
                    if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or last or end_of_epoch:
                        self._save()
                    if last or end_of_epoch:
                        break
        finally:
            torch.use_deterministic_algorithms(previous_determinism[0], warn_only=previous_determinism[1])
            bar.close()
            if self._tb is not None:
                self._tb.close()
        final = self._save_model("final")
        best = self.out / "best" if (self.out / "best").is_dir() else None
        plot = None
        if self.info.is_main:
            plot = plot_curves(self.history, self.out / "curves.png")
        barrier()
        return TrainResult(
            self.out, final, best, self.best_metric, self.step, self.history, self.out / "log.jsonl", plot
        )
