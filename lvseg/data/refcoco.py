"""RefCOCO, RefCOCO+ and RefCOCOg (umd / google) in the REFER layout (github.com/lichengunc/refer).

Layout (``root`` is REFER's ``data/`` folder)::

    <dataset>/refs(<split_by>).p        pickled list of refs: {"ref_id", "ann_id", "image_id", "split",
                                        "sentences": [{"raw", "sent", "sent_id", "tokens"}], "category_id", ...}
    <dataset>/instances.json            COCO-style "images", "annotations" (polygons / RLE), "categories"
    images/mscoco/images/train2014/COCO_train2014_<id:012d>.jpg

``dataset`` / ``split_by`` / splits: ``refcoco`` and ``refcoco+`` with ``unc`` (train, val, testA, testB);
``refcocog`` with ``umd`` (train, val, test) or ``google`` (train, val). Split selection follows REFER's
``getRefIds``: ``testA``/``testB`` match any split containing that letter, ``test`` any split containing "test".

The refs file is a pickle; it is read with an unpickler that refuses every class or function reference (the
genuine files hold only lists, dicts, strings and numbers), so a tampered file cannot run code.
Only the annotations and images of the chosen split's refs are kept after loading.
"""

from __future__ import annotations

import io
import logging
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from lvseg.data._common import load_rgb, read_json, require_dir, require_file, target_fields
from lvseg.errors import DatasetError, InvalidInputError

logger = logging.getLogger("lvseg.data.refcoco")

__all__ = ["RefCOCO", "load_refs"]

_SPLITS = {
    ("refcoco", "unc"): ("train", "val", "testA", "testB", "test"),
    ("refcoco+", "unc"): ("train", "val", "testA", "testB", "test"),
    ("refcocog", "umd"): ("train", "val", "test"),
    ("refcocog", "google"): ("train", "val"),
}
_DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
_HINT = "Get the REFER annotations (refcoco, refcoco+, refcocog) and COCO train2014 images (see docs/datasets.md)."


class _RefusedReference(pickle.UnpicklingError):
    """A pickle asked for a class or function."""


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickler for plain containers only: any class or function reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise _RefusedReference(f"it asks for {module}.{name}")


def load_refs(path: str | Path) -> list[dict]:
    """Load a REFER ``refs(<split_by>).p`` file safely (no code execution; Python-2 strings decoded as UTF-8)."""
    path = require_file(Path(path), "REFER refs pickle", _HINT)
    try:
        refs = _PlainDataUnpickler(io.BytesIO(path.read_bytes()), encoding="utf-8").load()
    except _RefusedReference as exc:
        raise DatasetError(
            f"'{path}' is not a plain refs pickle ({exc}); genuine REFER files hold only lists, "
            "dicts, strings and numbers, so it was not loaded. Re-download it."
        ) from exc
    except Exception as exc:  # truncated or not a pickle at all
        raise DatasetError(f"'{path}' cannot be read as a pickle ({exc}); re-download it.") from exc
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DatasetError(f"'{path}' does not hold a list of refs.")
    return refs


def _split_matches(ref_split: str, split: str) -> bool:
    if split in ("testA", "testB", "testC"):
        return split[-1] in ref_split
    if split == "test":
        return "test" in ref_split
    return ref_split == split


