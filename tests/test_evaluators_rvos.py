"""MeViS / Ref-YouTube-VOS and Ref-DAVIS17 evaluators on miniature datasets in the official layouts.

The expected numbers in tests/fixtures/evaluators_golden.json were produced by running, on exactly these
miniature datasets (generated below, no randomness), the official DAVIS code (``DAVISEvaluation`` with
``task='unsupervised'`` for each ``anno_k`` folder, averaged as ReferFormer/ReferDINO report Ref-DAVIS17) and the
official DAVIS metrics with MeViS's ``eval_mevis.py`` aggregation.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lvseg.errors import InvalidInputError
from lvseg.metrics import (
    ExpressionJF,
    RefDAVIS17Evaluator,
    SubmissionWriter,
    evaluate_davis_unsupervised_folder,
    evaluate_mevis_folder,
    evaluate_ref_davis_folder,
    make_submission_zip,
    objects_to_labels,
    write_expression_pngs,
)
from lvseg.metrics.refdavis import read_indexed_png

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "evaluators_golden.json").read_text())

def davis_palette():
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal.flatten().tolist()


def save_indexed(path, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(davis_palette())
    im.save(path)


MINI_DAVIS_SEQS = ("alpha", "beta")
T, H, W = 6, 48, 64


def mini_davis_gt(s, t):
    yy, xx = np.mgrid[:H, :W]
    lab = np.zeros((H, W), np.uint8)
    lab[((yy - (14 + t + s)) / (7 + s)) ** 2 + ((xx - (16 + 2 * t)) / 10) ** 2 <= 1] = 1
    lab[26 + s:42, 30 + t:52 + t] = 2
    if s == 1 and t >= 2:
        lab[2:8, 50:60] = 3  # appears after the first frame: the official code does not count it
    lab[(lab == 0) & ((xx + yy + t) % 11 == 0) & (yy > 40)] = 255
    lab[20:22, 10:20] = 255
    return lab


def mini_davis_pred(s, t, k):
    yy, xx = np.mgrid[:H, :W]
    a = ((yy - (14 + t + s + k)) / (7 + s)) ** 2 + ((xx - (16 + 2 * t - k)) / (10 - k)) ** 2 <= 1
    b = np.zeros((H, W), bool)
    b[26 + s - k:42 + k, 30 + t + k:52 + t] = True
    lab = np.zeros((H, W), np.uint8)
    if k == 0:
        lab[a] = 1; lab[b] = 2
    elif k == 1:
        lab[b] = 1; lab[a] = 2
    elif k == 2:
        lab[a] = 1; lab[b] = 2; lab[0:5, 0:10] = 3
    else:
        lab[b] = 1
    if s == 1 and k == 0 and t == 3:
        lab[:] = 0
    return lab


def write_mini_davis(root, results):
    root, results = Path(root), Path(results)
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(MINI_DAVIS_SEQS) + "\n")
    for s, seq in enumerate(MINI_DAVIS_SEQS):
        for t in range(T):
            img = root / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg"
            img.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(img)
            save_indexed(root / "Annotations_unsupervised" / "480p" / seq / f"{t:05d}.png", mini_davis_gt(s, t))
            for k in range(4):
                save_indexed(results / f"anno_{k}" / seq / f"{t:05d}.png", mini_davis_pred(s, t, k))


def mini_mevis_objects(v, t, h, w):
    """Per-object masks (dict anno_id -> bool [h, w] or None when absent) of video v at frame t."""
    yy, xx = np.mgrid[:h, :w]
    out = {}
    out[f"{v}0"] = ((yy - (10 + t)) / 6.0) ** 2 + ((xx - (12 + 3 * t)) / 8.0) ** 2 <= 1
    m = np.zeros((h, w), bool); m[20:30, 5 + v:25 + t] = True
    out[f"{v}1"] = m
    out[f"{v}2"] = None if t < 2 else (xx + yy < 12 + t)  # absent at first, then touches the border
    return out


MEVIS_VIDEOS = {"vid_a": (5, 40, 56), "vid_b": (4, 33, 47)}
MEVIS_EXPRESSIONS = {
    "vid_a": {"0": ["a0"], "1": ["a1", "a2"], "2": ["a2"]},
    "vid_b": {"0": ["b1"], "1": ["b0", "b1", "b2"], "5": ["b0"]},
}


def mini_mevis_pred(vid, exp, t, h, w):
    yy, xx = np.mgrid[:h, :w]
    k = int(exp)
    m = ((yy - (11 + t - k)) / 6.0) ** 2 + ((xx - (12 + 3 * t + k)) / (8.0 - k)) ** 2 <= 1
    if k == 1:
        m |= (xx + yy < 10 + t)
    if vid == "vid_b" and t == 0:
        m[:] = False
    return m


def write_mini_mevis(root, pred_root, skip=(("vid_b", "5"),)):
    """Write meta_expressions.json, mask_dict.json (COCO RLE) and predicted PNGs (0/255)."""
    from pycocotools import mask as cm
    root, pred_root = Path(root), Path(pred_root)
    root.mkdir(parents=True, exist_ok=True)
    meta = {"videos": {}}
    mask_dict = {}
    for vi, (vid, (n, h, w)) in enumerate(MEVIS_VIDEOS.items()):
        frames = [f"{t:05d}" for t in range(n)]
        exps = {}
        for e, annos in MEVIS_EXPRESSIONS[vid].items():
            exps[e] = {"exp": f"expression {e} of {vid}", "obj_id": list(range(len(annos))),
                       "anno_id": [a.replace("a", "1").replace("b", "2") for a in annos]}
        meta["videos"][vid] = {"frames": frames, "expressions": exps}
        for t in range(n):
            for key, m in mini_mevis_objects(vi, t, h, w).items():
                anno = str(int(str(vi + 1) + key[1:]))
                lst = mask_dict.setdefault(anno, [])
                if m is None:
                    lst.append(None)
                else:
                    r = cm.encode(np.asfortranarray(m.astype(np.uint8)))
                    lst.append({"size": [int(x) for x in r["size"]], "counts": r["counts"].decode("ascii")})
        for e in exps:
            if (vid, e) in skip:
                continue
            for t in range(n):
                p = pred_root / vid / e / f"{t:05d}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mini_mevis_pred(vid, e, t, h, w).astype(np.uint8) * 255).save(p)
    (root / "meta_expressions.json").write_text(json.dumps(meta))
    (root / "mask_dict.json").write_text(json.dumps(mask_dict))


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mini")
    write_mini_davis(root / "davis", root / "davis_results")
    write_mini_mevis(root / "mevis", root / "mevis_pred")
    return root


def test_ref_davis_folder_matches_official(mini: Path) -> None:
    tables = evaluate_ref_davis_folder(mini / "davis", mini / "davis_results")
    for k in range(4):
        assert tables[f"anno_{k}"] == GOLDEN["davis"]["per_annotator"][f"anno_{k}"]
    assert tables["average"] == GOLDEN["davis"]["average"]
    one = evaluate_davis_unsupervised_folder(mini / "davis", mini / "davis_results" / "anno_1")
    assert {k: list(v) for k, v in one.per_object.items()} == GOLDEN["davis"]["per_object"]["anno_1"]
    # the object that appears only after the first frame (beta, label 3) is not scored, as officially
    assert sorted(one.per_object) == ["alpha_1", "alpha_2", "beta_1", "beta_2"]


def test_ref_davis_evaluator_from_expressions(mini: Path) -> None:
    """Per-expression masks -> ReferFormer's indexed PNG rule -> the same table as the official folders."""
    evaluator = RefDAVIS17Evaluator(mini / "davis")
    for seq in MINI_DAVIS_SEQS:
        for k in range(4):
            labels = np.stack([read_indexed_png(mini / "davis_results" / f"anno_{k}" / seq / f"{t:05d}.png")
                               for t in range(T)])
            for obj in range(int(labels.max())):
                sample = {"video": seq, "exp_id": str(obj * 4 + k), "annotator": k}
                evaluator.add_sample(sample, labels == obj + 1, None)
    assert evaluator.tables()["average"] == GOLDEN["davis"]["average"]
    summary = evaluator.summary()
    assert summary["J&F"] == 100 * GOLDEN["davis"]["average"]["J&F-Mean"]
    assert "anno_3" in evaluator.format_table()


