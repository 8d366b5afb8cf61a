"""ReferFormer: parity with the official code (golden fixtures), converter, protocols, windowing, dtypes.

The golden fixtures (tests/fixtures/referformer/*.json|safetensors) were written by generate_golden.py from
the official code (wjn922/ReferFormer 06fc218f5d8f04730f81471a15ed89ea7e4d30d8) with deterministic weights
(referformer_weights.py); the tests rebuild the same official-format checkpoint, convert it with our
converter and compare.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gzip
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lvseg.errors import CheckpointError, ConfigError, InvalidInputError, InvalidTextError
from lvseg.models.layers.swin import _relative_position_index, effective_window
from lvseg.models.referformer.config import ReferFormerConfig, SwinConfig
from lvseg.models.referformer.convert import convert, convert_state_dict, convert_to_folder, infer_config
from lvseg.models.referformer.model import ReferFormer

from parity import (
    COMPILED_RELATIVE_TOLERANCE,
    RELATIVE_TOLERANCE,
    relative_deviation,
    assert_parity,
    parity_failures,
    swap_weights,
    threshold_margin_failures,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "referformer"
sys.path.insert(0, str(FIXTURES))
from referformer_weights import fill_official_state  # noqa: E402

TOKENIZER = FIXTURES / "tokenizer"


def tokenizer():
    from transformers import RobertaTokenizerFast

    return RobertaTokenizerFast.from_pretrained(str(TOKENIZER))


def official_checkpoint(name: str, path: Path) -> tuple[Path, dict]:
    """Rebuild the official-format checkpoint of fixture ``name`` (the weights the golden outputs came from)."""
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    rows = meta["state_dict"]
    floats = {k: tuple(s) for k, s, dt in rows
              if dt.startswith("float") and not k.startswith("transformer.decoder.bbox_embed.")}
    state = fill_official_state(floats)
    for k, s, dt in rows:
        if k.startswith("transformer.decoder.bbox_embed."):
            state[k] = state[k[len("transformer.decoder."):]].clone()
        elif k.endswith("relative_position_index"):
            window = (8, 7, 7) if s[0] == 392 else (1, 7, 7)
            state[k] = _relative_position_index(window)
    assert set(state) == {k for k, _, _ in rows}
    args = argparse.Namespace(backbone=meta["official_backbone_arg"], nheads=8, dynamic_mask_channels=8,
                              controller_layers=3, rel_coord=True, dropout=0.1, with_box_refine=True)
    torch.save({"model": state, "optimizer": {}, "lr_scheduler": {"milestones": collections.Counter({3: 1})},
                "epoch": 5, "args": args}, path)
    return path, meta


class NotAllowed:
    """A class outside the converter's unpickling allow-list."""


def golden_frames(meta: dict, golden: dict) -> torch.Tensor:
    b, t = golden["pred_logits"].shape[:2]
    h, w = meta["size"]
    return torch.randn(b, t, 3, h, w, generator=torch.Generator().manual_seed(meta["frames_seed"]))


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    path, meta = official_checkpoint("r50", tmp_path_factory.mktemp("r50") / "checkpoint.pth")
    state, config = convert(path)
    model = ReferFormer(config, tokenizer=tokenizer())
    model.load_state_dict(state, strict=True)
    golden = load_file(str(FIXTURES / "r50.safetensors"))
    return model.eval(), meta, golden, golden_frames(meta, golden)


def use_msda_backend(model, backend):
    """The official outputs were computed with the pure-PyTorch MSDA (grid_sample): compare on the same path."""
    from lvseg.ops import MSDeformAttn

    for module in model.modules():
        if isinstance(module, MSDeformAttn):
            module.backend = backend


def raw_outputs(model, meta, frames, backend="reference") -> dict[str, torch.Tensor]:
    """The outputs the golden fixtures hold, by fixture key, computed with the MSDA ``backend``."""
    use_msda_backend(model, backend)
    try:
        with torch.no_grad():
            out = model(frames, meta["expressions"])
    finally:
        use_msda_backend(model, None)
    pairs = {k: out[k] for k in ("pred_logits", "pred_boxes", "pred_masks", "reference_points")}
    for i, aux in enumerate(out["aux_outputs"]):
        pairs.update({f"aux{i}.{k}": aux[k] for k in ("pred_logits", "pred_boxes", "pred_masks")})
    return pairs


