"""LAVT video training presets (LAVT-RS ``train.py --model lavt_video``): the clip samplers against independent
re-statements of the official rules (Yxxxb/LAVT-RS c464cf8 ``data/a2d.py`` / ``data/ytvos.py`` training branches),
the three presets' recipes and data, a few ``lvseg.train`` steps on a tiny model and the loss on a fixed batch."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_a2d_jhmdb import N_FRAMES, _write_h5, write_a2d
from test_data_ytvos import write_ytvos
from test_lavt_video import small_config, tokenizer
from test_train_joint import REFER, write_refer

from lvseg.data import A2DSentences, ClipSampling, RedrawInvisible, RefYouTubeVOS
from lvseg.errors import DatasetError, InvalidInputError

SIZE = 64  # frames of the tiny runs (the presets' own size is 480; small_config's image_size)


# ------------------------------------------------------------------------------------------------ official rules
def official_a2d_clip(frame_id: int, vid_len: int, num_frames: int) -> tuple[list[int], int]:
    """LAVT-RS data/a2d.py, subset 'train', re-stated: (frames read, valid_indices), drawing from ``random``."""
    before, after = random.randint(1, 3), random.randint(1, 3)
    chosen = [frame_id, max(0, frame_id - before), min(vid_len - 1, frame_id + after)]
    if num_frames > 3:
        every = list(range(vid_len))
        outside = every[: min(chosen)] + every[max(chosen):]
        extra = num_frames - len(chosen)
        if len(outside) > extra:
            chosen += [outside[i] for i in random.sample(range(len(outside)), extra)]
        elif vid_len >= extra:
            chosen += random.sample(range(vid_len), extra)
        else:
            chosen += random.sample(range(vid_len), extra - vid_len) + every
    chosen.sort()
    return chosen[:num_frames], chosen.index(frame_id)  # only the first num_frames are read


def official_ytvos_clip(frame_id: int, vid_len: int, num_frames: int) -> list[int]:
    """LAVT-RS data/ytvos.py re-stated (the branches a video at least ``num_frames - 3`` frames long reaches)."""
    chosen = [frame_id]
    if num_frames != 1:
        before, after = random.randint(1, 3), random.randint(1, 3)
        chosen += [max(0, frame_id - before), min(vid_len - 1, frame_id + after)]
        if num_frames > 3:
            every = list(range(vid_len))
            outside = every[: min(chosen)] + every[max(chosen):]
            extra = num_frames - len(chosen)
            assert vid_len >= extra, "the short-video branch differs (see docs/models/lavt.md)"
            if len(outside) > extra:
                chosen += [outside[i] for i in random.sample(range(len(outside)), extra)]
            else:
                chosen += random.sample(range(vid_len), extra)
    chosen.sort()
    return chosen[:num_frames]


def a2d_root(root: Path) -> Path:
    """The A2D fixture with every video in the train subset (6 training samples at frames 1, 2, 5, 6 and 10)."""
    write_a2d(root)
    csv = root / "Release/videoset.csv"
    csv.write_text("".join(line.rsplit(",", 1)[0] + ",0\n" for line in csv.read_text().splitlines()))
    return root


@pytest.mark.parametrize("num_frames", [2, 3, 5, 12, 16])
def test_a2d_training_clip_is_the_official_draw(tmp_path: Path, num_frames: int) -> None:
    ds = A2DSentences(a2d_root(tmp_path), "train", sampling=ClipSampling(num_frames=num_frames, mode="referformer"))
    assert len(ds) == 6 and ds.num_frames == num_frames
    positions = set()
    for index, (_, _, frame_idx, _) in enumerate(ds.samples):
        for seed in range(6):
            random.seed(seed)
            sample = ds[index]
            random.seed(seed)
            indices, valid = official_a2d_clip(frame_idx - 1, N_FRAMES, num_frames)
            assert sample["frame_indices"].tolist() == indices, (frame_idx, seed)
            assert sample["center_index"] == valid and sample["annotated"].tolist() == [
                i == valid for i in range(num_frames)
            ]
            assert sample["masks"].flatten(1).any(1).tolist() == [i == valid for i in range(num_frames)]
            positions.add(valid)
            # the frames read are the sampled ones (the fixture's frame t has grey level 20 t)
            grey = sample["frames"][:, 16, 24, 0].to(torch.int64)
            assert (grey - 20 * sample["frame_indices"]).abs().max() <= 6
    assert len(positions) > 1  # the annotated frame moves within the clip


def test_a2d_one_frame_clip_is_the_annotated_frame(tmp_path: Path) -> None:
    """With --num_frames 1 the official loader reads the first of the three sorted frames (the one before the
    annotated frame) and reports the annotated frame's position in the three (1): the training loop's
    index_select then points past its one-frame clips. lvseg's one-frame clip is the annotated frame."""
    ds = A2DSentences(a2d_root(tmp_path), "train", sampling=ClipSampling(num_frames=1, mode="referformer"))
    index = next(i for i, s in enumerate(ds.samples) if s[2] == 6)
    sample = ds[index]
    assert sample["frame_indices"].tolist() == [5] and sample["center_index"] == 0 and sample["masks"][0].any()
    random.seed(0)
    read, valid = official_a2d_clip(5, N_FRAMES, 1)
    assert read[0] < 5 and valid == 1