def test_objects_to_labels_referformer_rule() -> None:
    probs = np.zeros((2, 1, 2, 3), np.float32)
    probs[0, 0] = [[0.9, 0.6, 0.4], [0.0, 0.7, 0.49]]
    probs[1, 0] = [[0.2, 0.8, 0.45], [0.55, 0.7, 0.0]]
    # below 0.5 -> 0, background 0.1, argmax (ties go to the first object)
    assert objects_to_labels(probs)[0].tolist() == [[1, 2, 0], [2, 1, 0]]
    masks = np.zeros((2, 1, 2, 2), bool)
    masks[0, 0, 0] = True
    masks[1, 0, :, 0] = True
    assert objects_to_labels(masks)[0].tolist() == [[1, 1], [2, 0]]


def test_davis_rejects_too_many_proposals(mini: Path) -> None:
    from lvseg.metrics import DAVISUnsupervised

    gt = np.zeros((1, 4, 4), np.uint8)
    gt[0, 0, 0] = 1
    pred = np.full((1, 4, 4), 21, np.uint8)
    with pytest.raises(InvalidInputError, match="20 proposals"):
        DAVISUnsupervised().add_sequence("x", gt, pred)


def test_mevis_folder_matches_official(mini: Path) -> None:
    evaluator = evaluate_mevis_folder(mini / "mevis_pred", mini / "mevis" / "meta_expressions.json",
                                      mini / "mevis" / "mask_dict.json")
    golden = GOLDEN["mevis"]
    assert {k: list(v) for k, v in evaluator.per_expression.items()} == golden["per_expression"]
    summary = evaluator.summary()
    assert summary["J"] == 100 * golden["J_raw"] and summary["F"] == 100 * golden["F_raw"]
    # what eval_mevis.py prints: round(100 * x, 2)
    assert [round(summary[k], 2) for k in ("J", "F", "J&F")] == [golden["J"], golden["F"], golden["J&F"]]
    assert "19.98" in evaluator.format_table()


