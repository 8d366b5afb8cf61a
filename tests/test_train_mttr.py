"""MTTR training: matcher and loss values against the official code, targets from batches (Shapes / A2D /
Ref-YouTube-VOS windows with every object), a few optimisation steps through the trainer's code path, lvseg.train
end to end, the A2D and Ref-YouTube-VOS presets, and clear errors.

Golden values were computed with the official matcher and criterion (mttr2021/MTTR at commit
2cc35ab96f331957b48dfe1d40048ca4cf1e32eb, models/matcher.py and models/criterion.py, float32 on CPU; their
``misc.interpolate`` replaced by ``torch.nn.functional.interpolate``, which it wraps) on the inputs that
``_wave``/``_box_masks`` build below. Over 30 further random cases (1-3 frames, 1-4 instances, with and without
visibility flags) lvseg gave the same matches and losses within 2.4e-7 relative.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from lvseg.errors import ConfigError, InvalidInputError
from lvseg.train.losses import MTTRCriterion, MTTRLossWeights
from lvseg.train.matcher import MTTRMatcher, MTTRTarget

TOKENIZER_DIR = Path(__file__).resolve().parent / "fixtures" / "referformer" / "tokenizer"
SIZE = 64


# ------------------------------------------------------------------------------------ hand-built cases
def _wave(shape, a, b):
    n = math.prod(shape)
    return (a * torch.sin(torch.arange(n, dtype=torch.float32) * b + 0.3)).reshape(shape)


def _outputs(b, t, q, h, w, layers=3):
    out = {"pred_masks": _wave((b, t, q, h, w), 4.0, 0.37), "pred_is_referred": _wave((b, t, q, 2), 2.0, 1.13)}
    out["aux_outputs"] = [{"pred_masks": _wave((b, t, q, h, w), 3.0, 0.51 + 0.1 * k),
                           "pred_is_referred": _wave((b, t, q, 2), 1.5, 0.71 + 0.2 * k)} for k in range(layers - 1)]
    return out


def _box_masks(t, h, w, boxes):
    """boxes[i][f] = (y0, y1, x0, x1) of instance i in frame f -> bool [n, t, h, w]."""
    m = torch.zeros(len(boxes), t, h, w, dtype=torch.bool)
    for i, per_frame in enumerate(boxes):
        for f, (y0, y1, x0, x1) in enumerate(per_frame):
            m[i, f, y0:y1, x0:x1] = True
    return m


def _case_ytvos():
    """2 clips x 2 frames, 4 queries, 2x3 logits vs 8x12 masks; clip 0 refers to instance 1, hidden in frame 1."""
    masks = [_box_masks(2, 8, 12, [[(0, 4, 0, 6), (1, 5, 0, 6)], [(4, 8, 6, 12), (0, 0, 0, 0)]]),
             _box_masks(2, 8, 12, [[(2, 6, 3, 9), (2, 7, 4, 10)]])]
    targets = [MTTRTarget(masks[0], 1, torch.tensor([True, False])),
               MTTRTarget(masks[1], 0, torch.tensor([True, True]))]
    return _outputs(2, 2, 4, 2, 3), targets


def _case_a2d():
    """2 clips x 1 decoded frame; 3 instances (the third referred) and 1; no visibility flags (A2D)."""
    masks = [_box_masks(1, 8, 12, [[(0, 3, 0, 4)], [(3, 8, 2, 7)], [(1, 6, 8, 12)]]),
             _box_masks(1, 8, 12, [[(0, 8, 0, 5)]])]
    return _outputs(2, 1, 4, 2, 3), [MTTRTarget(masks[0], 2), MTTRTarget(masks[1], 0)]


# official values (weighted: is_referred x2, sigmoid focal x2, dice x5; _0/_1 = auxiliary decoder layers)
GOLDEN_YTVOS = {
    "loss_is_referred": 3.0957665, "loss_sigmoid_focal": 1.8089186, "loss_dice": 3.1803885,
    "loss_is_referred_0": 1.7385306, "loss_sigmoid_focal_0": 1.8086666, "loss_dice_0": 3.3233023,
    "loss_is_referred_1": 1.5132506, "loss_sigmoid_focal_1": 0.988924, "loss_dice_1": 3.0558825,
    "loss": 20.5136302,
}
GOLDEN_A2D = {
    "loss_is_referred": 2.0084519, "loss_sigmoid_focal": 2.2228487, "loss_dice": 2.6954466,
    "loss_is_referred_0": 1.0091301, "loss_sigmoid_focal_0": 1.298597, "loss_dice_0": 2.932207,
    "loss_is_referred_1": 0.8516823, "loss_sigmoid_focal_1": 0.8313658, "loss_dice_1": 2.9853064,
    "loss": 16.8350357,
}
# the official matcher's cost matrix of clip 0 of the Ref-YouTube-VOS case ([query, instance])
GOLDEN_COST_YTVOS_CLIP0 = [[-2.973088, -1.490731], [-2.869283, -1.98868], [-2.31651, -2.105401],
                           [-2.514566, -1.879799]]


def test_matcher_costs_and_matches_equal_the_official_ones():
    out, targets = _case_ytvos()
    matcher = MTTRMatcher()
    cost = matcher.cost_matrix(out["pred_is_referred"][0], out["pred_masks"][0], targets[0])
    assert torch.allclose(cost, torch.tensor(GOLDEN_COST_YTVOS_CLIP0), atol=2e-6)
    got = [(q.tolist(), j.tolist()) for q, j in matcher(out, targets)]
    assert got == [([0, 2], [0, 1]), ([0], [0])]
    out, targets = _case_a2d()
    got = [(q.tolist(), j.tolist()) for q, j in matcher(out, targets)]
    assert got == [([0, 1, 3], [1, 0, 2]), ([2], [0])]
    # every decoder layer is matched on its own: the first auxiliary layer picks other queries here
    aux = [(q.tolist(), j.tolist()) for q, j in matcher(out["aux_outputs"][0], targets)]
    assert aux != got


@pytest.mark.parametrize("case, golden", [(_case_ytvos, GOLDEN_YTVOS), (_case_a2d, GOLDEN_A2D)])
def test_losses_equal_the_official_ones(case, golden):
    out, targets = case()
    losses = MTTRCriterion()(out, targets)
    assert set(losses) == set(golden)
    for name, value in golden.items():
        assert losses[name].item() == pytest.approx(value, rel=2e-6, abs=1e-6), name
    # the loss normaliser of masks is the number of instance-frames: 2*2 + 1*2 here, or what DDP passes
    assert MTTRCriterion.count_masks(targets) == (6.0 if case is _case_ytvos else 4.0)
    doubled = MTTRCriterion()(out, targets, num_masks=2 * MTTRCriterion.count_masks(targets))
    assert doubled["loss_dice"].item() == pytest.approx(golden["loss_dice"] / 2, rel=2e-6)
    assert doubled["loss_is_referred"].item() == pytest.approx(golden["loss_is_referred"], rel=2e-6)


def test_reference_loss_by_hand():
    """One clip, 2 frames, 2 queries; query 1 takes the instance (its mask logits are the mask), which is visible in
    frame 0 only. Query 1's logits (ln 3, 0) give p(referred) = 3/4; query 0's (0, 0) give 1/2."""
    mask = _box_masks(2, 8, 8, [[(0, 8, 0, 4), (0, 0, 0, 0)]])
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, :, 1, 0] = math.log(3.0)
    pred = torch.full((1, 2, 2, 2, 2), -6.0)
    pred[0, 0, 1, :, :1] = 6.0  # stride-4 logits of the left half in frame 0
    out = {"pred_is_referred": logits, "pred_masks": pred}
    target = MTTRTarget(mask, 0, torch.tensor([True, False]))
    assert [x.tolist() for x in MTTRMatcher()(out, [target])[0]] == [[1], [0]]
    crit = MTTRCriterion(MTTRLossWeights(is_referred=1.0, sigmoid_focal=0.0, dice=0.0), aux_loss=False)
    # frame 0: -ln 3/4 (referred); frame 1: -ln 1/4 (hidden -> "no object", weight 1); query 0: 0.1 ln 2 per frame;
    # divided by the 2 (clip, frame) pairs
    expected = (math.log(4 / 3) + math.log(4) + 0.2 * math.log(2)) / 2
    assert crit(out, [target])["loss_is_referred"].item() == pytest.approx(expected, rel=1e-6)
    # without visibility flags (A2D) the referred query is "referred" in every frame
    always = crit(out, [MTTRTarget(mask, 0)])["loss_is_referred"].item()
    assert always == pytest.approx((2 * math.log(4 / 3) + 0.2 * math.log(2)) / 2, rel=1e-6)
    # eos_coef scales the un-referred queries only
    no_eos = MTTRCriterion(MTTRLossWeights(1.0, 0.0, 0.0, eos_coef=0.0), aux_loss=False)(out, [target])
    assert no_eos["loss_is_referred"].item() == pytest.approx((math.log(4 / 3) + math.log(4)) / 2, rel=1e-6)


def test_target_and_matcher_errors():
    m = torch.zeros(2, 3, 8, 8, dtype=torch.bool)
    with pytest.raises(ConfigError, match="referred index 2"):
        MTTRTarget(m, 2)
    with pytest.raises(ConfigError, match="visible"):
        MTTRTarget(m, 0, torch.ones(2, dtype=torch.bool))
    with pytest.raises(ConfigError, match="both be 0"):
        from lvseg.train.matcher import MTTRMatchCosts
        MTTRMatchCosts(0.0, 0.0)
    out = _outputs(1, 3, 1, 2, 2)  # one query, two instances
    with pytest.raises(ConfigError, match="num_queries"):
        MTTRMatcher()(out, [MTTRTarget(m, 0)])
    with pytest.raises(ConfigError, match="decoded 3 frames but the target has 1"):
        MTTRMatcher()(_outputs(1, 3, 4, 2, 2), [MTTRTarget(m[:, :1], 0)])


# ------------------------------------------------------------------------------------ batches and training
def _tiny_model(seed=0):
    from transformers import RobertaTokenizerFast

    from lvseg.models.base import PreprocessConfig
    from lvseg.models.mttr.config import MTTRConfig
    from lvseg.models.mttr.model import MTTR

    text = dict(vocab_size=400, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                max_position_embeddings=40, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
                eos_token_id=2)
    cfg = MTTRConfig(preprocessing=PreprocessConfig(short_side=SIZE, max_size=SIZE, window=0, overlap=0,
                                                    max_text_tokens=32),
                     embed_dim=16, depths=(1, 1, 1), num_heads=(1, 2, 4), d_model=64, nheads=4,
                     num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=64, dropout=0.0,
                     drop_path_rate=0.0, num_queries=4, text_encoder=text)
    torch.manual_seed(seed)
    return MTTR(cfg, tokenizer=RobertaTokenizerFast.from_pretrained(str(TOKENIZER_DIR)))


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    from lvseg.data import shapes

    root = tmp_path_factory.mktemp("mttr_shapes")
    shapes.generate(root, "train", num_videos=3, frames=4, size=SIZE, seed=0, progress=False)
    shapes.generate(root, "valid", num_videos=1, frames=4, size=SIZE, seed=0, progress=False)
    return root


def _fit_fixed_batch(model, objective, batch, kwargs, targets, lr, steps):
    """``steps`` AdamW steps of ``model`` on one collated batch with the objective's criterion (CPU); returns the
    losses before each step and the last step's loss dict."""
    from lvseg.train.engine import prepare_frames

    frames = prepare_frames(batch["frames"], model, torch.device("cpu"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        out = objective.criterion(model(frames, batch["text"], **kwargs), targets, objective.count(targets))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    return losses, out


def _shapes_train(root):
    from lvseg.data import ClipSampling, RefYouTubeVOS

    return RefYouTubeVOS(root, "train", sampling=ClipSampling(num_frames=2, mode="fixed"))


def test_a_few_steps_decrease_the_loss_on_a_fixed_batch(shapes_root):
    from lvseg.data import collate_clips
    from lvseg.train.objectives import make_objective

    model = _tiny_model()
    data = _shapes_train(shapes_root)
    batch = collate_clips([data[0], data[5]])
    device = torch.device("cpu")
    objective = make_objective("mttr")  # what the Trainer uses for an MTTR model
    kwargs, targets = objective.prepare(batch, device)
    assert kwargs == {"padding_mask": None}  # every frame is annotated: all are decoded
    assert [t.masks.shape for t in targets] == [(1, 2, SIZE, SIZE)] * 2
    losses, out = _fit_fixed_batch(model, objective, batch, kwargs, targets, lr=5e-3, steps=6)
    assert {"loss_is_referred_0", "loss_dice_0", "loss_sigmoid_focal_0"} <= set(out)  # auxiliary layer
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(p.grad is None for p in model.transformer.text_encoder.parameters())  # frozen (official)


def test_a2d_batches_decode_the_annotated_frame_with_every_instance(tmp_path):
    from test_data_a2d_jhmdb import write_a2d

    from lvseg.data import A2DSentences, collate_clips
    from lvseg.train.mttr_data import A2DInstances, a2d_mttr_transforms
    from lvseg.train.objectives import build_mttr_targets, decoded_frames, make_objective

    write_a2d(tmp_path)
    base = A2DSentences(tmp_path, "test", num_frames=4)
    data = A2DInstances(base, a2d_mttr_transforms(short_side=32, max_size=48, flip=False))
    s = data[2]  # "a dog, running": instance 2 of vidA frame 2, where instances 1 and 2 are annotated
    assert s["obj_ids"] == [1, 2] and s["referred_index"] == 1 and s["text"] == "a dog, running"
    assert s["object_masks"].shape == (2, 4, 32, 48) and s["center_index"] == 2
    assert torch.equal(s["object_masks"][1], s["masks"])  # the referred one is the sentence's mask
    assert s["object_masks"][0, 2].any() and not s["object_masks"][:, [0, 1, 3]].any()
    batch = collate_clips([s, data[3]])  # + vidB (one instance)
    assert decoded_frames(batch) == [2]
    targets = build_mttr_targets(batch, torch.device("cpu"))
    assert [tuple(t.masks.shape) for t in targets] == [(2, 1, 32, 48), (1, 1, 32, 48)]
    assert [t.referred for t in targets] == [1, 0] and all(bool(t.visible.all()) for t in targets)
    objective = make_objective("mttr")
    kwargs, targets = objective.prepare(batch, torch.device("cpu"))
    assert kwargs["valid_indices"] == [2]
    from lvseg.train.engine import prepare_frames

    model = _tiny_model()
    out = model(prepare_frames(batch["frames"], model, torch.device("cpu")), batch["text"], **kwargs)
    assert out["pred_masks"].shape[:3] == (2, 1, 4)
    losses = objective.criterion(out, targets, objective.count(targets))
    assert math.isfinite(losses["loss"].item()) and objective.count(targets) == 3.0
    # a wrapped dataset must not transform first (the instance masks would miss the augmentation)
    with pytest.raises(ConfigError, match="transform=None"):
        A2DInstances(A2DSentences(tmp_path, "test", num_frames=4, transform=lambda x: x))
    # clips whose annotated frames do not line up cannot share one decoded frame
    shifted = dict(batch, annotated=torch.tensor([[False, False, True, False], [False, True, False, False]]))
    with pytest.raises(InvalidInputError, match="annotated in every clip"):
        decoded_frames(shifted)


def test_lvseg_train_runs_mttr_and_writes_a_loadable_model(shapes_root, tmp_path):
    import lvseg
    from lvseg.data import RefYouTubeVOS

    model = _tiny_model()
    out = tmp_path / "run"
    result = lvseg.train(model, _shapes_train(shapes_root), RefYouTubeVOS(shapes_root, "valid"), out, batch_size=2,
                         max_steps=2, log_every=1, eval_max_samples=1, lr=1e-3, progress=False, tensorboard=False)
    assert result.steps == 2
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    train_lines = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_lines] == [1, 2]
    assert all(r["loss"] > 0 and "loss_is_referred_0" in r and "loss_sigmoid_focal" in r for r in train_lines)
    evals = [r for r in records if r["kind"] == "eval"]  # scored with model.segment (the Ref-YouTube-VOS rule)
    assert len(evals) == 1 and 0 <= evals[0]["J&F"] <= 100 and result.best_checkpoint is not None
    loaded = lvseg.load(str(result.final_checkpoint), device="cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # bf16 autocast with the Video Swin's gradient checkpointing
    bf16 = lvseg.train(_tiny_model(), _shapes_train(shapes_root), None, tmp_path / "bf16", batch_size=2, max_steps=1,
                       precision="bf16", gradient_checkpointing=True, progress=False, tensorboard=False)
    record = json.loads((tmp_path / "bf16" / "log.jsonl").read_text().splitlines()[-1])
    assert bf16.steps == 1 and math.isfinite(record["loss"])
    with pytest.raises(ConfigError, match="MTTR takes MTTRLossWeights"):
        lvseg.train(_tiny_model(), _shapes_train(shapes_root), None, tmp_path / "w", max_steps=1,
                    loss_weights={"cls": 1.0})
    from lvseg.train.engine import TrainConfig

    assert isinstance(TrainConfig(loss_weights={"eos_coef": 0.2}).loss_weights, MTTRLossWeights)
    with pytest.raises(ConfigError, match="fit no family"):
        TrainConfig(loss_weights={"eos": 0.2})


def test_unsupported_family_is_refused(shapes_root, tmp_path):
    from toymodels import make_color_model

    from lvseg.train.engine import TrainConfig, Trainer

    with pytest.raises(ConfigError, match="supports the 'referformer', 'mttr', 'lavt', 'lavt_video', 'vlp_rvos', 'locater' families, not 'test-color'"):
        Trainer(make_color_model(), _shapes_train(shapes_root), TrainConfig(output_dir=str(tmp_path / "x")))


def test_a2d_preset_is_the_official_recipe():
    from lvseg.train.presets import get_preset

    p = get_preset("mttr-swin-t-a2d")
    assert p.family == "mttr" and p.model == "mttr-swin-t.a2d"
    # mttr2021/MTTR configs/a2d_sentences.yaml and the README's training command (-ws 10 -bs 3 -ng 2)
    assert p.train == dict(lr=1e-4, lr_backbone=1e-5, lr_text_encoder=5e-5, weight_decay=1e-4, clip_max_norm=0.1,
                           batch_size=3, epochs=70, lr_drops=(50,), lr_gamma=0.4, freeze_text_encoder=True,
                           precision="fp16", seed=42)


# ------------------------------------------------------------------------------------ Ref-YouTube-VOS (official)
YT_FRAMES, YT_WINDOW = 7, 3
YT_WINDOWS = [[0, 1, 2], [3, 4, 5], [4, 5, 6]]  # mttr2021/MTTR generate_train_video_samples for 7 frames, ws 3


def _read_ids(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.array(img)


def _erase(path, obj_id):
    """Remove one object from an annotation PNG (pixels -> background), keeping the palette."""
    from PIL import Image

    with Image.open(path) as img:
        palette, ids = img.getpalette(), _read_ids(path)
    ids[ids == obj_id] = 0
    out = Image.fromarray(ids, mode="P")
    out.putpalette(palette)
    out.save(path)


@pytest.fixture(scope="module")
def ytvos_root(tmp_path_factory):
    """Shapes in the Ref-YouTube-VOS layout, edited so that, in the video with the most objects, object ``a`` is
    hidden on frame 1 (referred-but-invisible frames) and object ``b`` appears on frames 0-2 only (its expressions
    have no sample in the later windows)."""
    from lvseg.data import shapes

    root = tmp_path_factory.mktemp("mttr_ytvos")
    shapes.generate(root, "train", num_videos=3, frames=YT_FRAMES, size=SIZE, seed=0, progress=False)
    meta = json.loads((root / "meta_expressions" / "train" / "meta_expressions.json").read_text())["videos"]
    referred = {v: sorted({int(e["obj_id"]) for e in m["expressions"].values() if isinstance(e["obj_id"], str)})
                for v, m in meta.items()}
    vid = max(referred, key=lambda v: len(referred[v]))
    frames, ids = sorted(meta[vid]["frames"]), referred[vid]
    assert len(ids) >= 3, "the fixture needs a video with at least three referred objects"
    a, b = ids[0], ids[-1]
    ann = root / "train" / "Annotations" / vid
    _erase(ann / f"{frames[1]}.png", a)
    for name in frames[3:]:
        _erase(ann / f"{name}.png", b)
    return root, vid, a, b


def _expected_samples(root):
    """(video, exp_id, window) of every official sample, from the meta file and the PNGs read here."""
    meta = json.loads((root / "meta_expressions" / "train" / "meta_expressions.json").read_text())["videos"]
    out = []
    for vid, entry in meta.items():
        frames = sorted(entry["frames"])
        present = [set(_read_ids(root / "train" / "Annotations" / vid / f"{n}.png").ravel().tolist()) for n in frames]
        for exp_id, exp in entry["expressions"].items():
            if not isinstance(exp["obj_id"], str):  # several referred objects: not an MTTR sample
                continue
            for w in YT_WINDOWS:
                if int(exp["obj_id"]) in set().union(*(present[i] for i in w)):
                    out.append((vid, exp_id, tuple(w)))
    return out


def test_mttr_windows_follow_the_official_cut():
    from lvseg.train.mttr_data import mttr_windows

    assert mttr_windows(YT_FRAMES, YT_WINDOW) == YT_WINDOWS
    assert mttr_windows(6, 3) == [[0, 1, 2], [3, 4, 5]]
    assert mttr_windows(36, 12) == [list(range(0, 12)), list(range(12, 24)), list(range(24, 36))]
    assert mttr_windows(3, 5) == [[0, 1, 2, 2, 2]]  # shorter than the window: the last frame repeats
    with pytest.raises(ConfigError, match="window must be >= 1"):
        mttr_windows(5, 0)


def test_ytvos_instances_hold_every_object_of_the_window(ytvos_root, tmp_path):
    import numpy as np

    from lvseg.train.mttr_data import YTVOSInstances

    root, vid, a, b = ytvos_root
    cache = tmp_path / "ids.json"
    data = YTVOSInstances(root, YT_WINDOW, index_cache=cache, progress=False)
    expected = _expected_samples(root)
    assert [(v, e, w) for v, e, _, w in data.samples] == expected
    meta = json.loads((root / "meta_expressions" / "train" / "meta_expressions.json").read_text())["videos"]
    # expressions of b (gone from frames 3-6) have the first window only
    b_exps = [e for e, x in meta[vid]["expressions"].items() if x["obj_id"] == str(b)]
    assert b_exps and all([w for v, e, w in expected if v == vid and e == exp] == [(0, 1, 2)] for exp in b_exps)
    checked_hidden = False
    for i, (v, exp_id, w) in enumerate(expected):
        s = data[i]
        names = [sorted(meta[v]["frames"])[j] for j in w]
        pngs = np.stack([_read_ids(root / "train" / "Annotations" / v / f"{n}.png") for n in names])
        ids = sorted(int(k) for k in np.unique(pngs) if k != 0)
        ref = int(meta[v]["expressions"][exp_id]["obj_id"])
        assert s["obj_ids"] == ids and s["frame_ids"] == names and s["frames"].shape[0] == YT_WINDOW
        assert s["referred_index"] == ids.index(ref)
        assert s["object_masks"].shape == (len(ids), YT_WINDOW, SIZE, SIZE)
        for k, obj in enumerate(ids):
            assert torch.equal(s["object_masks"][k], torch.from_numpy(pngs == obj))
        assert torch.equal(s["masks"], s["object_masks"][s["referred_index"]])
        assert s["text"] == meta[v]["expressions"][exp_id]["exp"]
        if v == vid and ref == a and w == (0, 1, 2):  # a is hidden on frame 1: empty mask, not valid there
            assert s["masks"].flatten(1).any(1).tolist() == [True, False, True]
            assert s["valid"].tolist() == [True, False, True] and len(ids) >= 3
            checked_hidden = True
    assert checked_hidden
    assert json.loads(cache.read_text())[vid]["frames"] == sorted(meta[vid]["frames"])  # object ids cached
    again = YTVOSInstances(root, YT_WINDOW, index_cache=cache, progress=False)
    assert again.samples == data.samples
    # a video shorter than the window repeats its last frame
    long = YTVOSInstances(root, 9, index_cache=None, progress=False)
    assert long[0]["frame_indices"].tolist() == [0, 1, 2, 3, 4, 5, 6, 6, 6]
    with pytest.raises(ConfigError, match="window must be a number of frames"):
        YTVOSInstances(root, 0, index_cache=None)


def test_ytvos_batches_train_mttr_on_all_objects(ytvos_root):
    from lvseg.data import collate_clips
    from lvseg.train.mttr_data import YTVOSInstances, ytvos_mttr_transforms
    from lvseg.train.objectives import make_objective

    root, vid, a, _ = ytvos_root
    data = YTVOSInstances(root, YT_WINDOW, transform=ytvos_mttr_transforms(short_side=48, max_size=48, flip=False),
                          index_cache=None, progress=False)
    first = next(i for i, (v, _, ref, w) in enumerate(data.samples) if v == vid and ref == a and w == (0, 1, 2))
    other = next(i for i, (v, *_) in enumerate(data.samples) if v != vid)
    samples = [data[first], data[other]]
    assert samples[0]["frames"].shape == (YT_WINDOW, 48, 48, 3)  # short side 48 here (official: 360, long <= 640)
    assert samples[0]["object_masks"].shape[1:] == (YT_WINDOW, 48, 48)
    batch = collate_clips(samples)
    objective = make_objective("mttr")
    kwargs, targets = objective.prepare(batch, torch.device("cpu"))
    assert "valid_indices" not in kwargs  # every frame of a Ref-YouTube-VOS window is annotated and decoded
    assert [t.masks.shape[0] for t in targets] == [len(s["obj_ids"]) for s in samples]
    assert [t.referred for t in targets] == [s["referred_index"] for s in samples]
    assert targets[0].visible.tolist() == [True, False, True]  # official is_ref_inst_visible
    losses, _ = _fit_fixed_batch(_tiny_model(), objective, batch, kwargs, targets, lr=3e-3, steps=10)
    assert losses[-1] < 0.8 * losses[0], losses


def test_ytvos_preset_is_the_official_recipe_and_runs(ytvos_root, tmp_path):
    import lvseg
    from lvseg.train.mttr_data import YTVOSInstances, ytvos_mttr_data, ytvos_mttr_transforms
    from lvseg.train.presets import get_preset

    p = get_preset("mttr-swin-t-ytvos")
    assert p.family == "mttr" and p.model == "mttr-swin-t.ytvos" and p.data is ytvos_mttr_data
    # mttr2021/MTTR configs/refer_youtube_vos.yaml, README (-ws 12 -bs 1 -ng 4) and trainer.py's
    # MultiStepLR([20], 0.4).step(total_epoch_loss), which drops the LR once the epoch loss sum passes 20
    assert p.train == dict(lr=1e-4, lr_backbone=1e-5, lr_text_encoder=5e-5, weight_decay=1e-4, clip_max_norm=0.1,
                           batch_size=1, epochs=30, lr_drops=(1,), lr_gamma=0.4, freeze_text_encoder=True,
                           precision="fp16", seed=42)
    root = ytvos_root[0]
    train, val = p.data(root)
    assert isinstance(train, YTVOSInstances) and val is None and train.window == 12
    s = train[0]  # 12 frames (the 7 of the video, the last repeated), short side 360
    assert s["frames"].shape == (12, 360, 360, 3) and s["object_masks"].shape[1:] == (12, 360, 360)
    # the preset's recipe end to end on a tiny MTTR, on 3-frame windows at 48 px to stay fast on a CPU
    small = YTVOSInstances(root, YT_WINDOW, transform=ytvos_mttr_transforms(48, 48), index_cache=None, progress=False)
    out = tmp_path / "run"
    result = lvseg.train(_tiny_model(), small, preset="mttr-swin-t-ytvos", output_dir=out, max_steps=2,
                         precision="fp32", log_every=1, progress=False, tensorboard=False)
    assert result.steps == 2
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"train"' in x]
    assert len(records) == 2 and all(math.isfinite(r["loss"]) and "loss_is_referred_0" in r for r in records)
