"""Stage 1 of the embedded Shapes model: attribute labels, the backbone pre-training and the preset hook."""

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from lvseg.errors import ConfigError, DatasetError

SIZE = 64


@pytest.fixture(autouse=True)
def _reference_op(monkeypatch):
    monkeypatch.setenv("LVSEG_MSDA_BACKEND", "reference")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from lvseg.data import shapes

    root = tmp_path_factory.mktemp("shapes_pretrain") / "shapes"
    shapes.generate(root, "train", num_videos=4, frames=4, size=SIZE, seed=3, progress=False)
    shapes.generate(root, "valid", num_videos=1, frames=4, size=SIZE, seed=3, progress=False)
    return root


def _expected(root, video, frame_names, flip=False):
    """Labels written independently from the generator's record and the annotation PNGs."""
    from lvseg.train.shapes_pretrain import ATTRIBUTES

    objects = json.loads((root / "shapes_info" / "train.json").read_text())["videos"][video]["objects"]
    ids = np.stack([np.asarray(Image.open(root / "train" / "Annotations" / video / f"{n}.png")) for n in frame_names])
    out = np.zeros((len(ATTRIBUTES),) + ids.shape, dtype=np.int64)
    for a, (attr, classes) in enumerate(ATTRIBUTES.items()):
        for oid, obj in objects.items():
            value = obj[attr]
            if flip and attr == "motion":
                value = {"left": "right", "right": "left"}.get(value, value)
            out[a][ids == int(oid)] = classes.index(value) + 1
    if flip:
        out, ids = out[..., ::-1], ids[..., ::-1]
    return out, ids


def test_labels_are_the_drawn_objects_attributes(root):
    from lvseg.train.shapes_pretrain import ShapesAttributeClips

    ds = ShapesAttributeClips(root, "train", num_frames=4, flip=False)
    assert len(ds) == 4
    for i in range(len(ds)):
        item = ds[i]
        expected, ids = _expected(root, ds.videos[i], ["00000", "00005", "00010", "00015"])
        assert item["frames"].shape == (4, SIZE, SIZE, 3) and item["frames"].dtype == torch.uint8
        assert np.array_equal(item["labels"].numpy(), expected)
        assert np.array_equal(item["ids"].numpy(), ids)
        assert (item["labels"][:, item["ids"] == 0] == 0).all() and (item["labels"][:, item["ids"] > 0] > 0).all()


def test_flip_mirrors_frames_and_labels_and_swaps_left_and_right(root):
    from lvseg.train.shapes_pretrain import ShapesAttributeClips

    plain = ShapesAttributeClips(root, "train", num_frames=4, flip=False)
    flipping = ShapesAttributeClips(root, "train", num_frames=4, flip=True)
    seen = set()
    for seed in range(20):
        random.seed(seed)
        item = flipping[0]
        flipped = not torch.equal(item["frames"], plain[0]["frames"])
        expected, _ = _expected(root, plain.videos[0], ["00000", "00005", "00010", "00015"], flip=flipped)
        assert np.array_equal(item["labels"].numpy(), expected)
        if flipped:
            assert torch.equal(item["frames"], plain[0]["frames"].flip(2))
        seen.add(flipped)
    assert seen == {True, False}


def test_resized_clips_keep_labels_nearest(root):
    from lvseg.train.shapes_pretrain import ShapesAttributeClips

    random.seed(0)
    item = ShapesAttributeClips(root, "train", num_frames=2, size=2 * SIZE, flip=False)[1]
    assert item["frames"].shape == (2, 2 * SIZE, 2 * SIZE, 3)
    assert item["labels"].shape == (4, 2, 2 * SIZE, 2 * SIZE)
    small = ShapesAttributeClips(root, "train", num_frames=4, flip=False)[1]["labels"]
    # every label value of the upscaled clip exists in the original (nearest, no blending of classes)
    assert set(item["labels"].unique().tolist()) <= set(small.unique().tolist())


def test_pretraining_trains_only_the_backbone_and_learns(root):
    from lvseg.train.presets import build_shapes_tiny
    from lvseg.train.shapes_pretrain import pretrain_backbone_on_shapes

    torch.manual_seed(0)
    model = build_shapes_tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record = pretrain_backbone_on_shapes(model, root, steps=40, batch_size=2, lr=3e-3, seed=0, progress=False)
    assert record["steps"] == 40 and record["objective"] == "pixel"
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("backbone.") for k in changed)
    assert any("temporal" in k for k in changed)  # the temporal mixing layers (motion) are trained too
    # colour is learned within a few dozen steps on object pixels (chance: 1/6)
    assert record["accuracy"]["color"]["stride4"] > 0.5
    assert set(record["accuracy"]["shape"]) == {"stride4", "stride8", "stride16", "stride32"}