def test_expression_jf_arrays_and_missing() -> None:
    gt = np.zeros((2, 10, 12), bool)
    gt[:, 2:6, 3:9] = True
    ev = ExpressionJF("Ref-YouTube-VOS")
    assert ev.add("v", "0", gt, gt) == (1.0, 1.0)
    ev.add_missing("v", "1")
    assert ev.summary() == {"J&F": 50.0, "J": 50.0, "F": 50.0}
    with pytest.raises(InvalidInputError, match="original resolution"):
        ev.add("v", "2", gt[:, :5], gt)
    with pytest.raises(InvalidInputError, match="no expression"):
        ExpressionJF().summary()


def test_submission_layout_and_zip(tmp_path: Path) -> None:
    masks = np.zeros((2, 6, 8), bool)
    masks[1, 2:4, 3:5] = True
    writer = SubmissionWriter(tmp_path / "out", "Ref-YouTube-VOS")
    writer.add_sample({"video": "vid1", "exp_id": "3", "frame_ids": ["00000", "00005"]}, masks, None)
    png = tmp_path / "out" / "Annotations" / "vid1" / "3" / "00005.png"
    with Image.open(png) as im:
        assert im.mode == "L" and im.size == (8, 6)
        assert sorted(np.unique(np.asarray(im)).tolist()) == [0, 255]
        assert (np.asarray(im) == 255).tolist() == masks[1].tolist()
    zip_path = writer.finalize()
    with zipfile.ZipFile(zip_path) as zf:
        assert sorted(zf.namelist()) == ["Annotations/vid1/3/00000.png", "Annotations/vid1/3/00005.png"]
    # MeViS submissions have the video folders at the top; rewriting an expression replaces it
    write_expression_pngs(tmp_path / "mevis", "v", "0", masks, ["00000", "00001"])
    write_expression_pngs(tmp_path / "mevis", "v", "0", masks[:1], ["00000"])
    assert sorted(p.name for p in (tmp_path / "mevis" / "v" / "0").iterdir()) == ["00000.png"]
    mz = make_submission_zip(tmp_path / "mevis", tmp_path / "mevis.zip", top_folder=None)
    with zipfile.ZipFile(mz) as zf:
        assert zf.namelist() == ["v/0/00000.png"]
    with pytest.raises(InvalidInputError, match="frame names"):
        write_expression_pngs(tmp_path / "x", "v", "0", masks, ["00000"])