def test_a2d_sampling_checks(tmp_path: Path) -> None:
    root = a2d_root(tmp_path)
    with pytest.raises(InvalidInputError, match="num_frames set"):
        A2DSentences(root, "train", sampling=ClipSampling())
    centred = A2DSentences(root, "train", num_frames=4)  # the default stays MTTR's centred window
    assert centred.sampling is None and centred[0]["frame_indices"].tolist() == [0, 0, 1, 2]
    # an annotation past the video's last frame names the mismatch
    _write_h5(root / "text_annotations/a2d_annotation_with_instances/vidC/00020.h5", [1], 20)
    ds = A2DSentences(root, "train", sampling=ClipSampling(num_frames=3, mode="referformer"))
    with pytest.raises(DatasetError, match="annotated frame 20 is beyond the video's 12 frames"):
        ds[next(i for i, s in enumerate(ds.samples) if s[2] == 20)]


@pytest.mark.parametrize("num_frames", [1, 2, 3, 5])
def test_ytvos_training_clip_is_the_official_draw(tmp_path: Path, num_frames: int) -> None:
    write_ytvos(tmp_path)
    ds = RefYouTubeVOS(tmp_path, "train", sampling=ClipSampling(num_frames=num_frames, mode="referformer"))
    meta = json.loads((tmp_path / "meta_expressions/train/meta_expressions.json").read_text())["videos"]
    # one sample per (video, expression, anchor), anchors every num_frames frames of the sorted frame list
    expected = [(v, e, a) for v, entry in meta.items() for e in entry["expressions"]
                for a in range(0, len(entry["frames"]), num_frames)]
    assert sorted(ds.samples) == sorted(expected)
    for index, (vid, _, anchor) in enumerate(ds.samples):
        for seed in range(6):
            random.seed(seed)
            got = ds[index]["frame_indices"].tolist()
            random.seed(seed)
            assert got == official_ytvos_clip(anchor, len(meta[vid]["frames"]), num_frames), (vid, anchor, seed)


# ------------------------------------------------------------------------------------------------ presets
def test_presets_hold_the_official_recipes() -> None:
    from lvseg.registry import get_entry
    from lvseg.train import presets
    from lvseg.train.engine import TrainConfig

    # LAVT-RS train.py: AdamW, wd 1e-2 (none on backbone norms / position tables), BERT layers 0-9 only, poly 0.9
    shared = dict(weight_decay=1e-2, lr_schedule="poly", poly_power=0.9, clip_max_norm=0.0,
                  no_decay_keywords=("norm", "absolute_pos_embed", "relative_position_bias_table"),
                  frozen_parameters=(r"text_encoder\.embeddings\.", r"text_encoder\.encoder\.layer\.(10|11)\."))
    expected = {  # README commands (a2d, ytvos) and args.py defaults (pre-training)
        "lavt-video-swin-t-a2d": (6e-5, 4, 40, presets.lavt_video_a2d_data),
        "lavt-video-swin-t-ytvos": (5e-5, 1, 30, presets.lavt_video_ytvos_data),
        "lavt-video-swin-t-refcoco-pretrain": (5e-5, 8, 40, presets.lavt_video_refcoco_pretrain_data),
    }
    for name, (lr, batch, epochs, data) in expected.items():
        preset = presets.get_preset(name)
        assert preset.family == "lavt_video" and preset.data is data
        assert get_entry(str(preset.model)).name == "lavt-video-swin-t.refcoco-pretrain"
        assert preset.train == dict(shared, lr=lr, lr_backbone=lr, lr_text_encoder=lr, batch_size=batch,
                                    epochs=epochs)
        config = TrainConfig(**preset.train)
        assert config.precision == "fp32" and config.optimizer == "adamw" and not config.freeze_text_encoder


