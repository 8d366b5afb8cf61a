"""``lvseg.evaluate``: run a model over a benchmark dataset and score it with the benchmark's official protocol.

The model is run the way each benchmark's official script runs it (see :func:`default_runner`): the family's
own inference protocol and post-processing for video benchmarks, foreground probabilities for Ref-DAVIS17 (objects
of one annotator are merged by probability), every query of the annotated frame for A2D/JHMDB-Sentences (COCO mAP
ranks them all), and Locater's ``align_corners=True`` probability upsampling for A2D-S+.

The loop is resumable: each sample's prediction is written to ``<output_dir>/predictions/<key>.npz`` (atomically)
as soon as it is computed, and a run started again with the same ``output_dir`` reads those files instead of
running the model again. Scoring happens at the end, from the stored predictions, so an interrupted evaluation
gives exactly the numbers of an uninterrupted one.

Under torchrun (``torchrun --nproc_per_node=N -m lvseg evaluate ...``) the samples are sharded across the ranks
and rank 0 scores from the stored predictions, with the metrics of one process (:mod:`lvseg.metrics.distributed`).

The command line (``lvseg evaluate``) calls :func:`main_cli`.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DatasetError, InvalidInputError, LVSegError
from ..utils import atomic_path, atomic_write_text
from . import distributed
from .base import Evaluator
from .refdavis import RefDAVIS17Evaluator
from .referring import LAVTEvaluator, LocaterEvaluator, MTTREvaluator
from .rvos import ExpressionJF, SubmissionWriter

__all__ = [
    "SamplePrediction",
    "default_runner",
    "PROTOCOL_NAMES",
    "DATASET_PROTOCOLS",
    "evaluate",
    "make_evaluator",
    "benchmark_name",
    "infer_protocol",
    "build_dataset",
    "shapes_dataset",
    "SHAPES_DEFAULTS",
    "main_cli",
]

logger = logging.getLogger(__name__)

# protocol -> (benchmark name shown in tables, what it reproduces)
PROTOCOL_NAMES: dict[str, str] = {
    "ytvos": "Ref-YouTube-VOS",
    "mevis": "MeViS",
    "refdavis": "Ref-DAVIS17",
    "a2d": "A2D-Sentences",
    "jhmdb": "JHMDB-Sentences",
    "a2d+": "A2D-S+",
    "jhmdb-locater": "JHMDB-Sentences",  # Locater's layout and protocol
    "refcoco": "RefCOCO",
}

# dataset class name (lvseg.data) -> protocol
DATASET_PROTOCOLS: dict[str, str] = {
    "RefYouTubeVOS": "ytvos",
    "MeViS": "mevis",
    "RefDAVIS17": "refdavis",
    "A2DSentences": "a2d",
    "JHMDBSentences": "jhmdb",
    "A2DSPlus": "a2d+",
    "JHMDBSentencesLocater": "jhmdb-locater",
    "RefCOCO": "refcoco",
}

# names accepted on the command line for a dataset -> the lvseg.data class
_DATASET_ALIASES: dict[str, str] = {
    "ref-youtube-vos": "RefYouTubeVOS",
    "refyoutubevos": "RefYouTubeVOS",
    "ytvos": "RefYouTubeVOS",
    "mevis": "MeViS",
    "ref-davis17": "RefDAVIS17",
    "refdavis17": "RefDAVIS17",
    "refdavis": "RefDAVIS17",
    "davis": "RefDAVIS17",
    "a2d-sentences": "A2DSentences",
    "a2dsentences": "A2DSentences",
    "a2d": "A2DSentences",
    "jhmdb-sentences": "JHMDBSentences",
    "jhmdbsentences": "JHMDBSentences",
    "jhmdb": "JHMDBSentences",
    "a2d-s+": "A2DSPlus",
    "a2ds+": "A2DSPlus",
    "a2dsplus": "A2DSPlus",
    "a2d+": "A2DSPlus",
    "a2d-plus": "A2DSPlus",
    "jhmdb-locater": "JHMDBSentencesLocater",
    "jhmdb-sentences-locater": "JHMDBSentencesLocater",
    "refcoco": "RefCOCO",
    "refcoco+": "RefCOCO",
    "refcocog": "RefCOCO",
}

# what the default runner stores per protocol (recorded in evaluation.json so runs of different kinds never mix)
_DEFAULT_KINDS: dict[str, str] = {"refdavis": "probabilities", "a2d": "queries", "jhmdb": "queries"}

_ID_KEYS = ("video", "exp_id", "obj_id", "anno_id", "instance_id", "image_id", "ref_id", "sent_id")


def infer_protocol(dataset: Any) -> str:
    """The protocol of a dataset: its ``protocol`` attribute, else from its class (see :data:`DATASET_PROTOCOLS`)."""
    protocol = getattr(dataset, "protocol", None)
    if isinstance(protocol, str) and protocol in PROTOCOL_NAMES:
        return protocol
    for cls in type(dataset).__mro__:
        if cls.__name__ in DATASET_PROTOCOLS:
            return DATASET_PROTOCOLS[cls.__name__]
    raise InvalidInputError(
        f"cannot tell which benchmark protocol {type(dataset).__name__} follows; pass protocol= one of "
        f"{sorted(PROTOCOL_NAMES)}"
    )


def _davis_root(dataset: Any, davis_root: str | Path | None) -> Path:
    candidates = [Path(davis_root)] if davis_root is not None else []
    for attr in ("davis_root", "root"):
        value = getattr(dataset, attr, None)
        if value is not None:
            candidates += [Path(value), Path(value) / "DAVIS"]
    for path in candidates:
        if (path / "Annotations_unsupervised" / "480p").is_dir():
            return path
    raise DatasetError(
        "Ref-DAVIS17 is scored on the DAVIS 2017 unsupervised annotations, and no folder holding "
        "Annotations_unsupervised/480p was found (tried: " + ", ".join(str(p) for p in candidates) + "). "
        "Extract DAVIS-2017-Unsupervised-trainval-480p.zip and pass davis_root=<its DAVIS folder>."
    )


def benchmark_name(protocol: str, dataset: Any = None) -> str:
    """The benchmark's name as papers and the registry write it (RefCOCO+/RefCOCOg from the dataset's variant)."""
    if protocol == "refcoco":
        variant = str(getattr(dataset, "dataset", "refcoco"))
        return {"refcoco+": "RefCOCO+", "refcocog": "RefCOCOg"}.get(variant, "RefCOCO")
    return PROTOCOL_NAMES[protocol]


def make_evaluator(
    protocol: str,
    dataset: Any = None,
    *,
    output_dir: str | Path | None = None,
    davis_root: str | Path | None = None,
    has_ground_truth: bool = True,
) -> Evaluator:
    """The evaluator of a protocol (see :data:`PROTOCOL_NAMES`)."""
    if protocol not in PROTOCOL_NAMES:
        raise InvalidInputError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOL_NAMES)}")
    name = benchmark_name(protocol, dataset)
    if protocol == "refcoco" and getattr(dataset, "overlap", "lavt") != "lavt":
        logger.warning(
            "LAVT's protocol reads REFER masks with overlap='lavt' (pixels covered by two polygon parts "
            "are background); this dataset uses overlap=%r",
            getattr(dataset, "overlap", None),
        )
    if protocol in ("ytvos", "mevis"):
        if has_ground_truth:
            return ExpressionJF(name)
        if output_dir is None:
            raise InvalidInputError(
                f"{name} without ground truth is scored by its server: pass output_dir= to write the submission"
            )
        return SubmissionWriter(output_dir, name, top_folder="Annotations" if protocol == "ytvos" else None)
    if protocol == "refdavis":
        return RefDAVIS17Evaluator(_davis_root(dataset, davis_root))
    if protocol in ("a2d", "jhmdb"):
        return MTTREvaluator(name)
    if protocol in ("a2d+", "jhmdb-locater"):
        return LocaterEvaluator(name)
    return LAVTEvaluator(name)


def _sample_key(index: int, sample: Mapping[str, Any]) -> str:
    parts = [f"{index:07d}"]
    for key in _ID_KEYS:
        if key in sample and isinstance(sample[key], (str, int)):
            parts.append(str(sample[key]))
    key = "_".join(parts)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", key)[:150]


@dataclass
class SamplePrediction:
    """A model's prediction for one sample, as a runner returns it and as it is stored for resuming.

    ``kind`` says what ``values`` holds:

    * ``"masks"``: bool ``[T, H, W]`` masks of every frame, ``scores`` ``[T]``;
    * ``"probabilities"``: float ``[T, H, W]`` foreground probabilities, ``scores`` ``[T]`` (Ref-DAVIS17 merges the
      objects of one annotator by probability); evaluators that take masks get ``probabilities > 0.5``;
    * ``"queries"``: bool ``[Q, H, W]``: every candidate mask of the sample's annotated frame, ``scores`` ``[Q]``
      (A2D/JHMDB-Sentences: COCO mAP ranks all of them, the IoU metrics use the top-scoring one).
    """

    kind: str
    values: torch.Tensor
    scores: torch.Tensor

    KINDS = ("masks", "probabilities", "queries")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise InvalidInputError(f"unknown prediction kind {self.kind!r}; use one of {self.KINDS}")
        values = torch.as_tensor(self.values).detach().cpu()
        self.values = values.float() if self.kind == "probabilities" else values.bool()
        self.scores = torch.as_tensor(self.scores).detach().cpu().float().reshape(-1)
        if self.values.dim() != 3 or self.scores.numel() != self.values.shape[0]:
            raise InvalidInputError(
                f"a {self.kind!r} prediction needs values [N, H, W] and N scores, got "
                f"{tuple(self.values.shape)} and {self.scores.numel()} scores"
            )

    @classmethod
    def from_runner(cls, output: Any) -> SamplePrediction:
        """A runner's output: a :class:`SamplePrediction`, or ``(masks, scores)`` (float masks = probabilities)."""
        if isinstance(output, SamplePrediction):
            return output
        if not isinstance(output, (tuple, list)) or len(output) != 2:
            raise InvalidInputError(
                "a runner must return a SamplePrediction or a (masks [T, H, W], scores [T]) "
                f"pair, got {type(output).__name__}"
            )
        values = torch.as_tensor(output[0])
        return cls("probabilities" if values.is_floating_point() else "masks", values, output[1])