def test_evaluate_on_lvseg_mevis_dataset_matches_official(tmp_path: Path) -> None:
    """lvseg.data.MeViS on the miniature valid_u split + lvseg.evaluate give eval_mevis.py's numbers."""
    import torch

    import lvseg
    from lvseg.data import MeViS

    split = tmp_path / "mevis" / "valid_u"
    write_mini_mevis(split, tmp_path / "pred", skip=())
    for vid, (n, h, w) in MEVIS_VIDEOS.items():
        for t in range(n):
            path = split / "JPEGImages" / vid / f"{t:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)

    def runner(sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
        vid, exp = sample["video"], sample["exp_id"]
        n, h, w = MEVIS_VIDEOS[vid]
        if (vid, exp) == ("vid_b", "5"):  # the expression with no prediction folder in the official run
            masks = np.zeros((n, h, w), bool)
        else:
            masks = np.stack([mini_mevis_pred(vid, exp, t, h, w) for t in range(n)])
        return torch.from_numpy(masks), torch.ones(n)

    result = lvseg.evaluate(None, MeViS(tmp_path / "mevis", "valid_u"), runner=runner, progress=False)
    golden = GOLDEN["mevis"]
    assert result["J"] == 100 * golden["J_raw"] and result["F"] == 100 * golden["F_raw"]
    assert round(result["J&F"], 2) == golden["J&F"]


def test_mevis_folder_missing_frame_is_a_clear_error(mini: Path, tmp_path: Path) -> None:
    import shutil

    from lvseg.errors import DatasetError

    pred = tmp_path / "pred"
    shutil.copytree(mini / "mevis_pred", pred)
    (pred / "vid_a" / "0" / "00003.png").unlink()
    with pytest.raises(DatasetError, match="00003.png"):
        evaluate_mevis_folder(pred, mini / "mevis" / "meta_expressions.json", mini / "mevis" / "mask_dict.json")


def test_ref_davis_incremental_labels_equal_referformer_argmax() -> None:
    """Objects added one at a time, in any order, give argmax([0.1, p_1, ...]) with p < 0.5 -> 0."""
    rng = np.random.default_rng(5)
    t_len, h, w = 2, 6, 7
    gt = np.zeros((t_len, h, w), np.uint8)
    gt[:, :3] = 1
    probs = rng.choice([0.0, 0.3, 0.5, 0.6, 0.6, 0.9, 1.0], size=(4, t_len, h, w)).astype(np.float32)
    expected = objects_to_labels(probs)
    for order in ([0, 1, 2, 3], [3, 1, 0, 2]):
        ev = RefDAVIS17Evaluator(annotators=1)
        ev.set_ground_truth("v", gt)
        for i in order:
            ev.add("v", i, 0, probs[i])
        assert ev._labels[0].tolist() == expected.tolist()
    masks = probs >= 0.5
    ev = RefDAVIS17Evaluator(annotators=1)
    ev.set_ground_truth("v", gt)
    for i in (2, 0, 3, 1):
        ev.add("v", i, 0, masks[i])
    assert ev._labels[0].tolist() == objects_to_labels(masks).tolist()


def test_ref_davis_videos_must_arrive_together() -> None:
    gt = np.zeros((1, 4, 4), np.uint8)
    gt[0, :2] = 1
    ev = RefDAVIS17Evaluator()
    ev.set_ground_truth("a", gt)
    ev.set_ground_truth("b", gt)
    ev.add("a", 0, 0, gt == 1)
    ev.add("b", 0, 0, gt == 1)
    with pytest.raises(InvalidInputError, match="together"):
        ev.add("a", 0, 1, gt == 1)
    with pytest.raises(InvalidInputError, match="original"):
        ev.add("b", 0, 1, np.zeros((1, 3, 3), bool))


def test_evaluate_on_lvseg_ref_davis_dataset_matches_official(tmp_path: Path) -> None:
    """lvseg.data.RefDAVIS17 on the miniature layout + lvseg.evaluate give the official per-annotator average."""
    import torch

    import lvseg
    from lvseg.data import RefDAVIS17

    write_mini_davis(tmp_path / "DAVIS", tmp_path / "unused_results")
    (tmp_path / "DAVIS" / "ImageSets" / "2017" / "train.txt").write_text("")
    # objects per annotator file, as the miniature predictions have them (annotator 2 has a third proposal,
    # annotator 3 only the second object, labelled 1)
    files = ["Davis17_annot1.txt", "Davis17_annot1_full_video.txt", "Davis17_annot2.txt",
             "Davis17_annot2_full_video.txt"]
    objects = [(1, 2), (1, 2), (1, 2, 3), (1,)]
    text_dir = tmp_path / "davis_text_annotations"
    text_dir.mkdir()
    for name, objs in zip(files, objects):
        lines = [f'{seq} {o} "object {o} of {seq}"' for seq in MINI_DAVIS_SEQS for o in objs]
        (text_dir / name).write_text("\n".join(lines) + "\n", encoding="latin-1")

    def runner(sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
        s = MINI_DAVIS_SEQS.index(sample["video"])
        k, a = int(sample["exp_id"]) // 4, sample["annotator"]
        masks = np.stack([mini_davis_pred(s, t, a) == k + 1 for t in range(T)])
        return torch.from_numpy(masks), torch.ones(T)

    dataset = RefDAVIS17(tmp_path, "valid")
    assert len(dataset) == 2 * (2 + 2 + 3 + 1)
    result = lvseg.evaluate(None, dataset, runner=runner, progress=False)
    average = GOLDEN["davis"]["average"]
    assert result["J&F"] == 100 * average["J&F-Mean"]
    assert result["J"] == 100 * average["J-Mean"] and result["F-Decay"] == 100 * average["F-Decay"]