def test_param_groups_are_the_official_ones() -> None:
    """Official groups: backbone (fusion and gates included) with decay except names holding norm /
    absolute_pos_embed / relative_position_bias_table, the classifier with decay, BERT encoder layers 0-9 with
    decay; BERT's embeddings and layers 10-11 are not optimised."""
    from lvseg.models.lavt.video import LAVTVideo
    from lvseg.train.engine import TrainConfig, _param_groups
    from lvseg.train.presets import get_preset

    config = small_config()
    config = dataclasses.replace(config, text_encoder=dict(config.text_encoder, num_hidden_layers=12))
    model = LAVTVideo(config, tokenizer=tokenizer())
    groups = _param_groups(model, TrainConfig(**get_preset("lavt-video-swin-t-a2d").train))
    names = {id(p): n for n, p in model.named_parameters()}
    plain = {names[id(p)] for g in groups if g.get("weight_decay") == 0.0 for p in g["params"]}
    trained = {names[id(p)] for g in groups for p in g["params"]}
    assert {g["lr"] for g in groups} == {6e-5}
    official_plain = {n for n in names.values() if n.startswith("backbone.")
                      and re.search(r"norm|relative_position_bias_table", n)}
    assert plain == official_plain and any("out_norms" in n for n in plain)
    official_trained = {n for n in names.values() if not n.startswith("text_encoder.")
                        or re.match(r"text_encoder\.encoder\.layer\.\d\.", n)}
    assert trained == official_trained
    assert any(n.startswith("fusions.") for n in trained)
    assert "text_encoder.encoder.layer.9.output.dense.weight" in trained
    assert "text_encoder.encoder.layer.10.output.dense.weight" not in trained


def test_a2d_and_ytvos_preset_data(tmp_path: Path) -> None:
    from lvseg.train.presets import LAVT_VIDEO_FRAMES, lavt_video_a2d_data, lavt_video_ytvos_data

    assert LAVT_VIDEO_FRAMES == 3
    train, val = lavt_video_a2d_data(a2d_root(tmp_path / "a2d"))
    assert val is None and isinstance(train, RedrawInvisible)
    assert train.dataset.sampling == ClipSampling(num_frames=3, mode="referformer")
    sample = train[0]
    assert sample["frames"].shape == (3, 3, 480, 480) and sample["frames"].dtype == torch.float32
    assert sample["masks"].shape == (3, 480, 480) and sample["annotated"].sum() == 1
    assert abs(float(sample["frames"].mean())) < 3  # normalised
    write_ytvos(tmp_path / "ytvos")
    train, val = lavt_video_ytvos_data(tmp_path / "ytvos", num_frames=2, size=SIZE)
    assert val is None and train.dataset.sampling == ClipSampling(num_frames=2, mode="referformer")
    sample = train[0]
    assert sample["frames"].shape == (2, 3, SIZE, SIZE) and bool(sample["annotated"].all())
    # an image LAVT model is refused by the video presets, with the reason
    import lvseg
    from lvseg.errors import ConfigError
    from lvseg.train.presets import build_lavt_shapes_tiny

    with pytest.raises(ConfigError, match="trains the 'lavt_video' family but the model is a 'lavt'"):
        lvseg.train(build_lavt_shapes_tiny(), train, None, tmp_path / "run", preset="lavt-video-swin-t-ytvos")


