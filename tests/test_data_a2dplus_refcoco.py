"""A2D-S+ (Locater's .pth masks and json) and RefCOCO (REFER pickle + instances.json, safe unpickling)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from data_fixtures import frame, save_jpg, save_png_rgb, write_json
from lvseg.data import A2DSPlus, RefCOCO
from lvseg.data.refcoco import load_refs
from lvseg.errors import DatasetError, InvalidInputError

H, W = 20, 24


def write_a2dplus(root: Path, folder: str = "MUL", dict_name: str = "vid_frame_dict.pth") -> None:
    base = root / "A2D_SUBSET" / folder
    frames = ["00001", "00002", "00003", "00004"]
    for t, n in enumerate(frames):
        save_png_rgb(base / "allPngs320H/vidX" / f"{n}.png", frame(H, W, 25 * t))
    (base / "mask").mkdir(parents=True)
    for n in ("00002", "00004"):
        m = torch.zeros(H, W)
        m[2:6, int(n) : int(n) + 5] = 1.0
        torch.save(m, base / "mask" / f"vidX_3_{n}.pth")
    torch.save(torch.zeros(H, W), base / "mask/vidX_7_00001.pth")  # an empty GT mask (TEMP-style)
    torch.save({"vidX": 44}, base / dict_name)
    write_json(base / f"A2D_{folder.replace('A2D_', '')}_test_expressions.json", {"vidX": {
        "frames": ["00003", "00001", "00002", "00004", "00002"],  # unsorted, with a duplicate
        "expressions": {"3": {"exp": "The Peson in red is standing", "labels": ["00004", "00002"]},
                        "7": {"exp": "a bird flying", "labels": ["00001"]}}}})


def test_a2dplus_masks_labels_and_query_fixes(tmp_path: Path) -> None:
    write_a2dplus(tmp_path)
    ds = A2DSPlus(tmp_path, "mul")
    assert len(ds) == 2
    s = ds[0]
    assert s["text"] == "the person in red is standing"  # Locater's typo table
    assert s["frame_ids"] == ["00001", "00002", "00003", "00004"]
    assert s["frames"][:, 0, 0, 0].tolist() == [0, 25, 50, 75]
    assert s["annotated"].tolist() == [False, True, False, True] and s["valid"].tolist() == [False, True, False, True]
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[2:6, 4:9] = True
    assert torch.equal(s["masks"][3], expected) and not s["masks"][[0, 2]].any()
    assert s["num_video_frames"] == 44 and s["obj_id"] == "3"
    e = ds[1]
    assert e["annotated"].tolist() == [True, False, False, False] and not e["valid"].any()
    assert A2DSPlus(tmp_path, "MUL", fix_queries=False)[0]["text"] == "The Peson in red is standing"


def test_a2dplus_readme_spellings_and_errors(tmp_path: Path) -> None:
    write_a2dplus(tmp_path, folder="A2D_TEMP", dict_name="vid_frames_dict.pth")
    ds = A2DSPlus(tmp_path, "TEMP")
    assert ds[0]["num_video_frames"] == 44
    with pytest.raises(InvalidInputError, match="NORM"):
        A2DSPlus(tmp_path, "FOO")
    with pytest.raises(DatasetError, match="A2D-S\\+ SPAT folder"):
        A2DSPlus(tmp_path, "SPAT")
    os.remove(tmp_path / "A2D_SUBSET/A2D_TEMP/mask/vidX_3_00004.pth")
    with pytest.raises(DatasetError, match="vidX_3_00004.pth"):
        ds[0]


class _Evil:
    def __reduce__(self):  # would run a shell command on unpickling
        return (os.system, ("echo pwned",))


def _polygon_square(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def write_refcoco(root: Path) -> None:
    img_dir = root / "images/mscoco/images/train2014"
    for iid in (1, 2):
        save_jpg(img_dir / f"COCO_train2014_{iid:012d}.jpg", frame(H, W, 60 * iid))
    refs = [
        {"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "val", "category_id": 1,
         "sentences": [{"raw": "Man on the left", "sent": "man on the left", "sent_id": 100, "tokens": []},
                       {"raw": "Größter Mann", "sent": "größter mann", "sent_id": 101, "tokens": []}]},
        {"ref_id": 1, "ann_id": 11, "image_id": 2, "split": "testA", "category_id": 1,
         "sentences": [{"raw": "two squares", "sent": "two squares", "sent_id": 102, "tokens": []}]},
        {"ref_id": 2, "ann_id": 12, "image_id": 2, "split": "testB", "category_id": 3,
         "sentences": [{"raw": "a car", "sent": "a car", "sent_id": 103, "tokens": []}]},
        {"ref_id": 3, "ann_id": 13, "image_id": 1, "split": "train", "category_id": 3,
         "sentences": [{"raw": "train ref", "sent": "train ref", "sent_id": 104, "tokens": []}]},
    ]
    (root / "refcoco").mkdir(parents=True)
    with open(root / "refcoco/refs(unc).p", "wb") as fh:
        pickle.dump(refs, fh, protocol=2)
    rle = {"size": [H, W], "counts": [0, H * 3, H * W - H * 3]}  # uncompressed RLE: first 3 columns
    write_json(root / "refcoco/instances.json", {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": H, "width": W},
                   {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": H, "width": W}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 3, 8, 10],
             "segmentation": [_polygon_square(2, 3, 10, 13)]},
            # two overlapping polygon parts: the overlap is foreground for 'union', background for 'lavt'
            {"id": 11, "image_id": 2, "category_id": 1, "bbox": [0, 0, 12, 10],
             "segmentation": [_polygon_square(0, 0, 8, 8), _polygon_square(4, 4, 12, 10)]},
            {"id": 12, "image_id": 2, "category_id": 3, "bbox": [0, 0, 3, 20], "segmentation": rle},
            {"id": 13, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1],
             "segmentation": [_polygon_square(0, 0, 1, 1)]},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]})


def test_refcoco_sentences_masks_and_split_matching(tmp_path: Path) -> None:
    write_refcoco(tmp_path)
    val = RefCOCO(tmp_path, "val")
    assert len(val) == 2 and [val[i]["text"] for i in range(2)] == ["Man on the left", "Größter Mann"]
    s = val[0]
    assert s["frames"].shape == (1, H, W, 3) and s["masks"].shape == (1, H, W)
    assert s["masks"][0, 8, 6] and not s["masks"][0, 1, 1]
    x1, y1, x2, y2 = s["boxes"][0].tolist()
    assert abs(x1 - 2) <= 1 and abs(y1 - 3) <= 1 and abs(x2 - 9) <= 1 and abs(y2 - 12) <= 1
    assert (s["ref_id"], s["ann_id"], s["sent_id"], s["image_id"]) == (0, 10, 100, 1)
    test = RefCOCO(tmp_path, "test")  # REFER: any split containing "test"
    assert sorted(test[i]["sent_id"] for i in range(len(test))) == [102, 103]
    test_a = RefCOCO(tmp_path, "testA")
    assert [test_a[i]["sent_id"] for i in range(len(test_a))] == [102]
    union, lavt = test_a[0]["masks"][0], RefCOCO(tmp_path, "testA", overlap="lavt")[0]["masks"][0]
    assert union[5, 5] and not lavt[5, 5] and union[1, 1] and lavt[1, 1]
    car = RefCOCO(tmp_path, "testB")[0]["masks"][0]
    assert car[:, :3].all() and not car[:, 3:].any()


def test_refcoco_rejects_code_in_pickles_and_bad_arguments(tmp_path: Path) -> None:
    write_refcoco(tmp_path)
    with open(tmp_path / "refcoco/refs(unc).p", "wb") as fh:
        pickle.dump([{"ref_id": 0, "payload": _Evil()}], fh, protocol=2)
    with pytest.raises(DatasetError, match="posix.system|os.system|nt.system"):
        load_refs(tmp_path / "refcoco/refs(unc).p")
    (tmp_path / "refcoco/refs(unc).p").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="cannot be read"):
        RefCOCO(tmp_path, "val")
    with pytest.raises(InvalidInputError, match="testA"):
        RefCOCO(tmp_path, "testC")
    with pytest.raises(InvalidInputError, match="google"):
        RefCOCO(tmp_path, "val", dataset="refcocog", split_by="unc")
    with pytest.raises(DatasetError, match="refcoco\\+ annotations folder"):
        RefCOCO(tmp_path, "val", dataset="refcoco+")
