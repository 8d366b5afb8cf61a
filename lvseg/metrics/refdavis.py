"""Ref-DAVIS17: the DAVIS 2017 *unsupervised* protocol run once per annotator, as ReferFormer reports it.

Sources: ReferFormer ``inference_davis.py`` / ``scripts/dist_test_davis.sh`` (@06fc218) for how predictions become
indexed PNGs, davisvideochallenge/davis2017-evaluation (@ac7c43f, ``task='unsupervised'``) for the scoring, and
ReferDINO ``eval/eval_davis.py`` / SAMWISE for the mean over the four annotators. Exactly:

* **Predictions** (per annotator ``anno_k``, per video): the masks of the video's objects (object ``i`` = the
  expression ``i * 4 + k``) are turned into one indexed PNG per frame by ``argmax([0.1, p_1, ..., p_n])`` with
  every probability below 0.5 set to 0; label ``i + 1`` is object ``i``. With binary masks (``p`` in {0, 1}), a pixel
  claimed by two objects goes to the lower index; with probabilities, to the more confident one, as officially.
* **Ground truth**: ``Annotations_unsupervised/480p/<video>/*.png``; value 255 is void (excluded from J and F);
  the objects are ``1..max(label of the first frame)`` (an object that first appears later is not scored).
* **Scoring a video**: proposals are ``1..max(label over all predicted frames)``, zero-padded to the number of
  objects, at most 20; J and F for every (proposal, object) pair over all frames; proposals are matched to objects
  by ``linear_sum_assignment`` on ``-(mean_t J + mean_t F) / 2``; each matched pair gives ``db_statistics``
  (mean / recall / decay) of J and F.
* **Table** (per annotator): J-Mean, F-Mean, ... = mean over all (video, object) pairs; J&F = (J-Mean + F-Mean) / 2.
  **Reported**: the mean of the four annotators' tables.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DatasetError, InvalidInputError
from .base import Evaluator, format_table
from .davis import db_statistics, region_and_boundary

__all__ = [
    "DAVIS_MEASURES",
    "DAVISUnsupervised",
    "RefDAVIS17Evaluator",
    "read_indexed_png",
    "objects_to_labels",
    "evaluate_davis_unsupervised_folder",
    "evaluate_ref_davis_folder",
]

logger = logging.getLogger(__name__)

DAVIS_MEASURES: tuple[str, ...] = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
VOID_LABEL = 255


def read_indexed_png(path: str | Path) -> np.ndarray:
    """The label array of an indexed (palette) or greyscale PNG, uint8 [H, W] (``np.array(Image.open(p))``)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"mask '{path}' not found; DAVIS needs one indexed PNG per frame")
    with Image.open(path) as im:
        arr = np.array(im)
    if arr.ndim != 2:
        raise DatasetError(f"'{path}' is not an indexed or greyscale PNG (shape {arr.shape}); save palette PNGs")
    return arr


def objects_to_labels(object_masks: Any) -> np.ndarray:
    """Per-object masks or probabilities [N, T, H, W] -> indexed labels uint8 [T, H, W] (ReferFormer's rule).

    ``argmax`` over ``[0.1, p_1, ..., p_N]`` after setting values below 0.5 to 0; boolean masks count as 0/1.
    """
    probs = np.asarray(object_masks.detach().cpu().numpy() if hasattr(object_masks, "detach") else object_masks)
    if probs.ndim != 4:
        raise InvalidInputError(f"object masks must be [N, T, H, W], got shape {probs.shape}")
    if probs.shape[0] > 254:
        raise InvalidInputError(f"{probs.shape[0]} objects do not fit in an 8-bit indexed PNG (max 254)")
    p = probs.astype(np.float32)
    p[p < 0.5] = 0
    background = np.full((1, *p.shape[1:]), 0.1, dtype=np.float32)
    return np.argmax(np.concatenate([background, p], axis=0), axis=0).astype(np.uint8)


def _split_objects(labels: np.ndarray, n_objects: int) -> np.ndarray:
    """[T, H, W] labels -> [n_objects, T, H, W] bool, object k = (labels == k + 1)."""
    ids = np.arange(1, n_objects + 1, dtype=labels.dtype if labels.dtype.kind in "iu" else np.int64)
    return labels[None] == ids[:, None, None, None]