def test_refcoco_pretrain_data_duplicates_each_image(tmp_path: Path) -> None:
    from lvseg.train.presets import lavt_video_refcoco_pretrain_data

    write_refer(tmp_path)
    train, val = lavt_video_refcoco_pretrain_data(tmp_path, num_frames=4, size=SIZE)
    assert val is None
    raws = [raw for _, sents in REFER.values() for raw, _ in sents]
    assert len(train) == len(raws)
    for i, raw in enumerate(raws):  # RefCOCO, RefCOCO+, RefCOCOg (umd) in order, raw sentences
        sample = train[i]
        assert sample["text"] == raw
        frames, masks = sample["frames"], sample["masks"]
        assert frames.shape == (4, 3, SIZE, SIZE) and masks.shape == (4, SIZE, SIZE)
        assert all(torch.equal(frames[0], f) for f in frames) and all(torch.equal(masks[0], m) for m in masks)
        # the red square (rows 12-35, columns 20-43 of 48x64) resized to 64x64
        assert masks[0, 16:48, 20:44].all() and not masks[0, :14].any() and not masks[0, :, :18].any()


# ------------------------------------------------------------------------------------------------ training
def test_a_few_training_steps_on_each_preset(tmp_path: Path) -> None:
    import lvseg
    from lvseg.models.lavt.video import LAVTVideo
    from lvseg.train.presets import (
        lavt_video_a2d_data,
        lavt_video_refcoco_pretrain_data,
        lavt_video_ytvos_data,
    )

    write_ytvos(tmp_path / "ytvos")
    write_refer(tmp_path / "refer")
    data = {
        "lavt-video-swin-t-a2d": lavt_video_a2d_data(a2d_root(tmp_path / "a2d"), size=SIZE)[0],
        "lavt-video-swin-t-ytvos": lavt_video_ytvos_data(tmp_path / "ytvos", size=SIZE)[0],
        "lavt-video-swin-t-refcoco-pretrain": lavt_video_refcoco_pretrain_data(tmp_path / "refer", size=SIZE)[0],
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, train_data in data.items():
            torch.manual_seed(0)
            model = LAVTVideo(small_config(), tokenizer=tokenizer())
            out = tmp_path / name
            result = lvseg.train(model, train_data, None, out, preset=name, batch_size=2, max_steps=2, log_every=1,
                                 progress=False, tensorboard=False)
            assert result.steps == 2 and result.final_checkpoint is not None
            records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
            train = [r for r in records if r["kind"] == "train"]
            assert len(train) == 2 and all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in train)
            lr = {"lavt-video-swin-t-a2d": 6e-5}.get(name, 5e-5)
            assert lr >= train[0]["lr"] > train[1]["lr"] > 0  # poly decay per iteration
            assert isinstance(lvseg.load(str(result.final_checkpoint)), LAVTVideo)
    finally:
        torch.set_num_threads(threads)


def test_loss_decreases_on_a_fixed_a2d_batch(tmp_path: Path) -> None:
    """The preset's objective (weighted CE on the annotated frame of each clip) and optimizer groups, at a
    larger learning rate, fit one fixed batch of the A2D preset data."""
    from lvseg.data.collate import collate_clips
    from lvseg.models.lavt.video import LAVTVideo
    from lvseg.train.engine import TrainConfig, _param_groups, prepare_frames
    from lvseg.train.objectives import make_objective
    from lvseg.train.presets import get_preset, lavt_video_a2d_data

    train, _ = lavt_video_a2d_data(a2d_root(tmp_path), size=SIZE)
    random.seed(0)
    batch = collate_clips([train[0], train[3]])
    torch.manual_seed(0)
    model = LAVTVideo(small_config(), tokenizer=tokenizer()).train()
    objective = make_objective("lavt_video")
    kwargs, targets = objective.prepare(batch, torch.device("cpu"))
    labels = targets[0]
    assert kwargs == {} and labels.shape == (2, 3, SIZE, SIZE)
    assert ((labels != -100).flatten(2).all(2) == batch["annotated"]).all()  # only the annotated frame counts
    config = TrainConfig(**dict(get_preset("lavt-video-swin-t-a2d").train, lr=3e-4, lr_backbone=3e-4,
                                lr_text_encoder=3e-4))
    optimizer = torch.optim.AdamW(_param_groups(model, config), lr=3e-4, weight_decay=config.weight_decay)
    frames = prepare_frames(batch["frames"], model, torch.device("cpu"))
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(12):
            loss = objective.criterion(model(frames, list(batch["text"])), targets)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert losses[-1] < 0.6 * losses[0], losses
