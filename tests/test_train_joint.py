"""ReferFormer's joint training (main_joint.py): the joint_data builder and the referformer-*-joint presets."""

from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from data_fixtures import save_png_rgb, write_json
from lvseg.errors import DatasetError

H, W = 48, 64
SIZE = 64
# (dataset, split_by, sentences (raw, sent) of its one train ref); one val ref each that must not be loaded
REFER = {
    "refcoco": ("unc", [("The Red Square.", "the red square"), ("red box!", "red box")]),
    "refcoco+": ("unc", [("Square, red.", "square red")]),
    "refcocog": ("umd", [("A red square.", "a red square"), ("The red thing", "the red thing"),
                         ("Red", "red")]),
}


@pytest.fixture(autouse=True)
def _reference_op(monkeypatch):
    monkeypatch.setenv("LVSEG_MSDA_BACKEND", "reference")


def write_refer(root: Path) -> None:
    """REFER's data/ layout with one image: a red square on blue; each dataset has one train and one val ref."""
    img = np.zeros((H, W, 3), dtype=np.uint8)
    img[:] = (30, 40, 200)
    img[12:36, 20:44] = (220, 30, 30)
    save_png_rgb(root / "images/mscoco/images/train2014/COCO_train2014_000000000001.jpg", img)
    for k, (name, (split_by, sents)) in enumerate(REFER.items()):
        refs = [{"ref_id": 10 * k, "ann_id": 10, "image_id": 1, "split": "train", "category_id": 1,
                 "sentences": [{"raw": raw, "sent": sent, "sent_id": 100 * k + i, "tokens": []}
                               for i, (raw, sent) in enumerate(sents)]},
                {"ref_id": 10 * k + 1, "ann_id": 11, "image_id": 1, "split": "val", "category_id": 1,
                 "sentences": [{"raw": "Blue.", "sent": "blue", "sent_id": 999, "tokens": []}]}]
        (root / name).mkdir(parents=True)
        with open(root / name / f"refs({split_by}).p", "wb") as fh:
            pickle.dump(refs, fh, protocol=2)
        write_json(root / name / "instances.json", {
            "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": H, "width": W}],
            "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [20, 12, 24, 24],
                             "segmentation": [[20, 12, 44, 12, 44, 36, 20, 36]]},
                            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 64, 12],
                             "segmentation": [[0, 0, 64, 0, 64, 12, 0, 12]]}],
            "categories": [{"id": 1, "name": "thing"}]})


@pytest.fixture(scope="module")
def joint_root(tmp_path_factory) -> Path:
    from lvseg.data import shapes

    root = tmp_path_factory.mktemp("joint")
    shapes.generate(root / "ref-youtube-vos", "train", num_videos=2, frames=6, size=SIZE, seed=0, progress=False)
    write_refer(root / "refer")
    return root


def _ytvos_len(root: Path) -> int:
    meta = json.loads((root / "ref-youtube-vos/meta_expressions/train/meta_expressions.json").read_text())
    return sum(len(v["expressions"]) for v in meta["videos"].values())


