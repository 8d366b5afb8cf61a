"""VLP-RVOS: the contract of each module (shapes, masks), the frozen backbone driven layer by layer equals
transformers' CLIP, clip-to-clip prompt carry-over equals one long pass, gradients only in the added modules,
the loss, training through ``lvseg.train`` and the registry entries (no official weights)."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

TEXTS = ["the big red circle", "the blue square moving left"]


@pytest.fixture(scope="module")
def tokenizer():
    from lvseg.train.presets import shapes_tokenizer

    return shapes_tokenizer()


def _model(tokenizer, **changes):
    from lvseg.models.vlp_rvos.config import tiny_config
    from lvseg.models.vlp_rvos.model import VLPRVOS

    torch.manual_seed(0)
    model = VLPRVOS(tiny_config(len(tokenizer), image_size=64, **changes), tokenizer)
    # the gates start closed (the frozen layers unchanged); open them so the tests see the guidance at work
    for guide in model.guides.values():
        torch.nn.init.constant_(guide.gate, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return _model(tokenizer)


def _frames(b=2, t=8, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, 3, h, w, generator=g)


def _close(a, b, rel=1e-5):
    scale = max(float(a.abs().max()), float(b.abs().max()), 1e-6)
    assert float((a - b).abs().max()) <= rel * scale, float((a - b).abs().max()) / scale


# ------------------------------------------------------------------------------------------------ config
def test_config_round_trips_and_rejects_bad_values(tokenizer):
    from lvseg.errors import ConfigError
    from lvseg.models.vlp_rvos.config import VLPRVOSConfig, tiny_config

    config = tiny_config(len(tokenizer))
    again = VLPRVOSConfig.from_dict(json.loads(config.to_json_string()))
    assert again == config
    with pytest.raises(ConfigError, match="extract_layers"):
        tiny_config(100, extract_layers=(0, 9))
    with pytest.raises(ConfigError, match="multiple of the patch size"):
        tiny_config(100, image_size=60)
    with pytest.raises(ConfigError, match="positions"):
        tiny_config(100, text_prompts=39)
    with pytest.raises(ConfigError, match="backbone"):
        tiny_config(100, backbone="resnet")


# ------------------------------------------------------------------------------------------------ backbone
def test_frozen_layers_driven_one_by_one_equal_transformers_clip(model):
    """The layer-by-layer loop the model runs (norm1, attention, ffn) is CLIP's vision encoder exactly, and the
    text encoder without prompts gives CLIPTextModel's states on the real tokens."""
    bb = model.backbone
    pixels = _frames(2, 1)[:, 0]
    with torch.no_grad():
        x = bb.embed_frames(pixels)
        for i in range(bb.num_layers):
            x = x + bb.attention(i, bb.norm1(i, x))
            x = x + bb.ffn(i, x)
        ref = bb.clip.vision_model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        _close(x, ref)
        ids, mask = model.tokenize(TEXTS)
        words, word_mask, sentence = bb.encode_text(ids, mask, None)
        ref_text = bb.clip.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.equal(word_mask, mask.bool())
        _close(words[word_mask], ref_text[mask.bool()])
        last = mask.sum(1) - 1
        _close(sentence, bb.clip.text_projection(ref_text[torch.arange(2), last]))


def test_text_prompts_change_the_words_and_are_removed_from_the_output(model):
    bb = model.backbone
    ids, mask = model.tokenize(TEXTS)
    prompts = torch.randn(2, model.config.text_prompts, bb.text_dim)
    with torch.no_grad():
        plain, _, s0 = bb.encode_text(ids, mask, None)
        prompted, word_mask, s1 = bb.encode_text(ids, mask, prompts)
    assert prompted.shape == plain.shape and word_mask.shape == mask.shape
    _close(prompted[:, 0], plain[:, 0])  # the start token precedes the prompts (causal): unchanged
    assert float((prompted[:, 1:] - plain[:, 1:]).abs().max()) > 1e-3  # every later token sees the prompts
    assert float((s1 - s0).abs().max()) > 1e-3