class DAVISUnsupervised:
    """The DAVIS 2017 unsupervised evaluation of one results folder (one annotator for Ref-DAVIS17).

    Add sequences in the order of the ImageSets list; :meth:`table` gives the official global table (fractions).
    """

    def __init__(self, max_proposals: int = 20, bound_th: float = 0.008) -> None:
        self.max_proposals = max_proposals
        self.bound_th = bound_th
        self.stats: dict[str, dict[str, list[float]]] = {m: {"M": [], "R": [], "D": []} for m in ("J", "F")}
        self.per_object: dict[str, tuple[float, float]] = {}

    def add_sequence(self, name: str, gt_labels: Any, pred_labels: Any) -> tuple[np.ndarray, np.ndarray]:
        """Score one sequence.

        Args:
            gt_labels: uint8 [T, H, W] ground-truth labels (0 background, 255 void).
            pred_labels: int [T, H, W] predicted labels (0 background, k = proposal k).

        Returns:
            ``(J, F)`` float64 [n_objects, T] of the matched pairs (in proposal order, as the official code).
        """
        gt = np.asarray(gt_labels)
        pred = np.asarray(pred_labels)
        if gt.ndim != 3 or gt.shape != pred.shape:
            raise InvalidInputError(
                f"{name}: ground truth {gt.shape} and prediction {pred.shape} must both be [T, H, W] of one size"
            )
        void = gt == VOID_LABEL
        gt = np.where(void, 0, gt)
        n_gt = int(gt[0].max())
        gt_objects = _split_objects(gt, n_gt)  # [G, T, H, W]
        n_pred = int(pred.max()) if pred.size else 0
        if n_pred > self.max_proposals:
            raise InvalidInputError(
                f"{name}: the predicted PNGs hold label {n_pred}, above the {self.max_proposals} proposals the "
                "DAVIS unsupervised protocol allows"
            )
        n_prop = max(n_pred, n_gt)  # proposals beyond n_pred are the official zero-padding (empty masks)
        t_len = gt.shape[0]
        if n_gt == 0:
            return np.zeros((0, t_len)), np.zeros((0, t_len))
        # J and F of every (proposal, object) pair: [P, G, T]; proposals are made one at a time (memory)
        j = np.zeros((n_prop, n_gt, t_len))
        f = np.zeros((n_prop, n_gt, t_len))
        empty = np.zeros(pred.shape, bool)
        for pi in range(n_prop):
            proposal = pred == pi + 1 if pi < n_pred else empty
            for gi in range(n_gt):
                j[pi, gi], f[pi, gi] = region_and_boundary(proposal, gt_objects[gi], self.bound_th, void)
        cost = (np.mean(j, axis=2) + np.mean(f, axis=2)) / 2
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(-cost)
        j_matched, f_matched = j[rows, cols, :], f[rows, cols, :]
        for ii in range(n_gt):
            jm, jr, jd = db_statistics(j_matched[ii])
            fm, fr, fd = db_statistics(f_matched[ii])
            for key, (m, r, d) in (("J", (jm, jr, jd)), ("F", (fm, fr, fd))):
                self.stats[key]["M"].append(m)
                self.stats[key]["R"].append(r)
                self.stats[key]["D"].append(d)
            self.per_object[f"{name}_{ii + 1}"] = (jm, fm)
        return j_matched, f_matched

    def table(self) -> dict[str, float]:
        """The official global table as fractions: J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay."""
        if not self.stats["J"]["M"]:
            raise InvalidInputError("no object was evaluated: the first ground-truth frames hold no object")
        j, f = self.stats["J"], self.stats["F"]
        values = [
            (np.mean(j["M"]) + np.mean(f["M"])) / 2.0,
            np.mean(j["M"]),
            np.mean(j["R"]),
            np.mean(j["D"]),
            np.mean(f["M"]),
            np.mean(f["R"]),
            np.mean(f["D"]),
        ]
        return dict(zip(DAVIS_MEASURES, (float(v) for v in values)))


def _sequence_frames(davis_root: Path, sequence: str) -> list[Path]:
    folder = davis_root / "Annotations_unsupervised" / "480p" / sequence
    frames = sorted(folder.glob("*.png"))
    if not frames:
        raise DatasetError(
            f"no ground truth for '{sequence}' in '{folder}'; Ref-DAVIS17 is scored on the DAVIS 2017 unsupervised "
            "annotations (DAVIS-2017-Unsupervised-trainval-480p.zip)"
        )
    return frames