# Stored formats (np.savez_compressed): masks and queries as packed bits; probabilities as the packed bits of
# p >= 0.5 plus the float32 values of those pixels only (lossless for every protocol: Ref-DAVIS17 sets p < 0.5 to 0
# and the others threshold at 0.5), which keeps a 480p expression to a few MB.
def _save_prediction(path: Path, pred: SamplePrediction) -> None:
    arrays: dict[str, Any] = {
        "kind": np.array(pred.kind),
        "shape": np.array(pred.values.shape, np.int64),
        "scores": pred.scores.numpy().astype(np.float32),
    }
    if pred.kind == "probabilities":
        p = pred.values.numpy().astype(np.float32, copy=False)
        fg = p >= 0.5
        arrays.update(bits=np.packbits(fg.reshape(-1)), values=p[fg])
    else:
        arrays["bits"] = np.packbits(pred.values.numpy().reshape(-1))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def _load_prediction(path: Path) -> SamplePrediction:
    with np.load(path) as data:
        kind = str(data["kind"]) if "kind" in data.files else "masks"  # files written before kinds existed hold masks
        shape = tuple(int(s) for s in data["shape"])
        bits = np.unpackbits(data["bits"], count=int(np.prod(shape))).reshape(shape).astype(bool)
        if kind == "probabilities":
            values = np.zeros(shape, np.float32)
            values[bits] = data["values"]
            return SamplePrediction(kind, torch.from_numpy(values), torch.from_numpy(data["scores"]))
        return SamplePrediction(kind, torch.from_numpy(bits), torch.from_numpy(data["scores"]))