def test_object_objective_and_deterministic_runs(root):
    from lvseg.train.presets import build_shapes_tiny
    from lvseg.train.shapes_pretrain import pretrain_backbone_on_shapes

    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_shapes_tiny()
        record = pretrain_backbone_on_shapes(model, root, steps=3, batch_size=2, objective="object", progress=False)
        weights.append(model.backbone.state_dict())
    assert record["objective"] == "object" and np.isfinite(record["loss"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_bad_inputs_raise_clear_errors(root, tmp_path):
    from lvseg.train.presets import build_shapes_tiny
    from lvseg.train.shapes_pretrain import ShapesAttributeClips, pretrain_backbone_on_shapes

    with pytest.raises(DatasetError, match="generate it with"):
        ShapesAttributeClips(tmp_path, "train")
    with pytest.raises(DatasetError, match="annotations"):
        ShapesAttributeClips(root, "valid")  # valid has no Annotations (like Ref-YouTube-VOS)
    with pytest.raises(ConfigError, match="num_frames"):
        ShapesAttributeClips(root, "train", num_frames=9)
    model = build_shapes_tiny()
    with pytest.raises(ConfigError, match="objective"):
        pretrain_backbone_on_shapes(model, root, steps=1, objective="box")
    with pytest.raises(ConfigError, match="steps"):
        pretrain_backbone_on_shapes(model, root, steps=0)
    with pytest.raises(ConfigError, match="backbone"):
        pretrain_backbone_on_shapes(torch.nn.Linear(2, 2), root, steps=1)


def test_the_preset_runs_its_stage_on_fresh_runs_only(root, tmp_path):
    import lvseg
    from lvseg.train.api import main_cli

    out = tmp_path / "run"
    args = ["--preset", "referformer-tiny-shapes", "--data-root", str(root), "-o", str(out), "--max-steps", "1",
            "--eval-max-samples", "1", "--no-progress", "--device", "cpu", "--prepare-steps", "2"]
    assert main_cli(args) == 0
    record = json.loads((out / "prepare.json").read_text())
    assert record["preset"] == "referformer-tiny-shapes" and record["steps"] == 2
    stamp = (out / "prepare.json").stat().st_mtime_ns
    args[args.index("--max-steps") + 1] = "2"
    assert main_cli(args + ["--resume"]) == 0  # the checkpoint holds the pre-trained backbone: no second stage
    assert (out / "prepare.json").stat().st_mtime_ns == stamp
    # prepare_steps=0 skips it; a preset model trained on explicit data without data_root is refused
    skipped = tmp_path / "skipped"
    assert main_cli(args[:args.index("-o") + 1] + [str(skipped)] + args[args.index("-o") + 2:-2]
                    + ["--prepare-steps", "0"]) == 0
    assert not (skipped / "prepare.json").exists()
    from lvseg.train.presets import get_preset, shapes_data

    train_ds, _ = shapes_data(root)
    with pytest.raises(ConfigError, match="data_root"):
        lvseg.train(get_preset("referformer-tiny-shapes").model, train_ds, None, tmp_path / "x",
                    preset="referformer-tiny-shapes", max_steps=1, progress=False, device="cpu")
    # ... unless the stage is skipped, which needs no data root
    result = lvseg.train(get_preset("referformer-tiny-shapes").model, train_ds, None, tmp_path / "y",
                         preset="referformer-tiny-shapes", max_steps=1, prepare_steps=0, progress=False, device="cpu")
    assert result.steps == 1 and not (tmp_path / "y" / "prepare.json").exists()


def test_locater_vit_pretraining(root):
    """The tiny Locater's ViT gets the same stage: its patch tokens as one map (a patch covers 8 frame pixels at
    image_size = 2 x frame size), shape / colour / size only (a per-frame ViT cannot see motion), nothing but the
    ViT trained."""
    from lvseg.train.presets import build_locater_shapes_tiny
    from lvseg.train.shapes_pretrain import pretrain_backbone_on_shapes

    torch.manual_seed(0)
    model = build_locater_shapes_tiny(SIZE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record = pretrain_backbone_on_shapes(model, root, steps=30, batch_size=2, lr=3e-3, seed=0, progress=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("vision_encoder.") for k in changed)
    assert "vision_encoder.patch_embed.proj.weight" in changed
    assert set(record["accuracy"]) == {"shape", "color", "size"}
    assert all(set(acc) == {"stride8"} for acc in record["accuracy"].values())
    assert record["accuracy"]["color"]["stride8"] > 0.5  # chance: 1/6