def test_backbone_is_frozen_and_gradients_reach_only_the_added_modules(tokenizer):
    model = _model(tokenizer, detach_history=False).train()
    assert all(not p.requires_grad for p in model.backbone.parameters())
    out = model(_frames(2, 8), TEXTS)  # two clips
    (out["pred_masks"].mean() + out["similarity"].mean() + out["prompt_token"].mean()).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    trainable = model.trainable_parameters()
    missing = [n for n, p in trainable if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, missing
    assert not model.backbone.training  # the frozen backbone stays in eval mode while the rest trains


@pytest.mark.parametrize("detach", [True, False])
def test_detached_history_stops_gradients_between_clips(tokenizer, detach):
    model = _model(tokenizer, detach_history=detach).train()
    out = model(_frames(1, 8), TEXTS[:1])
    out["pred_masks"][:, 4:].sum().backward()  # the second clip's loss only
    # the first clip's parameters (its initial history) reach the second clip's loss only through the carried
    # prompt_token: exactly zero gradient when it is detached (as two optimiser steps give), non-zero otherwise
    grad = model.initial_history.grad
    if detach:
        assert grad is None or float(grad.abs().max()) == 0.0
    else:
        assert grad is not None and float(grad.abs().max()) > 0


# ------------------------------------------------------------------------------------------------ model
def test_forward_and_segment_shapes(model):
    frames = _frames(2, 6, h=48, w=80)  # not square, not a multiple of the clip length
    with torch.no_grad():
        out = model(frames, TEXTS)
    s = model.config.image_size
    grid = s // model.config.patch_size
    assert out["pred_masks"].shape == (2, 6, s, s)
    assert out["similarity"].shape == (2, 6, grid, grid)
    assert out["prompt_token"].shape == (2, model.config.temporal_prompts, model.config.vision_dim)
    logits, scores = model.segment(frames, TEXTS)
    assert logits.shape == (2, 6, s, s) and scores.shape == (2, 6)
    assert bool(((scores >= 0) & (scores <= 1)).all())
    torch.testing.assert_close(scores, logits.flatten(2).amax(-1).sigmoid())


def test_prompt_carry_over_equals_one_long_pass(model):
    """Windows of one clip each, the state carried, give exactly the whole video's clip-by-clip pass; a different
    state changes the next window (the history is used)."""
    frames = _frames(2, 8)
    whole, whole_scores = model.segment(frames, TEXTS)
    first, s1, state = model.segment_window(frames[:, :4], TEXTS, None)
    second, s2, _ = model.segment_window(frames[:, 4:], TEXTS, state)
    assert torch.equal(torch.cat([first, second], 1), whole)
    assert torch.equal(torch.cat([s1, s2], 1), whole_scores)
    fresh, _, _ = model.segment_window(frames[:, 4:], TEXTS, None)
    assert float((fresh - second).abs().max()) > 1e-4 * float(second.abs().max())


def test_predictor_streams_with_the_carried_prompts(model):
    video = (np.random.default_rng(0).random((8, 40, 56, 3)) * 255).astype(np.uint8)
    streamed = model.predict(video, TEXTS[0], window=4, progress=False, return_probabilities=True)
    at_once = model.predict(video, TEXTS[0], window=8, progress=False, return_probabilities=True)
    assert streamed.masks.shape == (8, 40, 56)
    torch.testing.assert_close(streamed.probabilities, at_once.probabilities, rtol=0, atol=1e-5)


def test_bfloat16_weights_run_and_stay_close(tokenizer):
    model = _model(tokenizer)
    frames = _frames(1, 5)
    ref, _ = model.segment(frames, TEXTS[:1])
    low, scores = model.to(torch.bfloat16).segment(frames, TEXTS[:1])
    assert low.dtype == torch.bfloat16 and scores.shape == (1, 5)
    # bf16 keeps 8 bits of mantissa; through ~20 layers the logits stay within a few percent of their range
    assert float((low.float() - ref).abs().max()) < 0.1 * float(ref.abs().max())


def test_text_matters(model):
    frames = _frames(1, 4)
    a, _ = model.segment(frames, ["the big red circle"])
    b, _ = model.segment(frames, ["the small green triangle"])
    assert float((a - b).abs().max()) > 1e-4 * float(a.abs().max())


def test_bad_inputs_raise_clear_errors(model, tokenizer):
    from lvseg.errors import ConfigError, InvalidInputError, InvalidTextError
    from lvseg.models.vlp_rvos.config import tiny_config
    from lvseg.models.vlp_rvos.model import VLPRVOS

    with pytest.raises(InvalidInputError, match="one video per expression"):
        model.segment(_frames(1, 2), TEXTS)
    with pytest.raises(InvalidInputError, match=r"\[B, T, 3, H, W\]"):
        model.segment(torch.zeros(1, 3, 64, 64), TEXTS[:1])
    with pytest.raises(InvalidTextError):
        model.segment(_frames(1, 2), [" "])
    with pytest.raises(InvalidInputError, match="state"):
        model.segment_window(_frames(2, 2), TEXTS, torch.zeros(1, 2, 64))
    with pytest.raises(ConfigError, match="tokenizer"):
        VLPRVOS(tiny_config(len(tokenizer))).segment(_frames(1, 1), TEXTS[:1])


# ------------------------------------------------------------------------------------------------ modules
def test_cube_frame_attention_shapes_and_locality():
    from lvseg.models.vlp_rvos.modules import CubeFrameAttention

    torch.manual_seed(0)
    layer = CubeFrameAttention(16, 2, 32, 0.0, (2, 3, 3)).eval()
    x = torch.randn(2, 5, 7, 4, 16)  # no dimension a multiple of its cube side: padding must not leak
    y = layer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    # without the frame path, a token is changed only by its own cube
    layer.frame_read.out_proj.weight.data.zero_()
    layer.frame_read.out_proj.bias.data.zero_()
    x2 = x.clone()
    x2[:, 4, 6, 3] += 1.0  # cube (t 4-5, h 6-8, w 3-5)
    with torch.no_grad():
        delta = (layer(x2) - layer(x)).abs().amax(-1)
    assert float(delta[:, :4].max()) == 0 and float(delta[:, 4, :6].max()) == 0 and float(delta[:, 4, 6, :3].max()) == 0
    assert float(delta[:, 4, 6, 3].max()) > 0


def test_volume_position_tells_every_token_apart_and_is_off_by_default(tokenizer):
    """The optional (row, column, frame) embedding: one part per axis, distinct for every token of a clip; the
    model with it has the same parameters (it is fixed) and another output; a config without the field (written
    before it existed) reads as off."""
    from lvseg.models.vlp_rvos.config import VLPRVOSConfig, tiny_config
    from lvseg.models.vlp_rvos.modules import volume_position

    pos = volume_position(4, 5, 6, 32)
    assert pos.shape == (4, 5, 6, 32)
    assert torch.unique(pos.reshape(-1, 32), dim=0).shape[0] == 4 * 5 * 6
    assert torch.equal(pos[..., :10], pos[:1, :, :1, :10].expand(4, 5, 6, 10))  # rows: the row index only
    assert torch.equal(pos[..., 10:20], pos[:1, :1, :, 10:20].expand(4, 5, 6, 10))  # columns
    assert torch.equal(pos[..., 20:], pos[:, :1, :1, 20:].expand(4, 5, 6, 12))  # frames
    data = json.loads(tiny_config(len(tokenizer)).to_json_string())
    assert data.pop("volume_position") is False
    assert VLPRVOSConfig.from_dict(data).volume_position is False
    plain, placed = _model(tokenizer), _model(tokenizer, volume_position=True)
    placed.load_state_dict(plain.state_dict())  # strict: no new parameters
    frames = _frames(1, 4)
    with torch.no_grad():
        a, b = plain(frames, ["the red circle"])["pred_masks"], placed(frames, ["the red circle"])["pred_masks"]
    assert a.shape == b.shape and float((a - b).abs().max()) > 1e-3 * float(a.abs().max())



def test_local_motion_finds_where_a_token_came_from_and_starts_silent(tokenizer):
    """LocalMotion: the softmax over the previous frame's window peaks at the offset the content came from (a
    token moved one cell right is found one cell to its left), frame 0 is compared with itself; the projection
    starts at zero (the model's output is unchanged until training moves it) and receives a gradient; off by
    default, and a config without the field reads as off."""
    from lvseg.errors import ConfigError
    from lvseg.models.vlp_rvos.config import VLPRVOSConfig, tiny_config
    from lvseg.models.vlp_rvos.modules import LocalMotion

    gen = torch.Generator().manual_seed(0)
    background = torch.randn(1, 1, 5, 6, 16, generator=gen).expand(1, 3, 5, 6, 16).clone()
    thing = torch.randn(16, generator=gen) * 3
    for frame, col in enumerate((1, 2, 3)):  # one cell to the right per frame, row 2
        background[0, frame, 2, col] = thing
    motion = LocalMotion(16, radius=1)
    weights = motion.weights(background)  # [1, 3, 5, 6, 9], offsets (dy, dx) row-major from (-1, -1)
    assert weights.shape == (1, 3, 5, 6, 9)
    assert torch.allclose(weights.sum(-1), torch.ones(1, 3, 5, 6))
    assert int(weights[0, 1, 2, 2].argmax()) == 3  # frame 1, the thing at column 2: it was at (0, -1)
    assert int(weights[0, 2, 2, 3].argmax()) == 3
    assert int(weights[0, 0, 2, 1].argmax()) == 4  # frame 0: compared with itself, (0, 0)
    assert float(motion(background).abs().max()) == 0.0  # zero-initialised projection
    motion(background).sum().backward()
    assert motion.proj.weight.grad is not None and float(motion.proj.weight.grad.abs().max()) > 0
    with pytest.raises(ConfigError, match="radius"):
        LocalMotion(16, radius=0)

    data = json.loads(tiny_config(len(tokenizer)).to_json_string())
    assert data.pop("volume_motion") == 0
    assert VLPRVOSConfig.from_dict(data).volume_motion == 0
    plain, moving = _model(tokenizer), _model(tokenizer, volume_motion=1)
    extra = set(moving.state_dict()) - set(plain.state_dict())
    assert extra == {"motion.scale", "motion.proj.weight", "motion.proj.bias"}
    assert not set(plain.state_dict()) - set(moving.state_dict())
    moving.load_state_dict({**moving.state_dict(), **plain.state_dict()})
    frames = _frames(1, 4)
    with torch.no_grad():
        a, b = plain(frames, ["the red circle"])["pred_masks"], moving(frames, ["the red circle"])["pred_masks"]
    assert torch.equal(a, b)  # the zero projection adds exactly nothing
    moving(frames, ["the red circle"])["pred_masks"].sum().backward()
    assert float(moving.motion.proj.weight.grad.abs().max()) > 0


def test_motion_before_fusion_feeds_the_fusion_and_needs_the_module(tokenizer):
    """motion_before_fusion moves LocalMotion to the visual tokens ahead of the VL fusion: the same parameters,
    nothing added while the projection is zero, a gradient through the fusion once it is not, and outputs that
    differ from the placement after the fusion; without volume_motion it is a ConfigError; a config without the
    field reads as off."""
    from lvseg.errors import ConfigError
    from lvseg.models.vlp_rvos.config import VLPRVOSConfig, tiny_config

    data = json.loads(tiny_config(len(tokenizer)).to_json_string())
    assert data.pop("motion_before_fusion") is False
    assert VLPRVOSConfig.from_dict(data).motion_before_fusion is False
    with pytest.raises(ConfigError, match="volume_motion"):
        VLPRVOSConfig.from_dict({**data, "motion_before_fusion": True})
    plain = _model(tokenizer)
    after, before = _model(tokenizer, volume_motion=1), _model(tokenizer, volume_motion=1, motion_before_fusion=True)
    assert set(before.state_dict()) == set(after.state_dict())
    before.load_state_dict({**before.state_dict(), **plain.state_dict()})
    frames = _frames(1, 4)
    with torch.no_grad():
        reference = plain(frames, ["the red circle"])["pred_masks"]
        assert torch.equal(before(frames, ["the red circle"])["pred_masks"], reference)
    gen = torch.Generator().manual_seed(1)
    weights = {"motion.proj.weight": torch.randn(before.motion.proj.weight.shape, generator=gen)}
    before.load_state_dict({**before.state_dict(), **weights})
    after.load_state_dict(before.state_dict())
    out = before(frames, ["the red circle"])["pred_masks"]
    with torch.no_grad():
        assert not torch.allclose(out, after(frames, ["the red circle"])["pred_masks"])
    out.sum().backward()
    assert float(before.fusion.to_vision[0].attn.in_proj_weight.grad.abs().max()) > 0
    assert float(before.motion.scale.grad.abs()) > 0  # the correlation itself is trained through the fusion

def test_segmentor_upsamples_to_the_input_size():
    from lvseg.models.vlp_rvos.modules import Segmentor

    head = Segmentor(33, 1, 32)
    assert head(torch.randn(2, 33, 22, 22), (352, 352)).shape == (2, 1, 352, 352)  # /16: x16
    assert head(torch.randn(1, 33, 24, 24), (336, 336)).shape == (1, 1, 336, 336)  # /14: last step to the input


def test_reference_guide_starts_closed():
    from lvseg.models.vlp_rvos.modules import ReferenceGuide

    guide = ReferenceGuide(16, 2)
    out = guide(torch.randn(3, 5, 16), torch.randn(3, 4, 16), torch.zeros(3, 4, dtype=torch.bool))
    assert out.shape == (3, 5, 16) and float(out.detach().abs().max()) == 0.0


# ------------------------------------------------------------------------------------------------ loss
def test_loss_prefers_the_right_mask_and_ignores_unsupervised_frames():
    from lvseg.train.losses import VLPRVOSCriterion, VLPRVOSLossWeights

    gt = torch.zeros(1, 2, 32, 32, dtype=torch.bool)
    gt[:, :, 8:24, 8:24] = True
    good = {"pred_masks": (gt.float() * 20 - 10), "similarity": torch.nn.functional.avg_pool2d(gt.float() * 20 - 10, 4)}
    bad = {k: -v for k, v in good.items()}
    target = [{"masks": gt, "frames": torch.tensor([[True, True]]), "ignore": None}]
    crit = VLPRVOSCriterion()
    lg, lb = crit(good, target, 2.0), crit(bad, target, 2.0)
    assert set(lg) == {"loss", "loss_mask", "loss_dice", "loss_ce_mask", "loss_mask_pixel_text",
                       "loss_dice_pixel_text", "loss_pixel_ce_mask"}
    assert float(lg["loss"]) < 0.05 * float(lb["loss"])
    only_first = [{"masks": gt, "frames": torch.tensor([[True, False]]), "ignore": None}]
    mixed = {k: torch.cat([good[k][:, :1], bad[k][:, 1:]], 1) for k in good}
    torch.testing.assert_close(crit(mixed, only_first, 1.0)["loss"], crit(good, only_first, 1.0)["loss"])
    zero = VLPRVOSCriterion(VLPRVOSLossWeights(0, 0, 0, 0, 0, 0))(bad, target, 2.0)
    assert float(zero["loss"]) == 0.0


# ------------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    from lvseg.train.presets import ensure_shapes

    root = tmp_path_factory.mktemp("vlp_shapes")
    ensure_shapes(root, num_train=2, num_val=1, size=64)
    return root


def test_trains_through_lvseg_train_with_only_the_added_modules(tokenizer, shapes_root, tmp_path):
    import lvseg
    from lvseg.data import ClipSampling, RefYouTubeVOS

    model = _model(tokenizer).train()
    frozen_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    added_before = model.segDecoder.conv_out.weight.detach().clone()
    train = RefYouTubeVOS(shapes_root, "train", sampling=ClipSampling(num_frames=8, mode="random"))
    val = RefYouTubeVOS(shapes_root, "valid")
    out = tmp_path / "run"
    result = lvseg.train(model, train, val, out, max_steps=2, batch_size=1, lr=1e-3, lr_backbone=0.0,
                         lr_text_encoder=0.0, eval_every=2, eval_max_samples=1, checkpoint_every=0, log_every=1,
                         progress=False, tensorboard=False)
    assert result.steps == 2
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, frozen_before[key]), key
    assert not torch.equal(model.segDecoder.conv_out.weight, added_before)
    loaded = lvseg.load(str(result.final_checkpoint), device="cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    frames = _frames(1, 4)
    torch.testing.assert_close(loaded.segment(frames, TEXTS[:1])[0], model.eval().segment(frames, TEXTS[:1])[0])


# ------------------------------------------------------------------------------------------------ registry
def test_every_registry_configuration_builds_its_config_and_says_no_weights():
    import lvseg
    from lvseg.errors import WeightsNotPublishedError
    from lvseg.models.vlp_rvos.entries import config_for
    from lvseg.registry import get_entry
    from lvseg.train.presets import get_preset

    names = lvseg.list_models("vlp-rvos-*")
    assert len(names) == 12
    for name in names:
        entry = get_entry(name)
        assert not entry.published and entry.paper_metrics and entry.train_preset
        assert get_preset(entry.train_preset).family == "vlp_rvos"
        config = config_for(name)
        assert config.image_size % config.patch_size == 0
    assert get_entry("vlp-rvos-vlmo-l.refcoco-ytvos").paper_metrics[1].value == 70.2
    with pytest.raises(WeightsNotPublishedError, match="no official weights.*--preset vlp-rvos-clip-b16-ytvos"):
        lvseg.load("vlp-rvos-clip-b16.ytvos", device="cpu")


@pytest.mark.slow
def test_clip_b16_configuration_builds_at_full_size():
    from lvseg.models.vlp_rvos.entries import build

    model = build("vlp-rvos-clip-b16.ytvos")
    frozen = sum(p.numel() for p in model.backbone.parameters())
    added = sum(p.numel() for n, p in model.trainable_parameters())
    assert 149e6 < frozen < 151e6  # CLIP ViT-B/16: 149.6 M (openai-clip 1.0.1 with random weights)
    assert added > 0 and all(not n.startswith("backbone.") for n, _ in model.trainable_parameters())


def test_vlmo_backbone_needs_its_module():
    from lvseg.errors import ConfigError
    from lvseg.models.vlp_rvos.entries import config_for
    from lvseg.models.vlp_rvos.modules import build_backbone

    if importlib.util.find_spec("lvseg.models.vlp_rvos.vlmo") is not None:
        pytest.skip("the VLMo module is present (test_vlmo_backbone_* run)")
    with pytest.raises(ConfigError, match="VLMo"):
        build_backbone(config_for("vlp-rvos-vlmo-b.ytvos"))


def _tiny_vlmo(tokenizer):
    from lvseg.models.vlp_rvos.config import tiny_config

    common = {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
              "layer_norm_eps": 1e-6}
    return tiny_config(len(tokenizer), image_size=32, backbone="vlmo", projection_dim=32,
                       vision={**common, "patch_size": 8, "image_size": 32, "vlffn_start": 2},
                       text={**common, "vocab_size": len(tokenizer), "max_position_embeddings": 40},
                       deep_prompt_layers=(1, 2), temporal_layers=(0, 1, 2), guide_layers=(0, 1, 2),
                       extract_layers=(0, 1, 2), cube_size=(2, 2, 2))


def test_vlmo_backbone_driven_one_by_one_equals_vlmo_and_the_model_runs(tokenizer):
    if importlib.util.find_spec("lvseg.models.vlp_rvos.vlmo") is None:
        pytest.skip("no VLMo module in this lvseg")
    from lvseg.models.vlp_rvos.model import VLPRVOS

    torch.manual_seed(0)
    model = VLPRVOS(_tiny_vlmo(tokenizer), tokenizer).eval()
    vlmo = model.backbone.vlmo
    for p in vlmo.parameters():  # non-trivial frozen weights (the relative-position table starts at zero)
        torch.nn.init.normal_(p, std=0.05) if p.dim() > 1 else None
    bb = model.backbone
    pixels = _frames(2, 1, 32, 32)[:, 0]
    with torch.no_grad():
        x = bb.embed_frames(pixels)
        for i in range(bb.num_layers):
            x = x + bb.attention(i, bb.norm1(i, x))
            x = x + bb.ffn(i, x)
        _close(vlmo.transformer.norm(x), vlmo.encode_image(pixels)["tokens"])
        ids, mask = model.tokenize(TEXTS)
        words, word_mask, sentence = bb.encode_text(ids, mask, None)
        ref = vlmo.encode_text(ids, mask)
        _close(words[word_mask], ref["tokens"][mask.bool()])
        _close(torch.nn.functional.normalize(sentence, dim=-1), ref["features"])
    frames = _frames(2, 6, 32, 32)
    whole, _ = model.segment(frames, TEXTS)
    first, _, state = model.segment_window(frames[:, :4], TEXTS, None)
    second, _, _ = model.segment_window(frames[:, 4:], TEXTS, state)
    assert whole.shape == (2, 6, 32, 32) and torch.equal(torch.cat([first, second], 1), whole)
    assert all(not p.requires_grad for p in bb.parameters())
    # an official-layout VLMo state dict (the converter's input) loads strictly into the frozen backbone
    from lvseg.models.vlp_rvos.entries import load_vlmo_backbone

    other = VLPRVOS(_tiny_vlmo(tokenizer), tokenizer)
    load_vlmo_backbone(other, dict(vlmo.state_dict()))
    for key, value in vlmo.state_dict().items():
        assert torch.equal(other.backbone.vlmo.state_dict()[key], value), key


def test_shapes_preset_loads_a_pretrained_dual_encoder_strictly_and_trains(shapes_root, tmp_path):
    from transformers import CLIPModel

    import lvseg
    from lvseg.errors import CheckpointError
    from lvseg.train.presets import get_preset
    from lvseg.train.vlp_rvos_presets import build_vlp_shapes_tiny, vlp_shapes_data

    preset = get_preset("vlp-rvos-tiny-shapes")
    control = preset.model()  # randomly initialised frozen backbone
    encoder = type(control.backbone.clip)(control.backbone.clip.config)  # a dual encoder of the same sizes
    torch.nn.init.normal_(encoder.text_projection.weight)
    encoder.save_pretrained(tmp_path / "dual")
    from lvseg.errors import TokenizerError
    from lvseg.models.vlp_rvos.entries import load_clip_backbone

    with pytest.raises(TokenizerError, match="tokenizer"):  # the folder has weights but no tokenizer files
        build_vlp_shapes_tiny(backbone=tmp_path / "dual")
    control.tokenizer.save_pretrained(tmp_path / "dual")
    model = build_vlp_shapes_tiny(backbone=tmp_path / "dual")
    for key, value in encoder.state_dict().items():
        assert torch.equal(model.backbone.clip.state_dict()[key], value), key
    assert all(not p.requires_grad for p in model.backbone.parameters())
    other = CLIPModel(type(encoder.config)(projection_dim=16, text_config=encoder.config.text_config.to_dict(),
                                           vision_config=encoder.config.vision_config.to_dict()))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointError, match="projection"):
        build_vlp_shapes_tiny(backbone=tmp_path / "other")
    with pytest.raises(CheckpointError, match="no config.json"):
        build_vlp_shapes_tiny(backbone=tmp_path)
    bare = preset.model()
    bare.tokenizer = None
    load_clip_backbone(bare, tmp_path / "dual")  # weights and the tokenizer saved beside them
    assert bare.tokenizer is not None and torch.equal(bare.tokenize(TEXTS)[0], control.tokenize(TEXTS)[0])
    train, val = vlp_shapes_data(shapes_root, num_train=2, num_val=1, size=64)
    assert train[0]["frames"].shape[0] == 8  # two clips of 4
    result = lvseg.train(build_vlp_shapes_tiny(size=64), train, val, tmp_path / "run", preset="vlp-rvos-tiny-shapes",
                         max_steps=1, batch_size=1, eval_every=0, checkpoint_every=0, progress=False,
                         tensorboard=False)
    assert result.steps == 1