def _read_sequence_list(davis_root: Path, subset: str) -> list[str]:
    path = davis_root / "ImageSets" / "2017" / f"{subset}.txt"
    if not path.is_file():
        raise DatasetError(
            f"'{path}' not found; davis_root must be the DAVIS folder holding ImageSets/ and Annotations_unsupervised/"
        )
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_ground_truth(davis_root: str | Path, sequence: str) -> tuple[np.ndarray, list[str]]:
    """Ground-truth labels uint8 [T, H, W] of a sequence and its frame names."""
    frames = _sequence_frames(Path(davis_root), sequence)
    return np.stack([read_indexed_png(p) for p in frames]), [p.stem for p in frames]


def evaluate_davis_unsupervised_folder(
    davis_root: str | Path, results_dir: str | Path, subset: str = "val", sequences: Sequence[str] | None = None
) -> DAVISUnsupervised:
    """Score ``<results_dir>/<sequence>/<frame>.png`` indexed predictions as ``evaluation_method.py`` does
    (``--task unsupervised``). Call ``.table()`` on the result."""
    davis_root, results_dir = Path(davis_root), Path(results_dir)
    evaluation = DAVISUnsupervised()
    for seq in sequences if sequences is not None else _read_sequence_list(davis_root, subset):
        gt, names = load_ground_truth(davis_root, seq)
        pred = np.stack([read_indexed_png(results_dir / seq / f"{n}.png") for n in names])
        evaluation.add_sequence(seq, gt, pred)
    return evaluation


