"""``lvseg.train(...)`` and ``lvseg train ...``: one entry point from a laptop CPU to multi-node torchrun."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset

from ..errors import ConfigError, LVSegError
from ..models.base import ModelConfig, RVOSModel
from ..utils import atomic_write_text
from .distributed import init_distributed
from .engine import TrainConfig, Trainer, TrainResult
from .presets import PRESETS, get_preset

__all__ = ["train", "main_cli", "with_config_changes"]

logger = logging.getLogger(__name__)


def _build_model(model: Any, tokenizer: Any = None) -> RVOSModel:
    if isinstance(model, RVOSModel):
        if tokenizer is not None:
            model.tokenizer = tokenizer
        return model
    if isinstance(model, ModelConfig):
        from ..models import get_model_class

        cls = get_model_class(model.architecture)
        built = cls(model)
        if tokenizer is not None:
            built.tokenizer = tokenizer
        return built
    if callable(model):
        return _build_model(model(), tokenizer)
    if isinstance(model, (str, Path)):
        from ..hub import load

        loaded = load(str(model), device="cpu")
        if tokenizer is not None:
            loaded.tokenizer = tokenizer
        return loaded
    raise ConfigError(
        f"model must be a registry name, 'hf-hub:org/repo', a local folder, an RVOSModel or a "
        f"ModelConfig, got {type(model).__name__}"
    )


def with_config_changes(model: RVOSModel, changes: dict[str, Any]) -> RVOSModel:
    """``model`` rebuilt with ``changes`` applied to its config, keeping all of its weights.

    For growing a trained model (e.g. ``{"mask_refine": 16}`` adds ReferFormer's stride-1 mask head): the
    parameters the changes add start from their initialisation (listed in the log). A change that would drop
    weights or change a shape (a smaller ``hidden_dim``) is refused: start such a model from a config instead.
    """
    if not changes:
        return model
    from ..models import get_model_class

    fields = {f.name for f in dataclasses.fields(model.config)}
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise ConfigError(
            f"model_overrides {unknown} are not fields of {type(model.config).__name__}; valid: "
            f"{', '.join(sorted(fields))}"
        )
    try:
        config = dataclasses.replace(model.config, **changes)
    except LVSegError as exc:
        raise ConfigError(f"model_overrides {changes} make an invalid config: {exc}") from exc
    grown = get_model_class(config.architecture)(config)
    grown.tokenizer = getattr(model, "tokenizer", None)
    state = model.state_dict()
    try:
        missing, unexpected = grown.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ConfigError(
            f"model_overrides {changes} change the shape of trained weights, which cannot be kept: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    if unexpected:
        raise ConfigError(
            f"model_overrides {changes} remove trained weights ({', '.join(unexpected[:5])}"
            f"{', ...' if len(unexpected) > 5 else ''}); start from a config instead"
        )
    if missing:
        logger.info(
            "model_overrides %s: %d new parameter tensors start from their initialisation (%s%s)",
            changes,
            len(missing),
            ", ".join(missing[:4]),
            ", ..." if len(missing) > 4 else "",
        )
    return grown


def _as_dataset(data: Any, what: str) -> Dataset | None:
    if data is None:
        return None
    if isinstance(data, (list, tuple)):
        if not data:
            raise ConfigError(f"{what} is an empty list: give one dataset or a list of datasets")
        parts = [_as_dataset(d, what) for d in data]
        return ConcatDataset(parts)  # type: ignore[arg-type]
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise ConfigError(
            f"{what} must be a dataset (with __getitem__ and __len__) or a list of them, got {type(data).__name__}"
        )
    if len(data) == 0:
        raise ConfigError(f"{what} is empty (0 samples): check the data root and split")
    return data


def _run_prepare(chosen: Any, model: Any, data_root: str | Path | None, config: TrainConfig, info: Any) -> None:
    """The preset's stage before training, on a fresh run only (a resumed run's checkpoint holds its result).

    Every rank runs it with the same seed; DistributedDataParallel then broadcasts rank 0's weights anyway."""
    out = Path(config.output_dir)
    ckpts = out / "checkpoints"
    if ckpts.is_dir() and any(ckpts.iterdir()):
        logger.info("%s has checkpoints: skipping the preset's preparation stage", out)
        return
    if config.prepare_steps == 0:
        logger.info("prepare_steps=0: skipping the preset's preparation stage")
        return
    if data_root is None:
        raise ConfigError(
            f"preset {chosen.name!r} runs a preparation stage on its data before training: pass "
            f"data_root (--data-root), or prepare_steps=0 to skip it"
        )
    model.to(info.device)
    record = chosen.prepare(model, Path(data_root), config.seed, config.progress and info.is_main, config.prepare_steps)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "prepare.json", json.dumps({"preset": chosen.name, **record}, indent=2) + "\n")