def test_joint_data_concatenates_refcoco_pseudo_videos_and_ytvos(joint_root: Path) -> None:
    from lvseg.data import PseudoVideo, RedrawInvisible, RefYouTubeVOS
    from lvseg.train.presets import joint_data

    train, val = joint_data(joint_root)
    assert val is None
    parts = train.datasets
    # official order: refcoco, refcoco+, refcocog pseudo-videos, then Ref-YouTube-VOS; each redraws invisible clips
    assert all(isinstance(p, RedrawInvisible) for p in parts)
    assert [type(p.dataset) for p in parts] == [PseudoVideo] * 3 + [RefYouTubeVOS]
    assert [p.dataset.dataset.dataset for p in parts[:3]] == list(REFER)
    assert [p.dataset.dataset.split_by for p in parts[:3]] == ["unc", "unc", "umd"]
    assert all(p.dataset.num_frames == 5 and p.dataset.dataset.split == "train" for p in parts[:3])
    assert parts[3].dataset.split == "train"
    # one sample per train sentence (the val refs are left out), then one per Ref-YouTube-VOS expression and
    # 5-frame clip start (official ytvos.py: range(0, 6 frames, 5) = 2 starts)
    assert [len(p) for p in parts[:3]] == [2, 1, 3]
    assert len(parts[3]) == 2 * _ytvos_len(joint_root)
    assert len(train) == 6 + 2 * _ytvos_len(joint_root)

    random.seed(0)
    torch.manual_seed(0)
    coco, video = train[0], train[len(train) - 1]
    for s in (coco, video):
        assert s["frames"].dtype == torch.float32 and s["frames"].ndim == 4 and s["frames"].shape[:2] == (5, 3)
        t, _, h, w = s["frames"].shape
        # official resize: short side one of the scales, long side <= 640
        assert min(h, w) in (288, 320, 352, 392, 416, 448, 480, 512) or max(h, w) == 640
        assert s["masks"].shape == (t, h, w) and s["object_masks"].shape == (1, t, h, w)
        assert s["boxes"].shape == (t, 4) and s["valid"].shape == (t,) and bool(s["valid"].any())
        assert isinstance(s["text"], str)
    shared = {"frames", "masks", "object_masks", "boxes", "valid", "annotated", "text", "orig_size"}
    assert shared <= coco.keys() and shared <= video.keys()
    # the pseudo-video text is REFER's normalised sentence, as in the official converted annotations
    assert coco["text"] == "the red square"
    assert sorted(coco["frame_order"].tolist()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("remove", ["ref-youtube-vos", "refer/refcocog", "refer/images"])
def test_joint_data_names_the_missing_folder_and_the_layout(joint_root: Path, tmp_path: Path, remove: str) -> None:
    from lvseg.train.presets import joint_data

    root = tmp_path / "root"
    shutil.copytree(joint_root, root)
    shutil.rmtree(root / remove)
    with pytest.raises(DatasetError) as err:
        joint_data(root)
    msg = str(err.value)
    assert remove in msg and "<root>/ref-youtube-vos/" in msg and "<root>/refer/" in msg
    assert "refs(umd).p" in msg and "train2014" in msg


def test_joint_presets_hold_the_official_recipe() -> None:
    from lvseg.registry import get_entry
    from lvseg.train.engine import TrainConfig
    from lvseg.train.presets import get_preset, joint_data

    # scripts/dist_joint_train_ytvos.sh + opts.py defaults (wjn922/ReferFormer 06fc218)
    official = dict(lr=1e-4, lr_backbone=5e-5, lr_text_encoder=1e-5, weight_decay=5e-4, clip_max_norm=0.1,
                    batch_size=1, epochs=12, lr_drops=(8, 10), freeze_text_encoder=True, seed=42)
    for backbone, checkpointing in (("r50", False), ("swin-l", True), ("video-swin-b", True)):
        preset = get_preset(f"referformer-{backbone}-joint")
        assert preset.family == "referformer" and preset.data is joint_data
        assert preset.model == f"referformer-{backbone}.joint"
        assert get_entry(preset.model).family == "referformer"
        train = dict(preset.train)
        assert train.pop("gradient_checkpointing", False) is checkpointing
        assert train == official
        config = TrainConfig(**preset.train)
        assert config.epochs == 12 and tuple(config.lr_drops) == (8, 10) and config.freeze_text_encoder


def test_train_two_steps_on_the_joint_preset_data(joint_root: Path, tmp_path: Path) -> None:
    import lvseg
    from lvseg.models.referformer.model import ReferFormer
    from lvseg.train.presets import joint_data, shapes_tiny_config, shapes_tokenizer

    tok = shapes_tokenizer()
    torch.manual_seed(0)
    model = ReferFormer(shapes_tiny_config(len(tok), size=SIZE), tokenizer=tok)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = lvseg.train(model, output_dir=tmp_path / "run", preset="referformer-r50-joint",
                             data_root=joint_root, max_steps=2, log_every=1, progress=False, tensorboard=False,
                             num_workers=0)
        # the pseudo-video parts alone, given as a list of datasets, so that a RefCOCO clip is surely trained on
        pseudo = lvseg.train(model, list(joint_data(joint_root)[0].datasets[:3]), None, tmp_path / "pseudo",
                             max_steps=1, log_every=1, progress=False, tensorboard=False)
    finally:
        torch.set_num_threads(threads)
    assert result.steps == 2 and pseudo.steps == 1
    for run, steps in (("run", 2), ("pseudo", 1)):
        records = [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in records if r["kind"] == "train"]
        assert len(losses) == steps and all(np.isfinite(v) and v > 0 for v in losses)