def test_shapes_clip_recipe_is_the_tiny_models_backbone(tmp_path):
    """The Shapes CLIP that benchmarks/train_shapes_clip.py trains (its default sizes) loads strictly into the tiny
    Shapes VLP-RVOS, with its tokenizer: one source of truth for the towers, and the ids the text tower learned."""
    from lvseg.errors import ConfigError
    from lvseg.train.shapes_clip import ShapesClipConfig, shapes_clip_tokenizer, train_shapes_clip
    from lvseg.train.vlp_rvos_presets import build_vlp_shapes_tiny, vlp_shapes_tiny_config

    config = ShapesClipConfig(steps=1, num_train=4, frames=2, batch=4, warmup=1)
    clip, tokenizer, _ = train_shapes_clip(tmp_path / "clip", config, progress=False)
    model = build_vlp_shapes_tiny(backbone=tmp_path / "clip")
    for key, value in clip.state_dict().items():
        assert torch.equal(model.backbone.clip.state_dict()[key], value), key
    text = "the small red circle"
    assert model.tokenize([text])[0].tolist()[0] == tokenizer(text)["input_ids"]
    assert 1 not in tokenizer(text)["input_ids"]  # every Shapes word is in the vocabulary (1 = <unk>)
    tiny = vlp_shapes_tiny_config()
    assert tiny.vision["patch_size"] == config.patch and tiny.text["hidden_size"] == config.text_width
    assert tiny.projection_dim == config.embed and tiny.text["vocab_size"] == len(shapes_clip_tokenizer())
    with pytest.raises(ConfigError, match="vocab_size"):
        vlp_shapes_tiny_config(vocab_size=7)