def _average_tables(tables: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {m: float(np.mean([t[m] for t in tables.values()])) for m in DAVIS_MEASURES}


def evaluate_ref_davis_folder(
    davis_root: str | Path, results_root: str | Path, annotators: int = 4, subset: str = "val"
) -> dict[str, dict[str, float]]:
    """Score ``<results_root>/anno_<k>/<sequence>/<frame>.png`` for k < ``annotators`` (ReferFormer's layout).

    Returns:
        ``{"anno_0": table, ..., "average": table}``, each a dict of :data:`DAVIS_MEASURES` as fractions.
    """
    tables = {
        f"anno_{k}": evaluate_davis_unsupervised_folder(davis_root, Path(results_root) / f"anno_{k}", subset).table()
        for k in range(annotators)
    }
    return {**tables, "average": _average_tables(tables)}


class RefDAVIS17Evaluator(Evaluator):
    """Builds the per-annotator indexed predictions from per-expression masks and scores them.

    Expressions arrive video by video (as :class:`lvseg.data.RefDAVIS17` yields them); when a new video starts, the
    previous one is scored for every annotator and only its statistics are kept, so memory stays at one video.
    Each annotator's label map is built incrementally with ReferFormer's rule (see :func:`objects_to_labels`).

    Args:
        davis_root: the DAVIS 2017 folder with ``Annotations_unsupervised/480p``; ground truth may instead be given
            per video with :meth:`set_ground_truth` (before the video's first expression).
        annotators: 4 for Ref-DAVIS17 (expression ``i`` is object ``i // 4``, annotator ``i % 4``).
    """

    benchmark = "Ref-DAVIS17"
    source = "DAVIS 2017 unsupervised (davis2017-evaluation @ac7c43f), per annotator as ReferFormer, averaged"

    def __init__(self, davis_root: str | Path | None = None, annotators: int = 4) -> None:
        self.davis_root = Path(davis_root) if davis_root is not None else None
        self.annotators = annotators
        self.evaluations = [DAVISUnsupervised() for _ in range(annotators)]
        self.ground_truth: dict[str, np.ndarray] = {}
        self.done: list[str] = []
        self._video: str | None = None
        self._labels: dict[int, np.ndarray] = {}  # annotator -> uint8 [T, H, W]
        self._best: dict[int, np.ndarray] = {}  # annotator -> float32 [T, H, W] winning probability so far
        self._tables: dict[str, dict[str, float]] | None = None

    def set_ground_truth(self, video: str, labels: Any) -> None:
        """Ground-truth labels uint8 [T, H, W] (0 background, 255 void) of a video."""
        self.ground_truth[video] = np.asarray(labels)

    def add(self, video: str, obj_index: int, annotator: int, masks: Any) -> None:
        """One expression's masks (bool) or probabilities (float in [0, 1]) [T, H, W] at the original size.

        Args:
            obj_index: the object's position among the video's objects (0-based; label ``obj_index + 1``).
        """
        annotator, obj_index = int(annotator), int(obj_index)
        if not 0 <= annotator < self.annotators:
            raise InvalidInputError(f"annotator must be in [0, {self.annotators}), got {annotator}")
        if not 0 <= obj_index < 254:
            raise InvalidInputError(f"object index must be in [0, 254) for an 8-bit PNG, got {obj_index}")
        arr = masks.detach().cpu().numpy() if hasattr(masks, "detach") else np.asarray(masks)
        if arr.ndim != 3:
            raise InvalidInputError(f"{video}: masks must be [T, H, W], got shape {arr.shape}")
        if video != self._video:
            if video in self.done:
                raise InvalidInputError(
                    f"expressions of {video} arrived after another video: add each video's expressions together"
                )
            self._flush()
            self._video = video
        gt_shape = self._gt(video).shape
        if arr.shape != gt_shape:
            raise InvalidInputError(
                f"{video}: prediction {arr.shape} vs ground truth {gt_shape}; predict every "
                "frame at the original (480p) resolution"
            )
        label = obj_index + 1
        labels = self._labels.setdefault(annotator, np.zeros(gt_shape, np.uint8))
        # argmax([0.1, p_1, ...]) with p < 0.5 -> 0: object i wins a pixel if its value beats the current winner,
        # or equals it with a lower index (argmax takes the first maximum)
        if arr.dtype == np.bool_ and annotator not in self._best:
            wins = arr & ((labels == 0) | (labels > label))
        else:
            p = arr.astype(np.float32)
            p[p < 0.5] = 0
            best = self._best.get(annotator)
            if best is None:  # switching from boolean to probability input: masks so far count as 1.0
                best = np.where(labels > 0, np.float32(1.0), np.float32(0.1)).astype(np.float32)
                self._best[annotator] = best
            wins = (p > best) | ((p == best) & (labels > label))
            best[wins] = p[wins]
        labels[wins] = label
        self._tables = None

    def add_sample(self, sample: Mapping[str, Any], masks: Any, scores: Any) -> None:
        """``sample`` needs ``video`` and an integer ``exp_id`` = ``k * 4 + annotator`` where ``k`` is the object's
        position among the video's objects (ReferFormer's numbering, also :class:`lvseg.data.RefDAVIS17`'s);
        ``annotator`` (0-3) is read from the sample when present.
        """
        if "video" not in sample or "exp_id" not in sample:
            raise InvalidInputError(
                "Ref-DAVIS17 evaluation needs sample['video'] and an integer sample['exp_id'] (object * 4 + annotator)"
            )
        exp = int(sample["exp_id"])
        anno = int(sample["annotator"]) if "annotator" in sample else exp % self.annotators
        self.add(str(sample["video"]), exp // self.annotators, anno, masks)

    def _gt(self, video: str) -> np.ndarray:
        if video not in self.ground_truth:
            if self.davis_root is None:
                raise InvalidInputError(f"no ground truth for {video}: pass davis_root or call set_ground_truth")
            self.ground_truth[video] = load_ground_truth(self.davis_root, video)[0]
        return self.ground_truth[video]

    def _flush(self) -> None:
        """Score the current video for every annotator and free its masks."""
        video = self._video
        if video is None:
            return
        gt = self._gt(video)
        for k, evaluation in enumerate(self.evaluations):
            labels = self._labels.get(k)
            if labels is None:
                logger.warning("%s has no prediction for annotator %d: scored as empty", video, k)
                labels = np.zeros(gt.shape, np.uint8)
            evaluation.add_sequence(video, gt, labels)
        self.done.append(video)
        self.ground_truth.pop(video, None)
        self._video, self._labels, self._best = None, {}, {}

    def tables(self) -> dict[str, dict[str, float]]:
        """Per-annotator DAVIS tables and their average (fractions), as :func:`evaluate_ref_davis_folder`."""
        self._flush()
        if self._tables is None:
            if not self.done:
                raise InvalidInputError("no Ref-DAVIS17 prediction was added")
            tables = {f"anno_{k}": e.table() for k, e in enumerate(self.evaluations)}
            self._tables = {**tables, "average": _average_tables(tables)}
        return self._tables

    def summary(self) -> dict[str, float]:
        """The reported numbers (mean over annotators) in percent: J&F, J, F and the recalls/decays."""
        avg = self.tables()["average"]
        return {
            "J&F": 100 * avg["J&F-Mean"],
            "J": 100 * avg["J-Mean"],
            "F": 100 * avg["F-Mean"],
            "J-Recall": 100 * avg["J-Recall"],
            "J-Decay": 100 * avg["J-Decay"],
            "F-Recall": 100 * avg["F-Recall"],
            "F-Decay": 100 * avg["F-Decay"],
        }

    def format_table(self) -> str:
        rows = {name: {m: 100 * v for m, v in table.items()} for name, table in self.tables().items()}
        return format_table(rows, digits=self.digits, title=f"{self.benchmark} ({self.source})")