def _add_prediction(evaluator: Evaluator, sample: Mapping[str, Any], pred: SamplePrediction) -> None:
    """Hand a prediction to an evaluator in the form its protocol scores."""
    if pred.kind == "queries":
        add_queries = getattr(evaluator, "add_sample_queries", None)
        if add_queries is None:
            raise InvalidInputError(
                f"{type(evaluator).__name__} scores one mask per frame, not every query of an "
                "annotated frame; return masks [T, H, W] from the runner"
            )
        add_queries(sample, pred.values, pred.scores)
    elif pred.kind == "probabilities" and not isinstance(evaluator, RefDAVIS17Evaluator):
        evaluator.add_sample(sample, pred.values > 0.5, pred.scores)
    else:
        evaluator.add_sample(sample, pred.values, pred.scores)


def _frames_tensor(sample: Mapping[str, Any]) -> Any:
    frames = sample["frames"]
    return torch.from_numpy(frames) if isinstance(frames, np.ndarray) else frames


def _sample_text(sample: Mapping[str, Any]) -> str:
    text = sample["text"]
    if not isinstance(text, str):
        raise InvalidInputError(f"sample['text'] must be one expression (str), got {type(text).__name__}")
    return text


def _annotated_indices(sample: Mapping[str, Any], n_frames: int) -> list[int]:
    """Clip positions of the sample's annotated frames (``annotated`` bool [T], else all), as the evaluators read
    them."""
    if sample.get("annotated") is None:
        return list(range(n_frames))
    flags = np.asarray(torch.as_tensor(sample["annotated"]).cpu()).astype(bool).reshape(-1)
    if flags.size != n_frames:
        raise InvalidInputError(f"sample['annotated'] has {flags.size} entries for {n_frames} frames")
    return [int(t) for t in np.flatnonzero(flags)]


