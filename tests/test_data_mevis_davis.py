"""MeViS (RLE mask_dict, multi-object expressions) and Ref-DAVIS17 (DAVIS release + MPI text files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from data_fixtures import frame, id_map, save_jpg, save_palette_png, write_json
from lvseg.data import MeViS, RefDAVIS17
from lvseg.data._lazyjson import LazyJsonObject
from lvseg.errors import DatasetError, InvalidInputError

H, W = 16, 20


def _rle(m: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}


def _obj_mask(k: int, t: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[2 * k: 2 * k + 4, t + k: t + k + 5] = True
    return m


def write_mevis(root: Path, split: str = "valid_u") -> None:
    frames = ["00000", "00001", "00002"]
    for t, n in enumerate(frames):
        save_jpg(root / split / "JPEGImages/vid1" / f"{n}.jpg", frame(H, W, 30 * t))
    mask_dict = {
        "10": [_rle(_obj_mask(1, t)) for t in range(3)],
        "11": [_rle(_obj_mask(3, 0)), None, _rle(_obj_mask(3, 2))],  # absent in frame 1
    }
    meta = {"videos": {"vid1": {"frames": frames, "expressions": {
        "0": {"exp": "the two birds flying away", "obj_id": [0, 1], "anno_id": [10, 11]},
        "1": {"exp": "el pájaro de la izquierda", "obj_id": [1], "anno_id": ["11"]},
        "2": {"exp": "nothing matches this", "obj_id": [], "anno_id": []},  # v2 no-target expression
    }}}}
    write_json(root / split / "meta_expressions.json", meta)
    write_json(root / split / "mask_dict.json", mask_dict)


def test_mevis_union_of_objects_absent_frames_and_no_target(tmp_path: Path) -> None:
    write_mevis(tmp_path)
    ds = MeViS(tmp_path, "valid_u")
    assert len(ds) == 3 and ds.has_ground_truth
    s = ds[0]
    expect0 = np.stack([_obj_mask(1, t) for t in range(3)])
    expect1 = np.stack([_obj_mask(3, 0), np.zeros((H, W), bool), _obj_mask(3, 2)])
    assert s["object_masks"].shape == (2, 3, H, W)
    assert torch.equal(s["object_masks"][0], torch.from_numpy(expect0))
    assert torch.equal(s["object_masks"][1], torch.from_numpy(expect1))
    assert torch.equal(s["masks"], torch.from_numpy(expect0 | expect1))
    assert s["obj_ids"] == [0, 1] and s["anno_ids"] == ["10", "11"] and s["valid"].all()
    s1 = ds[1]
    assert s1["text"] == "el pájaro de la izquierda" and s1["valid"].tolist() == [True, False, True]
    s2 = ds[2]
    assert s2["object_masks"].shape == (0, 3, H, W) and not s2["masks"].any() and not s2["valid"].any()


def test_mevis_valid_has_no_masks_and_errors_name_paths(tmp_path: Path) -> None:
    write_mevis(tmp_path, "valid")
    (tmp_path / "valid/mask_dict.json").unlink()
    ds = MeViS(tmp_path, "valid")
    assert not ds.has_ground_truth and "masks" not in ds[0]
    write_mevis(tmp_path, "train")
    (tmp_path / "train/mask_dict.json").unlink()
    with pytest.raises(DatasetError, match=r"train/mask_dict\.json"):
        MeViS(tmp_path, "train")
    write_mevis(tmp_path, "train")
    meta = json.loads((tmp_path / "train/meta_expressions.json").read_text())
    meta["videos"]["vid1"]["expressions"]["0"]["anno_id"] = [99]
    write_json(tmp_path / "train/meta_expressions.json", meta)
    with pytest.raises(DatasetError, match="anno_id '99'"):
        MeViS(tmp_path, "train")
    with pytest.raises(InvalidInputError, match="valid_u"):
        MeViS(tmp_path, "test")


def test_lazy_json_handles_brackets_and_escapes_inside_strings(tmp_path: Path) -> None:
    data = {"a[": [{"counts": "x]}{[\\\"", "size": [1, 2]}, None], "b": {"nested": {"c": [1, [2, {"d": "}"}]]}},
            "ü": "plain", "e": []}
    p = tmp_path / "x.json"
    p.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    lazy = LazyJsonObject(p)
    assert lazy.keys() == list(data)
    assert all(lazy[k] == v for k, v in data.items())
    p.write_text(json.dumps(data)[:-3])
    with pytest.raises(DatasetError, match="truncated"):
        LazyJsonObject(p)
    p.write_text("[1, 2]")
    with pytest.raises(DatasetError, match="top level"):
        LazyJsonObject(p)


DAVIS_VIDEOS = {"bike-packing": 2, "dogs-scale": 1}


def write_davis(root: Path) -> None:
    d = root / "DAVIS"
    for vid, n_obj in DAVIS_VIDEOS.items():
        for t in range(3):
            save_jpg(d / "JPEGImages/480p" / vid / f"{t:05d}.jpg", frame(H, W, 50 * t))
            boxes = {k: (2 * k, 2 * k + 3, t, t + 4) for k in range(1, n_obj + 1) if not (k == 2 and t == 2)}
            save_palette_png(d / "Annotations_unsupervised/480p" / vid / f"{t:05d}.png", id_map(H, W, boxes))
    (d / "ImageSets/2017").mkdir(parents=True)
    (d / "ImageSets/2017/val.txt").write_text("bike-packing\ndogs-scale\n")
    (d / "ImageSets/2017/train.txt").write_text("")
    ta = root / "davis_text_annotations"
    ta.mkdir()
    # the text files spell dogs-scale as dog-scale, like the real ones; annotator 2 files are Latin-1
    (ta / "Davis17_annot1.txt").write_text(
        'bike-packing 1 "a man riding a bike"\nbike-packing 2 "a black bike"\ndog-scale 1 "a small dog"\n',
        encoding="utf-8")
    (ta / "Davis17_annot1_full_video.txt").write_text(
        'bike-packing 2 "the bike  being ridden"\nbike-packing 1 "man with a backpack"\ndog-scale 1 "a dog"\n',
        encoding="utf-8")
    (ta / "Davis17_annot2.txt").write_text(
        'bike-packing 1 "cyclist"\nbike-packing 2 "bicycle"\ndog-scale 1 "chien très petit"\n', encoding="latin-1")
    (ta / "Davis17_annot2_full_video.txt").write_text(
        'bike-packing 1 "person"\nbike-packing 2 "bike"\ndog-scale 1 "dog on a scale"\n', encoding="latin-1")


def test_ref_davis_expression_grouping_and_masks(tmp_path: Path) -> None:
    write_davis(tmp_path)
    ds = RefDAVIS17(tmp_path, "val")
    assert len(ds) == 12
    table = {(s[0], s[1]): s for s in ds.samples}
    assert set(table) == {("bike-packing", str(i)) for i in range(8)} | {("dogs-scale", str(i)) for i in range(4)}
    by = {(ds[i]["video"], ds[i]["exp_id"]): ds[i] for i in range(len(ds))}
    s = by[("bike-packing", "5")]  # object 2 (k=1), annotator 1 full-video
    assert s["text"] == "the bike being ridden" and s["obj_ids"] == [2]  # whitespace collapsed, as officially
    assert (s["annotator"], s["annotator_id"], s["expression_type"]) == (1, 1, "full_video")
    assert s["valid"].tolist() == [True, True, False]
    assert torch.equal(s["masks"][0], torch.from_numpy(id_map(H, W, {2: (4, 7, 0, 4)}) == 2))
    d = by[("dogs-scale", "2")]
    assert d["text"] == "chien très petit" and d["annotator"] == 2 and d["expression_type"] == "first_frame"
    assert d["frames"].shape == (3, H, W, 3) and d["frame_ids"] == ["00000", "00001", "00002"]


def test_ref_davis_missing_files_are_named(tmp_path: Path) -> None:
    write_davis(tmp_path)
    (tmp_path / "davis_text_annotations/Davis17_annot2_full_video.txt").unlink()
    with pytest.raises(DatasetError, match="Davis17_annot2_full_video.txt"):
        RefDAVIS17(tmp_path, "valid")
    write_davis(tmp_path / "b")
    import shutil
    shutil.rmtree(tmp_path / "b/DAVIS/JPEGImages/480p/dogs-scale")
    with pytest.raises(DatasetError, match="dogs-scale"):
        RefDAVIS17(tmp_path / "b", "valid")