def train(
    model: Any = None,
    train_data: Any = None,
    val_data: Any = None,
    output_dir: str | Path = "runs/lvseg",
    *,
    preset: str | None = None,
    data_root: str | Path | None = None,
    tokenizer: Any = None,
    model_overrides: dict[str, Any] | None = None,
    **options: Any,
) -> TrainResult:
    """Train or fine-tune a model; runs data-parallel when started under ``torchrun``.

    Args:
        model: a registry name (starts from its weights), ``"hf-hub:org/repo"``, a local Hub folder, an
            :class:`~lvseg.models.base.RVOSModel`, a model config (random init; pass ``tokenizer``), or None to
            use the preset's model.
        train_data: a dataset (e.g. ``lvseg.data.RefYouTubeVOS(root, "train", sampling=...)``) or a list of
            datasets trained on jointly; None builds the preset's datasets from ``data_root``.
        val_data: optional dataset with ground truth, scored with Ref-YouTube-VOS-style J&F every ``eval_every``
            steps (default: at the end of every epoch); the best model is kept in ``<output_dir>/best``.
        output_dir: where checkpoints, ``log.jsonl``, ``curves.png``, ``final/`` and ``best/`` go.
        preset: a recipe from :data:`lvseg.train.presets.PRESETS` (e.g. ``"referformer-r50-ytvos"``).
        model_overrides: config fields to change on the starting model, keeping its weights (see
            :func:`with_config_changes`; added to the preset's own, e.g. ``{"mask_refine": 16}``). Applied on
            resume too, so the run's checkpoints fit the grown model.
        options: any :class:`~lvseg.train.engine.TrainConfig` field (``epochs``, ``batch_size``, ``lr``,
            ``resume``, ``precision``, ``grad_accum``, ``gradient_checkpointing``, ``max_steps``, ...).

    Returns:
        a :class:`~lvseg.train.engine.TrainResult`; ``result.best_checkpoint`` / ``final_checkpoint`` are
        Hub-format folders that ``lvseg.load`` reads.
    """
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ConfigError(f"unknown training option(s) {unknown}; valid options: {', '.join(sorted(fields))}")
    values: dict[str, Any] = {}
    chosen = get_preset(preset) if preset is not None else None
    if chosen is not None:
        values.update(chosen.train)
        if model is None:
            model = chosen.model
        if train_data is None:
            if chosen.data is None or data_root is None:
                raise ConfigError(f"preset {chosen.name!r} needs data_root (or pass train_data)")
            train_data, default_val = chosen.data(data_root)
            val_data = default_val if val_data is None else val_data
    if model is None:
        raise ConfigError("no model given: pass model=<registry name | folder | RVOSModel> or a preset")
    if train_data is None:
        raise ConfigError("no training data given: pass train_data=<dataset> (or a preset with data_root)")
    values.update(options)
    values["output_dir"] = str(output_dir)
    config = TrainConfig(**values)
    train_ds = _as_dataset(train_data, "train_data")
    val_ds = _as_dataset(val_data, "val_data")
    info = init_distributed(config.device)
    changes = {**(chosen.model_overrides if chosen is not None else {}), **(model_overrides or {})}
    # random initialisation (a model built from a config, the parameters model_overrides add) is seeded by
    # config.seed, without touching the caller's random state
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        built = with_config_changes(_build_model(model, tokenizer), changes)
    if chosen is not None and built.config.architecture != chosen.family:
        raise ConfigError(
            f"preset {chosen.name!r} trains the {chosen.family!r} family but the model is a "
            f"{built.config.architecture!r}: pick a {chosen.family} model or another preset"
        )
    if getattr(built, "tokenizer", None) is None:
        raise ConfigError("the model has no tokenizer: load it with lvseg.load(...) or pass tokenizer=...")
    text_config = getattr(built.config, "text_encoder", None)
    if isinstance(text_config, dict):  # an empty or foreign tokenizer would train a model that ignores its text
        from ..models.layers.text import check_tokenizer

        check_tokenizer(
            built.tokenizer,
            text_config,
            source="tokenizer= (or the model's own)",
            fix="Pass tokenizer= the tokenizer the text encoder was built for (RoBERTa models: "
            "roberta-base's, transformers.AutoTokenizer.from_pretrained(DIR) on a folder with its "
            "files), or start from lvseg.load(...), whose model brings its own.",
        )
    if chosen is not None and chosen.prepare is not None and model is chosen.model:
        _run_prepare(chosen, built, data_root, config, info)
    trainer = Trainer(built, train_ds, config, val_ds, info)  # type: ignore[arg-type]
    return trainer.fit()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lvseg train", description="Train or fine-tune a model (torchrun for DDP).")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a training recipe")
    p.add_argument("--model", "-m", help="registry name, hf-hub:org/repo or local folder (default: the preset's)")
    p.add_argument("--data-root", help="dataset root for the preset's datasets")
    p.add_argument("--output-dir", "-o", required=True, help="run folder (checkpoints, logs, best/, final/)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last checkpoint")
    for name, kind in (
        ("epochs", int),
        ("max-steps", int),
        ("batch-size", int),
        ("lr", float),
        ("lr-backbone", float),
        ("lr-text-encoder", float),
        ("weight-decay", float),
        ("clip-max-norm", float),
        ("grad-accum", int),
        ("seed", int),
        ("num-workers", int),
        ("eval-every", int),
        ("eval-max-samples", int),
        ("checkpoint-every", int),
        ("keep-last", int),
        ("log-every", int),
        ("warmup-steps", int),
        ("prepare-steps", int),
    ):
        p.add_argument(f"--{name}", type=kind, default=None)
    p.add_argument(
        "--lr-drops",
        type=int,
        nargs="*",
        default=None,
        help="epochs at which the LR is multiplied by lr_gamma (0.1 unless the preset says otherwise)",
    )
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--gradient-checkpointing", action="store_true", default=None)
    p.add_argument("--freeze-text-encoder", action="store_true", default=None)
    p.add_argument("--no-progress", action="store_true")
    return p


def main_cli(argv: Sequence[str] | None = None) -> int:
    """``lvseg train ...``: parse ``argv`` and run :func:`train`; returns the exit status."""
    args = _parser().parse_args(list(argv) if argv is not None else None)
    if args.preset is None and args.model is None:
        raise ConfigError("give --preset NAME (see `lvseg train --help`) or --model with a preset's data")
    if args.preset is None:
        raise ConfigError(
            "--model alone does not say which data to train on: add --preset (e.g. "
            "referformer-r50-ytvos) and --data-root"
        )
    options: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key in ("preset", "model", "data_root", "output_dir", "no_progress") or value is None:
            continue
        options[key] = tuple(value) if key == "lr_drops" else value
    if args.no_progress:
        options["progress"] = False
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        result = train(args.model, preset=args.preset, data_root=args.data_root, output_dir=args.output_dir, **options)
    except LVSegError:
        raise
    logger.info(
        "done: %d steps; final model %s; best %s (J&F %s)",
        result.steps,
        result.final_checkpoint,
        result.best_checkpoint,
        result.best_metric,
    )
    return 0