def ytvos_mask_failures(model, meta, golden, frames, margin: float, backend="reference") -> int:
    """Pixels of the golden Ref-YouTube-VOS masks that logits within ``margin`` of ours cannot explain."""
    use_msda_backend(model, backend)
    try:
        logits, _ = model.segment(frames, meta["expressions"], protocol="ytvos")
    finally:
        use_msda_backend(model, None)

    def to_mask(x):
        return F.interpolate(x[None], size=tuple(meta["orig_size"]), mode="bilinear", align_corners=False)[0] > 0

    return sum(threshold_margin_failures(to_mask, logits[i], golden[f"ytvos_binary.{i}"], margin)
               for i in range(len(meta["expressions"])))


def assert_matches_golden(model, meta, golden, frames):
    """Every raw output within RELATIVE_TOLERANCE of its magnitude, the binary masks up to that rounding."""
    assert_parity(raw_outputs(model, meta, frames), golden)
    margin = RELATIVE_TOLERANCE * golden["pred_masks"].abs().max().item()
    assert ytvos_mask_failures(model, meta, golden, frames, margin) == 0


def test_resnet50_matches_the_official_outputs(r50):
    model, meta, golden, frames = r50
    assert meta["official_commit"] == "06fc218f5d8f04730f81471a15ed89ea7e4d30d8"
    assert model.config.backbone == "resnet50" and model.config.hidden_dim == 64
    assert_matches_golden(model, meta, golden, frames)
    # Ref-YouTube-VOS protocol: one query per video, the argmax of the frame-averaged scores
    use_msda_backend(model, "reference")
    try:
        logits, scores = model.segment(frames, meta["expressions"])
    finally:
        use_msda_backend(model, None)
    assert logits.shape == (2, 3, 16, 24) and scores.shape == (2, 3)
    queries = [int(golden[f"ytvos_query.{i}"]) for i in range(2)]
    assert_parity({f"logits.{i}": logits[i] for i in range(2)},
                  {f"logits.{i}": golden["pred_masks"][i, :, q] for i, q in enumerate(queries)})
    assert_parity({f"scores.{i}": scores[i] for i in range(2)},
                  {f"scores.{i}": golden["pred_logits"][i, :, q, 0].sigmoid() for i, q in enumerate(queries)})


@pytest.mark.parametrize("name", ["swin", "video-swin", "video-swin-10f"])
def test_swin_backbones_match_the_official_outputs(name, tmp_path):
    """Tiny Swin / Video Swin (the official code with reduced sizes): 64x96 input makes the late stages smaller
    than the 7x7 window, exercising 2-D padding and Video-Swin window clamping with index slicing; the 10-frame
    clip (32x48) exercises the full temporal window of 8 with shift 4 and temporal padding."""
    path, meta = official_checkpoint(name, tmp_path / "checkpoint.pth")
    folder = convert_to_folder(path, tmp_path / "model", tokenizer=str(TOKENIZER))
    from lvseg.hub import from_pretrained

    model = from_pretrained(folder, device="cpu")
    assert model.config.backbone == meta["backbone"] and model.config.swin.embed_dim == 32
    golden = load_file(str(FIXTURES / f"{name}.safetensors"))
    assert_matches_golden(model, meta, golden, golden_frames(meta, golden))


# One pair of same-shaped converted weights exchanged, as a wrong key mapping would: the parity check above must
# catch it. The LayerNorm scales of one block differ only by their 0.1-sized noise, the subtlest swap there is.
SWAPS = {
    "r50": ("transformer.decoder.layers.0.norm1.weight", "transformer.decoder.layers.0.norm2.weight"),
    "r50-text": ("text_encoder.encoder.layer.0.attention.self.query.weight",
                 "text_encoder.encoder.layer.0.attention.self.key.weight"),
    "video-swin": ("backbone.layers.3.blocks.1.norm1.weight", "backbone.layers.3.blocks.1.norm2.weight"),
}


@pytest.mark.parametrize("case", sorted(SWAPS))
def test_a_swapped_weight_pair_fails_the_parity_check(case, tmp_path):
    name = case.split("-text")[0]
    path, meta = official_checkpoint(name, tmp_path / "checkpoint.pth")
    state, config = convert(path)
    golden = load_file(str(FIXTURES / f"{name}.safetensors"))
    frames = golden_frames(meta, golden)
    model = ReferFormer(config, tokenizer=tokenizer()).eval()
    model.load_state_dict(swap_weights(state, *SWAPS[case]), strict=True)
    failures = parity_failures(raw_outputs(model, meta, frames), golden)
    # the final masks move by ~10% of their magnitude (measured 0.08 .. 0.39): a thousand times the tolerance
    assert failures.get("pred_masks", 0.0) > 100 * RELATIVE_TOLERANCE, failures
    with pytest.raises(AssertionError, match="pred_masks"):
        assert_matches_golden(model, meta, golden, frames)