def _annotated_frame_runner(model: Any) -> Callable[[Mapping[str, Any]], SamplePrediction]:
    """MTTR's A2D/JHMDB protocol for any model: every candidate of the annotated frame, post-processed as MTTR's
    ``A2DSentencesPostProcess`` (bilinear to the input size, threshold, crop, nearest to the frame size).

    Samples with several annotated frames get the candidates of each (the whole clip as context), in order."""
    from ..predictor import upsample_mask_logits
    from ..video import preprocess_frames

    pre = model.preprocessing

    @torch.inference_mode()
    def run(sample: Mapping[str, Any]) -> SamplePrediction:
        frames = np.asarray(torch.as_tensor(_frames_tensor(sample)).cpu())
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise InvalidInputError(f"sample['frames'] must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
        text = _sample_text(sample)
        height, width = frames.shape[1:3]
        size = pre.output_size(height, width)
        x = preprocess_frames(
            frames,
            size,
            pre.mean,
            pre.std,
            interpolation=pre.interpolation,
            size_divisor=pre.size_divisor,
            device=model.device,
            dtype=model.dtype,
        )
        model.eval()
        all_masks, all_scores = [], []
        for index in _annotated_indices(sample, frames.shape[0]):  # A2D/JHMDB samples: one, the clip's centre
            logits, scores = model.segment_annotated_frame(x[None], [text], index)  # [1, Q, h, w], [1, Q]
            masks, _ = upsample_mask_logits(logits[0], tuple(x.shape[-2:]), size, (height, width), "threshold-nearest")
            all_masks.append(masks.cpu())
            all_scores.append(scores[0].float().cpu())
        if not all_masks:
            return SamplePrediction("queries", torch.zeros((0, height, width), dtype=torch.bool), torch.zeros(0))
        return SamplePrediction("queries", torch.cat(all_masks), torch.cat(all_scores))

    return run


def _default_predictions(model: Any, protocol: str) -> str:
    """What the default runner stores, for evaluation.json: the kind, and the official pipeline when one is used (so
    predictions of the fast path and of the evaluation mode never mix on resume)."""
    from .pipeline import find_pipeline

    kind = _DEFAULT_KINDS.get(protocol, "masks")
    pipeline = find_pipeline(model, protocol)
    return kind if pipeline is None else f"{kind} ({pipeline.source})"


def default_runner(model: Any, protocol: str) -> Callable[[Mapping[str, Any]], SamplePrediction]:
    """How :func:`evaluate` runs ``model`` on a sample of a ``protocol`` benchmark, as the official scripts do.

    Where :mod:`lvseg.metrics.pipeline` implements the family's official pipeline for the benchmark (decoding,
    PIL resize, contiguous inputs, clip composition, post-processing), that is the runner; otherwise:

    * ``a2d``/``jhmdb``: :meth:`~lvseg.models.base.RVOSModel.segment_annotated_frame` on the sample's clip: every
      candidate mask of the annotated frame with its score, post-processed with ``"threshold-nearest"``.
    * ``a2d+``, ``jhmdb-locater``: :class:`~lvseg.Predictor` with Locater's ``"probability-aligned"`` upsampling
      (sigmoid, then bilinear with ``align_corners=True``, then ``> 0.5``).
    * ``refdavis``: the Predictor with ``return_probabilities=True``, the family's DAVIS protocol and post-processing.
    * the others: the Predictor with the family's protocol for the benchmark and its post-processing.

    When the model names an inference protocol for the benchmark (:meth:`~lvseg.models.base.RVOSModel.
    benchmark_protocol`), the whole video goes to ``model.segment(..., protocol=...)`` at once (``window=0``).
    """
    from ..predictor import Predictor
    from .pipeline import official_runner

    official = official_runner(model, protocol)  # evaluation mode: the family's official pipeline (pipeline.py)
    if official is not None:
        return official
    if protocol in ("a2d", "jhmdb"):
        return _annotated_frame_runner(model)
    options: dict[str, Any] = {"progress": False}
    family_protocol = model.benchmark_protocol(protocol) if hasattr(model, "benchmark_protocol") else None
    if family_protocol is not None:
        options.update(window=0, protocol=family_protocol)
    if protocol in ("a2d+", "jhmdb-locater"):
        options["upsampling"] = "probability-aligned"
    kind = "probabilities" if protocol == "refdavis" else "masks"
    predictor = Predictor(model, return_probabilities=kind == "probabilities", **options)

    def run(sample: Mapping[str, Any]) -> SamplePrediction:
        result = predictor(_frames_tensor(sample), _sample_text(sample))
        values = result.probabilities if kind == "probabilities" else result.masks
        assert values is not None  # the Predictor was built with return_probabilities for that kind
        return SamplePrediction(kind, values, result.scores)

    return run


def evaluate(
    model: Any,
    dataset: Any,
    *,
    protocol: str | None = None,
    output_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    davis_root: str | Path | None = None,
    max_samples: int | None = None,
    runner: Callable[[Mapping[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``dataset`` with the benchmark's official protocol.

    Args:
        model: an :class:`~lvseg.models.base.RVOSModel` or a name for :func:`lvseg.load`.
        dataset: a dataset of :mod:`lvseg.data` (or anything indexable whose samples are dicts with ``frames``
            ``uint8 [T, H, W, 3]``, ``text``, ground-truth ``masks`` ``bool [T, H, W]`` and the ids its protocol
            needs, see ``docs/metrics.md``).
        protocol: ``"ytvos"``, ``"mevis"``, ``"refdavis"``, ``"a2d"``, ``"jhmdb"``, ``"a2d+"``,
            ``"jhmdb-locater"`` or ``"refcoco"``; inferred from the dataset's class when omitted.
        output_dir: where predictions (and the results / a submission) are written; without it nothing is stored
            and nothing can be resumed. Required on several processes (under torchrun the samples are sharded
            across the ranks, see :mod:`lvseg.metrics.distributed`): a folder every rank can write.
        resume: reuse the predictions already in ``output_dir`` (an interrupted run continues where it stopped).
        progress: show a tqdm bar.
        davis_root: Ref-DAVIS17 only: the DAVIS folder with ``Annotations_unsupervised/480p``.
        max_samples: evaluate only the first samples (quick checks; the numbers are then not the benchmark's).
        runner: how to get a sample's prediction: a callable returning a :class:`SamplePrediction` or
            ``(masks bool [T, H, W], scores float [T])`` (float masks count as probabilities); default
            :func:`default_runner` (the benchmark's official way of running the model).

    Returns:
        the benchmark's metrics in percent (e.g. ``{"J&F": ..., "J": ..., "F": ...}``), plus ``"benchmark"``,
        ``"protocol"``, ``"samples"``, and ``"submission"`` (a zip path) for splits scored by a server.
    """
    if isinstance(model, str):
        from ..hub import load

        model = load(model)
    protocol = protocol or infer_protocol(dataset)
    n_total = len(dataset)
    n = n_total if max_samples is None else min(n_total, int(max_samples))
    if n == 0:
        raise InvalidInputError("the dataset is empty: nothing to evaluate")

    out: Path | None = Path(output_dir) if output_dir is not None else None
    pred_dir = out / "predictions" if out is not None else None
    if out is not None:
        manifest = {
            "protocol": protocol,
            "dataset": type(dataset).__name__,
            "samples": n_total,
            "split": str(getattr(dataset, "split", "")),
            "predictions": "custom runner" if runner is not None else _default_predictions(model, protocol),
        }
        manifest_path = out / "evaluation.json"
        if manifest_path.is_file() and resume:
            previous = json.loads(manifest_path.read_text(encoding="utf-8"))
            if previous != manifest:
                raise InvalidInputError(
                    f"'{out}' holds predictions of another evaluation ({previous}); use a new output_dir or "
                    "resume=False to start over"
                )
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")

    has_gt = getattr(dataset, "has_ground_truth", None)
    if has_gt is None:  # no attribute: look at the first sample
        first = dataset[0]
        has_gt = isinstance(first, Mapping) and first.get("masks") is not None
    evaluator = make_evaluator(protocol, dataset, output_dir=out, davis_root=davis_root, has_ground_truth=has_gt)
    if hasattr(model, "annotated_clip_frames"):  # an RVOSModel; a plain runner's model may have neither
        window = int(model.annotated_clip_frames() or 0)
    else:
        window = int(getattr(getattr(model, "preprocessing", None), "window", 0) or 0)
    clip = getattr(dataset, "num_frames", None)
    if protocol in ("a2d", "jhmdb") and runner is None and window and isinstance(clip, int) and clip != window:
        logger.warning(
            "%s clips have %d frames but %s was evaluated officially on %d-frame windows: build the "
            "dataset with num_frames=%d to reproduce its numbers",
            benchmark_name(protocol),
            clip,
            type(model).__name__,
            window,
            window,
        )
    run = runner or default_runner(model, protocol)
    info = distributed.join_process_group(getattr(model, "device", None) or "cpu")
    if pred_dir is not None and not info.distributed:  # (several processes: rank 0 does it before any rank writes)
        distributed.remove_partial_files(pred_dir)  # left by a process killed while writing
    if info.distributed:  # under torchrun: this rank's shard, then rank 0 scores from the stored predictions
        if pred_dir is None:
            raise InvalidInputError(
                "an evaluation on several processes writes each rank's predictions to a shared folder: pass "
                "output_dir= (lvseg evaluate: -o DIR), on a file system every node can reach"
            )
        shard_dir = pred_dir

        def predict(index: int) -> None:
            sample = dataset[index]
            if not isinstance(sample, Mapping):
                raise InvalidInputError(f"dataset[{index}] is a {type(sample).__name__}, not a dict sample")
            _save_prediction(shard_dir / f"{_sample_key(index, sample)}.npz", SamplePrediction.from_runner(run(sample)))

        mine = distributed.plan_shard(pred_dir, n, resume, info)
        distributed.run_shard(mine, predict, info, progress=progress, desc=f"predicting {benchmark_name(protocol)}")
        if not info.is_main:
            return distributed.share_result(None, info)
        resume, progress = True, False  # every prediction is stored now: rank 0 reads them back, in order
    reused = 0
    bar = tqdm(range(n), desc=f"evaluating {benchmark_name(protocol, dataset)}", disable=not progress, unit="sample")
    for index in bar:
        sample = dataset[index]
        if not isinstance(sample, Mapping):
            raise InvalidInputError(f"dataset[{index}] is a {type(sample).__name__}, not a dict sample")
        path = pred_dir / f"{_sample_key(index, sample)}.npz" if pred_dir is not None else None
        if path is not None and resume and path.is_file():
            pred = _load_prediction(path)
            reused += 1
        else:
            pred = SamplePrediction.from_runner(run(sample))
            if path is not None:
                _save_prediction(path, pred)
        _add_prediction(evaluator, sample, pred)
    if reused:
        logger.info("reused %d stored prediction(s) from %s", reused, pred_dir)

    result: dict[str, Any] = {"benchmark": benchmark_name(protocol, dataset), "protocol": protocol, "samples": n}
    if isinstance(evaluator, SubmissionWriter):
        result["submission"] = str(evaluator.finalize())
    else:
        result.update(evaluator.summary())
    logger.info("%s", evaluator.format_table())
    if out is not None:
        atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    if info.distributed:
        return distributed.share_result(result, info)
    return result


def _dataset_class(name: str) -> str | None:
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    class_name = _DATASET_ALIASES.get(key, _DATASET_ALIASES.get(key.replace("-", "")))
    if class_name is None and name in DATASET_PROTOCOLS:
        class_name = name
    return class_name


# how `--dataset shapes` generates a missing split: the held-out test recipe of the bundled model (docs/train.md)
SHAPES_DEFAULTS: dict[str, int] = {"num_videos": 100, "seed": 1}


def shapes_dataset(root: str | Path, split: str = "valid", **kwargs: Any) -> Any:
    """A Shapes split read as Ref-YouTube-VOS (scored with its J&F), generated under ``root`` first if missing.

    ``num_videos``, ``seed``, ``frames`` and ``size`` set the generation (default: 100 videos of seed 1, 8 frames of
    96x96, the held-out test set of ``referformer-tiny.shapes``); given for a split that exists, they must match its
    record. Other keywords go to :class:`~lvseg.data.RefYouTubeVOS`. Under torchrun, rank 0 generates and the
    others wait.
    """
    from ..data import RefYouTubeVOS
    from ..data.shapes import generate
    from ..train.distributed import barrier
    from ..train.presets import SHAPES_FRAMES, SHAPES_SIZE

    if split not in ("train", "valid", "test"):
        raise InvalidInputError(f"Shapes split must be 'train', 'valid' or 'test', got {split!r}")
    asked: dict[str, Any] = {k: kwargs.pop(k) for k in ("num_videos", "seed", "frames", "size") if k in kwargs}
    params: dict[str, Any] = {**SHAPES_DEFAULTS, "frames": SHAPES_FRAMES, "size": SHAPES_SIZE, **asked}
    root = Path(root)
    other = {"valid": "test", "test": "valid"}.get(split)
    if other and (root / "meta_expressions" / other / "meta_expressions.json").is_file():
        # Ref-YouTube-VOS drops the test videos from valid by name, and Shapes names videos video00000... per split
        raise DatasetError(
            f"'{root}' already holds a Shapes {other} split, whose videos have the same names as those of {split}: "
            f"Ref-YouTube-VOS would drop them from valid. Use another --root for the {split} split"
        )
    record = root / "shapes_info" / f"{split}.json"
    if not (root / "meta_expressions" / split / "meta_expressions.json").is_file():
        if distributed.join_process_group(None).is_main:
            logger.info("generating Shapes %s under %s: %s", split, root, params)
            generate(root, split, overwrite=True, progress=True, **params)
        barrier()
    elif asked and record.is_file():
        info = json.loads(record.read_text(encoding="utf-8"))
        have = {"num_videos": info.get("num_videos"), "seed": info.get("seed"), "frames": info.get("frames")}
        have["size"] = info.get("height") if info.get("height") == info.get("width") else None
        differ = {k: (v, have[k]) for k, v in asked.items() if have.get(k) != v}
        if differ:
            raise DatasetError(
                f"the Shapes {split} split under '{root}' was generated with other parameters "
                + ", ".join(f"{k}={b} (asked: {a})" for k, (a, b) in differ.items())
                + "; use another --root to generate the one asked for, or drop those --dataset-arg values"
            )
    return RefYouTubeVOS(root, split, **kwargs)


def build_dataset(name: str, root: str | Path, split: str | None = None, **kwargs: Any) -> Any:
    """A :mod:`lvseg.data` dataset from a benchmark name (``mevis``, ``ref-davis17``, ``a2d-sentences``, ...), or
    ``shapes`` (:func:`shapes_dataset`: generated where missing, scored as Ref-YouTube-VOS)."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    if key == "shapes":
        return shapes_dataset(root, split or "valid", **kwargs)
    class_name = _dataset_class(name)
    if class_name is None:
        raise InvalidInputError(f"unknown dataset {name!r}; choose one of {sorted(set(_DATASET_ALIASES))}")
    import lvseg.data as data

    cls = getattr(data, class_name, None)
    if cls is None:
        raise InvalidInputError(f"lvseg.data has no {class_name} reader in this version of lvseg")
    if key in ("refcoco", "refcoco+", "refcocog"):
        kwargs.setdefault("dataset", key)
        kwargs.setdefault("overlap", "lavt")  # LAVT's reading of REFER masks, part of its protocol
    if split is not None:
        kwargs["split"] = split
    return cls(root, **kwargs)


def _parse_kv(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise InvalidInputError(f"--dataset-arg takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main_cli(argv: Sequence[str] | None = None) -> int:
    """``lvseg evaluate MODEL --dataset NAME --root DIR [--split S] [-o OUT]``: print the benchmark's table.

    The model may also be given as ``-m MODEL``.
    """
    parser = argparse.ArgumentParser(
        prog="lvseg evaluate",
        description="Evaluate a model on a benchmark with its official protocol (resumable when --output is given).",
    )
    parser.add_argument("model_name", nargs="?", metavar="MODEL", help="registry name, hf-hub:org/repo or local folder")
    parser.add_argument("-m", "--model", default=None, help="the same as MODEL")
    parser.add_argument(
        "--dataset",
        required=True,
        help="mevis, ref-youtube-vos, ref-davis17, a2d-sentences, jhmdb-sentences, a2d-s+ (a2d-plus), "
        "jhmdb-locater (Locater's JHMDB-S layout), refcoco, refcoco+, refcocog, or shapes (generated under --root "
        "when missing: --dataset-arg num_videos=N / seed=S)",
    )
    parser.add_argument("--root", required=True, help="the dataset's root folder (official layout)")
    parser.add_argument("--split", default=None, help="dataset split (default: the dataset's default)")
    parser.add_argument("--subset", dest="split", help="the same as --split (A2D-S+: NORM, MUL, SPAT or TEMP)")
    parser.add_argument("-o", "--output", default=None, help="folder for predictions, results and submissions")
    parser.add_argument("--no-resume", action="store_true", help="ignore predictions already in --output")
    parser.add_argument("--davis-root", default=None, help="Ref-DAVIS17: folder with Annotations_unsupervised")
    parser.add_argument("--protocol", default=None, choices=sorted(PROTOCOL_NAMES))
    parser.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu")
    parser.add_argument("--max-samples", type=int, default=None, help="only the first N samples (smoke test)")
    parser.add_argument(
        "--dataset-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword for the dataset constructor (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    argv = list(argv) if argv is not None else sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    args = parser.parse_args(argv)
    args.model = args.model or args.model_name
    if not args.model:
        parser.error("give the model: lvseg evaluate MODEL --dataset NAME --root DIR")
    try:
        from ..hub import load

        # under torchrun: join the process group first (CUDA then means cuda:LOCAL_RANK) and shard the samples
        info = distributed.join_process_group(args.device)
        load_kwargs: dict[str, Any] = {"device": str(info.device)} if args.device or info.distributed else {}
        model = load(args.model, **load_kwargs)
        dataset_kwargs = _parse_kv(args.dataset_arg)
        # the official clip around the annotated frame (MTTR: its window; ReferFormer: the dataset's default)
        window = int(model.annotated_clip_frames() or 0)
        if _dataset_class(args.dataset) in ("A2DSentences", "JHMDBSentences") and window:
            dataset_kwargs.setdefault("num_frames", window)  # the official clip: the model's window
        dataset = build_dataset(args.dataset, args.root, args.split, **dataset_kwargs)
        result = evaluate(
            model,
            dataset,
            protocol=args.protocol,
            output_dir=args.output,
            resume=not args.no_resume,
            davis_root=args.davis_root,
            max_samples=args.max_samples,
        )
    except LVSegError as exc:
        print(f"lvseg evaluate: error: {exc}", file=sys.stderr)
        return 1
    if not info.is_main:  # every rank holds the result; one prints it
        return 0
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_result(result))
    return 0


def format_result(result: Mapping[str, Any]) -> str:
    """The dict returned by :func:`evaluate` as a small table (two decimals, as the papers print)."""
    from .base import format_table

    metrics = {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and k != "samples"}
    lines = [f"{result.get('benchmark', '')}: {result.get('samples', '?')} sample(s)"]
    if metrics:
        lines.append(format_table(metrics, digits=2))
    if "submission" in result:
        lines.append(f"submission written to {result['submission']}: upload it to the benchmark server")
    return "\n".join(lines)