def test_shapes_model_takes_the_patch_of_its_clip(tmp_path):
    """A Shapes CLIP trained with another patch (6: a 16 x 16 grid at 96 px) builds a tiny VLP-RVOS with that patch
    (read from the CLIP folder) and loads strictly; a patch that disagrees with the folder, or does not divide the
    frame, is refused with the fix."""
    from lvseg.errors import ConfigError
    from lvseg.train.shapes_clip import ShapesClipConfig, train_shapes_clip
    from lvseg.train.vlp_rvos_presets import build_vlp_shapes_tiny, clip_patch_size, vlp_shapes_tiny_config

    config = ShapesClipConfig(steps=1, num_train=4, frames=2, batch=4, warmup=1, patch=6)
    clip, _, _ = train_shapes_clip(tmp_path / "clip", config, progress=False)
    assert clip_patch_size(tmp_path / "clip") == 6 and clip_patch_size(tmp_path) is None
    model = build_vlp_shapes_tiny(backbone=tmp_path / "clip").eval()
    assert model.config.vision["patch_size"] == 6
    for key, value in clip.state_dict().items():
        assert torch.equal(model.backbone.clip.state_dict()[key], value), key
    control = build_vlp_shapes_tiny(patch=6)  # the random-backbone control of the same sizes
    shapes = {k: v.shape for k, v in clip.state_dict().items()}
    assert {k: v.shape for k, v in control.backbone.clip.state_dict().items()} == shapes
    with torch.no_grad():
        out = model(torch.randn(1, 4, 3, 96, 96), ["the red circle"])
    assert out["pred_masks"].shape == (1, 4, 96, 96) and out["similarity"].shape == (1, 4, 16, 16)
    assert tuple(model.config.cube_size) == (2, 4, 4)  # the recipe's cube; a clip-long cube on request
    wide = build_vlp_shapes_tiny(backbone=tmp_path / "clip", cube_size=(4, 4, 4))
    assert tuple(wide.config.cube_size) == (4, 4, 4) and wide.str_encoders[0].cube_pos.shape == (64, 32)
    with pytest.raises(ConfigError, match="projection_dim.*Shapes CLIP"):
        vlp_shapes_tiny_config(projection_dim=16)
    with pytest.raises(ConfigError, match="trained with patch 6"):
        build_vlp_shapes_tiny(backbone=tmp_path / "clip", patch=8)
    with pytest.raises(ConfigError, match="divisor"):
        vlp_shapes_tiny_config(patch=7)