class RefCOCO(Dataset):
    """Referring image segmentation on RefCOCO / RefCOCO+ / RefCOCOg: one sample per sentence.

    Args:
        root: REFER's ``data/`` folder.
        split: see the module docstring.
        dataset: ``"refcoco"``, ``"refcoco+"`` or ``"refcocog"``.
        split_by: ``"unc"``, ``"umd"`` or ``"google"`` (default: ``unc`` for refcoco/+, ``umd`` for refcocog).
        image_dir: COCO train2014 folder (default ``<root>/images/mscoco/images/train2014``).
        overlap: ``"union"`` (a pixel covered by any polygon part is foreground) or ``"lavt"`` (REFER sums the
            parts and LAVT keeps only pixels equal to 1, so pixels covered by two parts become background).
        transform: callable applied to each sample dict.

    A sample is a one-frame clip: ``frames`` ``uint8 [1, H, W, 3]``, ``masks`` ``bool [1, H, W]``,
    ``object_masks`` ``bool [1, 1, H, W]``, ``boxes`` (from the mask), ``valid``, ``annotated``, ``text`` (the
    sentence's ``raw`` form), ``sent`` (REFER's normalised form), ``ref_id``, ``ann_id``, ``image_id``,
    ``sent_id``, ``category_id``, ``file_name``, ``bbox`` (the annotation's COCO ``[x, y, w, h]``), ``orig_size``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        *,
        dataset: str = "refcoco",
        split_by: str | None = None,
        image_dir: str | Path | None = None,
        overlap: Literal["union", "lavt"] = "union",
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.root = require_dir(Path(root), "REFER data root", _HINT)
        if dataset not in _DEFAULT_SPLIT_BY:
            raise InvalidInputError(f"dataset must be one of {sorted(_DEFAULT_SPLIT_BY)}, got {dataset!r}.")
        split_by = split_by or _DEFAULT_SPLIT_BY[dataset]
        if (dataset, split_by) not in _SPLITS:
            raise InvalidInputError(
                f"{dataset} has no split_by {split_by!r}; use one of {[s for d, s in _SPLITS if d == dataset]}."
            )
        if split not in _SPLITS[(dataset, split_by)]:
            raise InvalidInputError(
                f"{dataset} ({split_by}) has no split {split!r}; choose one of {list(_SPLITS[(dataset, split_by)])}."
            )
        if overlap not in ("union", "lavt"):
            raise InvalidInputError(f"overlap must be 'union' or 'lavt', got {overlap!r}.")
        self.dataset, self.split_by, self.split, self.overlap = dataset, split_by, split, overlap
        self.transform = transform
        data_dir = require_dir(self.root / dataset, f"{dataset} annotations folder", _HINT)
        self.image_dir = Path(image_dir) if image_dir is not None else self.root / "images/mscoco/images/train2014"
        require_dir(self.image_dir, "COCO train2014 images folder", _HINT)
        refs = [r for r in load_refs(data_dir / f"refs({split_by}).p") if _split_matches(str(r.get("split")), split)]
        instances = read_json(data_dir / "instances.json", f"{dataset} instances.json", _HINT)
        want_anns = {r["ann_id"] for r in refs}
        want_imgs = {r["image_id"] for r in refs}
        # keep only what this split needs; the rest of instances.json is dropped here
        self.annotations = {a["id"]: a for a in instances.get("annotations", []) if a["id"] in want_anns}
        self.images = {i["id"]: i for i in instances.get("images", []) if i["id"] in want_imgs}
        del instances
        self.samples: list[tuple[dict, dict]] = []
        for ref in refs:
            if ref["ann_id"] not in self.annotations or ref["image_id"] not in self.images:
                raise DatasetError(
                    f"ref {ref.get('ref_id')} points to annotation {ref['ann_id']} / image "
                    f"{ref['image_id']} missing from instances.json; the two files do not match."
                )
            for sent in ref.get("sentences", []):
                self.samples.append((ref, sent))
        logger.info("%s (%s) %s: %d refs, %d sentences", dataset, split_by, split, len(refs), len(self.samples))

    def __len__(self) -> int:
        return len(self.samples)

    def _mask(self, ann: dict, h: int, w: int) -> np.ndarray:
        seg = ann["segmentation"]
        with warnings.catch_warnings():  # pycocotools' numpy-2 "copy keyword" DeprecationWarning
            warnings.simplefilter("ignore", DeprecationWarning)
            if isinstance(seg, list):  # polygons: one RLE per part
                rles = mask_utils.frPyObjects(seg, h, w)
            elif isinstance(seg.get("counts"), list):  # uncompressed RLE
                rles = [mask_utils.frPyObjects(seg, h, w)]
            else:
                rles = [seg]
            parts = mask_utils.decode(rles)  # [H, W, K]
        total = parts.reshape(h, w, -1).sum(axis=2)
        return total == 1 if self.overlap == "lavt" else total > 0

    def __getitem__(self, index: int) -> dict[str, Any]:
        ref, sent = self.samples[index]
        img = self.images[ref["image_id"]]
        ann = self.annotations[ref["ann_id"]]
        frame = load_rgb(self.image_dir / img["file_name"])
        h, w = frame.shape[:2]
        if (h, w) != (img["height"], img["width"]):
            raise DatasetError(
                f"image '{img['file_name']}' is {h}x{w} but instances.json says "
                f"{img['height']}x{img['width']}; use the original COCO train2014 images."
            )
        mask = torch.from_numpy(self._mask(ann, h, w))[None]  # [1, H, W]
        sample: dict[str, Any] = {
            "frames": torch.from_numpy(frame)[None],
            "text": sent.get("raw", sent.get("sent", "")),
            "sent": sent.get("sent"),
            "ref_id": ref["ref_id"],
            "ann_id": ref["ann_id"],
            "image_id": ref["image_id"],
            "sent_id": sent.get("sent_id"),
            "category_id": ref.get("category_id"),
            "file_name": img["file_name"],
            "bbox": torch.tensor(ann.get("bbox", [0, 0, 0, 0]), dtype=torch.float32),
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
            "object_masks": mask[None].clone(),
        }
        sample.update(target_fields(mask))
        return self.transform(sample) if self.transform is not None else sample