def test_compiled_msda_agrees_with_the_reference_op(r50):
    """The compiled CPU op sums in another order than grid_sample: bounded against the reference op on this
    machine, in this run (relative to each output's magnitude), and the masks still match the official ones."""
    from lvseg.ops import select_backend

    if select_backend("cpu", "cpu") != "cpu":
        pytest.skip("the compiled CPU MSDA op is not available here")
    model, meta, golden, frames = r50
    compiled = raw_outputs(model, meta, frames, backend="cpu")
    reference = raw_outputs(model, meta, frames, backend="reference")
    assert_parity(compiled, reference, tolerance=COMPILED_RELATIVE_TOLERANCE)
    margin = (RELATIVE_TOLERANCE + COMPILED_RELATIVE_TOLERANCE) * golden["pred_masks"].abs().max().item()
    assert ytvos_mask_failures(model, meta, golden, frames, margin, backend="cpu") == 0


def official_meta_state(backbone: str) -> dict[str, torch.Tensor]:
    with gzip.open(FIXTURES / "official_keys.json.gz", "rt") as f:
        rows = json.load(f)["state_dicts"][backbone]
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    return {k: torch.empty(s, dtype=dtypes[dt], device="meta") for k, s, dt in rows}


@pytest.mark.parametrize("backbone", ["resnet50", "resnet101", "swin-t", "swin-s", "swin-b", "swin-l",
                                      "video-swin-t", "video-swin-s", "video-swin-b"])