def _untrained_shapes_clip():
    """The tiny Shapes CLIP at the recipe's sizes, untrained (seed 0), in eval mode, and its tokenizer."""
    from transformers import CLIPModel

    from lvseg.train.shapes_clip import ShapesClipConfig, shapes_clip_model_config, shapes_clip_tokenizer

    torch.manual_seed(0)
    tokenizer = shapes_clip_tokenizer()
    return CLIPModel(shapes_clip_model_config(ShapesClipConfig(), tokenizer)).eval(), tokenizer


def test_shapes_clip_fits_targets_do_not_push_a_text_from_frames_it_describes():
    """``targets="fits"``: each text's target is spread over every frame of the batch whose video it describes
    (Shapes semantics), so the loss equals a hand computation with those soft targets, differs from CLIP's
    diagonal loss when a batch holds such a false negative, and equals it when none does; a matrix that is not
    [B, B] with a True diagonal is refused."""
    import torch.nn.functional as F

    from lvseg.errors import ConfigError
    from lvseg.train.shapes_clip import (
        ShapesClipConfig,
        ShapesPairs,
        contrastive_loss,
        normalise_frames,
    )

    pairs = ShapesPairs(0, "train", 12, frames=2)
    rng = np.random.default_rng(0)
    frames, texts, videos = pairs.sample_with_videos(12, rng)
    fits = pairs.fits(texts, videos)
    assert fits.shape == (12, 12) and bool(fits.diagonal().all())
    from lvseg.data.shapes import expression_semantics

    for i, text in enumerate(texts):  # the matrix is the Shapes semantics of each text on each video
        for j, v in enumerate(videos):
            assert bool(fits[i, j]) == bool(expression_semantics(text, pairs.objects[v]))
    off_diagonal = fits & ~torch.eye(12, dtype=torch.bool)
    assert bool(off_diagonal.any())  # this batch has in-batch false negatives (a text fitting another video)

    model, tokenizer = _untrained_shapes_clip()
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    pixels = normalise_frames(frames)
    with torch.no_grad():
        logits = model(pixel_values=pixels, **enc).logits_per_image  # [image, text]
        fit = fits.float()
        by_image = -(F.log_softmax(logits, dim=1) * (fit.t() / fit.t().sum(1, keepdim=True))).sum(1).mean()
        by_text = -(F.log_softmax(logits.t(), dim=1) * (fit / fit.sum(1, keepdim=True))).sum(1).mean()
        soft = contrastive_loss(model, pixels, enc["input_ids"], enc["attention_mask"], fits)
        diagonal = contrastive_loss(model, pixels, enc["input_ids"], enc["attention_mask"])
        eye = contrastive_loss(model, pixels, enc["input_ids"], enc["attention_mask"], torch.eye(12, dtype=torch.bool))
    assert torch.allclose(soft, (by_image + by_text) / 2, rtol=1e-5, atol=1e-6)
    assert torch.allclose(eye, diagonal, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(soft, diagonal)
    with pytest.raises(ConfigError, match="True diagonal"):
        contrastive_loss(model, pixels, enc["input_ids"], enc["attention_mask"], torch.zeros(12, 12, dtype=torch.bool))
    with pytest.raises(ConfigError, match="targets"):
        from lvseg.train.shapes_clip import train_shapes_clip

        train_shapes_clip(None, ShapesClipConfig(targets="all"), progress=False)


def test_shapes_clip_pools_the_projected_patch_tokens_as_configured(tmp_path):
    """pool="mean": the image embedding is the mean of the projected patch tokens (what VLP-RVOS's pixel-text
    similarity reads); pool="max": a text's score is its best patch's cosine. The contrastive loss uses the
    model's pooling, and the choice survives save and strict loading."""
    import torch.nn.functional as F

    from lvseg.errors import ConfigError
    from lvseg.models.vlp_rvos.backbones import (
        best_patch_cosine,
        clip_cosine,
        clip_image_features,
        clip_image_pool,
        clip_patch_features,
        clip_text_features,
        load_clip,
    )
    from lvseg.train.shapes_clip import (
        ShapesClipConfig,
        contrastive_loss,
        train_shapes_clip,
    )

    model, tokenizer = _untrained_shapes_clip()
    pixels = torch.randn(3, 3, 96, 96)
    texts = ["the red circle", "the small square", "the leftmost object"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        cls = clip_image_features(model, pixels)
        assert clip_image_pool(model) == "cls"
        model.config.lvseg_image_pool = "mean"
        assert clip_image_pool(model) == "mean"
        mean = clip_image_features(model, pixels)
        tokens = model.vision_model(pixel_values=pixels).last_hidden_state  # [3, 1 + 144, 64]
        by_hand = model.visual_projection(model.vision_model.post_layernorm(tokens[:, 1:])).mean(1)
        assert torch.allclose(mean, by_hand, rtol=1e-5, atol=1e-6)
        assert torch.equal(clip_image_features(model, pixels, pool="cls"), cls)
        assert not torch.allclose(mean, cls, atol=1e-3)
        image = F.normalize(mean, dim=-1)
        text = F.normalize(clip_text_features(model, enc["input_ids"], enc["attention_mask"]), dim=-1)
        logits = model.logit_scale.exp() * image @ text.t()
        target = torch.arange(3)
        expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        loss = contrastive_loss(model, pixels, enc["input_ids"], enc["attention_mask"])
        assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="pool must be one of"):
        clip_image_features(model, pixels, pool="median")
    model.config.lvseg_image_pool = "median"
    with pytest.raises(ConfigError, match="lvseg_image_pool"):
        clip_image_features(model, pixels)

    # pool="max": each image scores a text by its best-matching projected patch token (no single image embedding)
    model.config.lvseg_image_pool = "max"
    with pytest.raises(ConfigError, match="clip_cosine"):
        clip_image_features(model, pixels)
    with torch.no_grad():
        words = clip_text_features(model, enc["input_ids"], enc["attention_mask"])
        cosine = clip_cosine(model, pixels, words)  # [3 images, 3 texts]
        by_hand_patches = model.visual_projection(model.vision_model.post_layernorm(tokens[:, 1:]))  # [3, 144, 32]
        patches = F.normalize(by_hand_patches, dim=-1)
        for i in range(3):
            for j in range(3):
                best = (patches[i] @ F.normalize(words[j], dim=0)).max()
                assert torch.allclose(cosine[i, j], best, rtol=1e-5, atol=1e-6)
        assert torch.allclose(clip_patch_features(model, pixels), by_hand_patches)
        # the training loop's one-forward path: the same pooling on patch tokens already computed, exactly
        assert torch.equal(best_patch_cosine(clip_patch_features(model, pixels), words), cosine)
        loss = contrastive_loss(model, pixels, enc["input_ids"], enc["attention_mask"])
        logits = model.logit_scale.exp() * cosine
        expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-6)

    config = ShapesClipConfig(steps=2, batch=4, num_train=4, frames=2, pool="mean")
    trained, _, _ = train_shapes_clip(tmp_path / "clip", config, progress=False)
    loaded = load_clip(tmp_path / "clip")  # the strict loader VLP-RVOS uses keeps the pooling
    assert clip_image_pool(loaded) == "mean"
    with torch.no_grad():
        assert torch.allclose(clip_image_features(loaded, pixels), clip_image_features(trained, pixels), atol=1e-6)
    with pytest.raises(ConfigError, match="pool"):
        train_shapes_clip(None, ShapesClipConfig(pool="median"), progress=False)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_matches_cpu(tokenizer, dtype):
    model = _model(tokenizer)
    frames = _frames(2, 8)
    ref, _ = model.segment(frames, TEXTS)
    gpu = model.to(device="cuda", dtype=dtype)
    out, scores = gpu.segment(frames.cuda(), TEXTS)
    assert out.device.type == "cuda" and scores.shape == (2, 8)
    tolerance = 1e-3 if dtype == torch.float32 else 0.1  # TF32/bf16 matmuls on the GPU
    assert float((out.float().cpu() - ref).abs().max()) < tolerance * float(ref.abs().max())


