"""Metrics and benchmark evaluators that reproduce each official protocol exactly.

Array-level metrics (numpy or torch input, batched over leading dimensions):

* :func:`region_similarity` (DAVIS J), :func:`boundary_f` (DAVIS F), :func:`db_statistics` (mean/recall/decay);
* :func:`mask_iou`, :func:`intersection_union`, :func:`iou_summary` (overall/mean IoU and precision@K under the
  MTTR, LAVT or Locater conventions), :func:`precision_at_k`, :func:`overall_iou`, :func:`mean_iou`;
* :func:`coco_mask_map` (COCO mask mAP with categories ignored, MTTR's A2D/JHMDB protocol).

One evaluator per benchmark protocol: :class:`ExpressionJF` (MeViS, Ref-YouTube-VOS with ground truth),
:class:`SubmissionWriter` (server-scored splits), :class:`RefDAVIS17Evaluator`, :class:`MTTREvaluator`
(A2D/JHMDB-Sentences), :class:`LocaterEvaluator` (A2D-S+), :class:`LAVTEvaluator` (RefCOCO/+/g).
``lvseg.evaluate`` (defined in :mod:`lvseg.metrics.evaluate`) runs a model over a dataset. See ``docs/metrics.md``.
"""

from .base import Evaluator, format_table
from .coco import COCO_MAP_KEYS, coco_mask_map, encode_rle
from .davis import (
    boundary_f,
    boundary_map,
    boundary_radius,
    db_statistics,
    disk_half_widths,
    region_and_boundary,
    region_similarity,
)
from .evaluate import SamplePrediction, build_dataset, default_runner, format_result, make_evaluator
from .iou import (
    LAVT,
    LOCATER,
    MTTR,
    IoUProtocol,
    intersection_union,
    iou_summary,
    mask_iou,
    mean_iou,
    overall_iou,
    precision_at_k,
    sample_ious,
)
from .refdavis import (
    DAVISUnsupervised,
    RefDAVIS17Evaluator,
    evaluate_davis_unsupervised_folder,
    evaluate_ref_davis_folder,
    objects_to_labels,
)
from .referring import LAVTEvaluator, LocaterEvaluator, MTTREvaluator, a2d_image_id
from .rvos import ExpressionJF, SubmissionWriter, evaluate_mevis_folder, make_submission_zip, write_expression_pngs

__all__ = [
    "region_similarity",
    "boundary_f",
    "boundary_map",
    "boundary_radius",
    "disk_half_widths",
    "region_and_boundary",
    "db_statistics",
    "IoUProtocol",
    "MTTR",
    "LAVT",
    "LOCATER",
    "intersection_union",
    "mask_iou",
    "sample_ious",
    "iou_summary",
    "precision_at_k",
    "overall_iou",
    "mean_iou",
    "COCO_MAP_KEYS",
    "coco_mask_map",
    "encode_rle",
    "Evaluator",
    "format_table",
    "ExpressionJF",
    "SubmissionWriter",
    "evaluate_mevis_folder",
    "make_submission_zip",
    "write_expression_pngs",
    "DAVISUnsupervised",
    "RefDAVIS17Evaluator",
    "evaluate_davis_unsupervised_folder",
    "evaluate_ref_davis_folder",
    "objects_to_labels",
    "MTTREvaluator",
    "LocaterEvaluator",
    "LAVTEvaluator",
    "a2d_image_id",
    "make_evaluator",
    "build_dataset",
    "format_result",
    "SamplePrediction",
    "default_runner",
]