def test_every_official_backbone_converts_and_loads_strictly(backbone):
    """The official keys and shapes of the nine backbones (full size) map 1:1 onto our model."""
    state = official_meta_state(backbone)
    config = infer_config(state, {}, None)
    assert config.backbone == backbone and config.hidden_dim == 256 and config.num_queries == 5
    assert config.text_encoder["num_hidden_layers"] == 12 and config.text_encoder["vocab_size"] == 50265
    converted = convert_state_dict(state, config)
    assert not any(k.startswith("transformer.decoder.bbox_embed") for k in converted)
    with torch.device("meta"):
        model = ReferFormer(config)
    result = model.load_state_dict(converted, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    # a config.json round trip describes the same model
    again = ReferFormerConfig.from_dict(json.loads(config.to_json_string()))
    assert again == config


def test_converter_names_unmapped_and_missing_keys():
    state = official_meta_state("swin-t")
    config = infer_config(state, {}, None)
    bad = dict(state)
    bad["transformer.some_new_layer.weight"] = torch.empty(3, device="meta")
    with pytest.raises(CheckpointError, match="transformer.some_new_layer.weight"):
        convert_state_dict(bad, config)
    bad = dict(state)
    del bad["pixel_decoder.layer_2.weight"]
    with pytest.raises(CheckpointError, match="pixel_decoder.layer_2.weight"):
        convert_state_dict(bad, config)


def test_converter_rejects_mismatched_backbone_unsafe_pickles_and_bad_aliases(tmp_path):
    state = official_meta_state("resnet101")
    with pytest.raises(CheckpointError, match="resnet101"):
        infer_config(state, {}, "resnet50")

    torch.save({"model": {}, "args": NotAllowed()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="NotAllowed, which is not among the types lvseg accepts") as info:
        convert(tmp_path / "evil.pth")
    assert "weights_only" not in str(info.value)  # PyTorch's advice to run the file's code never reaches a user
    with pytest.raises(CheckpointError, match="does not exist"):
        convert(tmp_path / "missing.pth")

    path, _ = official_checkpoint("video-swin", tmp_path / "ok.pth")
    ckpt = torch.load(path, weights_only=False)
    ckpt["model"]["transformer.decoder.bbox_embed.0.layers.0.bias"] += 1
    torch.save(ckpt, tmp_path / "alias.pth")
    with pytest.raises(CheckpointError, match="not an exact copy"):
        convert(tmp_path / "alias.pth")


def test_davis_and_frame_protocols(r50):
    model, meta, _, frames = r50
    frames = frames[:, :, :, :32, :48]  # small crops keep this fast; protocols do not depend on the size
    texts = meta["expressions"]
    with torch.no_grad():
        out = model(frames, texts)
    model.config.davis_clip_frames = 2
    try:
        logits, scores = model.segment(frames, texts, protocol="davis")
    finally:
        model.config.davis_clip_frames = 36
    # clips [0, 1] and [2] choose their queries independently, each from its own forward pass
    for sl in (slice(0, 2), slice(2, 3)):
        ref_logits, ref_scores = model.segment(frames[:, sl], texts, protocol="ytvos")
        assert torch.equal(logits[:, sl], ref_logits) and torch.equal(scores[:, sl], ref_scores)
    logits, scores = model.segment(frames, texts, protocol="frame")
    per_query = out["pred_logits"].sigmoid()[..., 0]  # [b, t, q]
    assert torch.equal(scores, per_query.max(-1).values)
    best = per_query.argmax(-1)
    expected = out["pred_masks"].gather(2, best[..., None, None, None].expand(-1, -1, 1, 8, 12)).squeeze(2)
    assert torch.equal(logits, expected)
    with pytest.raises(ConfigError, match="protocol"):
        model.segment(frames, texts, protocol="coco")


def test_windowed_inference(r50):
    """max_frames_per_pass >= T is exactly one pass; shorter passes cut the temporal context of the CM-FPN
    (documented) but the query is still chosen over the whole clip from the concatenated pass outputs."""
    model, meta, _, frames = r50
    frames = frames[:, :, :, :32, :48]
    texts = meta["expressions"]
    one_pass = model.segment(frames, texts)
    model.config.max_frames_per_pass = 3
    same = model.segment(frames, texts)
    model.config.max_frames_per_pass = 2
    try:
        windowed_logits, windowed_scores = model.segment(frames, texts)
    finally:
        model.config.max_frames_per_pass = 36
    assert torch.equal(same[0], one_pass[0]) and torch.equal(same[1], one_pass[1])
    with torch.no_grad():
        parts = [model(frames[:, s], texts) for s in (slice(0, 2), slice(2, 3))]
    scores = torch.cat([p["pred_logits"] for p in parts], 1).sigmoid()
    masks = torch.cat([p["pred_masks"] for p in parts], 1)
    best = scores.mean(1).max(-1).values.argmax(-1)
    for i in range(2):
        assert torch.equal(windowed_logits[i], masks[i, :, best[i]])
        assert torch.equal(windowed_scores[i], scores[i, :, best[i], 0])
    assert not torch.equal(windowed_logits, one_pass[0])  # the context cut is real

    # Predictor-style windows: the query follows the running mean of all frames seen so far
    first, _, state = model.segment_window(frames[:, :2], texts)
    assert torch.equal(first, model.segment(frames[:, :2], texts)[0])
    second, _, state = model.segment_window(frames[:, 2:], texts, state)
    sums, count = state
    assert count == 3
    best = (sums / 3).max(-1).values.argmax(-1)
    for i in range(2):
        assert torch.equal(second[i], parts[1]["pred_masks"][i, :, best[i]])


def test_bfloat16_agrees_with_float32(r50):
    model, meta, _, frames = r50
    frames = frames[:1, :2, :, :32, :48]
    texts = meta["expressions"][:1]
    half = ReferFormer(model.config, tokenizer=model.tokenizer).eval()
    half.load_state_dict(model.state_dict())
    half.to(torch.bfloat16)
    with torch.no_grad():
        ref = model(frames, texts)
        out = half(frames.to(torch.bfloat16), texts)
    assert out["pred_masks"].dtype == torch.bfloat16
    assert (out["pred_boxes"].float() - ref["pred_boxes"]).abs().max() < 0.05
    assert (out["pred_logits"].float().sigmoid() - ref["pred_logits"].sigmoid()).abs().max() < 0.05
    agreement = ((out["pred_masks"].float() > 0) == (ref["pred_masks"] > 0)).float().mean()
    assert agreement > 0.95


def test_a2d_valid_frame_is_decoded_alone_after_the_backbone(r50):
    """A2D/JHMDB: only the annotated frame goes past the backbone; with a per-frame (2-D) backbone that equals
    running the model on that frame alone."""
    model, meta, _, frames = r50
    frames = frames[:, :, :, :32, :48]
    texts = meta["expressions"]
    with torch.no_grad():
        out = model(frames, texts, valid_indices=[2, 0])
        alone = [model(frames[i:i + 1, [f]], texts[i:i + 1]) for i, f in enumerate((2, 0))]
    assert out["pred_masks"].shape[:3] == (2, 1, 5)
    # equal up to float rounding, bounded relative to each output's magnitude (tests/parity.py): oneDNN's
    # channels-last convolutions may block a 3-frame batch differently from a 1-frame one
    for i in range(2):
        for key in ("pred_masks", "pred_logits"):
            assert relative_deviation(out[key][i], alone[i][key][0]) <= RELATIVE_TOLERANCE, key
    with pytest.raises(InvalidInputError, match="valid_indices"):
        model(frames, texts, valid_indices=[3, 0])


def test_fused_attention_agrees_with_the_exact_path(r50):
    model, meta, _, frames = r50
    frames = frames[:, :2, :, :32, :48]
    fused = ReferFormer(dataclasses.replace(model.config, fused_attention=True), tokenizer=model.tokenizer).eval()
    fused.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref, out = model(frames, meta["expressions"]), fused(frames, meta["expressions"])
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        scale = ref[key].abs().max().item()
        assert (out[key] - ref[key]).abs().max().item() <= 1e-5 * max(1.0, scale), key


def test_bad_inputs_raise_clear_errors(r50):
    model, meta, golden, frames = r50
    with pytest.raises(InvalidInputError, match=r"\[B, T, 3, H, W\]"):
        model.segment(frames[0], meta["expressions"])
    with pytest.raises(InvalidInputError, match="one video per expression"):
        model.segment(frames, ["only one"])
    with pytest.raises(InvalidTextError, match="empty"):
        model.segment(frames, ["a dog", "   "])
    bare = ReferFormer(model.config)
    with pytest.raises(ConfigError, match="tokenizer"):
        bare.segment(frames[:1, :1], ["a dog"])
    with pytest.raises(ConfigError, match="backbone"):
        ReferFormerConfig(backbone="resnet18")
    with pytest.raises(ConfigError, match="swin"):
        ReferFormerConfig(backbone="video-swin")


def test_video_swin_window_clamping():
    assert effective_window((5, 90, 160), (8, 7, 7), (4, 3, 3), clamp=True) == ((5, 7, 7), (0, 3, 3))
    assert effective_window((12, 6, 160), (8, 7, 7), (4, 3, 3), clamp=True) == ((8, 6, 7), (4, 0, 3))
    assert effective_window((1, 6, 6), (1, 7, 7), (0, 3, 3), clamp=False) == ((1, 7, 7), (0, 3, 3))
    # the index of a temporally clamped window is the top-left block of the full one
    full = _relative_position_index((8, 7, 7))
    assert torch.equal(full[:98, :98], _relative_position_index((2, 7, 7)) + 169 * 6)


def test_gradient_checkpointing_gives_the_same_gradients():
    config = ReferFormerConfig(backbone="video-swin", swin=SwinConfig(16, (1, 1, 2, 1), (1, 2, 2, 4), (8, 7, 7), 0.0),
                               hidden_dim=32, dim_feedforward=32, enc_layers=1, dec_layers=2, mask_dim=32,
                               text_encoder=dict(vocab_size=400, hidden_size=64, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=32,
                                                 max_position_embeddings=40))
    torch.manual_seed(0)
    model = ReferFormer(config, tokenizer=tokenizer()).train()
    frames = torch.randn(1, 2, 3, 64, 64)
    grads = []
    for flag in (False, True):
        model.backbone.gradient_checkpointing = flag
        model.zero_grad()
        torch.manual_seed(1)
        out = model(frames, ["a dog"])
        (out["pred_masks"].mean() + out["pred_boxes"].sum()).backward()
        grads.append(model.backbone.layers[0].blocks[0].attn.qkv.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_mean_sentence_pooling_averages_the_unpadded_word_states():
    text = dict(vocab_size=400, hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=40)
    config = ReferFormerConfig(backbone="timm", timm_model="test_convnext", hidden_dim=32, dim_feedforward=32,
                               enc_layers=1, dec_layers=1, mask_dim=32, text_encoder=text, sentence_pooling="mean")
    torch.manual_seed(0)
    model = ReferFormer(config, tokenizer=tokenizer()).eval()
    assert model.text_encoder.pooler is None  # no unused pooler weights in the checkpoint (or under DDP)
    texts = ["a dog", "the big red dog on the left"]  # the first is padded in the batch
    with torch.no_grad():
        words, pad, sentence = model.encode_text(texts)
        alone = model.encode_text(texts[:1])[2]
        states = model.text_encoder(**model.tokenizer(texts[:1], return_tensors="pt")).last_hidden_state
    assert pad[0].any() and not pad[1].any()
    torch.testing.assert_close(sentence[:1], alone, atol=1e-5, rtol=1e-5)  # padding does not change the mean
    torch.testing.assert_close(alone, model.resizer(states.mean(1)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="sentence_pooling"):
        ReferFormerConfig(backbone="timm", timm_model="test_convnext", sentence_pooling="max")


def test_text_reference_points_start_where_the_sentence_query_attends():
    from lvseg.models.referformer.transformer import DeformableTransformer

    tr = DeformableTransformer(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32,
                               query_reference="text")
    with torch.no_grad():
        for lin in (tr.reference_query, tr.reference_key):
            lin.weight.copy_(torch.eye(32))
            lin.bias.zero_()
    h, w = 4, 6
    memory = torch.zeros(2, h * w + 5, 32)  # the first level's 24 positions, then other levels' (ignored)
    query = torch.zeros(2, 1, 32)
    query[:, :, 0] = 40.0
    memory[0, 1 * w + 4, 0] = 10.0  # row 1, column 4 of the first level
    memory[1, 2 * w + 1, 0] = 10.0  # row 2, column 1; this sample's valid area is 3 of 4 rows and 4 of 6 columns
    memory[:, h * w:, 0] = 100.0  # a stronger match on a coarser level must not count
    pad = torch.zeros(2, h * w + 5, dtype=torch.bool)
    pad1 = torch.ones(h, w, dtype=torch.bool)
    pad1[:3, :4] = False
    pad[1, :h * w] = pad1.flatten()
    ratios = torch.tensor([[[1.0, 1.0]] * 4, [[4 / 6, 3 / 4]] * 4])
    ref = tr._text_reference(query, memory, (h, w), pad, ratios)
    torch.testing.assert_close(ref[0, 0], torch.tensor([4.5 / 6, 1.5 / 4]), atol=1e-4, rtol=0)
    torch.testing.assert_close(ref[1, 0], torch.tensor([1.5 / 4, 2.5 / 3]), atol=1e-4, rtol=0)
    # no preference: the mean of the valid cells' centres, i.e. the middle of the valid area
    ref = tr._text_reference(torch.zeros(2, 1, 32), torch.zeros_like(memory), (h, w), pad, ratios)
    torch.testing.assert_close(ref, torch.full((2, 1, 2), 0.5), atol=1e-5, rtol=0)


def test_text_reference_points_are_trained_by_the_box_loss_and_validated():
    text = dict(vocab_size=400, hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=40)
    config = ReferFormerConfig(backbone="timm", timm_model="test_convnext", hidden_dim=32, dim_feedforward=32,
                               enc_layers=1, dec_layers=2, mask_dim=32, num_queries=1, text_encoder=text,
                               sentence_pooling="mean", query_reference="text")
    torch.manual_seed(0)
    model = ReferFormer(config, tokenizer=tokenizer()).train()
    out = model(torch.randn(1, 2, 3, 64, 64), ["a red dog"])
    centres = out["reference_points"]
    assert centres.shape == (1, 2, 1, 2) and bool(((centres > 0) & (centres < 1)).all())
    # the first decoder layer's boxes refine the initial reference (the box heads start at zero, so the later
    # layers' boxes are the detached references at initialisation)
    out["aux_outputs"][0]["pred_boxes"][..., :2].sum().backward()
    assert model.transformer.reference_query.weight.grad.abs().sum() > 0
    assert model.transformer.reference_key.weight.grad.abs().sum() > 0
    assert not hasattr(model.transformer, "reference_points")  # no unused parameters (DDP would refuse them)
    with pytest.raises(ConfigError, match="query_reference"):
        ReferFormerConfig(backbone="timm", timm_model="test_convnext", query_reference="box")


def _tiny_config(**changes) -> ReferFormerConfig:
    text = dict(vocab_size=400, hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=40)
    return ReferFormerConfig(backbone="timm", timm_model="test_convnext", hidden_dim=32, dim_feedforward=32,
                             enc_layers=1, dec_layers=2, mask_dim=32, num_queries=1, text_encoder=text,
                             sentence_pooling="mean", query_reference="text", **changes)


def test_mask_refiner_starts_as_bilinear_upsampling_and_learns_from_the_frames():
    from lvseg.models.referformer.fpn import MaskRefiner

    torch.manual_seed(0)
    refiner = MaskRefiner(mask_dim=8, channels=8)
    feats, frames = torch.randn(3, 8, 6, 5), torch.randn(3, 3, 24, 20)
    out = refiner(feats, frames)
    assert out.shape == (3, 8, 24, 20)
    half = F.interpolate(feats, size=(12, 10), mode="bilinear", align_corners=False)
    expected = F.interpolate(half, size=(24, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected)  # the residual projections start at zero
    out.square().sum().backward()
    assert refiner.up1.proj.weight.grad.abs().sum() > 0 and refiner.up2.proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        refiner.up1.proj.weight.normal_()
    changed = refiner(feats, frames) - refiner(feats, frames + 1)
    assert changed.abs().max() > 1e-3  # once trained, the output depends on the image


def test_mask_refine_gives_input_resolution_masks_and_a_stride_1_loss():
    from lvseg.train.losses import ReferFormerCriterion
    from lvseg.train.objectives import make_objective

    assert _tiny_config().mask_stride == 4 and _tiny_config(mask_refine=8).mask_stride == 1
    torch.manual_seed(0)
    model = ReferFormer(_tiny_config(mask_refine=8), tokenizer=tokenizer()).train()
    out = model(torch.randn(1, 2, 3, 64, 48), ["a red dog"])
    assert out["pred_masks"].shape == (1, 2, 1, 64, 48)
    assert all(a["pred_masks"].shape == (1, 2, 1, 64, 48) for a in out["aux_outputs"])
    masks, scores = model.eval().segment(torch.randn(1, 3, 3, 64, 48), ["a red dog"])
    assert masks.shape == (1, 3, 64, 48) and scores.shape == (1, 3)
    criterion = make_objective("referformer", mask_stride=1).criterion
    assert isinstance(criterion, ReferFormerCriterion)
    assert criterion.mask_stride == 1 and criterion.matcher.mask_stride == 1
    with pytest.raises(ConfigError, match="mask_refine"):
        _tiny_config(mask_refine=-1)


def test_expressions_on_one_clip_share_one_backbone_pass(r50):
    """Several expressions on one clip (the Predictor's expanded view, batch stride 0): the backbone runs once,
    on the clip's T frames, and every expression's outputs equal those of the same clip copied per expression
    (up to rounding relative to the magnitudes: a batch of one may take another convolution kernel)."""
    model, meta, _, frames = r50
    clip = frames[0, :2, :, :32, :48]
    texts = [*meta["expressions"], meta["expressions"][0]]
    expanded = clip[None].expand(len(texts), -1, -1, -1, -1)
    batches: list[int] = []
    hook = model.backbone.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            shared = model(expanded, texts)
            assert batches == [2]
            copied = model(expanded.contiguous(), texts)
            assert batches == [2, 2 * len(texts)]
    finally:
        hook.remove()
    assert_parity({k: shared[k] for k in ("pred_logits", "pred_boxes", "pred_masks")},
                  {k: copied[k] for k in ("pred_logits", "pred_boxes", "pred_masks")}, tolerance=RELATIVE_TOLERANCE)
    # the first and the third expression are the same sentence: the same outputs (up to batched rounding; oneDNN's
    # channels-last ResNet kernels block a batch of 2 frames differently from one of 6: 1.5e-5 measured)
    assert_parity({"pred_masks": shared["pred_masks"][0]}, {"pred_masks": shared["pred_masks"][2]},
                  tolerance=RELATIVE_TOLERANCE)
    # the text-dependent part runs expression by expression on the shared features: each expression's outputs are
    # exactly those of a call with that expression alone (every decoder layer)
    with torch.no_grad():
        single = model(clip[None], [texts[1]])
    for key in ("pred_logits", "pred_boxes", "pred_masks", "reference_points"):
        assert torch.equal(shared[key][1:2], single[key]), key
    for layer_shared, layer_single in zip(shared["aux_outputs"], single["aux_outputs"], strict=True):
        assert all(torch.equal(layer_shared[k][1:2], layer_single[k]) for k in layer_single)
    assert torch.equal(shared["pred_masks"][0], shared["pred_masks"][2])