def test_patch_attribute_probe_reads_colour_from_any_tower_and_labels_only_covered_patches():
    """The per-patch probe: colour is in the pixels, so even a random tower's patch tokens give it away; shape and
    size are scored against real labels (patches more than half covered by one object), with their majority."""

    from lvseg.data.shapes import COLORS, SHAPES, SIZES, make_video
    from lvseg.train.shapes_clip import (
        _patch_labels,
        patch_attribute_probe,
    )

    frames, labels = _patch_labels(1, "valid", 3, 96, 8)
    assert frames.shape == (3, 96, 96, 3) and labels.shape == (3, 144, 3)
    video, rendered, ids = make_video(1, "valid", 0, 8, 96, 96)
    assert np.array_equal(frames[0], rendered[4])
    for k in np.flatnonzero(labels[0, :, 0] >= 0):  # a labelled patch is mostly that object
        cell = ids[4][(k // 12) * 8 : (k // 12 + 1) * 8, (k % 12) * 8 : (k % 12 + 1) * 8]
        obj = next(o for o in video.objects if (cell == o.obj_id).sum() > 32)
        assert tuple(labels[0, k]) == (SHAPES.index(obj.shape), SIZES.index(obj.size), list(COLORS).index(obj.color))
    assert 0 < int((labels[..., 0] >= 0).sum()) < labels.shape[0] * labels.shape[1]

    model, _ = _untrained_shapes_clip()
    probe = patch_attribute_probe(model, num_train=30, num_test=10, steps=100)
    assert set(probe) == {"layer1", "layer2", "layer3", "layer4", "majority"}
    assert all(set(r) == {"shape", "size", "color"} for r in probe.values())
    assert min(r["color"] for k, r in probe.items() if k != "majority") > 0.9 > probe["majority"]["color"] + 0.4


def test_pointing_game_counts_a_hit_when_the_best_patch_lies_on_the_referent():
    """The pointing game of the Shapes CLIP, checked by hand on six held-out videos: per expression, the best
    patch's 8x8 cell either holds a referent pixel (hit) or not; kinds and 'all' count every expression once."""
    import torch.nn.functional as F

    from lvseg.data.shapes import expression_kind, expression_semantics, make_video
    from lvseg.models.vlp_rvos.backbones import clip_patch_features, clip_text_features
    from lvseg.train.shapes_clip import (
        _is_motion,
        normalise_frames,
        pointing_game,
    )

    model, tokenizer = _untrained_shapes_clip()
    result = pointing_game(model, tokenizer, num_videos=6)
    hits, chance, kinds = [], [], {}
    for i in range(6):
        video, frames, ids = make_video(1, "valid", i, 8, 96, 96)
        for text in (t for t, _ in video.expressions if not _is_motion(t)):
            enc = tokenizer([text], return_tensors="pt")
            with torch.no_grad():
                patches = F.normalize(clip_patch_features(model, normalise_frames(frames[4][None])), dim=-1)[0]
                sentence = F.normalize(clip_text_features(model, enc["input_ids"], enc["attention_mask"]), dim=-1)[0]
            best = int((patches @ sentence).argmax())
            row, col = divmod(best, 12)
            referent = np.isin(ids[4], list(expression_semantics(text, video.objects)))
            hits.append(float(referent[row * 8 : row * 8 + 8, col * 8 : col * 8 + 8].any()))
            cells = referent.reshape(12, 8, 12, 8).any(axis=(1, 3))
            chance.append(float(cells.mean()))
            kinds[expression_kind(text)] = kinds.get(expression_kind(text), 0) + 1
    assert result["all"]["expressions"] == len(hits) > 0
    assert 0 < sum(hits) < len(hits)  # this untrained tower hits some referents by chance: both cases are checked
    assert result["all"]["hits"] == pytest.approx(np.mean(hits))
    assert result["all"]["chance"] == pytest.approx(np.mean(chance))
    assert {k: int(v["expressions"]) for k, v in result.items() if k != "all"} == kinds


def test_shapes_clip_attribute_pretraining_labels_covered_patches_and_learns_colour():
    """cell_attributes labels a patch with the object covering more than half of it (row-major, -1 elsewhere);
    attribute_steps trains the image tower on those labels before the contrastive stage (colour, a per-pixel
    property, is learned within a few dozen steps), and a negative count is refused."""
    from lvseg.data.shapes import COLORS, SHAPES, SIZES, ShapeObject
    from lvseg.errors import ConfigError
    from lvseg.train.shapes_clip import ShapesClipConfig, cell_attributes, train_shapes_clip

    def obj(i, color, shape, size):
        return ShapeObject(i, color, shape, size, "still", 16, np.zeros(1, np.int64), np.zeros(1, np.int64))

    idmap = np.zeros((8, 12), dtype=np.uint8)  # cells of 4 x 4: a 2 x 3 grid
    idmap[0:4, 0:3] = 1  # 12 of 16 pixels: object 1 covers cell (0, 0)
    idmap[0:2, 4:8] = 2  # 8 of 16: exactly half, not more: cell (0, 1) stays unlabelled
    idmap[4:8, 8:12] = 3  # the whole cell (1, 2)
    objects = [obj(1, "red", "circle", "big"), obj(2, "blue", "star", "small"), obj(3, "green", "square", "small")]
    labels = cell_attributes(idmap, objects, 4)
    colors = list(COLORS)
    expected = np.full((6, 3), -1)
    expected[0] = (SHAPES.index("circle"), SIZES.index("big"), colors.index("red"))
    expected[5] = (SHAPES.index("square"), SIZES.index("small"), colors.index("green"))
    assert np.array_equal(labels, expected)

    config = ShapesClipConfig(steps=1, batch=8, num_train=12, frames=2, attribute_steps=100)
    _, _, record = train_shapes_clip(None, config, progress=False)
    history = record["attribute_pretraining"]["accuracy_every_50_steps"]
    assert [step for step, _ in history] == [50, 100]
    assert history[-1][1]["color"] > 0.6 > 1 / len(COLORS) + 0.3  # well above chance on the labelled patches
    assert history[-1][1]["color"] > history[0][1]["color"]
    with pytest.raises(ConfigError, match="attribute_steps"):
        train_shapes_clip(None, ShapesClipConfig(attribute_steps=-1), progress=False)


def test_shapes_clip_grounding_loss_targets_the_referent_cells_and_trains_the_patches():
    """referent_coverage is each cell's share of referent pixels (row-major); grounding_loss is the cross-entropy
    of each text's softmax over its own frame's patches against that coverage, normalised, leaving out rows whose
    referent is hidden; grounding_weight adds it to the contrastive stage, whose texts then point at their
    referents on the training frames far better than the untrained tower; a negative weight is refused."""
    import torch.nn.functional as F

    from lvseg.errors import ConfigError
    from lvseg.models.vlp_rvos.backbones import clip_patch_features, clip_text_features
    from lvseg.train.shapes_clip import (
        ShapesClipConfig,
        ShapesPairs,
        _tokenize,
        grounding_loss,
        normalise_frames,
        referent_coverage,
        train_shapes_clip,
    )

    idmap = np.zeros((8, 12), dtype=np.uint8)  # cells of 4 x 4: a 2 x 3 grid
    idmap[0:4, 0:3] = 1  # 12 of 16 pixels of cell (0, 0)
    idmap[0:2, 4:8] = 2  # 8 of 16 pixels of cell (0, 1)
    idmap[4:8, 8:12] = 3  # all of cell (1, 2)
    assert np.array_equal(referent_coverage(idmap, {1, 3}, 4), np.array([0.75, 0, 0, 0, 0, 1], dtype=np.float32))
    assert np.array_equal(referent_coverage(idmap, [2], 4), np.array([0, 0.5, 0, 0, 0, 0], dtype=np.float32))
    assert not referent_coverage(idmap, set(), 4).any()

    gen = torch.Generator().manual_seed(0)
    patches, text = torch.randn(3, 6, 5, generator=gen), torch.randn(3, 5, generator=gen)
    coverage = torch.tensor([[0.75, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0], [0, 0.5, 0, 0, 0, 0]])
    logits = 7.0 * torch.einsum("bpe,be->bp", F.normalize(patches, dim=-1), F.normalize(text, dim=-1))
    rows = [0, 2]  # row 1 has no referent pixel
    expected = torch.stack(
        [-(coverage[i] / coverage[i].sum() * logits[i].log_softmax(0)).sum() for i in rows]
    ).mean()
    assert torch.allclose(grounding_loss(patches, text, coverage, 7.0), expected, rtol=1e-5, atol=1e-6)
    hidden = grounding_loss(patches.requires_grad_(), text, torch.zeros(3, 6), 7.0)
    assert float(hidden.detach()) == 0.0 and hidden.requires_grad
    with pytest.raises(ConfigError, match="coverage"):
        grounding_loss(patches, text, coverage[:, :4], 7.0)

    def pointing(model, tokenizer, data):
        """share of (frame, text) pairs of the training videos whose best patch lies on the referent"""
        rng = np.random.default_rng(5)
        frames, texts, videos, times = data.sample_indexed(len(data), rng)
        ids, mask = _tokenize(tokenizer, texts, 40)
        with torch.no_grad():
            p = F.normalize(clip_patch_features(model, normalise_frames(frames)), dim=-1)
            t = F.normalize(clip_text_features(model, ids, mask), dim=-1)
        best = torch.einsum("bpe,be->bp", p, t).argmax(1)
        cover = data.referent_coverage(texts, videos, times, 8)
        return float((cover[torch.arange(len(best)), best] > 0).double().mean())

    config = ShapesClipConfig(steps=150, batch=16, num_train=24, frames=2, pool="max", grounding_weight=1.0)
    model, tokenizer, record = train_shapes_clip(None, config, progress=False)
    assert [step for step, _ in record["grounding_loss_every_50_steps"]] == [50, 100, 150]
    data = ShapesPairs(config.seed, "train", config.num_train, config.frames, config.size)
    untrained, _ = _untrained_shapes_clip()
    trained, before = pointing(model, tokenizer, data), pointing(untrained, tokenizer, data)
    assert trained > before + 0.25, (trained, before)
    with pytest.raises(ConfigError, match="grounding_weight"):
        train_shapes_clip(None, ShapesClipConfig(grounding_weight=-1.0), progress=False)


def test_shapes_clip_motion_loss_separates_the_motion_phrases():
    """motion_class reads the motion phrase an expression ends with (0: none); motion_weight adds a text-side
    motion classifier to the contrastive stage, after which the text tower puts "the object moving left" and
    "the object moving right" far apart (the untrained and the motion-free towers do not); a negative weight is
    refused."""
    from lvseg.data.shapes import MOTIONS
    from lvseg.errors import ConfigError
    from lvseg.train.shapes_clip import (
        ShapesClipConfig,
        ShapesPairs,
        motion_class,
        motion_separation,
        train_shapes_clip,
    )

    assert motion_class("the object") == 0
    assert motion_class("the red circle moving left") == 1 + MOTIONS.index("left")
    assert motion_class("the big squares bouncing around") == 1 + MOTIONS.index("bouncing")
    assert motion_class("The Star Standing Still") == 1 + MOTIONS.index("still")
    assert motion_class("the leftmost object") == 0  # "left" inside a word is not a motion
    data = ShapesPairs(0, "train", 12, frames=2)
    assert data.motion_texts and all(motion_class(t) > 0 for t in data.motion_texts)
    assert all(motion_class(t) == 0 for texts in data.texts for t in texts)

    base = dict(steps=100, batch=16, num_train=24, frames=2)
    plain, tokenizer, plain_record = train_shapes_clip(None, ShapesClipConfig(**base), progress=False)
    moving, _, record = train_shapes_clip(None, ShapesClipConfig(**base, motion_weight=1.0), progress=False)
    untrained, _ = _untrained_shapes_clip()
    history = record["motion_loss_accuracy_every_50_steps"]
    assert [step for step, _, _ in history] == [50, 100] and history[-1][2] > 0.9, history
    assert plain_record["motion_loss_accuracy_every_50_steps"] == []
    separated = motion_separation(moving, tokenizer)["motion"]
    assert separated < motion_separation(plain, tokenizer)["motion"] - 0.3
    assert separated < motion_separation(untrained, tokenizer)["motion"] - 0.3
    with pytest.raises(ConfigError, match="motion_weight"):
        train_shapes_clip(None, ShapesClipConfig(motion_weight=-1.0), progress=False)
